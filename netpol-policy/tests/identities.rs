//! Which addresses get which identity: finished pods give their address up, and only a
//! node's own addresses are the host. No root needed.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netpol_common::identity;
use netpol_policy::{
    compiler::{compile, Allocators, LocalEndpoint},
    model::{Model, Object},
    reference::{allowed, Flow},
};
use serde_json::json;

fn model(objects: &[serde_json::Value]) -> Model {
    let mut m = Model::default();
    for o in objects {
        let obj = match o["kind"].as_str().unwrap() {
            "Pod" => Object::Pod(Box::new(serde_json::from_value(o.clone()).unwrap())),
            "Node" => Object::Node(Box::new(serde_json::from_value(o.clone()).unwrap())),
            "NetworkPolicy" => Object::NetworkPolicy(Box::new(serde_json::from_value(o.clone()).unwrap())),
            k => panic!("{k}"),
        };
        m.upsert(obj).unwrap();
    }
    m
}

fn pod(name: &str, ip: &str, phase: &str, app: &str) -> serde_json::Value {
    json!({"kind": "Pod", "metadata": {"name": name, "namespace": "x", "labels": {"app": app}},
           "spec": {"nodeName": "n1", "containers": []}, "status": {"podIP": ip, "phase": phase}})
}

fn host32(ip: &str) -> Ipv4Net {
    Ipv4Net::new(ip.parse().unwrap(), 32).unwrap()
}

#[test]
fn a_finished_pod_gives_its_address_to_the_next_pod() {
    let deny = json!({"kind": "NetworkPolicy", "metadata": {"name": "only-a", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]}});
    // `old` (app=a) finished; the range handed 10.0.0.5 to `new` (app=b).
    let m = model(&[
        pod("old", "10.0.0.5", "Succeeded", "a"),
        pod("new", "10.0.0.5", "Running", "b"),
        pod("db", "10.0.0.9", "Running", "db"),
        deny,
    ]);
    let eps = [LocalEndpoint {
        ifindex: 10,
        ep_id: 1,
        ip: "10.0.0.9".parse().unwrap(),
        namespace: "x".into(),
        pod: "db".into(),
    }];
    let c = compile(&m, "n1", &eps, &mut Allocators::default());
    let id = c.state.ipcache[&host32("10.0.0.5")].identity;
    assert_eq!(c.identities[&id].pod_labels["app"], "b", "the address is the running pod's");
    let flow = Flow {
        src: "10.0.0.5".parse().unwrap(),
        dst: "10.0.0.9".parse().unwrap(),
        protocol: "TCP".into(),
        port: 80,
    };
    assert!(!allowed(&m, &flow), "the reference agrees: the new pod is not app=a");
    // A finished pod with no successor leaves no entry at all.
    let m = model(&[pod("old", "10.0.0.5", "Failed", "a")]);
    let c = compile(&m, "n1", &[], &mut Allocators::default());
    assert!(!c.state.ipcache.contains_key(&host32("10.0.0.5")));
}

#[test]
fn only_a_nodes_internal_addresses_are_the_node() {
    let node = |name: &str, internal: &str, external: &str| {
        json!({"kind": "Node", "metadata": {"name": name}, "status": {"addresses": [
            {"type": "InternalIP", "address": internal}, {"type": "ExternalIP", "address": external},
            {"type": "Hostname", "address": name}]}})
    };
    let m = model(&[node("n1", "10.99.0.1", "203.0.113.1"), node("n2", "10.99.0.2", "203.0.113.2")]);
    let c = compile(&m, "n1", &[], &mut Allocators::default());
    let id = |ip: &str| c.state.ipcache.get(&host32(ip)).map(|e| e.identity);
    assert_eq!(id("10.99.0.1"), Some(identity::HOST));
    assert_eq!(id("10.99.0.2"), Some(identity::REMOTE_NODE));
    assert_eq!(id("203.0.113.1"), None, "an ExternalIP is the world, not this node");
    assert_eq!(id("203.0.113.2"), None);
    assert_eq!(m.node_addresses("n1"), vec![Ipv4Addr::new(10, 99, 0, 1)]);
}
