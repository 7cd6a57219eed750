//! Pod addresses announced by the agents (`NetpolEndpoint`) before the kubelet posts them:
//! believed only where they agree with what the API server says of the pod. No root needed.

use std::net::Ipv4Addr;

use netpol_policy::{
    crd::{NetpolEndpoint, NetpolEndpointSpec},
    model::{Model, Object},
    reference::{allowed, Flow},
};
use netpol_tests::objects;
use serde_json::json;

const W1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

fn model() -> Model {
    let mut m = Model::default();
    for (name, ip, cidr) in
        [("w1", [172, 18, 0, 3], "10.244.1.0/24"), ("w2", [172, 18, 0, 4], "10.244.2.0/24")]
    {
        let n = objects::node(name, Ipv4Addr::from(ip)).set("spec", json!({"podCIDR": cidr}));
        m.upsert(Object::Node(Box::new(serde_json::from_value(n.json()).unwrap()))).unwrap();
    }
    m
}

/// A pending pod on `node` with uid `uid-NAME`, optionally with its posted address.
fn pod(m: &mut Model, name: &str, node: &str, posted: Option<Ipv4Addr>) {
    let p = objects::pod("default", name, posted)
        .set("metadata.uid", json!(format!("uid-{name}")))
        .set("spec.nodeName", json!(node));
    m.upsert(Object::Pod(Box::new(serde_json::from_value(p.json()).unwrap()))).unwrap();
}

fn announce(m: &mut Model, name: &str, uid: &str, node: &str, ip: Ipv4Addr) {
    let spec = NetpolEndpointSpec { pod_uid: uid.into(), node_name: node.into(), ipv4: ip };
    let mut ep = NetpolEndpoint::new(name, spec);
    ep.metadata.namespace = Some("default".into());
    m.upsert(Object::NetpolEndpoint(Box::new(ep))).unwrap();
}

fn address(m: &Model, name: &str) -> Option<Ipv4Addr> {
    let key = ("default".to_string(), name.to_string());
    m.pod_address(&key, &m.pods[&key])
}

#[test]
fn an_announcement_is_believed_only_for_its_pod_on_its_node_in_its_range() {
    let mut m = model();
    pod(&mut m, "a", "w1", None);
    assert_eq!(address(&m, "a"), None, "nothing announced, nothing posted");
    announce(&mut m, "a", "uid-a", "w1", W1);
    assert_eq!(address(&m, "a"), Some(W1));
    for (uid, node, ip, why) in [
        ("uid-old", "w1", W1, "another pod of the same name (an older UID)"),
        ("uid-a", "w2", Ipv4Addr::new(10, 244, 2, 7), "a node the pod is not on"),
        ("uid-a", "w1", Ipv4Addr::new(10, 244, 2, 7), "an address outside the node's range"),
    ] {
        announce(&mut m, "a", uid, node, ip);
        assert_eq!(address(&m, "a"), None, "believed {why}");
    }
    // The kubelet's word wins.
    announce(&mut m, "a", "uid-a", "w1", W1);
    pod(&mut m, "a", "w1", Some(Ipv4Addr::new(10, 244, 1, 8)));
    assert_eq!(address(&m, "a"), Some(Ipv4Addr::new(10, 244, 1, 8)));
}

#[test]
fn an_announced_address_a_posted_pod_holds_stays_the_posted_pods() {
    let mut m = model();
    pod(&mut m, "posted", "w1", Some(W1));
    pod(&mut m, "claims", "w1", None);
    announce(&mut m, "claims", "uid-claims", "w1", W1);
    let holders: Vec<&str> =
        m.policy_pods().filter(|(_, _, ip)| *ip == W1).map(|(k, _, _)| k.1.as_str()).collect();
    assert_eq!(holders, ["posted"]);
    // The oracle attributes the address the same way: a policy letting only `claims` in
    // refuses W1 while `posted` holds it, and admits it once `posted` is gone.
    let target = Ipv4Addr::new(10, 244, 2, 9);
    pod(&mut m, "t", "w2", Some(target));
    let only_claims = objects::policy(
        "default",
        "only-claims",
        json!({"podSelector": {"matchLabels": {"app": "t"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "claims"}}}]}]}),
    );
    m.upsert(Object::NetworkPolicy(Box::new(serde_json::from_value(only_claims.json()).unwrap()))).unwrap();
    let flow = Flow { src: W1, dst: target, protocol: "TCP".into(), port: 80, dns_name: None };
    assert!(!allowed(&m, &flow), "the announcement took a posted pod's address");
    m.delete(netpol_policy::model::Kind::Pod, "default", "posted");
    assert!(allowed(&m, &flow), "the announced pod is not seen at its address");
}
