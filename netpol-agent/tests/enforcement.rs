//! Real packets between network namespaces, enforced by the attached programs (root only).
//!
//! Each test builds its own [`lab::Lab`]: a node namespace with pods a, b, c, its own pinned
//! datapath, all torn down on drop, also when it fails.

mod lab;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::programs::links::{FdLink, PinnedLink};
use lab::*;
use netpol_agent::datapath::{AttachMode, Datapath, Direction, EndpointSpec, Protocol};
use netpol_common::{identity, reason, VERDICT_AUDIT, VERDICT_DROP};
use netpol_tests::{
    packet::{Ip, SYN},
    traffic::{curl, inject_frame, tcp_probe, Conn},
};

#[test]
fn allow_deny_and_replies_over_tcp_udp_and_curl() {
    let Some(mut lab) = Lab::new("nfbasic", AttachMode::Auto) else { return };
    lab.tcp_servers("b", &[80, 81]);
    lab.udp_servers("b", &[53, 54]);
    lab.tcp_servers("a", &[80]);
    lab.tcp_servers("c", &[80]);
    // Nothing isolated: everything flows.
    lab.tcp("c", B, 81, true);
    // b isolated both ways: only a may reach it on TCP 80 and UDP 53; b itself may send
    // nothing new, yet its replies flow.
    lab.isolate("b", EP_B, B, ID_B, true, true);
    lab.dp().add_policy(&entry(EP_B, Direction::Ingress, ID_A, Protocol::Tcp, Some(80), None), 11).unwrap();
    lab.dp().add_policy(&entry(EP_B, Direction::Ingress, ID_A, Protocol::Udp, Some(53), None), 12).unwrap();
    lab.tcp("a", B, 80, true);
    lab.udp("a", B, 53, true);
    let (code, out) = curl(&lab.node.pod("a").ns, &format!("http://{B}:80/"), 3.0);
    assert_eq!((code, out.as_str()), (0, "200"), "curl a -> b");
    let (code, out) = curl(&lab.node.pod("c").ns, &format!("http://{B}:80/"), 1.0);
    assert_eq!(code, 28, "curl c -> b must time out: {out}");
    assert!(out.contains("Connection timed out") || out.contains("Timeout"), "{out}");
    lab.tcp("a", B, 81, false);
    lab.udp("a", B, 54, false);
    lab.tcp("b", A, 80, false);
    // a isolated for egress: only to b:80.
    lab.isolate("a", EP_A, A, ID_A, false, true);
    lab.dp().add_policy(&entry(EP_A, Direction::Egress, ID_B, Protocol::Tcp, Some(80), None), 21).unwrap();
    lab.tcp("a", B, 80, true);
    lab.tcp("a", C, 80, false);
    lab.udp("a", B, 53, false);
    // The drops were reported with the 5-tuple, and the node's ARP for b went through.
    let events = lab.dp().drain_events();
    assert!(events.iter().any(|e| e.reason == reason::DROP_POLICY
        && e.saddr == u32::from_ne_bytes(C.octets())
        && u16::from_be(e.dport) == 80
        && e.peer == ID_C));
    assert!(events.iter().any(|e| e.reason == reason::ALLOW_POLICY && e.rule_id == 11));
    assert!(lab.counter(reason::ALLOW_ARP) > 0);
}

#[test]
fn wildcards_port_ranges_and_any_protocol() {
    let Some(mut lab) = Lab::new("nfwild", AttachMode::Auto) else { return };
    lab.tcp_servers("b", &[8000, 8010, 8011]);
    lab.udp_servers("b", &[9000]);
    lab.isolate("b", EP_B, B, ID_B, true, false);
    lab.dp()
        .add_policy(&entry(EP_B, Direction::Ingress, identity::ANY, Protocol::Tcp, Some(8000), Some(8010)), 1)
        .unwrap();
    lab.dp().add_policy(&entry(EP_B, Direction::Ingress, ID_C, Protocol::Any, None, None), 2).unwrap();
    lab.tcp("a", B, 8000, true);
    lab.tcp("a", B, 8010, true);
    lab.tcp("a", B, 8011, false);
    lab.udp("a", B, 9000, false);
    lab.udp("c", B, 9000, true);
    lab.tcp("c", B, 8011, true);
    let ping = |from: &str| {
        lab.node
            .pod(from)
            .ns
            .cmd("ping")
            .args(["-c1", "-W1", &B.to_string()])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(ping("c"), "any protocol lets ICMP through");
    assert!(!ping("a"), "a has no ICMP rule");
}

#[test]
fn ipblock_with_except_covers_pod_ips() {
    let Some(mut lab) = Lab::new("nfcidr", AttachMode::Auto) else { return };
    lab.tcp_servers("b", &[80]);
    // ipBlock 10.50.0.0/24 except 10.50.0.4/32 (c): a falls in the block, c in the except.
    let (block, except) = (identity::FIRST_CIDR, identity::FIRST_CIDR + 1);
    lab.dp().upsert_ipcache(&ipc("10.50.0.0/24", block, None)).unwrap();
    lab.dp().upsert_ipcache(&ipc(&format!("{A}/32"), ID_A, Some(block))).unwrap();
    lab.dp().upsert_ipcache(&ipc(&format!("{C}/32"), ID_C, Some(except))).unwrap();
    lab.isolate("b", EP_B, B, ID_B, true, false);
    lab.dp().add_policy(&entry(EP_B, Direction::Ingress, block, Protocol::Tcp, Some(80), None), 1).unwrap();
    lab.tcp("a", B, 80, true);
    lab.tcp("c", B, 80, false);
}

#[test]
fn spoofed_and_malformed_packets_from_a_pod_are_dropped() {
    let Some(mut lab) = Lab::new("nfspoof", AttachMode::Auto) else { return };
    lab.tcp_servers("b", &[80]);
    // a claims an address that is not its own.
    let fake = Ipv4Addr::new(10, 50, 0, 9);
    lab.node.pod("a").ns.ip(&["addr", "add", &format!("{fake}/32"), "dev", "eth0"]);
    lab.tcp("a", B, 80, true);
    let before = lab.counter(reason::DROP_SPOOFED);
    let spoofed = netpol_tests::netns::in_netns(&lab.ns("a"), move || {
        // std cannot bind before connect: do it with libc.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let bind = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(fake.octets()) },
            sin_zero: [0; 8],
        };
        unsafe { libc::bind(sock, (&bind as *const libc::sockaddr_in).cast(), 16) };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 80u16.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(B.octets()) },
            sin_zero: [0; 8],
        };
        let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
        unsafe {
            libc::setsockopt(
                sock,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                16,
            );
            let rc = libc::connect(sock, (&to as *const libc::sockaddr_in).cast(), 16);
            libc::close(sock);
            rc == 0
        }
    });
    assert!(!spoofed, "a connection from a forged source got through");
    assert!(lab.counter(reason::DROP_SPOOFED) > before);

    // Frames a pod could forge with a packet socket: a cut IPv4 header, a cut TCP header.
    let full = Ip::tcp(A, 1234, B, 80, SYN).frame();
    let before = lab.counter(reason::DROP_MALFORMED);
    inject_frame(&lab.ns("a"), "eth0", full[..14 + 12].to_vec());
    inject_frame(&lab.ns("a"), "eth0", full[..14 + 20 + 8].to_vec());
    assert_eq!(lab.counter(reason::DROP_MALFORMED), before + 2);
}

#[test]
fn a_withdrawn_rule_cuts_an_established_connection() {
    let Some(mut lab) = Lab::new("nfcut", AttachMode::Auto) else { return };
    lab.tcp_servers("b", &[80]);
    lab.isolate("b", EP_B, B, ID_B, true, false);
    let rule = entry(EP_B, Direction::Ingress, ID_A, Protocol::Tcp, Some(80), None);
    lab.dp().add_policy(&rule, 1).unwrap();
    let mut conn = Conn::open(&lab.ns("a"), SocketAddrV4::new(B, 80), ALLOWED).expect("connect a -> b");
    assert!(conn.exchange("one", ALLOWED));
    assert!(conn.exchange("two", ALLOWED));
    lab.dp().remove_policy(&rule).unwrap();
    assert!(!conn.exchange("three", Duration::from_secs(1)), "the established connection kept flowing");
    assert!(lab.counter(reason::DROP_POLICY_REVOKED) > 0);
    lab.dp().add_policy(&rule, 1).unwrap();
    lab.tcp("a", B, 80, true);
}

/// Audit mode passes what the policy would drop and reports it; what is refused for what it
/// is stays dropped; ending audit mode cuts the flows it let through.
#[test]
fn audit_mode_passes_would_be_drops_reports_them_and_its_end_cuts_them() {
    let Some(mut lab) = Lab::new("nfaudit", AttachMode::Auto) else { return };
    lab.tcp_servers("b", &[80, 81]);
    lab.isolate("b", EP_B, B, ID_B, true, false);
    lab.dp().add_policy(&entry(EP_B, Direction::Ingress, ID_A, Protocol::Tcp, Some(80), None), 1).unwrap();
    // Control: enforced, a reaches b:80 and nothing else does.
    lab.tcp("a", B, 80, true);
    lab.tcp("a", B, 81, false);
    lab.tcp("c", B, 80, false);
    let audited = EndpointSpec { audit: true, ..spec(&lab, "b", EP_B, B, ID_B, true, false) };
    lab.dp().upsert_endpoint(&audited).unwrap();
    lab.dp().drain_events();
    let (dropped, passed) = (lab.counter(reason::DROP_POLICY), lab.dp().counters().unwrap().audited());
    lab.tcp("a", B, 81, true);
    let mut conn = Conn::open(&lab.ns("c"), SocketAddrV4::new(B, 80), ALLOWED).expect("audited c -> b");
    assert!(conn.exchange("one", ALLOWED));
    assert_eq!(lab.counter(reason::DROP_POLICY), dropped, "an audited packet was counted as dropped");
    assert!(lab.dp().counters().unwrap().audited() >= passed + 2, "one per new flow at least");
    let events = lab.dp().drain_events();
    let audit = |port: u16, src: Ipv4Addr| {
        events.iter().any(|e| {
            e.verdict == VERDICT_AUDIT
                && e.reason == reason::DROP_POLICY
                && u16::from_be(e.dport) == port
                && e.saddr == u32::from_ne_bytes(src.octets())
        })
    };
    assert!(audit(81, A) && audit(80, C), "audit events missing: {events:?}");
    // (Other drops — the veths' IPv6 chatter — are not the policy's and stand.)
    let policy_drop = |e: &&netpol_common::Event| e.verdict == VERDICT_DROP && reason::auditable(e.reason);
    assert!(!events.iter().any(|e| policy_drop(&e)), "a policy drop while auditing: {events:?}");
    // Spoofed packets are not the policy's to audit: still dropped.
    let before = lab.counter(reason::DROP_SPOOFED_LOCAL);
    let forged = Ip::tcp(A, 1234, B, 80, SYN).frame();
    inject_frame(&lab.ns("c"), "eth0", forged);
    assert_eq!(lab.counter(reason::DROP_SPOOFED_LOCAL) + lab.counter(reason::DROP_SPOOFED), before + 1);
    // Enforcing again cuts what audit let through; what the policy allows stays.
    lab.isolate("b", EP_B, B, ID_B, true, false);
    assert!(!conn.exchange("two", Duration::from_secs(1)), "an audited flow outlived audit mode");
    assert!(lab.counter(reason::DROP_POLICY_REVOKED) > 0);
    lab.tcp("a", B, 80, true);
    lab.tcp("a", B, 81, false);
}

/// The link id of the pinned TCX link of a pod's host-side veth.
fn link_ids(root: &std::path::Path) -> Vec<(String, u32)> {
    let dir = root.join(format!("v{}", netpol_common::LAYOUT_VERSION)).join("links");
    let mut out: Vec<(String, u32)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let fd: FdLink = PinnedLink::from_pin(e.path()).unwrap().into();
            (e.file_name().to_string_lossy().into_owned(), fd.info().unwrap().id())
        })
        .collect();
    out.sort();
    out
}

/// The program behind each pinned TCX link.
fn program_ids(root: &std::path::Path) -> Vec<u32> {
    let dir = root.join(format!("v{}", netpol_common::LAYOUT_VERSION)).join("links");
    let mut out: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let fd: FdLink = PinnedLink::from_pin(e.unwrap().path()).unwrap().into();
            fd.info().unwrap().program_id()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn inspecting_a_datapath_changes_nothing() {
    let Some(mut lab) = Lab::new("nfinsp", AttachMode::Auto) else { return };
    let cfg = lab.dp().config().clone();
    let live = program_ids(&lab.root());
    assert_eq!(live.len(), 6);
    // Another binary looking (show, counters, monitor) leaves the live programs in place.
    let look = Datapath::inspect(cfg.clone()).unwrap();
    assert_eq!(look.endpoints().unwrap().len(), 3);
    drop(look);
    assert_eq!(program_ids(&lab.root()), live, "inspecting moved the links");
    // Taking over (what the agent does) moves them to its own programs.
    let agent = Datapath::open(cfg.clone()).unwrap();
    assert!(program_ids(&lab.root()).iter().all(|id| !live.contains(id)));
    drop(agent);
    // Nothing pinned: inspecting refuses and creates nothing.
    let missing = netpol_agent::datapath::Config { name: "test-nf-nfinsp-none".into(), ..cfg };
    assert!(Datapath::inspect(missing.clone()).is_err());
    assert!(!missing.root().exists());
}

#[test]
fn agent_restarts_keep_enforcing_without_a_gap() {
    let Some(mut lab) = Lab::new("nfrst", AttachMode::Auto) else { return };
    lab.tcp_servers("b", &[80]);
    let name = "test-nf-nfrst";
    // Hand the datapath over to agent processes: this one only watches from now on.
    lab.dp.release();
    let state = |with_rule: bool| {
        let policy = if with_rule {
            r#"[{"endpoint":2,"direction":"ingress","peer":1000,"protocol":"TCP","port":80,"ruleId":7}]"#
        } else {
            "[]"
        };
        format!(
            r#"{{"endpoints":[
                {{"interface":"{}","id":1,"ip":"{A}","identity":1000}},
                {{"interface":"{}","id":2,"ip":"{B}","identity":1001,"isolatedIngress":true}},
                {{"interface":"{}","id":3,"ip":"{C}","identity":1002}}],
              "ipcache":[{{"cidr":"{A}/32","identity":1000}},{{"cidr":"{B}/32","identity":1001}},
                         {{"cidr":"{C}/32","identity":1002}},{{"cidr":"{NODE_IP}/32","identity":1}}],
              "policy":{policy}}}"#,
            lab.node.pod("a").host_if,
            lab.node.pod("b").host_if,
            lab.node.pod("c").host_if
        )
    };
    let agent = |args: &[&str], stdin: Option<String>| {
        let mut cmd = lab.node.ns.cmd(env!("CARGO_BIN_EXE_netpol-agent"));
        cmd.args(["--name", name]).args(args);
        if let Some(s) = stdin {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            use std::io::Write;
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let out = agent(&["datapath", "apply", "-f", "-"], Some(state(true)));
    assert!(out.contains("policy +1/-0"), "{out}");
    lab.tcp("a", B, 80, true);
    lab.tcp("c", B, 80, false);
    let links = link_ids(&lab.root());
    assert_eq!(links.len(), 6, "{links:?}");

    // A long-running agent (the event monitor) is killed with SIGKILL, under probing.
    let mut monitor = lab
        .node
        .ns
        .cmd(env!("CARGO_BIN_EXE_netpol-agent"))
        .args(["--name", name, "datapath", "monitor", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, leaked) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let prober = {
        let (stop, ok, failed, leaked) = (stop.clone(), ok.clone(), failed.clone(), leaked.clone());
        let (a, c) = (lab.ns("a"), lab.ns("c"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if tcp_probe(&a, SocketAddrV4::new(B, 80), ALLOWED) {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                if tcp_probe(&c, SocketAddrV4::new(B, 80), Duration::from_millis(200)) {
                    leaked.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    // (Loading and verifying the programs takes the monitor about 0.8 s.)
    std::thread::sleep(Duration::from_millis(2000));
    monitor.kill().unwrap();
    let monitor_out = monitor.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&monitor_out.stdout);
    assert!(seen.contains("\"reason\":\"drop-policy\""), "monitor saw no drops: {seen}");
    std::thread::sleep(Duration::from_millis(300));
    // Restarts: the same state again, twice — nothing to write, no link re-created.
    for _ in 0..2 {
        let out = agent(&["datapath", "apply", "-f", "-"], Some(state(true)));
        assert!(out.contains("endpoints +0/-0, ipcache +0/-0, policy +0/-0"), "{out}");
        assert!(out.contains("attached 0"), "{out}");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    prober.join().unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "allowed probes failed across restarts");
    assert_eq!(leaked.load(Ordering::SeqCst), 0, "denied probes got through across restarts");
    assert!(ok.load(Ordering::SeqCst) >= 3);
    assert_eq!(link_ids(&lab.root()), links, "links were re-created instead of kept");

    // A changed state is applied incrementally, and teardown removes everything.
    let out = agent(&["datapath", "apply", "-f", "-"], Some(state(false)));
    assert!(out.contains("policy +0/-1"), "{out}");
    lab.tcp("a", B, 80, false);
    let shown = agent(&["datapath", "show", "-o", "json"], None);
    assert!(shown.contains("\"isolatedIngress\":true"), "{shown}");
    agent(&["datapath", "teardown"], None);
    assert!(!lab.root().exists(), "teardown left pins");
    lab.tcp("c", B, 80, true);
}

#[test]
fn clsact_attachment_enforces_and_survives_a_reopen() {
    let Some(mut lab) = Lab::new("nfclsact", AttachMode::Netlink) else { return };
    lab.tcp_servers("b", &[80]);
    let b_if = lab.node.pod("b").host_if.clone();
    let filters = lab.node.ns.cmd("tc").args(["filter", "show", "dev", &b_if, "egress"]).output().unwrap();
    let filters = String::from_utf8_lossy(&filters.stdout).into_owned();
    assert!(filters.contains("netpol_to_pod"), "no clsact filter: {filters}");
    lab.isolate("b", EP_B, B, ID_B, true, false);
    lab.dp().add_policy(&entry(EP_B, Direction::Ingress, ID_A, Protocol::Tcp, Some(80), None), 1).unwrap();
    lab.tcp("a", B, 80, true);
    lab.tcp("c", B, 80, false);
    // Close this datapath (the filters stay), reopen, and enforcement is unchanged.
    lab.dp.release();
    lab.tcp("c", B, 80, false);
    lab.dp.reopen();
    lab.tcp("a", B, 80, true);
    lab.tcp("c", B, 80, false);
    let after = lab.node.ns.cmd("tc").args(["filter", "show", "dev", &b_if, "egress"]).output().unwrap();
    let after = String::from_utf8_lossy(&after.stdout);
    assert_eq!(after.matches(" handle ").count(), 1, "one filter, replaced in place: {after}");
}

/// DNS a rule filters by name goes to the proxy socket, addressed as the pod sent it, and
/// nowhere else: dropped while no proxy listens, never delivered to the server itself; the
/// proxy's answer in the server's name reaches the pod (also for a local server); over TCP
/// the proxy accepts the connection as the server.
#[test]
fn dns_for_the_proxy_reaches_its_transparent_sockets_or_nothing() {
    use netpol_agent::dnsproxy::sockets;
    use netpol_common::{DnsProxy, PolicyValue, POLICY_DNS_PROXY};
    use std::io::{Read, Write};
    let Some(mut lab) = Lab::new("nfdns", AttachMode::Auto) else { return };
    lab.udp_servers("b", &[53]);
    lab.tcp_servers("b", &[53]);
    lab.isolate("a", EP_A, A, ID_A, false, true);
    let proxied = PolicyValue { rule_id: 7, flags: POLICY_DNS_PROXY };
    for proto in [Protocol::Udp, Protocol::Tcp] {
        let e = entry(EP_A, Direction::Egress, ID_B, proto, Some(53), None);
        lab.dp().add_policy_value(&e, proxied).unwrap();
    }
    // No proxy: dropped, with its own reason.
    lab.udp("a", B, 53, false);
    lab.tcp("a", B, 53, false);
    assert!(lab.counter(reason::DROP_DNS_PROXY_UNAVAILABLE) > 0);

    // The proxy: its sockets in the node's namespace, the node routing marked packets
    // locally (this thread is in the node namespace).
    let routing = netpol_agent::dnsproxy::routing::ProxyRouting::of_agent("test-nf-nfdns");
    routing.install().unwrap();
    routing.install().unwrap();
    assert!(routing.installed().unwrap());
    let mark = routing.mark;
    let (udp, tcp) = sockets::listen(0, mark).unwrap();
    let port = udp.local_addr().unwrap().port();
    lab.dp().set_dns_proxy(DnsProxy { port, _pad: 0, mark }).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    let a_ns = lab.ns("a");
    let client = std::thread::spawn(move || {
        netpol_tests::netns::in_netns(&a_ns, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.send_to(b"query", SocketAddrV4::new(B, 53)).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            (buf[..n].to_vec(), from)
        })
    });
    let got = sockets::recv(&udp).unwrap();
    assert_eq!((got.data.as_slice(), got.to), (&b"query"[..], SocketAddrV4::new(B, 53)));
    assert_eq!(*got.from.ip(), A);
    sockets::Answerers::new(mark).send(got.to, got.from, b"answer").unwrap();
    let (answer, from) = client.join().unwrap();
    assert_eq!(answer, b"answer", "the proxy's answer, not b's echo");
    assert_eq!(from, std::net::SocketAddr::V4(SocketAddrV4::new(B, 53)));
    assert!(lab.counter(reason::ALLOW_DNS_PROXY) > 0);

    // TCP: the proxy accepts the connection as b:53.
    let a_ns = lab.ns("a");
    let client = std::thread::spawn(move || {
        netpol_tests::netns::in_netns(&a_ns, move || {
            let mut c = std::net::TcpStream::connect_timeout(
                &SocketAddrV4::new(B, 53).into(),
                Duration::from_secs(3),
            )
            .unwrap();
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            c.write_all(b"tcp-query").unwrap();
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).unwrap();
            buf[..n].to_vec()
        })
    });
    let (mut conn, peer) = accept_within(&tcp, Duration::from_secs(3));
    assert_eq!(conn.local_addr().unwrap(), std::net::SocketAddr::V4(SocketAddrV4::new(B, 53)));
    assert_eq!(peer.ip(), std::net::IpAddr::V4(A));
    let mut buf = [0u8; 64];
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let n = conn.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"tcp-query");
    conn.write_all(b"tcp-answer").unwrap();
    assert_eq!(client.join().unwrap(), b"tcp-answer");
    // Without the node's routing nothing reaches b in the proxy's place: the kernel does
    // not forward a packet assigned to a socket, so the query goes unanswered.
    routing.remove().unwrap();
    assert!(!routing.installed().unwrap());
    assert!(lab.node.ns.ip(&["route", "show", "table", &routing.table.to_string()]).trim().is_empty());
    lab.udp("a", B, 53, false);
}

/// A connection on `l` within `t` (a test must fail, not hang).
fn accept_within(l: &std::net::TcpListener, t: Duration) -> (std::net::TcpStream, std::net::SocketAddr) {
    l.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + t;
    loop {
        match l.accept() {
            Ok((c, peer)) => {
                c.set_nonblocking(false).unwrap();
                return (c, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("no connection: {e}"),
        }
    }
}
