//! Local mode: a one-machine node runtime. The agent runs in the background with its local
//! store; pods are network namespaces wired by the real `netpol-cni` binary (called exactly
//! as a runtime calls it), each declared container port served by a built-in responder.
//! The pods' processes (responders, `exec`) run in the agent's cgroup, where its socket
//! hooks translate Services.

pub mod manifest;
pub mod output;
pub mod probe;

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use netpol_api::{
    client::{self, Method},
    ObjectResult, PATH_HEALTH, PATH_OBJECTS,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use manifest::resource_name;

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
pub struct PodRuntime {
    pub netns: String,
    pub container_id: String,
    pub ip: String,
    pub responder_pid: Option<u32>,
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    /// The port a CoreDNS container serves the cluster's DNS on (the responder answers
    /// DNS there instead of echoing).
    #[serde(default)]
    pub dns: Option<u16>,
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
}

pub const DEFAULT_ROOT: &str = "netpol-local";
pub const DEFAULT_POD_CIDR: &str = "10.244.1.0/24";
/// kube-dns's ClusterIP: the tenth address of the agent's default Service range, as
/// kubeadm and kind give it.
pub const KUBE_DNS_IP: &str = "10.96.0.10";
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

fn now_rfc3339() -> String {
    crate::calendar::rfc3339(crate::calendar::unix_now())
}

/// A running process (a zombie waiting for its reaper is not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Runs a command and fails with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A pod's deterministic name suffix within its deployment.
fn suffix(ns: &str, deployment: &str, i: usize) -> String {
    let h = Sha256::digest(format!("{ns}/{deployment}/{i}"));
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    h.iter().take(5).map(|b| alphabet[*b as usize % alphabet.len()] as char).collect()
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

    pub fn api(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let (status, bytes) =
            client::call(&self.socket, method, path, body, AGENT_TIMEOUT).map_err(|e| match e {
                client::ClientError::Unreachable(_) => {
                    anyhow!("error: the local node is not up (run `netpol local up`)")
                }
                client::ClientError::Other(m) => anyhow!("error: {m}"),
            })?;
        if !status.is_success() {
            bail!("Error from server: {}", client::error_message(&bytes));
        }
        Ok(if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes)? })
    }

    pub fn is_up(&self) -> bool {
        self.socket.exists()
            && client::call(&self.socket, Method::GET, PATH_HEALTH, None, Duration::from_secs(2)).is_ok()
    }

    /// The store's objects of one kind.
    pub fn objects(&self, kind: &str) -> Result<Vec<Value>> {
        let v = self.api(Method::GET, &format!("{PATH_OBJECTS}?kind={kind}"), None)?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    fn put(&self, objects: Vec<Value>) -> Result<Vec<ObjectResult>> {
        let v = self.api(Method::POST, PATH_OBJECTS, Some(&Value::Array(objects)))?;
        Ok(serde_json::from_value(v)?)
    }

    fn remove(&self, kind: &str, ns: &str, name: &str) -> Result<bool> {
        let path = format!("{PATH_OBJECTS}?kind={kind}&namespace={ns}&name={name}");
        match client::call(&self.socket, Method::DELETE, &path, None, AGENT_TIMEOUT) {
            Ok((s, _)) if s.is_success() => Ok(true),
            Ok((s, _)) if s.as_u16() == 404 => Ok(false),
            Ok((_, b)) => bail!("Error from server: {}", client::error_message(&b)),
            Err(e) => bail!("error: {e}"),
        }
    }

    // ------------------------------------------------------------------ up / down

    /// Starts the local node; idempotent.
    pub fn up(&self, pod_cidr: Option<&str>) -> Result<String> {
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "error: netpol local up needs root (it creates network namespaces and loads eBPF programs)"
            );
        }
        check_kernel()?;
        let _lock = self.lock()?;
        let mut rt = self.load();
        if self.is_up() {
            let revived = self.revive_responders(&mut rt)?;
            self.save(&rt)?;
            return Ok(format!("local node {} is already up{revived}", self.root));
        }
        for tool in ["netpol-agent", "netpol-cni"] {
            if !self.bin.join(tool).exists() {
                bail!(
                    "error: {} not found next to netpol (run `cargo xtask build`)",
                    self.bin.join(tool).display()
                );
            }
        }
        if rt.pod_cidr.is_empty() {
            rt.pod_cidr = pod_cidr.unwrap_or(DEFAULT_POD_CIDR).to_string();
            rt.node = hostname();
            rt.ip_forward_before =
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok().map(|s| s.trim().to_string());
            rt.mounted_bpffs = !is_bpffs("/sys/fs/bpf");
        }
        std::fs::create_dir_all(self.socket.parent().unwrap())?;
        let log = File::create(self.state.join("agent.log"))?;
        let mut cmd = Command::new(self.bin.join("netpol-agent"));
        cmd.args([
            "--name",
            &self.root,
            "run",
            "--source",
            "local",
            "--pod-cidr",
            &rt.pod_cidr,
            "--node-name",
            &rt.node,
        ])
        .arg("--socket")
        .arg(&self.socket)
        .arg("--state-dir")
        .arg(self.state.join("agent"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        // Its own session: the agent outlives this command.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting netpol-agent")?;
        rt.agent_pid = Some(child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.is_up() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default();
                let last = log.lines().rev().find(|l| l.contains("error")).unwrap_or("");
                self.save(&rt)?;
                bail!("error: the agent exited ({status}): {last}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("error: the agent did not answer on {} within 20s", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::mem::forget(child);
        if self.objects("Namespace")?.iter().all(|n| n["metadata"]["name"] != "default") {
            self.put(vec![namespace_object("default")])?;
        }
        self.cluster_dns(&mut rt).context("starting the cluster's DNS")?;
        let revived = self.revive_responders(&mut rt)?;
        self.save(&rt)?;
        Ok(format!(
            "local node {} up (agent pid {}, pods in {}){revived}",
            self.root,
            rt.agent_pid.unwrap_or(0),
            rt.pod_cidr
        ))
    }

    /// What a fresh cluster has for names: kube-system with the `kube-dns` Service on the
    /// conventional ClusterIP and a CoreDNS Deployment behind it (its pods run the built-in
    /// DNS server). Kept as they are when already there.
    fn cluster_dns(&self, rt: &mut Runtime) -> Result<()> {
        let have = |kind: &str, name: &str| -> Result<bool> {
            Ok(self.objects(kind)?.iter().any(|o| o["metadata"]["name"] == name))
        };
        if !have("Namespace", "kube-system")? {
            self.put_keeping_age(namespace_object("kube-system"))?;
        }
        if !have("Service", "kube-dns")? {
            self.put_keeping_age(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"},
                             "creationTimestamp": now_rfc3339()},
                "spec": {"clusterIP": KUBE_DNS_IP, "selector": {"k8s-app": "kube-dns"},
                         "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                   {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}}))?;
        }
        if !have("Deployment", "coredns")? {
            let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"},
                             "creationTimestamp": now_rfc3339()},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                         "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                                      "spec": {"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns",
                                          "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}]}]}}}});
            self.apply_deployment(rt, dep)?;
        }
        self.refresh_names(rt)
    }

    /// After a crash: pods whose namespace still exists get their responder back.
    fn revive_responders(&self, rt: &mut Runtime) -> Result<String> {
        let mut n = 0;
        for (key, pod) in rt.pods.iter_mut() {
            if !Path::new("/run/netns").join(&pod.netns).exists() {
                continue;
            }
            let has_ports = !pod.tcp.is_empty() || !pod.udp.is_empty();
            if has_ports && pod.responder_pid.is_none_or(|p| !alive(p)) {
                pod.responder_pid = self.spawn_responder(key, pod)?;
                n += 1;
            }
        }
        Ok(if n > 0 { format!("; {n} responders restarted") } else { String::new() })
    }

    /// Removes everything the local node made.
    pub fn down(&self) -> Result<String> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("error: netpol local down needs root");
        }
        if !self.state.exists() {
            return Ok(format!("local node {} is not up", self.root));
        }
        let _lock = self.lock()?;
        let mut rt = self.load();
        let keys: Vec<String> = rt.pods.keys().cloned().collect();
        for key in keys {
            self.remove_pod(&mut rt, &key, false)?;
        }
        if let Some(pid) = rt.agent_pid.filter(|p| alive(*p)) {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                // Reap it if it was our child (it is not, after setsid, but be tidy).
                unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
            }
            if alive(pid) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = Command::new(self.bin.join("netpol-agent"))
            .args(["--name", &self.root, "datapath", "teardown"])
            .output();
        // Forwarding goes back to what it was, unless another local node still needs it.
        let others = std::fs::read_dir("/var/lib/netpol")
            .map(|d| d.flatten().any(|e| e.path() != self.state && e.path().join("runtime.json").exists()))
            .unwrap_or(false);
        if let (Some(v), false) = (&rt.ip_forward_before, others) {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", v);
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir("/run/netpol");
        if rt.mounted_bpffs && only_kernel_entries("/sys/fs/bpf") {
            unsafe { libc::umount(c"/sys/fs/bpf".as_ptr()) };
        }
        drop(_lock);
        std::fs::remove_dir_all(&self.state).with_context(|| format!("removing {}", self.state.display()))?;
        let _ = std::fs::remove_dir("/var/lib/netpol");
        Ok(format!("local node {} down", self.root))
    }

    // ------------------------------------------------------------------ pods

    fn netns_of(&self, ns: &str, name: &str) -> String {
        format!("{}-{ns}-{name}", self.root)
    }

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
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes())?;
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
    fn pod_cgroup_procs(&self) -> Result<Option<std::ffi::CString>> {
        let node = self.api(Method::GET, netpol_api::PATH_NODE, None)?;
        let Some(dir) = node["socketLbCgroup"].as_str() else { return Ok(None) };
        Ok(Some(std::ffi::CString::new(format!("{dir}/cgroup.procs"))?))
    }

    /// Starts the pod's responder; None when the pod declares no ports.
    fn spawn_responder(&self, key: &str, pod: &PodRuntime) -> Result<Option<u32>> {
        if pod.tcp.is_empty() && pod.udp.is_empty() {
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
        for p in &pod.tcp {
            cmd.args(["--tcp", &p.to_string()]);
        }
        for p in &pod.udp {
            cmd.args(["--udp", &p.to_string()]);
        }
        if let Some(port) = pod.dns {
            cmd.args(["--dns", &port.to_string(), "--agent"]).arg(&self.socket);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let procs = self.pod_cgroup_procs()?;
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                enter_cgroup(procs.as_ref())
            });
        }
        let mut child = cmd.spawn().context("starting the responder")?;
        // Ready once its sockets are bound: a probe right after must not meet a closed port.
        let mut line = String::new();
        let stdout = child.stdout.take().context("the responder's stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        if line.trim() != crate::responder::READY {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the responder for {key} did not start (its ports may be taken)");
        }
        Ok(Some(child.id()))
    }

    /// Creates (or updates) a pod: namespace, wiring, responder, store object.
    fn ensure_pod(&self, rt: &mut Runtime, pod: &Value) -> Result<&'static str> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        let key = format!("{ns}/{name}");
        let (mut tcp, mut udp) = (Vec::new(), Vec::new());
        let mut dns = None;
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            // The image decides what the responder is: CoreDNS serves the cluster's DNS.
            if c["image"].as_str().is_some_and(|i| i.contains("coredns")) {
                let ports = c["ports"].as_array().into_iter().flatten();
                let named = ports.clone().find(|p| p["name"] == "dns").or_else(|| ports.clone().next());
                dns = named.and_then(|p| p["containerPort"].as_u64()).map(|p| p as u16);
            }
            for p in c["ports"].as_array().into_iter().flatten() {
                let port = p["containerPort"].as_u64().unwrap_or(0) as u16;
                match p["protocol"].as_str().unwrap_or("TCP") {
                    "UDP" => udp.push(port),
                    "TCP" => tcp.push(port),
                    _ => {}
                }
            }
        }
        let mut object = pod.clone();
        object["spec"]["nodeName"] = json!(rt.node);
        if let Some(existing) = rt.pods.get_mut(&key) {
            object["status"] =
                json!({"phase": "Running", "podIP": existing.ip, "podIPs": [{"ip": existing.ip}]});
            let res = self.put(vec![object])?;
            if let Some(e) = &res[0].error {
                bail!("{e}");
            }
            if existing.tcp != tcp || existing.udp != udp || existing.dns != dns {
                if let Some(pid) = existing.responder_pid {
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                existing.tcp = tcp;
                existing.udp = udp;
                existing.dns = dns;
                let e = existing.clone();
                rt.pods.get_mut(&key).unwrap().responder_pid = self.spawn_responder(&key, &e)?;
            }
            return Ok(if res[0].result.as_deref() == Some("unchanged") {
                "unchanged"
            } else {
                "configured"
            });
        }
        let netns = self.netns_of(&ns, &name);
        let mut made = PodRuntime {
            netns: netns.clone(),
            container_id: netns.clone(),
            tcp,
            udp,
            dns,
            ..Default::default()
        };
        // The object first (no address yet), so the pod is enforced with its labels from its
        // first packet on; then the wiring, which returns once the agent enforces it.
        self.put(vec![object.clone()])?;
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        run(Command::new("ip").args(["netns", "add", &netns]))?;
        rt.pods.insert(key.clone(), made.clone());
        let result = (|| -> Result<()> {
            let res = self.cni("ADD", rt, &made, &ns, &name)?;
            made.ip =
                res["ips"][0]["address"].as_str().unwrap_or("").split('/').next().unwrap_or("").to_string();
            object["status"] = json!({"phase": "Running", "podIP": made.ip, "podIPs": [{"ip": made.ip}]});
            self.put(vec![object])?;
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

    fn remove_pod(&self, rt: &mut Runtime, key: &str, delete_object: bool) -> Result<()> {
        let Some(pod) = rt.pods.remove(key) else { return Ok(()) };
        let (ns, name) = key.split_once('/').unwrap();
        if let Some(pid) = pod.responder_pid {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.cni("DEL", rt, &pod, ns, name);
        let _ = Command::new("ip").args(["netns", "del", &pod.netns]).output();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&pod.netns));
        let _ = std::fs::remove_dir("/etc/netns");
        if delete_object && self.is_up() {
            self.remove("Pod", ns, name)?;
        }
        Ok(())
    }

    /// Writes every pod's resolver files as the kubelet does: `/etc/resolv.conf` from its
    /// `dnsPolicy` and `dnsConfig` (the cluster's DNS, kube-dns's ClusterIP, by default),
    /// `/etc/hosts` with localhost and the pod's own name (`ip netns exec` mounts both).
    fn refresh_names(&self, rt: &Runtime) -> Result<()> {
        let kube_dns = self
            .objects("Service")?
            .into_iter()
            .find(|s| s["metadata"]["namespace"] == "kube-system" && s["metadata"]["name"] == "kube-dns")
            .and_then(|s| s["spec"]["clusterIP"].as_str().map(str::to_string));
        let pods = self.objects("Pod")?;
        for (key, pod) in &rt.pods {
            let (pod_ns, pod_name) = key.split_once('/').unwrap();
            let object = pods
                .iter()
                .find(|p| p["metadata"]["namespace"] == pod_ns && p["metadata"]["name"] == pod_name);
            let spec = object.map(|o| o["spec"].clone()).unwrap_or(Value::Null);
            let dir = Path::new("/etc/netns").join(&pod.netns);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("hosts"), format!("127.0.0.1\tlocalhost\n{}\t{pod_name}\n", pod.ip))?;
            std::fs::write(dir.join("resolv.conf"), resolv_conf(&spec, pod_ns, kube_dns.as_deref()))?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ apply / delete

    fn namespaces(&self) -> Result<Vec<String>> {
        Ok(self
            .objects("Namespace")?
            .iter()
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .collect())
    }

    /// kubectl apply: each object on its own; returns the lines to print and whether all
    /// succeeded. Returns once the datapath enforces the result.
    pub fn apply(&self, objects: Vec<Value>) -> Result<(Vec<String>, bool)> {
        if !self.is_up() {
            bail!("error: the local node is not up (run `netpol local up`)");
        }
        let _lock = self.lock()?;
        let mut rt = self.load();
        let mut ok = true;
        let mut known = self.namespaces()?;
        let order = |v: &Value| match v["kind"].as_str().unwrap_or("") {
            "Namespace" => 0,
            "NetworkPolicy" => 1,
            "Service" => 2,
            _ => 3,
        };
        // Applied in dependency order, reported in the order given (as kubectl prints).
        let mut objects: Vec<(usize, Value)> = objects.into_iter().enumerate().collect();
        objects.sort_by_key(|(i, o)| (order(o), *i));
        let mut lines: Vec<(usize, String)> = Vec::new();
        for (at, mut obj) in objects {
            let mut say = |l: String| lines.push((at, l));
            let kind = obj["kind"].as_str().unwrap_or("").to_string();
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            let what = format!("{}/{name}", resource_name(&kind));
            if kind != "Namespace" && kind != "Node" {
                let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
                obj["metadata"]["namespace"] = json!(ns);
                if !known.contains(&ns) {
                    say(format!("Error from server (NotFound): error when creating {what:?}: namespaces {ns:?} not found"));
                    ok = false;
                    continue;
                }
            }
            if obj["metadata"]["creationTimestamp"].is_null() {
                obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            }
            let outcome = match kind.as_str() {
                "Pod" => self.ensure_pod(&mut rt, &obj).map(str::to_string),
                "Deployment" => self.apply_deployment(&mut rt, obj),
                _ => self.put_keeping_age(obj),
            };
            match outcome {
                Ok(action) => {
                    if kind == "Namespace" {
                        known.push(name.clone());
                    }
                    say(format!("{what} {action}"));
                }
                Err(e) => {
                    ok = false;
                    say(format!("Error from server: error when applying {what:?}: {e:#}"));
                }
            }
            self.save(&rt)?;
        }
        self.refresh_names(&rt)?;
        lines.sort_by_key(|(at, _)| *at);
        Ok((lines.into_iter().map(|(_, l)| l).collect(), ok))
    }

    /// Stores an object, keeping the creation time of the version already stored.
    fn put_keeping_age(&self, mut obj: Value) -> Result<String> {
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        if let Some(old) = self.objects(&kind)?.into_iter().find(|o| {
            o["metadata"]["name"] == obj["metadata"]["name"]
                && o["metadata"]["namespace"] == obj["metadata"]["namespace"]
        }) {
            obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        let res = self.put(vec![obj])?;
        match (&res[0].result, &res[0].error) {
            (_, Some(e)) => bail!("{e}"),
            (Some(r), None) => Ok(r.clone()),
            _ => bail!("no result"),
        }
    }

    fn apply_deployment(&self, rt: &mut Runtime, dep: Value) -> Result<String> {
        let ns = dep["metadata"]["namespace"].as_str().unwrap().to_string();
        let name = dep["metadata"]["name"].as_str().unwrap().to_string();
        let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let template = &dep["spec"]["template"];
        let selector = dep["spec"]["selector"]["matchLabels"].as_object().cloned().unwrap_or_default();
        let labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        if selector.is_empty() || !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            bail!("Deployment.apps {name:?} is invalid: spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`");
        }
        let action = self.put_keeping_age(dep.clone())?;
        let wanted: Vec<String> =
            (0..replicas).map(|i| format!("{name}-{}", suffix(&ns, &name, i))).collect();
        // Pods of this deployment that should no longer exist.
        let owned: Vec<String> = rt
            .pods
            .keys()
            .filter(|k| k.starts_with(&format!("{ns}/{name}-")))
            .filter(|k| {
                let pod_name = &k[ns.len() + 1..];
                pod_name.len() == name.len() + 6 && !wanted.iter().any(|w| w == pod_name)
            })
            .cloned()
            .collect();
        for k in owned {
            self.remove_pod(rt, &k, true)?;
        }
        for pod_name in wanted {
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "labels": template["metadata"]["labels"],
                             "annotations": {"netpol.io/owner": format!("Deployment/{name}")},
                             "creationTimestamp": dep["metadata"]["creationTimestamp"]},
                "spec": template["spec"],
            });
            self.ensure_pod(rt, &pod)?;
        }
        Ok(action)
    }

    /// Deletes one object (a deployment with its pods, a namespace with its contents).
    pub fn delete_one(&self, kind: &str, ns: &str, name: &str) -> Result<String> {
        if !self.is_up() {
            bail!("error: the local node is not up (run `netpol local up`)");
        }
        let _lock = self.lock()?;
        let mut rt = self.load();
        let ns = if kind == "Namespace" { "" } else { ns };
        let found = match kind {
            "Pod" => {
                let key = format!("{ns}/{name}");
                let had = rt.pods.contains_key(&key);
                self.remove_pod(&mut rt, &key, true)?;
                had || self.remove("Pod", ns, name)?
            }
            "Deployment" => {
                let pods: Vec<String> = rt
                    .pods
                    .keys()
                    .filter(|k| {
                        k.starts_with(&format!("{ns}/{name}-")) && k.len() == ns.len() + 1 + name.len() + 6
                    })
                    .cloned()
                    .collect();
                for k in pods {
                    self.remove_pod(&mut rt, &k, true)?;
                }
                self.remove("Deployment", ns, name)?
            }
            "Namespace" => {
                let inside: Vec<String> =
                    rt.pods.keys().filter(|k| k.starts_with(&format!("{name}/"))).cloned().collect();
                for k in inside {
                    self.remove_pod(&mut rt, &k, true)?;
                }
                for k in ["Deployment", "Service", "NetworkPolicy", "Pod"] {
                    for o in self.objects(k)? {
                        if o["metadata"]["namespace"] == name {
                            self.remove(k, name, o["metadata"]["name"].as_str().unwrap_or(""))?;
                        }
                    }
                }
                self.remove("Namespace", "", name)?
            }
            _ => self.remove(kind, ns, name)?,
        };
        self.save(&rt)?;
        self.refresh_names(&rt)?;
        if found {
            Ok(format!("{} {name:?} deleted", resource_name(kind)))
        } else {
            bail!("Error from server (NotFound): {} {name:?} not found", output::plural_resource(kind))
        }
    }

    /// The network namespace of a pod, or a kubectl-like error.
    pub fn pod_netns(&self, ns: &str, name: &str) -> Result<String> {
        let rt = self.load();
        rt.pods
            .get(&format!("{ns}/{name}"))
            .map(|p| p.netns.clone())
            .ok_or_else(|| anyhow!("Error from server (NotFound): pods {name:?} not found"))
    }

    /// Runs a command in the pod's network namespace (with its hosts file); its exit code.
    pub fn exec(&self, ns: &str, name: &str, cmd: &[String]) -> Result<i32> {
        let netns = self.pod_netns(ns, name)?;
        if cmd.is_empty() {
            bail!("error: you must specify at least one command for the container");
        }
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &netns]).args(cmd);
        let procs = self.pod_cgroup_procs()?;
        unsafe {
            command.pre_exec(move || enter_cgroup(procs.as_ref()));
        }
        let status = command.status()?;
        Ok(status.code().unwrap_or(1))
    }
}

/// Between fork and exec: moves the process into the cgroup whose `cgroup.procs` is given
/// (open, write, close only: async-signal-safe).
fn enter_cgroup(procs: Option<&std::ffi::CString>) -> std::io::Result<()> {
    let Some(procs) = procs else { return Ok(()) };
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    unsafe { libc::close(fd) };
    if written == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A resolv.conf option: its name and, for `name:value` ones, the value.
type ResolvOption = (String, Option<String>);

/// A pod's resolv.conf, as the kubelet writes it: `ClusterFirst` (the default) asks the
/// cluster's DNS with the namespace's search path and `ndots:5`; `Default` takes the node's;
/// `None` only what `dnsConfig` says; `dnsConfig` adds nameservers and searches and
/// overrides options by name.
fn resolv_conf(spec: &Value, namespace: &str, kube_dns: Option<&str>) -> String {
    let config = &spec["dnsConfig"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
    };
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<ResolvOption>) = match spec
        ["dnsPolicy"]
        .as_str()
        .unwrap_or("ClusterFirst")
    {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "Default" => {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let field = |k: &str| -> Vec<String> {
                host.lines()
                    .filter_map(|l| l.strip_prefix(k))
                    .flat_map(|rest| rest.split_whitespace().map(str::to_string))
                    .collect()
            };
            (field("nameserver "), field("search "), Vec::new())
        }
        _ => (
            kube_dns.map(str::to_string).into_iter().collect(),
            [format!("{namespace}.svc.cluster.local"), "svc.cluster.local".into(), "cluster.local".into()]
                .into(),
            vec![("ndots".to_string(), Some("5".to_string()))],
        ),
    };
    servers.extend(strings(&config["nameservers"]));
    searches.extend(strings(&config["searches"]));
    for o in config["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else { continue };
        options.retain(|(n, _)| n != name);
        options.push((name.to_string(), o["value"].as_str().map(str::to_string)));
    }
    let mut out = String::new();
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .into_iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}:{v}"),
                None => n,
            })
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

pub fn namespace_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}, "creationTimestamp": now_rfc3339()}})
}

fn is_bpffs(path: &str) -> bool {
    let c = std::ffi::CString::new(path).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0xcafe4a11 }
}

/// bpffs holds only what the kernel itself puts there (maps.debug, progs.debug).
fn only_kernel_entries(path: &str) -> bool {
    std::fs::read_dir(path)
        .map(|d| d.flatten().all(|e| matches!(e.file_name().to_str(), Some("maps.debug" | "progs.debug"))))
        .unwrap_or(false)
}

/// A kernel able to run the datapath: BTF, and ≥ 5.10 (clsact attach; TCX from 6.6).
fn check_kernel() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if (major, minor) < (5, 10) {
        bail!(
            "error: kernel {} is too old for netpol (needs Linux >= 5.10, >= 6.6 recommended)",
            release.trim()
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "error: kernel {} has no BTF (/sys/kernel/btf/vmlinux): netpol needs CONFIG_DEBUG_INFO_BTF",
            release.trim()
        );
    }
    Ok(())
}
