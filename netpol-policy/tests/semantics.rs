//! Differential tests: random clusters and policies, compiled for each node, decided by the
//! user-space model of the kernel lookup, must agree with the reference evaluator on every
//! (source, destination, protocol, port). No root needed.

use std::net::Ipv4Addr;

use netpol_common::{DIR_EGRESS, DIR_INGRESS};
use netpol_policy::testing::*;
use netpol_policy::{
    lookup::{decide, dns_names, outcome, Outcome},
    names::Name,
    reference::{allowed, Flow},
};
use proptest::prelude::*;

/// Checks every flow; returns the first disagreement.
fn disagreement(c: &Cluster) -> Option<String> {
    check(c, &mut [0; 2])
}

/// Each flow as plain traffic and as DNS queries for names the generated rules tell apart.
fn asked() -> [Option<Name>; 3] {
    [None, Some(Name::parse("songlaa.com").unwrap()), Some(Name::parse("www.zhaw.ch").unwrap())]
}

/// Checks every flow, counting denied and allowed ones.
fn check(c: &Cluster, counts: &mut [usize; 2]) -> Option<String> {
    let m = model(c);
    let (states, at) = compile_all(&m);
    let mut addrs: Vec<Ipv4Addr> = m.policy_pods().map(|(_, _, ip)| ip).collect();
    addrs.extend(EXTERNAL);
    addrs.extend(NODES.iter().map(|(_, ip)| *ip));
    for &src in &addrs {
        for &dst in &addrs {
            if src == dst || (!at.contains_key(&src) && !at.contains_key(&dst)) {
                continue;
            }
            for proto in PROTOS {
                let ports: &[u16] = if proto == "ICMP" { &[0] } else { &PORTS };
                for &port in ports {
                    for dns_name in asked() {
                        let egress = at.get(&src).is_none_or(|(n, i)| {
                            let c = &states[n];
                            match outcome(&c.state, *i, DIR_EGRESS, dst, proto_num(proto), port) {
                                Outcome::Pass(_) => true,
                                Outcome::Proxy(_) => dns_name.as_ref().is_some_and(|n| {
                                    let names = dns_names(&c.state, &c.dns, *i, dst, proto_num(proto), port);
                                    names.iter().any(|m| m.matches(n))
                                }),
                                Outcome::Drop => false,
                            }
                        });
                        let ingress = at.get(&dst).is_none_or(|(n, i)| {
                            decide(&states[n].state, *i, DIR_INGRESS, src, proto_num(proto), port).is_some()
                        });
                        let flow = Flow { src, dst, protocol: proto.into(), port, dns_name };
                        let want = allowed(&m, &flow);
                        counts[want as usize] += 1;
                        if want != (egress && ingress) {
                            return Some(format!(
                                "{flow:?}: reference says {want}, datapath egress={egress} ingress={ingress}"
                            ));
                        }
                    }
                }
            }
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_state_agrees_with_the_reference(c in cluster()) {
        if let Some(d) = disagreement(&c) {
            prop_assert!(false, "{d}\npolicies: {}", serde_json::to_string_pretty(&c.policies).unwrap());
        }
    }
}

/// The generator must produce clusters where policy matters: many flows of both verdicts.
#[test]
fn generated_flows_exercise_both_verdicts() {
    use proptest::{
        strategy::ValueTree,
        test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
    };
    let mut runner =
        TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
    let mut counts = [0usize; 2];
    for _ in 0..64 {
        let c = cluster().new_tree(&mut runner).unwrap().current();
        assert_eq!(check(&c, &mut counts), None);
    }
    let total = counts[0] + counts[1];
    eprintln!("{total} flows checked: {} denied, {} allowed", counts[0], counts[1]);
    assert!(counts[0] * 10 > total && counts[1] * 10 > total, "lopsided: {counts:?}");
}

/// A change touches only what it affects: relabelling one pod moves its /32 and the entries
/// naming its old or new identity, nothing else; adding a policy only adds entries of its
/// own rules.
#[test]
fn changes_touch_only_what_they_affect() {
    use netpol_policy::{
        compiler::{compile, Allocators, LocalEndpoint},
        entries::PolicyMapKey,
        model::Object,
    };
    use proptest::{
        strategy::ValueTree,
        test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
    };
    use serde_json::json;
    let mut runner =
        TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]));
    for _ in 0..32 {
        let c = cluster().new_tree(&mut runner).unwrap().current();
        let mut m = model(&c);
        let eps: Vec<LocalEndpoint> = m
            .policy_pods()
            .enumerate()
            .map(|(i, (k, _, ip))| LocalEndpoint {
                ifindex: 100 + i as u32,
                ep_id: 1 + i as u32,
                ip,
                namespace: k.0.clone(),
                pod: k.1.clone(),
            })
            .collect();
        let mut alloc = Allocators::default();
        let before = compile(&m, "n1", &eps, &mut alloc);

        // Relabel the first pod.
        let mut p = serde_json::to_value(m.pods.values().next().unwrap()).unwrap();
        let ip: Ipv4Addr = p["status"]["podIP"].as_str().unwrap().parse().unwrap();
        p["metadata"]["labels"] = json!({"app": "relabelled"});
        m.upsert(Object::Pod(Box::new(serde_json::from_value(p).unwrap()))).unwrap();
        let after = compile(&m, "n1", &eps, &mut alloc);
        let net = ipnet::Ipv4Net::new(ip, 32).unwrap();
        let (old_id, new_id) = (before.state.ipcache[&net].identity, after.state.ipcache[&net].identity);
        assert_ne!(old_id, new_id);
        for (n, e) in &before.state.ipcache {
            if *n != net {
                assert_eq!(after.state.ipcache.get(n), Some(e), "{n} moved");
            }
        }
        let peer = |k: &PolicyMapKey| match k {
            PolicyMapKey::Exact(k) => k.peer,
            PolicyMapKey::Range(k, _) => k.peer,
        };
        let ep_of = |k: &PolicyMapKey| match k {
            PolicyMapKey::Exact(k) => k.ep_id,
            PolicyMapKey::Range(k, _) => k.ep_id,
        };
        // The relabelled pod's own entries may change too (policies select it differently).
        let own_ep = eps.iter().find(|e| e.ip == ip).unwrap().ep_id;
        let changed: Vec<&PolicyMapKey> = before
            .state
            .policy
            .keys()
            .filter(|k| after.state.policy.get(k) != before.state.policy.get(k))
            .chain(after.state.policy.keys().filter(|k| !before.state.policy.contains_key(k)))
            .collect();
        for k in changed {
            let p = peer(k);
            // Pod-in-block identities of the pod change with it.
            let its_block = p >= netpol_policy::compiler::FIRST_POD_IN_BLOCK;
            assert!(
                p == old_id || p == new_id || its_block || ep_of(k) == own_ep,
                "unrelated key changed: {k:?}"
            );
        }

        // Adding a policy only adds keys, all with its own rule ids.
        let np = json!({"metadata": {"name": "added", "namespace": "x"},
                        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 7777}]}]}});
        m.upsert(Object::NetworkPolicy(Box::new(serde_json::from_value(np).unwrap()))).unwrap();
        let added = compile(&m, "n1", &eps, &mut alloc);
        for (k, v) in &after.state.policy {
            if let Some(nv) = added.state.policy.get(k) {
                assert!(nv.rule_id <= v.rule_id, "{k:?} lost its rule");
            } else {
                // A key can only disappear if the new policy isolated an endpoint that had
                // none: isolation doesn't remove keys, so nothing may disappear.
                panic!("{k:?} disappeared when a policy was added");
            }
        }
        for k in added.state.policy.keys().filter(|k| !after.state.policy.contains_key(k)) {
            let r = added.state.policy[k].rule_id;
            let rule = &added.rules[&r];
            assert!(
                (rule.policy.namespace.as_str(), rule.policy.name.as_str()) == ("x", "added"),
                "new key {k:?} from {rule}"
            );
        }
    }
}
