//! Calling a CNI plugin as a container runtime does: the configuration on stdin, the
//! `CNI_*` variables in a clean environment, run in the node's network namespace; the result
//! (or the spec's error object) parsed from stdout.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use serde_json::{json, Value};

use crate::netns::NetNs;

/// Where the runtime finds the plugins a chain names (Debian's containernetworking-plugins).
pub const CNI_PATH: &str = "/usr/lib/cni";

/// The `CNI_*` values of one call (empty = unset).
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub cid: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
}

/// What the plugin answered.
#[derive(Clone, Debug)]
pub struct Out {
    pub ok: bool,
    /// stdout as JSON (null when empty; a string when not JSON).
    pub json: Value,
    pub stderr: String,
}

/// Runs plugin `bin` with `command` (ADD, DEL, CHECK, …) in `node`'s namespace.
pub fn exec(bin: &Path, node: &NetNs, command: &str, conf: &Value, call: Call) -> Out {
    let Call { cid, netns, ifname, args } = call;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", node.path()))
        .arg("--")
        .arg(bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in [("CNI_CONTAINERID", cid), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname), ("CNI_ARGS", args)]
    {
        if !v.is_empty() {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or(json!(stdout))
    };
    Out { ok: out.status.success(), json, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}
