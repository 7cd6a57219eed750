//! The network configuration (stdin) and the runtime's CNI_* environment.
//!
//! The plugin takes all its settings from the configuration; from the environment it reads
//! only the CNI_* variables.

use std::{collections::BTreeMap, path::PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, CniError, Result};

pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/netpol/cni";

/// Versions compare numerically: "0.3.1" < "0.4.0" < "1.0.0".
pub fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    mtu: Option<u32>,
    agent_socket: Option<String>,
    data_dir: Option<String>,
    /// netpol-cni allocates from podCIDR itself; a delegated IPAM is not supported.
    ipam: Option<Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    // Everything else a runtime or conflist may add (args, runtimeConfig, capabilities,
    // dns, ...) is accepted and ignored, as the spec allows.
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

/// A validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub pod_cidr: Option<Ipv4Net>,
    pub mtu: u32,
    pub agent_socket: PathBuf,
    pub data_dir: PathBuf,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The version to answer in when the configuration cannot be trusted.
pub fn claimed_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string())
}

/// The spec's rule for network names and container IDs: an alphanumeric character, then
/// alphanumerics, '_', '.' or '-' (so never "." or "..", which would name a directory
/// outside the plugin's own).
fn valid_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE_FAILURE, "cannot decode the network configuration")
                .with_details(e.to_string())
        })?;
        let invalid = |m: String| CniError::new(code::INVALID_CONFIG, m);
        let cni_version = raw.cni_version.ok_or_else(|| invalid("cniVersion is missing".into()))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {cni_version} is not supported (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = raw.name.ok_or_else(|| invalid("name is missing".into()))?;
        if !valid_name(&name) {
            return Err(invalid(format!(
                "name {name:?} must start with a letter or digit, then letters, digits, '-', '_' or '.'"
            )));
        }
        if raw.plugin_type.as_deref().unwrap_or("").is_empty() {
            return Err(invalid("type is missing".into()));
        }
        if raw.ipam.is_some() {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "ipam is not supported: netpol-cni allocates addresses from podCIDR itself",
            ));
        }
        let pod_cidr = match raw.pod_cidr {
            None => None,
            Some(s) => Some(parse_pod_cidr(&s).map_err(invalid)?),
        };
        let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
        if !(68..=65535).contains(&mtu) {
            return Err(invalid(format!("mtu {mtu} is outside 68-65535")));
        }
        Ok(NetConf {
            cni_version,
            name,
            pod_cidr,
            mtu,
            agent_socket: PathBuf::from(
                raw.agent_socket.unwrap_or_else(|| netpol_api::DEFAULT_SOCKET.into()),
            ),
            data_dir: PathBuf::from(raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into())),
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }

    pub fn at_least(&self, v: &str) -> bool {
        version_tuple(&self.cni_version) >= version_tuple(v)
    }
}

pub fn parse_pod_cidr(s: &str) -> std::result::Result<Ipv4Net, String> {
    let net: Ipv4Net = s.parse().map_err(|e| format!("podCIDR {s:?}: {e}"))?;
    if net != net.trunc() {
        return Err(format!("podCIDR {s} has host bits set (did you mean {}?)", net.trunc()));
    }
    if net.prefix_len() > 30 {
        return Err(format!("podCIDR {s} is too small for pods"));
    }
    Ok(net)
}

/// The CNI_* environment of one call.
#[derive(Debug, Clone)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// K8S_POD_UID, when the runtime passes it.
    pub pod_uid: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Env {
    pub fn command() -> Result<String> {
        var("CNI_COMMAND").ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))
    }

    /// Reads and validates what `command` needs.
    pub fn read(command: &str) -> Result<Env> {
        let bad = |m: String| CniError::new(code::INVALID_ENV, m);
        let need_netns = matches!(command, "ADD" | "CHECK");
        let container_id = var("CNI_CONTAINERID").ok_or_else(|| bad("CNI_CONTAINERID is not set".into()))?;
        if !valid_name(&container_id) {
            return Err(bad(format!(
                "CNI_CONTAINERID {container_id:?} must start with a letter or digit, then letters, digits, '-', '_', '.'"
            )));
        }
        let ifname = var("CNI_IFNAME").ok_or_else(|| bad("CNI_IFNAME is not set".into()))?;
        if ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname.contains(['/', ':'])
            || ifname.contains(char::is_whitespace)
            // The kernel takes '%' for a name template ("eth%d") and picks another name.
            || ifname.contains('%')
        {
            return Err(bad(format!(
                "CNI_IFNAME {ifname:?} is not a valid interface name (at most 15 characters, not \".\" or \"..\", no '/', ':', '%' or white space)"
            )));
        }
        let netns = var("CNI_NETNS").unwrap_or_default();
        if need_netns && netns.is_empty() {
            return Err(bad("CNI_NETNS is not set".into()));
        }
        let (mut pod_namespace, mut pod_name, mut pod_uid) = ("default".to_string(), String::new(), None);
        if let Some(args) = var("CNI_ARGS") {
            let pairs: Vec<(&str, &str)> = args
                .split(';')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').ok_or_else(|| bad(format!("CNI_ARGS: {p:?} is not KEY=VALUE"))))
                .collect::<Result<_>>()?;
            let ignore_unknown = pairs.iter().any(|(k, v)| {
                *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
            });
            for (k, v) in pairs {
                match k {
                    "K8S_POD_NAMESPACE" => pod_namespace = v.to_string(),
                    "K8S_POD_NAME" => pod_name = v.to_string(),
                    "K8S_POD_UID" => pod_uid = Some(v.to_string()).filter(|u| !u.is_empty()),
                    "IgnoreUnknown" | "K8S_POD_INFRA_CONTAINER_ID" => {}
                    _ if ignore_unknown => {}
                    other => {
                        return Err(bad(format!(
                            "CNI_ARGS: unknown key {other} (set IgnoreUnknown=1 to allow)"
                        )))
                    }
                }
            }
        }
        if pod_name.is_empty() {
            // Runtimes without Kubernetes: name the pod after its container.
            pod_name = container_id.chars().take(12).collect();
        }
        Ok(Env { container_id, netns, ifname, pod_namespace, pod_name, pod_uid })
    }
}
