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
