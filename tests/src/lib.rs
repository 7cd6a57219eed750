//! Machinery for netpol's root-only tests: network namespaces and pods that clean up after
//! themselves (also when a test panics), crafted packets for BPF_PROG_TEST_RUN, and traffic
//! probes (TCP, UDP, HTTP, curl) run inside namespaces, and Kubernetes object builders
//! ([`objects`]) for every suite.
//!
//! Every name a test makes starts with a per-test prefix, so tests can run in parallel.
pub mod agent;
pub mod apiserver;
pub mod cni;
pub mod netns;
pub mod objects;
pub mod packet;
pub mod sockclient;
pub mod topology;
pub mod traffic;

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    if !out.status.success() {
        panic!(
            "{:?} failed ({}): {}{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Set (to 1) by `cargo xtask test` and CI: a root-only test then fails instead of skipping.
pub const REQUIRE_ROOT_ENV: &str = "NETPOL_REQUIRE_ROOT";

/// Skips (returns true) unless running as root, saying why; panics instead when
/// `NETPOL_REQUIRE_ROOT=1`, so a suite meant to run as root cannot pass by skipping.
pub fn need_root() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return false;
    }
    if std::env::var(REQUIRE_ROOT_ENV).is_ok_and(|v| v == "1") {
        panic!("needs root (BPF, network namespaces) and {REQUIRE_ROOT_ENV}=1 forbids skipping");
    }
    eprintln!("skipped: needs root (BPF, network namespaces)");
    true
}

/// Removes paths (pin directories, scratch directories) when dropped, also on panic.
pub struct RemoveOnDrop(pub Vec<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Observes every `every` until the observation is `want` or `timeout` has passed; returns
/// the last observation (for the caller to check or report).
pub fn settle<T: PartialEq>(
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut observe: impl FnMut() -> T,
    want: &T,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = observe();
        if &got == want || std::time::Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(every);
    }
}

/// True once `done` holds (looked at every 100 ms), false when `timeout` passes first.
pub fn eventually(timeout: std::time::Duration, done: impl FnMut() -> bool) -> bool {
    settle(timeout, std::time::Duration::from_millis(100), done, &true)
}

/// Spawns `cmd` (stdout piped, stderr dropped) and waits for the first line it prints to
/// be `ready` (its sockets are bound); panics, killing it, otherwise.
pub fn spawn_ready(cmd: &mut std::process::Command) -> std::process::Child {
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not start: {line:?}");
    }
    child
}
