//! Two nodes of a cluster, simulated (root only): two node namespaces on one link, each with
//! its own agent process in Kubernetes mode (own pins, socket, state, socket-LB cgroup)
//! against one scripted API server; pods wired by the real `netpol-cni` as a runtime calls
//! it, their addresses posted back as the kubelet would, and EndpointSlices written as the
//! controller would. kube-dns runs on node a (the built-in DNS server, reading its agent's
//! Service names) behind its ClusterIP; each node also has kube-proxy-style iptables DNAT
//! rules for the Services. The lab's Tasks 2.2.1-2.2.5 run across the nodes — frontend and
//! not-frontend on node a, backend on node b — as the lab writes them: `curl -I
//! --connect-timeout 5 backend:8080` resolved by the cluster's DNS, translated at the
//! socket, routed to the other node, judged on both; with the lab's own policy files.
//! Midway node b's agent is SIGKILLed and restarted under continuous probing: no allowed
//! flow may fail, no denied one may pass. Task 2.2.6 runs too, then Task 2.2.7 (the lab's
//! CiliumNetworkPolicies from the API server; the sites on a simulated internet behind node
//! a, names through node a's DNS proxy). Ends with the lab's expected-vs-observed table.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use netpol_agent::testing::TestCgroup;
use netpol_tests::{
    agent::AgentProcess,
    apiserver::ApiServer,
    cni::{self, Call},
    need_root,
    netns::NetNs,
    objects, settle, spawn_ready,
    topology::Node,
    traffic::{tcp_probe, tcp_server, Prober, Server},
    RemoveOnDrop,
};
use serde::Deserialize;
use serde_json::{json, Value};

const A_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 3);
const A_PODS: &str = "10.246.1.0/24";
const B_PODS: &str = "10.246.2.0/24";
const CLUSTER: &str = "10.246.0.0/16";
const KUBE_DNS: &str = "10.97.0.10";
const BACKEND_SVC: &str = "10.97.0.20";
const MARIADB_SVC: &str = "10.97.0.30";
const PROBE: Duration = Duration::from_millis(500);
/// The simulated internet: its DNS server and the lab's two sites.
const INTERNET_DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
const SONGLAA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const ZHAW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_netpol")).parent().unwrap().join(name)
}

/// The lab's file as API objects in `default`.
fn lab_file(name: &str) -> Vec<Value> {
    let path = format!("{}/../examples/lab/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|mut v| {
            if v["metadata"]["namespace"].is_null() {
                v["metadata"]["namespace"] = json!("default");
            }
            v
        })
        .collect()
}

/// One simulated node: its namespace, its agent, its socket-LB cgroup.
struct SimNode {
    name: &'static str,
    node: Node,
    agent: AgentProcess,
    cgroup: TestCgroup,
}

struct Sim {
    api: ApiServer,
    nodes: Vec<SimNode>,
    pods: Vec<(String, NetNs, Ipv4Addr)>,
    servers: Vec<Server>,
    /// The DNS server of the kube-dns pod.
    dns: Option<std::process::Child>,
    /// The simulated internet's server and namespace.
    internet: Option<(std::process::Child, NetNs)>,
    outcomes: Vec<(String, String, String, String)>,
    _files: RemoveOnDrop,
}

impl Sim {
    fn new() -> Sim {
        let a = Node::new("csima", A_IP);
        let b = Node::new("csimb", B_IP);
        a.ns.ip(&["link", "add", "csima-l", "type", "veth", "peer", "name", "csimb-l", "netns", &b.ns.name]);
        a.ns.ip(&["addr", "add", &format!("{A_IP}/24"), "dev", "csima-l"]);
        b.ns.ip(&["addr", "add", &format!("{B_IP}/24"), "dev", "csimb-l"]);
        a.ns.ip(&["link", "set", "csima-l", "up"]);
        b.ns.ip(&["link", "set", "csimb-l", "up"]);
        // The API server lives on node a's address; node b reaches it over the link.
        let api = {
            let _in_a = a.ns.enter();
            ApiServer::start(SocketAddr::V4(SocketAddrV4::new(A_IP, 0)))
        };
        let dir = std::env::temp_dir().join("netpol-test-cluster-sim");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        api.kubeconfig(&kubeconfig);
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}}}));
        for (name, ip, cidr) in [("a", A_IP, A_PODS), ("b", B_IP, B_PODS)] {
            api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}}));
        }
        let mut nodes = Vec::new();
        for (name, node) in [("a", a), ("b", b)] {
            let cgroup = TestCgroup::new(&format!("csim{name}"));
            let args = [
                "--source",
                "kubernetes",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--node-name",
                name,
                "--cgroup",
                cgroup.path().to_str().unwrap(),
                "--cluster-cidr",
                CLUSTER,
            ];
            let agent =
                AgentProcess::start_with(&bin("netpol-agent"), &node.ns, &format!("csim{name}"), &args);
            nodes.push(SimNode { name, node, agent, cgroup });
        }
        let sim = Sim {
            api,
            nodes,
            pods: Vec::new(),
            servers: Vec::new(),
            dns: None,
            internet: None,
            outcomes: Vec::new(),
            _files: RemoveOnDrop(vec![dir]),
        };
        for n in &sim.nodes {
            sim.wait_for_pod_cidr(n);
        }
        sim
    }

    fn wait_for_pod_cidr(&self, n: &SimNode) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let node = n.agent.try_api("GET", "/v1/node", None).unwrap_or_default();
            if node.contains("podCidr") && !node.contains("\"podCidr\":null") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent {} never learnt its Node's podCIDR", n.name);
    }

    fn node(&self, name: &str) -> &SimNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// The kubelet's part: the Pod object first, then the sandbox wired by netpol-cni on
    /// its node, then its address posted.
    fn run_pod(&mut self, name: &str, app: &str, node: &str) -> Ipv4Addr {
        self.run_pod_in("default", name, ("app", app), node)
    }

    fn run_pod_in(&mut self, ns: &str, name: &str, label: (&str, &str), node: &str) -> Ipv4Addr {
        let ip = self.start_pod(ns, name, label, node);
        self.post_address(ns, name);
        ip
    }

    /// The Pod object, then its sandbox wired by netpol-cni (with the UID the kubelet
    /// passes); its address not posted yet.
    fn start_pod(&mut self, ns: &str, name: &str, label: (&str, &str), node: &str) -> Ipv4Addr {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {label.0: label.1}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Pending"}});
        self.api.apply(pod);
        let uid = self.api.get("Pod", ns, name).unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
        let netns = NetNs::new(&format!("csim-{name}"));
        let out = self.cni(
            node,
            "ADD",
            name,
            &netns,
            &format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}"),
        );
        assert!(out.ok, "CNI ADD {name}: {} {}", out.json, out.stderr);
        let ip: Ipv4Addr =
            out.json["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
        self.pods.push((name.to_string(), netns, ip));
        ip
    }

    /// The kubelet posts the pod's address.
    fn post_address(&self, ns: &str, name: &str) {
        let ip = self.pod(name).2.to_string();
        let mut pod = self.api.get("Pod", ns, name).unwrap();
        pod["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]});
        self.api.apply(pod);
    }

    /// netpol-cni called on `node` as the runtime calls it.
    fn cni(&self, node: &str, command: &str, pod: &str, netns: &NetNs, args: &str) -> cni::Out {
        let n = self.node(node);
        let conf = json!({"cniVersion": "1.0.0", "name": "sim", "type": "netpol-cni",
            "agentSocket": n.agent.socket(), "dataDir": n.agent.dir.join("cni")});
        let args = format!("IgnoreUnknown=1;{args}");
        let call = Call { cid: &format!("cid-{pod}"), netns: &netns.path(), ifname: "eth0", args: &args };
        cni::exec(&bin("netpol-cni"), &n.node.ns, command, &conf, call)
    }

    /// Waits (up to 5 s) for the metric `name` (a gauge) of `node`'s agent to read `want`,
    /// then records what was observed.
    fn check_metric(&mut self, task: &str, node: &str, name: &str, want: &str) {
        let read = || {
            let text = self.node(node).agent.try_api("GET", "/metrics", None).unwrap_or_default();
            let line = text.lines().find(|l| l.split(' ').next() == Some(name)).map(str::to_string);
            line.and_then(|l| l.split(' ').nth(1).map(str::to_string)).unwrap_or_else(|| "absent".into())
        };
        let got = settle(Duration::from_secs(5), Duration::from_millis(50), read, &want.to_string());
        self.outcomes.push((task.into(), format!("node {node}: {name}"), want.into(), got));
    }

    /// Waits (up to 5 s) for the announcement of `pod` at `ip` to be `want` (its node, or
    /// gone), then records what was observed.
    fn check_announced(&mut self, task: &str, pod: &str, ip: Ipv4Addr, want: Option<&str>) {
        let node = || {
            let ep = self.api.get("NetpolEndpoint", "default", pod)?;
            (ep["spec"]["ipv4"] == ip.to_string()).then(|| ep["spec"]["nodeName"].clone())
        };
        let wanted = want.map(|n| json!(n));
        let got = settle(Duration::from_secs(5), Duration::from_millis(50), node, &wanted);
        let word =
            |n: Option<Value>| n.map_or("none".to_string(), |n| format!("node {}", n.as_str().unwrap()));
        self.outcomes.push((task.into(), format!("{pod} announced"), word(wanted), word(got)));
    }

    /// A Service on `ip` for pods labelled `app`, its EndpointSlice as the controller writes
    /// it, and kube-proxy's DNAT rules for it on every node (which the socket hooks make
    /// moot: they translate before a packet exists).
    fn service(&self, ns: &str, name: &str, ip: &str, selector: (&str, &str), port: u16, protocols: &[&str]) {
        let ports: Vec<Value> = protocols
            .iter()
            .map(|p| json!({"name": p.to_lowercase(), "port": port, "protocol": p, "targetPort": port}))
            .collect();
        let svc = objects::service(ns, name, ip, json!({selector.0: selector.1}), json!(ports));
        self.api.apply(svc.json());
        let backends: Vec<String> = self
            .pods
            .iter()
            .filter(|(pod, _, _)| {
                self.api
                    .get("Pod", ns, pod)
                    .is_some_and(|p| p["metadata"]["labels"][selector.0] == selector.1)
            })
            .map(|(_, _, ip)| ip.to_string())
            .collect();
        let slice_ports: Vec<Value> = protocols
            .iter()
            .map(|p| json!({"name": p.to_lowercase(), "port": port, "protocol": p}))
            .collect();
        let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
        let slice = objects::endpoint_slice(ns, &format!("{name}-sim"), name, json!(slice_ports), &refs);
        self.api.apply(slice.json());
        for n in &self.nodes {
            for p in protocols {
                for chain in ["PREROUTING", "OUTPUT"] {
                    let proto = p.to_lowercase();
                    let to = format!("{}:{port}", backends[0]);
                    let rule =
                        ["-t", "nat", "-A", chain, "-d", ip, "-p", &proto, "--dport", &port.to_string()];
                    let ok = n
                        .node
                        .ns
                        .cmd("iptables")
                        .args(rule)
                        .args(["-j", "DNAT", "--to-destination", &to])
                        .status();
                    assert!(ok.unwrap().success(), "kube-proxy's rule for {name}");
                }
            }
        }
    }

    /// kube-dns on node a: a pod running the built-in DNS server (it reads node a's agent),
    /// its Service, and every client pod's resolv.conf pointing at it.
    fn cluster_dns(&mut self) {
        self.api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "kube-system", "labels": {"kubernetes.io/metadata.name": "kube-system"}}}));
        self.run_pod_in("kube-system", "coredns", ("k8s-app", "kube-dns"), "a");
        let netns = self.pod("coredns").1.name.clone();
        let mut server = std::process::Command::new("ip");
        server.args(["netns", "exec", &netns, env!("CARGO_BIN_EXE_netpol"), "responder", "--node", "csim"]);
        server
            .args(["--pod", "kube-system/coredns", "--dns", "53", "--agent"])
            .arg(self.node("a").agent.socket())
            .args(["--upstream", &format!("{INTERNET_DNS}:53")]);
        self.dns = Some(spawn_ready(&mut server));
        self.service("kube-system", "kube-dns", KUBE_DNS, ("k8s-app", "kube-dns"), 53, &["UDP", "TCP"]);
    }

    /// The simulated internet (`netpol internet-server`) in a namespace of its own behind
    /// node a: the lab's sites and its DNS server, reached by node a's pods through the
    /// node (masqueraded, as the agent masquerades what leaves the cluster's range).
    fn internet(&mut self) {
        let inet = NetNs::new("csim-inet");
        let a = &self.node("a").node.ns;
        a.ip(&["link", "add", "csima-i", "type", "veth", "peer", "name", "eth0", "netns", &inet.name]);
        a.ip(&["addr", "add", "169.254.100.1/30", "dev", "csima-i"]);
        a.ip(&["link", "set", "csima-i", "up"]);
        for range in ["198.51.100.0/24", "203.0.113.0/24"] {
            a.ip(&["route", "add", range, "via", "169.254.100.2"]);
        }
        inet.ip(&["addr", "add", "169.254.100.2/30", "dev", "eth0"]);
        for ip in [SONGLAA, ZHAW, INTERNET_DNS] {
            inet.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        }
        inet.ip(&["link", "set", "eth0", "up"]);
        inet.ip(&["link", "set", "lo", "up"]);
        inet.ip(&["route", "add", "default", "via", "169.254.100.1"]);
        let dir = self._files.0[0].join("internet");
        let mut server = std::process::Command::new("ip");
        server.args(["netns", "exec", &inet.name, env!("CARGO_BIN_EXE_netpol"), "internet-server"]);
        server.args(["--node", "csim", "--dir"]).arg(&dir);
        self.internet = Some((spawn_ready(&mut server), inet));
    }

    /// The resolver files the kubelet writes for a pod in `default`.
    fn resolv_conf(&mut self, pod: &str) {
        self.resolv_conf_ndots(pod, 5);
    }

    /// The same, with the pod's `dnsConfig` option `ndots`.
    fn resolv_conf_ndots(&mut self, pod: &str, ndots: u8) {
        let dir = Path::new("/etc/netns").join(&self.pod(pod).1.name);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = format!("nameserver {KUBE_DNS}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:{ndots} timeout:1 attempts:1\n");
        std::fs::write(dir.join("resolv.conf"), conf).unwrap();
        std::fs::write(dir.join("hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        self._files.0.push(dir);
    }

    /// `kubectl exec POD -- curl -I --connect-timeout 5 backend:8080` (2 s here), in the
    /// pod's namespace and its node's cgroup: HTTP 200, or curl's exit code. `--max-time`
    /// too: a connection made just before a deny lands is revoked mid-exchange (its
    /// replies dropped), and curl would otherwise wait for them forever.
    fn curl(&self, pod: &str, node: &str, url: &str) -> String {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.pod(pod).1.name, "curl", "-sSI", "--connect-timeout", "2"]);
        cmd.args(["--max-time", "4", url]);
        self.node(node).cgroup.adopt(&mut cmd);
        let out = cmd.output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("200 OK") {
            "HTTP 200".into()
        } else if out.status.code() == Some(28) {
            "timed out".into()
        } else {
            format!("exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr).trim())
        }
    }

    /// Waits (up to 8 s) for the lab's curl from `pod` (on `node`) to give `want`.
    fn check_curl(&mut self, task: &str, pod: &str, node: &str, want: &str) {
        self.check_url(task, pod, node, "backend:8080", want);
    }

    /// Waits (up to 8 s) for `curl -I URL` from `pod` (on `node`) to give `want`.
    fn check_url(&mut self, task: &str, pod: &str, node: &str, url: &str, want: &str) {
        let every = Duration::from_millis(200);
        let got = settle(Duration::from_secs(8), every, || self.curl(pod, node, url), &want.to_string());
        self.outcomes.push((task.into(), format!("curl {pod} -> {url}"), want.into(), got));
    }

    fn pod(&self, name: &str) -> &(String, NetNs, Ipv4Addr) {
        self.pods.iter().find(|p| p.0 == name).unwrap()
    }

    /// Whether `from` connects to `to`:`port`.
    fn connects(&self, from: &str, to: &str, port: u16) -> bool {
        tcp_probe(&self.pod(from).1.name, SocketAddrV4::new(self.pod(to).2, port), PROBE)
    }

    /// Waits (up to 5 s, the agents converging on a watch event) for `from` → `to`:`port`
    /// to be `want`, then records what was observed.
    fn check(&mut self, task: &str, from: &str, to: &str, port: u16, want: bool) {
        let got = settle(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || self.connects(from, to, port),
            &want,
        );
        let word = |c: bool| if c { "connected" } else { "blocked" }.to_string();
        self.outcomes.push((task.into(), format!("{from} -> {to}:{port}"), word(want), word(got)));
    }

    /// `getent hosts NAME` in `pod` (on `node`) through the cluster's DNS.
    fn check_resolves(&mut self, task: &str, pod: &str, node: &str, name: &str, want: bool) {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.pod(pod).1.name, "getent", "hosts", name]);
        self.node(node).cgroup.adopt(&mut cmd);
        let out = cmd.output().unwrap();
        let word = |ok: bool| if ok { "resolved" } else { "unresolved" }.to_string();
        self.outcomes.push((
            task.into(),
            format!("{pod} resolves {name}"),
            word(want),
            word(out.status.success()),
        ));
    }

    /// The NetworkPolicies of one of the lab's files.
    fn apply_file(&self, file: &str) {
        for o in lab_file(file) {
            if o["kind"] == "NetworkPolicy" {
                self.api.apply(o);
            }
        }
    }

    /// Prints the table; whether everything matched.
    fn report(&self) -> bool {
        println!("{:<6} {:<34} {:<10} {:<10} result", "task", "check", "expected", "observed");
        for (task, what, want, got) in &self.outcomes {
            let verdict = if want == got { "ok" } else { "MISMATCH" };
            println!("{task:<6} {what:<34} {want:<10} {got:<10} {verdict}");
        }
        self.outcomes.iter().all(|(_, _, w, g)| w == g)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some((mut server, _ns)) = self.internet.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        self.servers.clear();
        if let Some(mut dns) = self.dns.take() {
            let _ = dns.kill();
            let _ = dns.wait();
        }
        for (name, netns, _) in std::mem::take(&mut self.pods) {
            // (Every pod of the simulation is in one of these namespaces.)
            if let Some(n) = self.nodes.iter().find(|n| {
                ["default", "kube-system", "ingress-haproxy"]
                    .iter()
                    .any(|ns| self.api.get("Pod", ns, &name).is_some_and(|p| p["spec"]["nodeName"] == n.name))
            }) {
                self.cni(n.name, "DEL", &name, &netns, "");
            }
        }
        // The pods' resolver files, then their parent if nothing else is left in it.
        for path in &self._files.0 {
            let _ = std::fs::remove_dir_all(path);
        }
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

#[test]
fn the_lab_across_two_nodes_with_an_agent_killed_midway() {
    if need_root() {
        return;
    }
    let mut sim = Sim::new();
    sim.run_pod("frontend", "frontend", "a");
    sim.run_pod("not-frontend", "not-frontend", "a");
    sim.run_pod("backend", "backend", "b");
    sim.servers.push(tcp_server(&sim.pod("backend").1.name, 8080));
    // The internet first: the cluster's DNS forwards outside names there (an upstream that
    // does not answer would stall every search-list lookup).
    sim.internet();
    sim.cluster_dns();
    sim.service("default", "backend", BACKEND_SVC, ("app", "backend"), 8080, &["TCP"]);
    sim.resolv_conf("frontend");
    sim.resolv_conf("not-frontend");

    // Task 2.2.2: no policy, both reach the backend on the other node, by name.
    sim.check_curl("2.2.2", "frontend", "a", "HTTP 200");
    sim.check_curl("2.2.2", "not-frontend", "a", "HTTP 200");
    // Task 2.2.3/2.2.4: the backend denies all ingress.
    sim.apply_file("backend-ingress-deny.yaml");
    sim.check_curl("2.2.4", "frontend", "a", "timed out");
    sim.check_curl("2.2.4", "not-frontend", "a", "timed out");
    // Task 2.2.5: from the frontend only — which node b knows by the remote pod's identity.
    sim.apply_file("backend-allow-ingress-frontend.yaml");
    sim.check_curl("2.2.5", "frontend", "a", "HTTP 200");
    sim.check_curl("2.2.5", "not-frontend", "a", "timed out");

    // New pods before the kubelet posts their addresses: node b knows them from node a's
    // announcements, so a new frontend is let in from its first connection (it would be
    // "world" and dropped otherwise), a new not-frontend is not.
    let new_ip = sim.start_pod("default", "frontend-new", ("app", "frontend"), "a");
    sim.start_pod("default", "not-frontend-new", ("app", "not-frontend"), "a");
    sim.check_announced("early", "frontend-new", new_ip, Some("a"));
    sim.check("early", "frontend-new", "backend", 8080, true);
    sim.check("early", "not-frontend-new", "backend", 8080, false);
    sim.check_metric("early", "b", "netpol_pods_announced_only", "2");
    sim.post_address("default", "frontend-new");
    sim.check_metric("early", "b", "netpol_pods_announced_only", "1");
    sim.check("early", "frontend-new", "backend", 8080, true);
    // CNI DEL withdraws the announcement.
    let gone = sim.pods.iter().position(|p| p.0 == "not-frontend-new").unwrap();
    let (name, netns, ip) = sim.pods.remove(gone);
    sim.check_announced("early", &name, ip, Some("a"));
    assert!(sim.cni("a", "DEL", &name, &netns, "").ok, "CNI DEL {name}");
    sim.check_announced("early", &name, ip, None);

    // Node b's agent dies and comes back while both flows are probed.
    let backend = SocketAddrV4::new(sim.pod("backend").2, 8080);
    let watch = Prober::start(
        vec![(sim.pod("frontend").1.name.clone(), backend)],
        vec![(sim.pod("not-frontend").1.name.clone(), backend)],
        (Duration::from_secs(1), Duration::from_millis(150)),
    );
    std::thread::sleep(Duration::from_millis(300));
    let b = sim.nodes.iter_mut().find(|n| n.name == "b").unwrap();
    b.agent.kill();
    std::thread::sleep(Duration::from_millis(500));
    b.agent.restart();
    std::thread::sleep(Duration::from_millis(1500));
    let (rounds, allowed_failed, denied_passed) = watch.finish();
    let restart = |n: usize| if n == 0 { "none".to_string() } else { n.to_string() };
    sim.outcomes.push((
        "kill".into(),
        format!("allowed flows failed ({rounds} rounds)"),
        "none".into(),
        restart(allowed_failed),
    ));
    sim.outcomes.push((
        "kill".into(),
        format!("denied flows passed ({rounds} rounds)"),
        "none".into(),
        restart(denied_passed),
    ));
    sim.check("2.2.5", "frontend", "backend", 8080, true);
    sim.check("2.2.5", "not-frontend", "backend", 8080, false);
    // The lab deletes both policies: the backend is open again.
    for name in ["backend-allow-ingress-frontend", "backend-ingress-deny"] {
        assert!(sim.api.delete("NetworkPolicy", "default", name));
    }
    sim.check("2.2.5", "not-frontend", "backend", 8080, true);

    // Task 2.2.6 across the nodes: the example frontend and the ingress on node a, MariaDB
    // and the webshell on node b.
    sim.api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ingress-haproxy",
        "labels": {"app": "ingress-haproxy", "kubernetes.io/metadata.name": "ingress-haproxy"}}}));
    sim.run_pod("example-frontend", "example-frontend", "a");
    sim.run_pod_in("ingress-haproxy", "ingress", ("app.kubernetes.io/name", "haproxy-ingress"), "a");
    sim.run_pod("mariadb", "mariadb", "b");
    sim.run_pod_in("default", "webshell", ("app.kubernetes.io/name", "webshell"), "b");
    for (pod, port) in [("example-frontend", 5000), ("mariadb", 3306), ("webshell", 7681)] {
        sim.servers.push(tcp_server(&sim.pod(pod).1.name, port));
    }
    sim.service("default", "mariadb", MARIADB_SVC, ("app", "mariadb"), 3306, &["TCP"]);
    sim.resolv_conf("example-frontend");
    sim.check("2.2.6", "example-frontend", "mariadb", 3306, true);
    sim.apply_file("deny-netpol.yaml");
    sim.check("2.2.6", "example-frontend", "mariadb", 3306, false);
    // Names still resolve: allow-dns lets the namespace's pods ask kube-dns on node a.
    sim.check_resolves("2.2.6", "example-frontend", "a", "mariadb", true);
    // Control: egress still denied but allow-dns gone, names do not resolve (then it is back).
    sim.api.apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-egress", "namespace": "default"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}));
    assert!(sim.api.delete("NetworkPolicy", "default", "allow-dns"));
    std::thread::sleep(Duration::from_millis(500));
    sim.check_resolves("2.2.6", "example-frontend", "a", "mariadb", false);
    sim.apply_file("deny-netpol.yaml");
    assert!(sim.api.delete("NetworkPolicy", "default", "deny-egress"));
    std::thread::sleep(Duration::from_millis(500));
    sim.check_resolves("2.2.6", "example-frontend", "a", "mariadb", true);
    sim.check("2.2.6", "ingress", "webshell", 7681, true);
    sim.check("2.2.6", "example-frontend", "webshell", 7681, false);
    sim.apply_file("frontend-netpol.yaml");
    sim.check("2.2.6", "example-frontend", "mariadb", 3306, true);
    sim.check("2.2.6", "ingress", "example-frontend", 5000, true);
    sim.check("2.2.6", "webshell", "mariadb", 3306, false);

    // Task 2.2.7 from the API server: the lab's curl deployment on node a (ndots 1, as the
    // lab's dnsConfig), its CiliumNetworkPolicies as the lab's files have them; the sites
    // on the simulated internet behind node a, names through node a's DNS proxy.
    // With Task 2.2.6's policies gone: the task assumes none.
    for o in lab_file("deny-netpol.yaml").into_iter().chain(lab_file("frontend-netpol.yaml")) {
        if o["kind"] == "NetworkPolicy" {
            sim.api.delete("NetworkPolicy", "default", o["metadata"]["name"].as_str().unwrap());
        }
    }
    sim.run_pod("curl", "curl-deployment", "a");
    sim.resolv_conf_ndots("curl", 1);
    let (zhaw, songlaa) = ("http://www.zhaw.ch", "http://songlaa.com");
    sim.check_url("2.2.7", "curl", "a", zhaw, "HTTP 200");
    sim.check_url("2.2.7", "curl", "a", songlaa, "HTTP 200");
    let cnp = |file: &str| lab_file(file).into_iter().find(|o| o["kind"] == "CiliumNetworkPolicy").unwrap();
    sim.api.apply(cnp("songlaa-cnp.yaml"));
    sim.check_url("2.2.7", "curl", "a", songlaa, "HTTP 200");
    sim.check_url("2.2.7", "curl", "a", zhaw, "timed out");
    sim.check_resolves("2.2.7", "curl", "a", "www.zhaw.ch", true);
    sim.api.apply(cnp("songlaa-dns-cnp.yaml"));
    std::thread::sleep(Duration::from_millis(500));
    sim.check_url("2.2.7", "curl", "a", songlaa, "HTTP 200");
    sim.check_resolves("2.2.7", "curl", "a", "www.zhaw.ch", false);
    assert!(sim.api.delete("CiliumNetworkPolicy", "default", "songlaa"));
    sim.check_url("2.2.7", "curl", "a", zhaw, "HTTP 200");
    assert!(sim.report(), "mismatches between the lab's expectations and the simulation");
}
