//! netpol-agent: the node agent. Its `datapath` commands program and inspect the eBPF
//! datapath directly; every command is a fresh process that reopens the pinned state, which
//! keeps enforcing while no agent runs.

use std::{
    io::Read,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use netpol_agent::{
    api,
    controller::{retry_failed_syncs, Agent, NodeNetwork, Settings},
    datapath::{
        events::{identity_name, EventStream, EventView},
        proto_name,
        state::parse_state,
        AttachMode, Config, Datapath, Direction, PolicyMapKey,
    },
    dnsproxy::{routing::ProxyRouting, server::Proxy},
};
use netpol_api::NodeInfo;
use netpol_policy::compiler::Budgets;
use serde_json::json;

#[derive(Parser)]
#[command(name = "netpol-agent", version, about = "netpol node agent")]
struct Cli {
    /// bpffs mount point (mounted if absent).
    #[arg(long, global = true, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// Directory under the bpffs holding this node's datapath.
    #[arg(long, global = true, default_value = "netpol")]
    name: String,
    /// auto (TCX, clsact fallback), tcx or netlink.
    #[arg(long, global = true, default_value = "auto")]
    attach: AttachMode,
    /// Log lines as text or as JSON objects (one per line); RUST_LOG filters them.
    #[arg(long, global = true, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: serve the API socket (endpoint hand-off from netpol-cni) until
    /// SIGTERM/SIGINT. Enforcement stays in place when it exits.
    Run(RunArgs),
    /// Program and inspect the eBPF datapath.
    #[command(subcommand)]
    Datapath(DpCmd),
    /// Ask a running agent whether it is healthy (the DaemonSet's probes): exit 0 when
    /// it is; otherwise 1, printing what is not in effect.
    Health {
        /// The agent's API socket.
        #[arg(long, default_value = netpol_api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Only that the agent answers (liveness), not that everything is in effect.
        #[arg(long)]
        live: bool,
    },
}

/// `health`: GET /healthz on the agent's socket.
fn health(socket: &std::path::Path, live: bool) -> anyhow::Result<()> {
    use netpol_api::client::{self, Method};
    let (status, body) =
        client::call(socket, Method::GET, netpol_api::PATH_HEALTH, None, std::time::Duration::from_secs(5))
            .map_err(|e| anyhow::anyhow!("the agent at {} does not answer: {e}", socket.display()))?;
    if status.is_success() || live {
        return Ok(());
    }
    anyhow::bail!("not healthy: {}", client::error_message(&body))
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where policies and pods come from: the local store (local mode) or the Kubernetes
    /// API (kubeconfig, or in-cluster service account).
    #[arg(long, default_value = "local")]
    source: Source,
    /// The API's Unix socket.
    #[arg(long, default_value = netpol_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where registrations, identity numbering and the local store persist across restarts.
    #[arg(long, default_value = "/var/lib/netpol/agent")]
    state_dir: PathBuf,
    /// This node's pod range, handed to the CNI plugin when its config has none (in a
    /// cluster the Node's podCIDR replaces it).
    #[arg(long)]
    pod_cidr: Option<ipnet::Ipv4Net>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Policy map entries one policy may add on this node; a policy over it is rejected
    /// whole (refused at apply in local mode; from a cluster it isolates and adds nothing).
    #[arg(long, default_value_t = Budgets::default().per_policy)]
    policy_budget: usize,
    /// Policy map entries the policies of one namespace may add together on this node.
    #[arg(long, default_value_t = Budgets::default().per_namespace)]
    namespace_budget: usize,
    /// Policy audit mode for the whole node: what the policies would drop passes and is
    /// reported as AUDIT (`netpol monitor --verdict audit`). One namespace alone: annotate
    /// it `netpol.io/policy-audit-mode: "true"`.
    #[arg(long)]
    policy_audit_mode: bool,
    /// The cgroup2 directory whose processes get Services translated at the socket
    /// (default: the cgroup2 root with `--source kubernetes`; in local mode a directory
    /// below it named like the datapath (`--name`), created if missing and removed by
    /// `datapath teardown`, so only the local pods' processes are translated).
    #[arg(long, conflicts_with = "no_socket_lb")]
    cgroup: Option<PathBuf>,
    /// Do not attach the socket hooks (Services are then not translated by netpol).
    #[arg(long)]
    no_socket_lb: bool,
    /// Local mode: the range Services' ClusterIPs come from.
    #[arg(long, default_value_t = netpol_agent::sources::local::DEFAULT_SERVICE_CIDR)]
    service_cidr: ipnet::Ipv4Net,
    /// With `--source kubernetes`: the cluster's pod range (kind's default). netpol routes
    /// every other node's podCIDR via its InternalIP and masquerades pod traffic leaving
    /// this range, as kindnet would.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    /// With `--source kubernetes`: the kubeconfig to use (default: in-cluster, or
    /// $KUBECONFIG, or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Leave routing between nodes and masquerade to another component.
    #[arg(long)]
    no_node_network: bool,
    /// Where the container runtime reads CNI configurations (e.g. the host's /etc/cni/net.d
    /// as mounted in the DaemonSet): the agent writes its conflist there once it enforces,
    /// and removes it when it stops.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// The MTU of the pods' interfaces, in the CNI configuration.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Pod label keys left out of identities unless a policy selects on them, comma
    /// separated; an empty value keeps every label (default: pod-template-hash,
    /// controller-revision-hash and the other labels set per rollout or per pod).
    #[arg(long, value_delimiter = ',')]
    identity_exclude_labels: Option<Vec<String>>,
}

/// The node network netpol provides: in a cluster unless told not to.
fn node_network(run: &RunArgs) -> Option<NodeNetwork> {
    (run.source == Source::Kubernetes && !run.no_node_network)
        .then_some(NodeNetwork { cluster_cidr: run.cluster_cidr })
}

/// Local mode's own cgroup for datapath `name`.
fn local_cgroup(name: &str) -> anyhow::Result<PathBuf> {
    let root =
        netpol_agent::cgroup::cgroup2_mount().context("finding the cgroup2 mount for the socket hooks")?;
    Ok(root.join(name))
}

/// Where the socket hooks go: `--cgroup`, else the default of the source.
fn socket_lb_cgroup(run: &RunArgs, name: &str) -> anyhow::Result<Option<PathBuf>> {
    if run.no_socket_lb {
        return Ok(None);
    }
    if let Some(dir) = &run.cgroup {
        return Ok(Some(dir.clone()));
    }
    let dir = match run.source {
        Source::Kubernetes => {
            return Ok(Some(netpol_agent::cgroup::cgroup2_mount().context("finding the cgroup2 mount")?));
        }
        Source::Local => local_cgroup(name)?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Some(dir))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Source {
    Local,
    Kubernetes,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum DpCmd {
    /// Make the datapath hold exactly the state in FILE (JSON; - for stdin): endpoints are
    /// attached, and only what differs is written.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Print endpoints, ipcache, policy entries and attachments.
    Show {
        #[arg(short, long, default_value = "text")]
        output: Output,
    },
    /// Print per-reason packet counters.
    Counters {
        #[arg(short, long, default_value = "text")]
        output: Output,
    },
    /// Print the conntrack entries: endpoint, direction, addresses, idle time, flags.
    Conntrack {
        #[arg(short, long, default_value = "text")]
        output: Output,
    },
    /// Print verdict events (drops and new flows) as they happen: from the running agent's
    /// event stream, or straight from the ring when no agent runs.
    Monitor {
        #[arg(short, long, default_value = "text")]
        output: Output,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// The agent's API socket.
        #[arg(long, default_value = netpol_api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Detach every program and remove every pin of this datapath (stops enforcing), with
    /// the node network the agent made (routes to other nodes' pods, the masquerade table).
    Teardown,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config { bpffs: cli.bpffs, name: cli.name, attach: cli.attach, debug_steps: true };
    let cmd = match cli.cmd {
        Cmd::Run(run) => return run_agent(cfg, run),
        Cmd::Health { socket, live } => return health(&socket, live),
        Cmd::Datapath(cmd) => cmd,
    };
    if let DpCmd::Monitor { output, count, socket } = &cmd {
        match monitor_agent(socket, *output, *count) {
            Err(netpol_api::client::ClientError::Unreachable(why)) => {
                eprintln!("no agent at {} ({why}); reading the event ring directly", socket.display())
            }
            other => return other.map_err(|e| anyhow::anyhow!("{e}")),
        }
    }
    if matches!(cmd, DpCmd::Teardown) {
        // Local mode's cgroup goes too once empty (a cgroup with processes cannot).
        if let Ok(dir) = local_cgroup(&cfg.name) {
            if netpol_agent::cgroup::is_cgroup(&dir) {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        // The node network goes with it: the masquerade table and netpol's routes (best
        // effort: a machine without nft has no table to remove).
        if let Err(e) = netpol_agent::masquerade::remove(&cfg.name) {
            tracing::warn!("{e}");
        }
        netpol_agent::routing::sync(&Default::default())?;
        // And the DNS proxy's routing, left behind by an agent that was killed.
        if let Err(e) = ProxyRouting::of_agent(&cfg.name).remove() {
            tracing::warn!("{e}");
        }
        if !cfg.root().exists() {
            return Ok(());
        }
        return Ok(Datapath::open(cfg)?.teardown()?);
    }
    // Looking must not create: only `apply` may make a datapath where there is none.
    if !matches!(cmd, DpCmd::Apply { .. }) && !cfg.pin_dir().exists() {
        bail!(
            "no datapath is pinned at {} (is the agent running, with the same --name?)",
            cfg.pin_dir().display()
        );
    }
    // Only `apply` takes the attachments over; looking leaves the live programs in place.
    let mut dp = if matches!(cmd, DpCmd::Apply { .. }) {
        Datapath::open(cfg).context("opening the datapath")?
    } else {
        Datapath::inspect(cfg).context("opening the datapath to inspect it")?
    };
    match cmd {
        DpCmd::Apply { file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let desired = parse_state(&text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let report = dp.apply(&desired)?;
            println!("applied: {report}");
        }
        DpCmd::Show { output } => show(&dp, output)?,
        DpCmd::Conntrack { output } => conntrack(&dp, output)?,
        DpCmd::Counters { output } => {
            let c = dp.counters()?;
            match output {
                Output::Json => {
                    let m: serde_json::Map<_, _> =
                        c.named().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                    println!("{}", serde_json::Value::Object(m));
                }
                Output::Text => {
                    for (k, v) in c.named() {
                        println!("{k:<22} {v}");
                    }
                }
            }
        }
        DpCmd::Monitor { output, count, .. } => monitor(&mut dp, output, count)?,
        DpCmd::Teardown => unreachable!(),
    }
    Ok(())
}

fn show(dp: &Datapath, output: Output) -> anyhow::Result<()> {
    let endpoints = dp.endpoints()?;
    let ipcache = dp.ipcache()?;
    let policy = dp.policy_keys()?;
    let attached = dp.attached()?;
    let ep_json: Vec<_> = endpoints
        .iter()
        .map(|(i, e)| {
            json!({"ifindex": i, "id": e.ep_id, "ip": std::net::Ipv4Addr::from(e.ip.to_ne_bytes()),
                   "identity": e.identity, "isolatedIngress": e.flags & netpol_common::EP_ISOLATED_INGRESS != 0,
                   "isolatedEgress": e.flags & netpol_common::EP_ISOLATED_EGRESS != 0,
                   "audit": e.flags & netpol_common::EP_AUDIT != 0, "debug": e.flags & netpol_common::EP_DEBUG != 0,
                   "policyGeneration": e.policy_gen,
                   "attached": attached.contains(i)})
        })
        .collect();
    let pol_json: Vec<_> = policy
        .iter()
        .map(|(k, v)| match k {
            PolicyMapKey::Exact(k) => json!({"endpoint": k.ep_id, "direction": Direction::from_raw(k.dir),
                "peer": identity_name(k.peer), "protocol": proto_name(k.proto),
                "port": if k.port == 0 { "any".to_string() } else { k.port.to_string() }, "ruleId": v.rule_id}),
            PolicyMapKey::Range(k, len) => {
                let bits = len - netpol_common::RANGE_FIXED_BITS;
                let first = u16::from_be(k.port_be);
                let last = first as u32 + (1u32 << (16 - bits)) - 1;
                json!({"endpoint": k.ep_id, "direction": Direction::from_raw(k.dir), "peer": identity_name(k.peer),
                       "protocol": proto_name(k.proto), "port": format!("{first}-{last}"), "ruleId": v.rule_id})
            }
        })
        .collect();
    let ipc_json: Vec<_> = ipcache
        .iter()
        .map(|(n, e)| json!({"cidr": n, "identity": identity_name(e.identity), "cidrIdentity": identity_name(e.cidr_identity)}))
        .collect();
    let all = json!({"pinDir": dp.pin_dir(), "endpoints": ep_json, "ipcache": ipc_json, "policy": pol_json});
    match output {
        Output::Json => println!("{all}"),
        Output::Text => println!("{}", serde_json::to_string_pretty(&all)?),
    }
    Ok(())
}

fn conntrack(dp: &Datapath, output: Output) -> anyhow::Result<()> {
    let now = netpol_agent::datapath::monotonic_coarse_ns();
    let ct_json: Vec<_> = dp
        .conntrack()?
        .iter()
        .map(|(k, v)| {
            let addr = |a: u32| std::net::Ipv4Addr::from(a.to_ne_bytes());
            json!({"endpoint": k.ep_id, "protocol": proto_name(k.proto), "direction": Direction::from_raw(v.dir),
                   "local": format!("{}:{}", addr(k.local_addr), u16::from_be(k.local_port)),
                   "remote": format!("{}:{}", addr(k.remote_addr), u16::from_be(k.remote_port)),
                   "idleSeconds": now.saturating_sub(v.last_seen) / 1_000_000_000, "flags": v.flags, "ruleId": v.rule_id})
        })
        .collect();
    match output {
        Output::Json => println!("{}", json!(ct_json)),
        Output::Text => {
            for c in &ct_json {
                println!("{c}");
            }
        }
    }
    Ok(())
}

fn print_event(v: &EventView, output: Output) {
    match output {
        Output::Json => println!("{}", serde_json::to_string(v).unwrap_or_default()),
        Output::Text => println!("{v}"),
    }
}

/// Follows the running agent's event stream.
fn monitor_agent(
    socket: &std::path::Path,
    output: Output,
    count: Option<usize>,
) -> Result<(), netpol_api::client::ClientError> {
    let path = format!("{}?follow=true", netpol_api::PATH_EVENTS);
    let mut seen = 0usize;
    netpol_api::client::follow(socket, &path, std::time::Duration::from_secs(2), |line| {
        if let Ok(v) = serde_json::from_slice::<EventView>(line) {
            print_event(&v, output);
            seen += 1;
        }
        count.is_none_or(|c| seen < c)
    })
}

/// Reads the ring itself (no agent runs to read it).
fn monitor(dp: &mut Datapath, output: Output, count: Option<usize>) -> anyhow::Result<()> {
    let Some(rb) = dp.take_events() else { bail!("event ring already taken") };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut stream = EventStream::new(rb)?;
        let mut seen = 0usize;
        loop {
            let batch = tokio::select! {
                b = stream.next_batch() => b?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            for ev in &batch {
                print_event(&EventView::from(ev), output);
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
        }
    })
}

fn run_agent(cfg: Config, run: RunArgs) -> anyhow::Result<()> {
    let cgroup = socket_lb_cgroup(&run, &cfg.name)?;
    let proxy_routing = ProxyRouting::of_agent(&cfg.name);
    let mut dp = Datapath::open(cfg).context("opening the datapath")?;
    let ring = dp.take_events();
    let debug_log = dp.take_debug_log();
    let node_name = run.node_name.clone().unwrap_or_else(hostname);
    let settings = Settings {
        state_dir: run.state_dir.clone(),
        node: NodeInfo {
            node_name: node_name.clone(),
            pod_cidr: run.pod_cidr.map(|c| c.to_string()),
            socket_lb_cgroup: None,
        },
        local: run.source == Source::Local,
        budgets: Budgets { per_policy: run.policy_budget, per_namespace: run.namespace_budget },
        audit: run.policy_audit_mode,
        cgroup,
        service_cidr: run.service_cidr,
        node_network: node_network(&run),
        identity_exclusions: run
            .identity_exclude_labels
            .as_ref()
            .map(|keys| keys.iter().filter(|k| !k.is_empty()).cloned().collect()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let client = match run.source {
            Source::Kubernetes => Some(kube_client(run.kubeconfig.as_deref()).await?),
            Source::Local => None,
        };
        let agent = Agent::start(dp, &settings).context("starting the agent")?;
        if let Some(ring) = ring {
            tokio::spawn(netpol_agent::monitor::consume(ring, agent.events()));
        }
        if let Some(log) = debug_log {
            tokio::spawn(netpol_agent::monitor::consume_debug(log, agent.events()));
        }
        let state = Arc::new(Mutex::new(agent));
        tokio::spawn(retry_failed_syncs(state.clone()));
        // Without it, DNS that rules filter by name is dropped (never passed unfiltered).
        let proxy = Proxy::start(state.clone(), proxy_routing)
            .inspect_err(|e| tracing::error!("{e}; DNS filtered by name is dropped"))
            .ok();
        if let Some(client) = client {
            tokio::spawn(netpol_agent::sources::kubernetes::run(client, state.clone(), node_name));
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down; enforcement stays in place");
        };
        tracing::info!(socket = %run.socket.display(), source = ?run.source, "agent ready");
        if let Some(dir) = run.cni_conf_dir.clone() {
            let conflist = netpol_agent::cni_config::conflist(&run.socket, run.mtu);
            tokio::spawn(install_cni_config_when_ready(state.clone(), dir, conflist));
        }
        let served = api::serve(&run.socket, state, shutdown).await;
        if let Some(p) = proxy {
            tokio::task::spawn_blocking(move || p.stop()).await?;
        }
        if let Some(dir) = &run.cni_conf_dir {
            // New pods wait for an agent ("network not ready") rather than fail in the plugin.
            match netpol_agent::cni_config::remove(dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "CNI configuration removed"),
                Err(e) => tracing::warn!(dir = %dir.display(), "removing the CNI configuration: {e}"),
            }
        }
        served?;
        anyhow::Ok(())
    })
}

/// The API client: from `kubeconfig` when given, else kube's default inference.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("finding the Kubernetes API")?,
    };
    kube::Client::try_from(config).context("connecting to the Kubernetes API")
}

/// Writes the CNI configuration once the agent enforces the full model with its socket
/// hooks in effect: only then may the runtime hand it pods.
async fn install_cni_config_when_ready(state: Arc<Mutex<Agent>>, dir: PathBuf, conflist: String) {
    loop {
        let agent = Arc::clone(&state);
        let ready = tokio::task::spawn_blocking(move || {
            let a = agent.lock().unwrap_or_else(|p| p.into_inner());
            a.is_synced() && a.health().is_ok()
        })
        .await
        .unwrap_or(false);
        if ready {
            match netpol_agent::cni_config::install(&dir, &conflist) {
                Ok(path) => {
                    tracing::info!(path = %path.display(), "CNI configuration written");
                    return;
                }
                Err(e) => tracing::warn!(dir = %dir.display(), "writing the CNI configuration: {e}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
