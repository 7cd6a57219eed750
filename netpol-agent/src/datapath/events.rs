//! Verdict events from the `EVENTS` ring buffer: why a packet was dropped, and which rule
//! let a flow in.

use std::{borrow::Cow, fmt, net::Ipv4Addr};

use aya::maps::{MapData, RingBuf};
use netpol_api::flows::Verdict;
use netpol_common::{identity, reason, Event, IPPROTO_ICMP, VERDICT_AUDIT, VERDICT_DROP};
use serde::{Deserialize, Serialize};
use tokio::io::{unix::AsyncFd, Interest};

use super::{proto_name, Direction};

fn decode(bytes: &[u8]) -> Option<Event> {
    (bytes.len() >= std::mem::size_of::<Event>())
        // SAFETY: Event is plain integers; read_unaligned copes with the ring's alignment.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
}

/// Reads every event waiting in the ring, without blocking.
pub fn drain(rb: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        if let Some(ev) = decode(&item) {
            out.push(ev);
        }
    }
    out
}

/// Async consumer of the ring buffer.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(rb: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd owns the RingBuf.
        let fd = unsafe { AsyncFd::register_with_interest(rb, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(EventStream { fd })
    }

    /// Waits for events and returns the next batch.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<Event>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let batch = drain(guard.get_inner_mut());
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

/// An event in readable form (and its JSON shape, as the agent's event stream serves it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// When the datapath judged the packet (CLOCK_MONOTONIC, coarse).
    pub ts_ns: u64,
    pub verdict: Verdict,
    pub reason: Cow<'static, str>,
    /// The reason's code (`netpol_common::reason`).
    #[serde(default)]
    pub code: u8,
    pub direction: Direction,
    pub endpoint: u32,
    pub ifindex: u32,
    pub protocol: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub peer_identity: u32,
    pub rule_id: u32,
    /// The name a DNS query asked (the DNS proxy's events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        // ICMP echo carries its identifier in a port slot; it is not a port.
        let ports = e.proto != IPPROTO_ICMP;
        EventView {
            ts_ns: e.ts_ns,
            verdict: verdict(e.verdict),
            reason: Cow::Borrowed(reason::name(e.reason)),
            code: e.reason,
            direction: Direction::from_raw(e.dir),
            endpoint: e.ep_id,
            ifindex: e.ifindex,
            protocol: proto_name(e.proto),
            src: Ipv4Addr::from(e.saddr.to_ne_bytes()),
            dst: Ipv4Addr::from(e.daddr.to_ne_bytes()),
            src_port: if ports { u16::from_be(e.sport) } else { 0 },
            dst_port: if ports { u16::from_be(e.dport) } else { 0 },
            peer_identity: e.peer,
            rule_id: e.rule_id,
            query: None,
        }
    }
}

/// `Event::verdict` as the API names it.
pub fn verdict(raw: u8) -> Verdict {
    match raw {
        VERDICT_DROP => Verdict::Dropped,
        VERDICT_AUDIT => Verdict::Audit,
        _ => Verdict::Allowed,
    }
}

pub fn identity_name(id: u32) -> String {
    match id {
        identity::ANY => "any".into(),
        identity::HOST => "host".into(),
        identity::WORLD => "world".into(),
        identity::REMOTE_NODE => "remote-node".into(),
        identity::INIT => "init".into(),
        n if n >= identity::FIRST_CIDR => format!("cidr:{n}"),
        n => n.to_string(),
    }
}

impl fmt::Display for EventView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<7} {:<7} ep={} {} {}:{} -> {}:{} peer={} reason={}",
            self.verdict,
            self.direction,
            self.endpoint,
            self.protocol,
            self.src,
            self.src_port,
            self.dst,
            self.dst_port,
            identity_name(self.peer_identity),
            self.reason
        )?;
        if self.rule_id != 0 {
            write!(f, " rule={}", self.rule_id)?;
        }
        if let Some(q) = &self.query {
            write!(f, " query={q}")?;
        }
        Ok(())
    }
}
