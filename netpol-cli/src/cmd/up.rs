//! `netpol local up`: start the node (agent + datapath) in the background; idempotent.

use anyhow::Result;

use crate::local::Local;

#[derive(clap::Args)]
pub struct Args {
    /// The pod address range.
    #[arg(long)]
    pod_cidr: Option<ipnet::Ipv4Net>,
    /// Policy audit mode for the whole node: what the policies would drop passes and is
    /// reported as AUDIT (`netpol monitor --verdict audit`). For one namespace, annotate it
    /// `netpol.io/policy-audit-mode: "true"` instead.
    #[arg(long)]
    audit: bool,
}

pub fn run(args: Args, local: &Local) -> Result<u8> {
    println!("{}", local.up(args.pod_cidr.map(|c| c.to_string()).as_deref(), args.audit)?);
    Ok(0)
}
