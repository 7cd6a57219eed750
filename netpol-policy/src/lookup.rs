//! The programs' policy decision, re-enacted in user space over a [`MapState`]: the same
//! lookups in the same order, on the same keys (netpol-common). Tests use it to check
//! compiled states against the reference evaluator without a kernel; the TEST_RUN suite
//! keeps it honest against the real programs.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netpol_common::{
    identity, IpcacheEntry, PolicyKey, DIR_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IPPROTO_SCTP,
    IPPROTO_TCP, IPPROTO_UDP, PORT_ANY, PROTO_ANY, RANGE_FIXED_BITS,
};

use crate::{entries::PolicyMapKey, state::MapState};

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

fn lookup_peer(st: &MapState, ep_id: u32, dir: u8, peer: u32, proto: u8, port: u16) -> Option<u32> {
    let exact = |port, proto| {
        st.policy.get(&PolicyMapKey::Exact(PolicyKey { ep_id, peer, port, proto, dir })).map(|v| v.rule_id)
    };
    if has_ports(proto) {
        if let Some(r) = exact(port, proto) {
            return Some(r);
        }
        let range = st.policy.iter().find_map(|(k, v)| match k {
            PolicyMapKey::Range(rk, len)
                if rk.ep_id == ep_id && rk.peer == peer && rk.dir == dir && rk.proto == proto =>
            {
                let start = u16::from_be(rk.port_be) as u32;
                let size = 1u32 << (16 - (len - RANGE_FIXED_BITS));
                (start..start + size).contains(&(port as u32)).then_some(v.rule_id)
            }
            _ => None,
        });
        if range.is_some() {
            return range;
        }
        if let Some(r) = exact(PORT_ANY, proto) {
            return Some(r);
        }
    }
    exact(PORT_ANY, PROTO_ANY)
}

/// Whether the endpoint on `ifindex` lets a new flow through in `dir` (raw direction),
/// `remote` being the other side; `Some(rule id)` (0 when no rule was needed) or None.
pub fn decide(st: &MapState, ifindex: u32, dir: u8, remote: Ipv4Addr, proto: u8, port: u16) -> Option<u32> {
    let ep = st.endpoints.get(&ifindex)?;
    let bit = if dir == DIR_INGRESS { EP_ISOLATED_INGRESS } else { EP_ISOLATED_EGRESS };
    if ep.flags & bit == 0 {
        return Some(0);
    }
    let peer = resolve(st, remote);
    if dir == DIR_INGRESS && peer.identity == identity::HOST {
        return Some(0);
    }
    lookup_peer(st, ep.ep_id, dir, peer.identity, proto, port)
        .or_else(|| {
            (peer.cidr_identity != peer.identity)
                .then(|| lookup_peer(st, ep.ep_id, dir, peer.cidr_identity, proto, port))
                .flatten()
        })
        .or_else(|| lookup_peer(st, ep.ep_id, dir, identity::ANY, proto, port))
}
