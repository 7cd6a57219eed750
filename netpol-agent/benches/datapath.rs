//! Per-packet cost of the TC programs through BPF_PROG_TEST_RUN, as ratios against the
//! pass-through program measured in the same run (root only; `cargo xtask bench`).
//!
//! Paths measured, with 10 and 100k policy entries (and as many /32 ipcache entries):
//! - established: a packet of a tracked flow (endpoint lookup, parse, one conntrack hit);
//! - new flow, denied: the full lookup chain (ipcache, policy: exact, range, any port, any
//!   protocol, for identity, CIDR identity and any peer) plus a verdict event;
//! - new flow, allowed: policy hit, conntrack insert and event — every packet a different
//!   flow, so each run is one packet (repeat = 1) and the baseline is run the same way.

use std::{net::Ipv4Addr, time::Duration};

use netpol_agent::datapath::{
    Config, Datapath, Direction, EndpointSpec, Hook, IpcacheSpec, PolicyEntry, Protocol,
};
use netpol_common::identity;
use netpol_tests::packet::{Ip, ACK, SYN};

const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const EP: u32 = 7;
// 100k events (48 bytes each in the ring) fit the 8 MiB ring between drains.
const REPEAT: u32 = 100_000;
const RUNS: usize = 7;
const FLOWS: u32 = 20_000;

fn peer_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i)
}

fn peer_id(i: u32) -> u32 {
    identity::FIRST_LABEL + i
}

/// Median ns/packet over RUNS runs of `repeat` packets.
fn median(dp: &mut Datapath, hook: Hook, pkt: &[u8], repeat: u32, expect: u32) -> f64 {
    let mut v: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let (ret, d) = dp.test_run(hook, pkt, repeat).expect("test run");
            assert_eq!(ret, expect, "{hook:?}: unexpected verdict");
            dp.drain_events();
            d
        })
        .collect();
    v.sort();
    v[RUNS / 2].as_nanos() as f64
}

/// Mean ns/packet over distinct packets, one run each.
fn mean_each(dp: &mut Datapath, hook: Hook, pkts: &[Vec<u8>], expect: u32) -> f64 {
    let mut total = 0u128;
    for p in pkts {
        let (ret, d) = dp.test_run(hook, p, 1).expect("test run");
        assert_eq!(ret, expect, "{hook:?}: unexpected verdict");
        total += d.as_nanos();
    }
    dp.drain_events();
    total as f64 / pkts.len() as f64
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the datapath benchmarks need root (BPF_PROG_TEST_RUN)");
        std::process::exit(1);
    }
    let cfg = Config { name: "bench-datapath".into(), ..Default::default() };
    let _ = std::fs::remove_dir_all(cfg.root());
    let mut bench = Bench(Some(Datapath::open(cfg).expect("open datapath")));
    let dp = bench.0.as_mut().unwrap();
    dp.upsert_endpoint(&EndpointSpec {
        interface: "lo".into(),
        id: EP,
        ip: POD,
        identity: 300,
        isolated_ingress: true,
        isolated_egress: true,
        audit: false,
    })
    .unwrap();

    let sizes: &[u32] = if std::env::args().any(|a| a == "--quick") { &[10, 1_000] } else { &[10, 100_000] };
    println!("| policy entries (map keys) | path | ns/packet | × pass-through |");
    println!("|---:|---|---:|---:|");
    let mut filled = 0u32;
    for &n in sizes {
        // Entries for peers 0..n: TCP 80, or (one in ten) the range 8000-8099 so the range trie
        // is populated too. Peer n+1 has nothing: its packets are denied.
        for i in filled..n {
            dp.upsert_ipcache(&IpcacheSpec {
                cidr: format!("{}/32", peer_ip(i)).parse().unwrap(),
                identity: peer_id(i),
                cidr_identity: None,
            })
            .unwrap();
            let (port, end_port) = if i % 10 != 9 { (Some(80), None) } else { (Some(8000), Some(8099)) };
            let e = PolicyEntry {
                endpoint: EP,
                direction: Direction::Ingress,
                peer: peer_id(i),
                protocol: Protocol::Tcp,
                port,
                end_port,
            };
            dp.add_policy(&e, i + 1).unwrap();
        }
        filled = n;
        let denied_ip = peer_ip(n + 1);
        dp.upsert_ipcache(&IpcacheSpec {
            cidr: format!("{denied_ip}/32").parse().unwrap(),
            identity: peer_id(n + 1),
            cidr_identity: None,
        })
        .unwrap();
        dp.flush_conntrack(None).unwrap();
        let entries = format!("{n} ({})", dp.policy_keys().unwrap().len());

        let allowed = Ip::tcp(peer_ip(n / 2 / 10 * 10), 40000, POD, 80, SYN).frame();
        let pass = median(dp, Hook::Pass, &allowed, REPEAT, 0);
        // Established: the first packet creates the flow, the repeats hit conntrack.
        dp.test_run(Hook::ToPod, &allowed, 1).unwrap();
        let est_pkt = Ip::tcp(peer_ip(n / 2 / 10 * 10), 40000, POD, 80, ACK).frame();
        let established = median(dp, Hook::ToPod, &est_pkt, REPEAT, 0);
        let denied_pkt = Ip::tcp(denied_ip, 40000, POD, 80, SYN).frame();
        let denied = median(dp, Hook::ToPod, &denied_pkt, REPEAT, 2);

        // One packet per flow: new flows from every peer with an entry, each on its own port.
        let new_flows: Vec<Vec<u8>> = (0..FLOWS)
            .map(|j| Ip::tcp(peer_ip((j * 10) % n), 10000 + (j % 50000) as u16, POD, 80, SYN).frame())
            .collect();
        let pass_each = mean_each(dp, Hook::Pass, &new_flows, 0);
        dp.flush_conntrack(None).unwrap();
        let new_allowed = mean_each(dp, Hook::ToPod, &new_flows, 0);
        let est_each = mean_each(dp, Hook::ToPod, &new_flows, 0);
        let counters = dp.counters().unwrap();
        assert_eq!(counters.events_lost(), 0, "events were lost during the benchmark");

        let row =
            |path: &str, ns: f64, base: f64| println!("| {entries} | {path} | {ns:.0} | {:.2} |", ns / base);
        row(&format!("pass-through (repeat {REPEAT})"), pass, pass);
        row("established flow", established, pass);
        row("new flow, denied (+ event)", denied, pass);
        row("pass-through (1 packet per run)", pass_each, pass_each);
        row("new flow, allowed (+ conntrack insert, event)", new_allowed, pass_each);
        row("established flow (1 packet per run)", est_each, pass_each);
    }
}

/// Removes the benchmark's pins however it ends.
struct Bench(Option<Datapath>);

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(dp) = self.0.take() {
            let _ = dp.teardown();
        }
    }
}
