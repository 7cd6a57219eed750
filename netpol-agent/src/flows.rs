//! Verdicts in words (`GET /v1/flows`, `netpol monitor`): each event with the pods at its
//! ends, the policy and rule behind an allow, and for a drop its reason — for a policy
//! drop, which pod's policies do not allow it and which policies isolate that pod there.
//!
//! Invariants: the [`Directory`] is rebuilt after every compile from the model and compile
//! the datapath was given, and read without the agent's lock (a follower never slows the
//! agent); an address no pod, node, Service or learned name has is shown as itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use netpol_api::flows::{DebugStep, Flow, FlowPeer, Verdict};
use netpol_common::{debug, reason};
use netpol_policy::{
    compiler::{Compiled, LocalEndpoint, RuleKey},
    entries::Direction,
    model::Model,
    policy::PolicyId,
    services,
};

use crate::datapath::{
    debuglog::Step,
    events::{identity_name, EventView},
    monotonic_coarse_ns, proto_name,
};

/// What names a verdict's numbers.
#[derive(Debug, Default)]
pub struct Directory {
    /// Address → `ns/pod`, for every pod the model knows.
    pods: BTreeMap<Ipv4Addr, String>,
    /// Local endpoint id → `ns/pod`.
    endpoints: BTreeMap<u32, String>,
    /// Other things with an address: `node NAME`, `ClusterIP ns/name`, learned DNS names.
    names: BTreeMap<Ipv4Addr, Vec<String>>,
    rules: BTreeMap<u32, RuleKey>,
    isolating: BTreeMap<(u32, Direction), BTreeSet<PolicyId>>,
    /// Local endpoints (ep_id) held closed: their pods are not known yet.
    held: BTreeSet<u32>,
}

impl Directory {
    pub fn new(model: &Model, compiled: &Compiled, endpoints: &[LocalEndpoint]) -> Directory {
        let key = |ns: &str, name: &str| format!("{ns}/{name}");
        let pods = model.policy_pods().map(|((ns, name), _, ip)| (ip, key(ns, name))).collect();
        let mut names: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        for (name, ips) in &model.learned {
            for ip in ips {
                names.entry(*ip).or_default().push(name.to_string());
            }
        }
        for node in model.nodes.keys() {
            for ip in model.node_addresses(node) {
                names.entry(ip).or_default().push(format!("node {node}"));
            }
        }
        for ((ns, name), svc) in &model.services {
            for ip in services::cluster_ips(svc) {
                names.entry(ip).or_default().push(format!("ClusterIP {ns}/{name}"));
            }
        }
        Directory {
            pods,
            endpoints: endpoints.iter().map(|e| (e.ep_id, key(&e.namespace, &e.pod))).collect(),
            names,
            rules: compiled.rules.clone(),
            isolating: compiled.isolating.clone(),
            held: endpoints
                .iter()
                .filter(|e| compiled.held_closed.contains(&e.ifindex))
                .map(|e| e.ep_id)
                .collect(),
        }
    }

    /// What has the address: a pod, else other names it has.
    pub fn peer(&self, ip: Ipv4Addr, port: Option<u16>) -> FlowPeer {
        let pod = self.pods.get(&ip).cloned();
        let names = if pod.is_some() { Vec::new() } else { self.names.get(&ip).cloned().unwrap_or_default() };
        FlowPeer { ip, port, pod, names }
    }

    /// The event in words; `time_ms` is when it happened (wall clock).
    pub fn describe(&self, ev: &EventView, time_ms: u64) -> Flow {
        let ports = matches!(ev.protocol.as_str(), "tcp" | "udp" | "sctp");
        let port = |p: u16| ports.then_some(p);
        let (source, destination) =
            (self.peer(ev.src, port(ev.src_port)), self.peer(ev.dst, port(ev.dst_port)));
        let pod = self.endpoints.get(&ev.endpoint).cloned();
        let code = ev.code;
        let rule = (code == reason::ALLOW_POLICY).then(|| self.rules.get(&ev.rule_id)).flatten();
        let mut flow = Flow {
            time_ms,
            verdict: ev.verdict,
            direction: ev.direction.to_string(),
            pod,
            source,
            destination,
            protocol: ev.protocol.to_uppercase(),
            port: port(ev.dst_port),
            policy: rule.map(|r| r.policy.to_string()),
            rule: rule.map(|r| r.to_string()),
            reason: String::new(),
            code: ev.reason.to_string(),
            query: ev.query.clone(),
        };
        flow.reason = self.reason(&flow, code, ev);
        if flow.verdict == Verdict::Audit {
            flow.reason = format!("audit mode, passed: {}", flow.reason);
        }
        flow
    }

    fn reason(&self, flow: &Flow, code: u8, ev: &EventView) -> String {
        let pod = flow.pod.clone().unwrap_or_else(|| format!("endpoint {}", ev.endpoint));
        let (toward, remote) = match ev.direction {
            Direction::Ingress => ("from", &flow.source),
            Direction::Egress => ("to", &flow.destination),
        };
        let on = match flow.port {
            Some(p) => format!("{p}/{}", flow.protocol),
            None => flow.protocol.clone(),
        };
        let remote = FlowPeer { port: None, ..remote.clone() };
        match code {
            reason::DROP_POLICY => {
                let dir = ev.direction;
                let mut words = format!("no policy selecting {pod} allows {dir} {toward} {remote} on {on}");
                match self.isolating.get(&(ev.endpoint, dir)) {
                    Some(ps) => {
                        let list: Vec<String> = ps.iter().map(PolicyId::to_string).collect();
                        words += &format!(" (isolated for {dir} by {})", list.join(", "));
                    }
                    None if self.held.contains(&ev.endpoint) => {
                        words += " (held isolated: its pod is not known yet)"
                    }
                    // Judged before the last compile, which no longer isolates the pod.
                    None => words += &format!(" (no policy isolates it for {dir} since)"),
                }
                words
            }
            reason::ALLOW_POLICY => match &flow.rule {
                Some(rule) => format!("allowed by {rule}"),
                None => reason::words(code).to_string(),
            },
            reason::ALLOW_NOT_ISOLATED => format!("no policy isolates {pod} for {}", ev.direction),
            reason::DROP_SPOOFED => format!("spoofed source: {} is not the address of {pod}", ev.src),
            reason::DROP_DNS_REFUSED => {
                let name = flow.query.as_deref().unwrap_or("?");
                let refused = if flow.verdict == Verdict::Audit { "would be refused" } else { "refused" };
                format!("DNS query for {name} {refused}: no DNS rule of {pod} allows it")
            }
            _ => reason::words(code).to_string(),
        }
    }
}

impl Directory {
    /// A debug step in words (`time_ms`: when it was read).
    pub fn describe_step(&self, step: &Step, time_ms: u64) -> DebugStep {
        let pod =
            self.endpoints.get(&step.ep_id).cloned().unwrap_or_else(|| format!("endpoint {}", step.ep_id));
        let [a, b, c, d] = step.values;
        let words = match step.step {
            debug::STEP_PARSE => {
                let ports = (a as u8 != netpol_common::IPPROTO_ICMP).then_some((d >> 16, d & 0xffff));
                let (src, dst) = (step.address(1), step.address(2));
                let (src, dst) = match ports {
                    Some((s, t)) => (self.peer(src, Some(s as u16)), self.peer(dst, Some(t as u16))),
                    None => (self.peer(src, None), self.peer(dst, None)),
                };
                format!("{} {src} -> {dst}", proto_name(a as u8).to_uppercase())
            }
            debug::STEP_CONNTRACK => debug::CT_NAMES.get(a as usize).copied().unwrap_or("?").to_string(),
            debug::STEP_IPCACHE => format!(
                "{} is identity {}, CIDR identity {}",
                self.peer(step.address(0), None),
                identity_name(b),
                identity_name(c)
            ),
            debug::STEP_POLICY if a == 0 => format!("not isolated for {}", step.direction),
            debug::STEP_POLICY => self.verdict_words(c as u8, b),
            debug::STEP_VERDICT => {
                let v = match (a, b) {
                    (1, _) => Verdict::Dropped,
                    (_, 1) => Verdict::Audit,
                    _ => Verdict::Allowed,
                };
                format!("{v} ({}): {}", reason::name(c as u8), self.verdict_words(c as u8, d))
            }
            _ => format!("{:?}", step.values),
        };
        DebugStep { time_ms, pod, direction: step.direction.to_string(), step: step.name().into(), words }
    }

    fn verdict_words(&self, code: u8, rule: u32) -> String {
        match (code, self.rules.get(&rule)) {
            (reason::ALLOW_POLICY, Some(rule)) => format!("allowed by {rule}"),
            _ => reason::words(code).to_string(),
        }
    }
}
/// The current directory, swapped whole after each compile.
#[derive(Debug, Default)]
pub struct DirectoryCell(Mutex<Arc<Directory>>);

impl DirectoryCell {
    pub fn set(&self, d: Directory) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
    }

    pub fn get(&self) -> Arc<Directory> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The event in words, its time on the wall clock.
    pub fn describe(&self, ev: &EventView) -> Flow {
        let age_ms = monotonic_coarse_ns().saturating_sub(ev.ts_ns) / 1_000_000;
        let now = crate::dnsproxy::learned::now_ms();
        self.get().describe(ev, now.saturating_sub(age_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netpol_common::{
        Event, DIR_EGRESS, DIR_INGRESS, IPPROTO_TCP, IPPROTO_UDP, VERDICT_ALLOW, VERDICT_DROP,
    };
    use netpol_policy::{model::Object, names::Name, policy::PolicyKind};
    use serde_json::json;

    fn pod(name: &str, ip: &str) -> Object {
        let p = json!({"metadata": {"name": name, "namespace": "x", "uid": name},
                       "spec": {"nodeName": "n1", "containers": []}, "status": {"podIP": ip, "phase": "Running"}});
        Object::Pod(Box::new(serde_json::from_value(p).unwrap()))
    }

    fn ev(reason: u8, dir: u8, src: [u8; 4], dst: [u8; 4], rule_id: u32) -> EventView {
        let verdict = if reason::is_drop(reason) { VERDICT_DROP } else { VERDICT_ALLOW };
        let proto = if reason == reason::DROP_DNS_REFUSED { IPPROTO_UDP } else { IPPROTO_TCP };
        EventView::from(&Event {
            ep_id: 1,
            saddr: u32::from_ne_bytes(src),
            daddr: u32::from_ne_bytes(dst),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            rule_id,
            proto,
            dir,
            verdict,
            reason,
            ..Default::default()
        })
    }

    /// Each verdict names both ends (a pod, a learned name, an address) and says why.
    #[test]
    fn verdicts_are_described_with_names_and_reasons() {
        let mut model = Model::default();
        for (name, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2")] {
            model.upsert(pod(name, ip)).unwrap();
        }
        model.learned.insert(Name::parse("songlaa.com").unwrap(), [Ipv4Addr::new(198, 51, 100, 10)].into());
        let policy = PolicyId::new(PolicyKind::NetworkPolicy, "x", "web");
        let mut compiled = Compiled::default();
        let rule = RuleKey { policy: policy.clone(), part: 0, direction: Direction::Ingress, index: 0 };
        compiled.rules.insert(7, rule);
        compiled.isolating.insert((1, Direction::Ingress), [policy].into());
        let ep = LocalEndpoint {
            ifindex: 9,
            ep_id: 1,
            ip: Ipv4Addr::new(10, 0, 0, 2),
            namespace: "x".into(),
            pod: "b".into(),
        };
        let held = LocalEndpoint {
            ifindex: 10,
            ep_id: 2,
            ip: Ipv4Addr::new(10, 0, 0, 3),
            namespace: "x".into(),
            pod: "c".into(),
        };
        compiled.held_closed.insert(10);
        let dir = Directory::new(&model, &compiled, &[ep, held]);
        let (a, b, world) = ([10, 0, 0, 1], [10, 0, 0, 2], [198, 51, 100, 10]);

        let f = dir.describe(&ev(reason::DROP_POLICY, DIR_INGRESS, a, b, 0), 0);
        assert_eq!((f.verdict, f.pod.as_deref(), f.port), (Verdict::Dropped, Some("x/b"), Some(80)));
        assert_eq!(
            f.reason,
            "no policy selecting x/b allows ingress from x/a on 80/TCP (isolated for ingress by NetworkPolicy x/web)"
        );
        let f = dir.describe(&ev(reason::ALLOW_POLICY, DIR_INGRESS, a, b, 7), 0);
        assert_eq!(f.policy.as_deref(), Some("NetworkPolicy x/web"));
        assert_eq!(f.reason, "allowed by NetworkPolicy x/web ingress[0]");
        let f = dir.describe(&ev(reason::DROP_POLICY, DIR_EGRESS, b, world, 0), 0);
        assert_eq!(f.destination.to_string(), "songlaa.com (198.51.100.10):80");
        assert!(f.reason.ends_with("(no policy isolates it for egress since)"), "{}", f.reason);
        let f =
            dir.describe(&EventView { endpoint: 2, ..ev(reason::DROP_POLICY, DIR_EGRESS, b, world, 0) }, 0);
        assert!(f.reason.ends_with("(held isolated: its pod is not known yet)"), "{}", f.reason);
        let f = dir.describe(&ev(reason::DROP_SPOOFED, DIR_EGRESS, [10, 0, 0, 66], world, 0), 0);
        assert_eq!(f.reason, "spoofed source: 10.0.0.66 is not the address of x/b");
        assert_eq!(f.source.to_string(), "10.0.0.66:40000");
        let mut refused = ev(reason::DROP_DNS_REFUSED, DIR_EGRESS, b, world, 0);
        refused.query = Some("evil.example".into());
        let f = dir.describe(&refused, 0);
        assert_eq!(f.reason, "DNS query for evil.example refused: no DNS rule of x/b allows it");
        assert_eq!((f.protocol.as_str(), f.code.as_str()), ("UDP", "drop-dns-refused"));
    }
}
