//! netpol-cni run exactly as a container runtime runs it: the built binary, CNI_* in the
//! environment (nothing else), the configuration on stdin, in a node namespace of the test's
//! own, with a netpol agent serving its socket there (root only).

use std::{
    collections::BTreeSet,
    io::Write,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use netpol_agent::{
    controller::Settings,
    datapath::Config,
    testing::{PinnedDatapath, TestAgent},
};
use netpol_tests::{
    cni::{self, Call, Out},
    need_root,
    netns::NetNs,
    packet::router_advert,
    traffic::{inject_frame, mac_of, tcp_probe, tcp_server},
};
use serde_json::{json, Value};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 60, 255, 1);
const CNI_PLUGINS: &str = cni::CNI_PATH;

/// A node namespace with an agent serving its API there, and a scratch directory.
struct Node {
    prefix: String,
    dir: PathBuf,
    socket: Option<PathBuf>,
    agent: Option<TestAgent>,
    pins: PinnedDatapath,
    pods: Vec<NetNs>,
    ns: NetNs,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.agent.take();
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        self.pods.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    fn new(prefix: &str) -> Option<Node> {
        Node::with_socket(prefix, None)
    }

    /// A node whose agent listens on `socket` instead of the scratch directory.
    fn with_socket(prefix: &str, socket: Option<PathBuf>) -> Option<Node> {
        if need_root() {
            return None;
        }
        let ns = NetNs::new(&format!("{prefix}-node"));
        ns.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
        let dir = std::env::temp_dir().join(format!("netpol-cni-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pins = PinnedDatapath::guard(Config { name: format!("test-cni-{prefix}"), ..Default::default() });
        let mut node = Node { prefix: prefix.into(), dir, socket, agent: None, pins, pods: Vec::new(), ns };
        node.start_agent();
        Some(node)
    }

    fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.dir.join("agent.sock"))
    }

    /// Runs the agent (datapath + API) in this process, its threads in the node namespace.
    fn start_agent(&mut self) {
        let mut settings = Settings::new(self.dir.join("agent-state"), "test", true);
        settings.node.pod_cidr = Some("10.60.1.0/24".into());
        let _inside = self.ns.enter();
        let mut agent = TestAgent::start(self.pins.config(), &settings);
        agent.serve(&self.socket());
        self.agent = Some(agent);
    }

    fn pod(&mut self, name: &str) -> String {
        let ns = NetNs::new(&format!("{}-{name}", self.prefix));
        let path = ns.path();
        self.pods.push(ns);
        path
    }

    fn pod_ns(&self, name: &str) -> &NetNs {
        let full = format!("{}-{name}", self.prefix);
        self.pods.iter().find(|p| p.name == full).unwrap()
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "podnet",
            "type": "netpol-cni",
            "podCIDR": "10.60.1.0/24",
            "agentSocket": self.socket(),
            "dataDir": self.dir.join("cni"),
        })
    }

    /// Runs a plugin binary as a runtime does, in this node's namespace.
    fn exec(&self, bin: &str, command: &str, conf: &Value, call: Call) -> Out {
        cni::exec(Path::new(bin), &self.ns, command, conf, call)
    }

    fn cni(&self, command: &str, conf: &Value, cid: &str, netns: &str) -> Out {
        self.exec(
            env!("CARGO_BIN_EXE_netpol-cni"),
            command,
            conf,
            Call { cid, netns, ifname: "eth0", args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default" },
        )
    }

    fn add(&self, conf: &Value, cid: &str, netns: &str) -> Value {
        let out = self.cni("ADD", conf, cid, netns);
        assert!(out.ok, "ADD {cid}: {} {}", out.json, out.stderr);
        out.json
    }

    /// Host-side veths in the node namespace.
    fn veths(&self) -> Vec<String> {
        let out = self.ns.ip(&["-o", "link", "show", "type", "veth"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .collect()
    }

    /// Files under the IPAM directory.
    fn ipam_files(&self) -> Vec<String> {
        let dir = self.dir.join("cni/networks/podnet");
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    fn agent_endpoints(&self) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(self.socket())
            .arg("http://agent/v1/endpoints")
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn assert_clean(&self) {
        assert_eq!(self.veths(), Vec::<String>::new(), "veths left behind");
        assert_eq!(self.ipam_files(), Vec::<String>::new(), "IPAM files left behind");
        assert_eq!(self.agent_endpoints(), json!([]), "registrations left behind");
    }
}

fn ip_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap()
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn add_check_del_as_a_runtime_does() {
    let Some(mut node) = Node::new("cniacd") else { return };
    let netns = node.pod("p1");
    let conf = node.conf("1.0.0");
    let res = node.add(&conf, "c0ffee01", &netns);
    let ip = ip_of(&res);
    assert!(res["ips"][0]["address"].as_str().unwrap().ends_with("/32"));
    assert_eq!(res["cniVersion"], "1.0.0");
    assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");
    let host_if = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(host_if.starts_with("np") && host_if.len() <= 15, "{host_if}");
    assert!(res["interfaces"][0].get("sandbox").is_none());
    assert_eq!(res["interfaces"][1]["name"], "eth0");
    assert_eq!(res["interfaces"][1]["sandbox"], netns);
    assert_eq!(res["ips"][0]["interface"], 1);
    // The pod has its address and default route; the node routes to it; the agent enforces it.
    let pod = node.pod_ns("p1");
    let addrs = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{ip}/32")), "{addrs}");
    assert!(pod.ip(&["route"]).contains("default via 169.254.1.1 dev eth0"));
    assert!(node.ns.ip(&["route"]).contains(&format!("{ip} dev {host_if}")));
    let eps = node.agent_endpoints();
    assert_eq!(eps[0]["enforced"], true, "{eps}");
    assert_eq!(eps[0]["ip"], ip.to_string());
    // Host to pod traffic (kubelet probes) passes the attached programs.
    let server = tcp_server(&format!("{}-p1", node.prefix), 8080);
    assert!(tcp_probe(&node.ns.name, SocketAddrV4::new(ip, 8080), Duration::from_secs(3)));
    drop(server);

    let check = node.cni("CHECK", &with_prev(&conf, &res), "c0ffee01", &netns);
    assert!(check.ok, "CHECK: {} {}", check.json, check.stderr);
    // CHECK notices a broken attachment.
    node.ns.ip(&["route", "del", &format!("{ip}/32")]);
    let check = node.cni("CHECK", &with_prev(&conf, &res), "c0ffee01", &netns);
    assert!(!check.ok);
    assert_eq!(check.json["code"], 100, "{}", check.json);
    assert!(check.json["msg"].as_str().unwrap().contains("host route"), "{}", check.json);

    let del = node.cni("DEL", &with_prev(&conf, &res), "c0ffee01", &netns);
    assert!(del.ok && del.json.is_null(), "DEL: {} {}", del.json, del.stderr);
    node.assert_clean();
    // DEL twice, and DEL of something never added, succeed.
    assert!(node.cni("DEL", &conf, "c0ffee01", &netns).ok);
    assert!(node.cni("DEL", &conf, "neveradded", "").ok);
    // CHECK of a deleted attachment: unknown container.
    let check = node.cni("CHECK", &with_prev(&conf, &res), "c0ffee01", &netns);
    assert_eq!(check.json["code"], 3, "{}", check.json);
    node.assert_clean();
}

#[test]
fn every_version_gets_its_own_result_format() {
    let Some(mut node) = Node::new("cnivers") else { return };
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let netns = node.pod(&format!("v{i}"));
        let conf = node.conf(v);
        let res = node.add(&conf, &format!("vers{i}"), &netns);
        assert_eq!(res["cniVersion"], *v);
        assert_eq!(res["ips"][0].get("version").is_some(), v.starts_with('0'), "{v}: {res}");
        assert_eq!(res["interfaces"][1].get("mtu").is_some(), *v == "1.1.0", "{v}: {res}");
        let check = node.cni("CHECK", &with_prev(&conf, &res), &format!("vers{i}"), &netns);
        if v.starts_with("0.3") {
            assert_eq!(check.json["code"], 1, "CHECK does not exist in {v}");
        } else {
            assert!(check.ok, "{v}: {}", check.json);
        }
        assert!(node.cni("DEL", &conf, &format!("vers{i}"), &netns).ok);
    }
    let version = node.cni("VERSION", &json!({"cniVersion": "1.0.0"}), "", "");
    assert_eq!(version.json["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    // STATUS: only 1.1.0; fine while the agent runs, 50 once it is gone.
    assert_eq!(node.cni("STATUS", &node.conf("1.0.0"), "", "").json["code"], 1);
    let st = node.cni("STATUS", &node.conf("1.1.0"), "", "");
    assert!(st.ok, "{}", st.json);
    node.agent.take();
    let st = node.cni("STATUS", &node.conf("1.1.0"), "", "");
    assert_eq!(st.json["code"], 50, "{}", st.json);
    assert!(node.veths().is_empty());
}

#[test]
fn bad_input_gets_the_spec_code_and_leaves_nothing() {
    let Some(mut node) = Node::new("cnibad") else { return };
    let netns = node.pod("p");
    let good = node.conf("1.0.0");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let mut no_name = good.clone();
    no_name.as_object_mut().unwrap().remove("name");
    let cni = env!("CARGO_BIN_EXE_netpol-cni");
    let run = |conf: &Value, cid: &str, ns: &str, ifname: &str, args: &str| {
        node.exec(cni, "ADD", conf, Call { cid, netns: ns, ifname, args })
    };
    let cases: Vec<(&str, Out, u32)> = vec![
        ("unsupported version", run(&with("cniVersion", json!("9.9.9")), "bad1", &netns, "eth0", ""), 1),
        ("ipam section", run(&with("ipam", json!({"type": "host-local"})), "bad2", &netns, "eth0", ""), 2),
        ("no CNI_CONTAINERID", run(&good, "", &netns, "eth0", ""), 4),
        ("no CNI_NETNS", run(&good, "bad3", "", "eth0", ""), 4),
        ("CNI_NETNS that does not exist", run(&good, "bad4", "/run/netns/nope-nope", "eth0", ""), 4),
        ("CNI_IFNAME too long", run(&good, "bad5", &netns, "eth0123456789abc", ""), 4),
        ("CNI_IFNAME a name template", run(&good, "bad14", &netns, "eth%d", ""), 4),
        ("unknown CNI_ARGS key", run(&good, "bad6", &netns, "eth0", "FOO=bar"), 4),
        ("missing name", run(&no_name, "bad7", &netns, "eth0", ""), 7),
        ("name \"..\"", run(&with("name", json!("..")), "bad12", &netns, "eth0", ""), 7),
        ("name not starting alphanumeric", run(&with("name", json!("-net")), "bad13", &netns, "eth0", ""), 7),
        ("CNI_CONTAINERID \".\"", run(&good, ".", &netns, "eth0", ""), 4),
        ("podCIDR not a CIDR", run(&with("podCIDR", json!("10.60.1.0/33")), "bad8", &netns, "eth0", ""), 7),
        (
            "podCIDR with host bits",
            run(&with("podCIDR", json!("10.60.1.1/24")), "bad9", &netns, "eth0", ""),
            7,
        ),
        ("mtu out of range", run(&with("mtu", json!(20)), "bad10", &netns, "eth0", ""), 7),
        (
            "agent unreachable",
            run(&with("agentSocket", json!("/run/netpol/nope.sock")), "bad11", &netns, "eth0", ""),
            11,
        ),
    ];
    for (what, out, code) in cases {
        assert!(!out.ok, "{what}: succeeded");
        assert_eq!(out.json["code"], code, "{what}: {}", out.json);
        assert!(!out.json["msg"].as_str().unwrap_or("").is_empty(), "{what}: no message");
        assert!(out.json["cniVersion"].is_string(), "{what}: {}", out.json);
        node.assert_clean();
        let links = node.pod_ns("p").ip(&["-o", "link"]);
        assert!(!links.contains("eth0"), "{what}: eth0 left in the pod");
    }
    // Undecodable configuration, unknown command.
    let mut cmd = Command::new(cni);
    cmd.env_clear().env("CNI_COMMAND", "ADD").stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"{not json").unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 6, "{v}");
    let out = node.exec(cni, "FROB", &good, Call { cid: "x", netns: &netns, ifname: "eth0", args: "" });
    assert_eq!(out.json["code"], 4);

    // A full range: two addresses in a /30; the third ADD fails cleanly.
    let small = with("podCIDR", json!("10.60.9.0/30"));
    let (a, b, c) = (node.pod("f1"), node.pod("f2"), node.pod("f3"));
    node.add(&small, "full1", &a);
    node.add(&small, "full2", &b);
    let out = node.cni("ADD", &small, "full3", &c);
    assert_eq!(out.json["code"], 101, "{}", out.json);
    assert!(out.json["msg"].as_str().unwrap().contains("10.60.9.0/30"));
    assert_eq!(node.veths().len(), 2);
    assert!(node.cni("DEL", &small, "full1", &a).ok);
    assert!(node.cni("DEL", &small, "full2", &b).ok);
    node.assert_clean();
}

#[test]
fn fifty_concurrent_adds_get_distinct_addresses() {
    let Some(mut node) = Node::new("cniconc") else { return };
    let conf = node.conf("1.1.0");
    let netns: Vec<String> = (0..50).map(|i| node.pod(&format!("c{i}"))).collect();
    let node = Arc::new(node);
    let handles: Vec<_> = netns
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let (node, conf, ns) = (node.clone(), conf.clone(), ns.clone());
            std::thread::spawn(move || ip_of(&node.add(&conf, &format!("conc{i}"), &ns)))
        })
        .collect();
    let ips: Vec<Ipv4Addr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 50, "{ips:?}");
    assert_eq!(node.veths().len(), 50);
    assert_eq!(node.agent_endpoints().as_array().unwrap().len(), 50);
    let handles: Vec<_> = netns
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let (node, conf, ns) = (node.clone(), conf.clone(), ns.clone());
            std::thread::spawn(move || assert!(node.cni("DEL", &conf, &format!("conc{i}"), &ns).ok))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    node.assert_clean();
}

#[test]
fn two_hundred_add_del_cycles_leave_nothing_behind() {
    let Some(mut node) = Node::new("cnicyc") else { return };
    let conf = node.conf("1.0.0");
    let netns = node.pod("p");
    for i in 0..200 {
        let cid = format!("cycle{i}");
        let res = node.add(&conf, &cid, &netns);
        assert!(node.cni("DEL", &with_prev(&conf, &res), &cid, &netns).ok, "DEL {cid}");
    }
    node.assert_clean();
    let links = node.ns.ip(&["-o", "link"]);
    assert_eq!(links.lines().count(), 1, "only lo may remain: {links}");
    let routes = node.ns.ip(&["route"]);
    assert!(routes.trim().is_empty(), "routes left: {routes}");
    let pins = std::fs::read_dir(
        Config { name: "test-cni-cnicyc".into(), ..Default::default() }.pin_dir().join("links"),
    )
    .unwrap()
    .count();
    assert_eq!(pins, 0, "link pins left behind");
}

/// A minimal runtime for a conflist: ADD through the chain, each plugin given the previous
/// result; DEL in reverse order with the final result.
fn chain(node: &Node, command: &str, list: &Value, cid: &str, netns: &str, prev: Option<&Value>) -> Value {
    let plugins = list["plugins"].as_array().unwrap().clone();
    let order: Vec<Value> = if command == "DEL" { plugins.into_iter().rev().collect() } else { plugins };
    let mut result = prev.cloned();
    for p in order {
        let mut conf = p.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(r) = &result {
            conf["prevResult"] = r.clone();
        }
        conf["runtimeConfig"] = json!({
            "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000},
        });
        let ty = p["type"].as_str().unwrap();
        let bin = if ty == "netpol-cni" {
            env!("CARGO_BIN_EXE_netpol-cni").to_string()
        } else {
            format!("{CNI_PLUGINS}/{ty}")
        };
        let out = node.exec(
            &bin,
            command,
            &conf,
            Call { cid, netns, ifname: "eth0", args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default" },
        );
        assert!(out.ok, "{command} {ty}: {} {}", out.json, out.stderr);
        if command == "ADD" {
            result = Some(out.json);
        }
    }
    result.unwrap_or(Value::Null)
}

#[test]
fn chained_portmap_and_bandwidth_work_after_it() {
    if !Path::new(CNI_PLUGINS).join("portmap").exists() {
        panic!("{CNI_PLUGINS}/portmap missing: `cargo xtask setup` installs containernetworking-plugins");
    }
    let Some(mut node) = Node::new("cnichain") else { return };
    let mut np = node.conf("1.0.0");
    np.as_object_mut().unwrap().remove("cniVersion");
    np.as_object_mut().unwrap().remove("name");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [
            np,
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "tuning", "sysctl": {"net.ipv4.tcp_keepalive_time": "120"}},
        ],
    });
    let server_ns = node.pod("srv");
    let client_ns = node.pod("cli");
    // The pods are known to the agent before their ADDs (as kubelet's pods are).
    known_pods(&node, &[("default", "chain1"), ("default", "chain2")]);
    let res = chain(&node, "ADD", &list, "chain1", &server_ns, None);
    assert_eq!(res["cniVersion"], "1.0.0");
    let host_if = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let client = node.add(&node.conf("1.0.0"), "chain2", &client_ns);
    let _server = tcp_server(&format!("{}-srv", node.prefix), 8080);
    // portmap: the node's port 18080 reaches the pod's 8080 (DNAT), from another pod.
    assert!(
        tcp_probe(&format!("{}-cli", node.prefix), SocketAddrV4::new(NODE_IP, 18080), Duration::from_secs(3)),
        "port mapping does not reach the pod"
    );
    // bandwidth: a token bucket on the host-side veth the result reported.
    let qdisc = node.ns.ip(&["link"]);
    let tc = Command::new("nsenter")
        .arg(format!("--net={}", node.ns.path()))
        .args(["tc", "qdisc", "show", "dev", &host_if])
        .output()
        .unwrap();
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(tc.contains("tbf"), "no bandwidth limit on {host_if}: {tc}\n{qdisc}");
    // tuning: the sysctl was set inside the pod.
    let keepalive = Command::new("nsenter")
        .arg(format!("--net={server_ns}"))
        .args(["cat", "/proc/sys/net/ipv4/tcp_keepalive_time"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&keepalive.stdout).trim(), "120");
    // CHECK of our plugin against the chain's final result. (Debian's portmap 1.1.1 fails
    // its own CHECK here: it looks for an IPv6 DNAT chain it never created.)
    let check = node.cni("CHECK", &with_prev(&node.conf("1.0.0"), &res), "chain1", &server_ns);
    assert!(check.ok, "CHECK with the chained prevResult: {}", check.json);
    chain(&node, "DEL", &list, "chain1", &server_ns, Some(&res));
    assert!(node.cni("DEL", &with_prev(&node.conf("1.0.0"), &client), "chain2", &client_ns).ok);
    node.assert_clean();
    let links = node.ns.ip(&["-o", "link"]);
    assert_eq!(links.lines().count(), 1, "bandwidth's ifb or a veth left behind: {links}");
}

/// Puts pod objects (no labels, no address yet) in the agent's local store.
fn known_pods(node: &Node, pods: &[(&str, &str)]) {
    let objects: Vec<Value> = pods
        .iter()
        .map(|(ns, name)| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                                 "spec": {"containers": [{"name": "c", "image": "i"}]}})
        })
        .collect();
    let res = apply(node, json!(objects));
    assert!(res.as_array().unwrap().iter().all(|r| r["error"].is_null()), "{res}");
}

/// POSTs objects to the agent's local store; returns the per-object results.
fn apply(node: &Node, objects: Value) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--unix-socket"])
        .arg(node.socket())
        .args(["-H", "content-type: application/json", "-d", &objects.to_string(), "http://agent/v1/objects"])
        .output()
        .unwrap();
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn wired_pods_talk_until_a_policy_isolates_one() {
    let Some(mut node) = Node::new("cnipol") else { return };
    let (ns1, ns2) = (node.pod("p1"), node.pod("p2"));
    let conf = node.conf("1.0.0");
    let args = |ns: &str| format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME=pod");
    let cni = env!("CARGO_BIN_EXE_netpol-cni");
    known_pods(&node, &[("x", "pod"), ("y", "pod")]);
    let r1 =
        node.exec(cni, "ADD", &conf, Call { cid: "pol1", netns: &ns1, ifname: "eth0", args: &args("x") });
    let r2 =
        node.exec(cni, "ADD", &conf, Call { cid: "pol2", netns: &ns2, ifname: "eth0", args: &args("y") });
    assert!(r1.ok && r2.ok, "{} {}", r1.json, r2.json);
    let ip2 = ip_of(&r2.json);
    let _server = tcp_server(&format!("{}-p2", node.prefix), 80);
    let p1 = format!("{}-p1", node.prefix);
    let to_p2 = SocketAddrV4::new(ip2, 80);
    assert!(tcp_probe(&p1, to_p2, Duration::from_secs(3)), "wired pods cannot talk");
    let eps = node.agent_endpoints();
    assert_ne!(eps[0]["identity"], eps[1]["identity"], "pods of different namespaces share an identity");

    // Deny all ingress in y: p2 is isolated once apply returns.
    let deny = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "y"}, "spec": {"podSelector": {}}});
    let res = apply(&node, json!([deny]));
    assert_eq!(res[0]["result"], "created", "{res}");
    assert!(!tcp_probe(&p1, to_p2, Duration::from_millis(700)), "isolated pod still reachable");
    // Allow from namespace x on TCP 80.
    let allow = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "from-x", "namespace": "y"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}],
                                                  "ports": [{"port": 80}]}]}});
    let res = apply(&node, json!([allow]));
    assert_eq!(res[0]["result"], "created", "{res}");
    assert!(tcp_probe(&p1, to_p2, Duration::from_secs(3)), "allowed traffic blocked");
    // An invalid policy is rejected with its field named; the others stay enforced.
    let bad = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bad", "namespace": "y"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 70}]}]}});
    let res = apply(&node, json!([bad]));
    let err = res[0]["error"].as_str().unwrap();
    assert!(err.contains("NetworkPolicy y/bad") && err.contains("spec.ingress[0].ports[0].endPort"), "{err}");
    assert!(tcp_probe(&p1, to_p2, Duration::from_secs(3)));
    assert!(node.cni("DEL", &conf, "pol1", &ns1).ok);
    assert!(node.cni("DEL", &conf, "pol2", &ns2).ok);
    node.assert_clean();
}

#[test]
fn a_minimal_config_works_with_every_default() {
    let socket = PathBuf::from(netpol_api::DEFAULT_SOCKET);
    assert!(!socket.exists(), "{} exists: is a netpol agent running on this machine?", socket.display());
    let Some(mut node) = Node::with_socket("cnimin", Some(socket)) else { return };
    let netns = node.pod("p");
    // Exactly the minimal configuration, with a network name of this test's own.
    let conf = json!({"cniVersion":"1.0.0","name":"netpol-test-minimal","type":"netpol-cni","podCIDR":"10.244.7.0/24"});
    let res = node.add(&conf, "minimal1", &netns);
    assert!(ip_of(&res).to_string().starts_with("10.244.7."), "{res}");
    let ipam = Path::new("/var/lib/netpol/cni/networks/netpol-test-minimal");
    assert_eq!(std::fs::read_dir(ipam).unwrap().count(), 2, "one allocation and the round-robin marker");
    assert!(node.cni("CHECK", &with_prev(&conf, &res), "minimal1", &netns).ok);
    assert!(node.cni("DEL", &conf, "minimal1", &netns).ok);
    assert_eq!(std::fs::read_dir(ipam).unwrap().count(), 0);
    std::fs::remove_dir(ipam).unwrap();
    node.assert_clean();
    drop(node);
    // The default directories, when this test made them (remove_dir only takes empty ones).
    for d in ["/var/lib/netpol/cni/networks", "/var/lib/netpol/cni", "/var/lib/netpol", "/run/netpol"] {
        let _ = std::fs::remove_dir(d);
    }
}

#[test]
fn del_succeeds_when_the_agent_and_the_netns_are_gone() {
    let Some(mut node) = Node::new("cnigone") else { return };
    let conf = node.conf("1.0.0");
    let netns = node.pod("p");
    node.add(&conf, "gone1", &netns);
    node.agent.take();
    node.pods.clear(); // the pod's namespace is deleted, with its end of the veth
    let del = node.cni("DEL", &conf, "gone1", &netns);
    assert!(del.ok, "{} {}", del.json, del.stderr);
    assert!(node.veths().is_empty());
    assert!(node.ipam_files().is_empty());
    // The agent comes back and forgets the attachment whose interface is gone.
    node.start_agent();
    assert_eq!(node.agent_endpoints(), json!([]));
}

#[test]
fn an_agent_restart_keeps_registrations() {
    let Some(mut node) = Node::new("cnirst") else { return };
    let conf = node.conf("1.0.0");
    let netns = node.pod("p");
    let res = node.add(&conf, "rst1", &netns);
    node.agent.take();
    node.start_agent();
    let check = node.cni("CHECK", &with_prev(&conf, &res), "rst1", &netns);
    assert!(check.ok, "{}", check.json);
    assert!(node.cni("DEL", &conf, "rst1", &netns).ok);
    node.assert_clean();
}

#[test]
fn gc_releases_what_no_valid_attachment_owns() {
    let Some(mut node) = Node::new("cnigc") else { return };
    let conf = node.conf("1.1.0");
    let nss: Vec<String> = (0..3).map(|i| node.pod(&format!("g{i}"))).collect();
    let keep = node.add(&conf, "gc0", &nss[0]);
    node.add(&conf, "gc1", &nss[1]);
    node.add(&conf, "gc2", &nss[2]);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": "eth0"}]);
    let out = node.cni("GC", &gc, "", "");
    assert!(out.ok, "{} {}", out.json, out.stderr);
    assert_eq!(node.veths().len(), 1);
    assert_eq!(node.ipam_files().iter().filter(|f| f.parse::<Ipv4Addr>().is_ok()).count(), 1);
    let eps = node.agent_endpoints();
    assert_eq!(eps.as_array().unwrap().len(), 1);
    assert_eq!(eps[0]["containerId"], "gc0");
    assert!(node.cni("CHECK", &with_prev(&conf, &keep), "gc0", &nss[0]).ok);
    // GC needs cniVersion 1.1.0.
    let mut old = node.conf("1.0.0");
    old["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(node.cni("GC", &old, "", "").json["code"], 1);
    assert!(node.cni("DEL", &conf, "gc0", &nss[0]).ok);
    node.assert_clean();
}

/// The node's IPv6 addresses and routes on `dev`.
fn ipv6_state(node: &Node, dev: &str) -> String {
    let addrs = node.ns.ip(&["-6", "addr", "show", "dev", dev]);
    let routes = node.ns.ip(&["-6", "route", "show", "dev", dev]);
    format!("{addrs}{routes}")
}

#[test]
fn router_advertisements_from_a_pod_never_configure_the_node() {
    let Some(mut node) = Node::new("cnira") else { return };
    let netns = node.pod("p1");
    let conf = node.conf("1.0.0");
    let res = node.add(&conf, "ra01", &netns);
    let host_if = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    let pod = format!("{}-p1", node.prefix);
    let prefix: std::net::Ipv6Addr = "2001:db8:1::".parse().unwrap();
    // The pod sends router advertisements: a prefix to autoconfigure, and itself as the
    // default router.
    let ra = router_advert(mac_of(node.pod_ns("p1"), "eth0"), 1800, prefix);
    for _ in 0..5 {
        inject_frame(&pod, "eth0", ra.clone());
    }
    // Control: the same advertisement over a veth without the plugin's settings (and no
    // datapath) configures the node.
    let ctl = node.pod("ctl");
    let ctl_if = format!("{}c", node.prefix);
    node.ns.ip(&["link", "add", &ctl_if, "type", "veth", "peer", "name", "eth0", "netns", &ctl]);
    node.ns.ip(&["link", "set", &ctl_if, "up"]);
    node.pod_ns("ctl").ip(&["link", "set", "eth0", "up"]);
    std::thread::sleep(Duration::from_millis(300));
    let ctl_ra = router_advert(mac_of(node.pod_ns("ctl"), "eth0"), 1800, prefix);
    let ctl_pod = format!("{}-ctl", node.prefix);
    let mut configured = String::new();
    for _ in 0..20 {
        inject_frame(&ctl_pod, "eth0", ctl_ra.clone());
        std::thread::sleep(Duration::from_millis(100));
        configured = ipv6_state(&node, &ctl_if);
        if configured.contains("2001:db8:1:") && configured.contains("default") {
            break;
        }
    }
    assert!(configured.contains("2001:db8:1:"), "control: the RA added no address: {configured}");
    assert!(configured.contains("default"), "control: the RA added no default route: {configured}");
    let state = ipv6_state(&node, &host_if);
    assert!(!state.contains("2001:db8") && !state.contains("default"), "a pod configured the node: {state}");
    assert!(!node.ns.ip(&["-6", "route"]).contains(&format!("dev {host_if}")));
    // No IPv6 on either end; CHECK verifies the settings and names one that drifted.
    assert!(node.pod_ns("p1").ip(&["-6", "addr", "show", "dev", "eth0"]).trim().is_empty());
    let check = node.cni("CHECK", &with_prev(&conf, &res), "ra01", &netns);
    assert!(check.ok, "CHECK: {} {}", check.json, check.stderr);
    node.ns.sysctl(&format!("net.ipv6.conf.{host_if}.accept_ra"), "1");
    let check = node.cni("CHECK", &with_prev(&conf, &res), "ra01", &netns);
    assert_eq!(check.json["code"], 100, "{}", check.json);
    assert!(check.json["msg"].as_str().unwrap().contains("accept_ra"), "{}", check.json);
    node.ns.ip(&["link", "del", &ctl_if]);
    assert!(node.cni("DEL", &conf, "ra01", &netns).ok);
    node.assert_clean();
}

#[test]
fn interface_names_with_url_characters_round_trip_and_the_socket_goes_with_the_agent() {
    let Some(mut node) = Node::new("cniurl") else { return };
    let netns = node.pod("p1");
    let conf = node.conf("1.0.0");
    let cni = env!("CARGO_BIN_EXE_netpol-cni");
    let call = Call { cid: "url01", netns: &netns, ifname: "e?x#1", args: "K8S_POD_NAMESPACE=default" };
    let add = node.exec(cni, "ADD", &conf, call);
    assert!(add.ok, "ADD: {} {}", add.json, add.stderr);
    let eps = node.agent_endpoints();
    assert_eq!(eps[0]["ifname"], "e?x#1", "{eps}");
    let check = node.exec(cni, "CHECK", &with_prev(&conf, &add.json), call);
    assert!(check.ok, "CHECK: {} {}", check.json, check.stderr);
    assert!(node.exec(cni, "DEL", &conf, call).ok);
    node.assert_clean();
    // The agent removes its socket file when it stops.
    let socket = node.socket();
    assert!(socket.exists());
    node.agent.take();
    assert!(!socket.exists(), "the stopped agent left {}", socket.display());
}

#[test]
fn a_second_network_with_an_overlapping_range_never_takes_a_live_address() {
    let Some(mut node) = Node::new("cniovl") else { return };
    let (ns1, ns2) = (node.pod("p1"), node.pod("p2"));
    let conf = node.conf("1.0.0");
    let first = node.add(&conf, "ovl01", &ns1);
    let ip = ip_of(&first);
    let route_before = node.ns.ip(&["-4", "route", "show", &format!("{ip}/32")]);
    // Another network, same range: its own IPAM hands out the same first address.
    let mut other = conf.clone();
    other["name"] = json!("othernet");
    let out = node.cni("ADD", &other, "ovl02", &ns2);
    assert!(!out.ok, "ADD on the overlapping network succeeded: {}", out.json);
    assert_eq!(out.json["code"], 102, "{}", out.json);
    assert!(out.json["msg"].as_str().unwrap().contains(&ip.to_string()), "{}", out.json);
    // The live pod keeps its route and its registration; the failed ADD left nothing.
    assert_eq!(node.ns.ip(&["-4", "route", "show", &format!("{ip}/32")]), route_before);
    assert_eq!(node.veths().len(), 1, "{:?}", node.veths());
    assert_eq!(node.agent_endpoints().as_array().map(Vec::len), Some(1));
    let other_ipam = node.dir.join("cni/networks/othernet");
    let leftovers: Vec<_> = std::fs::read_dir(&other_ipam).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let ping = node.ns.cmd("ping").args(["-c1", "-W2", &ip.to_string()]).output().unwrap();
    assert!(ping.status.success(), "the live pod no longer answers the node");
    assert!(node.cni("DEL", &other, "ovl02", &ns2).ok);
    assert!(node.cni("DEL", &conf, "ovl01", &ns1).ok);
    node.assert_clean();
}

#[test]
fn a_pod_the_agent_does_not_know_yet_is_held_closed_until_it_does() {
    let Some(mut node) = Node::new("cnihold") else { return };
    let (ns1, ns2, ns3) = (node.pod("p1"), node.pod("p2"), node.pod("p3"));
    let conf = node.conf("1.0.0");
    let cni = env!("CARGO_BIN_EXE_netpol-cni");
    let args = |name: &str| format!("K8S_POD_NAMESPACE=x;K8S_POD_NAME={name}");
    known_pods(&node, &[("x", "known"), ("x", "control")]);
    let add = |cid: &str, netns: &str, name: &str| {
        let r = node.exec(cni, "ADD", &conf, Call { cid, netns, ifname: "eth0", args: &args(name) });
        assert!(r.ok, "ADD {name}: {} {}", r.json, r.stderr);
        ip_of(&r.json)
    };
    let known = add("hold1", &ns1, "known");
    let late = add("hold2", &ns2, "late");
    add("hold3", &ns3, "control");
    let pods: Vec<String> = ["p1", "p2", "p3"].iter().map(|p| format!("{}-{p}", node.prefix)).collect();
    let _servers = [tcp_server(&pods[0], 80), tcp_server(&pods[1], 80)];
    let t = Duration::from_secs(2);
    let status = node.agent_endpoints();
    let late_status = status.as_array().unwrap().iter().find(|e| e["podName"] == "late").unwrap().clone();
    assert_eq!(
        (late_status["isolatedIngress"].clone(), late_status["isolatedEgress"].clone()),
        (json!(true), json!(true))
    );
    // Control: known pods talk; the unknown one is closed both ways, except to its node.
    assert!(tcp_probe(&pods[2], SocketAddrV4::new(known, 80), t), "control: known pods cannot talk");
    assert!(!tcp_probe(&pods[1], SocketAddrV4::new(known, 80), t), "the held pod's egress passed");
    assert!(!tcp_probe(&pods[2], SocketAddrV4::new(late, 80), t), "ingress to the held pod passed");
    let ping = node.ns.cmd("ping").args(["-c1", "-W2", &late.to_string()]).output().unwrap();
    assert!(ping.status.success(), "the node cannot reach the held pod");
    // Its pod arrives: it opens.
    known_pods(&node, &[("x", "late")]);
    assert!(tcp_probe(&pods[1], SocketAddrV4::new(known, 80), t), "still closed after its pod arrived");
    assert!(tcp_probe(&pods[2], SocketAddrV4::new(late, 80), t));
    for (cid, ns, name) in [("hold1", &ns1, "known"), ("hold2", &ns2, "late"), ("hold3", &ns3, "control")] {
        assert!(node.exec(cni, "DEL", &conf, Call { cid, netns: ns, ifname: "eth0", args: &args(name) }).ok);
    }
    node.assert_clean();
}
