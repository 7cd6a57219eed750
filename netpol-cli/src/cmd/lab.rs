//! `netpol local lab`: the NetworkPolicy lab end to end with its own files, expected
//! outcomes against observed ones; leaves nothing behind.

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The lab's files (simple-app.yaml, ...).
    #[arg(long, default_value = "examples/lab")]
    examples: std::path::PathBuf,
    /// Leave the local node up afterwards.
    #[arg(long)]
    keep: bool,
    /// The pod address range of the local node the lab starts.
    #[arg(long)]
    pod_cidr: Option<ipnet::Ipv4Net>,
}

pub fn run(args: Args, root: &str) -> Result<u8> {
    let cidr = args.pod_cidr.map(|c| c.to_string());
    let mut lab = crate::lab::Lab::new(root, &args.examples, cidr.as_deref());
    let ok = lab.run_all();
    if !args.keep {
        lab.down()?;
    }
    Ok(if ok? { 0 } else { 1 })
}
