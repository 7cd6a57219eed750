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
        dns_name: None,
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

/// Pods of two ReplicaSets of one Deployment share an identity (pod-template-hash is left
/// out), until a policy selects on that label: then it is part of the key and the policy
/// tells the two apart, exactly as the reference evaluator does.
#[test]
fn rollout_labels_stay_out_of_identities_unless_a_policy_selects_on_them() {
    let with_hash = |name: &str, ip: &str, hash: &str| {
        let mut p = pod(name, ip, "Running", "web");
        p["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(name);
        p
    };
    let pods = [
        with_hash("old", "10.0.0.5", "5d8f"),
        with_hash("new", "10.0.0.6", "7c2a"),
        pod("db", "10.0.0.9", "Running", "db"),
    ];
    let db = [LocalEndpoint {
        ifindex: 10,
        ep_id: 1,
        ip: "10.0.0.9".parse().unwrap(),
        namespace: "x".into(),
        pod: "db".into(),
    }];
    let id_of = |c: &netpol_policy::compiler::Compiled, ip: &str| c.state.ipcache[&host32(ip)].identity;

    let c = compile(&model(&pods), "n1", &db, &mut Allocators::default());
    assert_eq!(id_of(&c, "10.0.0.5"), id_of(&c, "10.0.0.6"), "a rollout minted a new identity");
    assert!(!c.identities[&id_of(&c, "10.0.0.5")].pod_labels.contains_key("pod-template-hash"));

    let only_new = json!({"kind": "NetworkPolicy", "metadata": {"name": "only-new", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod-template-hash": "7c2a"}}}]}]}});
    let mut objects = pods.to_vec();
    objects.push(only_new);
    let m = model(&objects);
    let c = compile(&m, "n1", &db, &mut Allocators::default());
    assert_ne!(id_of(&c, "10.0.0.5"), id_of(&c, "10.0.0.6"), "the selected label was dropped");
    let info = &c.identities[&id_of(&c, "10.0.0.6")];
    assert_eq!(info.pod_labels["pod-template-hash"], "7c2a");
    assert!(!info.pod_labels.contains_key("statefulset.kubernetes.io/pod-name"), "{info:?}");
    for (src, want) in [("10.0.0.5", false), ("10.0.0.6", true)] {
        let flow = Flow {
            src: src.parse().unwrap(),
            dst: "10.0.0.9".parse().unwrap(),
            protocol: "TCP".into(),
            port: 80,
            dns_name: None,
        };
        assert_eq!(allowed(&m, &flow), want, "reference for {src}");
        let dir = netpol_common::DIR_INGRESS;
        let compiled =
            netpol_policy::lookup::decide(&c.state, 10, dir, src.parse().unwrap(), 6, 80).is_some();
        assert_eq!(compiled, want, "compiled for {src}");
    }
}
