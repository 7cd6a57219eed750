//! `netpol local internet queries`: what the simulated internet's DNS server received (so a
//! user can see a refused lookup never left the node); and the hidden `netpol
//! internet-server`, which the local runtime starts inside the internet's namespace.

use anyhow::Result;

use crate::{internet, local::Local};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Every query the internet's DNS server received: protocol, type, name, asker.
    Queries,
}

pub fn run(cmd: Cmd, local: &Local) -> Result<u8> {
    match cmd {
        Cmd::Queries => print!("{}", local.internet_queries()?),
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct ServerArgs {
    /// The local node it belongs to: only names the process (for cleanup checks).
    #[arg(long)]
    #[allow(dead_code)]
    node: String,
    /// Its files: certificate, key, query log.
    #[arg(long)]
    dir: std::path::PathBuf,
}

pub fn serve(args: ServerArgs) -> Result<u8> {
    internet::serve(&internet::Files(&args.dir))?;
    Ok(0)
}
