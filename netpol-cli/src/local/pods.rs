//! Pods: a network namespace each, wired by `netpol-cni` as a runtime calls it, the
//! declared container ports served by a responder running in the agent's cgroup, and
//! `exec` into the same namespace and cgroup.

use std::{
    io::Write,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Pod, PodIP, PodSpec, PodStatus};
use netpol_api::{
    cgroup::CgroupProcs,
    client::Method,
    resources::{Object, ResourceKind},
    NodeInfo,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{run, Local, Runtime};

/// The ports a pod's containers declare, as its responder serves them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    /// The port a CoreDNS container serves the cluster's DNS on (the responder answers
    /// DNS there instead of echoing).
    #[serde(default)]
    pub dns: Option<u16>,
}

impl Ports {
    /// What the containers of `spec` declare; the image decides what the responder is
    /// (CoreDNS serves the cluster's DNS on its `dns` port, or its first).
    pub fn of(spec: Option<&PodSpec>) -> Ports {
        let mut ports = Ports::default();
        for c in spec.iter().flat_map(|s| &s.containers) {
            let declared = c.ports.as_deref().unwrap_or_default();
            if c.image.as_deref().is_some_and(|i| i.contains("coredns")) {
                let named = declared.iter().find(|p| p.name.as_deref() == Some("dns")).or(declared.first());
                ports.dns = named.map(|p| p.container_port as u16);
            }
            for p in declared {
                let port = p.container_port as u16;
                match p.protocol.as_deref().unwrap_or("TCP") {
                    "UDP" => ports.udp.push(port),
                    "TCP" => ports.tcp.push(port),
                    _ => {}
                }
            }
        }
        ports
    }

    pub fn serves(&self) -> bool {
        !self.tcp.is_empty() || !self.udp.is_empty()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRuntime {
    pub netns: String,
    pub container_id: String,
    pub ip: String,
    pub responder_pid: Option<u32>,
    #[serde(flatten)]
    pub ports: Ports,
}

/// A running pod's status as the kubelet reports it.
fn running(ip: &str) -> PodStatus {
    PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.into()),
        pod_ips: Some(vec![PodIP { ip: ip.into() }]),
        ..Default::default()
    }
}

/// "namespace/name"
fn pod_key(pod: &Pod) -> (String, String) {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    (ns, pod.metadata.name.clone().unwrap_or_default())
}

pub(super) fn kill(pid: Option<u32>) {
    if let Some(pid) = pid {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Runs `cmd` in a session of its own (it outlives the command that started it), in the
/// cgroup of `procs` when given.
/// Starts a server (`netpol responder`, `netpol internet-server`) and waits until it says
/// [`crate::responder::READY`]: its sockets are bound. Its pid.
pub(super) fn spawn_ready(cmd: &mut Command) -> Result<u32> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("no stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    if line.trim() != crate::responder::READY {
        let _ = child.kill();
        let _ = child.wait();
        bail!("it exited before it was ready");
    }
    Ok(child.id())
}

pub(super) fn detach(cmd: &mut Command, procs: Option<CgroupProcs>) {
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            procs.as_ref().map_or(Ok(()), CgroupProcs::join)
        });
    }
}

impl Local {
    fn netns_of(&self, ns: &str, name: &str) -> String {
        format!("{}-{ns}-{name}", self.root)
    }

    /// Calls netpol-cni as a container runtime does: the command and the container in the
    /// environment, the network configuration on stdin; the result on stdout.
    fn cni(&self, command: &str, rt: &Runtime, pod: &PodRuntime, ns: &str, name: &str) -> Result<Value> {
        let conf = json!({"cniVersion": "1.1.0", "name": self.root, "type": "netpol-cni", "podCIDR": rt.pod_cidr,
                          "agentSocket": self.socket, "dataDir": self.state.join("cni")});
        let mut child = Command::new(self.bin.join("netpol-cni"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"))
            .env("CNI_PATH", &self.bin)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running netpol-cni")?;
        child.stdin.take().expect("piped").write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            bail!(
                "netpol-cni {command} for {ns}/{name}: {} (code {})",
                v["msg"].as_str().unwrap_or("failed"),
                v["code"]
            );
        }
        Ok(v)
    }

    /// The cgroup the pods' processes join (the agent's socket-LB cgroup), as the path of
    /// its `cgroup.procs`.
    /// The cgroup the agent's socket hooks sit on, where pods' processes run: as the agent
    /// says, or as it said when the node came up while it does not answer (`exec` works
    /// while the agent is down, as in a cluster).
    fn pod_cgroup_procs(&self) -> Result<Option<CgroupProcs>> {
        let dir = match self.api::<NodeInfo>(Method::GET, netpol_api::PATH_NODE, None) {
            Ok(node) => node.socket_lb_cgroup,
            Err(e) => Some(self.load().pod_cgroup.ok_or(e)?),
        };
        Ok(dir.map(|dir| CgroupProcs::of(Path::new(&dir))))
    }

    /// Remembers the pods' cgroup (for `exec` while the agent is down).
    pub(super) fn remember_pod_cgroup(&self, rt: &mut Runtime) -> Result<()> {
        let node: NodeInfo = self.api(Method::GET, netpol_api::PATH_NODE, None)?;
        rt.pod_cgroup = node.socket_lb_cgroup;
        Ok(())
    }

    /// Starts the pod's responder; None when the pod declares no ports.
    pub(super) fn spawn_responder(&self, key: &str, pod: &PodRuntime) -> Result<Option<u32>> {
        if !pod.ports.serves() {
            return Ok(None);
        }
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", pod.netns)).arg("--").arg(std::env::current_exe()?).args([
            "responder",
            "--node",
            &self.root,
            "--pod",
            key,
        ]);
        for p in &pod.ports.tcp {
            cmd.args(["--tcp", &p.to_string()]);
        }
        for p in &pod.ports.udp {
            cmd.args(["--udp", &p.to_string()]);
        }
        if let Some(port) = pod.ports.dns {
            cmd.args(["--dns", &port.to_string(), "--agent"]).arg(&self.socket);
            cmd.arg("--upstream").arg(format!("{}:53", crate::internet::DNS_SERVER));
        }
        detach(&mut cmd, self.pod_cgroup_procs()?);
        // Ready once its sockets are bound: a probe right after must not meet a closed port.
        let what = format!("the responder for {key}");
        spawn_ready(&mut cmd)
            .with_context(|| format!("{what} did not start (its ports may be taken)"))
            .map(Some)
    }

    /// Creates (or updates) a pod: namespace, wiring, responder, store object.
    pub(super) fn ensure_pod(&self, rt: &mut Runtime, pod: &Pod) -> Result<&'static str> {
        let (ns, name) = pod_key(pod);
        let key = format!("{ns}/{name}");
        let ports = Ports::of(pod.spec.as_ref());
        let mut object = pod.clone();
        object.spec.get_or_insert_with(Default::default).node_name = Some(rt.node.clone());
        if rt.pods.contains_key(&key) {
            return self.update_pod(rt, &key, object, ports);
        }
        let netns = self.netns_of(&ns, &name);
        let mut made =
            PodRuntime { netns: netns.clone(), container_id: netns.clone(), ports, ..Default::default() };
        // The object first (no address yet), so the pod is enforced with its labels from its
        // first packet on; then the wiring, which returns once the agent enforces it.
        self.put(&[Object::Pod(Box::new(object.clone()))])?;
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        run(Command::new("ip").args(["netns", "add", &netns]))?;
        rt.pods.insert(key.clone(), made.clone());
        let result = (|| -> Result<()> {
            let res = self.cni("ADD", rt, &made, &ns, &name)?;
            let address = res["ips"][0]["address"].as_str().unwrap_or("");
            made.ip = address.split('/').next().unwrap_or("").to_string();
            object.status = Some(running(&made.ip));
            self.put(&[Object::Pod(Box::new(object))])?;
            made.responder_pid = self.spawn_responder(&key, &made)?;
            Ok(())
        })();
        rt.pods.insert(key.clone(), made);
        if let Err(e) = result {
            let _ = self.remove_pod(rt, &key, true);
            return Err(e);
        }
        Ok("created")
    }

    /// A pod that exists: its object updated, its responder restarted if its ports changed.
    fn update_pod(&self, rt: &mut Runtime, key: &str, mut object: Pod, ports: Ports) -> Result<&'static str> {
        let existing = rt.pods.get_mut(key).expect("an existing pod");
        object.status = Some(running(&existing.ip));
        let res = self.put(&[Object::Pod(Box::new(object))])?;
        if let Some(e) = &res[0].error {
            bail!("{e}");
        }
        if existing.ports != ports {
            kill(existing.responder_pid);
            existing.ports = ports;
            let e = existing.clone();
            rt.pods.get_mut(key).expect("an existing pod").responder_pid = self.spawn_responder(key, &e)?;
        }
        Ok(if res[0].result.as_deref() == Some("unchanged") { "unchanged" } else { "configured" })
    }

    pub(super) fn remove_pod(&self, rt: &mut Runtime, key: &str, delete_object: bool) -> Result<()> {
        let Some(pod) = rt.pods.remove(key) else { return Ok(()) };
        let (ns, name) = key.split_once('/').expect("namespace/name");
        kill(pod.responder_pid);
        let _ = self.cni("DEL", rt, &pod, ns, name);
        let _ = Command::new("ip").args(["netns", "del", &pod.netns]).output();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&pod.netns));
        let _ = std::fs::remove_dir("/etc/netns");
        if delete_object && self.is_up() {
            self.remove(ResourceKind::Pod, ns, name)?;
        }
        Ok(())
    }

    /// The network namespace of a pod, or a kubectl-like error.
    pub fn pod_netns(&self, ns: &str, name: &str) -> Result<String> {
        let rt = self.load();
        rt.pods
            .get(&format!("{ns}/{name}"))
            .map(|p| p.netns.clone())
            .ok_or_else(|| anyhow!("Error from server (NotFound): pods {name:?} not found"))
    }

    /// The pod `target` names, as kubectl exec takes it: `NAME`, `pod/NAME`, or
    /// `deploy/NAME` (the Deployment's first pod).
    pub fn pod_of(&self, ns: &str, target: &str) -> Result<String> {
        let Some((kind, name)) = target.split_once('/') else { return Ok(target.to_string()) };
        match ResourceKind::parse(kind) {
            Some(ResourceKind::Pod) => Ok(name.to_string()),
            Some(ResourceKind::Deployment) => {
                let rt = self.load();
                let pod = rt.pods.keys().find(|k| super::objects::owned_by(k, ns, name));
                pod.map(|k| k[ns.len() + 1..].to_string()).ok_or_else(|| {
                    anyhow!("Error from server (NotFound): deployments.apps {name:?} not found")
                })
            }
            _ => bail!("error: cannot exec into a {kind}: only pods and deployments"),
        }
    }

    /// Runs a command in the pod's network namespace (with its resolver files) and the
    /// agent's cgroup; its exit code.
    pub fn exec(&self, ns: &str, name: &str, cmd: &[String]) -> Result<i32> {
        let netns = self.pod_netns(ns, name)?;
        if cmd.is_empty() {
            bail!("error: you must specify at least one command for the container");
        }
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &netns]).args(cmd);
        if let Some(trust) = self.trust_bundle() {
            // The pod trusts local mode's CA (the simulated internet's HTTPS) beside the
            // machine's: OpenSSL's and curl's bundle.
            command.env("SSL_CERT_FILE", &trust).env("CURL_CA_BUNDLE", &trust);
        }
        let procs = self.pod_cgroup_procs()?;
        unsafe {
            command.pre_exec(move || procs.as_ref().map_or(Ok(()), CgroupProcs::join));
        }
        let status = command.status()?;
        Ok(status.code().unwrap_or(1))
    }
}
