//! The node: the agent process in its own session, what a fresh cluster has (the
//! `default` and `kube-system` namespaces, kube-dns and CoreDNS, which forwards other names
//! to the simulated internet), and taking it all down.

use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use k8s_openapi::{
    api::core::v1::{Namespace, Service},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use netpol_api::resources::{Object, ResourceKind};
use serde_json::json;

use super::{alive, now, Local, Runtime, DEFAULT_POD_CIDR};

/// kube-dns's ClusterIP: the tenth address of the agent's default Service range, as
/// kubeadm and kind give it.
pub const KUBE_DNS_IP: &str = "10.96.0.10";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A Namespace as the API server creates it (with its `kubernetes.io/metadata.name` label).
pub fn namespace(name: &str) -> Object {
    Object::Namespace(Box::new(Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("kubernetes.io/metadata.name".to_string(), name.to_string())].into()),
            creation_timestamp: Some(now()),
            ..Default::default()
        },
        ..Default::default()
    }))
}

/// kube-dns and CoreDNS as kubeadm installs them.
fn cluster_dns_objects() -> Result<(Object, Object)> {
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": KUBE_DNS_IP, "selector": {"k8s-app": "kube-dns"},
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                 "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                              "spec": {"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns",
                                  "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}]}]}}}});
    Ok((Object::from_value(service)?, Object::from_value(deployment)?))
}

impl Local {
    /// Starts the local node (its policies audited, not enforced, with `audit`); idempotent.
    pub fn up(&self, pod_cidr: Option<&str>, audit: bool) -> Result<String> {
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "error: netpol local up needs root (it creates network namespaces and loads eBPF programs)"
            );
        }
        check_kernel()?;
        let _lock = self.lock()?;
        let mut rt = self.load();
        if self.is_up() && rt.audit != audit {
            let (now, asked) = if audit { ("enforcing", "audit") } else { ("auditing", "enforce") };
            bail!("error: the local node is up and {now} its policies: `netpol local down` first to {asked} them");
        }
        if self.is_up() {
            self.internet_up(&mut rt).context("starting the simulated internet")?;
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
        rt.audit = audit;
        let started = self.start_agent(&rt);
        rt.agent_pid = started.as_ref().ok().copied();
        self.save(&rt)?;
        started?;
        self.remember_pod_cgroup(&mut rt)?;
        if !self.list::<Namespace>()?.iter().any(|n| n.metadata.name.as_deref() == Some("default")) {
            self.put(&[namespace("default")])?;
        }
        self.internet_up(&mut rt).context("starting the simulated internet")?;
        self.save(&rt)?;
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

    /// Starts the agent in its own session (it outlives this command); its pid once it
    /// answers on its socket.
    fn start_agent(&self, rt: &Runtime) -> Result<u32> {
        std::fs::create_dir_all(self.socket.parent().expect("a socket directory"))?;
        let log = File::create(self.state.join("agent.log"))?;
        let mut cmd = Command::new(self.bin.join("netpol-agent"));
        cmd.args(["--name", &self.root, "run", "--source", "local", "--pod-cidr", &rt.pod_cidr])
            .args(["--node-name", &rt.node])
            .args(rt.audit.then_some("--policy-audit-mode"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state.join("agent"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting netpol-agent")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.is_up() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default();
                let last = log.lines().rev().find(|l| l.contains("error")).unwrap_or("");
                bail!("error: the agent exited ({status}): {last}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("error: the agent did not answer on {} within 20s", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = child.id();
        std::mem::forget(child);
        Ok(pid)
    }

    /// What a fresh cluster has for names: kube-system with the `kube-dns` Service on the
    /// conventional ClusterIP and a CoreDNS Deployment behind it (its pods run the built-in
    /// DNS server). Kept as they are when already there.
    fn cluster_dns(&self, rt: &mut Runtime) -> Result<()> {
        let has = |objects: Vec<Object>, name: &str| objects.iter().any(|o| o.name() == name);
        if !has(self.objects(ResourceKind::Namespace)?, "kube-system") {
            self.put_keeping_age(namespace("kube-system"))?;
        }
        let (service, deployment) = cluster_dns_objects()?;
        if !has(self.objects(service.kind())?, "kube-dns") {
            self.put_keeping_age(service)?;
        }
        if let Object::Deployment(d) = deployment {
            if !has(self.objects(ResourceKind::Deployment)?, "coredns") {
                self.apply_deployment(rt, *d)?;
            }
        }
        self.refresh_names(rt)
    }

    /// The kube-dns Service's ClusterIP, if there is one.
    pub(super) fn kube_dns(&self) -> Result<Option<String>> {
        Ok(self
            .list::<Service>()?
            .into_iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some("kube-system")
                    && s.metadata.name.as_deref() == Some("kube-dns")
            })
            .and_then(|s| s.spec?.cluster_ip))
    }

    /// After a crash: pods whose namespace still exists get their responder back.
    fn revive_responders(&self, rt: &mut Runtime) -> Result<String> {
        let mut n = 0;
        for (key, pod) in rt.pods.iter_mut() {
            if !Path::new("/run/netns").join(&pod.netns).exists() {
                continue;
            }
            if pod.ports.serves() && pod.responder_pid.is_none_or(|p| !alive(p)) {
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
        let lock = self.lock()?;
        let mut rt = self.load();
        let keys: Vec<String> = rt.pods.keys().cloned().collect();
        for key in keys {
            self.remove_pod(&mut rt, &key, false)?;
        }
        self.internet_down(&rt);
        if let Some(pid) = rt.agent_pid.filter(|p| alive(*p)) {
            stop(pid);
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
        drop(lock);
        std::fs::remove_dir_all(&self.state).with_context(|| format!("removing {}", self.state.display()))?;
        let _ = std::fs::remove_dir("/var/lib/netpol");
        Ok(format!("local node {} down", self.root))
    }
}

/// SIGTERM, then SIGKILL after 5 s.
fn stop(pid: u32) {
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
