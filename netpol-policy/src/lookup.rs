//! The programs' policy decision, re-enacted in user space over a [`MapState`]: the same
//! lookups in the same order, on the same keys (netpol-common). Tests use it to check
//! compiled states against the reference evaluator without a kernel; the TEST_RUN suite
//! keeps it honest against the real programs.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use netpol_common::{
    identity, IpcacheEntry, PolicyKey, PolicyValue, DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_EGRESS,
    EP_ISOLATED_INGRESS, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, POLICY_DNS_PROXY, PORT_ANY, PROTO_ANY,
    RANGE_FIXED_BITS,
};

use crate::{entries::PolicyMapKey, names::NameMatch, state::MapState};

/// IPCACHE (exact /32), then IPCACHE_LPM (longest shorter prefix), else WORLD.
pub fn resolve(st: &MapState, addr: Ipv4Addr) -> IpcacheEntry {
    if let Some(e) = st.ipcache.get(&Ipv4Net::new(addr, 32).unwrap()) {
        return *e;
    }
    st.ipcache
        .iter()
        .filter(|(n, _)| n.prefix_len() < 32 && n.contains(&addr))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, e)| *e)
        .unwrap_or(IpcacheEntry { identity: identity::WORLD, cidr_identity: identity::WORLD })
}

fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

/// Every entry of `peer` that takes the flow, in the programs' order: exact port, port
/// range, any port of the protocol, any protocol.
pub fn entries_taking(
    st: &MapState,
    ep_id: u32,
    dir: u8,
    peer: u32,
    proto: u8,
    port: u16,
) -> Vec<(PolicyMapKey, PolicyValue)> {
    let exact = |port, proto| {
        let k = PolicyMapKey::Exact(PolicyKey { ep_id, peer, port, proto, dir });
        st.policy.get(&k).map(|v| (k, *v))
    };
    let mut out = Vec::new();
    if has_ports(proto) {
        out.extend(exact(port, proto));
        out.extend(st.policy.iter().filter_map(|(k, v)| match k {
            PolicyMapKey::Range(rk, len)
                if rk.ep_id == ep_id && rk.peer == peer && rk.dir == dir && rk.proto == proto =>
            {
                let start = u16::from_be(rk.port_be) as u32;
                let size = 1u32 << (16 - (len - RANGE_FIXED_BITS));
                (start..start + size).contains(&(port as u32)).then_some((*k, *v))
            }
            _ => None,
        }));
        out.extend(exact(PORT_ANY, proto));
    }
    out.extend(exact(PORT_ANY, PROTO_ANY));
    out
}

/// The names the DNS proxy allows a query from the endpoint on `ifindex` to `remote`
/// (`proto`, `port`) to ask: the union over every entry taking the flow at each of the
/// server's peers (its identity, its CIDR identity, any peer) — every name when one of
/// them has no DNS rules, or when the endpoint's egress is not isolated (a flow the
/// proxy took before its policy went). `names` is [`crate::compiler::Compiled::dns`].
pub fn dns_names(
    st: &MapState,
    names: &BTreeMap<PolicyMapKey, BTreeSet<NameMatch>>,
    ifindex: u32,
    remote: Ipv4Addr,
    proto: u8,
    port: u16,
) -> BTreeSet<NameMatch> {
    let Some(ep) = st.endpoints.get(&ifindex) else { return BTreeSet::new() };
    if ep.flags & EP_ISOLATED_EGRESS == 0 {
        return BTreeSet::from([NameMatch::All]);
    }
    let peer = resolve(st, remote);
    let peers = BTreeSet::from([peer.identity, peer.cidr_identity, identity::ANY]);
    let mut out = BTreeSet::new();
    for p in peers {
        for (k, v) in entries_taking(st, ep.ep_id, DIR_EGRESS, p, proto, port) {
            if v.flags & POLICY_DNS_PROXY == 0 {
                return BTreeSet::from([NameMatch::All]);
            }
            out.extend(names.get(&k).into_iter().flatten().cloned());
        }
    }
    out
}

/// What a new flow meets at the endpoint on `ifindex` in `dir` (raw direction), `remote`
/// being the other side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passes (rule id; 0 when no rule was needed).
    Pass(u32),
    /// Goes to the DNS proxy, which judges it by this key's names.
    Proxy(PolicyMapKey),
    Drop,
}

pub fn outcome(st: &MapState, ifindex: u32, dir: u8, remote: Ipv4Addr, proto: u8, port: u16) -> Outcome {
    let Some(ep) = st.endpoints.get(&ifindex) else { return Outcome::Drop };
    let bit = if dir == DIR_INGRESS { EP_ISOLATED_INGRESS } else { EP_ISOLATED_EGRESS };
    if ep.flags & bit == 0 {
        return Outcome::Pass(0);
    }
    let peer = resolve(st, remote);
    if dir == DIR_INGRESS && peer.identity == identity::HOST {
        return Outcome::Pass(0);
    }
    // The first entry that takes the flow, most specific peer first.
    let first = |p: u32| entries_taking(st, ep.ep_id, dir, p, proto, port).into_iter().next();
    let hit = first(peer.identity)
        .or_else(|| (peer.cidr_identity != peer.identity).then(|| first(peer.cidr_identity)).flatten())
        .or_else(|| first(identity::ANY));
    match hit {
        None => Outcome::Drop,
        // Only TCP and UDP flows from the pod can go to the proxy.
        Some((k, v)) if v.flags & POLICY_DNS_PROXY != 0 => {
            if dir != DIR_INGRESS && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
                Outcome::Proxy(k)
            } else {
                Outcome::Drop
            }
        }
        Some((_, v)) => Outcome::Pass(v.rule_id),
    }
}

/// Whether the flow passes as it is: `Some(rule id)` (0 when no rule was needed), or None
/// (dropped, or sent to the DNS proxy).
pub fn decide(st: &MapState, ifindex: u32, dir: u8, remote: Ipv4Addr, proto: u8, port: u16) -> Option<u32> {
    match outcome(st, ifindex, dir, remote, proto, port) {
        Outcome::Pass(rule) => Some(rule),
        Outcome::Proxy(_) | Outcome::Drop => None,
    }
}
