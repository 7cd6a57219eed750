//! Identities and the policy lookup: everything here reads maps user space compiled.

use aya_ebpf::maps::lpm_trie::Key;
use netpol_common::{
    identity, reason, Endpoint, IpcacheEntry, PolicyKey, PolicyValue, RangeKey, DIR_EGRESS, DIR_INGRESS,
    EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, PORT_ANY, PROTO_ANY,
    RANGE_FIXED_BITS,
};

use crate::maps::{IPCACHE, IPCACHE_LPM, POLICY, POLICY_RANGES};

#[inline(always)]
pub fn isolated(ep: &Endpoint, dir: u8) -> bool {
    let bit = if dir == DIR_INGRESS { EP_ISOLATED_INGRESS } else { EP_ISOLATED_EGRESS };
    ep.flags & bit != 0
}

#[inline(always)]
pub fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

/// Whether an identity is a pod's (label identities sit between the reserved ones and the
/// CIDR identities).
#[inline(always)]
pub fn is_pod(id: u32) -> bool {
    (identity::FIRST_LABEL..identity::FIRST_CIDR).contains(&id)
}

/// The peer's identity and CIDR identity: exact /32 first (pods, cheap), then the LPM trie.
#[inline(always)]
pub fn resolve(addr: u32) -> IpcacheEntry {
    if let Some(e) = unsafe { IPCACHE.get(&addr) } {
        return *e;
    }
    match IPCACHE_LPM.get(Key::new(32, addr)) {
        Some(e) => *e,
        None => IpcacheEntry { identity: identity::WORLD, cidr_identity: identity::WORLD },
    }
}

#[inline(always)]
fn lookup_peer(ep_id: u32, dir: u8, peer: u32, proto: u8, port_be: u16) -> Option<PolicyValue> {
    let mut key = PolicyKey { ep_id, peer, port: u16::from_be(port_be), proto, dir };
    if has_ports(proto) {
        if let Some(v) = unsafe { POLICY.get(&key) } {
            return Some(*v);
        }
        let rk = RangeKey { ep_id, peer, dir, proto, port_be };
        if let Some(v) = POLICY_RANGES.get(Key::new(RANGE_FIXED_BITS + 16, rk)) {
            return Some(*v);
        }
        key.port = PORT_ANY;
        if let Some(v) = unsafe { POLICY.get(&key) } {
            return Some(*v);
        }
    }
    key.port = PORT_ANY;
    key.proto = PROTO_ANY;
    unsafe { POLICY.get(&key) }.copied()
}

/// The entry that allows this flow for the endpoint in `dir`, if any. Policies have only
/// allow rules, so the first hit decides; the order picks the most specific entry (its
/// rule id, and whether it sends the flow to the DNS proxy).
#[inline(always)]
pub fn policy_lookup(
    ep_id: u32,
    dir: u8,
    peer: &IpcacheEntry,
    proto: u8,
    port_be: u16,
) -> Option<PolicyValue> {
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

/// Whether an isolated endpoint admits a flow in `dir`, with the reason and the rule: the
/// node itself may always reach its pods (kubelet probes); a ClusterIP never (the socket
/// hooks translate it before a packet exists, so a packet still addressed to one bypassed
/// them and no policy can judge the backend it would reach — for new flows and re-judged
/// tracked ones alike); anything else needs a policy entry.
#[inline(always)]
pub fn admits(
    ep: &Endpoint,
    dir: u8,
    peer: &IpcacheEntry,
    proto: u8,
    port_be: u16,
) -> Option<(u8, PolicyValue)> {
    if dir == DIR_INGRESS && peer.identity == identity::HOST {
        return Some((reason::ALLOW_HOST, PolicyValue::default()));
    }
    if dir == DIR_EGRESS && peer.identity == identity::SERVICE {
        return None;
    }
    policy_lookup(ep.ep_id, dir, peer, proto, port_be).map(|v| (reason::ALLOW_POLICY, v))
}
