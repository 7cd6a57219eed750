//! Builds the eBPF object (netpol-ebpf) every time its sources or the shared layout change,
//! so the agent can never embed a stale datapath.
//!
//! The eBPF crate needs Debian's rustc (whose `rust-src` matches it, for `-Z build-std=core`)
//! and a bpf-linker built against the same LLVM; `cargo xtask setup` installs both. See
//! ../shared/ebpf-toolchain/README.md for why the rustup toolchain cannot do it here.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("netpol-ebpf");
    for p in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        ebpf_dir.join(".cargo/config.toml"),
        root.join("netpol-common/src"),
        root.join("netpol-common/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=NETPOL_BPF_LINKER_DIR");

    let linker_dir = env::var_os("NETPOL_BPF_LINKER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/bpf-tools/bin"));
    if !linker_dir.join("bpf-linker").exists() {
        panic!(
            "bpf-linker not found in {}: run `cargo xtask setup` (it installs the eBPF toolchain)",
            linker_dir.display()
        );
    }
    if !Path::new("/usr/bin/rustc").exists() {
        panic!("/usr/bin/rustc (Debian rustc-web) not found: run `cargo xtask setup`");
    }

    // A separate target dir: the outer cargo holds the lock on its own profile dir, and the
    // debug and release builds of the agent can share one eBPF build.
    let target_dir = root.join("target/bpf");
    let path = format!("{}:/usr/bin:/bin:{}", linker_dir.display(), env::var("PATH").unwrap_or_default());
    // Start from an empty environment: whatever the outer (rustup) cargo exported
    // (RUSTUP_TOOLCHAIN, CARGO_*, RUSTFLAGS, ...) would steer the inner build wrong.
    let mut cmd = Command::new("/usr/bin/cargo");
    cmd.current_dir(&ebpf_dir).args(["build", "--release", "--locked"]).env_clear();
    for keep in ["HOME", "CARGO_HOME", "TMPDIR", "TERM"] {
        if let Some(v) = env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("PATH", path)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    let status = cmd.status().expect("running /usr/bin/cargo for netpol-ebpf");
    if !status.success() {
        panic!("building netpol-ebpf failed ({status})");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/netpol-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("netpol.bpf.o");
    std::fs::copy(&obj, &out).unwrap_or_else(|e| panic!("copying {}: {e}", obj.display()));
}
