//! Differential tests: random clusters and policies, compiled for each node, decided by the
//! user-space model of the kernel lookup, must agree with the reference evaluator on every
//! (source, destination, protocol, port). No root needed.

mod common;

use std::net::Ipv4Addr;

use common::*;
use netpol_agent::{
    datapath::lookup::decide,
    reference::{allowed, Flow},
};
use netpol_common::{DIR_EGRESS, DIR_INGRESS};
use proptest::prelude::*;

/// Checks every flow; returns the first disagreement.
fn disagreement(c: &Cluster) -> Option<String> {
    check(c, &mut [0; 2])
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
                    let egress = at.get(&src).is_none_or(|(n, i)| {
                        decide(&states[n].state, *i, DIR_EGRESS, dst, proto_num(proto), port).is_some()
                    });
                    let ingress = at.get(&dst).is_none_or(|(n, i)| {
                        decide(&states[n].state, *i, DIR_INGRESS, src, proto_num(proto), port).is_some()
                    });
                    let flow = Flow { src, dst, protocol: proto.into(), port };
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
