//! One module per verb of `netpol local` and of the node verbs (`monitor`), each an `Args`
//! and a `run`, plus the hidden `responder` the runtime starts inside pods. Shared
//! arguments and parsers live here.

pub mod apply;
pub mod delete;
pub mod down;
pub mod exec;
pub mod explain;
pub mod get;
pub mod internet;
pub mod lab;
pub mod monitor;
pub mod probe;
pub mod responder;
pub mod trace;
pub mod up;

use std::{path::PathBuf, time::Duration};

use netpol_api::resources::ResourceKind;

use crate::local::{Local, DEFAULT_ROOT};

/// Which agent a node verb talks to: the local node's (`--root`), or any agent's socket.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The local node (as `netpol local --root`).
    #[arg(long, default_value = DEFAULT_ROOT)]
    root: String,
    /// An agent's API socket (on a cluster node: /run/netpol/agent.sock); overrides --root.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl AgentArgs {
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| Local::new(&self.root).socket)
    }

    /// GETs `path` of the agent's API.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let socket = self.socket();
        crate::local::call_agent(&socket, netpol_api::client::Method::GET, path, None)
            .map_err(|e| anyhow::anyhow!("asking the agent at {}: {e}", socket.display()))
    }
}

/// A kind as typed (`pods`, `po`, `deploy`, `svc`, `netpol`, `ns`, `deployments.apps`, ...).
pub fn kind(s: &str) -> Result<ResourceKind, String> {
    ResourceKind::parse(s).ok_or_else(|| format!("the server doesn't have a resource type {s:?}"))
}

/// `NS/POD:PORT[/PROTO]` → (NS/POD, port, protocol if given): the protocol is what follows
/// the last '/' after the port.
pub fn target(to: &str) -> anyhow::Result<(&str, u16, Option<&str>)> {
    let (target, proto) = match to.rsplit_once('/') {
        Some((t, p)) if !p.contains(':') && t.contains(':') => (t, Some(p)),
        _ => (to, None),
    };
    let (pod, port) = target
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("error: TO must be NS/POD:PORT[/PROTO], not {to:?}"))?;
    let port: u16 = port.parse().map_err(|_| anyhow::anyhow!("error: invalid port {port:?}"))?;
    Ok((pod, port, proto))
}

/// `1s`, `500ms`, `2m`, or plain seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    Ok(Duration::from_secs_f64(match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration {s:?}")),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_and_kinds_parse_as_kubectl_takes_them() {
        assert_eq!(super::duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(super::duration("2m").unwrap().as_secs(), 120);
        assert!(super::duration("2h").is_err());
        assert!(super::kind("deploy").is_ok() && super::kind("frob").is_err());
        assert_eq!(super::target("x/a:80/UDP").unwrap(), ("x/a", 80, Some("UDP")));
        assert_eq!(super::target("x/a:80").unwrap(), ("x/a", 80, None));
        assert!(super::target("x/a").is_err() && super::target("x/a:http").is_err());
    }
}
