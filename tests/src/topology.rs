//! A node with pods, each pod a network namespace on a veth whose host side lives in the
//! node's namespace — the wiring netpol-cni makes, built here with `ip` so the datapath can
//! be tested on its own.
//!
//! Routing: the pod has its /32 and a default route via 169.254.1.1, a link-local gateway
//! answered by a permanent neighbour entry pointing at the host-side veth; the node routes
//! each pod's /32 to its veth and forwards between them.

use std::net::Ipv4Addr;

use crate::netns::NetNs;

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Host-side veth (in the node namespace).
    pub host_if: String,
    pub ns: NetNs,
}

pub struct Node {
    pub prefix: String,
    /// The node's own address (on its loopback): traffic from it is host traffic.
    pub ip: Ipv4Addr,
    pub pods: Vec<Pod>,
    // Last: pods' namespaces go first, then the node's with the host-side veths.
    pub ns: NetNs,
}

pub const GATEWAY: &str = "169.254.1.1";

impl Node {
    /// `prefix` (at most 8 characters) starts every namespace and link name.
    pub fn new(prefix: &str, ip: Ipv4Addr) -> Node {
        assert!(prefix.len() <= 8, "prefix {prefix} too long for interface names");
        let ns = NetNs::new(&format!("{prefix}-node"));
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        Node { prefix: prefix.to_string(), ip, pods: Vec::new(), ns }
    }

    /// Adds a pod named `name` (at most 6 characters) with address `ip`.
    pub fn add_pod(&mut self, name: &str, ip: Ipv4Addr) -> &Pod {
        let ns = NetNs::new(&format!("{}-{name}", self.prefix));
        let host_if = format!("{}{name}", self.prefix);
        assert!(host_if.len() <= 15, "{host_if} too long");
        self.ns.ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
        self.ns.ip(&["link", "set", &host_if, "up"]);
        self.ns.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_if]);
        let mac = self.ns.ip(&["-br", "link", "show", &host_if]);
        let mac = mac.split_whitespace().nth(2).expect("mac").to_string();
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", GATEWAY, "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"]);
        ns.ip(&["neigh", "add", GATEWAY, "lladdr", &mac, "dev", "eth0", "nud", "permanent"]);
        self.pods.push(Pod { name: name.to_string(), ip, host_if, ns });
        self.pods.last().unwrap()
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }
}
