//! Compile time and memory of the policy compiler (no root): 1k and 10k pods, 100 and 1k
//! policies, for one node with ~110 local pods; then at the budget limits — one policy,
//! one namespace and the whole node at their budgets, and oversized policies that are
//! rejected (`cargo xtask bench`).
//!
//! The cluster: 20 namespaces; pods in deployments of 20 (so identities are per deployment,
//! as in real clusters); each policy selects one deployment and allows ingress from another
//! deployment (podSelector), from a namespace (namespaceSelector), and from an ipBlock with
//! an except, on a port, a range and a named port, plus an egress rule.
//! Memory is measured with a counting allocator: the peak heap growth during a compile and
//! the size of its result.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use netpol_policy::{
    compiler::{compile, Allocators, Budgets, Compiled, LocalEndpoint},
    model::{Model, Object},
};
use serde_json::json;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NAMESPACES: usize = 20;
const DEPLOYMENT: usize = 20;
const LOCAL: usize = 110;

fn cluster(pods: usize, policies: usize) -> (Model, Vec<LocalEndpoint>) {
    let mut m = Model::default();
    for n in 0..NAMESPACES {
        let ns = json!({"metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{}", n % 5)}}});
        m.upsert(Object::Namespace(Box::new(serde_json::from_value(ns).unwrap()))).unwrap();
    }
    let mut local = Vec::new();
    for i in 0..pods {
        let dep = i / DEPLOYMENT;
        let ns = format!("ns{}", dep % NAMESPACES);
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + i as u32);
        let tier = ["web", "api", "db"][dep % 3];
        let on = if i % (pods / LOCAL).max(1) == 0 { "n1" } else { "other" };
        let pod = json!({
            "metadata": {"name": format!("pod{i}"), "namespace": ns, "labels": {"app": format!("app{dep}"), "tier": tier}},
            "spec": {"nodeName": on,
                     "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip.to_string()},
        });
        m.upsert(Object::Pod(Box::new(serde_json::from_value(pod).unwrap()))).unwrap();
        if i % (pods / LOCAL).max(1) == 0 && local.len() < LOCAL {
            local.push(LocalEndpoint {
                ifindex: 1000 + i as u32,
                ep_id: 1 + i as u32,
                ip,
                namespace: ns,
                pod: format!("pod{i}"),
            });
        }
    }
    let deployments = pods / DEPLOYMENT;
    for p in 0..policies {
        let dep = p % deployments;
        let from = (p * 7 + 3) % deployments;
        let np = json!({
            "metadata": {"name": format!("np{p}"), "namespace": format!("ns{}", dep % NAMESPACES)},
            "spec": {
                "podSelector": {"matchLabels": {"app": format!("app{dep}")}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": format!("app{from}")}}},
                              {"namespaceSelector": {"matchLabels": {"team": format!("t{}", p % 5)}}, "podSelector": {"matchLabels": {"tier": "web"}}}],
                     "ports": [{"port": 80}, {"port": 8000, "endPort": 8100}, {"port": "http"}]},
                    {"from": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", p % 200), "except": [format!("172.{}.1.0/24", p % 200)]}}],
                     "ports": [{"port": 443}]},
                ],
                "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": 5432}]}],
            },
        });
        m.upsert(Object::NetworkPolicy(Box::new(serde_json::from_value(np).unwrap()))).unwrap();
    }
    (m, local)
}

/// A local pod in namespace `b{ns}`, and a policy selecting it with `blocks` /32 ipBlocks ×
/// `ports` ports (`blocks × ports` keys on that pod).
fn add_blocks_policy(m: &mut Model, local: &mut Vec<LocalEndpoint>, ns: usize, blocks: u32, ports: u32) {
    let i = local.len() as u32;
    let (name, namespace) = (format!("p{i}"), format!("b{ns}"));
    let ip = std::net::Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250) as u8 + 2);
    let pod = json!({"metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
                     "spec": {"nodeName": "n1", "containers": []},
                     "status": {"podIP": ip.to_string(), "phase": "Running"}});
    m.upsert(Object::Pod(Box::new(serde_json::from_value(pod).unwrap()))).unwrap();
    let ep = LocalEndpoint {
        ifindex: 5000 + i,
        ep_id: 5000 + i,
        ip,
        namespace: namespace.clone(),
        pod: name.clone(),
    };
    local.push(ep);
    let from: Vec<_> = (0..blocks)
        .map(|b| json!({"ipBlock": {"cidr": format!("172.{}.{}.{}/32", 16 + b / 65536, (b / 256) % 256, b % 256)}}))
        .collect();
    let ports: Vec<_> = (0..ports).map(|p| json!({"port": 1000 + p})).collect();
    let np = json!({"metadata": {"name": format!("np{i}"), "namespace": namespace},
                    "spec": {"podSelector": {"matchLabels": {"app": name}}, "ingress": [{"from": from, "ports": ports}]}});
    m.upsert(Object::NetworkPolicy(Box::new(serde_json::from_value(np).unwrap()))).unwrap();
}

/// One compile: (result, time, peak heap growth in bytes).
fn measured(model: &Model, local: &[LocalEndpoint]) -> (Compiled, Duration, usize) {
    let mut alloc = Allocators::default();
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    let c = compile(model, "n1", local, &mut alloc);
    (c, t.elapsed(), PEAK.load(Ordering::Relaxed) - base)
}

fn budget_limits() {
    let b = Budgets::default();
    println!("\n| at the budget limit (per policy {}, per namespace {}) | policy keys written | rejected | compile | peak heap |", b.per_policy, b.per_namespace);
    println!("|---|---:|---:|---:|---:|");
    let side = 128; // 128 blocks × 128 ports = 16384 keys: one policy at its budget
                    // (namespace, ipBlocks, ports) of each policy.
    type Policies = Vec<(usize, u32, u32)>;
    let cases: [(&str, Policies); 6] = [
        ("one policy at its budget", vec![(0, side, side)]),
        ("one namespace at its budget (4 such policies)", (0..4).map(|_| (0, side, side)).collect()),
        ("the node full: 15 namespaces at 16384 keys", (0..15).map(|n| (n, side, side)).collect()),
        ("rejected: 600 blocks × 500 ports (300k keys)", vec![(0, 600, 500)]),
        ("rejected: 2000 blocks × 2000 ports (4M keys)", vec![(0, 2000, 2000)]),
        ("one namespace of 200 policies at 16384 keys (3.3M)", (0..200).map(|_| (0, side, side)).collect()),
    ];
    for (what, policies) in cases {
        let (mut m, mut local) = (Model::default(), Vec::new());
        for (ns, blocks, ports) in policies {
            add_blocks_policy(&mut m, &mut local, ns, blocks, ports);
        }
        let (c, took, peak) = measured(&m, &local);
        println!(
            "| {what} | {} | {} | {:.1} ms | {:.1} MiB |",
            c.state.policy.len(),
            c.over_budget.len(),
            took.as_secs_f64() * 1e3,
            peak as f64 / (1 << 20) as f64
        );
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!("| pods | policies | identities | ipcache | policy keys | first compile | recompile (median of 5) | peak heap during compile | result size |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let quick = std::env::args().any(|a| a == "--quick");
    let pods_sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
    for &pods in pods_sizes {
        for policies in [100, 1_000] {
            let (model, local) = cluster(pods, policies);
            let mut alloc = Allocators::default();
            let base = CURRENT.load(Ordering::Relaxed);
            PEAK.store(base, Ordering::Relaxed);
            let t = Instant::now();
            let first = compile(&model, "n1", &local, &mut alloc);
            let first_t = t.elapsed();
            let peak = PEAK.load(Ordering::Relaxed) - base;
            let size = CURRENT.load(Ordering::Relaxed) - base;
            let again: Vec<Duration> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let c = compile(&model, "n1", &local, &mut alloc);
                    assert_eq!(c.state, first.state, "compilation is not deterministic");
                    t.elapsed()
                })
                .collect();
            println!(
                "| {pods} | {policies} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} MiB | {:.1} MiB |",
                first.identities.len(),
                first.state.ipcache.len(),
                first.state.policy.len(),
                first_t.as_secs_f64() * 1e3,
                median(again).as_secs_f64() * 1e3,
                peak as f64 / (1 << 20) as f64,
                size as f64 / (1 << 20) as f64,
            );
        }
    }
    budget_limits();
}
