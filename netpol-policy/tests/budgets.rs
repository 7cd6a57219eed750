//! Budgets and held-closed endpoints in the compiler: one namespace's oversized policy is
//! rejected whole without costing the node its other policies, and an endpoint whose pod is
//! not known yet is isolated both ways; audit mode marks endpoints and changes nothing
//! else. No root needed.

use std::time::{Duration, Instant};

use netpol_common::{identity, EP_AUDIT, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS};
use netpol_policy::{
    compiler::{compile, compile_with, Allocators, BudgetError, Budgets, LocalEndpoint},
    entries::PolicyMapKey,
    model::{Model, Object},
};
use netpol_tests::objects;
use serde_json::{json, Value};

fn model(objects: Vec<Value>) -> Model {
    let mut m = Model::default();
    for o in objects {
        let obj = match o["kind"].as_str().unwrap() {
            "Pod" => Object::Pod(Box::new(serde_json::from_value(o).unwrap())),
            "NetworkPolicy" => Object::NetworkPolicy(Box::new(serde_json::from_value(o).unwrap())),
            "Namespace" => Object::Namespace(Box::new(serde_json::from_value(o).unwrap())),
            k => panic!("{k}"),
        };
        m.upsert(obj).unwrap();
    }
    m
}

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    objects::pod(ns, name, Some(ip.parse().unwrap())).json()
}

fn endpoint(ifindex: u32, ns: &str, name: &str, ip: &str) -> LocalEndpoint {
    LocalEndpoint { ifindex, ep_id: ifindex, ip: ip.parse().unwrap(), namespace: ns.into(), pod: name.into() }
}

/// `blocks` /32 ipBlocks × `ports` ports, selecting every pod of `ns`.
fn oversized(ns: &str, blocks: u32, ports: u32) -> Value {
    objects::ip_blocks_policy(ns, "big", json!({}), blocks, ports).json()
}

fn keys_of(c: &netpol_policy::compiler::Compiled, ep_id: u32) -> usize {
    c.state
        .policy
        .keys()
        .filter(|k| match k {
            PolicyMapKey::Exact(k) => k.ep_id == ep_id,
            PolicyMapKey::Range(k, _) => k.ep_id == ep_id,
        })
        .count()
}

#[test]
fn an_oversized_policy_is_rejected_whole_and_the_others_stay_enforced() {
    let allow_web = json!({"kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "tenant"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}});
    let deny = json!({"kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "other"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    let m = model(vec![
        pod("tenant", "t", "10.0.0.2"),
        pod("other", "o", "10.0.0.3"),
        oversized("tenant", 600, 500),
        allow_web,
        deny,
    ]);
    let eps = [endpoint(1, "tenant", "t", "10.0.0.2"), endpoint(2, "other", "o", "10.0.0.3")];
    let t = Instant::now();
    let c = compile(&m, "n1", &eps, &mut Allocators::default());
    let took = t.elapsed();
    let err = &c.over_budget[&np_id("tenant", "big")];
    assert!(matches!(err, BudgetError::Policy { budget: 16384, .. }), "{err}");
    assert!(err.to_string().contains("tenant/big") && err.to_string().contains("16384"), "{err}");
    assert_eq!(c.over_budget.len(), 1);
    // The tenant pod stays isolated and keeps its other policy; the big one added nothing.
    assert_eq!(c.state.endpoints[&1].flags, EP_ISOLATED_INGRESS);
    assert_eq!(keys_of(&c, 1), 1, "only web's port 80");
    assert!(c.rules.values().all(|r| r.policy.name != "big"));
    // The other namespace's deny is in force.
    assert_eq!(c.state.endpoints[&2].flags, EP_ISOLATED_INGRESS);
    assert!(took < Duration::from_secs(2), "a rejected compile took {took:?}");
}

#[test]
fn rejecting_costs_the_budget_not_the_expansion() {
    // 2000 × 2000 = 4M keys if expanded: counting stops at the budget.
    let m = model(vec![pod("tenant", "t", "10.0.0.2"), oversized("tenant", 2000, 2000)]);
    let eps = [endpoint(1, "tenant", "t", "10.0.0.2")];
    let t = Instant::now();
    let c = compile(&m, "n1", &eps, &mut Allocators::default());
    let took = t.elapsed();
    assert_eq!(c.over_budget.len(), 1);
    assert!(c.state.policy.is_empty());
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_namespace_of_many_policies_costs_a_bounded_count() {
    // 30 policies of 90 keys in `t` (per policy 100, per namespace 200): counting stops
    // once `t` passes 400 counted keys; `u`'s policy is unaffected.
    let budgets = Budgets { per_policy: 100, per_namespace: 200 };
    let mut objs = vec![pod("t", "p", "10.0.0.2"), pod("u", "q", "10.0.0.3")];
    objs.extend(
        (0..30).map(|i| objects::ip_blocks_policy("t", &format!("np{i:02}"), json!({}), 10, 9).json()),
    );
    objs.push(objects::ip_blocks_policy("u", "np", json!({}), 10, 9).json());
    let m = model(objs);
    let eps = [endpoint(1, "t", "p", "10.0.0.2"), endpoint(2, "u", "q", "10.0.0.3")];
    let c = compile_with(&m, "n1", &eps, &mut Allocators::default(), &budgets);
    let uncounted: Vec<&String> = c
        .over_budget
        .iter()
        .filter(|(_, e)| matches!(e, BudgetError::NamespaceUncounted { counted: 450, budget: 200, .. }))
        .map(|(id, _)| &id.name)
        .collect();
    assert_eq!(uncounted.len(), 25, "{:?}", c.over_budget);
    assert_eq!(uncounted[0], "np05", "the policies after the bound, in name order");
    let over_ns = c.over_budget.values().filter(|e| matches!(e, BudgetError::Namespace { .. })).count();
    assert_eq!(over_ns, 3, "of the 5 counted, the 2 that fit 200 are admitted");
    assert_eq!(c.over_budget.len(), 28);
    assert!(c.over_budget.keys().all(|id| id.namespace == "t"));
    let msg = c.over_budget[&np_id("t", "np29")].to_string();
    assert!(msg.contains("t/np29") && msg.contains("not expanded"), "{msg}");
    // Admitted policies write their keys; every policy of t still isolates p.
    assert_eq!(keys_of(&c, 1), 90, "two admitted policies with the same 90 keys");
    assert_eq!(keys_of(&c, 2), 90);
    assert_eq!(c.state.endpoints[&1].flags, EP_ISOLATED_INGRESS);
}

#[test]
fn an_endpoint_whose_pod_is_unknown_is_held_closed() {
    // A NotIn selector matches a pod without labels: an unknown pod must not be taken for
    // one, here or as a peer.
    let allow_not_a = json!({"kind": "NetworkPolicy", "metadata": {"name": "not-a", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [{"podSelector":
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}}]}]}});
    let m = model(vec![pod("x", "db", "10.0.0.9"), allow_not_a]);
    let eps = [endpoint(1, "x", "db", "10.0.0.9"), endpoint(2, "x", "late", "10.0.0.7")];
    let c = compile(&m, "n1", &eps, &mut Allocators::default());
    let late = &c.state.endpoints[&2];
    assert_eq!(late.identity, identity::INIT);
    assert_eq!(late.flags, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
    assert_eq!(keys_of(&c, 2), 0);
    assert!(c.held_closed.contains(&2));
    // db's NotIn rule names label identities only: INIT is not among its peers.
    let peers: Vec<u32> = c
        .state
        .policy
        .keys()
        .filter_map(|k| match k {
            PolicyMapKey::Exact(k) if k.ep_id == 1 => Some(k.peer),
            _ => None,
        })
        .collect();
    assert!(!peers.contains(&identity::INIT), "{peers:?}");
    let net = ipnet::Ipv4Net::new("10.0.0.7".parse().unwrap(), 32).unwrap();
    assert_eq!(c.state.ipcache[&net].identity, identity::INIT);
}

fn np_id(ns: &str, name: &str) -> netpol_policy::policy::PolicyId {
    netpol_policy::policy::PolicyId::new(netpol_policy::policy::PolicyKind::NetworkPolicy, ns, name)
}

/// A namespace annotated for audit marks its endpoints (also one held closed) and nothing
/// else: the same isolation, the same entries; another namespace stays enforced; a node
/// audited whole marks every endpoint.
#[test]
fn audit_mode_marks_the_endpoints_of_an_annotated_namespace_and_changes_nothing_else() {
    let deny = |ns: &str| {
        json!({"kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": ns},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}})
    };
    let annotated = |value: &str| json!({"kind": "Namespace", "metadata": {"name": "trial", "annotations": {"netpol.io/policy-audit-mode": value}}});
    let objects = |value: &str| {
        vec![
            annotated(value),
            pod("trial", "t", "10.0.0.2"),
            pod("prod", "p", "10.0.0.3"),
            deny("trial"),
            deny("prod"),
        ]
    };
    let eps = [
        endpoint(1, "trial", "t", "10.0.0.2"),
        endpoint(2, "prod", "p", "10.0.0.3"),
        endpoint(3, "trial", "late", "10.0.0.4"),
    ];
    let enforced = compile(&model(objects("false")), "n1", &eps, &mut Allocators::default());
    let mut audited = compile(&model(objects("true")), "n1", &eps, &mut Allocators::default());
    let flags = |c: &netpol_policy::compiler::Compiled, ifindex| c.state.endpoints[&ifindex].flags;
    assert_eq!(flags(&enforced, 1), EP_ISOLATED_INGRESS);
    assert_eq!(flags(&audited, 1), EP_ISOLATED_INGRESS | EP_AUDIT);
    assert_eq!(flags(&audited, 2), EP_ISOLATED_INGRESS, "another namespace stays enforced");
    assert_eq!(flags(&audited, 3), EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS | EP_AUDIT);
    assert_eq!(audited.state.policy, enforced.state.policy, "audit mode changes no entry");
    assert!(audited.state.audited(1) && !audited.state.audited(2));
    audited.audit_all();
    assert!(audited.state.audited(2));
}
