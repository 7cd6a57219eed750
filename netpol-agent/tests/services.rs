//! Services at the socket, with real traffic (root only): the cgroup hooks translate a
//! ClusterIP to a ready backend before any packet exists, so policy judges the backend pod
//! on both sides; applications see only the ClusterIP (getpeername, UDP reply sources);
//! a frontend without backends refuses at once; a packet that bypassed the hooks is
//! dropped for an egress-isolated pod and counted otherwise.
//!
//! Clients run in pod a's namespace, inside the test's cgroup where the hooks are attached
//! (except where a test says "outside"). The traffic tests run twice: on a plain node, and
//! on a node that also has kube-proxy's iptables DNAT rules for the same Services — the
//! outcomes must not change (the hooks translate before those rules could match).

mod lab;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
    process::Command,
};

use lab::*;
use netpol_agent::{
    datapath::{AttachMode, Direction, Protocol},
    testing::{cgroup_programs, join_cgroup, TestCgroup},
};
use netpol_common::{counter, reason};
use netpol_policy::services::{map_entries, Backend, Frontend};
use netpol_tests::{
    netns::NetNs,
    sockclient::{sock_client, HeldSocket, Mode},
};
use serde_json::Value;

const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);

/// A frontend on `VIP`: port, protocol, backends (address, target port).
type Front<'a> = (u16, Protocol, &'a [(std::net::Ipv4Addr, u16)]);

/// Whether the node also runs kube-proxy (its iptables DNAT rules for the Services).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeKind {
    Plain,
    KubeProxy,
}

/// Runs a test body on both kinds of node, as `NAME::plain` and `NAME::with_kube_proxy`.
macro_rules! on_both_nodes {
    ($name:ident) => {
        mod $name {
            #[test]
            fn plain() {
                super::$name(super::NodeKind::Plain)
            }
            #[test]
            fn with_kube_proxy() {
                super::$name(super::NodeKind::KubeProxy)
            }
        }
    };
}

/// The lab with the socket hooks on a cgroup of its own.
struct ServiceLab {
    lab: Lab,
    cgroup: TestCgroup,
    kind: NodeKind,
}

impl ServiceLab {
    fn new(prefix: &str, kind: NodeKind) -> Option<ServiceLab> {
        let prefix = if kind == NodeKind::KubeProxy { format!("{prefix}k") } else { prefix.to_string() };
        let mut lab = Lab::new(&prefix, AttachMode::Auto)?;
        let cgroup = TestCgroup::new(&prefix);
        lab.dp().attach_cgroup(cgroup.path()).expect("attach the socket hooks");
        if kind == NodeKind::KubeProxy {
            for args in [
                &["-N", "KUBE-SERVICES"][..],
                &["-A", "PREROUTING", "-j", "KUBE-SERVICES"],
                &["-A", "OUTPUT", "-j", "KUBE-SERVICES"],
            ] {
                lab.node.ns.cmd("iptables").args(["-t", "nat"]).args(args).status().expect("iptables");
            }
        }
        Some(ServiceLab { lab, cgroup, kind })
    }

    /// kube-proxy's rules for the frontends (iptables mode: a DNAT per backend, picked with
    /// the statistic match), replacing the previous ones.
    fn kube_proxy_rules(&self, fronts: &[Front]) {
        let ipt = |args: &[&str]| {
            let ok =
                self.lab.node.ns.cmd("iptables").args(["-t", "nat"]).args(args).status().expect("iptables");
            assert!(ok.success(), "iptables {args:?}");
        };
        ipt(&["-F", "KUBE-SERVICES"]);
        for (port, protocol, backends) in fronts {
            let proto = if *protocol == Protocol::Udp { "udp" } else { "tcp" };
            for (i, (addr, target)) in backends.iter().enumerate() {
                let left = backends.len() - i;
                let (dport, vip, to) = (port.to_string(), format!("{VIP}/32"), format!("{addr}:{target}"));
                let mut rule = vec!["-A", "KUBE-SERVICES", "-d", &vip, "-p", proto, "--dport", &dport];
                let probability = format!("{:.5}", 1.0 / left as f64);
                if left > 1 {
                    rule.extend(["-m", "statistic", "--mode", "random", "--probability", &probability]);
                }
                rule.extend(["-j", "DNAT", "--to-destination", &to]);
                ipt(&rule);
            }
        }
    }

    /// Makes the Services map hold exactly these frontends (the ClusterIP as a Service
    /// address in the ipcache).
    fn services(&mut self, fronts: &[Front]) {
        if self.kind == NodeKind::KubeProxy {
            self.kube_proxy_rules(fronts);
        }
        let fronts: BTreeMap<Frontend, Vec<Backend>> = fronts
            .iter()
            .map(|(port, protocol, backends)| {
                let backends =
                    backends.iter().map(|(addr, port)| Backend { addr: *addr, port: *port }).collect();
                (Frontend { addr: VIP, port: *port, protocol: *protocol }, backends)
            })
            .collect();
        let dp = self.lab.dp();
        let mut st = dp.realized().unwrap();
        st.services = map_entries(&fronts);
        let vip = ipnet::Ipv4Net::new(VIP, 32).unwrap();
        st.ipcache.insert(vip, netpol_common::IpcacheEntry { identity: SERVICE, cidr_identity: SERVICE });
        dp.sync(&st).unwrap();
    }

    fn pod_ns(&self, pod: &str) -> &NetNs {
        &self.lab.node.pod(pod).ns
    }

    /// The client in `pod`, inside the hooked cgroup.
    fn client(&self, pod: &str, mode: Mode, port: u16) -> Value {
        let adopt = |c: &mut Command| {
            self.cgroup.adopt(c);
        };
        sock_client(self.pod_ns(pod), adopt, mode, SocketAddrV4::new(VIP, port))
    }

    /// The client in `pod`, outside the hooked cgroup (its sockets are not translated).
    fn outside(&self, pod: &str, mode: Mode, port: u16) -> Value {
        sock_client(self.pod_ns(pod), |_| {}, mode, SocketAddrV4::new(VIP, port))
    }

    fn counter(&self, c: u32) -> u64 {
        self.lab.dp.counters().unwrap().0[c as usize]
    }
}

const SERVICE: u32 = netpol_common::identity::SERVICE;

on_both_nodes!(tcp_to_a_cluster_ip_reaches_a_backend_on_its_target_port_and_the_app_sees_the_cluster_ip);
fn tcp_to_a_cluster_ip_reaches_a_backend_on_its_target_port_and_the_app_sees_the_cluster_ip(node: NodeKind) {
    let Some(mut s) = ServiceLab::new("svctcp", node) else { return };
    s.lab.tcp_servers("b", &[8080]);
    s.lab.tcp_servers("c", &[9090]);
    s.services(&[(80, Protocol::Tcp, &[(B, 8080), (C, 9090)])]);
    let translated = s.counter(counter::SOCK_TRANSLATED);
    for _ in 0..6 {
        let got = s.client("a", Mode::Tcp, 80);
        assert_eq!(got["reply"], "ping", "{got}");
        assert_eq!(got["peer"], format!("{VIP}:80"), "getpeername shows the backend: {got}");
    }
    assert!(s.counter(counter::SOCK_TRANSLATED) >= translated + 6);
    // curl too (glibc's connect, HTTP).
    let mut curl = s.pod_ns("a").cmd("curl");
    curl.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "3",
        &format!("http://{VIP}:80/"),
    ]);
    s.cgroup.adopt(&mut curl);
    let out = curl.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
}

on_both_nodes!(egress_and_ingress_policy_judge_the_backend_pod_and_the_client_pod);
fn egress_and_ingress_policy_judge_the_backend_pod_and_the_client_pod(node: NodeKind) {
    let Some(mut s) = ServiceLab::new("svcpol", node) else { return };
    s.lab.tcp_servers("b", &[8080]);
    s.services(&[(80, Protocol::Tcp, &[(B, 8080)])]);
    // a may send only to c: the Service's backend is b, so the Service is closed to a.
    s.lab.isolate("a", EP_A, A, ID_A, false, true);
    let to = |peer| entry(EP_A, Direction::Egress, peer, Protocol::Tcp, Some(8080), None);
    s.lab.dp().add_policy(&to(ID_C), 1).unwrap();
    let denied = s.client("a", Mode::Tcp, 80);
    assert_eq!(denied["error"], "timeout", "an egress rule for another pod admitted the Service: {denied}");
    // An egress rule for the backend pod admits the Service traffic.
    s.lab.dp().add_policy(&to(ID_B), 2).unwrap();
    assert_eq!(s.client("a", Mode::Tcp, 80)["reply"], "ping");
    // b's ingress sees a's own address: a rule for a admits it, one for c alone does not.
    s.lab.isolate("b", EP_B, B, ID_B, true, false);
    let from = |peer| entry(EP_B, Direction::Ingress, peer, Protocol::Tcp, Some(8080), None);
    s.lab.dp().add_policy(&from(ID_C), 3).unwrap();
    assert_eq!(s.client("a", Mode::Tcp, 80)["error"], "timeout");
    s.lab.dp().add_policy(&from(ID_A), 4).unwrap();
    assert_eq!(s.client("a", Mode::Tcp, 80)["reply"], "ping");
}

on_both_nodes!(udp_replies_come_from_the_cluster_ip_connected_or_not);
fn udp_replies_come_from_the_cluster_ip_connected_or_not(node: NodeKind) {
    let Some(mut s) = ServiceLab::new("svcudp", node) else { return };
    s.lab.udp_servers("b", &[5353]);
    s.services(&[(53, Protocol::Udp, &[(B, 5353)])]);
    let got = s.client("a", Mode::Udp, 53);
    assert_eq!(got["reply"], "ping", "{got}");
    assert_eq!(got["from"], format!("{VIP}:53"), "the reply's source is the backend: {got}");
    assert_eq!(got["accepted"], true, "a musl-style resolver would drop this reply: {got}");
    let got = s.client("a", Mode::UdpConnected, 53);
    assert_eq!(got["reply"], "ping", "{got}");
    assert_eq!(got["peer"], format!("{VIP}:53"), "{got}");
}

on_both_nodes!(a_frontend_without_backends_refuses_at_once);
fn a_frontend_without_backends_refuses_at_once(node: NodeKind) {
    let Some(mut s) = ServiceLab::new("svcnone", node) else { return };
    s.services(&[(80, Protocol::Tcp, &[]), (53, Protocol::Udp, &[])]);
    let t = std::time::Instant::now();
    let got = s.client("a", Mode::Tcp, 80);
    assert_eq!(got["error"], "ECONNREFUSED", "{got}");
    let got = s.client("a", Mode::UdpConnected, 53);
    assert_eq!(got["error"], "ECONNREFUSED", "{got}");
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "refusing took {:?}", t.elapsed());
    assert!(s.counter(counter::SOCK_NO_BACKEND) >= 2);
}

on_both_nodes!(an_untranslated_packet_to_a_cluster_ip_is_dropped_for_an_egress_isolated_pod);
fn an_untranslated_packet_to_a_cluster_ip_is_dropped_for_an_egress_isolated_pod(node: NodeKind) {
    let Some(mut s) = ServiceLab::new("svcraw", node) else { return };
    s.lab.tcp_servers("b", &[8080]);
    s.services(&[(80, Protocol::Tcp, &[(B, 8080)])]);
    // Not isolated: it passes, counted — and goes nowhere on a plain node (nothing routes
    // the ClusterIP), to b through kube-proxy's DNAT on the other.
    let passed = s.counter(counter::SERVICE_UNTRANSLATED);
    let got = s.outside("a", Mode::Tcp, 80);
    match node {
        NodeKind::Plain => assert!(got.get("error").is_some(), "{got}"),
        NodeKind::KubeProxy => assert_eq!(got["reply"], "ping", "{got}"),
    }
    assert!(s.counter(counter::SERVICE_UNTRANSLATED) > passed, "the bypass was not counted");
    // Egress-isolated, even with every egress allowed: dropped with its own reason.
    s.lab.isolate("a", EP_A, A, ID_A, false, true);
    let any = entry(EP_A, Direction::Egress, netpol_common::identity::ANY, Protocol::Any, None, None);
    s.lab.dp().add_policy(&any, 1).unwrap();
    let dropped = s.lab.counter(reason::DROP_SERVICE_UNTRANSLATED);
    let got = s.outside("a", Mode::Tcp, 80);
    assert_eq!(got["error"], "timeout", "{got}");
    assert!(s.lab.counter(reason::DROP_SERVICE_UNTRANSLATED) > dropped, "not dropped as untranslated");
    // Inside the cgroup the same pod reaches the Service.
    assert_eq!(s.client("a", Mode::Tcp, 80)["reply"], "ping");
}

#[test]
fn taking_the_hooks_over_never_stops_translation_and_never_stacks_them() {
    let Some(mut s) = ServiceLab::new("svcswap", NodeKind::Plain) else { return };
    s.lab.tcp_servers("b", &[8080]);
    s.services(&[(80, Protocol::Tcp, &[(B, 8080)])]);
    assert!(s.lab.dp.socket_hooks().complete());
    assert_eq!(cgroup_programs(s.cgroup.path()), 4);
    // A client connects over and over while restarted agents take the hooks over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ns, cg) = (s.lab.ns("a"), s.cgroup.path().to_path_buf());
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}")).args(["--", "curl", "-sS", "-o", "/dev/null"]);
                cmd.args(["-w", "%{http_code}", "--max-time", "2", &format!("http://{VIP}:80/")]);
                join_cgroup(&mut cmd, &cg);
                let out = cmd.output().unwrap();
                match String::from_utf8_lossy(&out.stdout).as_ref() {
                    "200" => ok += 1,
                    other => failed.push(format!("{other} {}", String::from_utf8_lossy(&out.stderr))),
                }
            }
            (ok, failed)
        })
    };
    for _ in 0..5 {
        s.lab.dp.reopen();
        let path = s.cgroup.path().to_path_buf();
        s.lab.dp().attach_cgroup(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = prober.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed across takeovers: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 3, "only {ok} connections");
    assert_eq!(cgroup_programs(s.cgroup.path()), 4, "the old links stayed attached");
    // Released, the hooks are gone and the ClusterIP is just an address again.
    s.lab.dp().detach_cgroup().unwrap();
    assert!(s.lab.dp.socket_hooks().attached.is_empty());
    // The kernel releases an unpinned link after an RCU grace period.
    assert!(
        netpol_tests::eventually(std::time::Duration::from_secs(5), || cgroup_programs(s.cgroup.path()) == 0)
    );
    assert!(s.client("a", Mode::Tcp, 80).get("error").is_some());
}

on_both_nodes!(a_departed_backend_gets_no_new_connections_and_its_connected_udp_sockets_are_destroyed);
fn a_departed_backend_gets_no_new_connections_and_its_connected_udp_sockets_are_destroyed(node: NodeKind) {
    let Some(mut s) = ServiceLab::new("svcgone", node) else { return };
    s.lab.tcp_servers("b", &[8080]);
    s.lab.tcp_servers("c", &[8080]);
    s.lab.udp_servers("b", &[5353]);
    s.lab.udp_servers("c", &[5353]);
    s.services(&[(80, Protocol::Tcp, &[(B, 8080), (C, 8080)]), (53, Protocol::Udp, &[(B, 5353)])]);
    // A resolver's connected socket through the ClusterIP (to b), and a control socket an
    // application connected to b directly.
    let adopt = |c: &mut Command| {
        s.cgroup.adopt(c);
    };
    let held = HeldSocket::open(s.pod_ns("a"), adopt, SocketAddrV4::new(VIP, 53));
    assert_eq!(held.first["reply"], "ping", "{}", held.first);
    let direct = HeldSocket::open(s.pod_ns("a"), |_| {}, SocketAddrV4::new(B, 5353));
    assert_eq!(direct.first["reply"], "ping");

    // b stops being ready: only c is left for both frontends.
    s.services(&[(80, Protocol::Tcp, &[(C, 8080)]), (53, Protocol::Udp, &[(C, 5353)])]);
    let gone = BTreeSet::from([SocketAddrV4::new(B, 5353)]);
    let namespaces = BTreeSet::from([std::path::PathBuf::from(s.pod_ns("a").path())]);
    assert_eq!(s.lab.dp.release_backends(&gone, &namespaces), 1, "exactly the translated socket");
    // Destroyed, the socket is aborted and disconnected: the application's next call fails
    // (the kernel reports the abort or, on a send, the missing destination).
    let after = held.again();
    let error = after["error"].as_str().unwrap_or("");
    assert!(
        ["ECONNABORTED", "EDESTADDRREQ"].contains(&error),
        "the socket to the departed backend lives on: {after}"
    );
    assert_eq!(direct.again()["reply"], "again", "a socket not made by the hooks was destroyed");
    // A new socket reaches c; new TCP connections all go to c.
    assert_eq!(s.client("a", Mode::UdpConnected, 53)["reply"], "ping");
    s.lab.dp().drain_events();
    for _ in 0..8 {
        assert_eq!(s.client("a", Mode::Tcp, 80)["reply"], "ping");
    }
    let new_flows: Vec<_> = s
        .lab
        .dp()
        .drain_events()
        .into_iter()
        .filter(|e| {
            e.ep_id == EP_A && e.dir == netpol_common::DIR_EGRESS && e.proto == netpol_common::IPPROTO_TCP
        })
        .map(|e| std::net::Ipv4Addr::from(e.daddr.to_ne_bytes()))
        .collect();
    assert_eq!(new_flows.len(), 8, "{new_flows:?}");
    assert!(
        new_flows.iter().all(|d| *d == C),
        "a new connection reached the departed backend: {new_flows:?}"
    );
}

/// A flow that bypassed the hooks while the pod was not isolated (kube-proxy's DNAT took it
/// to b) is cut once the pod becomes egress-isolated, even with every egress allowed: the
/// re-judged conntrack entry meets the same rule as a new flow.
#[test]
fn an_untranslated_flow_held_from_before_isolation_is_cut() {
    let Some(mut s) = ServiceLab::new("svchold", NodeKind::KubeProxy) else { return };
    s.lab.udp_servers("b", &[5353]);
    s.services(&[(53, Protocol::Udp, &[(B, 5353)])]);
    let held = HeldSocket::open(s.pod_ns("a"), |_| {}, SocketAddrV4::new(VIP, 53));
    assert_eq!(held.first["reply"], "ping", "{}", held.first);
    let control = HeldSocket::open(s.pod_ns("a"), |_| {}, SocketAddrV4::new(B, 5353));
    assert_eq!(control.first["reply"], "ping");
    s.lab.isolate("a", EP_A, A, ID_A, false, true);
    let any = entry(EP_A, Direction::Egress, netpol_common::identity::ANY, Protocol::Any, None, None);
    s.lab.dp().add_policy(&any, 1).unwrap();
    let revoked = s.lab.counter(reason::DROP_POLICY_REVOKED);
    assert_eq!(held.again()["error"], "timeout", "the bypassing flow outlived isolation");
    assert!(s.lab.counter(reason::DROP_POLICY_REVOKED) > revoked, "not revoked");
    assert_eq!(control.again()["reply"], "again", "the direct flow to b was cut");
}

/// `/healthz` reads this: a hook counts as in effect only while the kernel lists its
/// program on the cgroup — a pinned link alone outlives the cgroup it was attached to.
#[test]
fn hooks_are_in_effect_only_while_the_kernel_runs_them_on_the_cgroup() {
    let Some(s) = ServiceLab::new("svchlth", NodeKind::Plain) else { return };
    assert!(s.lab.dp.socket_hooks().complete());
    std::fs::remove_dir(s.cgroup.path()).expect("remove the (empty) cgroup");
    let pins = s.lab.dp.pin_dir().join("links");
    let pinned = std::fs::read_dir(&pins)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cgroup-"));
    assert_eq!(pinned.count(), 4, "the links stay pinned");
    let hooks = s.lab.dp.socket_hooks();
    assert!(hooks.attached.is_empty(), "reported in effect on a removed cgroup: {hooks:?}");
}
