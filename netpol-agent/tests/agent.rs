//! The agent process with real traffic (root): pods wired in namespaces, handed to the
//! agent through its API (as netpol-cni does), objects applied to its local store.
//! - a SIGKILL under continuous probing: allowed traffic keeps flowing, denied traffic stays
//!   denied, and the restarted agent converges without rewriting anything;
//! - churn: while policies and labels change, flows allowed by every state never drop and
//!   flows denied by every state never pass.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use netpol_tests::{
    agent::AgentProcess,
    need_root, objects,
    topology::Node,
    traffic::{tcp_probe, tcp_server, Conn, Prober, Server},
};
use serde_json::{json, Value};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 70, 255, 1);
const ALLOWED: Duration = Duration::from_secs(3);
const DENIED: Duration = Duration::from_millis(400);

/// A node with pods, and the agent process enforcing them (torn down on drop).
struct Lab {
    _servers: Vec<Server>,
    agent: AgentProcess,
    node: Node,
}

impl Lab {
    fn new(prefix: &str, pods: &[(&str, Ipv4Addr)]) -> Option<Lab> {
        if need_root() {
            return None;
        }
        let mut node = Node::new(prefix, NODE_IP);
        for (name, ip) in pods {
            node.add_pod(name, *ip);
        }
        let agent = AgentProcess::start(Path::new(env!("CARGO_BIN_EXE_netpol-agent")), &node.ns, prefix);
        let lab = Lab { _servers: Vec::new(), agent, node };
        for (name, ip) in pods {
            let pod = lab.node.pod(name);
            let ifindex = lab.node.ns.ip(&["-o", "link", "show", &pod.host_if]);
            let ifindex: u32 = ifindex.split(':').next().unwrap().trim().parse().unwrap();
            let req = json!({"containerId": format!("c-{name}"), "ifname": "eth0", "netns": pod.ns.path(),
                "podNamespace": "default", "podName": name, "ip": ip.to_string(),
                "hostIfname": pod.host_if, "hostIfindex": ifindex});
            let st = lab.api("POST", "/v1/endpoints", Some(req));
            assert_eq!(st["enforced"], true, "{st}");
        }
        Some(lab)
    }

    fn kill(&mut self) {
        self.agent.kill();
    }

    fn start(&mut self) {
        self.agent.restart();
    }

    fn try_api(&self, method: &str, path: &str, body: Option<Value>) -> Option<String> {
        self.agent.try_api(method, path, body.as_ref())
    }

    fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.agent.api(method, path, body.as_ref())
    }

    /// Applies objects; every one must be accepted.
    fn apply(&self, objects: Value) {
        let res = self.api("POST", "/v1/objects", Some(objects));
        for r in res.as_array().unwrap() {
            assert!(r["error"].is_null(), "{r}");
        }
    }

    fn ns(&self, pod: &str) -> String {
        self.node.pod(pod).ns.name.clone()
    }

    fn datapath_show(&self) -> String {
        let out = self.agent.command(&["datapath", "show", "-o", "json"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn pod(name: &str, ip: Ipv4Addr, app: &str) -> Value {
    let http = json!([{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 80}]}]);
    objects::pod("default", name, Some(ip)).label("app", app).set("spec.containers", http).json()
}

fn policy(name: &str, selector: Value, ingress: Value) -> Value {
    objects::policy("default", name, json!({"podSelector": selector, "ingress": ingress})).json()
}

#[test]
fn a_killed_agent_leaves_enforcement_intact_and_converges_on_restart() {
    let (a, b, c) = (Ipv4Addr::new(10, 70, 0, 2), Ipv4Addr::new(10, 70, 0, 3), Ipv4Addr::new(10, 70, 0, 4));
    let Some(mut lab) = Lab::new("agrst", &[("a", a), ("b", b), ("c", c)]) else { return };
    lab._servers.push(tcp_server(&lab.ns("b"), 80));
    lab.apply(json!([
        pod("a", a, "a"),
        pod("b", b, "b"),
        pod("c", c, "c"),
        policy(
            "b-from-a",
            json!({"matchLabels": {"app": "b"}}),
            json!([{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": "http"}]}])
        ),
    ]));
    let to_b = SocketAddrV4::new(b, 80);
    assert!(tcp_probe(&lab.ns("a"), to_b, ALLOWED));
    assert!(!tcp_probe(&lab.ns("c"), to_b, DENIED));
    let before = lab.datapath_show();

    let prober = Prober::start(vec![(lab.ns("a"), to_b)], vec![(lab.ns("c"), to_b)], (ALLOWED, DENIED));
    let mut conn = Conn::open(&lab.ns("a"), to_b, ALLOWED).expect("long-lived connection");
    std::thread::sleep(Duration::from_millis(300));
    lab.kill();
    // Nobody runs: the datapath enforces on its own.
    std::thread::sleep(Duration::from_millis(800));
    assert!(conn.exchange("while dead", ALLOWED));
    lab.start();
    std::thread::sleep(Duration::from_millis(500));
    assert!(conn.exchange("after restart", ALLOWED));
    let (rounds, failed, leaked) = prober.finish();
    assert!(rounds >= 3, "only {rounds} probe rounds");
    assert_eq!((failed, leaked), (0, 0), "allowed probes failed / denied probes passed across the restart");
    // The restart rewrote nothing: not even a policy generation moved.
    assert_eq!(lab.datapath_show(), before);

    // And it converges on new state.
    lab.apply(json!([policy(
        "b-from-c",
        json!({"matchLabels": {"app": "b"}}),
        json!([{"from": [{"podSelector": {"matchLabels": {"app": "c"}}}]}])
    )]));
    assert!(tcp_probe(&lab.ns("c"), to_b, ALLOWED));
    let metrics = lab.try_api("GET", "/metrics", None).unwrap();
    assert!(metrics.contains("netpol_endpoints 3"), "{metrics}");
    assert!(metrics.contains("netpol_policies{state=\"accepted\"} 2"), "{metrics}");
}

#[test]
fn churn_never_drops_what_every_state_allows_nor_passes_what_every_state_denies() {
    let ips: Vec<Ipv4Addr> = (2..6).map(|i| Ipv4Addr::new(10, 70, 1, i)).collect();
    let names = ["a", "b", "c", "d"];
    let pods: Vec<(&str, Ipv4Addr)> = names.iter().copied().zip(ips.iter().copied()).collect();
    let Some(mut lab) = Lab::new("agchurn", &pods) else { return };
    lab._servers.push(tcp_server(&lab.ns("b"), 80));
    let b_sel = json!({"matchLabels": {"app": "b"}});
    // Always: a may reach b on 80 (two policies over time say so), d never may.
    lab.apply(json!([
        pod("a", ips[0], "a"),
        pod("b", ips[1], "b"),
        pod("c", ips[2], "c"),
        pod("d", ips[3], "d"),
        policy(
            "always",
            b_sel.clone(),
            json!([{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}]}])
        ),
    ]));
    let to_b = SocketAddrV4::new(ips[1], 80);
    let prober = Prober::start(vec![(lab.ns("a"), to_b)], vec![(lab.ns("d"), to_b)], (ALLOWED, DENIED));
    let mut conn = Conn::open(&lab.ns("a"), to_b, ALLOWED).expect("long-lived connection");
    let mut exchanges_failed = 0;
    for i in 0..40 {
        let step = match i % 5 {
            // Another policy also allowing a (and c); then its removal.
            0 => json!([policy(
                "also",
                b_sel.clone(),
                json!([{"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "c"]}]}}]}])
            )]),
            // Relabel c in and out of "also"; and a, keeping app=a (its identity changes
            // under its allowed flows).
            1 => {
                let mut a = pod("a", ips[0], "a");
                a["metadata"]["labels"]["round"] = json!(i.to_string());
                json!([pod("c", ips[2], if i % 2 == 0 { "x" } else { "c" }), a])
            }
            // "always" rewritten (a superset), then back.
            2 => json!([policy(
                "always",
                b_sel.clone(),
                json!([{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}, {"port": 81}]}])
            )]),
            3 => json!([policy(
                "always",
                b_sel.clone(),
                json!([{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}]}])
            )]),
            // a becomes egress-isolated, allowed to b:80 only.
            _ => json!([{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": "egress-a", "namespace": "default"},
                         "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
                                  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}]}]}}]),
        };
        lab.apply(step);
        if i % 5 == 0 && i > 0 {
            let res =
                lab.try_api("DELETE", "/v1/objects?kind=NetworkPolicy&namespace=default&name=also", None);
            assert!(res.is_some());
        }
        if !conn.exchange(&format!("churn {i}"), ALLOWED) {
            exchanges_failed += 1;
        }
    }
    let (rounds, failed, leaked) = prober.finish();
    assert!(rounds >= 5, "only {rounds} probe rounds");
    assert_eq!(exchanges_failed, 0, "the long-lived allowed connection was cut");
    assert_eq!((failed, leaked), (0, 0), "invariant flows broke during churn");
    // The churn did move what it should: c is allowed only while "also" exists and c is labelled c.
    lab.apply(json!([pod("c", ips[2], "c"),
        policy("also", b_sel.clone(), json!([{"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "c"]}]}}]}]))]));
    assert!(tcp_probe(&lab.ns("c"), to_b, ALLOWED));
    lab.apply(json!([pod("c", ips[2], "x")]));
    assert!(!tcp_probe(&lab.ns("c"), to_b, DENIED));
}

#[test]
fn the_agent_reads_every_event_and_monitor_follows_the_current_ones() {
    let (a, b, c) = (Ipv4Addr::new(10, 70, 1, 2), Ipv4Addr::new(10, 70, 1, 3), Ipv4Addr::new(10, 70, 1, 4));
    let Some(lab) = Lab::new("agev", &[("a", a), ("b", b), ("c", c)]) else { return };
    lab.apply(json!([
        pod("a", a, "a"),
        pod("b", b, "b"),
        pod("c", c, "c"),
        policy("b-deny", json!({"matchLabels": {"app": "b"}}), json!([]))
    ]));
    let to_b = SocketAddrV4::new(b, 80);
    // Older drops, from c, before anyone follows.
    for _ in 0..3 {
        assert!(!tcp_probe(&lab.ns("c"), to_b, DENIED));
    }
    let socket = lab.agent.socket();
    let monitor = lab
        .agent
        .command(&["datapath", "monitor", "-o", "json", "--socket", socket.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!tcp_probe(&lab.ns("a"), to_b, DENIED));
    let out = wait_with_timeout(monitor, Duration::from_secs(2));
    // The first policy drop it prints is the current one (the pods' IPv6 chatter aside).
    let line: Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["reason"] == "drop-policy")
        .unwrap_or(Value::Null);
    assert_eq!(line["src"], a.to_string(), "monitor did not print the current event first: {out}");
    assert_eq!(line["dst"], b.to_string(), "{out}");
    // The recent events, oldest first, hold both; the metrics count b's drops.
    let recent = lab.api("GET", "/v1/events", None);
    let srcs: Vec<&str> = recent.as_array().unwrap().iter().filter_map(|e| e["src"].as_str()).collect();
    let (first_c, last_a) =
        (srcs.iter().position(|s| *s == c.to_string()), srcs.iter().rposition(|s| *s == a.to_string()));
    assert!(first_c.is_some() && last_a.is_some() && first_c < last_a, "{srcs:?}");
    let metrics = lab.try_api("GET", "/metrics", None).unwrap();
    let line =
        metrics.lines().find(|l| l.starts_with("netpol_drop_events_total{pod=\"default/b\"}")).unwrap_or("");
    let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(n >= 4.0, "drop events of b: {line:?}\n{metrics}");
}

/// The child's stdout, once it exits (killed after `limit`).
fn wait_with_timeout(mut child: Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
