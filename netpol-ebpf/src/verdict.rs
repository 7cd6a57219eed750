//! Verdicts: the decision for a packet, its counter, and its event.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_coarse_ns,
    programs::TcContext,
};
use netpol_common::{counter, Event, VERDICT_ALLOW, VERDICT_DROP};

use crate::{
    headers::ifindex,
    maps::{COUNTERS, EVENTS},
};

/// The 5-tuple of a packet. Ports in network order; for ICMP echo the identifier stands in
/// for a port (request: sport, reply: dport) so a reply's reversed tuple is its request's.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
}

pub const NO_FLOW: Flow = Flow { saddr: 0, daddr: 0, sport: 0, dport: 0, proto: 0, tcp_flags: 0 };

pub struct Decision {
    pub drop: bool,
    pub reason: u8,
    pub rule_id: u32,
    pub peer: u32,
}

#[inline(always)]
pub fn verdict(drop: bool, reason: u8) -> Decision {
    Decision { drop, reason, rule_id: 0, peer: 0 }
}

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *c += 1 };
    }
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
pub fn finish(ctx: &TcContext, ep_id: u32, dir: u8, f: &Flow, d: &Decision, event: bool) -> i32 {
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
