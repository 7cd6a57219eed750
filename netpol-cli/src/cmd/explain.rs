//! `netpol explain NS/POD`: which policies isolate the pod in each direction, and what
//! each of their rules allows it (peers, ports, DNS names, and the pods selected now).

use anyhow::Result;
use netpol_api::flows::{ExplainQuery, Explanation};

use super::{monitor::Output, AgentArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArgs,
    /// NS/POD (POD: in default).
    pod: String,
    #[arg(short, long, default_value = "text")]
    output: Output,
}

pub fn run(args: Args) -> Result<u8> {
    let explained: Explanation = args.agent.get(&ExplainQuery { pod: args.pod.clone() }.path())?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&explained)?),
        Output::Text => print!("{explained}"),
    }
    Ok(0)
}
