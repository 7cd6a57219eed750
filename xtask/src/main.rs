//! Project tasks: `cargo xtask setup | build | test | bench`.
//!
//! The eBPF half needs a toolchain rustup cannot provide here (see
//! ../shared/ebpf-toolchain/README.md): Debian's rustc-web with its matching rust-web-src,
//! and a bpf-linker built against the same LLVM major. `setup` installs exactly what is
//! missing, so a warm machine pays nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks: Debian packages and bpf-linker (idempotent).
    Setup,
    /// Setup, then build the eBPF object and every release binary into target/release/.
    Build,
    /// Setup, build, formatting and lint checks, every test, then the benchmarks in their
    /// quick form so they never rot (needs root).
    Test {
        /// Extra arguments for `cargo test` (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build, then the user's NetworkPolicy lab (Tasks 2.2.1-2.2.7) in local mode
    /// (needs root); exits non-zero on any mismatch with the lab's outcomes.
    Lab,
    /// Setup, build, then the two-node cluster simulation (needs root): two agents in
    /// Kubernetes mode against a scripted API server, pods wired by netpol-cni, the lab's
    /// Tasks 2.2.1-2.2.5 across the nodes and an agent SIGKILLed midway; prints expected vs
    /// observed (also part of `test`).
    ClusterSim,
    /// Setup, then the benchmarks (needs root): pod-to-pod traffic under netpol, iptables and
    /// nftables; the programs through BPF_PROG_TEST_RUN; the policy compiler.
    Bench {
        /// Short runs, fewer sizes: checks that every benchmark still works (CI).
        #[arg(long)]
        quick: bool,
    },
}

const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = root();
    match cli.cmd {
        Cmd::Setup => setup(&root),
        Cmd::Build => {
            setup(&root)?;
            build(&root)
        }
        Cmd::Test { args } => {
            setup(&root)?;
            build(&root)?;
            lint(&root)?;
            let mut cmd = cargo(&root);
            cmd.args(["test", "--workspace", "--release"]);
            // Root-only tests fail rather than skip: this suite is meant to run as root.
            cmd.env("NETPOL_REQUIRE_ROOT", "1");
            if !args.is_empty() {
                cmd.arg("--").args(args);
            }
            // The tests mount bpffs where it is absent; leave the machine as it was.
            let had_bpffs = bpffs_mounted();
            let result = run(&mut cmd).and_then(|()| bench(&root, true));
            while !had_bpffs && bpffs_mounted() && only_kernel_entries() {
                if !Command::new("umount").arg(BPFFS).status().is_ok_and(|s| s.success()) {
                    break;
                }
            }
            result
        }
        Cmd::Lab => {
            setup(&root)?;
            build(&root)?;
            run(Command::new(root.join("target/release/netpol"))
                .args(["local", "lab", "--examples"])
                .arg(root.join("examples/lab")))
        }
        Cmd::ClusterSim => {
            setup(&root)?;
            build(&root)?;
            run(cargo(&root)
                .args(["test", "--release", "-p", "netpol-cli", "--test", "cluster_sim", "--", "--nocapture"])
                .env("NETPOL_REQUIRE_ROOT", "1"))
        }
        Cmd::Bench { quick } => {
            setup(&root)?;
            bench(&root, quick)
        }
    }
}

/// The benchmarks, one after the other (they must not share the machine's two cores).
fn bench(root: &Path, quick: bool) -> Result<()> {
    for (package, name) in [
        ("netpol-agent", "pod2pod"),
        ("netpol-agent", "services"),
        ("netpol-agent", "datapath"),
        ("netpol-policy", "compile"),
    ] {
        let mut cmd = cargo(root);
        cmd.args(["bench", "-p", package, "--bench", name]);
        if quick {
            cmd.args(["--", "--quick"]);
        }
        run(&mut cmd)?;
    }
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    // A fresh machine's package lists are stale or empty.
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The LLVM major Debian's rustc links, which bpf-linker must link too.
fn llvm_major() -> Result<String> {
    let out = Command::new("/usr/bin/rustc").arg("-vV").output().context("/usr/bin/rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_string)
        .context("no LLVM version in rustc -vV")
}

fn setup(root: &Path) -> Result<()> {
    // Tools the tests and the datapath use: ip/tc (iproute2), nsenter (util-linux), curl,
    // ping, dig and nslookup (bind9-dnsutils), and the reference CNI plugins (portmap,
    // bandwidth) chained after netpol-cni.
    apt_install(&[
        "containernetworking-plugins",
        "iptables",
        "nftables",
        "rustc-web",
        "cargo-web",
        "rust-web-src",
        "gcc",
        "libc6-dev",
        "iproute2",
        "iputils-ping",
        "curl",
        "bind9-dnsutils",
        "util-linux",
    ])?;
    let major = llvm_major()?;
    apt_install(&[&format!("llvm-{major}-dev")])?;

    let tools = root.join("target/bpf-tools");
    let linker = tools.join("bin/bpf-linker");
    let works = Command::new(&linker).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !works {
        run(Command::new("/usr/bin/cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&tools)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env("RUSTC", "/usr/bin/rustc")
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{major}"))
            .env("PATH", format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default())))?;
    }
    Ok(())
}

fn build(root: &Path) -> Result<()> {
    // netpol-agent's build script builds the eBPF object whenever its sources changed.
    run(cargo(root).args(["build", "--release", "--workspace", "--bins"]))
}

fn lint(root: &Path) -> Result<()> {
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args(["fmt", "--check", "--manifest-path", "netpol-ebpf/Cargo.toml"]))?;
    run(cargo(root).args(["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"]))
}

const BPFFS: &str = "/sys/fs/bpf";

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(BPFFS)))
}

/// bpffs holds only what the kernel puts there itself (maps.debug, progs.debug).
fn only_kernel_entries() -> bool {
    std::fs::read_dir(BPFFS)
        .map(|d| d.flatten().all(|e| matches!(e.file_name().to_str(), Some("maps.debug" | "progs.debug"))))
        .unwrap_or(false)
}
