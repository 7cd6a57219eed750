//! netpol's datapath: two TC classifiers on the host side of every pod veth.
//!
//! `netpol_from_pod` (tc ingress there) judges packets the pod sends: anti-spoofing, then the
//! pod's egress policy. `netpol_to_pod` (tc egress there) judges packets delivered to the pod:
//! its ingress policy. All policy logic that can be precomputed is precomputed by user space:
//! the programs only parse, look up, and track flows.
//!
//! Per packet: endpoint lookup (by ifindex) → parse → conntrack (forward, then reply) → for a
//! new flow: ipcache (exact, then LPM) → policy (exact port, port range, any port, any
//! protocol; for the peer's identity, its CIDR identity, then any peer) → conntrack insert.
//! Verdict table (isolated = the pod is selected by a policy of this direction):
//!
//! | packet                              | not isolated | isolated            |
//! |-------------------------------------|--------------|---------------------|
//! | no endpoint entry for the interface | drop         | drop                |
//! | ARP                                 | pass         | pass                |
//! | IPv6                                | pass         | drop (not enforced) |
//! | other non-IPv4 ethertypes           | pass         | drop                |
//! | truncated / malformed IPv4 or L4    | drop         | drop                |
//! | source address not the pod's own    | drop         | drop (from-pod)     |
//! | IPv4 options (IHL > 5)              | policy       | drop                |
//! | later fragment, first one unseen    | pass         | drop                |
//! | host → pod                          | pass         | pass                |
//! | reply / ICMP error of a tracked flow| pass         | pass                |
//! | anything else                       | pass         | policy              |
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use netpol_common::{
    counter, identity, reason, sizes, CtKey, CtValue, Endpoint, Event, FragKey, FragValue, IpcacheEntry,
    PolicyKey, PolicyValue, RangeKey, CT_CLOSING, CT_TIMEOUT_CLOSING_NS, CT_TIMEOUT_OTHER_NS,
    CT_TIMEOUT_TCP_NS, CT_TOUCH_NS, DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS,
    IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, PORT_ANY, PROTO_ANY, RANGE_FIXED_BITS,
    VERDICT_ALLOW, VERDICT_DROP,
};

// Every map is pinned by name, so a restarted agent reopens the same kernel maps and the
// programs behind pinned links keep enforcing while no agent runs.
#[map]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(sizes::ENDPOINTS, 0);
#[map]
static IPCACHE: HashMap<u32, IpcacheEntry> = HashMap::pinned(sizes::IPCACHE, 0);
#[map]
static IPCACHE_LPM: LpmTrie<u32, IpcacheEntry> = LpmTrie::pinned(sizes::IPCACHE_LPM, 0);
#[map]
static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(sizes::POLICY, 0);
#[map]
static POLICY_RANGES: LpmTrie<RangeKey, PolicyValue> = LpmTrie::pinned(sizes::POLICY_RANGES, 0);
#[map]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(sizes::CONNTRACK, 0);
#[map]
static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(sizes::FRAGMENTS, 0);
#[map]
static EVENTS: RingBuf = RingBuf::pinned(sizes::EVENTS_BYTES, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const ICMP_ECHOREPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// Enough linear data for Ethernet + IPv4 with options + an ICMP error's inner headers.
const PULL_LEN: u32 = 128;

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    csum: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
struct TcpHead {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    doff: u8,
    flags: u8,
}

#[repr(C)]
struct Ports {
    sport: u16,
    dport: u16,
}

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    csum: u16,
    id: u16,
    seq: u16,
}

/// The 5-tuple of a packet. Ports in network order; for ICMP echo the identifier stands in
/// for a port (request: sport, reply: dport) so a reply's reversed tuple is its request's.
#[derive(Clone, Copy)]
struct Flow {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
}

struct Decision {
    drop: bool,
    reason: u8,
    rule_id: u32,
    peer: u32,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn emit(ctx: &TcContext, ep_id: u32, dir: u8, f: &Flow, d: &Decision) {
    let ev = Event {
        ts_ns: unsafe { bpf_ktime_get_coarse_ns() },
        ep_id,
        ifindex: ifindex(ctx),
        saddr: f.saddr,
        daddr: f.daddr,
        sport: f.sport,
        dport: f.dport,
        peer: d.peer,
        rule_id: d.rule_id,
        proto: f.proto,
        dir,
        verdict: if d.drop { VERDICT_DROP } else { VERDICT_ALLOW },
        reason: d.reason,
    };
    if EVENTS.output::<Event>(&ev, 0).is_err() {
        count(counter::EVENTS_LOST);
    }
}

/// Counts the packet and returns its TC action; emits an event when asked.
#[inline(always)]
fn finish(ctx: &TcContext, ep_id: u32, dir: u8, f: &Flow, d: &Decision, event: bool) -> i32 {
    count(d.reason as u32);
    if event {
        emit(ctx, ep_id, dir, f, d);
    }
    if d.drop {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

#[inline(always)]
fn verdict(drop: bool, reason: u8) -> Decision {
    Decision { drop, reason, rule_id: 0, peer: 0 }
}

const NO_FLOW: Flow = Flow { saddr: 0, daddr: 0, sport: 0, dport: 0, proto: 0, tcp_flags: 0 };

#[inline(always)]
fn isolated(ep: &Endpoint, dir: u8) -> bool {
    let bit = if dir == DIR_INGRESS { EP_ISOLATED_INGRESS } else { EP_ISOLATED_EGRESS };
    ep.flags & bit != 0
}

#[inline(always)]
fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

/// The peer's identity and CIDR identity: exact /32 first (pods, cheap), then the LPM trie.
#[inline(always)]
fn resolve(addr: u32) -> IpcacheEntry {
    if let Some(e) = unsafe { IPCACHE.get(&addr) } {
        return *e;
    }
    match IPCACHE_LPM.get(Key::new(32, addr)) {
        Some(e) => *e,
        None => IpcacheEntry { identity: identity::WORLD, cidr_identity: identity::WORLD },
    }
}

#[inline(always)]
fn lookup_peer(ep_id: u32, dir: u8, peer: u32, proto: u8, port_be: u16) -> Option<u32> {
    let mut key = PolicyKey { ep_id, peer, port: u16::from_be(port_be), proto, dir };
    if has_ports(proto) {
        if let Some(v) = unsafe { POLICY.get(&key) } {
            return Some(v.rule_id);
        }
        let rk = RangeKey { ep_id, peer, dir, proto, port_be };
        if let Some(v) = POLICY_RANGES.get(Key::new(RANGE_FIXED_BITS + 16, rk)) {
            return Some(v.rule_id);
        }
        key.port = PORT_ANY;
        if let Some(v) = unsafe { POLICY.get(&key) } {
            return Some(v.rule_id);
        }
    }
    key.port = PORT_ANY;
    key.proto = PROTO_ANY;
    unsafe { POLICY.get(&key) }.map(|v| v.rule_id)
}

/// The rule that allows this flow for the endpoint in `dir`, if any. NetworkPolicy has only
/// allow rules, so the first hit decides; the order only picks the most specific rule id.
#[inline(always)]
fn policy_lookup(ep_id: u32, dir: u8, peer: &IpcacheEntry, proto: u8, port_be: u16) -> Option<u32> {
    if let Some(r) = lookup_peer(ep_id, dir, peer.identity, proto, port_be) {
        return Some(r);
    }
    if peer.cidr_identity != peer.identity {
        if let Some(r) = lookup_peer(ep_id, dir, peer.cidr_identity, proto, port_be) {
            return Some(r);
        }
    }
    lookup_peer(ep_id, dir, identity::ANY, proto, port_be)
}

#[inline(always)]
fn ct_timeout(proto: u8, flags: u32) -> u64 {
    if flags & CT_CLOSING != 0 {
        CT_TIMEOUT_CLOSING_NS
    } else if proto == IPPROTO_TCP {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_OTHER_NS
    }
}

/// Refreshes an entry the packet matched. Writes at most once per CT_TOUCH_NS, and on
/// FIN/RST, so established flows do not dirty the cache line on every packet.
#[inline(always)]
fn ct_touch(ct: *mut CtValue, now: u64, tcp_flags: u8) {
    unsafe {
        if now.wrapping_sub((*ct).last_seen) > CT_TOUCH_NS {
            (*ct).last_seen = now;
        }
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 && (*ct).flags & CT_CLOSING == 0 {
            (*ct).flags |= CT_CLOSING;
            (*ct).last_seen = now;
        }
    }
}

enum CtHit {
    Miss,
    Pass,
    Revoked(u32),
}

/// Looks a flow up in conntrack as seen by `ep` in `dir` (the direction that created the
/// entry). An entry verified under an older policy generation is re-checked: still allowed
/// → refreshed; no longer allowed → deleted and the packet dropped.
#[inline(always)]
fn ct_check(ep: &Endpoint, dir: u8, key: &CtKey, remote: u32, now: u64, tcp_flags: u8) -> CtHit {
    let ct = match CONNTRACK.get_ptr_mut(key) {
        Some(ct) => ct,
        None => return CtHit::Miss,
    };
    let (last_seen, flags, gen) = unsafe { ((*ct).last_seen, (*ct).flags, (*ct).policy_gen) };
    if now.wrapping_sub(last_seen) > ct_timeout(key.proto, flags) {
        let _ = CONNTRACK.remove(key);
        return CtHit::Miss;
    }
    if gen != ep.policy_gen && isolated(ep, dir) {
        let peer = resolve(remote);
        match policy_lookup(ep.ep_id, dir, &peer, key.proto, key.dport) {
            Some(rule_id) => unsafe {
                (*ct).policy_gen = ep.policy_gen;
                (*ct).rule_id = rule_id;
                (*ct).peer = peer.identity;
            },
            None => {
                let _ = CONNTRACK.remove(key);
                return CtHit::Revoked(peer.identity);
            }
        }
    }
    ct_touch(ct, now, tcp_flags);
    CtHit::Pass
}

#[inline(always)]
fn other_dir(dir: u8) -> u8 {
    if dir == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    }
}

/// An ICMP error is let through when the packet it quotes belongs to a tracked flow of this
/// endpoint: either a flow the quoted packet started (seen in the other direction), or the
/// reply side of a flow started towards the endpoint.
#[inline(always)]
fn icmp_related(ctx: &TcContext, ep: &Endpoint, dir: u8, inner_off: usize) -> Option<bool> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, inner_off)?;
    let (ver_ihl, proto, saddr, daddr) = unsafe { ((*ip).ver_ihl, (*ip).proto, (*ip).saddr, (*ip).daddr) };
    if ver_ihl != 0x45 {
        return Some(false);
    }
    let (sport, dport) = if has_ports(proto) {
        let p = ptr_at::<Ports>(ctx, inner_off + 20)?;
        unsafe { ((*p).sport, (*p).dport) }
    } else if proto == IPPROTO_ICMP {
        let h = ptr_at::<IcmpHdr>(ctx, inner_off + 20)?;
        let (kind, id) = unsafe { ((*h).kind, (*h).id) };
        match kind {
            ICMP_ECHO => (id, 0),
            ICMP_ECHOREPLY => (0, id),
            _ => return Some(false),
        }
    } else {
        return Some(false);
    };
    let quoted = CtKey { ep_id: ep.ep_id, saddr, daddr, sport, dport, proto, dir: other_dir(dir), _pad: 0 };
    if unsafe { CONNTRACK.get(&quoted) }.is_some() {
        return Some(true);
    }
    let reply = CtKey {
        ep_id: ep.ep_id,
        saddr: daddr,
        daddr: saddr,
        sport: dport,
        dport: sport,
        proto,
        dir,
        _pad: 0,
    };
    Some(unsafe { CONNTRACK.get(&reply) }.is_some())
}

#[inline(always)]
fn enforce(ctx: &TcContext, dir: u8) -> i32 {
    let ep = match unsafe { ENDPOINTS.get(&ifindex(ctx)) } {
        Some(ep) => *ep,
        // Attached but unknown: the pod is being set up or torn down. Fail closed.
        None => return finish(ctx, 0, dir, &NO_FLOW, &verdict(true, reason::DROP_NO_ENDPOINT), true),
    };
    let iso = isolated(&ep, dir);

    // Headers must be in the linear area for direct access; pull them in when they are not.
    let linear = ctx.data_end() - ctx.data();
    if linear < PULL_LEN as usize && ctx.len() as usize > linear {
        let want = if ctx.len() < PULL_LEN { ctx.len() } else { PULL_LEN };
        let _ = ctx.pull_data(want);
    }

    let eth_proto = match ptr_at::<u16>(ctx, 12) {
        Some(p) => u16::from_be(unsafe { *p }),
        None => return finish(ctx, ep.ep_id, dir, &NO_FLOW, &verdict(true, reason::DROP_MALFORMED), true),
    };
    if eth_proto != ETH_P_IP {
        let d = match eth_proto {
            ETH_P_ARP => verdict(false, reason::ALLOW_ARP),
            _ if !iso => verdict(false, reason::ALLOW_NOT_ISOLATED),
            ETH_P_IPV6 => verdict(true, reason::DROP_IPV6),
            _ => verdict(true, reason::DROP_UNSUPPORTED_L3),
        };
        return finish(ctx, ep.ep_id, dir, &NO_FLOW, &d, d.drop);
    }

    let ip = match ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) {
        Some(ip) => ip,
        None => return finish(ctx, ep.ep_id, dir, &NO_FLOW, &verdict(true, reason::DROP_MALFORMED), true),
    };
    let (ver_ihl, tot_len, ip_id, frag_off, proto, saddr, daddr) = unsafe {
        (
            (*ip).ver_ihl,
            u16::from_be((*ip).tot_len),
            (*ip).id,
            u16::from_be((*ip).frag_off),
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    let mut f = Flow { saddr, daddr, sport: 0, dport: 0, proto, tcp_flags: 0 };
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4
        || ihl < 20
        || (tot_len as usize) < ihl
        || ETH_HLEN + tot_len as usize > ctx.len() as usize
    {
        return malformed(ctx, &ep, dir, &f);
    }
    if dir == DIR_EGRESS && saddr != ep.ip {
        return finish(ctx, ep.ep_id, dir, &f, &verdict(true, reason::DROP_SPOOFED), true);
    }
    // No Kubernetes workload needs IP options, and source-route options are an evasion
    // vector: an isolated pod gets none.
    if ihl > 20 && iso {
        return finish(ctx, ep.ep_id, dir, &f, &verdict(true, reason::DROP_IP_OPTIONS), true);
    }

    let frag_key = FragKey { saddr, daddr, id: ip_id, proto, _pad: 0 };
    let first_fragment = frag_off & IP_MF != 0 && frag_off & IP_OFFSET == 0;
    let l4 = ETH_HLEN + ihl;
    let mut related_off = 0usize;
    let mut tracked = has_ports(proto);
    if frag_off & IP_OFFSET != 0 {
        // A later fragment carries no L4 header: borrow the ports its first fragment recorded.
        match unsafe { FRAGMENTS.get(&frag_key) } {
            Some(v) => {
                f.sport = v.sport;
                f.dport = v.dport;
            }
            None => {
                let d = if iso {
                    verdict(true, reason::DROP_FRAGMENT)
                } else {
                    verdict(false, reason::ALLOW_NOT_ISOLATED)
                };
                return finish(ctx, ep.ep_id, dir, &f, &d, d.drop);
            }
        }
    } else if proto == IPPROTO_TCP {
        match ptr_at::<TcpHead>(ctx, l4) {
            Some(t) if unsafe { (*t).doff } >> 4 >= 5 => unsafe {
                f.sport = (*t).sport;
                f.dport = (*t).dport;
                f.tcp_flags = (*t).flags;
            },
            _ => return malformed(ctx, &ep, dir, &f),
        }
    } else if proto == IPPROTO_UDP || proto == IPPROTO_SCTP {
        // Both headers start with the two ports; UDP's is 8 bytes, SCTP's common header 12.
        let whole = if proto == IPPROTO_UDP {
            ptr_at::<[u8; 8]>(ctx, l4).is_some()
        } else {
            ptr_at::<[u8; 12]>(ctx, l4).is_some()
        };
        match ptr_at::<Ports>(ctx, l4) {
            Some(p) if whole => unsafe {
                f.sport = (*p).sport;
                f.dport = (*p).dport;
            },
            _ => return malformed(ctx, &ep, dir, &f),
        }
    } else if proto == IPPROTO_ICMP {
        let h = match ptr_at::<IcmpHdr>(ctx, l4) {
            Some(h) => h,
            None => return malformed(ctx, &ep, dir, &f),
        };
        let (kind, id) = unsafe { ((*h).kind, (*h).id) };
        match kind {
            ICMP_ECHO => {
                f.sport = id;
                tracked = true;
            }
            ICMP_ECHOREPLY => {
                f.dport = id;
                tracked = true;
            }
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB => related_off = l4 + 8,
            _ => {}
        }
    }

    let (d, event) = judge(ctx, &ep, dir, &f, tracked, related_off);
    if first_fragment && !d.drop {
        let _ = FRAGMENTS.insert(&frag_key, &FragValue { sport: f.sport, dport: f.dport }, 0);
    }
    finish(ctx, ep.ep_id, dir, &f, &d, event)
}

#[inline(always)]
fn malformed(ctx: &TcContext, ep: &Endpoint, dir: u8, f: &Flow) -> i32 {
    finish(ctx, ep.ep_id, dir, f, &verdict(true, reason::DROP_MALFORMED), true)
}

/// The verdict for a parsed IPv4 packet, and whether it is worth an event.
#[inline(always)]
fn judge(
    ctx: &TcContext,
    ep: &Endpoint,
    dir: u8,
    f: &Flow,
    tracked: bool,
    related_off: usize,
) -> (Decision, bool) {
    let remote = if dir == DIR_EGRESS { f.daddr } else { f.saddr };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let fwd = CtKey {
        ep_id: ep.ep_id,
        saddr: f.saddr,
        daddr: f.daddr,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        dir,
        _pad: 0,
    };

    if tracked {
        let rev = CtKey {
            saddr: f.daddr,
            daddr: f.saddr,
            sport: f.dport,
            dport: f.sport,
            dir: other_dir(dir),
            ..fwd
        };
        for (key, key_dir, hit) in
            [(&fwd, dir, reason::ALLOW_ESTABLISHED), (&rev, other_dir(dir), reason::ALLOW_REPLY)]
        {
            match ct_check(ep, key_dir, key, remote, now, f.tcp_flags) {
                CtHit::Pass => return (verdict(false, hit), false),
                CtHit::Revoked(peer) => {
                    let d = Decision { drop: true, reason: reason::DROP_POLICY_REVOKED, rule_id: 0, peer };
                    return (d, true);
                }
                CtHit::Miss => {}
            }
        }
    } else if related_off != 0 {
        match icmp_related(ctx, ep, dir, related_off) {
            Some(true) => return (verdict(false, reason::ALLOW_RELATED), false),
            Some(false) => {}
            None => return (verdict(true, reason::DROP_MALFORMED), true),
        }
    }

    // A new flow.
    let peer = resolve(remote);
    let iso = isolated(ep, dir);
    let mut d = if !iso {
        verdict(false, reason::ALLOW_NOT_ISOLATED)
    } else if dir == DIR_INGRESS && peer.identity == identity::HOST {
        verdict(false, reason::ALLOW_HOST)
    } else {
        match policy_lookup(ep.ep_id, dir, &peer, f.proto, f.dport) {
            Some(rule_id) => Decision { drop: false, reason: reason::ALLOW_POLICY, rule_id, peer: 0 },
            None => verdict(true, reason::DROP_POLICY),
        }
    };
    d.peer = peer.identity;
    // Only a SYN starts a TCP connection. A mid-stream segment without an entry (its flow
    // was revoked, evicted, or predates the agent) is adopted only where policy was just
    // checked; elsewhere it passes untracked, so it cannot make the peer's next packets
    // look like replies.
    let starts = f.proto != IPPROTO_TCP || f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let track = tracked && (starts || iso);
    if !d.drop && track {
        let flags = if f.tcp_flags & (TCP_FIN | TCP_RST) != 0 { CT_CLOSING } else { 0 };
        let v = CtValue {
            last_seen: now,
            rule_id: d.rule_id,
            policy_gen: ep.policy_gen,
            peer: peer.identity,
            flags,
        };
        if CONNTRACK.insert(&fwd, &v, BPF_NOEXIST as u64).is_err() {
            count(counter::CT_INSERT_FAILED);
        }
    }
    // Untracked packets (ICMP errors, other protocols, adopted-nowhere TCP segments) are
    // judged one by one; an event for each allowed one would flood the ring, so only their
    // drops are reported.
    let event = d.drop || track;
    (d, event)
}

#[classifier]
pub fn netpol_from_pod(ctx: TcContext) -> i32 {
    enforce(&ctx, DIR_EGRESS)
}

#[classifier]
pub fn netpol_to_pod(ctx: TcContext) -> i32 {
    enforce(&ctx, DIR_INGRESS)
}

#[classifier]
pub fn netpol_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
