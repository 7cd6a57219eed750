//! The local cluster's DNS on the wire (root only): the DNS responder (`netpol responder
//! --dns`) in a kube-dns pod behind the kube-dns ClusterIP, reached through the socket hooks
//! from a client pod — a musl-style query (reply accepted only from the ClusterIP), DNS over
//! TCP, and glibc's resolver with the pod's resolv.conf.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Command, Stdio},
};

use netpol_agent::{
    controller::Settings,
    datapath::Config,
    testing::{PinnedDatapath, TestAgent, TestCgroup},
};
use netpol_tests::{
    need_root, objects,
    sockclient::{sock_client, Mode},
    topology::Node,
    RemoveOnDrop,
};
use serde_json::json;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 61, 255, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 2);
const DNS_POD: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 3);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 4);
const KUBE_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_SVC: &str = "10.96.0.20";

/// Removes a directory on drop if it is empty (one the test may have created).
struct IfEmpty(&'static str);

impl Drop for IfEmpty {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0);
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn service_names_resolve_through_the_kube_dns_cluster_ip() {
    if need_root() {
        return;
    }
    let mut node = Node::new("dnse2e", NODE_IP);
    for (name, ip) in [("client", CLIENT), ("dns", DNS_POD), ("web", WEB)] {
        node.add_pod(name, ip);
    }
    let cgroup = TestCgroup::new("dnse2e");
    let cfg = Config { name: "test-dnse2e".into(), ..Default::default() };
    let _pins = PinnedDatapath::guard(cfg.clone());
    let dir = std::env::temp_dir().join("netpol-test-dnse2e");
    let _ = std::fs::remove_dir_all(&dir);
    let _etc_netns = IfEmpty("/etc/netns");
    let client_etc = std::path::PathBuf::from("/etc/netns").join(&node.pod("client").ns.name);
    let _cleanup = RemoveOnDrop(vec![dir.clone(), client_etc.clone()]);
    let socket = dir.join("agent.sock");
    let settings = Settings {
        cgroup: Some(cgroup.path().to_path_buf()),
        ..Settings::new(dir.join("state"), "n1", true)
    };
    // The agent's threads, and this one (interfaces are named in it), in the node.
    let _inside = node.ns.enter();
    let mut agent = TestAgent::start(&cfg, &settings);
    agent.serve(&socket);
    let pods = [("default", "client", CLIENT), ("kube-system", "dns", DNS_POD), ("default", "web", WEB)];
    for (ns, name, ip) in pods {
        let pod = node.pod(name);
        agent.register_pod(ns, name, ip, &pod.ns.path(), &pod.host_if);
    }
    let dns_pod = objects::pod("kube-system", "dns", Some(DNS_POD)).label("k8s-app", "kube-dns").set(
        "spec.containers",
        json!([{"name": "coredns", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                             {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}]}]),
    );
    let kube_dns = objects::service(
        "kube-system",
        "kube-dns",
        &KUBE_DNS.to_string(),
        json!({"k8s-app": "kube-dns"}),
        json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"}]),
    );
    let web_svc = objects::service("default", "web", WEB_SVC, json!({"app": "web"}), json!([{"port": 80}]));
    let headless =
        objects::service("default", "web-pods", "None", json!({"app": "web"}), json!([{"port": 80}]));
    let objs = vec![
        objects::namespace("kube-system").json(),
        objects::pod("default", "client", Some(CLIENT)).json(),
        objects::pod("default", "web", Some(WEB)).json(),
        dns_pod.json(),
        kube_dns.json(),
        web_svc.json(),
        headless.json(),
    ];
    let results = agent.agent().apply_objects(objs).unwrap();
    assert!(results.iter().all(|r| r.error.is_none()), "{results:?}");

    // The DNS server in the kube-dns pod, reading the Services from the agent.
    let mut server = node.pod("dns").ns.cmd(env!("CARGO_BIN_EXE_netpol"));
    server.args(["responder", "--node", "dnse2e", "--pod", "dns", "--dns", "53", "--agent"]).arg(&socket);
    let mut server = Killed(server.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let mut line = String::new();
    BufReader::new(server.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let client = &node.pod("client").ns;
    let in_cgroup = |c: &mut Command| {
        cgroup.adopt(c);
    };
    let to = SocketAddrV4::new(KUBE_DNS, 53);
    let got = sock_client(client, in_cgroup, Mode::Dns("web.default.svc.cluster.local"), to);
    assert_eq!(got["rcode"], "NOERROR", "{got}");
    assert_eq!(got["addrs"], json!([WEB_SVC]), "{got}");
    assert_eq!(got["accepted"], true, "musl would drop a reply from {}", got["from"]);
    // A headless Service's name is its ready pods.
    let got = sock_client(client, in_cgroup, Mode::Dns("web-pods.default.svc.cluster.local"), to);
    assert_eq!((got["rcode"].as_str(), got["addrs"].clone()), (Some("NOERROR"), json!([WEB.to_string()])));
    let got = sock_client(client, in_cgroup, Mode::Dns("nothing.default.svc.cluster.local"), to);
    assert_eq!(got["rcode"], "NXDOMAIN", "{got}");
    let got = sock_client(client, in_cgroup, Mode::DnsTcp("kube-dns.kube-system.svc.cluster.local"), to);
    assert_eq!(
        (got["rcode"].as_str(), got["addrs"].clone()),
        (Some("NOERROR"), json!([KUBE_DNS.to_string()]))
    );

    // glibc, with the resolv.conf the kubelet writes (ip netns exec mounts it over /etc).
    std::fs::create_dir_all(&client_etc).unwrap();
    std::fs::write(
        client_etc.join("resolv.conf"),
        format!("nameserver {KUBE_DNS}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"),
    )
    .unwrap();
    for name in ["web", "web.default", "web.default.svc.cluster.local"] {
        let mut getent = Command::new("ip");
        getent.args(["netns", "exec", &node.pod("client").ns.name, "getent", "ahostsv4", name]);
        cgroup.adopt(&mut getent);
        let out = getent.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(WEB_SVC), "getent {name}: {text:?}");
    }
    drop(server);
    drop(agent);
}
