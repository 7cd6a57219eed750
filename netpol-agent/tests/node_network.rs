//! The node network the agent provides in a cluster, with real packets (root only): two
//! nodes on one L2 link (as kind's nodes share a bridge), a pod on each, and "the
//! internet" behind the first node. Routes to the other node's pod range make pods reach
//! each other with their own addresses; the masquerade gives pod traffic leaving the pod
//! range the node's address, and nothing else. Each step has its control: the same probe
//! before the change fails.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    time::Duration,
};

use ipnet::Ipv4Net;
use netpol_agent::{masquerade, routing};
use netpol_tests::{need_root, netns::NetNs, topology::Node, traffic::tcp_probe};

const A_NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const B_NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const A_POD: Ipv4Addr = Ipv4Addr::new(10, 245, 1, 2);
const B_POD: Ipv4Addr = Ipv4Addr::new(10, 245, 2, 2);
/// Node a's address towards the internet, and a host there.
const A_UPLINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const WORLD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLUSTER: &str = "10.245.0.0/16";
const TIMEOUT: Duration = Duration::from_millis(800);

struct Cluster {
    a: Node,
    b: Node,
    world: NetNs,
}

impl Cluster {
    fn new(prefix: &str) -> Cluster {
        let mut a = Node::new(&format!("{prefix}a"), A_NODE);
        let mut b = Node::new(&format!("{prefix}b"), B_NODE);
        a.add_pod("p", A_POD);
        b.add_pod("p", B_POD);
        // The nodes' shared network.
        let (a_if, b_if) = (format!("{prefix}an"), format!("{prefix}bn"));
        a.ns.ip(&["link", "add", &a_if, "type", "veth", "peer", "name", &b_if, "netns", &b.ns.name]);
        a.ns.ip(&["addr", "add", &format!("{A_NODE}/24"), "dev", &a_if]);
        b.ns.ip(&["addr", "add", &format!("{B_NODE}/24"), "dev", &b_if]);
        a.ns.ip(&["link", "set", &a_if, "up"]);
        b.ns.ip(&["link", "set", &b_if, "up"]);
        // The internet, which knows nothing of pod addresses.
        let world = NetNs::new(&format!("{prefix}-world"));
        let up = format!("{prefix}up");
        a.ns.ip(&["link", "add", &up, "type", "veth", "peer", "name", "eth0", "netns", &world.name]);
        a.ns.ip(&["addr", "add", &format!("{A_UPLINK}/24"), "dev", &up]);
        a.ns.ip(&["link", "set", &up, "up"]);
        world.ip(&["addr", "add", &format!("{WORLD}/24"), "dev", "eth0"]);
        world.ip(&["link", "set", "eth0", "up"]);
        Cluster { a, b, world }
    }

    fn routes(&self, node: &Node, routes: &[(&str, Ipv4Addr)]) -> routing::RouteChanges {
        let routes: BTreeMap<Ipv4Net, Ipv4Addr> =
            routes.iter().map(|(c, v)| (c.parse().unwrap(), *v)).collect();
        let _inside = node.ns.enter();
        routing::sync(&routes).expect("sync routes")
    }
}

/// Accepts one connection on `port` in `ns` and returns the peer's address, if one came.
fn accept_one(ns: &NetNs, port: u16) -> std::thread::JoinHandle<Option<Ipv4Addr>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = netpol_tests::netns::spawn_in_netns(&ns.name, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT * 2;
        while std::time::Instant::now() < deadline {
            if let Ok((_, std::net::SocketAddr::V4(peer))) = l.accept() {
                return Some(*peer.ip());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    });
    rx.recv().unwrap();
    handle
}

/// Connects from `from` to `to:port` and returns the source address the server saw.
fn seen_from(from: &NetNs, to_ns: &NetNs, to: Ipv4Addr, port: u16) -> Option<Ipv4Addr> {
    let server = accept_one(to_ns, port);
    tcp_probe(&from.name, SocketAddrV4::new(to, port), TIMEOUT);
    server.join().unwrap()
}

#[test]
fn routes_to_the_other_nodes_pods_keep_pod_addresses_and_leave_other_routes_alone() {
    if need_root() {
        return;
    }
    let c = Cluster::new("nnr");
    let (a_pod, b_pod) = (&c.a.pod("p").ns, &c.b.pod("p").ns);
    assert_eq!(seen_from(a_pod, b_pod, B_POD, 8080), None, "control: no route yet, yet it connected");
    // Someone else's routes on node a, which a sync must never touch: one elsewhere, one
    // for a range netpol would route (left to its owner, reported as taken).
    c.a.ns.ip(&["route", "add", "10.99.0.0/24", "via", &B_NODE.to_string(), "proto", "static"]);
    c.a.ns.ip(&["route", "add", "10.245.7.0/24", "via", &B_NODE.to_string(), "proto", "static"]);
    let added = c.routes(&c.a, &[("10.245.2.0/24", B_NODE), ("10.245.7.0/24", A_UPLINK)]);
    assert_eq!((added.added, added.removed), (1, 0));
    assert_eq!(added.taken, ["10.245.7.0/24".parse::<Ipv4Net>().unwrap()]);
    let kept = c.a.ns.ip(&["route", "show", "10.245.7.0/24"]);
    assert!(
        kept.contains(&B_NODE.to_string()) && kept.contains("static"),
        "someone else's route was replaced: {kept}"
    );
    c.routes(&c.b, &[("10.245.1.0/24", A_NODE)]);
    assert_eq!(seen_from(a_pod, b_pod, B_POD, 8080), Some(A_POD), "pod to pod keeps the pod's address");
    assert_eq!(seen_from(b_pod, a_pod, A_POD, 8081), Some(B_POD));
    // Idempotent, then a node that goes takes its route with it.
    assert_eq!(c.routes(&c.a, &[("10.245.2.0/24", B_NODE)]), Default::default());
    let gone = c.routes(&c.a, &[]);
    assert_eq!((gone.added, gone.removed), (0, 1));
    assert_eq!(seen_from(a_pod, b_pod, B_POD, 8082), None, "the route outlived its node");
    let left = c.a.ns.ip(&["route", "show"]);
    assert!(left.contains("10.99.0.0/24"), "another component's route was removed: {left}");
    assert!(!left.contains("10.245.2.0"), "{left}");
}

#[test]
fn pod_traffic_leaving_the_pod_range_is_masqueraded_and_nothing_else() {
    if need_root() {
        return;
    }
    let c = Cluster::new("nnm");
    let (a_pod, b_pod) = (&c.a.pod("p").ns, &c.b.pod("p").ns);
    c.routes(&c.a, &[("10.245.2.0/24", B_NODE)]);
    c.routes(&c.b, &[("10.245.1.0/24", A_NODE)]);
    // Control: the internet cannot answer a pod address.
    assert_eq!(seen_from(a_pod, &c.world, WORLD, 80), None);
    let name = "nnm-test";
    {
        let _inside = c.a.ns.enter();
        masquerade::install(name, CLUSTER.parse().unwrap()).expect("install the masquerade");
        // Twice is the same as once (the table is replaced, not stacked).
        masquerade::install(name, CLUSTER.parse().unwrap()).expect("install it again");
    }
    let table =
        c.a.ns.cmd("nft").args(["list", "table", "ip", &masquerade::table_name(name)]).output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(text.matches("masquerade").count(), 1, "{text}");
    assert_eq!(
        seen_from(a_pod, &c.world, WORLD, 80),
        Some(A_UPLINK),
        "leaving the cluster: the node's address"
    );
    assert_eq!(seen_from(a_pod, b_pod, B_POD, 8080), Some(A_POD), "inside the pod range: never masqueraded");
    {
        let _inside = c.a.ns.enter();
        masquerade::remove(name).expect("remove");
        masquerade::remove(name).expect("removing twice is fine");
    }
    assert_eq!(seen_from(a_pod, &c.world, WORLD, 80), None, "the masquerade outlived its removal");
}
