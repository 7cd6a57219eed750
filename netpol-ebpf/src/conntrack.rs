//! Connection tracking: one LRU table for the node, keyed per endpoint by the flow as the
//! endpoint sees it (local side, remote side), so a packet finds its flow with one lookup
//! whichever way it goes; the entry records the direction the flow started in.
//!
//! Invariants:
//! - an entry exists only for a flow its starting direction allowed (by policy, or because
//!   that direction is not isolated) or audit mode let through; ending audit mode bumps the
//!   endpoint's generation, so the latter are re-judged and cut;
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
    counter, ct_timeout_ns, debug, CtKey, CtValue, Endpoint, CT_CLOSING, CT_DNS_PROXY, CT_REVOKED,
    CT_TOUCH_NS, DIR_EGRESS, EP_AUDIT, POLICY_DNS_PROXY,
};

use crate::{
    headers::{TCP_FIN, TCP_RST},
    maps::CONNTRACK,
    policy::{admits, isolated, resolve},
    verdict::{count, Flow},
};

/// The conntrack key of a packet travelling in `dir` (seen from `ep`).
#[inline(always)]
pub fn key(ep_id: u32, dir: u8, f: &Flow) -> CtKey {
    let (local_addr, remote_addr, local_port, remote_port) = if dir == DIR_EGRESS {
        (f.saddr, f.daddr, f.sport, f.dport)
    } else {
        (f.daddr, f.saddr, f.dport, f.sport)
    };
    CtKey { ep_id, local_addr, remote_addr, local_port, remote_port, proto: f.proto, _pad: [0; 3] }
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
    /// A packet of a tracked flow, going the way the flow started (true) or back, and
    /// whether the flow goes to the DNS proxy.
    Pass {
        forward: bool,
        proxy: bool,
    },
    Revoked(u32),
}

impl CtHit {
    /// Its `netpol_common::debug` code.
    #[inline(always)]
    pub fn code(&self) -> u8 {
        match self {
            CtHit::Miss => debug::CT_MISS,
            CtHit::Pass { forward: true, proxy: true } => debug::CT_PROXY,
            CtHit::Pass { forward: true, proxy: false } => debug::CT_FORWARD,
            CtHit::Pass { forward: false, .. } => debug::CT_REPLY,
            CtHit::Revoked(_) => debug::CT_REVOKED,
        }
    }
}

/// Looks the packet's flow up. An entry verified under an older policy generation, or
/// revoked, is re-judged first.
#[inline(always)]
pub fn check(ep: &Endpoint, dir: u8, key: &CtKey, now: u64, tcp_flags: u8) -> CtHit {
    let ct = match CONNTRACK.get_ptr_mut(key) {
        Some(ct) => ct,
        None => return CtHit::Miss,
    };
    let (last_seen, flags, gen, started) =
        unsafe { ((*ct).last_seen, (*ct).flags, (*ct).policy_gen, (*ct).dir) };
    if now.wrapping_sub(last_seen) > ct_timeout_ns(key.proto, flags) {
        let _ = CONNTRACK.remove(key);
        return CtHit::Miss;
    }
    if gen != ep.policy_gen || flags & CT_REVOKED != 0 {
        if let Err(peer) = rejudge(ep, key, ct, started) {
            unsafe {
                if ep.flags & EP_AUDIT != 0 {
                    // Audit mode lets this packet pass and reports it; the flow is then
                    // verified for this generation (re-judged when audit mode ends).
                    (*ct).policy_gen = ep.policy_gen;
                    (*ct).flags &= !CT_REVOKED;
                } else {
                    (*ct).flags |= CT_REVOKED;
                    (*ct).last_seen = now;
                }
            }
            return CtHit::Revoked(peer);
        }
    }
    touch(ct, now, tcp_flags);
    let proxy = unsafe { (*ct).flags } & CT_DNS_PROXY != 0;
    CtHit::Pass { forward: started == dir, proxy }
}

/// Re-judges a tracked flow against the policy of the direction it started in: still
/// allowed → the entry is brought up to date; not → the peer's identity.
#[inline(always)]
fn rejudge(ep: &Endpoint, key: &CtKey, ct: *mut CtValue, started: u8) -> Result<(), u32> {
    let (rule_id, peer_id, proxy) = if isolated(ep, started) {
        let peer = resolve(key.remote_addr);
        // The port the flow's first packet went to.
        let port = if started == DIR_EGRESS { key.remote_port } else { key.local_port };
        match admits(ep, started, &peer, key.proto, port) {
            Some((_, v)) => (v.rule_id, peer.identity, v.flags & POLICY_DNS_PROXY != 0),
            None => return Err(peer.identity),
        }
    } else {
        (0, unsafe { (*ct).peer }, false)
    };
    unsafe {
        (*ct).policy_gen = ep.policy_gen;
        (*ct).rule_id = rule_id;
        (*ct).peer = peer_id;
        (*ct).flags &= !(CT_REVOKED | CT_DNS_PROXY);
        if proxy {
            (*ct).flags |= CT_DNS_PROXY;
        }
    }
    Ok(())
}

/// Whether a flow is tracked and not revoked (for ICMP errors quoting it).
#[inline(always)]
pub fn live(key: &CtKey) -> bool {
    matches!(unsafe { CONNTRACK.get(key) }, Some(v) if v.flags & CT_REVOKED == 0)
}

/// What a new tracked flow records: the rule and peer that allowed it, and whether it goes
/// to the DNS proxy.
pub struct Allowed {
    pub rule_id: u32,
    pub peer: u32,
    pub proxy: bool,
}

/// Tracks a flow its direction just allowed. A full table is counted, the packet passes.
#[inline(always)]
pub fn create(ep: &Endpoint, dir: u8, key: &CtKey, now: u64, a: &Allowed, tcp_flags: u8) {
    let closing = if closing(tcp_flags) { CT_CLOSING } else { 0 };
    let v = CtValue {
        last_seen: now,
        rule_id: a.rule_id,
        policy_gen: ep.policy_gen,
        peer: a.peer,
        flags: closing | if a.proxy { CT_DNS_PROXY } else { 0 },
        dir,
        _pad: 0,
    };
    if CONNTRACK.insert(key, &v, BPF_NOEXIST as u64).is_err() {
        count(counter::CT_INSERT_FAILED);
    }
}
