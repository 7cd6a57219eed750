//! The event ring, always consumed. The agent reads every verdict event as the datapath
//! writes it — so the ring never fills behind a missing reader and `monitor` shows current
//! events — counts them (per reason, drops per endpoint), keeps the most recent ones in a
//! bounded buffer, and fans them out to followers (the API's follow stream).
//!
//! Invariants: memory is bounded (`RECENT` events; a follower that falls behind loses the
//! oldest of its backlog, counted, never the hub's); a slow follower never slows the reader.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use netpol_api::flows::Verdict;
use netpol_common::reason;
use tokio::sync::broadcast;
use tracing::warn;

use crate::datapath::{
    debuglog::{DebugLog, Step},
    events::{EventStream, EventView},
    Direction,
};

/// Events kept for `GET /v1/events`.
pub const RECENT: usize = 4096;
/// Events a follower may fall behind by before it loses the oldest.
const FOLLOW_BACKLOG: usize = 16_384;

/// What the hub has seen since the agent started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub received: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
    /// (direction, verdict, reason) → events.
    pub by_direction: BTreeMap<(Direction, Verdict, &'static str), u64>,
    /// Rule id → new flows it allowed (`allow-policy` events).
    pub allows_by_rule: BTreeMap<u32, u64>,
    /// Endpoint id → drop events.
    pub drops_by_endpoint: BTreeMap<u32, u64>,
}

pub struct EventHub {
    recent: Mutex<VecDeque<EventView>>,
    counts: Mutex<EventCounts>,
    followers: broadcast::Sender<EventView>,
    /// The debug steps of the endpoints being debugged.
    steps: broadcast::Sender<Step>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            counts: Mutex::default(),
            followers: broadcast::channel(FOLLOW_BACKLOG).0,
            steps: broadcast::channel(FOLLOW_BACKLOG).0,
        }
    }
}

impl EventHub {
    /// Takes in one batch read from the ring.
    pub fn publish(&self, batch: &[netpol_common::Event]) {
        for ev in batch {
            self.publish_view(ev, EventView::from(ev));
        }
    }

    /// Takes in an event the DNS proxy gives about a query (for `name`, when it asked one).
    pub fn publish_query(&self, ev: &netpol_common::Event, name: Option<&str>) {
        self.publish_view(ev, EventView { query: name.map(str::to_string), ..EventView::from(ev) });
    }

    fn publish_view(&self, ev: &netpol_common::Event, view: EventView) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.received += 1;
        *counts.by_reason.entry(reason::name(ev.reason)).or_default() += 1;
        *counts.by_direction.entry((view.direction, view.verdict, reason::name(ev.reason))).or_default() += 1;
        if ev.reason == reason::ALLOW_POLICY && ev.rule_id != 0 {
            *counts.allows_by_rule.entry(ev.rule_id).or_default() += 1;
        }
        if view.verdict == Verdict::Dropped {
            *counts.drops_by_endpoint.entry(ev.ep_id).or_default() += 1;
        }
        drop(counts);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(view.clone());
        // No follower is fine.
        let _ = self.followers.send(view);
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<EventView> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Every event from now on.
    pub fn follow(&self) -> broadcast::Receiver<EventView> {
        self.followers.subscribe()
    }

    /// Every debug step from now on.
    pub fn follow_steps(&self) -> broadcast::Receiver<Step> {
        self.steps.subscribe()
    }

    pub fn counts(&self) -> EventCounts {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Reads the ring into the hub for as long as the agent runs.
pub async fn consume(ring: RingBuf<MapData>, hub: Arc<EventHub>) {
    let mut stream = match EventStream::new(ring) {
        Ok(s) => s,
        Err(e) => return warn!("the event ring cannot be read: {e}"),
    };
    loop {
        match stream.next_batch().await {
            Ok(batch) => hub.publish(&batch),
            Err(e) => return warn!("reading the event ring failed: {e}"),
        }
    }
}

/// Reads the programs' debug steps into the hub for as long as the agent runs.
pub async fn consume_debug(log: DebugLog, hub: Arc<EventHub>) {
    // SAFETY: the DebugLog owns its ring's fd for as long as the AsyncFd owns the DebugLog.
    let registered =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => return warn!("the debug log cannot be read: {}", e.into_parts().1),
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => return warn!("reading the debug log failed: {e}"),
        };
        for step in guard.get_inner_mut().drain() {
            // No follower is fine.
            let _ = hub.steps.send(step);
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netpol_common::Event;

    fn ev(ep_id: u32, reason: u8) -> Event {
        Event { ep_id, reason, verdict: netpol_common::VERDICT_DROP, ..Default::default() }
    }

    #[test]
    fn the_hub_counts_keeps_the_latest_and_fans_out() {
        let hub = EventHub::default();
        let mut follower = hub.follow();
        let batch: Vec<Event> = (0..RECENT as u32 + 10).map(|i| ev(i % 3, reason::DROP_POLICY)).collect();
        hub.publish(&batch);
        let recent = hub.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent.last().unwrap().endpoint, (RECENT as u32 + 9) % 3, "the newest is last");
        let c = hub.counts();
        assert_eq!(c.received, RECENT as u64 + 10);
        assert_eq!(c.by_reason["drop-policy"], RECENT as u64 + 10);
        assert_eq!(c.drops_by_endpoint.values().sum::<u64>(), RECENT as u64 + 10);
        assert_eq!(follower.try_recv().unwrap().endpoint, 0);
    }
}
