//! What enforcement costs real pod-to-pod traffic (root only; `cargo xtask bench`, and
//! `--quick` in `cargo xtask test` so it never rots).
//!
//! Two pods, a client and a server, wired as netpol-cni wires them (veths to a node
//! namespace, /32 addresses, a link-local gateway), under each filter in turn:
//! - `none`: nothing attached, the baseline;
//! - `pass-through`: a program that only returns TC_ACT_OK on the same four hooks: the
//!   floor any TC program pays (TCX dispatch; with statistics on, their own overhead too);
//! - `netpol N`: the TC programs on both veths, the client egress-isolated and the server
//!   ingress-isolated, with N policy entries (and N ipcache /32s) besides the two rules
//!   that allow this traffic;
//! - `netpol N, debug steps off` and `netpol N, debug steps dropped`: two more datapaths of
//!   N entries, created after the others (a process's first datapath runs colder, see
//!   BENCHMARKS.md), the first as an agent runs it (steps present, off for these endpoints
//!   unless someone runs `netpol monitor --debug`), the second loaded with aya-log's level
//!   at 0 so the verifier drops every step: what the steps cost while off;
//! - `iptables`: the node's FORWARD chain with conntrack (established → accept), one accept
//!   rule for the flow, drop;
//! - `nftables`: a forward chain with conntrack and a 10k-element concatenated set
//!   (saddr . daddr . dport), drop.
//!
//! Workloads: TCP request/response on one connection (64-byte messages; rate, p50, p99),
//! new connections (connect, one request/response, close; rate), one stream (throughput).
//! One thread, pinned to one CPU, drives both ends through non-blocking sockets (the
//! server's created in the server pod): a veth delivers in the sender's softirq, so each
//! round trip is the kernel's path and the filters' cost, with no scheduler wake-up in it.
//! Repetitions are interleaved (every filter once per round), so drift on the machine hits
//! all of them alike; each figure is the median of the rounds with its min–max spread, and a
//! ratio to `none` from the same round. Then, with BPF run-time statistics on, the programs'
//! own cost per invocation on that traffic: run_time_ns / run_cnt.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    programs::{tc::SchedClassifierLinkId, SchedClassifier, TcAttachType},
    sys::{enable_stats, Stats},
    Ebpf, EbpfLoader,
};
use netpol_agent::datapath::{
    Config, Datapath, Direction, EndpointSpec, Hook, IpcacheSpec, PolicyEntry, Protocol, OBJECT,
};
use netpol_common::{identity, programs};
use netpol_tests::{
    netns::{in_netns, Entered},
    sh,
    topology::Node,
    traffic::spin,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 255, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const ID_CLIENT: u32 = identity::FIRST_LABEL;
const ID_SERVER: u32 = identity::FIRST_LABEL + 1;
const RR_PORT: u16 = 5001;
const STREAM_PORT: u16 = 5002;
const MSG: usize = 64;
const NFT_SET: u32 = 10_000;
/// Traffic before each measurement, unmeasured: a freshly attached filter is slower for a
/// moment (caches, the conntrack table after its flush).
const WARM_UP: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Filter {
    None,
    PassThrough,
    Netpol(u32),
    /// A twin of `Netpol(n)` created after the others, with its debug steps (true: present
    /// and off; false: dropped at load, `Config::debug_steps` false).
    NetpolTwin(u32, bool),
    Iptables,
    Nftables,
}

impl Filter {
    fn label(self) -> String {
        match self {
            Filter::None => "none".into(),
            Filter::PassThrough => "pass-through program".into(),
            Filter::Netpol(n) => format!("netpol {n}"),
            Filter::NetpolTwin(n, true) => format!("netpol {n}, debug steps off"),
            Filter::NetpolTwin(n, false) => format!("netpol {n}, debug steps dropped"),
            Filter::Iptables => "iptables".into(),
            Filter::Nftables => format!("nftables set {NFT_SET}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    RequestResponse,
    NewConnections,
    Stream,
}

/// One measurement: a rate (per second, or bytes/s for the stream) and, for
/// request/response, latency percentiles.
#[derive(Clone, Copy, Default)]
struct Sample {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

struct Opts {
    quick: bool,
    rounds: usize,
    duration: Duration,
    sizes: Vec<u32>,
}

impl Opts {
    fn from_args() -> Opts {
        let quick = std::env::args().any(|a| a == "--quick");
        if quick {
            Opts { quick, rounds: 1, duration: Duration::from_millis(300), sizes: vec![10, 10_000] }
        } else {
            Opts { quick, rounds: 7, duration: Duration::from_secs(1), sizes: vec![10, 10_000, 100_000] }
        }
    }
}

/// The node, its two pods, the servers, and one datapath per policy size; all removed on drop.
struct Bench {
    /// By the filter that attaches them.
    datapaths: BTreeMap<Filter, Datapath>,
    /// The pass-through program and, while it is attached, its links.
    pass: (Ebpf, Vec<SchedClassifierLinkId>),
    pass_pins: PathBuf,
    /// Listening in the server pod (non-blocking).
    listeners: [TcpListener; 2],
    entered: Option<Entered>,
    node: Node,
}

impl Drop for Bench {
    fn drop(&mut self) {
        for (_, dp) in std::mem::take(&mut self.datapaths) {
            let _ = dp.teardown();
        }
        self.detach_pass();
        let _ = std::fs::remove_dir_all(&self.pass_pins);
        self.entered.take();
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the pod-to-pod benchmark needs root (network namespaces, BPF)");
        std::process::exit(1);
    }
    let opts = Opts::from_args();
    let mut bench = Bench::new(&opts);
    let mut filters = vec![Filter::None, Filter::PassThrough];
    filters.extend(opts.sizes.iter().map(|&n| Filter::Netpol(n)));
    let n = opts.sizes[0];
    filters.splice(3..3, [Filter::NetpolTwin(n, true), Filter::NetpolTwin(n, false)]);
    filters.extend([Filter::Iptables, Filter::Nftables]);
    let workloads = [Workload::RequestResponse, Workload::NewConnections, Workload::Stream];

    let mut results: BTreeMap<(Workload, Filter), Vec<Sample>> = BTreeMap::new();
    let mut ratios: BTreeMap<(Workload, Filter), Vec<f64>> = BTreeMap::new();
    for round in 0..opts.rounds {
        eprintln!("round {}/{}", round + 1, opts.rounds);
        for w in workloads {
            let mut base = 0.0;
            for &f in &filters {
                bench.set_filter(f);
                bench.run(w, WARM_UP);
                let s = bench.run(w, opts.duration);
                bench.set_filter(Filter::None);
                if f == Filter::None {
                    base = s.rate;
                }
                results.entry((w, f)).or_default().push(s);
                ratios.entry((w, f)).or_default().push(s.rate / base);
            }
        }
    }
    let costs = bench.program_costs(&opts);
    let steps = bench.step_costs(&opts);
    let mut report = report(&opts, &filters, &results, &ratios, &costs);
    report += &step_report(opts.sizes[0], &steps);
    println!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("pod2pod.md"), &report).unwrap();
    std::fs::write(out.join("pod2pod.svg"), plot(&filters, &ratios)).unwrap();
    eprintln!("wrote {}", out.join("pod2pod.{md,svg}").display());
}

impl Bench {
    fn new(opts: &Opts) -> Bench {
        let mut node = Node::new("np2p", NODE_IP);
        node.add_pod("cl", CLIENT);
        node.add_pod("sv", SERVER);
        // Many short connections from one address: let TIME_WAIT ports be reused.
        node.pod("cl").ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
        node.pod("cl").ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000");
        let entered = Some(node.ns.enter());
        let listeners = in_netns(&node.pod("sv").ns.name, || {
            [RR_PORT, STREAM_PORT].map(|port| {
                let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
                l.set_nonblocking(true).unwrap();
                l
            })
        });
        // The object's maps are pinned by name: give this copy a directory of its own.
        let pass_pins = PathBuf::from("/sys/fs/bpf/bench-pod2pod-pass");
        let _ = std::fs::remove_dir_all(&pass_pins);
        std::fs::create_dir_all(&pass_pins).unwrap();
        let mut ebpf = EbpfLoader::new().default_map_pin_directory(&pass_pins).load(OBJECT).expect("load");
        let prog: &mut SchedClassifier = ebpf.program_mut(programs::PASS).unwrap().try_into().unwrap();
        prog.load().unwrap();
        let mut bench = Bench {
            datapaths: BTreeMap::new(),
            pass: (ebpf, Vec::new()),
            pass_pins,
            listeners,
            entered,
            node,
        };
        let n = opts.sizes[0];
        let all = opts.sizes.iter().map(|&n| Filter::Netpol(n));
        for f in all.chain([Filter::NetpolTwin(n, true), Filter::NetpolTwin(n, false)]) {
            eprintln!("filling a datapath: {}", f.label());
            let dp = bench.datapath(f);
            bench.datapaths.insert(f, dp);
        }
        bench
    }

    fn host_if(&self, pod: &str) -> String {
        self.node.pod(pod).host_if.clone()
    }

    /// A datapath of its own (own pins) whose policy has `n` entries besides the two that
    /// allow the benchmark's traffic.
    fn datapath(&self, f: Filter) -> Datapath {
        let (n, debug_steps, name) = match f {
            Filter::Netpol(n) => (n, true, format!("bench-pod2pod-{n}")),
            Filter::NetpolTwin(n, steps) => (n, steps, format!("bench-pod2pod-{n}-steps-{steps}")),
            _ => unreachable!("not a netpol filter"),
        };
        let cfg = Config { name, debug_steps, ..Default::default() };
        let _ = std::fs::remove_dir_all(cfg.root());
        let mut dp = Datapath::open(cfg).expect("open datapath");
        for (pod, id, ip, identity, ingress, egress) in
            [("cl", 1, CLIENT, ID_CLIENT, false, true), ("sv", 2, SERVER, ID_SERVER, true, false)]
        {
            let spec = EndpointSpec {
                interface: self.host_if(pod),
                id,
                ip,
                identity,
                isolated_ingress: ingress,
                isolated_egress: egress,
                audit: false,
            };
            dp.upsert_endpoint(&spec).unwrap();
            dp.upsert_ipcache(&ipc(ip, identity)).unwrap();
        }
        dp.upsert_ipcache(&ipc(NODE_IP, identity::HOST)).unwrap();
        let rule = |endpoint, direction, peer, port| PolicyEntry {
            endpoint,
            direction,
            peer,
            protocol: Protocol::Tcp,
            port: Some(port),
            end_port: None,
        };
        for port in [RR_PORT, STREAM_PORT] {
            dp.add_policy(&rule(1, Direction::Egress, ID_SERVER, port), 1).unwrap();
            dp.add_policy(&rule(2, Direction::Ingress, ID_CLIENT, port), 2).unwrap();
        }
        // Other peers, each allowed to the server on a port of its own.
        for i in 0..n {
            let peer = ID_SERVER + 1 + i;
            dp.upsert_ipcache(&ipc(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 78, 0, 0)) + i), peer))
                .unwrap();
            dp.add_policy(&rule(2, Direction::Ingress, peer, 6000 + (i % 1000) as u16), 100 + i).unwrap();
        }
        dp
    }

    fn set_filter(&mut self, f: Filter) {
        let node = self.node.ns.name.clone();
        let ifs = [self.host_if("cl"), self.host_if("sv")];
        for dp in self.datapaths.values_mut() {
            for i in &ifs {
                dp.detach(i).unwrap();
            }
        }
        self.detach_pass();
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &node, "iptables", "-F", "FORWARD"])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &node, "nft", "delete", "table", "inet", "netpol_bench"])
            .output();
        match f {
            Filter::None => {}
            Filter::PassThrough => {
                let prog: &mut SchedClassifier =
                    self.pass.0.program_mut(programs::PASS).unwrap().try_into().unwrap();
                for i in &ifs {
                    for t in [TcAttachType::Ingress, TcAttachType::Egress] {
                        self.pass.1.push(prog.attach(i, t).expect("attach the pass-through program"));
                    }
                }
            }
            Filter::Netpol(_) | Filter::NetpolTwin(..) => {
                let dp = self.datapaths.get_mut(&f).unwrap();
                dp.flush_conntrack(None).unwrap();
                for i in &ifs {
                    dp.attach(i).unwrap();
                }
            }
            Filter::Iptables => {
                let ipt = |rule: &str| {
                    let mut a = vec!["ip", "netns", "exec", &node, "iptables", "-w", "-A", "FORWARD"];
                    a.extend(rule.split_whitespace());
                    sh(&a);
                };
                ipt("-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT");
                ipt(&format!(
                    "-s {CLIENT} -d {SERVER} -p tcp -m multiport --dports {RR_PORT},{STREAM_PORT} -j ACCEPT"
                ));
                ipt("-j DROP");
            }
            Filter::Nftables => {
                let mut elems =
                    format!("{CLIENT} . {SERVER} . {RR_PORT}, {CLIENT} . {SERVER} . {STREAM_PORT}");
                for i in 0..NFT_SET - 2 {
                    let peer = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 78, 0, 0)) + i);
                    let _ = write!(elems, ", {peer} . {SERVER} . {}", 6000 + i % 1000);
                }
                let script = format!(
                    "table inet netpol_bench {{\n set allowed {{ type ipv4_addr . ipv4_addr . inet_service; elements = {{ {elems} }} }}\n \
                     chain forward {{ type filter hook forward priority 0; policy drop;\n  ct state established,related accept\n  \
                     ip saddr . ip daddr . tcp dport @allowed accept\n }}\n}}\n"
                );
                let path = std::env::temp_dir().join("netpol-bench.nft");
                std::fs::write(&path, script).unwrap();
                sh(&["ip", "netns", "exec", &node, "nft", "-f", path.to_str().unwrap()]);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn detach_pass(&mut self) {
        let prog: &mut SchedClassifier = self.pass.0.program_mut(programs::PASS).unwrap().try_into().unwrap();
        for id in self.pass.1.drain(..) {
            let _ = prog.detach(id);
        }
    }

    fn run(&self, w: Workload, d: Duration) -> Sample {
        let ns = self.node.pod("cl").ns.name.clone();
        let [rr, st] = self.listeners.each_ref().map(|l| l.try_clone().unwrap());
        in_netns(&ns, move || {
            pin_to_cpu(1);
            match w {
                Workload::RequestResponse => request_response(&rr, d),
                Workload::NewConnections => new_connections(&rr, d),
                Workload::Stream => stream(&st, d),
            }
        })
    }

    /// ns per invocation of each program, on request/response and on new connections; the
    /// pass-through program first (size 0), as the floor.
    fn program_costs(&mut self, opts: &Opts) -> Vec<(u32, Workload, f64, f64)> {
        let _stats = enable_stats(Stats::RunTime).expect("enable BPF run-time statistics");
        let mut out = Vec::new();
        for w in [Workload::RequestResponse, Workload::NewConnections] {
            self.set_filter(Filter::PassThrough);
            self.run(w, WARM_UP);
            let stats = |b: &mut Bench| {
                let prog: &mut SchedClassifier =
                    b.pass.0.program_mut(programs::PASS).unwrap().try_into().unwrap();
                let info = prog.info().unwrap();
                (info.run_time(), info.run_count())
            };
            let before = stats(self);
            self.run(w, opts.duration);
            let after = stats(self);
            let per = (after.0 - before.0).as_nanos() as f64 / (after.1 - before.1).max(1) as f64;
            out.push((0, w, per, per));
        }
        for n in opts.sizes.clone() {
            for w in [Workload::RequestResponse, Workload::NewConnections] {
                let (from, to) = self.hook_costs(Filter::Netpol(n), w, opts.duration);
                out.push((n, w, from, to));
            }
        }
        self.set_filter(Filter::None);
        out
    }

    /// ns per invocation of the from-pod and to-pod programs of a netpol filter on `w`.
    fn hook_costs(&mut self, f: Filter, w: Workload, d: Duration) -> (f64, f64) {
        self.set_filter(f);
        self.run(w, WARM_UP);
        let stats = |b: &mut Bench| {
            let dp = b.datapaths.get_mut(&f).unwrap();
            [dp.program_stats(Hook::FromPod).unwrap(), dp.program_stats(Hook::ToPod).unwrap()]
        };
        let before = stats(self);
        self.run(w, d);
        let after = stats(self);
        let per = |i: usize| {
            (after[i].0 - before[i].0).as_nanos() as f64 / (after[i].1 - before[i].1).max(1) as f64
        };
        (per(0), per(1))
    }

    /// What the debug steps cost while off: the programs with them (off for these
    /// endpoints) against the same programs with them compiled out, per invocation,
    /// interleaved round by round. Per workload: (with, without) ns of both hooks together.
    fn step_costs(&mut self, opts: &Opts) -> Vec<(Workload, Vec<f64>, Vec<f64>)> {
        let _stats = enable_stats(Stats::RunTime).expect("enable BPF run-time statistics");
        let n = opts.sizes[0];
        let mut out = Vec::new();
        for w in [Workload::RequestResponse, Workload::NewConnections] {
            let (mut with, mut without) = (Vec::new(), Vec::new());
            for _ in 0..opts.rounds.max(3) {
                let (a, b) = self.hook_costs(Filter::NetpolTwin(n, true), w, opts.duration);
                with.push(a + b);
                let (a, b) = self.hook_costs(Filter::NetpolTwin(n, false), w, opts.duration);
                without.push(a + b);
            }
            out.push((w, with, without));
        }
        self.set_filter(Filter::None);
        out
    }
}

fn ipc(ip: Ipv4Addr, identity: u32) -> IpcacheSpec {
    IpcacheSpec { cidr: format!("{ip}/32").parse().unwrap(), identity, cidr_identity: None }
}

/// Pins the calling thread to one CPU (the last one, where the machine has fewer).
fn pin_to_cpu(cpu: usize) {
    let cpu = cpu.min(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) - 1);
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn read_all(c: &mut TcpStream, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        got += spin(|| match c.read(&mut buf[got..]) {
            Ok(0) => Err(std::io::Error::other("connection closed")),
            r => r,
        });
    }
}

/// A connection from the client pod (the calling thread's namespace) and its accepted
/// end in the server pod, both non-blocking.
fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let port = listener.local_addr().unwrap().port();
    let c = TcpStream::connect_timeout(&SocketAddrV4::new(SERVER, port).into(), Duration::from_secs(2))
        .expect("connect to the server");
    let (s, _) = spin(|| listener.accept());
    for x in [&c, &s] {
        x.set_nodelay(true).unwrap();
        x.set_nonblocking(true).unwrap();
    }
    (c, s)
}

/// One request and its response.
fn exchange(c: &mut TcpStream, s: &mut TcpStream) {
    let mut buf = [7u8; MSG];
    c.write_all(&buf).expect("request");
    read_all(s, &mut buf);
    s.write_all(&buf).expect("response");
    read_all(c, &mut buf);
}

fn request_response(l: &TcpListener, d: Duration) -> Sample {
    let (mut c, mut s) = pair(l);
    exchange(&mut c, &mut s);
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < d {
        let t = Instant::now();
        exchange(&mut c, &mut s);
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    Sample { rate: lat.len() as f64 / start.elapsed().as_secs_f64(), p50_us: pct(0.5), p99_us: pct(0.99) }
}

fn new_connections(l: &TcpListener, d: Duration) -> Sample {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        let (mut c, mut s) = pair(l);
        exchange(&mut c, &mut s);
        n += 1;
    }
    Sample { rate: n as f64 / start.elapsed().as_secs_f64(), ..Default::default() }
}

fn stream(l: &TcpListener, d: Duration) -> Sample {
    let (mut c, mut s) = pair(l);
    let out = vec![1u8; 1 << 16];
    let mut buf = vec![0u8; 1 << 16];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < d {
        while c.write(&out).is_ok() {}
        loop {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => bytes += n as u64,
                _ => break,
            }
        }
    }
    Sample { rate: bytes as f64 / start.elapsed().as_secs_f64(), ..Default::default() }
}

/// Median and min..max of a list.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn report(
    opts: &Opts,
    filters: &[Filter],
    results: &BTreeMap<(Workload, Filter), Vec<Sample>>,
    ratios: &BTreeMap<(Workload, Filter), Vec<f64>>,
    costs: &[(u32, Workload, f64, f64)],
) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "{} rounds × {:.1} s per filter and workload{}\n",
        opts.rounds,
        opts.duration.as_secs_f64(),
        if opts.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(r, "| filter | request/response /s | × none | p50 µs | p99 µs | new connections /s | × none | stream Gbit/s | × none |");
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &f in filters {
        let rr = &results[&(Workload::RequestResponse, f)];
        let med = |w: Workload, scale: f64| {
            let v: Vec<f64> = results[&(w, f)].iter().map(|s| s.rate * scale).collect();
            spread(&v)
        };
        let ratio = |w: Workload| spread(&ratios[&(w, f)]);
        let (rr_m, rr_lo, rr_hi) = med(Workload::RequestResponse, 1.0);
        let (cr_m, cr_lo, cr_hi) = med(Workload::NewConnections, 1.0);
        let (st_m, st_lo, st_hi) = med(Workload::Stream, 8e-9);
        let p50 = spread(&rr.iter().map(|s| s.p50_us).collect::<Vec<_>>()).0;
        let p99 = spread(&rr.iter().map(|s| s.p99_us).collect::<Vec<_>>()).0;
        let fmt_ratio = |(m, lo, hi): (f64, f64, f64)| format!("{m:.3} ({lo:.2}–{hi:.2})");
        let _ = writeln!(
            r,
            "| {} | {rr_m:.0} ({rr_lo:.0}–{rr_hi:.0}) | {} | {p50:.1} | {p99:.1} | {cr_m:.0} ({cr_lo:.0}–{cr_hi:.0}) | {} | {st_m:.2} ({st_lo:.2}–{st_hi:.2}) | {} |",
            f.label(),
            fmt_ratio(ratio(Workload::RequestResponse)),
            fmt_ratio(ratio(Workload::NewConnections)),
            fmt_ratio(ratio(Workload::Stream)),
        );
    }
    let _ = writeln!(r, "\nThe programs on that traffic (BPF run-time statistics, run_time_ns / run_cnt):\n");
    let _ = writeln!(r, "| policy entries | traffic | from-pod hook ns | to-pod hook ns |");
    let _ = writeln!(r, "|---:|---|---:|---:|");
    for (n, w, from, to) in costs {
        let what = if *w == Workload::RequestResponse {
            "request/response (established)"
        } else {
            "new connections"
        };
        let _ = writeln!(r, "| {n} | {what} | {from:.0} | {to:.0} |");
    }
    r
}

/// The debug steps' cost while off: medians (min–max) with and without them, and the ratio.
fn step_report(n: u32, steps: &[(Workload, Vec<f64>, Vec<f64>)]) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nThe debug steps while off (twin datapaths of {n} entries; from-pod + to-pod ns per packet, rounds interleaved):\n"
    );
    let _ = writeln!(r, "| traffic | steps present, off | steps dropped at load | ratio |");
    let _ = writeln!(r, "|---|---:|---:|---:|");
    for (w, with, without) in steps {
        let what = if *w == Workload::RequestResponse { "request/response" } else { "new connections" };
        let ((a, a_lo, a_hi), (b, b_lo, b_hi)) = (spread(with), spread(without));
        let _ = writeln!(
            r,
            "| {what} | {a:.0} ({a_lo:.0}–{a_hi:.0}) | {b:.0} ({b_lo:.0}–{b_hi:.0}) | {:.3} |",
            a / b
        );
    }
    r
}

/// A bar chart (SVG) of the median ratios to `none`, one group per workload.
fn plot(filters: &[Filter], ratios: &BTreeMap<(Workload, Filter), Vec<f64>>) -> String {
    let workloads = [
        (Workload::RequestResponse, "request/response"),
        (Workload::NewConnections, "new connections"),
        (Workload::Stream, "stream"),
    ];
    let colors =
        ["#888888", "#1f77b4", "#2ca02c", "#bcbd22", "#8c564b", "#17becf", "#9467bd", "#d62728", "#ff7f0e"];
    let (w, h, top, left, bottom) = (760.0, 390.0, 30.0, 50.0, 300.0);
    let group = (w - left - 20.0) / workloads.len() as f64;
    let bar = group / (filters.len() as f64 + 1.0);
    let y = |v: f64| bottom - (v.clamp(0.0, 1.1) / 1.1) * (bottom - top);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{left}\" y=\"18\">pod-to-pod rate as a ratio to no filter (median of rounds; whiskers: min–max)</text>\n"
    );
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let (right, ty, label_y) = (w - 20.0, y(t), y(t) + 4.0);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{right}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"#ddd\"/><text x=\"10\" y=\"{label_y:.1}\">{t:.2}</text>"
        );
    }
    for (gi, (wl, name)) in workloads.iter().enumerate() {
        let gx = left + gi as f64 * group;
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\">{name}</text>", gx + bar / 2.0, bottom + 18.0);
        for (fi, f) in filters.iter().enumerate() {
            let (m, lo, hi) = spread(&ratios[&(*wl, *f)]);
            let x = gx + bar / 2.0 + fi as f64 * bar;
            let (top_y, width, height, color) = (y(m), bar * 0.85, bottom - y(m), colors[fi % colors.len()]);
            let (wx, y_lo, y_hi) = (x + bar * 0.42, y(lo), y(hi));
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{top_y:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" fill=\"{color}\"/>\
                 <line x1=\"{wx:.1}\" x2=\"{wx:.1}\" y1=\"{y_lo:.1}\" y2=\"{y_hi:.1}\" stroke=\"#000\"/>"
            );
        }
    }
    for (fi, f) in filters.iter().enumerate() {
        let (x, y) = (left + (fi % 4) as f64 * 175.0, bottom + 30.0 + (fi / 4) as f64 * 20.0);
        let (color, label) = (colors[fi % colors.len()], f.label());
        let (tx, ty) = (x + 14.0, y + 9.0);
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{tx:.1}\" y=\"{ty:.1}\">{label}</text>"
        );
    }
    s.push_str("</svg>\n");
    s
}
