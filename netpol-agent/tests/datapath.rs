//! The TC programs on crafted packets, through BPF_PROG_TEST_RUN (root only).
//!
//! Each test has its own pinned maps. The packets arrive on the loopback device of the
//! test's namespace (ifindex 1), so the endpoint under test is registered on `lo`.
//! Every check asserts the TC action *and* that exactly the expected reason counter moved.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netpol_agent::datapath::{
    ifindex, mount_bpffs, Config, Datapath, DatapathError, Direction, EndpointSpec, Hook, IpcacheSpec,
    PolicyEntry, Protocol,
};
use netpol_agent::testing::PinnedDatapath;
use netpol_common::{identity, reason, Event, CT_CLOSING, IPPROTO_TCP, VERDICT_ALLOW, VERDICT_DROP};
use netpol_tests::{
    need_root,
    netns::NetNs,
    packet::{arp, ether, ipv6_udp, Ip, ACK, FIN, L4, MF, SYN},
};

const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 4);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 1, 255, 1);
const EP: u32 = 7;
const POD_ID: u32 = 300;
const PEER_ID: u32 = 301;
const OTHER_ID: u32 = 302;
const CIDR_16: u32 = identity::FIRST_CIDR;
const CIDR_24: u32 = identity::FIRST_CIDR + 1;

/// The test's own datapath (torn down on drop) and the checks on it.
struct Fixture(PinnedDatapath);

fn config(name: &str) -> Config {
    Config { name: format!("test-dp-{name}"), ..Default::default() }
}

/// A datapath with the endpoint on `lo` and the ipcache filled; None when not root.
fn fixture(name: &str, isolated_ingress: bool, isolated_egress: bool) -> Option<Fixture> {
    if need_root() {
        return None;
    }
    let mut f = Fixture(PinnedDatapath::open(config(name)));
    let dp = f.dp();
    dp.upsert_endpoint(&pod_on_lo(isolated_ingress, isolated_egress)).unwrap();
    for (ip, id) in [(POD, POD_ID), (PEER, PEER_ID), (OTHER, OTHER_ID)] {
        dp.upsert_ipcache(&ipc(&format!("{ip}/32"), id, None)).unwrap();
    }
    dp.upsert_ipcache(&ipc(&format!("{NODE}/32"), identity::HOST, None)).unwrap();
    Some(f)
}

/// The endpoint under test, on the loopback device BPF_PROG_TEST_RUN delivers to.
fn pod_on_lo(isolated_ingress: bool, isolated_egress: bool) -> EndpointSpec {
    EndpointSpec {
        interface: "lo".into(),
        id: EP,
        ip: POD,
        identity: POD_ID,
        isolated_ingress,
        isolated_egress,
        audit: false,
    }
}

fn ipc(cidr: &str, identity: u32, cidr_identity: Option<u32>) -> IpcacheSpec {
    IpcacheSpec { cidr: cidr.parse::<Ipv4Net>().unwrap(), identity, cidr_identity }
}

fn allow(
    dir: Direction,
    peer: u32,
    protocol: Protocol,
    port: Option<u16>,
    end_port: Option<u16>,
) -> PolicyEntry {
    PolicyEntry { endpoint: EP, direction: dir, peer, protocol, port, end_port }
}

impl Fixture {
    fn dp(&mut self) -> &mut Datapath {
        &mut self.0
    }

    /// Runs the packet; asserts the action and that only `expect`'s counter moved.
    /// Returns the events it produced.
    fn check(&mut self, hook: Hook, pkt: &[u8], expect: u8) -> Vec<Event> {
        let dp = self.dp();
        let before = dp.counters().unwrap();
        let (ret, _) = dp.test_run(hook, pkt, 1).unwrap();
        let after = dp.counters().unwrap();
        let moved: Vec<&str> = (0..reason::COUNT)
            .filter(|&r| after.0[r] != before.0[r])
            .map(|r| reason::name(r as u8))
            .collect();
        assert_eq!(moved, vec![reason::name(expect)], "{hook:?}: wrong reason");
        let want = if reason::is_drop(expect) { 2 } else { 0 };
        assert_eq!(ret, want, "{hook:?}: TC action for {}", reason::name(expect));
        assert_eq!(after.events_lost(), 0);
        dp.drain_events()
    }

    fn inbound(&mut self, pkt: &Ip, expect: u8) -> Vec<Event> {
        self.check(Hook::ToPod, &pkt.frame(), expect)
    }

    fn outbound(&mut self, pkt: &Ip, expect: u8) -> Vec<Event> {
        self.check(Hook::FromPod, &pkt.frame(), expect)
    }
}

fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Ip {
    Ip::tcp(src, sport, dst, dport, SYN)
}

fn ack(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Ip {
    Ip::tcp(src, sport, dst, dport, ACK)
}

#[test]
fn not_isolated_passes_everything_and_reports_new_flows() {
    let Some(mut f) = fixture("open", false, false) else { return };
    let ev = f.inbound(&syn(PEER, 40000, POD, 80), reason::ALLOW_NOT_ISOLATED);
    assert_eq!(ev.len(), 1, "a new flow is reported");
    f.inbound(&ack(PEER, 40000, POD, 80), reason::ALLOW_ESTABLISHED);
    f.outbound(&ack(POD, 80, PEER, 40000), reason::ALLOW_REPLY);
    let ev = f.outbound(&Ip::udp(POD, 5000, Ipv4Addr::new(8, 8, 8, 8), 53), reason::ALLOW_NOT_ISOLATED);
    assert_eq!(ev[0].peer, identity::WORLD);
}

#[test]
fn isolated_ingress_passes_only_allowed_flows_and_names_the_rule() {
    let Some(mut f) = fixture("ingress", true, false) else { return };
    let ev = f.inbound(&syn(PEER, 40000, POD, 80), reason::DROP_POLICY);
    assert_eq!(ev.len(), 1);
    let e = ev[0];
    assert_eq!(
        (e.verdict, e.reason, e.dir, e.peer, e.ep_id),
        (VERDICT_DROP, reason::DROP_POLICY, 0, PEER_ID, EP)
    );
    assert_eq!((e.saddr, e.daddr), (u32::from_ne_bytes(PEER.octets()), u32::from_ne_bytes(POD.octets())));
    assert_eq!((u16::from_be(e.sport), u16::from_be(e.dport), e.proto), (40000, 80, IPPROTO_TCP));

    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(80), None), 42).unwrap();
    let ev = f.inbound(&syn(PEER, 40001, POD, 80), reason::ALLOW_POLICY);
    assert_eq!((ev[0].verdict, ev[0].rule_id, ev[0].peer), (VERDICT_ALLOW, 42, PEER_ID));
    assert!(
        f.inbound(&ack(PEER, 40001, POD, 80), reason::ALLOW_ESTABLISHED).is_empty(),
        "established: no event"
    );
    f.outbound(&ack(POD, 80, PEER, 40001), reason::ALLOW_REPLY);
    f.inbound(&syn(PEER, 40002, POD, 81), reason::DROP_POLICY);
    f.inbound(&syn(OTHER, 40003, POD, 80), reason::DROP_POLICY);
    f.inbound(&Ip::udp(PEER, 40004, POD, 80), reason::DROP_POLICY);
    // Egress is not isolated.
    f.outbound(&syn(POD, 40005, OTHER, 443), reason::ALLOW_NOT_ISOLATED);
}

#[test]
fn wildcards_any_peer_any_port_any_protocol() {
    let Some(mut f) = fixture("wild", true, false) else { return };
    // Any peer, TCP 80.
    f.dp().add_policy(&allow(Direction::Ingress, identity::ANY, Protocol::Tcp, Some(80), None), 1).unwrap();
    f.inbound(&syn(OTHER, 1000, POD, 80), reason::ALLOW_POLICY);
    f.inbound(&syn(Ipv4Addr::new(1, 2, 3, 4), 1000, POD, 80), reason::ALLOW_POLICY);
    f.inbound(&syn(OTHER, 1001, POD, 81), reason::DROP_POLICY);
    // PEER, every UDP port (but not TCP, not ICMP).
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Udp, None, None), 2).unwrap();
    f.inbound(&Ip::udp(PEER, 1000, POD, 9999), reason::ALLOW_POLICY);
    f.inbound(&syn(PEER, 1002, POD, 9999), reason::DROP_POLICY);
    let echo = Ip::new(PEER, POD, L4::Icmp { kind: 8, code: 0, id: 77, quoted: vec![] });
    f.inbound(&echo, reason::DROP_POLICY);
    // OTHER, any protocol: TCP, UDP, SCTP, ICMP, GRE.
    f.dp().add_policy(&allow(Direction::Ingress, OTHER_ID, Protocol::Any, None, None), 3).unwrap();
    f.inbound(&syn(OTHER, 1003, POD, 22), reason::ALLOW_POLICY);
    f.inbound(&Ip::new(OTHER, POD, L4::Sctp { sport: 5, dport: 6 }), reason::ALLOW_POLICY);
    f.inbound(
        &Ip::new(OTHER, POD, L4::Icmp { kind: 8, code: 0, id: 78, quoted: vec![] }),
        reason::ALLOW_POLICY,
    );
    f.inbound(&Ip::new(OTHER, POD, L4::Other(47)), reason::ALLOW_POLICY);
    f.inbound(&Ip::new(PEER, POD, L4::Other(47)), reason::DROP_POLICY);
}

#[test]
fn port_ranges_match_exactly_their_ports() {
    let Some(mut f) = fixture("range", true, false) else { return };
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(8000), Some(8010)), 5).unwrap();
    f.dp()
        .add_policy(&allow(Direction::Ingress, identity::ANY, Protocol::Sctp, Some(30000), Some(32767)), 6)
        .unwrap();
    for (port, expect) in [
        (7999, reason::DROP_POLICY),
        (8000, reason::ALLOW_POLICY),
        (8007, reason::ALLOW_POLICY),
        (8008, reason::ALLOW_POLICY),
        (8010, reason::ALLOW_POLICY),
        (8011, reason::DROP_POLICY),
    ] {
        let ev = f.inbound(&syn(PEER, 2000 + port % 100, POD, port), expect);
        if expect == reason::ALLOW_POLICY {
            assert_eq!(ev[0].rule_id, 5);
        }
    }
    f.inbound(&Ip::udp(PEER, 2000, POD, 8005), reason::DROP_POLICY);
    f.inbound(&syn(OTHER, 2000, POD, 8005), reason::DROP_POLICY);
    f.inbound(&Ip::new(OTHER, POD, L4::Sctp { sport: 1, dport: 31000 }), reason::ALLOW_POLICY);
    f.inbound(&Ip::new(OTHER, POD, L4::Sctp { sport: 1, dport: 32768 }), reason::DROP_POLICY);
}

#[test]
fn replies_of_allowed_flows_pass_both_ways() {
    let Some(mut f) = fixture("reply", true, true) else { return };
    f.dp().add_policy(&allow(Direction::Egress, PEER_ID, Protocol::Udp, Some(53), None), 1).unwrap();
    f.dp().add_policy(&allow(Direction::Egress, PEER_ID, Protocol::Any, None, None), 2).unwrap();
    f.outbound(&Ip::udp(POD, 5353, PEER, 53), reason::ALLOW_POLICY);
    f.inbound(&Ip::udp(PEER, 53, POD, 5353), reason::ALLOW_REPLY);
    // Same peer, other port of the pod: not a reply.
    f.inbound(&Ip::udp(PEER, 53, POD, 5354), reason::DROP_POLICY);
    // TCP handshake out and back.
    f.outbound(&syn(POD, 41000, PEER, 443), reason::ALLOW_POLICY);
    f.inbound(&Ip::tcp(PEER, 443, POD, 41000, SYN | ACK), reason::ALLOW_REPLY);
    f.outbound(&ack(POD, 41000, PEER, 443), reason::ALLOW_ESTABLISHED);
    // ICMP echo: the reply matches its request's identifier only.
    f.outbound(
        &Ip::new(POD, PEER, L4::Icmp { kind: 8, code: 0, id: 9, quoted: vec![] }),
        reason::ALLOW_POLICY,
    );
    f.inbound(&Ip::new(PEER, POD, L4::Icmp { kind: 0, code: 0, id: 9, quoted: vec![] }), reason::ALLOW_REPLY);
    f.inbound(
        &Ip::new(PEER, POD, L4::Icmp { kind: 0, code: 0, id: 10, quoted: vec![] }),
        reason::DROP_POLICY,
    );
    // Egress to a peer with no entry.
    f.outbound(&syn(POD, 41001, OTHER, 443), reason::DROP_POLICY);
}

fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, code: u8, quoted: &Ip) -> Ip {
    Ip::new(src, dst, L4::Icmp { kind, code, id: 0, quoted: quoted.ip_bytes()[..28].to_vec() })
}

#[test]
fn icmp_errors_pass_only_for_tracked_flows() {
    let Some(mut f) = fixture("icmp", true, true) else { return };
    f.dp().add_policy(&allow(Direction::Egress, PEER_ID, Protocol::Udp, Some(53), None), 1).unwrap();
    let out = Ip::udp(POD, 5353, PEER, 53);
    f.outbound(&out, reason::ALLOW_POLICY);
    // Port unreachable from the peer, and "fragmentation needed" from a router on the way.
    f.inbound(&icmp_error(PEER, POD, 3, 3, &out), reason::ALLOW_RELATED);
    let router = Ipv4Addr::new(10, 9, 9, 9);
    f.inbound(&icmp_error(router, POD, 3, 4, &out), reason::ALLOW_RELATED);
    f.inbound(&icmp_error(router, POD, 11, 0, &out), reason::ALLOW_RELATED);
    // An error about a flow that never existed is an ordinary (denied) packet.
    let stray = Ip::udp(POD, 6000, OTHER, 53);
    f.inbound(&icmp_error(OTHER, POD, 3, 3, &stray), reason::DROP_POLICY);
    // A quoted packet cut short is malformed.
    let short =
        Ip::new(PEER, POD, L4::Icmp { kind: 3, code: 3, id: 0, quoted: out.ip_bytes()[..22].to_vec() });
    let mut frame = short.frame();
    frame.truncate(14 + 20 + 8 + 22);
    f.check(Hook::ToPod, &frame, reason::DROP_MALFORMED);
}

#[test]
fn icmp_errors_must_come_from_where_the_kernel_would_send_them() {
    let Some(mut f) = fixture("icmpsrc", true, true) else { return };
    f.dp().add_policy(&allow(Direction::Egress, PEER_ID, Protocol::Udp, Some(53), None), 1).unwrap();
    f.dp().add_policy(&allow(Direction::Ingress, OTHER_ID, Protocol::Udp, Some(5000), None), 2).unwrap();
    let out = Ip::udp(POD, 5353, PEER, 53);
    f.outbound(&out, reason::ALLOW_POLICY);
    let inb = Ip::udp(OTHER, 7000, POD, 5000);
    f.inbound(&inb, reason::ALLOW_POLICY);
    // Towards the pod: another pod posing as a router on the pod's flow, a code no end host
    // sends, an error sent to someone other than the quoted sender, an oversized error.
    f.inbound(&icmp_error(OTHER, POD, 3, 4, &out), reason::DROP_POLICY);
    f.inbound(&icmp_error(PEER, POD, 3, 4, &out), reason::DROP_POLICY);
    f.inbound(&icmp_error(PEER, POD, 5, 0, &out), reason::DROP_POLICY);
    let mut big = icmp_error(PEER, POD, 3, 3, &out);
    big.payload = 1000;
    f.inbound(&big, reason::DROP_POLICY);
    let mut sized = icmp_error(PEER, POD, 3, 3, &out);
    sized.payload = 576 - 20 - 8 - 28;
    f.inbound(&sized, reason::ALLOW_RELATED);
    // From the pod (egress isolated, nothing allowed to PEER but UDP 53): an error about
    // OTHER's flow goes to OTHER only, from the pod as the quoted destination.
    f.outbound(&icmp_error(POD, PEER, 3, 3, &inb), reason::DROP_POLICY);
    let mut exfil = icmp_error(POD, OTHER, 3, 3, &inb);
    exfil.payload = 1000;
    f.outbound(&exfil, reason::DROP_POLICY);
    f.outbound(&icmp_error(POD, OTHER, 3, 4, &inb), reason::DROP_POLICY);
    f.outbound(&icmp_error(POD, OTHER, 3, 3, &inb), reason::ALLOW_RELATED);
}

#[test]
fn ipcache_longest_prefix_wins_and_except_is_honoured() {
    let Some(mut f) = fixture("lpm", true, false) else { return };
    // ipBlock 192.168.0.0/16 except 192.168.1.0/24 compiles to the /16's identity only.
    f.dp().upsert_ipcache(&ipc("192.168.0.0/16", CIDR_16, None)).unwrap();
    f.dp().upsert_ipcache(&ipc("192.168.1.0/24", CIDR_24, None)).unwrap();
    f.dp().add_policy(&allow(Direction::Ingress, CIDR_16, Protocol::Tcp, Some(80), None), 9).unwrap();
    let ev = f.inbound(&syn(Ipv4Addr::new(192, 168, 2, 5), 1, POD, 80), reason::ALLOW_POLICY);
    assert_eq!((ev[0].peer, ev[0].rule_id), (CIDR_16, 9));
    let ev = f.inbound(&syn(Ipv4Addr::new(192, 168, 1, 5), 1, POD, 80), reason::DROP_POLICY);
    assert_eq!(ev[0].peer, CIDR_24, "the longer prefix wins");
    let ev = f.inbound(&syn(Ipv4Addr::new(172, 16, 0, 1), 1, POD, 80), reason::DROP_POLICY);
    assert_eq!(ev[0].peer, identity::WORLD);
    f.dp()
        .add_policy(&allow(Direction::Ingress, identity::WORLD, Protocol::Tcp, Some(80), None), 10)
        .unwrap();
    f.inbound(&syn(Ipv4Addr::new(172, 16, 0, 1), 2, POD, 80), reason::ALLOW_POLICY);
}

#[test]
fn a_cidr_identity_covers_pod_ips() {
    let Some(mut f) = fixture("cidrpod", true, false) else { return };
    // PEER is a pod inside an ipBlock; OTHER is a pod outside it.
    f.dp().upsert_ipcache(&ipc(&format!("{PEER}/32"), PEER_ID, Some(CIDR_16))).unwrap();
    f.dp().upsert_ipcache(&ipc("10.1.0.0/30", CIDR_16, None)).unwrap();
    f.dp().add_policy(&allow(Direction::Ingress, CIDR_16, Protocol::Tcp, Some(80), None), 4).unwrap();
    let ev = f.inbound(&syn(PEER, 1, POD, 80), reason::ALLOW_POLICY);
    assert_eq!((ev[0].peer, ev[0].rule_id), (PEER_ID, 4));
    f.inbound(&syn(OTHER, 1, POD, 80), reason::DROP_POLICY);
}

#[test]
fn withdrawn_rules_cut_established_flows() {
    let Some(mut f) = fixture("revoke", true, true) else { return };
    let rule = allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(80), None);
    f.dp().add_policy(&rule, 1).unwrap();
    f.inbound(&syn(PEER, 3000, POD, 80), reason::ALLOW_POLICY);
    f.inbound(&ack(PEER, 3000, POD, 80), reason::ALLOW_ESTABLISHED);
    f.dp().remove_policy(&rule).unwrap();
    let ev = f.inbound(&ack(PEER, 3000, POD, 80), reason::DROP_POLICY_REVOKED);
    assert_eq!(ev[0].peer, PEER_ID);
    // The revoked flow stays known: neither side's segments get it adopted again.
    f.inbound(&ack(PEER, 3000, POD, 80), reason::DROP_POLICY_REVOKED);
    f.outbound(&ack(POD, 80, PEER, 3000), reason::DROP_POLICY_REVOKED);
    // Allowed again, the same flow resumes.
    f.dp().add_policy(&rule, 1).unwrap();
    f.inbound(&ack(PEER, 3000, POD, 80), reason::ALLOW_ESTABLISHED);
    f.dp().remove_policy(&rule).unwrap();
    f.inbound(&ack(PEER, 3000, POD, 80), reason::DROP_POLICY_REVOKED);

    // A reply whose egress rule went away stops too.
    let out = allow(Direction::Egress, PEER_ID, Protocol::Tcp, Some(443), None);
    f.dp().add_policy(&out, 2).unwrap();
    f.outbound(&syn(POD, 3001, PEER, 443), reason::ALLOW_POLICY);
    f.inbound(&ack(PEER, 443, POD, 3001), reason::ALLOW_REPLY);
    f.dp().remove_policy(&out).unwrap();
    f.inbound(&ack(PEER, 443, POD, 3001), reason::DROP_POLICY_REVOKED);

    // A flow still allowed by another entry survives the re-check.
    let a = allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(90), None);
    let b = allow(Direction::Ingress, identity::ANY, Protocol::Tcp, None, None);
    f.dp().add_policy(&a, 3).unwrap();
    f.dp().add_policy(&b, 4).unwrap();
    f.inbound(&syn(PEER, 3002, POD, 90), reason::ALLOW_POLICY);
    f.dp().remove_policy(&a).unwrap();
    f.inbound(&ack(PEER, 3002, POD, 90), reason::ALLOW_ESTABLISHED);

    // The peer's identity changes (a relabel): its flows are re-checked under the new one.
    f.dp().remove_policy(&b).unwrap();
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(90), None), 5).unwrap();
    f.inbound(&syn(PEER, 3003, POD, 90), reason::ALLOW_POLICY);
    f.dp().upsert_ipcache(&ipc(&format!("{PEER}/32"), OTHER_ID, None)).unwrap();
    f.inbound(&ack(PEER, 3003, POD, 90), reason::DROP_POLICY_REVOKED);
}

#[test]
fn new_isolation_re_checks_established_flows() {
    let Some(mut f) = fixture("isolate", false, false) else { return };
    f.inbound(&syn(PEER, 3100, POD, 80), reason::ALLOW_NOT_ISOLATED);
    f.inbound(&syn(OTHER, 3101, POD, 80), reason::ALLOW_NOT_ISOLATED);
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(80), None), 1).unwrap();
    f.dp().upsert_endpoint(&pod_on_lo(true, false)).unwrap();
    f.inbound(&ack(PEER, 3100, POD, 80), reason::ALLOW_ESTABLISHED);
    f.inbound(&ack(OTHER, 3101, POD, 80), reason::DROP_POLICY_REVOKED);
}

#[test]
fn spoofed_sources_are_dropped_even_when_not_isolated() {
    let Some(mut f) = fixture("spoof", false, false) else { return };
    f.outbound(&syn(POD, 1, PEER, 80), reason::ALLOW_NOT_ISOLATED);
    for fake in [OTHER, Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::new(8, 8, 8, 8)] {
        let ev = f.outbound(&syn(fake, 1, PEER, 80), reason::DROP_SPOOFED);
        assert_eq!(ev[0].reason, reason::DROP_SPOOFED);
    }
    // Delivered to the pod, any source is fine (no spoofing check on that side).
    f.inbound(&syn(OTHER, 1, POD, 80), reason::ALLOW_NOT_ISOLATED);
}

#[test]
fn non_ipv4_arp_ipv6_vlan_and_other_ethertypes() {
    let Some(mut f) = fixture("l2", false, false) else { return };
    for isolated in [false, true] {
        f.dp().upsert_endpoint(&pod_on_lo(isolated, isolated)).unwrap();
        f.check(Hook::ToPod, &arp(PEER, POD), reason::ALLOW_ARP);
        f.check(Hook::FromPod, &arp(POD, PEER), reason::ALLOW_ARP);
        // ARP from the pod about another address, or not IPv4 over Ethernet.
        f.check(Hook::FromPod, &arp(OTHER, PEER), reason::DROP_ARP_SPOOFED);
        let mut odd = arp(POD, PEER);
        odd[14 + 2..14 + 4].copy_from_slice(&0x86ddu16.to_be_bytes());
        f.check(Hook::FromPod, &odd, reason::DROP_ARP_SPOOFED);
        f.check(Hook::FromPod, &arp(POD, PEER)[..14 + 10], reason::DROP_MALFORMED);
        // IPv6 is not enforced: dropped both ways, whatever the isolation.
        f.check(Hook::FromPod, &ipv6_udp(), reason::DROP_IPV6);
        f.check(Hook::ToPod, &ipv6_udp(), reason::DROP_IPV6);
        for hook in [Hook::FromPod, Hook::ToPod] {
            f.check(hook, &ether(0x88cc, &[0; 46]), reason::DROP_UNSUPPORTED_L3);
            // A spoofed IPv4 packet behind one or two tags (802.1Q, 802.1ad, old QinQ).
            let inner = syn(OTHER, 1, PEER, 80).ip_bytes();
            for outer in [0x8100u16, 0x88a8, 0x9100] {
                let mut tagged = vec![0, 0];
                tagged.extend_from_slice(&0x8100u16.to_be_bytes());
                tagged.extend_from_slice(&[0, 0]);
                tagged.extend_from_slice(&0x0800u16.to_be_bytes());
                tagged.extend_from_slice(&inner);
                f.check(hook, &ether(outer, &tagged), reason::DROP_VLAN);
                f.check(hook, &ether(outer, &tagged[4..]), reason::DROP_VLAN);
            }
        }
    }
}

#[test]
fn malformed_packets_are_dropped_whatever_the_isolation() {
    let Some(mut f) = fixture("malformed", false, false) else { return };
    for (hook, src, dst) in [(Hook::ToPod, PEER, POD), (Hook::FromPod, POD, PEER)] {
        let good = syn(src, 1, dst, 80).frame();
        // A cut IPv4 header is refused by BPF_PROG_TEST_RUN itself (EINVAL); the enforcement
        // suite sends one from a pod through a packet socket instead.
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("TCP header cut", good[..14 + 20 + 10].to_vec()),
            ("UDP header cut", Ip::udp(src, 1, dst, 53).frame()[..14 + 20 + 6].to_vec()),
            (
                "ICMP header cut",
                Ip::new(src, dst, L4::Icmp { kind: 8, code: 0, id: 1, quoted: vec![] }).frame()
                    [..14 + 20 + 4]
                    .to_vec(),
            ),
            (
                "SCTP header cut",
                Ip::new(src, dst, L4::Sctp { sport: 1, dport: 2 }).frame()[..14 + 20 + 10].to_vec(),
            ),
        ];
        let mut bad_version = good.clone();
        bad_version[14] = 0x65;
        cases.push(("version 6 in an IPv4 frame", bad_version));
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44;
        cases.push(("IHL below 5", bad_ihl));
        let mut long = good.clone();
        long[16..18].copy_from_slice(&1500u16.to_be_bytes());
        cases.push(("total length beyond the frame", long));
        let mut short_total = good.clone();
        short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
        cases.push(("total length below the header", short_total));
        let mut doff = good.clone();
        doff[14 + 20 + 12] = 4 << 4;
        cases.push(("TCP data offset below 5", doff));
        for (what, frame) in &cases {
            eprintln!("{what} ({hook:?})");
            f.check(hook, frame, reason::DROP_MALFORMED);
        }
    }
}

#[test]
fn ip_options_are_refused_for_isolated_pods_only() {
    let Some(mut f) = fixture("ipopt", false, true) else { return };
    let mut p = syn(PEER, 1, POD, 80);
    p.options = vec![0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL
    f.inbound(&p, reason::ALLOW_NOT_ISOLATED);
    f.dp().add_policy(&allow(Direction::Egress, identity::ANY, Protocol::Any, None, None), 1).unwrap();
    let mut q = syn(POD, 1, PEER, 80);
    q.options = vec![0x01, 0x01, 0x01, 0x00];
    f.outbound(&q, reason::DROP_IP_OPTIONS);
    q.options.clear();
    f.outbound(&q, reason::ALLOW_POLICY);
}

#[test]
fn fragments_follow_their_first_fragment() {
    let Some(mut f) = fixture("frag", true, false) else { return };
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Udp, Some(53), None), 1).unwrap();
    let mut first = Ip::udp(PEER, 999, POD, 53);
    first.id = 0x1234;
    first.frag = MF;
    first.payload = 1472;
    let mut later = first.clone();
    later.frag = 185; // offset 1480 bytes, last fragment
    f.inbound(&first, reason::ALLOW_POLICY);
    f.inbound(&later, reason::ALLOW_FRAGMENT);
    // The next datagram of the same (now established) flow fragments too.
    first.id = 0x1235;
    later.id = 0x1235;
    f.inbound(&first, reason::ALLOW_ESTABLISHED);
    f.inbound(&later, reason::ALLOW_FRAGMENT);
    // The same datagram id seen by the pod in the other direction vouches for nothing here.
    let mut back = Ip::udp(PEER, 999, POD, 53);
    back.id = 0x7777;
    back.frag = MF;
    f.outbound(&Ip { id: 0x7777, frag: MF, ..Ip::udp(POD, 53, PEER, 999) }, reason::ALLOW_REPLY);
    back.frag = 185;
    f.inbound(&back, reason::DROP_FRAGMENT);
    // A later fragment whose first fragment was never seen (or was denied).
    later.id = 0x9999;
    f.inbound(&later, reason::DROP_FRAGMENT);
    let mut denied = Ip::udp(PEER, 999, POD, 54);
    denied.id = 0x2000;
    denied.frag = MF;
    f.inbound(&denied, reason::DROP_POLICY);
    denied.frag = 185;
    f.inbound(&denied, reason::DROP_FRAGMENT);
    // ICMP echo replies fragment too (a large ping): the later fragments follow the first.
    f.outbound(
        &Ip::new(POD, PEER, L4::Icmp { kind: 8, code: 0, id: 44, quoted: vec![] }),
        reason::ALLOW_NOT_ISOLATED,
    );
    let mut reply = Ip::new(PEER, POD, L4::Icmp { kind: 0, code: 0, id: 44, quoted: vec![] });
    reply.id = 0x4000;
    reply.frag = MF;
    reply.payload = 1472;
    f.inbound(&reply, reason::ALLOW_REPLY);
    reply.frag = 185;
    f.inbound(&reply, reason::ALLOW_FRAGMENT);
}

#[test]
fn unknown_later_fragments_pass_only_where_not_isolated() {
    let Some(mut f) = fixture("fragopen", true, false) else { return };
    let mut out = Ip::udp(POD, 999, PEER, 53);
    out.id = 0x3000;
    out.frag = 185;
    f.outbound(&out, reason::ALLOW_NOT_ISOLATED);
    let mut inb = Ip::udp(PEER, 53, POD, 999);
    inb.id = 0x3001;
    inb.frag = 185;
    f.inbound(&inb, reason::DROP_FRAGMENT);
}

#[test]
fn the_host_may_always_reach_its_pods() {
    let Some(mut f) = fixture("host", true, true) else { return };
    let ev = f.inbound(&syn(NODE, 1, POD, 8080), reason::ALLOW_HOST);
    assert_eq!(ev[0].peer, identity::HOST);
    f.outbound(&Ip::tcp(POD, 8080, NODE, 1, SYN | ACK), reason::ALLOW_REPLY);
    // But the pod's own egress to the host is policy like any other.
    f.outbound(&syn(POD, 2, NODE, 22), reason::DROP_POLICY);
    // A policy change re-checks established flows: the host's still pass, both ways.
    let rule = allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(80), None);
    f.dp().add_policy(&rule, 1).unwrap();
    f.dp().remove_policy(&rule).unwrap();
    f.inbound(&ack(NODE, 1, POD, 8080), reason::ALLOW_ESTABLISHED);
    f.dp().remove_policy(&rule).unwrap();
    f.outbound(&ack(POD, 8080, NODE, 1), reason::ALLOW_REPLY);
}

#[test]
fn an_interface_without_endpoint_fails_closed() {
    let Some(mut f) = fixture("noep", false, false) else { return };
    let lo = ifindex("lo").unwrap();
    f.dp().remove_endpoint(lo).unwrap();
    let ev = f.inbound(&syn(PEER, 1, POD, 80), reason::DROP_NO_ENDPOINT);
    assert_eq!(ev[0].reason, reason::DROP_NO_ENDPOINT);
}

#[test]
fn fin_and_rst_mark_flows_closing() {
    let Some(mut f) = fixture("fin", false, false) else { return };
    f.inbound(&syn(PEER, 4000, POD, 80), reason::ALLOW_NOT_ISOLATED);
    let open = f.dp().conntrack().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].1.flags & CT_CLOSING, 0);
    f.inbound(&Ip::tcp(PEER, 4000, POD, 80, FIN | ACK), reason::ALLOW_ESTABLISHED);
    assert_eq!(f.dp().conntrack().unwrap()[0].1.flags & CT_CLOSING, CT_CLOSING);
}

#[test]
fn removing_an_endpoint_removes_its_entries_and_flows() {
    let Some(mut f) = fixture("rmep", true, false) else { return };
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(80), Some(90)), 1).unwrap();
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(100), None), 1).unwrap();
    f.inbound(&syn(PEER, 1, POD, 80), reason::ALLOW_POLICY);
    assert!(!f.dp().policy_keys().unwrap().is_empty());
    let lo = ifindex("lo").unwrap();
    f.dp().remove_endpoint(lo).unwrap();
    assert!(f.dp().policy_keys().unwrap().is_empty());
    assert!(f.dp().conntrack().unwrap().is_empty());
    assert!(f.dp().endpoints().unwrap().is_empty());
}

#[test]
fn reopening_keeps_every_map() {
    let Some(mut f) = fixture("reopen", true, false) else { return };
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(80), Some(85)), 1).unwrap();
    f.inbound(&syn(PEER, 1, POD, 80), reason::ALLOW_POLICY);
    let before = f.dp().realized().unwrap();
    let counters = f.dp().counters().unwrap();
    f.0.reopen();
    assert_eq!(f.dp().realized().unwrap(), before);
    assert_eq!(f.dp().counters().unwrap(), counters);
    f.inbound(&ack(PEER, 1, POD, 80), reason::ALLOW_ESTABLISHED);
}

#[test]
fn a_pinned_map_of_another_layout_is_refused() {
    if need_root() {
        return;
    }
    let cfg = config("layout");
    let _cleanup = netpol_tests::RemoveOnDrop(vec![cfg.root()]);
    let _ = std::fs::remove_dir_all(cfg.root());
    mount_bpffs(&cfg.bpffs).unwrap();
    std::fs::create_dir_all(cfg.pin_dir()).unwrap();
    // Pin a map named like ours with another value size where ours would go.
    let wrong = aya::maps::HashMap::<_, u32, u64>::create(16, 0).expect("create map");
    wrong.pin(cfg.pin_dir().join("ENDPOINTS")).unwrap();
    let r = Datapath::open(cfg.clone());
    let _ = std::fs::remove_dir_all(cfg.root());
    match r {
        Err(DatapathError::Layout { found, .. }) => assert_eq!(found, (4, 8, 16)),
        Err(e) => panic!("expected a layout error, got {e}"),
        Ok(_) => panic!("a mismatched pin was reused"),
    }
}

#[test]
fn mid_stream_segments_are_adopted_where_their_direction_allows_them() {
    let Some(mut f) = fixture("midstream", true, false) else { return };
    // An evicted (or pre-agent) flow of the pod's own: its next segment out re-creates the
    // entry (egress is not isolated), so the peer's answer is a reply again.
    f.outbound(&ack(POD, 41000, PEER, 80), reason::ALLOW_NOT_ISOLATED);
    f.inbound(&ack(PEER, 80, POD, 41000), reason::ALLOW_REPLY);
    // The peer speaking first into a flow the pod's ingress does not allow stays dropped.
    f.inbound(&ack(PEER, 5000, POD, 80), reason::DROP_POLICY);
    // Where policy allows it, the peer's mid-stream segment is adopted too.
    f.dp().add_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(80), None), 3).unwrap();
    f.inbound(&ack(PEER, 5000, POD, 80), reason::ALLOW_POLICY);
    f.inbound(&ack(PEER, 5000, POD, 80), reason::ALLOW_ESTABLISHED);
    f.outbound(&ack(POD, 80, PEER, 5000), reason::ALLOW_REPLY);
    // Revoked, the flow is not re-adopted by the pod's own (unisolated) segments.
    f.dp().remove_policy(&allow(Direction::Ingress, PEER_ID, Protocol::Tcp, Some(80), None)).unwrap();
    f.outbound(&ack(POD, 80, PEER, 5000), reason::DROP_POLICY_REVOKED);
    f.inbound(&ack(PEER, 5000, POD, 80), reason::DROP_POLICY_REVOKED);
}

#[test]
fn icmp_routing_messages_from_a_pod_are_refused() {
    let Some(mut f) = fixture("icmprt", false, false) else { return };
    for kind in [5u8, 9] {
        let msg = Ip::new(
            POD,
            PEER,
            L4::Icmp { kind, code: 0, id: 0, quoted: syn(PEER, 1, POD, 2).ip_bytes()[..28].to_vec() },
        );
        f.outbound(&msg, reason::DROP_ICMP_ROUTING);
    }
    // To the pod (the node may send redirects) they are ordinary packets.
    let redirect = Ip::new(NODE, POD, L4::Icmp { kind: 5, code: 1, id: 0, quoted: vec![0; 28] });
    f.inbound(&redirect, reason::ALLOW_NOT_ISOLATED);
}

#[test]
fn a_local_pods_address_is_accepted_only_from_its_own_interface() {
    let Some(mut f) = fixture("localsrc", true, false) else { return };
    f.dp().add_policy(&allow(Direction::Ingress, identity::ANY, Protocol::Any, None, None), 1).unwrap();
    // TEST_RUN packets do not come from the pod's interface (lo): the pod's own address as
    // a source is forged.
    f.inbound(&Ip::udp(POD, 1, POD, 53), reason::DROP_SPOOFED_LOCAL);
    f.inbound(&Ip::udp(PEER, 1, POD, 53), reason::ALLOW_POLICY);
    let lo = ifindex("lo").unwrap();
    assert_eq!(f.dp().endpoint_ips().unwrap(), vec![(POD, lo)]);
    f.dp().remove_endpoint(lo).unwrap();
    assert!(f.dp().endpoint_ips().unwrap().is_empty());
}

#[test]
fn local_addresses_sharing_a_slot_are_still_told_apart() {
    if need_root() {
        return;
    }
    // Its own namespace, so the second endpoint can have an interface (a veth) of its own.
    let ns = NetNs::new("dpslot");
    ns.ip(&["link", "add", "slotdummy", "type", "veth", "peer", "name", "slotpeer"]);
    let _inside = ns.enter();
    let Some(mut f) = fixture("slot", true, false) else { return };
    f.dp().add_policy(&allow(Direction::Ingress, identity::ANY, Protocol::Any, None, None), 1).unwrap();
    // 10.2.0.2 and 10.3.0.2 fall in POD's (10.1.0.2) direct-mapped slot.
    let (twin, stranger) = (Ipv4Addr::new(10, 2, 0, 2), Ipv4Addr::new(10, 3, 0, 2));
    let spec = EndpointSpec {
        interface: "slotdummy".into(),
        id: 8,
        ip: twin,
        identity: 400,
        ..pod_on_lo(false, false)
    };
    f.dp().upsert_endpoint(&spec).unwrap();
    for local in [POD, twin] {
        f.inbound(&Ip::udp(local, 1, POD, 53), reason::DROP_SPOOFED_LOCAL);
    }
    f.inbound(&Ip::udp(stranger, 1, POD, 53), reason::ALLOW_POLICY);
    f.dp().remove_endpoint(ifindex("slotdummy").unwrap()).unwrap();
    f.inbound(&Ip::udp(twin, 2, POD, 53), reason::ALLOW_POLICY);
    f.inbound(&Ip::udp(POD, 2, POD, 53), reason::DROP_SPOOFED_LOCAL);
}

/// A sync whose entries do not all fit still writes the isolation, and says how many
/// entries are missing: a full map can cost an allow, never an isolation.
#[test]
fn a_full_policy_map_costs_an_allow_never_the_isolation() {
    use netpol_agent::datapath::PolicyMapKey;
    use netpol_common::{PolicyKey, PolicyValue};
    let Some(mut f) = fixture("full", false, false) else { return };
    let mut desired = f.dp().realized().unwrap();
    // Someone else's keys fill the map to the last slot.
    let junk =
        |i: u32| PolicyMapKey::Exact(PolicyKey { ep_id: 99, peer: i, port: 1, proto: IPPROTO_TCP, dir: 0 });
    for i in 0..netpol_common::sizes::POLICY {
        desired.policy.insert(junk(i), PolicyValue { rule_id: 1, flags: 0 });
    }
    f.dp().sync(&desired).unwrap();
    // Now one more allow, and the isolation it comes with.
    let ifindex = *desired.endpoints.keys().next().unwrap();
    desired.endpoints.get_mut(&ifindex).unwrap().flags = netpol_common::EP_ISOLATED_INGRESS;
    let allow = PolicyEntry {
        endpoint: EP,
        direction: Direction::Ingress,
        peer: PEER_ID,
        protocol: Protocol::Tcp,
        port: Some(80),
        end_port: None,
    };
    for k in allow.map_keys().unwrap() {
        desired.policy.insert(k, PolicyValue { rule_id: 2, flags: 0 });
    }
    let err = f.dp().sync(&desired).unwrap_err();
    assert!(matches!(err, DatapathError::Incomplete { missing: 1, tried: 1, .. }), "{err}");
    let flags = f.dp().endpoints().unwrap().into_iter().find(|(i, _)| *i == ifindex).unwrap().1.flags;
    assert_eq!(flags, netpol_common::EP_ISOLATED_INGRESS, "the isolation waited for the entries");
    // Freeing room lets the next sync complete.
    desired.policy.remove(&junk(0));
    f.dp().sync(&desired).unwrap();
    assert!(f
        .dp()
        .policy_keys()
        .unwrap()
        .iter()
        .any(|(k, v)| matches!(k, PolicyMapKey::Exact(k) if k.peer == PEER_ID) && v.rule_id == 2));
}
