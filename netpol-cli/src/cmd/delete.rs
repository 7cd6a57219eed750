//! `netpol local delete -f FILE` or `delete KIND NAME[,NAME]...`.

use anyhow::{anyhow, bail, Result};
use netpol_api::resources::ResourceKind;

use crate::local::{manifest, Local};

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// KIND NAME[,NAME] ...
    args: Vec<String>,
}

/// What to delete: (kind, namespace, name), files in reverse order as kubectl does.
fn targets(args: &Args) -> Result<Vec<(ResourceKind, String, String)>> {
    let mut targets = Vec::new();
    for f in &args.files {
        for o in manifest::read(f).map_err(|e| anyhow!(e))?.into_iter().rev() {
            targets.push(o.key());
        }
    }
    if let Some((kind, names)) = args.args.split_first() {
        let kind = super::kind(kind).map_err(|e| anyhow!("error: {e}"))?;
        if names.is_empty() {
            bail!("error: resource(s) were provided, but no name was specified");
        }
        // `delete netpol a, b` and `delete netpol a,b` alike.
        for n in names.iter().flat_map(|n| n.split(',')).map(str::trim).filter(|n| !n.is_empty()) {
            targets.push((kind, args.namespace.clone(), n.to_string()));
        }
    } else if args.files.is_empty() {
        bail!("error: you must provide one or more resources by argument or filename (-f)");
    }
    Ok(targets)
}

pub fn run(args: Args, local: &Local) -> Result<u8> {
    let mut code = 0;
    for (kind, ns, name) in targets(&args)? {
        match local.delete_one(kind, &ns, &name) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("{e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}
