//! `netpol monitor`: every verdict of a node's datapath and DNS proxy as it happens, with
//! the pods at both ends, the policy and rule behind an allow and the reason for a drop.

use anyhow::{anyhow, Result};
use clap::ValueEnum;
use netpol_api::flows::{DebugQuery, DebugStep, Flow, Verdict, PATH_FLOWS};
use serde::{de::DeserializeOwned, Serialize};

use super::AgentArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerdictFilter {
    Dropped,
    Allowed,
    /// What audit mode let pass that the policies would have dropped.
    Audit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArgs,
    /// Only verdicts of this kind.
    #[arg(long)]
    verdict: Option<VerdictFilter>,
    /// Only flows from or to this pod (NS/POD; POD: in default).
    #[arg(long)]
    pod: Option<String>,
    /// Only flows from or to pods of this namespace.
    #[arg(short, long)]
    namespace: Option<String>,
    #[arg(short, long, default_value = "text")]
    output: Output,
    /// Stop after this many verdicts (or steps).
    #[arg(long)]
    count: Option<usize>,
    /// The decision steps the datapath takes for each of the pod's packets (parse,
    /// conntrack, ipcache, policy, verdict) instead of verdicts: the pod's endpoint logs
    /// them (aya-log) while this runs. Needs --pod.
    #[arg(long, requires = "pod")]
    debug: bool,
}

impl Args {
    fn wants(&self, f: &Flow) -> bool {
        let verdict = match self.verdict {
            Some(VerdictFilter::Dropped) => f.verdict == Verdict::Dropped,
            Some(VerdictFilter::Allowed) => f.verdict == Verdict::Allowed,
            Some(VerdictFilter::Audit) => f.verdict == Verdict::Audit,
            None => true,
        };
        verdict
            && self.pod.as_deref().is_none_or(|p| match p.contains('/') {
                true => f.involves_pod(p),
                false => f.involves_pod(&format!("default/{p}")),
            })
            && self.namespace.as_deref().is_none_or(|n| f.involves_namespace(n))
    }
}

pub fn run(args: Args) -> Result<u8> {
    if args.debug {
        // The pod's decision steps as they happen.
        let pod = args.pod.clone().unwrap_or_default();
        let pod = if pod.contains('/') { pod } else { format!("default/{pod}") };
        return follow::<DebugStep>(&args, &DebugQuery { pod }.path(), |_| true);
    }
    follow::<Flow>(&args, &format!("{PATH_FLOWS}?follow=true"), |f| args.wants(f))
}

/// Prints what the agent streams at `path` (each line a `T`) that `wants` keeps, until
/// `--count` of them.
fn follow<T: DeserializeOwned + Serialize + std::fmt::Display>(
    args: &Args,
    path: &str,
    wants: impl Fn(&T) -> bool,
) -> Result<u8> {
    let socket = args.agent.socket();
    let mut seen = 0usize;
    netpol_api::client::follow(&socket, path, std::time::Duration::from_secs(2), |line| {
        let Ok(item) = serde_json::from_slice::<T>(line) else { return true };
        if wants(&item) {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string(&item).unwrap_or_default()),
                Output::Text => println!("{item}"),
            }
            seen += 1;
        }
        args.count.is_none_or(|c| seen < c)
    })
    .map_err(|e| anyhow!("following the agent at {}: {e}", socket.display()))?;
    Ok(0)
}
