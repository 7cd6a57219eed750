//! A node namespace with pods a, b, c on veths (names prefixed per test), its own pinned
//! datapath attached to all three, torn down on drop, also when the test fails. Shared by
//! the traffic suites (`enforcement.rs`, `attacks.rs`).
#![allow(dead_code)]

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use netpol_agent::datapath::{
    AttachMode, Config, Datapath, Direction, EndpointSpec, IpcacheSpec, PolicyEntry, Protocol,
};
use netpol_agent::testing::PinnedDatapath;
use netpol_common::identity;
use netpol_tests::{
    need_root,
    netns::Entered,
    topology::Node,
    traffic::{tcp_probe, tcp_server, udp_echo, udp_probe, Server},
};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 50, 255, 1);
pub const A: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 2);
pub const B: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 3);
pub const C: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 4);
pub const ID_A: u32 = 1000;
pub const ID_B: u32 = 1001;
pub const ID_C: u32 = 1002;
pub const EP_A: u32 = 1;
pub const EP_B: u32 = 2;
pub const EP_C: u32 = 3;
pub const ALLOWED: Duration = Duration::from_secs(3);
pub const DENIED: Duration = Duration::from_millis(700);

/// A node with pods a, b, c, and the datapath attached to all three. Fields drop in
/// order: servers, then the datapath (detached inside the node namespace), then the node.
pub struct Lab {
    pub servers: Vec<Server>,
    pub dp: PinnedDatapath,
    // Keeps this thread in the node namespace (aya attaches by interface name there).
    entered: Entered,
    pub node: Node,
}

pub fn spec(
    lab: &Lab,
    pod: &str,
    id: u32,
    ip: Ipv4Addr,
    identity: u32,
    ingress: bool,
    egress: bool,
) -> EndpointSpec {
    EndpointSpec {
        interface: lab.node.pod(pod).host_if.clone(),
        id,
        ip,
        identity,
        isolated_ingress: ingress,
        isolated_egress: egress,
        audit: false,
    }
}

impl Lab {
    pub fn new(prefix: &str, mode: AttachMode) -> Option<Lab> {
        if need_root() {
            return None;
        }
        let mut node = Node::new(prefix, NODE_IP);
        node.add_pod("a", A);
        node.add_pod("b", B);
        node.add_pod("c", C);
        let cfg = Config { name: format!("test-nf-{prefix}"), attach: mode, ..Default::default() };
        let entered = node.ns.enter();
        let dp = PinnedDatapath::open(cfg);
        let mut lab = Lab { servers: Vec::new(), dp, entered, node };
        for (pod, ep, ip, id) in [("a", EP_A, A, ID_A), ("b", EP_B, B, ID_B), ("c", EP_C, C, ID_C)] {
            let s = spec(&lab, pod, ep, ip, id, false, false);
            lab.dp().upsert_endpoint(&s).unwrap();
            lab.dp().upsert_ipcache(&ipc(&format!("{ip}/32"), id, None)).unwrap();
            let ifname = s.interface.clone();
            lab.dp().attach(&ifname).unwrap();
        }
        lab.dp().upsert_ipcache(&ipc(&format!("{NODE_IP}/32"), identity::HOST, None)).unwrap();
        Some(lab)
    }

    pub fn dp(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    pub fn root(&self) -> PathBuf {
        self.dp.config().root()
    }

    pub fn ns(&self, pod: &str) -> String {
        self.node.pod(pod).ns.name.clone()
    }

    pub fn isolate(&mut self, pod: &str, ep: u32, ip: Ipv4Addr, id: u32, ingress: bool, egress: bool) {
        let s = spec(self, pod, ep, ip, id, ingress, egress);
        self.dp().upsert_endpoint(&s).unwrap();
    }

    pub fn tcp_servers(&mut self, pod: &str, ports: &[u16]) {
        for p in ports {
            let s = tcp_server(&self.ns(pod), *p);
            self.servers.push(s);
        }
    }

    pub fn udp_servers(&mut self, pod: &str, ports: &[u16]) {
        for p in ports {
            let s = udp_echo(&self.ns(pod), *p);
            self.servers.push(s);
        }
    }

    /// Asserts a TCP connection + echo from `from` to `to:port` works (or does not).
    pub fn tcp(&self, from: &str, to: Ipv4Addr, port: u16, allowed: bool) {
        let t = if allowed { ALLOWED } else { DENIED };
        let got = tcp_probe(&self.ns(from), SocketAddrV4::new(to, port), t);
        assert_eq!(got, allowed, "TCP {from} -> {to}:{port}");
    }

    pub fn udp(&self, from: &str, to: Ipv4Addr, port: u16, allowed: bool) {
        let t = if allowed { ALLOWED } else { DENIED };
        let got = udp_probe(&self.ns(from), SocketAddrV4::new(to, port), 64, t);
        assert_eq!(got, allowed, "UDP {from} -> {to}:{port}");
    }

    pub fn counter(&self, r: u8) -> u64 {
        self.dp.counters().unwrap().reason(r)
    }
}

pub fn ipc(cidr: &str, identity: u32, cidr_identity: Option<u32>) -> IpcacheSpec {
    IpcacheSpec { cidr: cidr.parse().unwrap(), identity, cidr_identity }
}

pub fn entry(
    ep: u32,
    dir: Direction,
    peer: u32,
    protocol: Protocol,
    port: Option<u16>,
    end: Option<u16>,
) -> PolicyEntry {
    PolicyEntry { endpoint: ep, direction: dir, peer, protocol, port, end_port: end }
}
