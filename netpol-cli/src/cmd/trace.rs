//! `netpol trace FROM TO:PORT[/PROTO]`: would this connection pass, and why — each side
//! (the sender's egress, the receiver's ingress) decided by the agent on what its datapath
//! holds. Exit 0 when it would pass, 1 when not, 2 when a side is decided on another node,
//! 3 when it cannot be traced (an unknown pod, no agent).

use anyhow::Result;
use netpol_api::flows::{Trace, TraceQuery};

use super::{monitor::Output, AgentArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArgs,
    /// NS/POD (POD: in default) or an address.
    from: String,
    /// NS/POD:PORT[/PROTO] (TCP unless given; UDP, SCTP, ICMP) or ADDRESS:PORT[/PROTO].
    to: String,
    /// For DNS that rules filter by name: the name asked.
    #[arg(long)]
    dns_name: Option<String>,
    #[arg(short, long, default_value = "text")]
    output: Output,
}

pub fn run(args: Args) -> Result<u8> {
    match traced(&args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(3)
        }
    }
}

fn traced(args: &Args) -> Result<u8> {
    let (to, port, proto) = super::target(&args.to)?;
    let q = TraceQuery {
        from: args.from.clone(),
        to: to.to_string(),
        port,
        protocol: proto.unwrap_or("TCP").to_string(),
        name: args.dns_name.clone(),
    };
    let trace: Trace = args.agent.get(&q.path())?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&trace)?),
        Output::Text => print!("{trace}"),
    }
    Ok(match trace.allowed {
        Some(true) => 0,
        Some(false) => 1,
        None => 2,
    })
}
