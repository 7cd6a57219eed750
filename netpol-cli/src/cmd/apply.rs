//! `netpol local apply -f FILE|DIR|-`: create or update objects, kubectl's way.

use anyhow::{anyhow, Result};

use crate::local::{manifest, Local};

#[derive(clap::Args)]
pub struct Args {
    /// FILE, DIR or - (stdin); multi-document YAML.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
}

pub fn run(args: Args, local: &Local) -> Result<u8> {
    let mut objects = Vec::new();
    for f in &args.files {
        objects.extend(manifest::read(f).map_err(|e| anyhow!(e))?);
    }
    let (lines, ok) = local.apply(objects)?;
    for line in lines {
        println!("{line}");
    }
    Ok(if ok { 0 } else { 1 })
}
