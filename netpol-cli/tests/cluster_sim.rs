//! Two nodes of a cluster, simulated (root only): two node namespaces on one link, each with
//! its own agent process in Kubernetes mode (own pins, socket, state, socket-LB cgroup)
//! against one scripted API server; pods wired by the real `netpol-cni` as a runtime calls
//! it, their addresses posted back as the kubelet would. The lab's Tasks 2.2.1-2.2.5 run
//! across the nodes — frontend and not-frontend on node a, backend on node b — with the
//! lab's own policy files, so the agents' routes between the nodes, the remote pods'
//! identities and both sides' enforcement are what is tested. Midway node b's agent is
//! SIGKILLed and restarted under continuous probing: no allowed flow may fail, no denied
//! one may pass. Ends with the lab's expected-vs-observed table.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use netpol_agent::testing::TestCgroup;
use netpol_tests::{
    agent::AgentProcess,
    apiserver::ApiServer,
    cni::{self, Call},
    need_root,
    netns::NetNs,
    topology::Node,
    traffic::{tcp_probe, tcp_server, Server},
    RemoveOnDrop,
};
use serde::Deserialize;
use serde_json::{json, Value};

const A_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 3);
const A_PODS: &str = "10.246.1.0/24";
const B_PODS: &str = "10.246.2.0/24";
const CLUSTER: &str = "10.246.0.0/16";
const PROBE: Duration = Duration::from_millis(500);

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
    _cgroup: TestCgroup,
}

struct Sim {
    api: ApiServer,
    nodes: Vec<SimNode>,
    pods: Vec<(String, NetNs, Ipv4Addr)>,
    servers: Vec<Server>,
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
            nodes.push(SimNode { name, node, agent, _cgroup: cgroup });
        }
        let sim = Sim {
            api,
            nodes,
            pods: Vec::new(),
            servers: Vec::new(),
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
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Pending"}});
        self.api.apply(pod.clone());
        let netns = NetNs::new(&format!("csim-{name}"));
        let n = self.node(node);
        let conf = json!({"cniVersion": "1.0.0", "name": "sim", "type": "netpol-cni",
            "agentSocket": n.agent.socket(), "dataDir": n.agent.dir.join("cni")});
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        let call = Call { cid: &format!("cid-{name}"), netns: &netns.path(), ifname: "eth0", args: &args };
        let out = cni::exec(&bin("netpol-cni"), &n.node.ns, "ADD", &conf, call);
        assert!(out.ok, "CNI ADD {name}: {} {}", out.json, out.stderr);
        let ip: Ipv4Addr =
            out.json["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
        pod["status"] =
            json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]});
        self.api.apply(pod);
        self.pods.push((name.to_string(), netns, ip));
        ip
    }

    fn pod(&self, name: &str) -> &(String, NetNs, Ipv4Addr) {
        self.pods.iter().find(|p| p.0 == name).unwrap()
    }

    /// Whether `from` connects to `to`:8080.
    fn connects(&self, from: &str, to: &str) -> bool {
        tcp_probe(&self.pod(from).1.name, SocketAddrV4::new(self.pod(to).2, 8080), PROBE)
    }

    /// Waits (up to 5 s, the agents converging on a watch event) for `from` → `to` to be
    /// `want`, then records what was observed.
    fn check(&mut self, task: &str, from: &str, to: &str, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = self.connects(from, to);
        while got != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            got = self.connects(from, to);
        }
        let word = |c: bool| if c { "connected" } else { "blocked" }.to_string();
        self.outcomes.push((task.into(), format!("{from} -> {to}:8080"), word(want), word(got)));
    }

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
        self.servers.clear();
        for (name, netns, _) in std::mem::take(&mut self.pods) {
            if let Some(n) = self.nodes.iter().find(|n| {
                self.api.get("Pod", "default", &name).is_some_and(|p| p["spec"]["nodeName"] == n.name)
            }) {
                let conf = json!({"cniVersion": "1.0.0", "name": "sim", "type": "netpol-cni",
                    "agentSocket": n.agent.socket(), "dataDir": n.agent.dir.join("cni")});
                let call =
                    Call { cid: &format!("cid-{name}"), netns: &netns.path(), ifname: "eth0", args: "" };
                cni::exec(&bin("netpol-cni"), &n.node.ns, "DEL", &conf, call);
            }
        }
    }
}

/// Probes an allowed and a denied flow (new connections) about every 200 ms until stopped; counts the allowed ones
/// that failed and the denied ones that passed.
struct Watch {
    stop: Arc<AtomicBool>,
    allowed_failed: Arc<AtomicUsize>,
    denied_passed: Arc<AtomicUsize>,
    rounds: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(allowed: (String, SocketAddrV4), denied: (String, SocketAddrV4)) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let (af, dp, rounds) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, a, d, r) = (stop.clone(), af.clone(), dp.clone(), rounds.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if !tcp_probe(&allowed.0, allowed.1, Duration::from_secs(1)) {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                if tcp_probe(&denied.0, denied.1, Duration::from_millis(150)) {
                    d.fetch_add(1, Ordering::SeqCst);
                }
                r.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watch { stop, allowed_failed: af, denied_passed: dp, rounds, handle: Some(handle) }
    }

    fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap();
        (
            self.allowed_failed.load(Ordering::SeqCst),
            self.denied_passed.load(Ordering::SeqCst),
            self.rounds.load(Ordering::SeqCst),
        )
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

    // Task 2.2.2: no policy, both reach the backend on the other node.
    sim.check("2.2.2", "frontend", "backend", true);
    sim.check("2.2.2", "not-frontend", "backend", true);
    // Task 2.2.3/2.2.4: the backend denies all ingress.
    sim.apply_file("backend-ingress-deny.yaml");
    sim.check("2.2.4", "frontend", "backend", false);
    sim.check("2.2.4", "not-frontend", "backend", false);
    // Task 2.2.5: from the frontend only — which node b knows by the remote pod's identity.
    sim.apply_file("backend-allow-ingress-frontend.yaml");
    sim.check("2.2.5", "frontend", "backend", true);
    sim.check("2.2.5", "not-frontend", "backend", false);

    // Node b's agent dies and comes back while both flows are probed.
    let backend = SocketAddrV4::new(sim.pod("backend").2, 8080);
    let watch = Watch::start(
        (sim.pod("frontend").1.name.clone(), backend),
        (sim.pod("not-frontend").1.name.clone(), backend),
    );
    std::thread::sleep(Duration::from_millis(300));
    let b = sim.nodes.iter_mut().find(|n| n.name == "b").unwrap();
    b.agent.kill();
    std::thread::sleep(Duration::from_millis(500));
    b.agent.restart();
    std::thread::sleep(Duration::from_millis(1500));
    let (allowed_failed, denied_passed, rounds) = watch.finish();
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
    sim.check("2.2.5", "frontend", "backend", true);
    sim.check("2.2.5", "not-frontend", "backend", false);

    // Deleting both policies opens the backend again.
    for name in ["backend-allow-ingress-frontend", "backend-ingress-deny"] {
        assert!(sim.api.delete("NetworkPolicy", "default", name));
    }
    sim.check("2.2.5", "not-frontend", "backend", true);
    assert!(sim.report(), "mismatches between the lab's expectations and the simulation");
}
