//! `netpol responder` (hidden): serves a pod's ports, started by the local runtime inside
//! the pod.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The local node it belongs to: only names the process (for cleanup checks).
    #[arg(long)]
    #[allow(dead_code)]
    node: String,
    #[arg(long)]
    pod: String,
    #[arg(long)]
    tcp: Vec<u16>,
    #[arg(long)]
    udp: Vec<u16>,
    /// Serve the cluster's DNS on this port (UDP and TCP) instead of an echo/HTTP.
    #[arg(long, requires = "agent")]
    dns: Option<u16>,
    /// The agent's socket, where the DNS server reads the Services.
    #[arg(long)]
    agent: Option<std::path::PathBuf>,
    /// Where the DNS server forwards names outside the cluster domain.
    #[arg(long)]
    upstream: Option<std::net::SocketAddr>,
}

pub fn run(args: Args) -> Result<u8> {
    let dns = args.dns.zip(args.agent).map(|(port, agent)| crate::responder::Dns {
        port,
        agent,
        upstream: args.upstream,
    });
    crate::responder::run(&args.pod, &args.tcp, &args.udp, dns)?;
    Ok(0)
}
