//! Local mode: a one-machine node runtime. The agent runs in the background with its local
//! store; pods are network namespaces wired by the real `netpol-cni` binary (called exactly
//! as a runtime calls it), each declared container port served by a built-in responder.
//! The pods' processes (responders, `exec`) run in the agent's cgroup, where its socket
//! hooks translate Services.
//!
//! By concern: [`node`] (the agent process, `up`/`down`, the cluster's DNS), [`pods`]
//! (network namespaces, CNI, responders, `exec`), [`objects`] (`apply`/`delete` against
//! the store), [`names`] (each pod's resolv.conf and hosts), [`internet`] (the simulated
//! internet's namespace, routes and server), plus reading manifests,
//! printing and probing. Objects are k8s-openapi types throughout
//! ([`netpol_api::resources::Object`]); JSON only on the wire and in `-o json`.

mod internet;
pub mod manifest;
mod names;
mod node;
mod objects;
pub mod output;
mod pods;
pub mod probe;

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, chrono::DateTime, Resource};
use netpol_api::{
    client::{self, Method},
    resources::{object_path, objects_path, Object, ResourceKind},
    ObjectResult, PATH_HEALTH, PATH_OBJECTS,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

pub use pods::PodRuntime;

/// Everything one local node keeps on this machine.
pub struct Local {
    /// Names this node's pins, socket, state and namespaces (tests run several).
    pub root: String,
    pub state: PathBuf,
    pub socket: PathBuf,
    /// Where netpol-agent and netpol-cni are (next to this binary).
    pub bin: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    pub pod_cidr: String,
    pub node: String,
    pub agent_pid: Option<u32>,
    pub ip_forward_before: Option<String>,
    pub mounted_bpffs: bool,
    /// "namespace/name" → pod.
    pub pods: BTreeMap<String, PodRuntime>,
    /// The simulated internet's server.
    #[serde(default)]
    pub internet_pid: Option<u32>,
    /// The cgroup of the pods' processes, as the agent last said.
    #[serde(default)]
    pub pod_cgroup: Option<String>,
    /// The node's policies are audited, not enforced (`up --audit`).
    #[serde(default)]
    pub audit: bool,
}

pub const DEFAULT_ROOT: &str = "netpol-local";
pub const DEFAULT_POD_CIDR: &str = "10.244.1.0/24";
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Now, as the API server stamps `creationTimestamp` (whole seconds).
pub fn now() -> Time {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(DateTime::from_timestamp(secs, 0).expect("a time after 1970"))
}

/// A running process (a zombie waiting for its reaper is not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// Runs a command and fails with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The store kind of a k8s-openapi type.
fn kind_of<R: Resource>() -> ResourceKind {
    ResourceKind::from_kind(R::KIND).expect("a kind local mode stores")
}

const NOT_UP: &str = "error: the local node is not up (run `netpol local up`)";

/// One call of the agent's API at `socket`: the answer's JSON, or the agent's error.
pub fn call_agent<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<T> {
    let body = body.map(serde_json::to_vec).transpose()?;
    let (status, bytes) = client::call(socket, method, path, body, AGENT_TIMEOUT)?;
    if !status.is_success() {
        bail!("Error from server: {}", client::error_message(&bytes));
    }
    let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
    Ok(serde_json::from_slice(bytes)?)
}

impl Local {
    pub fn new(root: &str) -> Local {
        let bin =
            std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
        Local {
            root: root.to_string(),
            state: PathBuf::from("/var/lib/netpol").join(root),
            socket: PathBuf::from("/run/netpol").join(format!("{root}.sock")),
            bin,
        }
    }

    fn runtime_path(&self) -> PathBuf {
        self.state.join("runtime.json")
    }

    pub fn load(&self) -> Runtime {
        std::fs::read_to_string(self.runtime_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn save(&self, rt: &Runtime) -> Result<()> {
        let p = self.runtime_path();
        std::fs::write(&p, serde_json::to_vec_pretty(rt)?).with_context(|| format!("writing {}", p.display()))
    }

    /// Serializes the commands that change this node.
    fn lock(&self) -> Result<File> {
        std::fs::create_dir_all(&self.state)?;
        let f = File::open(&self.state)?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("locking {}: {}", self.state.display(), std::io::Error::last_os_error());
        }
        Ok(f)
    }

    /// Fails as kubectl does when the node is not up.
    fn require_up(&self) -> Result<()> {
        if !self.is_up() {
            bail!(NOT_UP);
        }
        Ok(())
    }

    pub fn api<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&Value>) -> Result<T> {
        call_agent(&self.socket, method, path, body).map_err(|e| {
            match e.downcast_ref::<client::ClientError>() {
                Some(client::ClientError::Unreachable(_)) => anyhow!(NOT_UP),
                _ => e,
            }
        })
    }

    pub fn is_up(&self) -> bool {
        self.socket.exists()
            && client::call(&self.socket, Method::GET, PATH_HEALTH, None, Duration::from_secs(2)).is_ok()
    }

    /// The store's objects of one kind, as JSON (what `-o json` and jsonpath show).
    pub fn values(&self, kind: ResourceKind) -> Result<Vec<Value>> {
        self.api(Method::GET, &objects_path(kind), None)
    }

    /// The store's objects of one kind.
    pub fn objects(&self, kind: ResourceKind) -> Result<Vec<Object>> {
        self.api(Method::GET, &objects_path(kind), None)
    }

    /// The store's objects of one type.
    pub fn list<R: Resource + DeserializeOwned>(&self) -> Result<Vec<R>> {
        self.api(Method::GET, &objects_path(kind_of::<R>()), None)
    }

    fn put(&self, objects: &[Object]) -> Result<Vec<ObjectResult>> {
        self.api(Method::POST, PATH_OBJECTS, Some(&serde_json::to_value(objects)?))
    }

    fn remove(&self, kind: ResourceKind, ns: &str, name: &str) -> Result<bool> {
        let path = object_path(kind, ns, name);
        match client::call(&self.socket, Method::DELETE, &path, None, AGENT_TIMEOUT) {
            Ok((s, _)) if s.is_success() => Ok(true),
            Ok((s, _)) if s.as_u16() == 404 => Ok(false),
            Ok((_, b)) => bail!("Error from server: {}", client::error_message(&b)),
            Err(e) => bail!("error: {e}"),
        }
    }
}
