//! The node's CNI configuration, owned by the agent: written once the agent is ready (so
//! the container runtime never calls a plugin whose agent cannot answer yet), atomically
//! (a temporary file in the same directory, synced, then renamed over the final name, so
//! the runtime never reads half a file), named to sort first (`00-netpol.conflist`: the
//! runtime uses the first configuration in lexical order, and kind's or Cilium's would
//! otherwise win), and removed when the agent stops, so a node whose agent was uninstalled
//! reports "network not ready" instead of failing every new pod in netpol-cni.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// The file name: sorts before `05-cilium.conflist` and `10-kindnet.conflist`.
pub const FILE_NAME: &str = "00-netpol.conflist";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Plugin {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capabilities: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfList {
    cni_version: &'static str,
    name: &'static str,
    plugins: Vec<Plugin>,
}

/// The configuration list: netpol-cni (no podCIDR: the plugin asks the agent, which has
/// the Node's), then the reference `portmap` plugin for hostPorts.
pub fn conflist(agent_socket: &Path, mtu: u32) -> String {
    let list = ConfList {
        cni_version: "1.0.0",
        name: "netpol",
        plugins: vec![
            Plugin {
                kind: "netpol-cni",
                mtu: Some(mtu),
                agent_socket: Some(agent_socket.to_path_buf()),
                capabilities: None,
            },
            Plugin {
                kind: "portmap",
                mtu: None,
                agent_socket: None,
                capabilities: Some(serde_json::json!({"portMappings": true})),
            },
        ],
    };
    serde_json::to_string_pretty(&list).expect("a conflist serializes")
}

/// Writes `text` as `dir/FILE_NAME`, atomically.
pub fn install(dir: &Path, text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    // A dot name: runtimes only read *.conf, *.conflist and *.json.
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Removes the configuration; nothing to do when it is not there.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(FILE_NAME)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_names_the_plugin_and_its_agent_and_sorts_first() {
        let text = conflist(Path::new("/run/netpol/agent.sock"), 1500);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["plugins"][0]["type"], "netpol-cni");
        assert_eq!(v["plugins"][0]["agentSocket"], "/run/netpol/agent.sock");
        assert!(v["plugins"][0].get("podCIDR").is_none(), "the Node's podCIDR comes from the agent");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        let mut names = [FILE_NAME, "05-cilium.conflist", "10-kindnet.conflist", "10-calico.conflist"];
        names.sort();
        assert_eq!(names[0], FILE_NAME);
    }

    #[test]
    fn install_replaces_atomically_and_remove_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("netpol-cni-conf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = install(&dir, "one").unwrap();
        install(&dir, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from(FILE_NAME)], "a temporary file was left");
        remove(&dir).unwrap();
        remove(&dir).unwrap();
        assert!(!path.exists());
        std::fs::remove_dir(&dir).unwrap();
    }
}
