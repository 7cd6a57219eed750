//! The DNS proxy and toFQDNs on the wire, in local mode (root): each test runs its own local
//! node with the lab's curl deployment and the simulated internet, and speaks real DNS,
//! HTTP and HTTPS from inside the pod — DNS rules filtering names (UDP and TCP, a truncated
//! answer's TCP retry, a NetworkPolicy's L4 allow adding every name), toFQDNs allowing what
//! answers taught (a CNAME chain; TTLs expiring, except under a held connection), 500
//! resolve-then-connect runs, and an agent SIGKILLed during lookups.

mod common;

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{leftovers, netpol, text, Node};
use netpol_tests::need_root;

/// Opens N TCP connections to the resolver's port 53 and holds them; then counts how many
/// the server closed, and asks NAME (type A) on the last one still open.
const HOLD_TCP: &str = r#"
import socket, struct, sys, time
n, name = int(sys.argv[1]), sys.argv[2]
server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
conns = [socket.create_connection((server, 53), timeout=5) for _ in range(n)]
time.sleep(1)
closed, open_ = 0, []
for c in conns:
    c.setblocking(False)
    try:
        closed += c.recv(1) == b""
    except BlockingIOError:
        open_.append(c)
    except ConnectionResetError:
        closed += 1
q = struct.pack(">HHHHHH", 0x4e50, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
c = open_[-1]
c.setblocking(True)
c.sendall(struct.pack(">H", len(q)) + q)
answer = c.recv(65535)
print(f"closed={closed} served={len(answer) > 2 and answer[2:4] == q[:2]}")
"#;

/// A local node with the lab's curl deployment; policies written to a scratch directory.
struct Lab {
    node: Option<Node>,
    root: &'static str,
    dir: PathBuf,
}

impl Lab {
    fn up(root: &'static str, cidr: &str) -> Lab {
        let node = Node::up(root, cidr);
        node.ok(&["apply", "-f", "curl-deployment.yaml"]);
        let dir = std::env::temp_dir().join(format!("netpol-{root}"));
        std::fs::create_dir_all(&dir).unwrap();
        Lab { node: Some(node), root, dir }
    }

    fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }

    /// Applies a CiliumNetworkPolicy `fqdn` for the curl pod: DNS to kube-dns for names
    /// matching `dns`, and HTTP/S to names matching `to` (toFQDNs matchPattern).
    fn policy(&self, dns: &str, to: &str) {
        let yaml = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: fqdn}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{app: curl-deployment}}}}\n  egress:\n\
             \x20 - toEndpoints:\n    - matchLabels:\n        k8s:io.kubernetes.pod.namespace: kube-system\n\
             \x20       k8s:k8s-app: kube-dns\n    toPorts:\n    - ports: [{{port: \"53\", protocol: ANY}}]\n\
             \x20     rules:\n        dns: [{{matchPattern: \"{dns}\"}}]\n\
             \x20 - toFQDNs: [{{matchPattern: \"{to}\"}}]\n    toPorts:\n\
             \x20   - ports: [{{port: \"80\", protocol: TCP}}, {{port: \"443\", protocol: TCP}}]\n"
        );
        let path = self.dir.join("fqdn.yaml");
        std::fs::write(&path, yaml).unwrap();
        self.node().ok(&["apply", "-f", &path.display().to_string()]);
    }

    fn exec_args<'a>(cmd: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["exec", "deploy/curl-deployment", "--"];
        args.extend(cmd);
        args
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        self.node().run(&Lab::exec_args(cmd))
    }

    /// An HTTP GET from the pod: whether it got a 200.
    fn get(&self, url: &str, timeout_s: &str) -> bool {
        let out = self.exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            timeout_s,
            url,
        ]);
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "200"
    }

    fn agent(&self, path: &str) -> String {
        let socket = PathBuf::from(format!("/run/netpol/{}.sock", self.root));
        let t = Duration::from_secs(5);
        let (status, body) =
            netpol_api::client::call(&socket, netpol_api::client::Method::GET, path, None, t).unwrap();
        assert!(status.is_success(), "{path}: {status}");
        String::from_utf8_lossy(&body).to_string()
    }

    fn agent_pid(&self) -> i32 {
        let rt = std::fs::read_to_string(format!("/var/lib/netpol/{}/runtime.json", self.root)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&rt).unwrap();
        v["agentPid"].as_i64().unwrap() as i32
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.node.take());
        let _ = std::fs::remove_dir_all(&self.dir);
        if !std::thread::panicking() {
            assert_eq!(leftovers(self.root), Vec::<String>::new());
        }
    }
}

/// DNS rules through the agent's proxy: the frontend's resolver asks kube-dns as before, but
/// only for the names its CiliumNetworkPolicy's DNS rule allows, over UDP and TCP; another
/// name is REFUSED by the proxy (never asked of kube-dns), with a drop event naming the
/// query, and the agent's metrics count both. The unselected pod is not proxied. A
/// NetworkPolicy allowing the same pod DNS at L4 adds every name (allows add up).
#[test]
fn dns_rules_let_a_pod_ask_only_their_names() {
    if need_root() {
        return;
    }
    let root = "test-dnsp";
    let node = Node::up(root, "10.244.206.0/24");
    let dir = std::env::temp_dir().join("netpol-test-dnsp");
    std::fs::create_dir_all(&dir).unwrap();
    node.ok(&["apply", "-f", "simple-app.yaml"]);
    let pod = |sel: &str| {
        node.ok(&["get", "pods", "-l", sel, "-o", "jsonpath={.items[0].metadata.name}"]).trim().to_string()
    };
    let (front, not_front) = (pod("app=frontend"), pod("app=not-frontend"));
    let resolves =
        |from: &str, name: &str| node.run(&["exec", from, "--", "getent", "hosts", name]).status.success();
    let (backend, kube_dns) = ("backend.default.svc.cluster.local", "kube-dns.kube-system.svc.cluster.local");
    assert!(resolves(&front, backend) && resolves(&front, kube_dns), "control: both names resolve");

    let file = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let policy = file(
        "dns.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: frontend-dns}\n\
         spec:\n  endpointSelector: {matchLabels: {app: frontend}}\n  egress:\n\
         \x20 - toEndpoints:\n    - matchLabels:\n        k8s:io.kubernetes.pod.namespace: kube-system\n\
         \x20       k8s:k8s-app: kube-dns\n    toPorts:\n    - ports: [{port: \"53\", protocol: ANY}]\n\
         \x20     rules:\n        dns: [{matchPattern: \"backend.*.svc.cluster.local\"}]\n",
    );
    node.ok(&["apply", "-f", &policy]);
    assert!(resolves(&front, backend), "an allowed name does not resolve through the proxy");
    assert!(resolves(&front, "BACKEND.default.svc.cluster.local."), "names match case-insensitively");
    assert!(!resolves(&front, kube_dns), "a name no DNS rule allows resolved");
    assert!(resolves(&not_front, kube_dns), "an unselected pod's DNS was filtered");
    let dig = |args: &[&str]| {
        let mut cmd = vec!["exec", front.as_str(), "--", "dig"];
        cmd.extend(args);
        node.ok(&cmd)
    };
    let tcp = dig(&["+tcp", backend]);
    assert!(tcp.contains("status: NOERROR") && tcp.contains("ANSWER: 1"), "DNS over TCP: {tcp}");
    assert!(dig(&["+tcp", kube_dns]).contains("status: REFUSED"), "a name refused over UDP passed over TCP");

    // Past 64 connections in flight, the proxy closes new ones; the held ones are served.
    let held = node.ok(&["exec", front.as_str(), "--", "python3", "-c", HOLD_TCP, "70", backend]);
    assert_eq!(held.trim(), "closed=6 served=True", "70 held DNS connections");

    let socket = PathBuf::from(format!("/run/netpol/{root}.sock"));
    let get = |path: &str| {
        let t = Duration::from_secs(5);
        let (status, body) =
            netpol_api::client::call(&socket, netpol_api::client::Method::GET, path, None, t).unwrap();
        assert!(status.is_success(), "{path}: {status}");
        String::from_utf8_lossy(&body).to_string()
    };
    let events = get(netpol_api::PATH_EVENTS);
    assert!(
        events.contains("drop-dns-refused") && events.contains(kube_dns),
        "no drop event naming the refused query: {events}"
    );
    let metrics = get(netpol_api::PATH_METRICS);
    for outcome in ["answered", "refused", "overloaded"] {
        let line = format!("netpol_dns_queries_total{{outcome=\"{outcome}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    // A NetworkPolicy allowing the frontend DNS at L4: every name is allowed again.
    let np = file(
        "np.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: frontend-dns-l4}\n\
         spec:\n  podSelector: {matchLabels: {app: frontend}}\n  policyTypes: [Egress]\n  egress:\n\
         \x20 - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n",
    );
    node.ok(&["apply", "-f", &np]);
    assert!(resolves(&front, kube_dns), "an L4 allow of DNS did not add every name");
    node.ok(&["delete", "netpol", "frontend-dns-l4"]);
    assert!(!resolves(&front, kube_dns));

    node.ok(&["delete", "cnp", "frontend-dns"]);
    assert!(resolves(&front, kube_dns), "the deleted policy still filters names");
    let _ = std::fs::remove_dir_all(&dir);
    drop(node);
    assert_eq!(leftovers(root), Vec::<String>::new());
}

/// toFQDNs allow what DNS answers taught through the proxy: every name of a CNAME chain in
/// one answer; a long answer's TCP retry; a name's addresses stop taking new connections
/// once its TTL passed and no connection uses them, but a connection held open past the TTL
/// keeps working.
#[test]
fn fqdn_rules_allow_what_answers_taught_until_their_ttl() {
    if need_root() {
        return;
    }
    let lab = Lab::up("test-fqdn", "10.244.209.0/24");
    assert!(lab.get("http://www.zhaw.ch/", "3"), "control: the internet answers");
    lab.policy("*", "*.example.net");
    assert!(!lab.get("http://www.zhaw.ch/", "2"), "a name no toFQDNs rule matches was reached");
    // cdn.example.net is a CNAME of edge.example.net: both are learned from one answer.
    assert!(lab.get("http://cdn.example.net/", "3"), "the CNAME chain's addresses are not allowed");
    assert!(lab.get("http://198.51.100.21/", "3"), "the chain's second address is not allowed");
    // Forty addresses: truncated over UDP, retried over TCP, through the proxy both times.
    let out = text(&lab.exec(&["dig", "+noedns", "many.example.net"]));
    assert!(out.contains("Truncated, retrying in TCP mode") && out.contains("ANSWER: 40"), "{out}");
    assert!(lab.get("http://203.0.113.139/", "3"), "the TCP answer's addresses are not allowed");

    // short-ttl.example.net lives 2 s. A connection opened right after the lookup and held
    // past the TTL keeps working; once it is closed (and its conntrack entry gone), the
    // address takes no new connections.
    let held = lab.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "15",
        "--rate",
        "10/m",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{num_connects}\\n",
        "http://short-ttl.example.net/",
        "http://short-ttl.example.net/",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&held.stdout).replace("\\n", "\n"),
        "200 1\n200 0\n",
        "the held connection was cut past the TTL: {}",
        text(&held)
    );
    // A closed connection's conntrack entry lives 10 s; a probe meanwhile would be a new
    // connection keeping the address in use, so one probe, after that.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        !lab.get("http://198.51.100.30/", "2"),
        "new connections still reach an address whose TTL passed"
    );
}

/// 500 lookups each followed at once by a connection to the answer's address (a 2 s TTL,
/// so addresses come and go meanwhile): none fails — an answer is released only once its
/// addresses are enforced.
#[test]
fn five_hundred_resolve_then_connect_runs_never_race() {
    if need_root() {
        return;
    }
    let lab = Lab::up("test-race", "10.244.210.0/24");
    lab.policy("*.example.net", "short-ttl.example.net");
    let script = "i=0; while [ $i -lt 500 ]; do \
                  curl -sS -o /dev/null --max-time 3 http://short-ttl.example.net/ || { echo \"run $i failed\"; exit 1; }; \
                  i=$((i+1)); done; echo done";
    let t = Instant::now();
    let out = lab.exec(&["sh", "-c", script]);
    assert!(out.status.success() && text(&out).contains("done"), "{}", text(&out));
    eprintln!("500 resolve-then-connect runs in {:?}", t.elapsed());
    let metrics = lab.agent(netpol_api::PATH_METRICS);
    assert!(!metrics.contains("outcome=\"failed\""), "a query failed:\n{metrics}");
    let events = lab.agent(netpol_api::PATH_EVENTS);
    assert!(!events.contains("drop-policy"), "a connection was dropped: {events}");
}

/// The agent SIGKILLed while the pod keeps looking names up: learned addresses stay allowed
/// (the pinned datapath enforces on), DNS for the proxy is dropped, never passed unfiltered;
/// once the agent is back it answers again and still knows what it learned.
#[test]
fn an_agent_killed_during_lookups_fails_closed_and_answers_again() {
    if need_root() {
        return;
    }
    let lab = Lab::up("test-dnskill", "10.244.211.0/24");
    lab.policy("songlaa.com", "songlaa.com");
    assert!(lab.get("https://songlaa.com/", "3"), "control: the allowed site answers");
    let lookups = Command::new(netpol())
        .args(["local", "--root", lab.root])
        .args(Lab::exec_args(&[
            "sh",
            "-c",
            "for i in $(seq 30); do timeout 1 getent hosts songlaa.com >/dev/null && echo ok || echo fail; sleep 0.1; done",
        ]))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(lab.agent_pid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.get("http://198.51.100.10/", "3"), "a learned address was cut while the agent was down");
    assert!(
        !lab.exec(&["timeout", "3", "getent", "hosts", "www.zhaw.ch"]).status.success(),
        "DNS passed unfiltered while the proxy was down"
    );
    let out = lookups.wait_with_output().unwrap();
    let results = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        results.contains("ok") && results.contains("fail"),
        "lookups before and during the outage: {results}"
    );

    lab.node().ok(&["up"]);
    assert!(
        netpol_tests::eventually(Duration::from_secs(10), || lab
            .exec(&["getent", "hosts", "songlaa.com"])
            .status
            .success()),
        "DNS is not answered again once the agent is back"
    );
    assert!(lab.get("http://198.51.100.10/", "3"), "the restarted agent forgot what it learned");
    let queries = lab.node().ok(&["internet", "queries"]);
    assert!(!queries.contains("www.zhaw.ch"), "a refused name reached the internet: {queries}");
}
