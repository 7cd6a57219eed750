//! What a Service costs a new connection (root only; `cargo xtask bench`, and `--quick` in
//! `cargo xtask test`). A client pod opens connections to a server pod (connect, one 64-byte
//! request/response, close), each way in turn, repetitions interleaved:
//! - `direct`: to the server's pod address, no hooks on the client's cgroup: the baseline;
//! - `socket LB, pod address`: the same, with the client in the hooked cgroup (the hook runs
//!   and finds no Service);
//! - `socket LB, ClusterIP`: to a ClusterIP the hook translates to the server;
//! - `kube-proxy, ClusterIP`: to the ClusterIP through kube-proxy-style iptables DNAT on the
//!   node (no hook): what users run instead.
//!
//! Each figure is the median of the rounds (min–max), with its ratio to `direct` in the same
//! round. Then, with BPF run-time statistics on, connect4's own cost per call.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::sys::{enable_stats, Stats};
use netpol_agent::{
    datapath::{Config, Protocol},
    testing::{PinnedDatapath, TestCgroup},
};
use netpol_common::programs;
use netpol_policy::services::{map_entries, Backend, Frontend};
use netpol_tests::{netns::in_netns, topology::Node, traffic::spin};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 255, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 78, 1);
const VIP_PORT: u16 = 80;
/// Where kube-proxy's rule sends the ClusterIP (another port: the hook must not be what
/// answers `kube-proxy, ClusterIP`).
const KP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 78, 2);
const PORT: u16 = 8080;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Direct,
    HookPodAddress,
    HookClusterIp,
    KubeProxy,
}

impl Way {
    const ALL: [Way; 4] = [Way::Direct, Way::HookPodAddress, Way::HookClusterIp, Way::KubeProxy];

    fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct (pod address, no hook)",
            Way::HookPodAddress => "socket LB, pod address",
            Way::HookClusterIp => "socket LB, ClusterIP",
            Way::KubeProxy => "kube-proxy (iptables DNAT), ClusterIP",
        }
    }

    fn target(self) -> SocketAddrV4 {
        match self {
            Way::Direct | Way::HookPodAddress => SocketAddrV4::new(SERVER, PORT),
            Way::HookClusterIp => SocketAddrV4::new(VIP, VIP_PORT),
            Way::KubeProxy => SocketAddrV4::new(KP_VIP, VIP_PORT),
        }
    }

    fn hooked(self) -> bool {
        matches!(self, Way::HookPodAddress | Way::HookClusterIp)
    }
}

/// Moves this whole process into the cgroup directory `dir`.
fn join(dir: &std::path::Path) {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).expect("join the cgroup");
}

/// This process's cgroup2 directory (to come back to).
fn own_cgroup() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
    netpol_agent::cgroup::cgroup2_mount().unwrap().join(rel.trim_start_matches('/'))
}

/// New connections for `d`: connect (in the client pod), accept, one exchange, close.
fn new_connections(client_ns: &str, listener: &TcpListener, to: SocketAddrV4, d: Duration) -> f64 {
    let l = listener.try_clone().unwrap();
    in_netns(client_ns, move || {
        let start = Instant::now();
        let mut n = 0u64;
        let mut buf = [7u8; 64];
        while start.elapsed() < d {
            let mut c = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)).expect("connect");
            abort_on_close(&c);
            let (mut s, _) = spin(|| l.accept());
            s.set_nonblocking(false).unwrap();
            c.write_all(&buf).unwrap();
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
            c.read_exact(&mut buf).unwrap();
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

/// Closes with a reset instead of TIME_WAIT: tens of thousands of connections a second
/// would otherwise exhaust the client's ports (and the node's conntrack tuples).
fn abort_on_close(c: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let fd = std::os::fd::AsRawFd::as_raw_fd(c);
    // SAFETY: a valid socket and a linger struct of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(r, 0, "SO_LINGER");
}

/// Moves this process back to its own cgroup when dropped (also on a panic), before the
/// test cgroup, which kills what is left in it, goes.
struct Home(PathBuf);

impl Drop for Home {
    fn drop(&mut self) {
        join(&self.0);
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the Services benchmark needs root (network namespaces, cgroups, BPF)");
        std::process::exit(1);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, d) = if quick { (1, Duration::from_millis(300)) } else { (7, Duration::from_secs(1)) };
    let mut node = Node::new("nsvcb", NODE_IP);
    node.add_pod("cl", CLIENT);
    node.add_pod("sv", SERVER);
    node.pod("cl").ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    node.pod("cl").ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000");
    for args in [
        vec!["-A", "PREROUTING", "-d", "10.96.78.2/32", "-p", "tcp", "--dport", "80"],
        vec!["-A", "OUTPUT", "-d", "10.96.78.2/32", "-p", "tcp", "--dport", "80"],
    ] {
        let ok = node
            .ns
            .cmd("iptables")
            .args(["-t", "nat"])
            .args(&args)
            .args(["-j", "DNAT", "--to-destination", "10.78.0.3:8080"])
            .status()
            .unwrap();
        assert!(ok.success(), "iptables");
    }
    let listener = in_netns(&node.pod("sv").ns.name, || {
        let l = TcpListener::bind(("0.0.0.0", PORT)).expect("bind");
        l.set_nonblocking(true).unwrap();
        l
    });
    let cgroup = TestCgroup::new("bench-services");
    let home = Home(own_cgroup());
    let mut dp = PinnedDatapath::open(Config { name: "bench-services".into(), ..Default::default() });
    dp.attach_cgroup(cgroup.path()).expect("attach the socket hooks");
    let mut st = dp.realized().unwrap();
    let front = Frontend { addr: VIP, port: VIP_PORT, protocol: Protocol::Tcp };
    st.services = map_entries(&[(front, vec![Backend { addr: SERVER, port: PORT }])].into());
    dp.sync(&st).unwrap();

    let client_ns = node.pod("cl").ns.name.clone();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Way::ALL.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); Way::ALL.len()];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        let mut base = 0.0;
        for (i, way) in Way::ALL.into_iter().enumerate() {
            join(if way.hooked() { cgroup.path() } else { &home.0 });
            new_connections(&client_ns, &listener, way.target(), Duration::from_millis(100));
            let r = new_connections(&client_ns, &listener, way.target(), d);
            if way == Way::Direct {
                base = r;
            }
            rates[i].push(r);
            ratios[i].push(r / base);
        }
    }
    // The hook's own cost per connect, on this traffic (statistics only while measuring:
    // they cost every program a little).
    join(cgroup.path());
    let (t0, c0) = dp.socket_hook_stats(programs::CONNECT4).unwrap();
    {
        let _stats = enable_stats(Stats::RunTime).expect("BPF run-time statistics");
        new_connections(&client_ns, &listener, SocketAddrV4::new(VIP, VIP_PORT), d);
    }
    join(&home.0);
    let (t1, c1) = dp.socket_hook_stats(programs::CONNECT4).unwrap();
    let (time, count) = (t1 - t0, c1 - c0);
    let mut r = String::new();
    let _ = writeln!(
        r,
        "| new connections ({} rounds of {:?}) | per second, median (min–max) | ratio to direct |",
        rounds, d
    );
    let _ = writeln!(r, "|---|---:|---:|");
    for (i, way) in Way::ALL.into_iter().enumerate() {
        let (m, lo, hi) = spread(&rates[i]);
        let _ = writeln!(r, "| {} | {m:.0} ({lo:.0}–{hi:.0}) | {:.3} |", way.label(), spread(&ratios[i]).0);
    }
    let per_call = if count > 0 { time.as_nanos() as f64 / count as f64 } else { 0.0 };
    let _ = writeln!(
        r,
        "\nconnect4 on this traffic: {per_call:.0} ns per call ({count} calls, BPF run-time statistics)"
    );
    println!("{r}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("services.md"), &r).unwrap();
    drop(home);
    drop(dp);
    drop(cgroup);
    drop(node);
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}
