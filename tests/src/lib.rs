//! Machinery for netpol's root-only tests: network namespaces and pods that clean up after
//! themselves (also when a test panics), crafted packets for BPF_PROG_TEST_RUN, and traffic
//! probes (TCP, UDP, HTTP, curl) run inside namespaces.
//!
//! Every name a test makes starts with a per-test prefix, so tests can run in parallel.
pub mod netns;
pub mod packet;
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

/// Skips (returns true) unless running as root, saying why.
pub fn need_root() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (BPF, network namespaces)");
        return true;
    }
    false
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
