//! Random clusters for the differential tests (here and in the agent's kernel tests):
//! namespaces x, y, z; pods with random labels, named ports and nodes; policies drawn from
//! every part of NetworkPolicy v1. Behind the `testing` feature.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    compiler::{compile, Allocators, Compiled, LocalEndpoint},
    model::{Model, Object},
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

pub fn cluster() -> impl Strategy<Value = Cluster> {
    let pods = prop::collection::vec(
        (1usize..4, prop::collection::vec((labels(), container_ports(), 0usize..2), 3)),
        3,
    );
    let policies = (0usize..6).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>());
    (pods, policies, any::<bool>()).prop_map(|(per_ns, policies, blue)| {
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
        Cluster { namespaces, pods, policies }
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
    for p in &c.policies {
        m.upsert(Object::NetworkPolicy(Box::new(serde_json::from_value(p.clone()).unwrap()))).unwrap();
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
