//! Verdicts: the decision for a packet, its counter, and its event.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_coarse_ns,
    programs::TcContext,
};
use netpol_common::{
    counter, debug, reason, Endpoint, Event, EventBucket, EventBucketKey, DIR_INGRESS, DROP_EVENT_BURST,
    EP_AUDIT, NS_PER_DROP_EVENT, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DROP,
};

use crate::{
    debug::step,
    headers::ifindex,
    maps::{COUNTERS, EVENTS, EVENT_BUCKETS},
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
    /// A drop audit mode let pass (`drop` is then false, `reason` the drop's).
    pub audit: bool,
}

#[inline(always)]
pub fn verdict(drop: bool, reason: u8) -> Decision {
    Decision { drop, reason, rule_id: 0, peer: 0, audit: false }
}

/// The decision for an endpoint in audit mode: a drop its policies decide passes, marked.
#[inline(always)]
pub fn audit(ep: &Endpoint, mut d: Decision) -> Decision {
    if d.drop && ep.flags & EP_AUDIT != 0 && reason::auditable(d.reason) {
        d.drop = false;
        d.audit = true;
    }
    d
}

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *c += 1 };
    }
}

/// Takes a token from the drop-event bucket of `key`; false when it is empty.
#[inline(always)]
fn drop_event_token(key: &EventBucketKey, now: u64) -> bool {
    let Some(b) = EVENT_BUCKETS.get_ptr_mut(key) else {
        let full = EventBucket { refilled_ns: now, tokens: DROP_EVENT_BURST - 1 };
        // A full LRU evicts; a failed insert only forgets this key's rate.
        let _ = EVENT_BUCKETS.insert(key, &full, 0);
        return true;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let b = unsafe { &mut *b };
    let earned = now.saturating_sub(b.refilled_ns) / NS_PER_DROP_EVENT;
    if earned > 0 {
        b.tokens = (b.tokens + earned).min(DROP_EVENT_BURST);
        b.refilled_ns = now;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

#[inline(always)]
fn emit(ctx: &TcContext, ep_id: u32, dir: u8, f: &Flow, d: &Decision) {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Inbound drops per sending identity; outbound ones are the pod's own, whatever it forges.
    let key = EventBucketKey { ep_id, peer: if dir == DIR_INGRESS { d.peer } else { 0 } };
    // Audited packets are would-be drops: as many as a flood makes.
    if (d.drop || d.audit) && !drop_event_token(&key, now) {
        count(counter::EVENTS_RATE_LIMITED);
        return;
    }
    let ev = Event {
        ts_ns: now,
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
        verdict: if d.drop {
            VERDICT_DROP
        } else if d.audit {
            VERDICT_AUDIT
        } else {
            VERDICT_ALLOW
        },
        reason: d.reason,
    };
    if EVENTS.output::<Event>(&ev, 0).is_err() {
        count(counter::EVENTS_LOST);
    }
}

/// Counts the packet and returns its TC action; emits an event when asked.
#[inline(always)]
pub fn finish(ctx: &TcContext, ep_id: u32, dir: u8, f: &Flow, d: &Decision, event: bool) -> i32 {
    count(if d.audit { counter::AUDITED } else { d.reason as u32 });
    if event {
        emit(ctx, ep_id, dir, f, d);
    }
    if d.drop {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

/// The packet's verdict: counted, reported when asked, logged when the endpoint is debugged.
#[inline(always)]
pub fn conclude(ctx: &TcContext, ep: &Endpoint, dir: u8, f: &Flow, d: &Decision, event: bool) -> i32 {
    let fields = [d.drop as u32, d.audit as u32, d.reason as u32, d.rule_id];
    step(ctx, ep, dir, debug::STEP_VERDICT, fields);
    finish(ctx, ep.ep_id, dir, f, d, event)
}
