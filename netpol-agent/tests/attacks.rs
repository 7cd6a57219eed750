//! The datapath against a hostile pod (root only). Frames are crafted inside a pod's
//! namespace and sent through a packet socket, as a pod with CAP_NET_RAW can; what counts is
//! what the receiving pod actually gets, captured by a sniffer on its interface. Each attack
//! has a control beside it: the legitimate flow, or the same crafted frame from where it
//! would be legitimate, still arrives.

mod lab;

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use lab::*;
use netpol_agent::datapath::{AttachMode, Direction, Protocol};
use netpol_common::reason;
use netpol_tests::{
    netns::{in_netns, NetNs},
    packet::{ether_to, vlan_tagged, Ip, Mac, L4},
    traffic::{inject_frame, mac_of, Conn, Sniffer},
};

const PORT: u16 = 9999;
const COPIES: usize = 10;

impl Lab {
    /// The MAC a pod's frames must carry to be taken by the node: its host-side veth's.
    fn gateway_mac(&self, pod: &str) -> Mac {
        mac_of(&self.node.ns, &self.node.pod(pod).host_if)
    }

    /// `ip` (an IPv4 packet) framed as pod `from` would send it to its gateway.
    fn frame_from(&self, from: &str, ip: &[u8]) -> Vec<u8> {
        ether_to(self.gateway_mac(from), mac_of(&self.node.pod(from).ns, "eth0"), 0x0800, ip)
    }

    fn inject(&self, from: &str, frame: &[u8], copies: usize) {
        for _ in 0..copies {
            inject_frame(&self.ns(from), "eth0", frame.to_vec());
        }
    }

    fn sniff(&self, pod: &str) -> Sniffer {
        Sniffer::start(&self.ns(pod), "eth0")
    }
}

/// Received frames that are untagged IPv4 from `src` with protocol `proto`.
fn delivered(frames: &[Vec<u8>], src: Ipv4Addr, proto: u8) -> usize {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [8, 0] && f[23] == proto && f[26..30] == src.octets())
        .count()
}

#[test]
fn spoofed_sources_behind_vlan_tags_are_dropped() {
    let Some(mut lab) = Lab::new("atvlan", AttachMode::Auto) else { return };
    // b admits only c, on UDP 9999; a is not isolated at all.
    lab.isolate("b", EP_B, B, ID_B, true, false);
    lab.dp().add_policy(&entry(EP_B, Direction::Ingress, ID_C, Protocol::Udp, Some(PORT), None), 1).unwrap();
    let posing_as_c = Ip::udp(C, 5000, B, PORT).ip_bytes();
    let plain = lab.frame_from("a", &posing_as_c);
    let (vlan0, spoofed0) = (lab.counter(reason::DROP_VLAN), lab.counter(reason::DROP_SPOOFED));
    let sniffer = lab.sniff("b");
    for tags in [&[0x8100u16, 0x8100][..], &[0x88a8, 0x8100], &[0x8100], &[0x9100, 0x8100]] {
        lab.inject("a", &vlan_tagged(&plain, tags), COPIES);
    }
    lab.inject("a", &plain, COPIES);
    let got = delivered(&sniffer.frames(), C, 17);
    assert_eq!(got, 0, "b received spoofed datagrams from a");
    assert_eq!(lab.counter(reason::DROP_VLAN) - vlan0, 4 * COPIES as u64);
    assert_eq!(lab.counter(reason::DROP_SPOOFED) - spoofed0, COPIES as u64);

    // Control: the same datagram, crafted the same way by c itself, arrives every time.
    let sniffer = lab.sniff("b");
    lab.inject("c", &lab.frame_from("c", &posing_as_c), COPIES);
    assert_eq!(delivered(&sniffer.frames(), C, 17), COPIES, "c's own datagrams did not arrive");
}

/// A UDP datagram from `from` (port `sport`) to `to:port`, sent with a socket.
fn udp_send(lab: &Lab, from: &str, sport: u16, to: Ipv4Addr, port: u16) {
    in_netns(&lab.ns(from), move || {
        let s = UdpSocket::bind(("0.0.0.0", sport)).unwrap();
        s.send_to(b"flow", (to, port)).unwrap();
    });
    std::thread::sleep(Duration::from_millis(50));
}

/// A port-unreachable error from `src` to `dst` quoting `quoted`, with `extra` bytes of
/// chosen payload after the quote.
fn unreachable(src: Ipv4Addr, dst: Ipv4Addr, quoted: &Ip, extra: usize) -> Vec<u8> {
    let mut e =
        Ip::new(src, dst, L4::Icmp { kind: 3, code: 3, id: 0, quoted: quoted.ip_bytes()[..28].to_vec() });
    e.payload = extra;
    e.ip_bytes()
}

#[test]
fn icmp_errors_are_no_channel_out_of_or_into_isolated_pods() {
    let Some(mut lab) = Lab::new("aticmp", AttachMode::Auto) else { return };
    // b: default-deny egress. c starts a UDP flow to b, which b's conntrack tracks.
    lab.isolate("b", EP_B, B, ID_B, false, true);
    let flow = Ip::udp(C, 7000, B, 5000);
    udp_send(&lab, "c", 7000, B, 5000);
    assert!(!lab.dp().conntrack().unwrap().is_empty());
    // Out: b wraps 1000 chosen bytes in an error about c's flow and sends it to a, then to
    // c; and an error of the right size to a.
    let sniff_a = lab.sniff("a");
    let sniff_c = lab.sniff("c");
    lab.inject("b", &lab.frame_from("b", &unreachable(B, A, &flow, 1000)), COPIES);
    lab.inject("b", &lab.frame_from("b", &unreachable(B, C, &flow, 1000)), COPIES);
    lab.inject("b", &lab.frame_from("b", &unreachable(B, A, &flow, 0)), COPIES);
    assert_eq!(delivered(&sniff_a.frames(), B, 1), 0, "a received b's crafted errors");
    assert_eq!(delivered(&sniff_c.frames(), B, 1), 0, "c received b's oversized errors");
    // Control: the error the kernel would send (to c, about c's flow, quote-sized) arrives.
    let sniff_c = lab.sniff("c");
    lab.inject("b", &lab.frame_from("b", &unreachable(B, C, &flow, 0)), COPIES);
    assert_eq!(delivered(&sniff_c.frames(), B, 1), COPIES, "a legitimate error did not arrive");

    // In: a is ingress-isolated with a flow of its own to c; b (not isolated) injects errors
    // about that flow into a.
    lab.isolate("b", EP_B, B, ID_B, false, false);
    lab.isolate("a", EP_A, A, ID_A, true, false);
    let a_flow = Ip::udp(A, 6000, C, 5000);
    udp_send(&lab, "a", 6000, C, 5000);
    let sniff_a = lab.sniff("a");
    lab.inject("b", &lab.frame_from("b", &unreachable(B, A, &a_flow, 0)), COPIES);
    assert_eq!(delivered(&sniff_a.frames(), B, 1), 0, "b injected errors into a's flow");
    // Control: the flow's peer, c, reporting on it, gets through.
    let sniff_a = lab.sniff("a");
    lab.inject("c", &lab.frame_from("c", &unreachable(C, A, &a_flow, 0)), COPIES);
    assert_eq!(delivered(&sniff_a.frames(), C, 1), COPIES);
}

#[test]
fn a_conntrack_flood_by_one_pod_does_not_hang_anothers_connection() {
    let Some(mut lab) = Lab::new("atflood", AttachMode::Auto) else { return };
    lab.tcp_servers("c", &[80]);
    // b admits nothing; it talks to c over a keep-alive connection (its egress is open).
    lab.isolate("b", EP_B, B, ID_B, true, false);
    let mut conn = Conn::open(&lab.ns("b"), SocketAddrV4::new(C, 80), ALLOWED).expect("b -> c");
    assert!(conn.exchange("before", ALLOWED));
    // a sends each of 600k UDP flows twice in a row (so the LRU takes every one for a live
    // flow), to benchmarking-range addresses the node routes nowhere (the packets die in the
    // node namespace).
    let sent = in_netns(&lab.ns("a"), || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut sent = 0u64;
        for i in 0..600_000u32 {
            let to = Ipv4Addr::new(198, 18 + (i >> 16 & 1) as u8, (i >> 8) as u8, i as u8);
            for _ in 0..2 {
                let _ = s.send_to(b"x", (to, 1024 + (i >> 17) as u16));
                sent += 1;
            }
            if i % 4096 == 0 && Instant::now() > deadline {
                break;
            }
        }
        sent
    });
    assert!(sent >= 1_000_000, "the flood sent only {sent} datagrams");
    // The flood evicts b's entries (it did in every run here; the kernel's LRU is only
    // approximately least-recently-used, so should one survive, it is evicted by hand: what
    // is tested is what happens to b's connection once its entries are gone).
    let survived: Vec<_> =
        lab.dp().conntrack().unwrap().into_iter().filter(|(k, _)| k.ep_id == EP_B).collect();
    if !survived.is_empty() {
        eprintln!("{} of b's conntrack entries survived the flood; evicting them", survived.len());
        lab.dp().flush_conntrack(Some(EP_B)).unwrap();
    }
    // ...yet b's connection goes on, and b is as isolated as before.
    assert!(conn.exchange("after", ALLOWED), "b's connection hung after the flood");
    assert!(conn.exchange("again", ALLOWED));
    lab.tcp_servers("b", &[80]);
    lab.tcp("a", B, 80, false);
}

#[test]
fn the_hosts_connections_survive_policy_changes() {
    let Some(mut lab) = Lab::new("athost", AttachMode::Auto) else { return };
    lab.tcp_servers("b", &[80]);
    lab.isolate("b", EP_B, B, ID_B, true, true);
    let mut conn = Conn::open(&lab.node.ns.name, SocketAddrV4::new(B, 80), ALLOWED).expect("node -> b");
    assert!(conn.exchange("one", ALLOWED));
    let revoked = lab.counter(reason::DROP_POLICY_REVOKED);
    let rule = entry(EP_B, Direction::Ingress, ID_A, Protocol::Tcp, Some(80), None);
    for i in 0..5 {
        lab.dp().add_policy(&rule, 1).unwrap();
        lab.dp().remove_policy(&rule).unwrap();
        assert!(conn.exchange(&format!("after change {i}"), ALLOWED));
    }
    assert_eq!(lab.counter(reason::DROP_POLICY_REVOKED), revoked, "host packets were re-judged as revoked");
    lab.tcp("a", B, 80, false);
}

#[test]
fn fragmented_echo_replies_reach_an_ingress_isolated_pod() {
    let Some(mut lab) = Lab::new("atfrag", AttachMode::Auto) else { return };
    lab.isolate("b", EP_B, B, ID_B, true, false);
    let ping = |from: &str, to: Ipv4Addr| {
        let ns = &lab.node.pod(from).ns;
        ns.cmd("ping").args(["-c2", "-W2", "-s", "3000", &to.to_string()]).output().unwrap().status.success()
    };
    let before = lab.counter(reason::ALLOW_FRAGMENT);
    assert!(ping("b", C), "b's large ping to c got no reply");
    assert!(lab.counter(reason::ALLOW_FRAGMENT) > before);
    // Control: b still admits no ping from c.
    assert!(!ping("c", B));
}

#[test]
fn a_local_pods_address_from_outside_the_node_is_dropped() {
    let Some(mut lab) = Lab::new("atlocal", AttachMode::Auto) else { return };
    // An uplink: "outside" reaches the node over a veth, as another host on its network.
    let outside = NetNs::new("atlocal-out");
    let uplink = "atlocalup";
    lab.node.ns.ip(&["link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", &outside.name]);
    lab.node.ns.ip(&["addr", "add", "192.0.2.1/24", "dev", uplink]);
    lab.node.ns.ip(&["link", "set", uplink, "up"]);
    outside.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    outside.ip(&["link", "set", "eth0", "up"]);
    lab.node.ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
    lab.node.ns.sysctl(&format!("net.ipv4.conf.{uplink}.rp_filter"), "0");
    // b admits only a, on UDP 9999.
    lab.isolate("b", EP_B, B, ID_B, true, false);
    lab.dp().add_policy(&entry(EP_B, Direction::Ingress, ID_A, Protocol::Udp, Some(PORT), None), 1).unwrap();
    let posing_as_a = Ip::udp(A, 5000, B, PORT).ip_bytes();
    let to_node = ether_to(mac_of(&lab.node.ns, uplink), mac_of(&outside, "eth0"), 0x0800, &posing_as_a);
    let before = lab.counter(reason::DROP_SPOOFED_LOCAL);
    let sniffer = lab.sniff("b");
    for _ in 0..COPIES {
        inject_frame(&outside.name, "eth0", to_node.clone());
    }
    assert_eq!(delivered(&sniffer.frames(), A, 17), 0, "b took a datagram from outside as a's");
    assert_eq!(lab.counter(reason::DROP_SPOOFED_LOCAL) - before, COPIES as u64);
    // Control: a's own datagrams arrive.
    let sniffer = lab.sniff("b");
    lab.inject("a", &lab.frame_from("a", &posing_as_a), COPIES);
    assert_eq!(delivered(&sniffer.frames(), A, 17), COPIES);
}

/// Sends `count` datagrams from `pod` to `to` as fast as it can.
fn udp_flood(lab: &Lab, pod: &str, to: SocketAddrV4, count: usize) {
    in_netns(&lab.ns(pod), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..count {
            let _ = s.send_to(b"flood", to);
        }
    });
}

#[test]
fn a_drop_flood_by_one_pod_does_not_hide_anothers_drop_event() {
    let Some(mut lab) = Lab::new("evflood", AttachMode::Auto) else { return };
    // a and b may send nothing: every datagram is a drop with an event, charged to its sender.
    lab.isolate("a", EP_A, A, ID_A, false, true);
    lab.isolate("b", EP_B, B, ID_B, false, true);
    lab.dp().drain_events();
    let limited_before = lab.dp().counters().unwrap().events_rate_limited();
    // Far more drops than the ring holds (8 MiB / 48 B ≈ 175k), and nobody reads it.
    let flood = 300_000;
    let t = Instant::now();
    udp_flood(&lab, "a", SocketAddrV4::new(C, PORT), flood);
    let took = t.elapsed();
    udp_send(&lab, "b", 4242, C, PORT);
    let events = lab.dp().drain_events();
    let from = |ep: u32| events.iter().filter(|e| e.ep_id == ep && e.reason == reason::DROP_POLICY).count();
    let (a_events, b_events) = (from(EP_A), from(EP_B));
    eprintln!("{flood} drops by a in {took:?}: {a_events} events for a, {b_events} for b");
    assert!(b_events >= 1, "b's drop event was crowded out by a's flood");
    let allowance = netpol_common::DROP_EVENT_BURST
        + (took.as_secs_f64() * netpol_common::DROP_EVENTS_PER_SEC as f64) as u64
        + 200;
    assert!(a_events > 0 && (a_events as u64) <= allowance, "a got {a_events} events, allowance {allowance}");
    let limited = lab.dp().counters().unwrap().events_rate_limited() - limited_before;
    assert!(limited as usize + a_events >= flood / 2, "only {limited} suppressed: did the flood arrive?");
}

#[test]
fn a_drop_flood_into_a_pod_does_not_hide_another_peers_drop_at_that_pod() {
    let Some(mut lab) = Lab::new("evinto", AttachMode::Auto) else { return };
    // c admits nobody: every datagram to it is dropped at c's ingress, where the event is
    // charged to c and to the sender's identity.
    lab.isolate("c", EP_C, C, ID_C, true, false);
    lab.dp().drain_events();
    let flood = 300_000;
    let t = Instant::now();
    udp_flood(&lab, "a", SocketAddrV4::new(C, PORT), flood);
    let took = t.elapsed();
    udp_send(&lab, "b", 4243, C, PORT);
    let events = lab.dp().drain_events();
    let at_c = |peer: u32| {
        events.iter().filter(|e| e.ep_id == EP_C && e.peer == peer && e.reason == reason::DROP_POLICY).count()
    };
    let (from_a, from_b) = (at_c(ID_A), at_c(ID_B));
    eprintln!("{flood} drops from a at c in {took:?}: {from_a} events from a, {from_b} from b");
    assert!(from_b >= 1, "b's drop at c was crowded out by a's flood into c");
    let allowance = netpol_common::DROP_EVENT_BURST
        + (took.as_secs_f64() * netpol_common::DROP_EVENTS_PER_SEC as f64) as u64
        + 200;
    assert!(from_a > 0 && (from_a as u64) <= allowance, "a got {from_a} events at c, allowance {allowance}");
}
