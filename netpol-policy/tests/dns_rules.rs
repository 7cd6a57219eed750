//! DNS rules beside other allows, case by case, through the compiler, the lookup model and
//! the DNS proxy's name decision, each against the reference evaluator: DNS a DNS rule
//! covers always goes to the proxy, which allows the union of every covering rule's names —
//! every name when a rule without DNS rules covers the flow too. No root needed.

use std::net::Ipv4Addr;

use netpol_common::DIR_EGRESS;
use netpol_policy::{
    lookup::{dns_names, outcome, Outcome},
    names::Name,
    reference::{allowed, Flow},
    testing::*,
};
use serde_json::{json, Value};

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

fn cluster(policies: Vec<Value>) -> Cluster {
    let pod = |name: &str, ip: Ipv4Addr| {
        json!({"metadata": {"name": name, "namespace": "x", "labels": {"app": name}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
               "status": {"podIP": ip.to_string()}})
    };
    Cluster {
        namespaces: vec![json!({"metadata": {"name": "x", "labels": {"ns": "x"}}})],
        pods: vec![pod("a", A), pod("b", B), pod("c", C)],
        policies,
        learned: vec![],
    }
}

fn cnp(egress: Value) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "dns", "namespace": "x"},
           "spec": {"endpointSelector": {"matchLabels": {"app": "a"}}, "egress": egress}})
}

fn dns_rule(peers: Value, names: &str) -> Value {
    let mut item = json!({"toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}], "rules": {"dns": [{"matchPattern": names}]}}]});
    if !peers.is_null() {
        item["toEndpoints"] = peers;
    }
    item
}

/// What a's query for `name` to `dst`:53/UDP meets: (passes as it is, goes to the proxy
/// and is allowed), checked against the reference for the name and for no name.
fn query(c: &Cluster, dst: Ipv4Addr, name: &str) -> (bool, bool) {
    let m = model(c);
    let (states, at) = compile_all(&m);
    let (node, ifindex) = at[&A];
    let compiled = &states[node];
    let (pass, proxied) = match outcome(&compiled.state, ifindex, DIR_EGRESS, dst, 17, 53) {
        Outcome::Pass(_) => (true, false),
        Outcome::Proxy(_) => {
            let names = dns_names(&compiled.state, &compiled.dns, ifindex, dst, 17, 53);
            let n = Name::parse(name).unwrap();
            (false, names.iter().any(|m| m.matches(&n)))
        }
        Outcome::Drop => (false, false),
    };
    for (dns_name, datapath) in [(Some(Name::parse(name).unwrap()), pass || proxied), (None, pass)] {
        let flow = Flow { src: A, dst, protocol: "UDP".into(), port: 53, dns_name };
        assert_eq!(allowed(&m, &flow), datapath, "{flow:?} with {:?}", c.policies);
    }
    (pass, proxied)
}

#[test]
fn a_dns_rule_filters_names_and_nothing_else_passes_on_its_port() {
    let c = cluster(vec![cnp(json!([dns_rule(json!([{"matchLabels": {"app": "b"}}]), "songlaa.com")]))]);
    assert_eq!(query(&c, B, "songlaa.com"), (false, true));
    assert_eq!(query(&c, B, "www.zhaw.ch"), (false, false));
    assert_eq!(query(&c, C, "songlaa.com"), (false, false), "c is not a peer of the rule");
}

#[test]
fn a_plain_allow_for_a_more_specific_peer_still_goes_through_the_proxy_with_every_name() {
    // The DNS rule names no peer (any); a NetworkPolicy allows everything to b.
    let np = json!({"metadata": {"name": "to-b", "namespace": "x"}, "spec": {
        "podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}});
    let c = cluster(vec![cnp(json!([dns_rule(Value::Null, "songlaa.com")])), np]);
    assert_eq!(query(&c, B, "www.zhaw.ch"), (false, true), "union: b's plain allow admits every name");
    assert_eq!(query(&c, C, "songlaa.com"), (false, true));
    assert_eq!(query(&c, C, "www.zhaw.ch"), (false, false));
}

#[test]
fn the_same_key_from_a_plain_rule_and_a_dns_rule_allows_every_name_through_the_proxy() {
    let plain = json!({"toEndpoints": [{"matchLabels": {"app": "b"}}], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]});
    let dns = dns_rule(json!([{"matchLabels": {"app": "b"}}]), "songlaa.com");
    for rules in [json!([dns, plain]), json!([plain, dns])] {
        assert_eq!(query(&cluster(vec![cnp(rules)]), B, "www.zhaw.ch"), (false, true));
    }
}

#[test]
fn dns_rules_for_a_specific_and_an_any_peer_allow_both_names() {
    let c = cluster(vec![cnp(json!([
        dns_rule(json!([{"matchLabels": {"app": "b"}}]), "songlaa.com"),
        dns_rule(Value::Null, "*.zhaw.ch")
    ]))]);
    assert_eq!(query(&c, B, "songlaa.com"), (false, true));
    assert_eq!(query(&c, B, "www.zhaw.ch"), (false, true));
    assert_eq!(query(&c, C, "songlaa.com"), (false, false));
    assert_eq!(query(&c, C, "www.zhaw.ch"), (false, true));
}
