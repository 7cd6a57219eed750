//! The datapath's map layout, written once and used by the TC programs (`netpol-ebpf`) and by
//! user space (`netpol-agent`, with the `user` feature).
//!
//! Byte order: IPv4 addresses and L4 ports inside conntrack keys, events and the fragment map
//! are kept in *network* order, exactly as they sit in the packet, so the kernel never swaps
//! them. Policy keys carry the port in host order (they are built by user space from the
//! policy, and the kernel swaps once per new flow). Range keys are LPM keys and hold the port
//! big-endian because the trie matches bits from the most significant end.
#![no_std]

/// Bumped whenever a key, value or map definition below changes. The pin directory is
/// versioned with it, because the kernel would otherwise silently reuse an old pinned map with
/// a different layout (aya does not compare key/value sizes when it reuses a pin).
pub const LAYOUT_VERSION: u32 = 8;

/// Program names in the object.
pub mod programs {
    /// tc ingress of the host-side veth: packets leaving the pod (pod egress policy).
    pub const FROM_POD: &str = "netpol_from_pod";
    /// tc egress of the host-side veth: packets entering the pod (pod ingress policy).
    pub const TO_POD: &str = "netpol_to_pod";
    /// Returns TC_ACT_OK and nothing else: the baseline the benchmarks compare against.
    pub const PASS: &str = "netpol_pass";
    /// cgroup sock_addr hooks (Services at the socket): ClusterIP → backend on connect and
    /// on unconnected UDP sends, backend → ClusterIP on UDP receives and getpeername.
    pub const CONNECT4: &str = "netpol_connect4";
    pub const SENDMSG4: &str = "netpol_sendmsg4";
    pub const RECVMSG4: &str = "netpol_recvmsg4";
    pub const GETPEERNAME4: &str = "netpol_getpeername4";
}

/// Map names in the object (also their pin names).
pub mod maps {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// A local endpoint's address (network order) → the ifindex of its host-side veth. A
    /// packet delivered to a pod whose source is a local endpoint's address must have entered
    /// the node through that endpoint's interface (`skb->ingress_ifindex`).
    pub const ENDPOINT_IPS: &str = "ENDPOINT_IPS";
    /// The same, direct-mapped for the per-packet check (an array lookup the verifier
    /// inlines): slot = the address's low 16 bits (host order), holding the one local
    /// address of that slot, or `LOCAL_SLOT_SHARED` when several share it (then
    /// `ENDPOINT_IPS` answers).
    pub const LOCAL_SLOTS: &str = "LOCAL_SLOTS";
    pub const IPCACHE: &str = "IPCACHE";
    pub const IPCACHE_LPM: &str = "IPCACHE_LPM";
    pub const POLICY: &str = "POLICY";
    pub const POLICY_RANGES: &str = "POLICY_RANGES";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    /// (endpoint, peer) → a drop-event token bucket ([`EventBucket`](super::EventBucket)).
    pub const EVENT_BUCKETS: &str = "EVENT_BUCKETS";
    /// Service frontends and their backend slots ([`ServiceKey`](super::ServiceKey)).
    pub const SERVICES: &str = "SERVICES";
    /// (socket cookie, backend) → the frontend that socket asked for
    /// ([`RevNatKey`](super::RevNatKey)): how replies and getpeername get the ClusterIP back.
    pub const SOCK_REV_NAT: &str = "SOCK_REV_NAT";
    /// One [`DnsProxy`](super::DnsProxy): where the agent's DNS proxy listens.
    pub const DNS_PROXY: &str = "DNS_PROXY";
    pub const ALL: [&str; 15] = [
        ENDPOINTS,
        ENDPOINT_IPS,
        LOCAL_SLOTS,
        IPCACHE,
        IPCACHE_LPM,
        POLICY,
        POLICY_RANGES,
        CONNTRACK,
        FRAGMENTS,
        EVENTS,
        COUNTERS,
        EVENT_BUCKETS,
        SERVICES,
        SOCK_REV_NAT,
        DNS_PROXY,
    ];
}

/// Map sizes. Hash maps are preallocated by the kernel, so these are memory, not just limits.
pub mod sizes {
    pub const ENDPOINTS: u32 = 4096;
    /// One address per endpoint.
    pub const ENDPOINT_IPS: u32 = ENDPOINTS;
    pub const LOCAL_SLOTS: u32 = 1 << 16;
    /// Exact /32 entries: every pod of the cluster plus /32 CIDRs.
    pub const IPCACHE: u32 = 131_072;
    pub const IPCACHE_LPM: u32 = 65_536;
    pub const POLICY: u32 = 262_144;
    pub const POLICY_RANGES: u32 = 65_536;
    pub const CONNTRACK: u32 = 262_144;
    pub const FRAGMENTS: u32 = 8192;
    /// 8 MiB: measured lossless at 4 M events/s on 2 cores; 256 KiB was not.
    pub const EVENTS_BYTES: u32 = 8 << 20;
    /// LRU: a bucket per recently dropping endpoint.
    pub const EVENT_BUCKETS: u32 = 2 * ENDPOINTS;
    /// Frontends plus backend slots.
    pub const SERVICES: u32 = 65_536;
    /// LRU: one entry per translated socket and backend.
    pub const SOCK_REV_NAT: u32 = 262_144;
}

/// Security identities. Label identities and CIDR identities are allocated by the agent from
/// disjoint ranges so an identity number alone says what kind of peer it is.
pub mod identity {
    /// In a policy key: any peer. Never the identity of an address.
    pub const ANY: u32 = 0;
    /// The local node (kubelet probes): traffic from it into a pod always passes.
    pub const HOST: u32 = 1;
    /// Any address the ipcache does not know.
    pub const WORLD: u32 = 2;
    /// Another node of the cluster.
    pub const REMOTE_NODE: u32 = 3;
    /// A local endpoint whose pod's labels are not known yet: no selector matches it, and
    /// its endpoint is held closed (host only) until they are.
    pub const INIT: u32 = 5;
    /// A Service's ClusterIP. Nothing addressed to one should reach a pod's interface (the
    /// socket hooks translate it first): for an egress-isolated pod such a packet is
    /// dropped (`DROP_SERVICE_UNTRANSLATED`), for others it passes and is counted.
    pub const SERVICE: u32 = 6;
    pub const FIRST_LABEL: u32 = 256;
    pub const FIRST_CIDR: u32 = 1 << 24;
}

/// Traffic direction, seen from the pod.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// `Endpoint::flags`
pub const EP_ISOLATED_INGRESS: u32 = 1 << 0;
pub const EP_ISOLATED_EGRESS: u32 = 1 << 1;
/// Policy audit mode: a packet its policies would drop passes (`VERDICT_AUDIT`, counted as
/// `counter::AUDITED`) — only for the reasons [`reason::auditable`] names; a packet refused
/// for what it is (spoofed, malformed, VLAN, ...) is dropped all the same.
pub const EP_AUDIT: u32 = 1 << 2;
/// The endpoint's decision steps are logged through aya-log (`netpol monitor --debug`); it
/// changes no verdict.
pub const EP_DEBUG: u32 = 1 << 3;

/// The decision steps the programs log for an endpoint with `EP_DEBUG`, one aya-log record
/// each: `ep=ID dir=DIR step=CODE a=A b=B c=C d=D`, the four numbers per step as below
/// (addresses and ports in network order, reasons as [`reason`] codes).
pub mod debug {
    /// a: protocol, b: source address, c: destination address, d: source port << 16 |
    /// destination port.
    pub const STEP_PARSE: u8 = 0;
    /// a: what the flow's conntrack entry said (`CT_*`).
    pub const STEP_CONNTRACK: u8 = 1;
    /// a: the remote address, b: its identity, c: its CIDR identity.
    pub const STEP_IPCACHE: u8 = 2;
    /// a: isolated in this direction (0/1), b: the rule that allowed it, c: the reason.
    pub const STEP_POLICY: u8 = 3;
    /// a: dropped (0/1), b: audited (0/1), c: the reason, d: the rule.
    pub const STEP_VERDICT: u8 = 4;
    pub const STEP_NAMES: [&str; 5] = ["parse", "conntrack", "ipcache", "policy", "verdict"];

    pub const CT_MISS: u8 = 0;
    pub const CT_FORWARD: u8 = 1;
    pub const CT_REPLY: u8 = 2;
    pub const CT_REVOKED: u8 = 3;
    pub const CT_PROXY: u8 = 4;
    pub const CT_NAMES: [&str; 5] = [
        "no entry: a new flow",
        "established",
        "a reply",
        "revoked: re-judged",
        "established, to the DNS proxy",
    ];
}

/// Whether going from endpoint flags `old` to `new` can only take traffic away (a new
/// isolation, or audit mode ending): established flows must then be re-judged.
pub const fn flags_tighten(old: u32, new: u32) -> bool {
    let isolation = EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS;
    new & !old & isolation != 0 || old & !new & EP_AUDIT != 0
}

/// `PolicyKey::proto` value meaning "any protocol" (the port must then be 0 too).
pub const PROTO_ANY: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
/// `PolicyKey::port` value meaning "any port" (NetworkPolicy ports start at 1).
pub const PORT_ANY: u16 = 0;

/// `ENDPOINTS`: host-side ifindex → endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ep_id: u32,
    /// The pod's IPv4 address, network order. The only source address it may send from.
    pub ip: u32,
    pub identity: u32,
    pub flags: u32,
    /// Bumped by user space whenever something that allowed traffic is withdrawn; a conntrack
    /// entry verified under an older generation is re-checked against the policy.
    pub policy_gen: u32,
    pub _pad: u32,
}

/// `LOCAL_SLOTS` value: the local endpoint address of a slot and its interface; all zero
/// for a slot no local address falls in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalSlot {
    /// Network order.
    pub ip: u32,
    pub ifindex: u32,
}

/// `LocalSlot::ifindex` of a slot several local addresses fall in.
pub const LOCAL_SLOT_SHARED: u32 = u32::MAX;

/// The `LOCAL_SLOTS` slot of an address (network order).
pub const fn local_slot(ip: u32) -> u32 {
    (u32::from_be(ip)) & (sizes::LOCAL_SLOTS - 1)
}

/// `IPCACHE` (exact /32, key = address in network order) and `IPCACHE_LPM` (prefixes shorter
/// than /32) values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpcacheEntry {
    /// The identity of the address: a pod's label identity, a CIDR identity, HOST, ...
    pub identity: u32,
    /// The identity of the longest ipBlock prefix that covers this address (its own for a
    /// CIDR entry, WORLD if none). Lets ipBlock rules match pod IPs with one lookup.
    pub cidr_identity: u32,
}

/// `POLICY`: an allow entry. `peer == identity::ANY`, `proto == PROTO_ANY` and
/// `port == PORT_ANY` are wildcards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub ep_id: u32,
    pub peer: u32,
    /// Destination port, host order.
    pub port: u16,
    pub proto: u8,
    pub dir: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValue {
    /// The id of the policy rule that allowed it, reported in events.
    pub rule_id: u32,
    /// `POLICY_DNS_PROXY`.
    pub flags: u32,
}

/// `DNS_PROXY[0]`: the agent's DNS proxy, for flows `POLICY_DNS_PROXY` sends to it. Its
/// UDP socket and TCP listener are bound to `port` on any address, transparent; a packet
/// handed to them carries `mark`, which the node's routing delivers locally (`ip rule
/// fwmark MARK/0xffffffff`); the proxy's answers carry `mark | 1` (`PROXY_ANSWER_BIT`, so
/// they are routed as usual), by which the to-pod program knows them. `port == 0`: no
/// proxy — such flows are dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsProxy {
    /// Host order.
    pub port: u16,
    pub _pad: u16,
    pub mark: u32,
}

/// Set in the mark of the DNS proxy's answers (`DnsProxy::mark` has it clear).
pub const PROXY_ANSWER_BIT: u32 = 1;

/// `PolicyValue::flags`: the flow is DNS the rule filters by name: allowed only through the
/// agent's DNS proxy, to which the program hands it (never passed on as it is).
pub const POLICY_DNS_PROXY: u32 = 1;

/// `POLICY_RANGES` LPM key data (port ranges from `endPort`, as port/prefix blocks).
/// The fixed part (ep_id, peer, dir, proto) is always fully matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RangeKey {
    pub ep_id: u32,
    pub peer: u32,
    pub dir: u8,
    pub proto: u8,
    /// Big-endian (network order).
    pub port_be: u16,
}

/// Bits of `RangeKey` before the port: a range key's prefix length is this plus the number
/// of significant port bits.
pub const RANGE_FIXED_BITS: u32 = 80;

/// `CONNTRACK` key: a flow of an endpoint, from the endpoint's side, so both directions of
/// the flow find the same entry with one lookup. For a packet from the pod the local side is
/// its source, for a packet to the pod its destination. For ICMP echo the identifier stands
/// in for the port of the side that sent the request (the other port is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKey {
    pub ep_id: u32,
    /// Network order.
    pub local_addr: u32,
    pub remote_addr: u32,
    /// Network order.
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// bpf_ktime_get_coarse_ns of the last packet (refreshed at most every CT_TOUCH_NS).
    pub last_seen: u64,
    pub rule_id: u32,
    /// `Endpoint::policy_gen` when the flow was last verified against the policy.
    pub policy_gen: u32,
    pub peer: u32,
    /// `CT_CLOSING`, `CT_REVOKED`.
    pub flags: u16,
    /// The direction the flow started in (`DIR_INGRESS`: the remote side opened it), whose
    /// policy allowed it and re-judges it.
    pub dir: u8,
    pub _pad: u8,
}

/// `CtValue::flags`: a FIN or RST was seen, the entry expires quickly.
pub const CT_CLOSING: u16 = 1;
/// `CtValue::flags`: the policy that allowed the flow was withdrawn. The entry stays as a
/// tombstone: every packet of the flow is re-judged against the policy of the entry's
/// direction (and dropped while it is not allowed), so neither side's mid-stream segments
/// can adopt the flow again from the other direction.
pub const CT_REVOKED: u16 = 2;
/// `CtValue::flags`: the flow goes to the DNS proxy (from the pod) and back from it.
pub const CT_DNS_PROXY: u16 = 4;

pub const CT_TOUCH_NS: u64 = 1_000_000_000;
pub const CT_TIMEOUT_TCP_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_TIMEOUT_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_TIMEOUT_OTHER_NS: u64 = 60 * 1_000_000_000;

/// How long a conntrack entry of `proto` with `flags` lives after its last packet.
#[inline(always)]
pub fn ct_timeout_ns(proto: u8, flags: u16) -> u64 {
    if flags & CT_CLOSING != 0 {
        CT_TIMEOUT_CLOSING_NS
    } else if proto == IPPROTO_TCP {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_OTHER_NS
    }
}

/// `FRAGMENTS`: the first fragment of a datagram an endpoint let through in a direction
/// records its ports; later fragments (which carry no L4 header) of that datagram follow its
/// verdict. Keyed per endpoint and direction, so one pod's fragments never vouch for
/// another's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub ep_id: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub dir: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
}

/// `Event::verdict`
pub const VERDICT_ALLOW: u8 = 0;
pub const VERDICT_DROP: u8 = 1;
/// A drop the endpoint's audit mode turned into a pass (`EP_AUDIT`): the event carries the
/// drop reason the packet would have had.
pub const VERDICT_AUDIT: u8 = 2;

/// A verdict event from the `EVENTS` ring buffer: every drop, and every allowed new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub ep_id: u32,
    pub ifindex: u32,
    /// Network order.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// Identity of the remote side (destination for egress, source for ingress).
    pub peer: u32,
    pub rule_id: u32,
    pub proto: u8,
    pub dir: u8,
    pub verdict: u8,
    pub reason: u8,
}

/// Why a packet got its verdict. Also the index of its `COUNTERS` slot. Allow reasons come
/// first: a reason is a drop exactly when it is at least `FIRST_DROP`.
pub mod reason {
    pub const ALLOW_NOT_ISOLATED: u8 = 0;
    pub const ALLOW_POLICY: u8 = 1;
    pub const ALLOW_ESTABLISHED: u8 = 2;
    pub const ALLOW_REPLY: u8 = 3;
    /// ICMP error about a tracked flow, sent by the flow's other end (or a path error from a
    /// router that is not a pod).
    pub const ALLOW_RELATED: u8 = 4;
    pub const ALLOW_HOST: u8 = 5;
    /// ARP to a pod, or from a pod with its own sender address.
    pub const ALLOW_ARP: u8 = 6;
    /// A later fragment of a datagram whose first fragment this endpoint let through.
    pub const ALLOW_FRAGMENT: u8 = 7;
    /// DNS a rule filters by name, handed to the agent's DNS proxy (which forwards it or
    /// answers REFUSED).
    pub const ALLOW_DNS_PROXY: u8 = 8;
    pub const DROP_POLICY: u8 = 9;
    /// An established flow whose allowing entry was withdrawn.
    pub const DROP_POLICY_REVOKED: u8 = 10;
    /// From a pod: an IPv4 source address that is not the pod's own.
    pub const DROP_SPOOFED: u8 = 11;
    pub const DROP_MALFORMED: u8 = 12;
    pub const DROP_FRAGMENT: u8 = 13;
    pub const DROP_IP_OPTIONS: u8 = 14;
    /// IPv6 is not enforced: dropped both ways (the CNI disables it on both veth ends).
    pub const DROP_IPV6: u8 = 15;
    pub const DROP_UNSUPPORTED_L3: u8 = 16;
    pub const DROP_NO_ENDPOINT: u8 = 17;
    /// An 802.1Q / 802.1ad tagged frame (a tag in the frame or already taken off by the kernel).
    pub const DROP_VLAN: u8 = 18;
    /// From a pod: ARP whose sender protocol address is not the pod's own, or not IPv4 over
    /// Ethernet.
    pub const DROP_ARP_SPOOFED: u8 = 19;
    /// From a pod: ICMP redirect or router advertisement (a pod is nobody's router).
    pub const DROP_ICMP_ROUTING: u8 = 20;
    /// To a pod: the source is a local pod's address, but the packet did not come from that
    /// pod's interface.
    pub const DROP_SPOOFED_LOCAL: u8 = 21;
    /// From an egress-isolated pod, to a ClusterIP the socket hooks did not translate (a
    /// raw socket, a process outside the hooked cgroup).
    pub const DROP_SERVICE_UNTRANSLATED: u8 = 22;
    /// DNS a rule filters by name, while no DNS proxy takes it (not running yet, or gone):
    /// never passed unfiltered.
    pub const DROP_DNS_PROXY_UNAVAILABLE: u8 = 23;
    /// Given by the agent's DNS proxy, never by the programs: a query for a name no DNS rule
    /// of the pod allows, answered REFUSED and never forwarded.
    pub const DROP_DNS_REFUSED: u8 = 24;
    /// Given by the agent's DNS proxy: a query it cannot judge (not one question), answered
    /// FORMERR and never forwarded.
    pub const DROP_DNS_MALFORMED: u8 = 25;
    pub const COUNT: usize = 26;
    pub const FIRST_DROP: u8 = DROP_POLICY;

    pub const NAMES: [&str; COUNT] = [
        "allow-not-isolated",
        "allow-policy",
        "allow-established",
        "allow-reply",
        "allow-related",
        "allow-host",
        "allow-arp",
        "allow-fragment",
        "allow-dns-proxy",
        "drop-policy",
        "drop-policy-revoked",
        "drop-spoofed",
        "drop-malformed",
        "drop-fragment",
        "drop-ip-options",
        "drop-ipv6",
        "drop-unsupported-l3",
        "drop-no-endpoint",
        "drop-vlan",
        "drop-arp-spoofed",
        "drop-icmp-routing",
        "drop-spoofed-local",
        "drop-service-untranslated",
        "drop-dns-proxy-unavailable",
        "drop-dns-refused",
        "drop-dns-malformed",
    ];

    /// Each reason in words (what `netpol monitor` says when it knows nothing more).
    pub const WORDS: [&str; COUNT] = [
        "the pod is not isolated in this direction",
        "a policy rule allows it",
        "part of an established flow",
        "a reply of an allowed flow",
        "an ICMP error about a tracked flow",
        "to or from the pod's node",
        "ARP with the pod's own address",
        "a later fragment of an allowed datagram",
        "DNS handed to the node's DNS proxy, which filters names",
        "no policy allows it",
        "the rule that allowed this established flow was withdrawn",
        "spoofed source: not the pod's own address",
        "malformed packet",
        "a fragment of a datagram whose first fragment was not allowed",
        "IP options",
        "IPv6 (not enforced: dropped both ways)",
        "neither IPv4, ARP nor IPv6",
        "no endpoint is enforced on this interface",
        "VLAN-tagged frame",
        "spoofed ARP: not the pod's own address",
        "ICMP redirect or router advertisement from a pod",
        "spoofed source: a local pod's address from another interface",
        "to a ClusterIP the socket hooks did not translate",
        "DNS filtered by name while no DNS proxy runs",
        "DNS query refused: no DNS rule of the pod allows the name",
        "DNS query the proxy cannot judge (not one question)",
    ];

    pub fn name(r: u8) -> &'static str {
        NAMES.get(r as usize).copied().unwrap_or("unknown")
    }

    pub fn words(r: u8) -> &'static str {
        WORDS.get(r as usize).copied().unwrap_or("unknown reason")
    }

    pub fn is_drop(r: u8) -> bool {
        r >= FIRST_DROP
    }

    /// Drops a policy decides (of an isolated endpoint): what audit mode lets pass.
    #[inline(always)]
    pub const fn auditable(r: u8) -> bool {
        matches!(
            r,
            DROP_POLICY | DROP_POLICY_REVOKED | DROP_FRAGMENT | DROP_IP_OPTIONS | DROP_SERVICE_UNTRANSLATED
        )
    }
}

/// `COUNTERS` slots after the per-reason ones.
pub mod counter {
    /// A verdict event could not be written to the ring buffer.
    pub const EVENTS_LOST: u32 = super::reason::COUNT as u32;
    /// A conntrack entry could not be created (the flow was still allowed).
    pub const CT_INSERT_FAILED: u32 = EVENTS_LOST + 1;
    /// A drop event was not written: its endpoint was over its drop-event rate.
    pub const EVENTS_RATE_LIMITED: u32 = CT_INSERT_FAILED + 1;
    /// A packet to a ClusterIP left a pod that is not egress-isolated (passed).
    pub const SERVICE_UNTRANSLATED: u32 = EVENTS_RATE_LIMITED + 1;
    /// A socket's ClusterIP:port was translated to a backend.
    pub const SOCK_TRANSLATED: u32 = SERVICE_UNTRANSLATED + 1;
    /// A connect or send to a frontend without backends was refused.
    pub const SOCK_NO_BACKEND: u32 = SOCK_TRANSLATED + 1;
    /// A translation could not be remembered for the way back (`SOCK_REV_NAT` write failed).
    pub const SOCK_REV_NAT_FAILED: u32 = SOCK_NO_BACKEND + 1;
    /// A packet its policies would have dropped passed: its endpoint is in audit mode.
    pub const AUDITED: u32 = SOCK_REV_NAT_FAILED + 1;
    pub const COUNT: u32 = AUDITED + 1;
    /// The names of the slots after the reasons, in order.
    pub const NAMES: [&str; (COUNT - EVENTS_LOST) as usize] = [
        "events-lost",
        "ct-insert-failed",
        "events-rate-limited",
        "service-untranslated",
        "sock-translated",
        "sock-no-backend",
        "sock-rev-nat-failed",
        "audited",
    ];
}

/// `SERVICES` key: a Service frontend (ClusterIP, port, protocol) and a slot. Slot 0 is the
/// frontend itself (its value holds the backend count), slots 1..=count its backends.
/// Address and port in network order, as the socket hooks read them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub slot: u32,
}

/// `SERVICES` value: for slot 0 the number of backends (address and port unused), for a
/// backend slot its address and target port (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    pub count: u32,
}

/// `SOCK_REV_NAT` key: a socket (its cookie) and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `SOCK_REV_NAT` value: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Whose drop events share a bucket. Drops on the way out of a pod are the pod's own
/// (`peer` 0, whatever source it forges); drops on the way in are per sending identity, so
/// a peer flooding a pod with denied packets cannot hide another peer's drops at that pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucketKey {
    pub ep_id: u32,
    pub peer: u32,
}

/// A token bucket for drop events: one pod flooding drops cannot crowd the other pods'
/// events out of the ring. Refilled at `DROP_EVENTS_PER_SEC`, holding at most
/// `DROP_EVENT_BURST`; updates from several CPUs may race, which only blurs the rate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucket {
    /// When the bucket was last refilled (`bpf_ktime_get_coarse_ns`).
    pub refilled_ns: u64,
    pub tokens: u64,
}

pub const DROP_EVENTS_PER_SEC: u64 = 1000;
pub const DROP_EVENT_BURST: u64 = 1000;
pub const NS_PER_DROP_EVENT: u64 = 1_000_000_000 / DROP_EVENTS_PER_SEC;

const _: () = {
    assert!(core::mem::size_of::<EventBucket>() == 16);
    assert!(core::mem::size_of::<EventBucketKey>() == 8);
    assert!(core::mem::size_of::<ServiceKey>() == 12);
    assert!(core::mem::size_of::<ServiceValue>() == 12);
    assert!(core::mem::size_of::<RevNatKey>() == 16);
    assert!(core::mem::size_of::<RevNatValue>() == 8);
    assert!(core::mem::size_of::<Endpoint>() == 24);
    assert!(core::mem::size_of::<IpcacheEntry>() == 8);
    assert!(core::mem::size_of::<PolicyKey>() == 12);
    assert!(core::mem::size_of::<PolicyValue>() == 8);
    assert!(core::mem::size_of::<DnsProxy>() == 8);
    assert!(core::mem::size_of::<RangeKey>() == 12);
    assert!(RANGE_FIXED_BITS as usize == (core::mem::size_of::<RangeKey>() - 2) * 8);
    assert!(core::mem::size_of::<CtKey>() == 20);
    assert!(core::mem::size_of::<CtValue>() == 24);
    assert!(core::mem::size_of::<FragKey>() == 16);
    assert!(core::mem::size_of::<LocalSlot>() == 8);
    assert!(sizes::LOCAL_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<Event>() == 40);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, made only of integers, and have no padding
    // holes (checked by the size asserts above and the explicit _pad fields).
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for IpcacheEntry {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for RangeKey {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for LocalSlot {}
    unsafe impl aya::Pod for EventBucket {}
    unsafe impl aya::Pod for EventBucketKey {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for DnsProxy {}
}
