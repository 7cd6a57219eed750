//! Connection tracking: one LRU table for the node, keyed per endpoint and direction.
//!
//! Invariants:
//! - an entry exists only for a flow its creating direction allowed (by policy, or because
//!   that direction is not isolated);
//! - an entry verified under an older policy generation is re-judged before it passes
//!   anything, and a flow that is no longer allowed keeps a *revoked* tombstone, so its
//!   packets stay dropped (both ways) and cannot be re-adopted from the other side until the
//!   policy allows the flow again or the tombstone expires;
//! - a packet that misses (its entry was evicted, or predates the agent) is judged as new in
//!   its own direction and, when allowed, adopted — also mid-stream TCP segments — so a flood
//!   that evicts a pod's entries costs it at most the packets of the peer that speaks first,
//!   never the connection.

use aya_ebpf::bindings::BPF_NOEXIST;
use netpol_common::{
    counter, CtKey, CtValue, Endpoint, CT_CLOSING, CT_REVOKED, CT_TIMEOUT_CLOSING_NS, CT_TIMEOUT_OTHER_NS,
    CT_TIMEOUT_TCP_NS, CT_TOUCH_NS, DIR_EGRESS, DIR_INGRESS, IPPROTO_TCP,
};

use crate::{
    headers::{TCP_FIN, TCP_RST},
    maps::CONNTRACK,
    policy::{admits, isolated, resolve},
    verdict::count,
};

#[inline(always)]
pub fn other_dir(dir: u8) -> u8 {
    if dir == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    }
}

#[inline(always)]
fn timeout(proto: u8, flags: u32) -> u64 {
    if flags & CT_CLOSING != 0 {
        CT_TIMEOUT_CLOSING_NS
    } else if proto == IPPROTO_TCP {
        CT_TIMEOUT_TCP_NS
    } else {
        CT_TIMEOUT_OTHER_NS
    }
}

#[inline(always)]
fn closing(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// Refreshes an entry the packet matched. Writes at most once per CT_TOUCH_NS, and on
/// FIN/RST, so established flows do not dirty the cache line on every packet.
#[inline(always)]
fn touch(ct: *mut CtValue, now: u64, tcp_flags: u8) {
    unsafe {
        if now.wrapping_sub((*ct).last_seen) > CT_TOUCH_NS {
            (*ct).last_seen = now;
        }
        if closing(tcp_flags) && (*ct).flags & CT_CLOSING == 0 {
            (*ct).flags |= CT_CLOSING;
            (*ct).last_seen = now;
        }
    }
}

pub enum CtHit {
    Miss,
    Pass,
    Revoked(u32),
}

/// Looks a flow up in conntrack as seen by `ep` in `dir` (the direction that created the
/// entry). An entry verified under an older policy generation, or revoked, is re-judged.
#[inline(always)]
pub fn check(ep: &Endpoint, dir: u8, key: &CtKey, remote: u32, now: u64, tcp_flags: u8) -> CtHit {
    let ct = match CONNTRACK.get_ptr_mut(key) {
        Some(ct) => ct,
        None => return CtHit::Miss,
    };
    let (last_seen, flags, gen) = unsafe { ((*ct).last_seen, (*ct).flags, (*ct).policy_gen) };
    if now.wrapping_sub(last_seen) > timeout(key.proto, flags) {
        let _ = CONNTRACK.remove(key);
        return CtHit::Miss;
    }
    if gen != ep.policy_gen || flags & CT_REVOKED != 0 {
        if let Err(peer) = rejudge(ep, dir, key, remote, ct) {
            unsafe {
                (*ct).flags |= CT_REVOKED;
                (*ct).last_seen = now;
            }
            return CtHit::Revoked(peer);
        }
    }
    touch(ct, now, tcp_flags);
    CtHit::Pass
}

/// Re-judges a tracked flow against the endpoint's current policy: still allowed → the
/// entry is brought up to date; not → the peer's identity.
#[inline(always)]
fn rejudge(ep: &Endpoint, dir: u8, key: &CtKey, remote: u32, ct: *mut CtValue) -> Result<(), u32> {
    let (rule_id, peer_id) = if isolated(ep, dir) {
        let peer = resolve(remote);
        match admits(ep, dir, &peer, key.proto, key.dport) {
            Some((_, rule_id)) => (rule_id, peer.identity),
            None => return Err(peer.identity),
        }
    } else {
        (0, unsafe { (*ct).peer })
    };
    unsafe {
        (*ct).policy_gen = ep.policy_gen;
        (*ct).rule_id = rule_id;
        (*ct).peer = peer_id;
        (*ct).flags &= !CT_REVOKED;
    }
    Ok(())
}

/// Tracks a flow its direction just allowed. A full table is counted, the packet passes.
#[inline(always)]
pub fn create(ep: &Endpoint, key: &CtKey, now: u64, rule_id: u32, peer: u32, tcp_flags: u8) {
    let v = CtValue {
        last_seen: now,
        rule_id,
        policy_gen: ep.policy_gen,
        peer,
        flags: if closing(tcp_flags) { CT_CLOSING } else { 0 },
    };
    if CONNTRACK.insert(key, &v, BPF_NOEXIST as u64).is_err() {
        count(counter::CT_INSERT_FAILED);
    }
}
