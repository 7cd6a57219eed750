//! The Kubernetes e2e model in local mode (root): namespaces x, y, z (labelled ns=NAME),
//! pods a, b, c in each (labelled pod=NAME), serving 80 and 81 on TCP and UDP through ports
//! named serve-80-tcp etc. For each case the probed matrix (real packets through the eBPF
//! datapath) must equal the reference evaluator's verdicts, and so must the agent's trace of
//! every cell (`netpol trace`, decided on the maps the datapath holds); `netpol explain`
//! calls a pod isolated in a direction exactly where the trace found it isolated.
//!
//! Traffic from a pod to itself never leaves its namespace (the kernel loops it back inside
//! the pod), so no datapath sees it; those cells are not compared.

mod common;

use common::netpol;
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use netpol_api::{
    client::{call, Method},
    flows::{ExplainQuery, Explanation, SideVerdict, Trace, TraceQuery},
};

use netpol_policy::{
    model::{Model, Object},
    reference::{allowed, Flow},
};
use netpol_tests::{need_root, RemoveOnDrop};
use serde_json::{json, Value};

const ROOT: &str = "test-e2e";

fn local(args: &[&str]) -> (bool, String) {
    let out = Command::new(netpol()).args(["local", "--root", ROOT]).args(args).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, text) = local(args);
    assert!(success, "{args:?}: {text}");
    text
}

struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = local(&["down"]);
    }
}

fn cluster() -> Vec<Value> {
    let mut objs = Vec::new();
    for ns in ["x", "y", "z"] {
        objs.push(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"ns": ns}}}),
        );
        for pod in ["a", "b", "c"] {
            let ports: Vec<Value> = [80, 81]
                .iter()
                .flat_map(|p| {
                    ["TCP", "UDP"].map(|proto| {
                        json!({"name": format!("serve-{p}-{}", proto.to_lowercase()), "containerPort": p, "protocol": proto})
                    })
                })
                .collect();
            objs.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                "spec": {"containers": [{"name": "c", "image": "agnhost", "ports": ports}]}}));
        }
    }
    objs
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// (case, policies) — each case starts from no policies.
fn cases() -> Vec<(&'static str, Vec<Value>)> {
    let pod = |p: &str| json!({"matchLabels": {"pod": p}});
    let ns = |n: &str| json!({"matchLabels": {"ns": n}});
    vec![
        ("no policies: everything flows", vec![]),
        ("deny all ingress in x", vec![np("x", "deny", json!({"podSelector": {}}))]),
        (
            "deny all egress in x",
            vec![np("x", "deny", json!({"podSelector": {}, "policyTypes": ["Egress"]}))],
        ),
        (
            "x/a ingress from same-namespace pod=b",
            vec![np(
                "x",
                "p",
                json!({"podSelector": pod("a"), "ingress": [{"from": [{"podSelector": pod("b")}]}]}),
            )],
        ),
        (
            "x/a ingress from namespace y",
            vec![np(
                "x",
                "p",
                json!({"podSelector": pod("a"), "ingress": [{"from": [{"namespaceSelector": ns("y")}]}]}),
            )],
        ),
        (
            "namespaceSelector AND podSelector in one peer",
            vec![np(
                "x",
                "p",
                json!({"podSelector": pod("a"), "ingress": [{"from": [{"namespaceSelector": ns("y"), "podSelector": pod("c")}]}]}),
            )],
        ),
        (
            "namespaceSelector OR podSelector as two peers",
            vec![np(
                "x",
                "p",
                json!({"podSelector": pod("a"), "ingress": [{"from": [{"namespaceSelector": ns("y")}, {"podSelector": pod("c")}]}]}),
            )],
        ),
        (
            "ingress on TCP 80 only",
            vec![np("x", "p", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))],
        ),
        (
            "ingress on the named port serve-81-udp",
            vec![np(
                "y",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
            )],
        ),
        (
            "endPort: TCP 80-81 from namespace z",
            vec![np(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns("z")}], "ports": [{"port": 80, "endPort": 81}]}]}),
            )],
        ),
        (
            "egress to the peer's named port serve-80-tcp",
            vec![np(
                "x",
                "p",
                json!({"podSelector": pod("a"), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve-80-tcp"}]}]}),
            )],
        ),
        (
            "ipBlock covering pod addresses, with an except",
            vec![np(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.204.0/24", "except": ["10.244.204.0/29"]}}]}]}),
            )],
        ),
        (
            "matchExpressions NotIn and DoesNotExist",
            vec![np(
                "y",
                "p",
                json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]},
                                     "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "nope", "operator": "DoesNotExist"}, {"key": "ns", "operator": "In", "values": ["x", "z"]}]}}]}]}),
            )],
        ),
        (
            "policyTypes Ingress only: egress rules are ignored",
            vec![np(
                "z",
                "p",
                json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}], "egress": [{"to": [{"podSelector": pod("nobody")}]}]}),
            )],
        ),
        (
            "empty from and an empty rule allow all",
            vec![
                np("x", "deny", json!({"podSelector": {}})),
                np("x", "allow", json!({"podSelector": {}, "ingress": [{"from": []}, {}]})),
            ],
        ),
        (
            "policies are additive",
            vec![
                np("y", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
                np(
                    "y",
                    "in-from-x",
                    json!({"podSelector": pod("b"), "ingress": [{"from": [{"namespaceSelector": ns("x")}]}]}),
                ),
                np(
                    "y",
                    "out-to-z",
                    json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ns("z")}], "ports": [{"protocol": "UDP"}]}]}),
                ),
            ],
        ),
        (
            "egress AND ingress are both needed",
            vec![
                np(
                    "x",
                    "out",
                    json!({"podSelector": pod("a"), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ns("y"), "podSelector": pod("b")}]}]}),
                ),
                np(
                    "y",
                    "in",
                    json!({"podSelector": pod("b"), "ingress": [{"from": [{"namespaceSelector": ns("z")}]}]}),
                ),
            ],
        ),
        (
            "UDP only, any port",
            vec![np("z", "p", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}))],
        ),
        (
            "all pods of all namespaces",
            vec![
                np("x", "deny", json!({"podSelector": {}})),
                np(
                    "x",
                    "all",
                    json!({"podSelector": pod("c"), "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {}}]}]}),
                ),
            ],
        ),
    ]
}

fn write(path: &PathBuf, objs: &[Value]) {
    let text: Vec<String> = objs.iter().map(|o| serde_json::to_string(o).unwrap()).collect();
    std::fs::write(path, text.join("\n---\n")).unwrap();
}

/// The agent's answer to `netpol trace FROM TO:PORT/PROTO`.
fn trace(from: &str, to: &str, port: u16, protocol: &str) -> Trace {
    let q = TraceQuery { from: from.into(), to: to.into(), port, protocol: protocol.into(), name: None };
    let socket = PathBuf::from(format!("/run/netpol/{ROOT}.sock"));
    let (status, body) = call(&socket, Method::GET, &q.path(), None, Duration::from_secs(5)).unwrap();
    assert!(status.is_success(), "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// The agent's answer to `netpol explain POD`.
fn explain(pod: &str) -> Explanation {
    let path = ExplainQuery { pod: pod.into() }.path();
    let socket = PathBuf::from(format!("/run/netpol/{ROOT}.sock"));
    let (status, body) = call(&socket, Method::GET, &path, None, Duration::from_secs(5)).unwrap();
    assert!(status.is_success(), "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn the_e2e_model_matches_the_reference_in_every_case() {
    if need_root() {
        return;
    }
    let dir = std::env::temp_dir().join("netpol-test-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveOnDrop(vec![dir.clone()]);
    let _ = local(&["down"]);
    ok(&["up", "--pod-cidr", "10.244.204.0/24"]);
    let _down = Down;
    let base = dir.join("cluster.yaml");
    write(&base, &cluster());
    ok(&["apply", "-f", base.to_str().unwrap()]);
    let pods: Value = serde_json::from_str(&ok(&["get", "pods", "-A", "-o", "json"])).unwrap();
    let ip: BTreeMap<String, Ipv4Addr> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        // The model's pods (kube-system holds the cluster's DNS).
        .filter(|p| p["metadata"]["namespace"] != "kube-system")
        .map(|p| {
            let key = format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap(),
                p["metadata"]["name"].as_str().unwrap()
            );
            (key, p["status"]["podIP"].as_str().unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(ip.len(), 9);

    let mut failures = Vec::new();
    let mut previous: Option<PathBuf> = None;
    for (i, (name, policies)) in cases().into_iter().enumerate() {
        if let Some(p) = previous.take() {
            ok(&["delete", "-f", p.to_str().unwrap()]);
        }
        if !policies.is_empty() {
            let f = dir.join(format!("case{i}.yaml"));
            write(&f, &policies);
            ok(&["apply", "-f", f.to_str().unwrap()]);
            previous = Some(f);
        }
        let t = Instant::now();
        let cells: Value = serde_json::from_str(&ok(&[
            "probe",
            "--matrix",
            "--namespaces",
            "x,y,z",
            "--ports",
            "80,81",
            "--protocols",
            "TCP,UDP",
            "--timeout",
            "1s",
            "-o",
            "json",
        ]))
        .unwrap();
        let took = t.elapsed();
        assert!(took.as_secs() < 15, "{name}: the 9x9x2x2 matrix took {took:?}");
        let cells = cells.as_array().unwrap();
        assert_eq!(cells.len(), 9 * 9 * 4);

        // The reference's view of the same cluster.
        let mut model = Model::default();
        for o in cluster().into_iter().chain(policies.iter().cloned()) {
            let obj = match o["kind"].as_str().unwrap() {
                "Namespace" => Object::Namespace(Box::new(serde_json::from_value(o).unwrap())),
                "NetworkPolicy" => Object::NetworkPolicy(Box::new(serde_json::from_value(o).unwrap())),
                _ => continue,
            };
            model.upsert(obj).unwrap();
        }
        for p in pods["items"].as_array().unwrap() {
            model.upsert(Object::Pod(Box::new(serde_json::from_value(p.clone()).unwrap()))).unwrap();
        }
        let explained: BTreeMap<&str, Explanation> = ip.keys().map(|p| (p.as_str(), explain(p))).collect();
        let mut wrong = Vec::new();
        for c in cells {
            let (from, to) = (c["from"].as_str().unwrap(), c["to"].as_str().unwrap());
            if from == to {
                continue;
            }
            let flow = Flow {
                src: ip[from],
                dst: ip[to],
                protocol: c["protocol"].as_str().unwrap().into(),
                port: c["port"].as_u64().unwrap() as u16,
                dns_name: None,
            };
            let want = allowed(&model, &flow);
            if c["connected"].as_bool().unwrap() != want {
                wrong.push(format!(
                    "{from} -> {to} {}/{}: probed {}, reference {want}",
                    flow.protocol, flow.port, c["connected"]
                ));
            }
            let traced = trace(from, to, flow.port, &flow.protocol);
            if traced.allowed != Some(want) {
                wrong.push(format!(
                    "{from} -> {to} {}/{}: reference {want}, traced {traced}",
                    flow.protocol, flow.port
                ));
            }
            // `explain` says a side is isolated exactly when trace finds it isolated.
            for (side, pod) in traced.sides.iter().zip([from, to]) {
                let d = explained[pod].directions.iter().find(|d| d.direction == side.direction).unwrap();
                let isolated = !d.isolated_by.is_empty();
                if isolated == (side.verdict == SideVerdict::NotIsolated) {
                    wrong.push(format!(
                        "{pod} {}: explain isolated={isolated}, trace {:?}",
                        side.direction, side.verdict
                    ));
                }
            }
        }
        eprintln!("case {i} ({name}): {} cells, {} mismatches, {took:?}", cells.len(), wrong.len());
        if !wrong.is_empty() {
            failures.push(format!("{name}:\n  {}", wrong.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
