//! Random clusters for the differential tests (here and in the agent's kernel tests):
//! namespaces x, y, z; pods with random labels, named ports and nodes; policies drawn from
//! every part of NetworkPolicy v1 and of the CiliumNetworkPolicy subset. Behind the
//! `testing` feature.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    compiler::{compile, Allocators, Compiled, LocalEndpoint},
    model::{Model, Object},
    names::Name,
};
use proptest::prelude::*;
use serde_json::{json, Value};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const NODES: [(&str, Ipv4Addr); 2] =
    [("n1", Ipv4Addr::new(10, 99, 0, 1)), ("n2", Ipv4Addr::new(10, 99, 0, 2))];
pub const EXTERNAL: [Ipv4Addr; 3] =
    [Ipv4Addr::new(192, 168, 1, 10), Ipv4Addr::new(172, 16, 0, 5), Ipv4Addr::new(10, 0, 9, 9)];
pub const PORTS: [u16; 6] = [53, 80, 85, 5353, 8080, 9000];
pub const PROTOS: [&str; 4] = ["TCP", "UDP", "SCTP", "ICMP"];

#[derive(Clone, Debug)]
pub struct Cluster {
    pub namespaces: Vec<Value>,
    pub pods: Vec<Value>,
    pub policies: Vec<Value>,
    /// What the node's DNS proxy learned: name → addresses.
    pub learned: Vec<(String, Vec<Ipv4Addr>)>,
}

pub fn labels() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(prop::sample::select(vec!["x", "y"])),
    )
        .prop_map(|(app, tier)| {
            let mut m = serde_json::Map::new();
            if let Some(a) = app {
                m.insert("app".into(), json!(a));
            }
            if let Some(t) = tier {
                m.insert("tier".into(), json!(t));
            }
            Value::Object(m)
        })
}

pub fn container_ports() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        prop::sample::select(vec![80, 8080]),
        any::<bool>(),
        prop::sample::select(vec![53, 5353]),
        any::<bool>(),
    )
        .prop_map(|(http, hp, dns, dp, sctp)| {
            let mut v = Vec::new();
            if http {
                v.push(json!({"name": "http", "containerPort": hp}));
            }
            if dns {
                v.push(json!({"name": "dns", "containerPort": dp, "protocol": "UDP"}));
            }
            if sctp {
                v.push(json!({"name": "sctp", "containerPort": 9000, "protocol": "SCTP"}));
            }
            json!(v)
        })
}

pub fn selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(vec!["a", "b", "c"]).prop_map(|a| json!({"matchLabels": {"app": a}})),
        Just(json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]})),
        Just(json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]})),
        Just(json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]})),
        Just(json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})),
        Just(
            json!({"matchLabels": {"tier": "x"}, "matchExpressions": [{"key": "app", "operator": "Exists"}]})
        ),
    ]
}

pub fn ns_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(NAMESPACES.to_vec()).prop_map(|n| json!({"matchLabels": {"ns": n}})),
        Just(json!({"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]})),
        Just(json!({"matchLabels": {"team": "blue"}})),
    ]
}

pub fn ip_block() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"cidr": "10.0.0.0/16"}),
        json!({"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}),
        json!({"cidr": "10.0.1.0/24", "except": ["10.0.1.2/32", "10.0.1.4/31"]}),
        json!({"cidr": "192.168.0.0/16"}),
        json!({"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}),
        json!({"cidr": "0.0.0.0/0"}),
        json!({"cidr": "10.0.2.3/32"}),
        json!({"cidr": "10.99.0.0/24"}),
    ])
}

pub fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({"podSelector": s})),
        ns_selector().prop_map(|s| json!({"namespaceSelector": s})),
        (ns_selector(), selector()).prop_map(|(n, p)| json!({"namespaceSelector": n, "podSelector": p})),
        ip_block().prop_map(|b| json!({"ipBlock": b})),
    ]
}

pub fn port() -> impl Strategy<Value = Value> {
    let proto = prop::option::of(prop::sample::select(vec!["TCP", "UDP", "SCTP"]));
    let port = prop_oneof![
        Just(Value::Null),
        prop::sample::select(PORTS.to_vec()).prop_map(|p| json!(p)),
        prop::sample::select(vec!["http", "dns", "sctp", "nope"]).prop_map(|n| json!(n)),
    ];
    (proto, port, prop::option::of(prop::sample::select(vec![0u16, 5, 10, 3000]))).prop_map(
        |(proto, port, span)| {
            let mut m = serde_json::Map::new();
            if let Some(p) = proto {
                m.insert("protocol".into(), json!(p));
            }
            if !port.is_null() {
                if let (Some(n), Some(s)) = (port.as_u64(), span) {
                    m.insert("endPort".into(), json!(n + s as u64));
                }
                m.insert("port".into(), port);
            }
            Value::Object(m)
        },
    )
}

pub fn rule(side: &'static str) -> impl Strategy<Value = Value> {
    let peers = prop::option::of(prop::collection::vec(peer(), 0..3));
    let ports = prop::option::of(prop::collection::vec(port(), 0..3));
    (peers, ports).prop_map(move |(peers, ports)| {
        let mut m = serde_json::Map::new();
        if let Some(p) = peers {
            m.insert(side.into(), json!(p));
        }
        if let Some(p) = ports {
            m.insert("ports".into(), json!(p));
        }
        Value::Object(m)
    })
}

pub fn policy(i: usize) -> impl Strategy<Value = Value> {
    let types = prop::sample::select(vec![
        json!(null),
        json!(["Ingress"]),
        json!(["Egress"]),
        json!(["Ingress", "Egress"]),
    ]);
    (
        prop::sample::select(NAMESPACES.to_vec()),
        selector(),
        types,
        prop::option::of(prop::collection::vec(rule("from"), 0..3)),
        prop::option::of(prop::collection::vec(rule("to"), 0..3)),
    )
        .prop_map(move |(ns, sel, types, ingress, egress)| {
            let mut spec = serde_json::Map::new();
            spec.insert("podSelector".into(), sel);
            if !types.is_null() {
                spec.insert("policyTypes".into(), types);
            }
            if let Some(r) = ingress {
                spec.insert("ingress".into(), json!(r));
            }
            if let Some(r) = egress {
                spec.insert("egress".into(), json!(r));
            }
            json!({"metadata": {"name": format!("p{i}"), "namespace": ns}, "spec": spec})
        })
}

/// A key with Cilium's source prefix, or without.
fn sourced(key: &str) -> impl Strategy<Value = String> {
    let key = key.to_string();
    prop::sample::select(vec!["", "k8s:", "any:"]).prop_map(move |p| format!("{p}{key}"))
}

/// A pod selector as Cilium takes it (source prefixes on the keys).
pub fn cilium_selector() -> impl Strategy<Value = Value> {
    (selector(), sourced("app"), sourced("tier")).prop_map(|(mut sel, app, tier)| {
        let rename = |k: &str| if k == "app" { app.clone() } else { tier.clone() };
        if let Some(m) = sel.get_mut("matchLabels").and_then(Value::as_object_mut) {
            *m = m.iter().map(|(k, v)| (rename(k), v.clone())).collect();
        }
        for e in sel.get_mut("matchExpressions").and_then(Value::as_array_mut).into_iter().flatten() {
            let key = rename(e["key"].as_str().unwrap());
            e["key"] = json!(key);
        }
        sel
    })
}

/// A peer of `fromEndpoints`/`toEndpoints`: the policy's namespace, a named one, or
/// namespace labels (which Cilium still limits to the policy's namespace).
pub fn cilium_peer() -> impl Strategy<Value = Value> {
    let ns = prop_oneof![
        Just(None),
        prop::sample::select(NAMESPACES.to_vec()).prop_map(|n| Some(("io.kubernetes.pod.namespace", n))),
        Just(Some(("io.cilium.k8s.namespace.labels.team", "blue"))),
    ];
    (cilium_selector(), ns, sourced("")).prop_map(|(mut sel, ns, prefix)| {
        if let Some((key, value)) = ns {
            let labels = sel.as_object_mut().unwrap().entry("matchLabels").or_insert(json!({}));
            labels[format!("{prefix}{key}")] = json!(value);
        }
        sel
    })
}

/// A `toPorts` entry: ports as strings or numbers, TCP/UDP/ANY, ranges, named ports, 0.
pub fn cilium_port_rule(egress: bool) -> impl Strategy<Value = Value> {
    let port = prop_oneof![
        Just(json!({})),
        prop::sample::select(PORTS.to_vec()).prop_map(|p| json!({"port": p.to_string()})),
        prop::sample::select(PORTS.to_vec()).prop_map(|p| json!({"port": p})),
        prop::sample::select(vec!["http", "dns", "sctp", "0"]).prop_map(|n| json!({"port": n})),
        Just(json!({"port": "80", "endPort": 5353})),
    ];
    let proto = prop::option::of(prop::sample::select(vec!["TCP", "UDP", "ANY", "any"]));
    let entry = (port, proto).prop_map(|(mut p, proto)| {
        if let Some(proto) = proto {
            p["protocol"] = json!(proto);
        }
        p
    });
    let dns = prop::option::of(prop::sample::select(vec!["*", "songlaa.com", "*.com"]));
    // DNS rules take single ports given by number.
    let dns_port =
        (prop::sample::select(vec!["53", "5353"]), prop::sample::select(vec!["TCP", "UDP", "ANY"]))
            .prop_map(|(port, proto)| json!({"port": port, "protocol": proto}));
    let dns_ports = prop::collection::vec(dns_port, 1..3);
    (prop::collection::vec(entry, 0..3), dns, dns_ports).prop_map(move |(ports, dns, dns_ports)| match dns {
        Some(pattern) if egress => json!({"ports": dns_ports, "rules": {"dns": [{"matchPattern": pattern}]}}),
        _ => json!({"ports": ports}),
    })
}

/// One `ingress`/`egress` item; egress items sometimes name DNS names instead of pods.
pub fn cilium_item(egress: bool) -> impl Strategy<Value = Value> {
    let peers = prop::option::of(prop::collection::vec(cilium_peer(), 0..3));
    let ports = prop::option::of(prop::collection::vec(cilium_port_rule(egress), 0..3));
    (peers, ports, any::<u8>()).prop_map(move |(peers, ports, r)| {
        let mut m = serde_json::Map::new();
        match peers {
            Some(_) if egress && r < 48 => {
                let names = [json!({"matchName": "songlaa.com"}), json!({"matchPattern": "*.songlaa.com"})];
                m.insert("toFQDNs".into(), json!([names[r as usize % 2]]));
            }
            Some(p) => {
                m.insert((if egress { "toEndpoints" } else { "fromEndpoints" }).into(), json!(p));
            }
            None => {}
        }
        if let Some(p) = ports {
            m.insert("toPorts".into(), json!(p));
        }
        Value::Object(m)
    })
}

pub fn cilium_rule() -> impl Strategy<Value = Value> {
    (
        cilium_selector(),
        prop::option::of(prop::collection::vec(cilium_item(false), 0..3)),
        prop::option::of(prop::collection::vec(cilium_item(true), 0..3)),
    )
        .prop_map(|(sel, ingress, egress)| {
            let mut m = serde_json::Map::new();
            m.insert("endpointSelector".into(), sel);
            if let Some(i) = ingress {
                m.insert("ingress".into(), json!(i));
            }
            if let Some(e) = egress {
                m.insert("egress".into(), json!(e));
            }
            Value::Object(m)
        })
}

/// A CiliumNetworkPolicy with `spec`, `specs` or both.
pub fn cilium_policy(i: usize) -> impl Strategy<Value = Value> {
    let specs = prop::option::of(prop::collection::vec(cilium_rule(), 1..3));
    (prop::sample::select(NAMESPACES.to_vec()), prop::option::of(cilium_rule()), specs).prop_map(
        move |(ns, spec, specs)| {
            let mut v = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                               "metadata": {"name": format!("c{i}"), "namespace": ns}});
            match (spec, specs) {
                (None, None) => v["spec"] = json!({"endpointSelector": {}, "ingress": [{}]}),
                (spec, specs) => {
                    if let Some(s) = spec {
                        v["spec"] = s;
                    }
                    if let Some(s) = specs {
                        v["specs"] = json!(s);
                    }
                }
            }
            v
        },
    )
}

pub fn cluster() -> impl Strategy<Value = Cluster> {
    let pods = prop::collection::vec(
        (1usize..4, prop::collection::vec((labels(), container_ports(), 0usize..2), 3)),
        3,
    );
    let policies = (0usize..6).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    let cilium = (0usize..3).prop_flat_map(|n| (0..n).map(cilium_policy).collect::<Vec<_>>());
    // Names learned at outside addresses and at a pod's (10.0.1.2, when it exists).
    let learned = prop::sample::subsequence(
        vec![
            ("songlaa.com".to_string(), vec![EXTERNAL[0], Ipv4Addr::new(10, 0, 1, 2)]),
            ("www.songlaa.com".to_string(), vec![EXTERNAL[1]]),
            ("www.zhaw.ch".to_string(), vec![EXTERNAL[2]]),
        ],
        0..=3,
    );
    (pods, policies, cilium, learned, any::<bool>()).prop_map(|(per_ns, mut policies, cilium, learned, blue)| {
        policies.extend(cilium);
        let namespaces = NAMESPACES
            .iter()
            .map(|n| {
                let team = if (*n == "y") == blue { "blue" } else { "red" };
                json!({"metadata": {"name": n, "labels": {"ns": n, "team": team}}})
            })
            .collect();
        let mut pods = Vec::new();
        for (ni, (count, specs)) in per_ns.into_iter().enumerate() {
            for (pi, (labels, ports, node)) in specs.into_iter().take(count).enumerate() {
                pods.push(json!({
                    "metadata": {"name": format!("p{pi}"), "namespace": NAMESPACES[ni], "labels": labels},
                    "spec": {"nodeName": NODES[node].0, "containers": [{"name": "c", "image": "i", "ports": ports}]},
                    "status": {"podIP": format!("10.0.{ni}.{}", pi + 2)},
                }));
            }
        }
        Cluster { namespaces, pods, policies, learned }
    })
}

pub fn model(c: &Cluster) -> Model {
    let mut m = Model::default();
    for n in &c.namespaces {
        m.upsert(Object::Namespace(Box::new(serde_json::from_value(n.clone()).unwrap()))).unwrap();
    }
    for p in &c.pods {
        m.upsert(Object::Pod(Box::new(serde_json::from_value(p.clone()).unwrap()))).unwrap();
    }
    for (name, ip) in NODES {
        let node = json!({"metadata": {"name": name}, "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}});
        m.upsert(Object::Node(Box::new(serde_json::from_value(node).unwrap()))).unwrap();
    }
    for (name, ips) in &c.learned {
        m.learned.insert(Name::parse(name).unwrap(), ips.iter().copied().collect());
    }
    for p in &c.policies {
        let object = match p.get("kind").and_then(Value::as_str) {
            Some("CiliumNetworkPolicy") => {
                Object::CiliumNetworkPolicy(Box::new(serde_json::from_value(p.clone()).unwrap()))
            }
            _ => Object::NetworkPolicy(Box::new(serde_json::from_value(p.clone()).unwrap())),
        };
        m.upsert(object).unwrap();
    }
    m
}

/// Where each pod address lives: (node, ifindex).
pub type Placement = BTreeMap<Ipv4Addr, (&'static str, u32)>;

/// Every node's compiled state, and where each pod lives.
pub fn compile_all(m: &Model) -> (BTreeMap<&'static str, Compiled>, Placement) {
    let mut states = BTreeMap::new();
    let mut at = BTreeMap::new();
    for (node, _) in NODES {
        let mut eps = Vec::new();
        for (i, (k, pod, ip)) in m.policy_pods().enumerate() {
            if pod.spec.as_ref().unwrap().node_name.as_deref() == Some(node) {
                let ifindex = 100 + i as u32;
                eps.push(LocalEndpoint {
                    ifindex,
                    ep_id: 1 + i as u32,
                    ip,
                    namespace: k.0.clone(),
                    pod: k.1.clone(),
                });
                at.insert(ip, (node, ifindex));
            }
        }
        states.insert(node, compile(m, node, &eps, &mut Allocators::default()));
    }
    (states, at)
}

pub fn proto_num(p: &str) -> u8 {
    match p {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        _ => 1,
    }
}
