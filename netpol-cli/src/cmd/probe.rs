//! `netpol local probe FROM TO:PORT[/PROTO]` (exit 0 connected, 1 blocked), or `--matrix`
//! over every pair of pods.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{anyhow, bail, Result};
use clap::ValueEnum;
use k8s_openapi::api::core::v1::Pod;

use crate::local::{
    probe::{self, Protocol},
    Local,
};

/// How the matrix prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MatrixOutput {
    /// The e2e suite's grids.
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// NS/POD
    from: Option<String>,
    /// NS/POD:PORT[/PROTO]
    to: Option<String>,
    #[arg(long)]
    matrix: bool,
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "80")]
    ports: Vec<u16>,
    #[arg(long, value_delimiter = ',', default_value = "TCP", ignore_case = true)]
    protocols: Vec<Protocol>,
    #[arg(long, default_value = "1s", value_parser = super::duration)]
    timeout: Duration,
    #[arg(short, long, default_value = "table")]
    output: MatrixOutput,
}

/// "ns/name" or "name" (in default) → (ns, name).
fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// A pod's address, from its object.
fn ip_of(pods: &[Pod], key: &str) -> Result<Ipv4Addr> {
    let (ns, name) = split(key);
    pods.iter()
        .find(|p| p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name))
        .and_then(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .ok_or_else(|| anyhow!("Error from server (NotFound): pods {name:?} not found"))
}

pub fn run(args: Args, local: &Local) -> Result<u8> {
    let pods: Vec<Pod> = local.list()?;
    if args.matrix {
        return matrix(&args, local, &pods);
    }
    let (Some(from), Some(to)) = (&args.from, &args.to) else {
        bail!("error: probe needs FROM and TO:PORT[/PROTO], or --matrix")
    };
    let (pod, port, proto) = super::target(to)?;
    let proto = match proto {
        Some(p) => Protocol::from_str(p, true)
            .map_err(|_| anyhow!("error: unsupported protocol {p:?} (TCP or UDP)"))?,
        None => Protocol::Tcp,
    };
    let (ns, name) = split(from);
    let connected = probe::probe(&local.pod_netns(ns, name)?, ip_of(&pods, pod)?, port, proto, args.timeout)?;
    println!("{from} -> {pod}:{port}/{proto}: {}", if connected { "connected" } else { "blocked" });
    Ok(if connected { 0 } else { 1 })
}

/// Every pod of the namespaces to every other, on every port and protocol.
fn matrix(args: &Args, local: &Local, pods: &[Pod]) -> Result<u8> {
    let mut keys: Vec<String> = local
        .load()
        .pods
        .into_keys()
        .filter(|k| {
            args.namespaces.is_empty() || args.namespaces.iter().any(|n| k.starts_with(&format!("{n}/")))
        })
        .collect();
    keys.sort();
    let mut jobs = Vec::new();
    for f in &keys {
        let (ns, name) = split(f);
        let netns = local.pod_netns(ns, name)?;
        for t in &keys {
            for protocol in &args.protocols {
                for port in &args.ports {
                    jobs.push(probe::Job {
                        from: (f.clone(), netns.clone()),
                        to: (t.clone(), ip_of(pods, t)?),
                        port: *port,
                        protocol: *protocol,
                    });
                }
            }
        }
    }
    let cells = probe::run_all(jobs, args.timeout)?;
    match args.output {
        MatrixOutput::Json => println!("{}", serde_json::to_string_pretty(&cells)?),
        MatrixOutput::Table => print!("{}", probe::table(&cells)),
    }
    Ok(0)
}
