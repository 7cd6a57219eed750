//! `netpol trace`: would a connection pass, and why — each side decided on the state the
//! datapath holds (the sender's egress, the receiver's ingress) by the programs' own lookup
//! ([`netpol_policy::lookup`]), named by the compile that wrote it.
//!
//! Invariants: a side is decided only on the node its pod is on (another node's state is
//! its agent's); the answer is what the kernel's maps say, not what the model would want.

use std::net::Ipv4Addr;

use netpol_api::flows::{FlowPeer, SideVerdict, Trace, TraceQuery, TraceSide};
use netpol_common::{IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use netpol_policy::{
    compiler::{Compiled, LocalEndpoint},
    entries::Direction,
    lookup::{self, Outcome},
    model::Model,
    names::Name,
    policy::PolicyId,
    state::MapState,
};

use crate::flows::Directory;

/// What the datapath holds and what names it.
pub struct Held<'a> {
    pub model: &'a Model,
    pub compiled: &'a Compiled,
    pub state: &'a MapState,
    pub endpoints: &'a [LocalEndpoint],
    /// The names of the last compile ([`crate::controller::Agent::directory`]).
    pub directory: &'a Directory,
}

/// `ns/pod`, `pod` (in default) or an address → its address.
pub(crate) fn address(model: &Model, who: &str) -> Result<Ipv4Addr, String> {
    if let Ok(ip) = who.parse() {
        return Ok(ip);
    }
    let (ns, name) = who.split_once('/').unwrap_or(("default", who));
    let key = (ns.to_string(), name.to_string());
    let pod = model.pods.get(&key).ok_or_else(|| format!("pod {ns}/{name} not found"))?;
    model.pod_address(&key, pod).ok_or_else(|| format!("pod {ns}/{name} has no address yet"))
}

fn protocol(p: &str) -> Result<u8, String> {
    match p.to_ascii_uppercase().as_str() {
        "TCP" => Ok(IPPROTO_TCP),
        "UDP" => Ok(IPPROTO_UDP),
        "SCTP" => Ok(IPPROTO_SCTP),
        "ICMP" => Ok(IPPROTO_ICMP),
        _ => Err(format!("unsupported protocol {p:?} (TCP, UDP, SCTP or ICMP)")),
    }
}

pub fn trace(held: &Held, q: &TraceQuery) -> Result<Trace, String> {
    let proto = protocol(&q.protocol)?;
    let (from, to) = (address(held.model, &q.from)?, address(held.model, &q.to)?);
    let dir = held.directory;
    let port = (proto != IPPROTO_ICMP).then_some(q.port);
    let sides = vec![
        side(held, dir, Direction::Egress, (from, to), proto, q),
        side(held, dir, Direction::Ingress, (to, from), proto, q),
    ];
    let passes: Option<Vec<bool>> = sides.iter().map(|s| s.verdict.passes()).collect();
    let allowed = match passes {
        Some(all) => Some(all.iter().all(|p| *p)),
        // A side here denies: another node's answer cannot change that.
        None if sides.iter().any(|s| s.verdict.passes() == Some(false)) => Some(false),
        None => None,
    };
    let protocol = match port {
        Some(p) => format!("{p}/{}", q.protocol.to_ascii_uppercase()),
        None => q.protocol.to_ascii_uppercase(),
    };
    Ok(Trace { from: dir.peer(from, None), to: dir.peer(to, None), protocol, allowed, sides })
}

/// One side: the pod at `local` in `direction`, `remote` the other end.
fn side(
    held: &Held,
    dir: &Directory,
    direction: Direction,
    (local, remote): (Ipv4Addr, Ipv4Addr),
    proto: u8,
    q: &TraceQuery,
) -> TraceSide {
    let peer = dir.peer(local, None);
    let who = peer.to_string();
    let (toward, other) = match direction {
        Direction::Egress => ("to", dir.peer(remote, None)),
        Direction::Ingress => ("from", dir.peer(remote, None)),
    };
    let mut out = TraceSide {
        direction: direction.to_string(),
        who: who.clone(),
        verdict: SideVerdict::NotAPod,
        policy: None,
        rule: None,
        isolated_by: Vec::new(),
        names: Vec::new(),
        explanation: String::new(),
    };
    let Some(ep) = held.endpoints.iter().find(|e| e.ip == local) else {
        (out.verdict, out.explanation) = match peer.pod {
            Some(_) => (SideVerdict::Elsewhere, format!("{who} is on another node: its agent decides")),
            None => (SideVerdict::NotAPod, "not a pod: no policy applies".into()),
        };
        return out;
    };
    out.isolated_by = isolating(held.compiled, ep.ep_id, direction);
    let outcome = lookup::outcome(held.state, ep.ifindex, direction.raw(), remote, proto, q.port);
    decide(held, ep, &mut out, outcome, (toward, &other), proto, q);
    if held.state.audited(ep.ifindex) && out.verdict == SideVerdict::Denied {
        out.verdict = SideVerdict::Audited;
        out.explanation = format!("audit mode, passes: {}", out.explanation);
    }
    out
}

/// The side's verdict from the datapath's lookup, and why.
fn decide(
    held: &Held,
    ep: &LocalEndpoint,
    out: &mut TraceSide,
    outcome: Outcome,
    (toward, other): (&str, &FlowPeer),
    proto: u8,
    q: &TraceQuery,
) {
    let (who, by) = (out.who.clone(), out.isolated_by.join(", "));
    let direction = &out.direction;
    match outcome {
        Outcome::Pass(0) => {
            out.verdict = SideVerdict::NotIsolated;
            out.explanation = format!("no policy isolates {who} for {direction}");
        }
        Outcome::Pass(rule_id) => {
            out.verdict = SideVerdict::Allowed;
            let rule = held.compiled.rules.get(&rule_id);
            out.policy = rule.map(|r| r.policy.to_string());
            out.rule = rule.map(|r| r.to_string());
            let named = out.rule.clone().unwrap_or_else(|| format!("rule {rule_id}"));
            out.explanation = format!("allowed by {named} (isolated for {direction} by {by})");
        }
        Outcome::Proxy(key) => {
            let names = held.compiled.dns.get(&key).cloned().unwrap_or_default();
            out.names = names.iter().map(|m| m.to_string()).collect();
            let asked = q.name.as_deref().and_then(|n| Name::parse(n).ok());
            let ok = asked.as_ref().is_some_and(|n| names.iter().any(|m| m.matches(n)));
            out.verdict = if ok { SideVerdict::Allowed } else { SideVerdict::DnsFiltered };
            out.explanation = format!(
                "DNS through the node's proxy: only queries for {} pass{}",
                out.names.join(", "),
                q.name
                    .as_deref()
                    .map_or(String::new(), |n| format!(" ({n}: {})", if ok { "allowed" } else { "refused" }))
            );
        }
        Outcome::Drop if held.compiled.held_closed.contains(&ep.ifindex) => {
            out.verdict = SideVerdict::Denied;
            out.explanation = format!("{who} is held isolated: its pod is not known yet");
        }
        Outcome::Drop if out.isolated_by.is_empty() => {
            out.verdict = SideVerdict::Denied;
            out.explanation = format!(
                "the datapath still isolates {who} for {direction}: the last compile is being written"
            );
        }
        Outcome::Drop => {
            out.verdict = SideVerdict::Denied;
            out.explanation = format!(
                "no policy selecting {who} allows {direction} {toward} {other} on {}; isolated for {direction} by {by}",
                on(proto, q)
            );
        }
    }
}

fn on(proto: u8, q: &TraceQuery) -> String {
    match proto {
        IPPROTO_ICMP => "ICMP".into(),
        _ => format!("{}/{}", q.port, q.protocol.to_ascii_uppercase()),
    }
}

fn isolating(compiled: &Compiled, ep_id: u32, direction: Direction) -> Vec<String> {
    let policies = compiled.isolating.get(&(ep_id, direction)).into_iter().flatten();
    policies.map(PolicyId::to_string).collect()
}
