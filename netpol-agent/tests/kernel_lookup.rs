//! The user-space lookup model (netpol_policy::lookup, which the differential tests trust) against
//! the real programs: random clusters are compiled, each local endpoint's state is loaded
//! into the kernel maps, and every new flow in both directions must get the same verdict
//! from BPF_PROG_TEST_RUN as from the model (root).

use std::net::Ipv4Addr;

use netpol_agent::datapath::{ifindex, Config, Datapath, Hook};
use netpol_common::{DIR_EGRESS, DIR_INGRESS};
use netpol_policy::testing::*;
use netpol_policy::{lookup::decide, state::MapState};
use netpol_tests::{
    need_root,
    packet::{Ip, L4, SYN},
    RemoveOnDrop,
};
use proptest::{
    strategy::{Strategy, ValueTree},
    test_runner::{Config as PtConfig, RngAlgorithm, TestRng, TestRunner},
};

fn packet(src: Ipv4Addr, dst: Ipv4Addr, proto: &str, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        "TCP" => Ip::tcp(src, sport, dst, dport, SYN),
        "UDP" => Ip::udp(src, sport, dst, dport),
        "SCTP" => Ip::new(src, dst, L4::Sctp { sport, dport }),
        _ => Ip::new(src, dst, L4::Icmp { kind: 8, code: 0, id: sport, quoted: vec![] }),
    }
    .frame()
}

#[test]
fn the_lookup_model_matches_the_kernel_programs() {
    if need_root() {
        return;
    }
    let cfg = Config { name: "test-kernel-lookup".into(), ..Default::default() };
    let _cleanup = RemoveOnDrop(vec![cfg.root()]);
    let _ = std::fs::remove_dir_all(cfg.root());
    let mut dp = Datapath::open(cfg.clone()).unwrap();
    let lo = ifindex("lo").unwrap();
    let mut runner =
        TestRunner::new_with_rng(PtConfig::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[11; 32]));
    let (mut checked, mut dropped) = (0usize, 0usize);
    for _ in 0..24 {
        let c = cluster().new_tree(&mut runner).unwrap().current();
        let m = model(&c);
        let (states, at) = compile_all(&m);
        let mut addrs: Vec<Ipv4Addr> = m.policy_pods().map(|(_, _, ip)| ip).collect();
        addrs.extend(EXTERNAL);
        addrs.extend(NODES.iter().map(|(_, ip)| *ip));
        for (ip, (node, index)) in at.iter().filter(|(_, (n, _))| *n == "n1").take(3) {
            // Only this endpoint, moved to the loopback device BPF_PROG_TEST_RUN uses.
            let full = &states[node].state;
            let mut st = MapState {
                ipcache: full.ipcache.clone(),
                policy: full.policy.clone(),
                ..MapState::default()
            };
            st.endpoints.insert(lo, full.endpoints[index]);
            dp.sync(&st).unwrap();
            dp.flush_conntrack(None).unwrap();
            let mut sport = 20000u16;
            for &remote in addrs.iter().filter(|a| *a != ip) {
                for proto in PROTOS {
                    let ports: &[u16] = if proto == "ICMP" { &[0] } else { &PORTS };
                    for &port in ports {
                        for (hook, dir, src, dst) in [
                            (Hook::ToPod, DIR_INGRESS, remote, *ip),
                            (Hook::FromPod, DIR_EGRESS, *ip, remote),
                        ] {
                            sport += 1;
                            let want = decide(&st, lo, dir, remote, proto_num(proto), port).is_some();
                            let (ret, _) =
                                dp.test_run(hook, &packet(src, dst, proto, sport, port), 1).unwrap();
                            let got = ret == 0;
                            assert_eq!(
                                got, want,
                                "{hook:?} {src} -> {dst} {proto}/{port}: kernel {got}, model {want}"
                            );
                            checked += 1;
                            dropped += (!got) as usize;
                        }
                    }
                }
            }
        }
        dp.drain_events();
    }
    eprintln!("{checked} packets, {dropped} dropped");
    assert!(dropped * 10 > checked && dropped < checked, "lopsided: {dropped} of {checked} dropped");
}
