//! Shared by the local-mode suites: the binary, a local node of a test's own, and what a
//! node could leave behind.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The netpol binary; netpol-agent and netpol-cni must sit next to it (`cargo xtask test`
/// builds every binary before it runs the tests).
pub fn netpol() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_netpol"));
    for tool in ["netpol-agent", "netpol-cni"] {
        assert!(
            bin.with_file_name(tool).exists(),
            "{tool} is not built next to netpol: run `cargo xtask test`"
        );
    }
    bin
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab")
}

/// A local node of the test's own; `down` on drop.
pub struct Node {
    pub root: String,
}

impl Node {
    pub fn up(root: &str, cidr: &str) -> Node {
        let node = Node { root: root.into() };
        let out = node.run(&["up", "--pod-cidr", cidr]);
        assert!(out.status.success(), "up: {}", text(&out));
        node
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(netpol())
            .args(["local", "--root", &self.root])
            .args(args)
            .current_dir(examples())
            .output()
            .unwrap()
    }

    /// `netpol local apply -f -` with `yaml` on its input; its output.
    pub fn apply(&self, yaml: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(netpol())
            .args(["local", "--root", &self.root, "apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "apply: {}", text(&out));
        text(&out)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Everything a local node named `root` could leave on the machine.
pub fn leftovers(root: &str) -> Vec<String> {
    let mut left = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    left.extend(
        String::from_utf8_lossy(&netns.stdout)
            .lines()
            .filter(|l| l.starts_with(root))
            .map(|l| format!("netns {l}")),
    );
    let cgroup = netpol_agent::cgroup::cgroup2_mount().unwrap().join(root).display().to_string();
    for p in [
        format!("/sys/fs/bpf/{root}"),
        format!("/var/lib/netpol/{root}"),
        format!("/run/netpol/{root}.sock"),
        cgroup,
    ] {
        if Path::new(&p).exists() {
            left.push(p);
        }
    }
    // The agent runs with --name ROOT, responders with --node ROOT.
    let procs =
        Command::new("pgrep").args(["-af", "--", &format!("--(name|node) {root}( |$)")]).output().unwrap();
    left.extend(String::from_utf8_lossy(&procs.stdout).lines().map(|l| format!("process {l}")));
    // The agent's DNS proxy routing: its fwmark rule and table.
    let table = netpol_agent::dnsproxy::routing::ProxyRouting::of_agent(root).table.to_string();
    let rules = Command::new("ip").args(["rule", "list"]).output().unwrap();
    left.extend(
        String::from_utf8_lossy(&rules.stdout)
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == table))
            .map(|l| format!("ip rule {l}")),
    );
    let netns_etc = Path::new("/etc/netns");
    if let Ok(d) = std::fs::read_dir(netns_etc) {
        left.extend(
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(root))
                .map(|e| format!("{:?}", e.path())),
        );
    }
    left
}
