//! The CNI configuration's lifecycle with the agent binary (root only): written once the
//! agent enforces (atomically, named to sort first), the probe command answers for the
//! agent's health, and SIGTERM takes the configuration away — a node without its agent
//! reports "network not ready" instead of failing every new pod in the plugin.

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use netpol_tests::{agent::AgentProcess, need_root, topology::Node, RemoveOnDrop};

const BIN: &str = env!("CARGO_BIN_EXE_netpol-agent");

fn health(agent: &AgentProcess) -> (bool, String) {
    let out = agent.command(&["health", "--socket"]).arg(agent.socket()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_cni_configuration_follows_the_agents_readiness_and_life() {
    if need_root() {
        return;
    }
    let node = Node::new("cniconf", Ipv4Addr::new(10, 62, 255, 1));
    let conf = std::env::temp_dir().join("netpol-test-cniconf-net.d");
    let _ = std::fs::remove_dir_all(&conf);
    let _cleanup = RemoveOnDrop(vec![conf.clone()]);
    // Another CNI's configuration is already there (kind's).
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("10-kindnet.conflist"), "{}").unwrap();
    let mut agent = AgentProcess::start_with(
        Path::new(BIN),
        &node.ns,
        "cniconf",
        &["--cni-conf-dir", conf.to_str().unwrap()],
    );
    let ours = conf.join("00-netpol.conflist");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ours.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&ours).expect("the agent wrote no CNI configuration");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["plugins"][0]["type"], "netpol-cni");
    assert_eq!(v["plugins"][0]["agentSocket"], agent.socket().to_str().unwrap());
    let mut names: Vec<String> =
        std::fs::read_dir(&conf).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    names.sort();
    assert_eq!(names, ["00-netpol.conflist", "10-kindnet.conflist"], "ours sorts first, nothing else left");

    assert_eq!(health(&agent), (true, String::new()));
    // The socket hooks' cgroup goes away: not healthy, and the probe says why.
    let cgroup = netpol_agent::cgroup::cgroup2_mount().unwrap().join(&agent.pins);
    std::fs::remove_dir(&cgroup).expect("remove the (empty) socket-LB cgroup");
    let (ok, why) = health(&agent);
    assert!(!ok && why.contains("socket hooks not in effect"), "{why}");
    let live = agent.command(&["health", "--live", "--socket"]).arg(agent.socket()).status().unwrap();
    assert!(live.success(), "liveness only asks that the agent answers");

    agent.terminate();
    assert!(!ours.exists(), "the CNI configuration outlived its agent");
    assert!(conf.join("10-kindnet.conflist").exists(), "another CNI's configuration was touched");
    let (ok, why) = health(&agent);
    assert!(!ok && why.contains("does not answer"), "{why}");
}
