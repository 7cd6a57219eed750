//! netpol: the command line. `netpol local ...` runs a one-machine node (local mode), with
//! the same agent and datapath a cluster uses; each verb is a module of [`cmd`].
//!
//! No container images run in local mode: every container port a pod declares is served by
//! a built-in responder in the pod's network namespace — HTTP/1.1 answering 200 to HEAD and
//! GET on TCP ports, an echo on UDP ports, the cluster's DNS for CoreDNS's image.

mod cmd;
mod dns;
mod internet;
mod lab;
mod local;
mod responder;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use local::{Local, DEFAULT_ROOT};

#[derive(Parser)]
#[command(name = "netpol", version, about = "netpol: Kubernetes NetworkPolicy enforcement with eBPF")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A one-machine node: pods are network namespaces, policies enforced by the eBPF
    /// datapath. Container ports are served by built-in responders (HTTP 200 to HEAD/GET on
    /// TCP, echo on UDP); no container images run.
    Local {
        /// Names this local node (its pins, state and socket); more than one can run.
        #[arg(long, global = true, default_value = DEFAULT_ROOT)]
        root: String,
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// Every verdict as it happens: pods at both ends, the policy behind an allow, the
    /// reason for a drop.
    Monitor(cmd::monitor::Args),
    /// Which policies isolate NS/POD in each direction, and what their rules allow it.
    Explain(cmd::explain::Args),
    /// Would FROM reach TO:PORT[/PROTO], and why: the deciding policies on each side, or
    /// which side denies it. Exit 0 it would pass, 1 not, 2 decided on another node, 3
    /// cannot be traced.
    Trace(cmd::trace::Args),
    /// Serves a pod's ports (started by the local runtime inside the pod).
    #[command(hide = true)]
    Responder(cmd::responder::Args),
    /// Serves the simulated internet (started by the local runtime inside its namespace).
    #[command(hide = true)]
    InternetServer(cmd::internet::ServerArgs),
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Start the local node (agent + datapath) in the background; idempotent.
    Up(cmd::up::Args),
    /// Remove every pod, veth, netns, pin, mount and process the local node made.
    Down,
    /// Create or update Namespace, Pod, Deployment, Service, NetworkPolicy objects.
    Apply(cmd::apply::Args),
    /// Delete the objects in FILE, or KIND NAME[,NAME].
    Delete(cmd::delete::Args),
    /// List objects: pods, deployments, services, networkpolicies (netpol), namespaces, nodes.
    Get(cmd::get::Args),
    /// Run a host command inside the pod's network namespace and the agent's cgroup (its
    /// resolv.conf asks the cluster's DNS; Services are translated at the socket).
    Exec(cmd::exec::Args),
    /// Run the NetworkPolicy lab (Tasks 2.2.1-2.2.7) end to end with the lab's own files,
    /// then compare its expected outcomes with the observed ones; leaves nothing behind.
    Lab(cmd::lab::Args),
    /// Probe FROM TO:PORT[/PROTO] (NS/POD); exit 0 connected, 1 blocked. Or --matrix.
    Probe(cmd::probe::Args),
    /// The simulated internet (documentation address ranges, its DNS server, HTTP and
    /// HTTPS for its names): what it saw.
    #[command(subcommand)]
    Internet(cmd::internet::Cmd),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            if msg.starts_with("error") || msg.starts_with("Error") {
                eprintln!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    let (root, command) = match cli.cmd {
        Cmd::Responder(args) => return cmd::responder::run(args),
        Cmd::InternetServer(args) => return cmd::internet::serve(args),
        Cmd::Monitor(args) => return cmd::monitor::run(args),
        Cmd::Explain(args) => return cmd::explain::run(args),
        Cmd::Trace(args) => return cmd::trace::run(args),
        Cmd::Local { root, cmd } => (root, cmd),
    };
    let local = Local::new(&root);
    match command {
        LocalCmd::Up(args) => cmd::up::run(args, &local),
        LocalCmd::Down => cmd::down::run(&local),
        LocalCmd::Apply(args) => cmd::apply::run(args, &local),
        LocalCmd::Delete(args) => cmd::delete::run(args, &local),
        LocalCmd::Get(args) => cmd::get::run(args, &local),
        LocalCmd::Exec(args) => cmd::exec::run(args, &local),
        LocalCmd::Lab(args) => cmd::lab::run(args, &root),
        LocalCmd::Probe(args) => cmd::probe::run(args, &local),
        LocalCmd::Internet(cmd) => cmd::internet::run(cmd, &local),
    }
}
