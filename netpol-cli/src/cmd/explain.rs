//! `netpol explain NS/POD`: which policies isolate the pod in each direction, and what
//! each of their rules allows it (peers, ports, DNS names, and the pods selected now).

use anyhow::{anyhow, Result};
use netpol_api::{
    client::{self, Method},
    flows::{ExplainQuery, Explanation},
};

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
    let socket = args.agent.socket();
    let path = ExplainQuery { pod: args.pod.clone() }.path();
    let (status, body) = client::call(&socket, Method::GET, &path, None, std::time::Duration::from_secs(10))
        .map_err(|e| anyhow!("asking the agent at {}: {e}", socket.display()))?;
    if !status.is_success() {
        return Err(anyhow!("{}", client::error_message(&body)));
    }
    let explained: Explanation = serde_json::from_slice(&body)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&explained)?),
        Output::Text => print!("{explained}"),
    }
    Ok(0)
}
