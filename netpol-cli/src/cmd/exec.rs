//! `netpol local exec POD|deploy/NAME -- CMD...`: a host command in the pod's network
//! namespace and the agent's cgroup (its resolv.conf asks the cluster's DNS; Services are
//! translated at the socket; it trusts local mode's CA).

use anyhow::Result;

use crate::local::Local;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Accepted for kubectl compatibility (stdin and terminal are always passed through).
    #[arg(short = 't', long = "tty")]
    _tty: bool,
    #[arg(short = 'i', long = "stdin")]
    _stdin: bool,
    /// POD, pod/POD or deploy/NAME.
    pod: String,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: Args, local: &Local) -> Result<u8> {
    let pod = local.pod_of(&args.namespace, &args.pod)?;
    let code = local.exec(&args.namespace, &pod, &args.command)?;
    Ok(code.clamp(0, 255) as u8)
}
