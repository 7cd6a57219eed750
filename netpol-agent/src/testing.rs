//! Test harnesses around the real agent (feature `testing`), shared by this crate's suites
//! and netpol-cni's: a pinned datapath torn down on drop, an agent running in process, and
//! a cgroup of the test's own for the socket hooks.
//! The generic fixtures (namespaces, traffic, packets, object builders, the agent binary and
//! the CNI caller) are in `netpol-tests`, which cannot depend on this crate.
//!
//! Invariant: whatever a harness pins, attaches or listens on is gone after its drop, also
//! when the test panics; a harness never touches pins of another [`Config::name`].

use std::{
    net::SocketAddr,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::{runtime::Runtime, sync::oneshot, task::JoinHandle};

use crate::{
    api::{self, Shared},
    cgroup::cgroup2_mount,
    controller::{Agent, Settings},
    datapath::{remove_pins, Config, Datapath},
    sources::kubernetes,
};

/// A test's own datapath under `Config::name`: stale pins of an earlier run are removed
/// first; on drop every attachment is detached and every pin removed.
pub struct PinnedDatapath {
    cfg: Config,
    dp: Option<Datapath>,
}

impl PinnedDatapath {
    /// Opens a fresh datapath, held by the guard.
    pub fn open(cfg: Config) -> PinnedDatapath {
        let mut guard = PinnedDatapath::guard(cfg);
        guard.dp = Some(Datapath::open(guard.cfg.clone()).expect("open the datapath"));
        guard
    }

    /// Guards the pins of a datapath that agents open themselves (restarts reuse them).
    pub fn guard(cfg: Config) -> PinnedDatapath {
        let _ = remove_pins(&cfg.root());
        PinnedDatapath { cfg, dp: None }
    }

    /// Closes this handle and opens the pins again, as a restarted agent does.
    pub fn reopen(&mut self) {
        drop(self.dp.take());
        self.dp = Some(Datapath::open(self.cfg.clone()).expect("reopen the datapath"));
    }

    /// Closes this handle, leaving the pins to agent processes; drop still removes them.
    pub fn release(&mut self) {
        drop(self.dp.take());
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl Deref for PinnedDatapath {
    type Target = Datapath;
    fn deref(&self) -> &Datapath {
        self.dp.as_ref().expect("the guard holds no open datapath")
    }
}

impl DerefMut for PinnedDatapath {
    fn deref_mut(&mut self) -> &mut Datapath {
        self.dp.as_mut().expect("the guard holds no open datapath")
    }
}

impl Drop for PinnedDatapath {
    fn drop(&mut self) {
        let dp = self.dp.take().or_else(|| Datapath::inspect(self.cfg.clone()).ok());
        if let Some(dp) = dp {
            let _ = dp.teardown();
        }
        let _ = remove_pins(&self.cfg.root());
    }
}

/// The agent in this process, on a runtime of its own whose threads stay in the network
/// namespace of the thread that started it (the node namespace of the test). Dropping it
/// is a crash as far as the datapath is concerned: pins stay for the next agent, and a
/// [`PinnedDatapath::guard`] removes them at the end of the test.
pub struct TestAgent {
    agent: Shared,
    rt: Option<Runtime>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestAgent {
    pub fn start(cfg: &Config, settings: &Settings) -> TestAgent {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dp = Datapath::open(cfg.clone()).expect("open the datapath");
        let agent = Arc::new(Mutex::new(Agent::start(dp, settings).expect("start the agent")));
        TestAgent { agent, rt: Some(rt), stop: None, server: None }
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("running")
    }

    /// Serves the API on `socket`; returns once the socket accepts.
    pub fn serve(&mut self, socket: &Path) {
        let (tx, rx) = oneshot::channel::<()>();
        let (path, agent) = (socket.to_path_buf(), self.agent.clone());
        let serve = async move {
            api::serve(&path, agent, async {
                let _ = rx.await;
            })
            .await
        };
        self.server = Some(self.rt().spawn(serve));
        self.stop = Some(tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "the agent never listened on {}", socket.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Watches a Kubernetes API server at `api` (plain HTTP) as node `node_name`.
    pub fn watch(&self, api: SocketAddr, node_name: &str) {
        let client = {
            let _rt = self.rt().enter();
            let config = kube::Config::new(format!("http://{api}").parse().unwrap());
            kube::Client::try_from(config).expect("a client for the test API server")
        };
        self.rt().spawn(kubernetes::run(client, self.agent.clone(), node_name.into()));
    }

    pub fn agent(&self) -> MutexGuard<'_, Agent> {
        self.agent.lock().unwrap()
    }

    /// Hands a pod's attachment to the agent as netpol-cni would (interface `eth0` in the
    /// pod's namespace `netns`, `host_if` on the node).
    pub fn register_pod(
        &self,
        namespace: &str,
        name: &str,
        ip: std::net::Ipv4Addr,
        netns: &str,
        host_if: &str,
    ) {
        let req = netpol_api::EndpointRequest {
            container_id: format!("cid-{namespace}-{name}"),
            ifname: "eth0".into(),
            netns: netns.into(),
            pod_namespace: namespace.into(),
            pod_name: name.into(),
            ip,
            host_ifindex: crate::datapath::ifindex(host_if).expect("the pod's host interface"),
            pod_uid: None,
            host_ifname: host_if.into(),
        };
        self.agent().register(req).expect("register the pod");
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(server), Some(rt)) = (self.server.take(), &self.rt) {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await });
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A cgroup2 directory of the test's own (`netpol-test-<name>` under the mount): the socket
/// hooks attach here and only the processes the test puts in it are translated. On drop
/// its processes are killed and the directory removed.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let path = cgroup2_mount().expect("a cgroup2 mount").join(format!("netpol-test-{name}"));
        remove_cgroup(&path);
        std::fs::create_dir(&path).expect("create the test cgroup");
        TestCgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s process (and everything it starts) join this cgroup before it execs.
    pub fn adopt<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        join_cgroup(cmd, &self.path)
    }
}

/// Makes `cmd`'s process (and everything it starts) join the cgroup `dir` before it execs.
pub fn join_cgroup<'c>(cmd: &'c mut Command, dir: &Path) -> &'c mut Command {
    netpol_api::cgroup::join_on_exec(cmd, dir)
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// Kills whatever runs in the cgroup, then removes it (a cgroup with processes cannot go).
fn remove_cgroup(path: &Path) {
    if !path.exists() {
        return;
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(path.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(path);
}

/// How many programs are attached to the cgroup directory `dir` itself (not inherited) at
/// the four socket hooks' attach points, from the kernel.
pub fn cgroup_programs(dir: &Path) -> usize {
    use crate::datapath::{cgroup_programs, SOCKET_HOOKS as HOOKS};
    HOOKS.iter().map(|h| cgroup_programs(dir, h).expect("BPF_PROG_QUERY").len()).sum()
}
