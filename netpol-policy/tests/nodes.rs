//! Routes between nodes, from the Node objects alone. No root needed.

use std::net::Ipv4Addr;

use netpol_policy::model::{Model, Object};
use netpol_tests::objects;
use serde_json::json;

fn node(name: &str, ip: [u8; 4], cidr: Option<&str>) -> Object {
    let mut n = objects::node(name, Ipv4Addr::from(ip));
    if let Some(c) = cidr {
        n = n.set("spec", json!({"podCIDR": c, "podCIDRs": [c]}));
    }
    Object::Node(Box::new(serde_json::from_value(n.json()).unwrap()))
}

#[test]
fn each_other_nodes_pod_range_goes_via_its_internal_ip_unless_it_overlaps() {
    let mut m = Model::default();
    for n in [
        node("cp", [172, 18, 0, 2], Some("10.244.0.0/24")),
        node("w1", [172, 18, 0, 3], Some("10.244.1.0/24")),
        node("w2", [172, 18, 0, 4], Some("10.244.2.0/24")),
        node("new", [172, 18, 0, 5], None),
        node("odd", [172, 18, 0, 6], Some("10.244.1.128/25")),
        node("mine", [172, 18, 0, 7], Some("10.244.0.0/16")),
    ] {
        m.upsert(n).unwrap();
    }
    let want: Vec<(String, Ipv4Addr)> = vec![
        ("10.244.0.0/24".into(), Ipv4Addr::new(172, 18, 0, 2)),
        ("10.244.2.0/24".into(), Ipv4Addr::new(172, 18, 0, 4)),
    ];
    // "mine" claims a /16 over every range and "odd" half of w1's own: nothing is routed
    // where two nodes claim the same addresses, and each refusal is named.
    let (routes, refused) = m.node_routes("w1");
    assert!(routes.is_empty(), "{routes:?}");
    let names: Vec<&str> = refused.keys().map(String::as_str).collect();
    assert_eq!(names, ["cp", "mine", "odd", "w2"]);
    assert!(
        refused["odd"].contains("this node's") && refused["cp"].contains("another node's"),
        "{refused:?}"
    );

    // Without the misconfigured nodes, each other range via its node.
    m.delete(netpol_policy::model::Kind::Node, "", "mine");
    m.delete(netpol_policy::model::Kind::Node, "", "odd");
    let (routes, refused) = m.node_routes("w1");
    let got: Vec<(String, Ipv4Addr)> = routes.iter().map(|(c, v)| (c.to_string(), *v)).collect();
    assert_eq!(got, want);
    assert!(refused.is_empty(), "{refused:?}");
    // The node's own range is never routed away.
    assert!(!m.node_routes("cp").0.contains_key(&"10.244.0.0/24".parse().unwrap()));
}
