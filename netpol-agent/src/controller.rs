//! The agent's state and its one loop body: compile the model for this node's endpoints and
//! sync the datapath to the result (only what changed is written; adds before deletes).
//!
//! Sources hand what they observe to one entry point, [`Agent::handle`], which always
//! reconciles; the local store is such a source (its snapshot at start, then each apply and
//! delete), like the Kubernetes watchers. The agent's state is private.
//!
//! Invariants:
//! - Until every watched kind has been listed, no reconcile removes isolation or
//!   entries: the pinned maps keep enforcing what the last agent compiled, endpoints
//!   registered meanwhile are written held closed (identity `INIT`, host only), and
//!   endpoints no longer registered go.
//! - A sync that fails is retried with backoff ([`retry_failed_syncs`]) until one succeeds.
//! - In local mode a policy that would not fit the budgets is refused at apply; from a
//!   cluster it is stored, isolates what it selects, adds nothing, and is reported.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Node, NodeAddress, NodeStatus},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use netpol_api::{
    resources::{Object as Stored, ResourceKind},
    EndpointRequest, EndpointStatus, NodeInfo, ObjectResult, ServiceName,
};
use serde_json::Value;
use tracing::{info, warn};

use netpol_common::{identity, Endpoint, IpcacheEntry, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS};
use netpol_policy::{
    compiler::{compile_with, Allocators, Budgets, Compiled, LocalEndpoint},
    lookup,
    model::{self, node_pod_cidr, Key, Kind, Model, Object},
    names::{Name, NameMatch},
    policy::{PolicyError, PolicyId},
    services,
};

use crate::{
    datapath::{state::SyncReport, Datapath, DatapathError, SOCKET_HOOKS},
    dnsproxy::{
        forward::Permit,
        learned::{now_ms, Learned},
        message::Learning,
    },
    endpoints::{EndpointError, Registry},
    enforcer::Enforcer,
    metrics::{self, Metrics, Snapshot},
    sources::{
        announce::{self, Announcements},
        local::{model_kind, to_object, LocalStore, StoreError, StoreKey},
        Change, WATCHED,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("state {path}: {msg}")]
    State { path: PathBuf, msg: String },
    #[error(transparent)]
    Routes(#[from] crate::routing::RouteError),
    #[error(transparent)]
    Masquerade(#[from] crate::masquerade::MasqueradeError),
    #[error("{0}")]
    Invalid(String),
    /// A policy refused at apply because it would not fit the budgets.
    #[error("{0}")]
    OverBudget(String),
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub last_compile: Duration,
    /// Whether the last sync failed (a retry is due).
    pub last_sync_failed: bool,
}

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where registrations, numbering and the local store persist.
    pub state_dir: PathBuf,
    pub node: NodeInfo,
    /// Local mode: the local store is the source, and this machine the node.
    pub local: bool,
    pub budgets: Budgets,
    /// Audit mode for the whole node: what policies would drop passes and is reported.
    pub audit: bool,
    /// The cgroup2 directory the socket hooks for Services attach to (None: Services are
    /// not translated, as in tests of the policy path alone).
    pub cgroup: Option<PathBuf>,
    /// Local mode: where Services' ClusterIPs come from.
    pub service_cidr: ipnet::Ipv4Net,
    /// The network between nodes, when netpol provides it (None: local mode, or another
    /// component routes and masquerades).
    pub node_network: Option<NodeNetwork>,
    /// Pod label keys left out of identities unless a policy selects on them (None: the
    /// known high-churn ones).
    pub identity_exclusions: Option<BTreeSet<String>>,
}

impl Settings {
    /// An agent of node `node_name` persisting in `state_dir`, with everything else at its
    /// default: default budgets, no socket hooks, no node network, local mode's default
    /// Service range, the known high-churn labels left out of identities.
    pub fn new(state_dir: impl Into<PathBuf>, node_name: &str, local: bool) -> Settings {
        Settings {
            state_dir: state_dir.into(),
            node: NodeInfo { node_name: node_name.into(), pod_cidr: None, socket_lb_cgroup: None },
            local,
            budgets: Budgets::default(),
            audit: false,
            cgroup: None,
            service_cidr: crate::sources::local::DEFAULT_SERVICE_CIDR,
            node_network: None,
            identity_exclusions: None,
        }
    }
}

/// What a cluster without another CNI needs of netpol besides policy: routes to every other
/// node's pod range, and pod traffic leaving the cluster's pod range masqueraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The cluster's pod range (every node's podCIDR is inside it).
    pub cluster_cidr: ipnet::Ipv4Net,
}

/// The agent over an enforcer: the datapath, or in-memory maps in tests.
pub struct Agent<E: Enforcer = Datapath> {
    dp: E,
    registry: Registry,
    model: Model,
    alloc: Allocators,
    node: NodeInfo,
    /// The local store (local mode); None when a Kubernetes API server is the source.
    store: Option<LocalStore>,
    compiled: Compiled,
    stats: Stats,
    metrics: Metrics,
    /// Verdict events, once the agent's ring reader runs ([`crate::monitor::consume`]).
    events: std::sync::Arc<crate::monitor::EventHub>,
    /// What names the verdicts, as of the last compile.
    directory: std::sync::Arc<crate::flows::DirectoryCell>,
    budgets: Budgets,
    /// The whole node's policies are audited, not enforced.
    audit: bool,
    /// Endpoints (ifindex) whose decision steps are logged, with how many follow them.
    debugging: BTreeMap<u32, usize>,
    /// The kinds listed in full so far (all of them at once, in local mode).
    listed: BTreeSet<Kind>,
    state_dir: PathBuf,
    saved_alloc: String,
    /// Where the socket hooks were told to attach.
    cgroup: Option<PathBuf>,
    node_network: Option<NodeNetwork>,
    /// Nodes whose pod range is not routed, and why, and the ranges another component
    /// already routes (each reported when it changes, not at every sync).
    refused_routes: BTreeMap<String, String>,
    taken_routes: Vec<ipnet::Ipv4Net>,
    /// Woken when an endpoint is registered or removed (its announcement is due).
    endpoints_changed: std::sync::Arc<tokio::sync::Notify>,
    /// What the DNS proxy learned (persisted in `learned.json`); the model's `learned` is
    /// its snapshot.
    learned: Learned,
}

/// Where the learned names persist, in the state directory.
const LEARNED_FILE: &str = "learned.json";

/// This machine's IPv4 addresses (not loopback): the node's addresses in local mode.
pub fn host_addresses() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut p = ifap;
    while !p.is_null() {
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() && !out.contains(&ip) {
                out.push(ip);
            }
        }
        p = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// The local store as a source, at start: this machine as the node, every stored object,
/// and every kind listed in full.
fn local_snapshot(node_name: &str, store: &LocalStore) -> Vec<Change> {
    let addresses = host_addresses()
        .into_iter()
        .map(|ip| NodeAddress { type_: "InternalIP".into(), address: ip.to_string() })
        .collect();
    let node = Node {
        metadata: ObjectMeta { name: Some(node_name.to_string()), ..Default::default() },
        status: Some(NodeStatus { addresses: Some(addresses), ..Default::default() }),
        ..Default::default()
    };
    let mut changes = vec![Change::Upsert(Object::Node(Box::new(node)))];
    let mut keys: BTreeMap<Kind, BTreeSet<Key>> = BTreeMap::new();
    keys.entry(Kind::Node).or_default().insert((String::new(), node_name.to_string()));
    for (key, o) in store.objects() {
        if let Some(kind) = model_kind(key.0) {
            keys.entry(kind).or_default().insert((key.1.clone(), key.2.clone()));
        }
        changes.extend(to_object(o).map(Change::Upsert));
    }
    changes.extend(WATCHED.iter().map(|k| Change::Relisted(*k, keys.remove(k).unwrap_or_default())));
    changes
}

/// Local mode has no endpoint-slice controller: the model's EndpointSlices are derived from
/// its Services and Pods, as that controller would write them.
fn derive_endpoint_slices(model: &mut Model) {
    let slices: Vec<_> =
        model.services.values().flat_map(|svc| services::endpoint_slices(svc, model.pods.values())).collect();
    model.endpoint_slices = slices.into_iter().map(|s| (model::key_of(&s.metadata), s)).collect();
}

impl<E: Enforcer> Agent<E> {
    /// Loads the persisted state (registry, numbering, local store). In local mode it
    /// enforces the result at once; from a cluster it waits for [`Agent::mark_synced`].
    pub fn start(dp: E, settings: &Settings) -> Result<Agent<E>, AgentError> {
        let state_dir = &settings.state_dir;
        let mut registry = Registry::load(state_dir)?;
        registry.prune()?;
        let alloc_path = state_dir.join("numbering.json");
        let saved_alloc = std::fs::read_to_string(&alloc_path).unwrap_or_default();
        let alloc = if saved_alloc.is_empty() {
            Allocators::default()
        } else {
            Allocators::restore(&saved_alloc)
                .map_err(|msg| AgentError::State { path: alloc_path.clone(), msg })?
        };
        let mut agent = Agent {
            dp,
            registry,
            model: Model { identity_exclusions: settings.identity_exclusions.clone(), ..Model::default() },
            alloc,
            node: settings.node.clone(),
            store: None,
            compiled: Compiled::default(),
            stats: Stats::default(),
            metrics: Metrics::default(),
            events: Default::default(),
            directory: Default::default(),
            budgets: settings.budgets,
            audit: settings.audit,
            debugging: BTreeMap::new(),
            listed: BTreeSet::new(),
            state_dir: state_dir.clone(),
            saved_alloc,
            cgroup: settings.cgroup.clone(),
            node_network: settings.node_network,
            refused_routes: BTreeMap::new(),
            taken_routes: Vec::new(),
            endpoints_changed: Default::default(),
            learned: Learned::default(),
        };
        let learned_path = state_dir.join(LEARNED_FILE);
        agent.learned =
            Learned::load(&learned_path).map_err(|msg| AgentError::State { path: learned_path, msg })?;
        agent.model.learned = agent.learned.snapshot();
        agent.node.socket_lb_cgroup = settings.cgroup.as_ref().map(|c| c.display().to_string());
        // Services are translated from the start: before the model is enforced, the
        // pinned SERVICES map (or none) is what the hooks read.
        if let Some(cgroup) = &settings.cgroup {
            agent.dp.attach_socket_hooks(cgroup)?;
        }
        if let Some(net) = settings.node_network {
            agent.dp.masquerade(net.cluster_cidr)?;
        }
        if settings.local {
            let store = LocalStore::load(state_dir, settings.service_cidr)?;
            let changes = local_snapshot(&agent.node.node_name, &store);
            agent.store = Some(store);
            let (_, synced) = agent.handle(changes);
            synced?;
        } else {
            agent.reconcile()?;
        }
        Ok(agent)
    }

    pub fn enforcer(&self) -> &E {
        &self.dp
    }

    /// For tests that steer in-memory maps.
    pub fn enforcer_mut(&mut self) -> &mut E {
        &mut self.dp
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// What the last compile produced.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// What each Service's cluster DNS name resolves to (for the cluster's DNS server).
    pub fn service_names(&self) -> Vec<ServiceName> {
        services::dns_addresses(&self.model.services, &self.model.endpoint_slices)
            .into_iter()
            .map(|((namespace, name), addresses)| ServiceName { namespace, name, addresses })
            .collect()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The verdict events hub (the ring reader publishes into it).
    pub fn events(&self) -> std::sync::Arc<crate::monitor::EventHub> {
        self.events.clone()
    }

    /// Would a connection pass, and why: decided on what the datapath holds.
    pub fn trace(&self, q: &netpol_api::flows::TraceQuery) -> Result<netpol_api::flows::Trace, AgentError> {
        self.with_held(|held| crate::trace::trace(held, q))
    }

    /// Which policies isolate a pod, and what their rules allow it.
    pub fn explain(&self, pod: &str) -> Result<netpol_api::flows::Explanation, AgentError> {
        self.with_held(|held| crate::explain::explain(held, pod))
    }

    /// `f` over what the datapath holds (its maps read back) and the compile that wrote it.
    fn with_held<T>(
        &self,
        f: impl FnOnce(&crate::trace::Held) -> Result<T, String>,
    ) -> Result<T, AgentError> {
        let state = self.dp.realized()?;
        let (endpoints, _) = self.registry.local_endpoints();
        let directory = self.directory.get();
        let held = crate::trace::Held {
            model: &self.model,
            compiled: &self.compiled,
            state: &state,
            endpoints: &endpoints,
            directory: &directory,
        };
        f(&held).map_err(AgentError::Invalid)
    }

    /// Each policy's state on this node: enforced, rejected or over budget, and how many
    /// local endpoints it selects.
    pub fn policy_status(&self) -> Vec<netpol_api::PolicyStatus> {
        use netpol_api::{PolicyState, PolicyStatus};
        let mut selected: BTreeMap<&PolicyId, BTreeSet<u32>> = BTreeMap::new();
        for ((ep, _), policies) in &self.compiled.isolating {
            for p in policies {
                selected.entry(p).or_default().insert(*ep);
            }
        }
        let ids: BTreeSet<&PolicyId> = self.model.policies.keys().chain(self.model.rejected.keys()).collect();
        ids.into_iter()
            .map(|id| {
                let (state, message) = match (self.model.rejected.get(id), self.compiled.over_budget.get(id))
                {
                    (Some(e), _) => {
                        let kept = self.model.policies.contains_key(id);
                        let tail = if kept { "; its last valid version stays enforced" } else { "" };
                        (PolicyState::Rejected, Some(format!("{}: {}{tail}", e.field, e.msg)))
                    }
                    (None, Some(b)) => (PolicyState::OverBudget, Some(b.to_string())),
                    (None, None) => (PolicyState::Enforced, None),
                };
                PolicyStatus {
                    kind: id.kind.to_string(),
                    namespace: id.namespace.clone(),
                    name: id.name.clone(),
                    state,
                    selected: selected.get(id).map_or(0, BTreeSet::len),
                    message,
                }
            })
            .collect()
    }

    /// What names the verdicts (kept current by every compile).
    pub fn directory(&self) -> std::sync::Arc<crate::flows::DirectoryCell> {
        self.directory.clone()
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointStatus>, AgentError> {
        Ok(self.registry.list(&self.dp)?)
    }

    pub fn endpoint(&self, container_id: &str, ifname: &str) -> Result<Option<EndpointStatus>, AgentError> {
        Ok(self.registry.status(&self.dp, container_id, ifname)?)
    }

    /// The one entry point for what the sources observed: each change goes into the model
    /// (a policy that does not validate is rejected and its last valid version kept), then
    /// the agent reconciles — always, so any change also retries a failed sync. Returns
    /// the rejections, and the reconcile's outcome.
    pub fn handle(&mut self, changes: Vec<Change>) -> (Vec<PolicyError>, Result<SyncReport, AgentError>) {
        let mut rejected = Vec::new();
        for change in changes {
            match change {
                Change::Upsert(obj) => {
                    if let Object::Node(n) = &obj {
                        if n.metadata.name.as_deref() == Some(self.node.node_name.as_str()) {
                            self.node.pod_cidr = node_pod_cidr(n).or(self.node.pod_cidr.take());
                        }
                    }
                    if let Err(e) = self.upsert(obj) {
                        rejected.push(e);
                    }
                }
                Change::Delete(kind, ns, name) => self.model.delete(kind, &ns, &name),
                Change::Relisted(kind, keys) => {
                    self.model.retain(kind, &keys);
                    if self.listed.insert(kind) && self.is_synced() {
                        info!("every watched kind is listed; enforcing the model");
                    }
                }
            }
        }
        if self.store.is_some() {
            derive_endpoint_slices(&mut self.model);
        }
        (rejected, self.reconcile())
    }

    /// Whether the agent is fit to serve: every registered endpoint has its programs and
    /// its entry in place, the last sync landed, and the socket hooks it was told to attach
    /// are all in effect. The error names what is not (for `/healthz`).
    pub fn health(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let (endpoints, names) = self.registry.local_endpoints();
        let unenforced: Vec<&str> = endpoints
            .iter()
            .filter(|e| !matches!(self.dp.enforced(e.ifindex), Ok(Some(_))))
            .filter_map(|e| names.get(&e.ifindex).map(String::as_str))
            .collect();
        if !unenforced.is_empty() {
            problems.push(format!("endpoints not enforced: {}", unenforced.join(", ")));
        }
        if self.stats.last_sync_failed {
            problems.push("the last sync failed (retrying)".to_string());
        }
        let hooks = self.dp.socket_hooks();
        if self.cgroup.is_some() && !hooks.complete() {
            let missing: Vec<&str> =
                SOCKET_HOOKS.iter().copied().filter(|h| !hooks.attached.contains(h)).collect();
            problems.push(format!("socket hooks not in effect: {}", missing.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Enforces what a DNS answer taught (its chain's names have its addresses): returns
    /// once the datapath allows them, so the answer may be released. `patterns` are the
    /// allowed patterns the asked name matched: each keeps its share of names. Before the
    /// sources are synced nothing is enforced, and that is an error.
    pub fn learn(&mut self, l: &Learning, patterns: &[NameMatch]) -> Result<(), AgentError> {
        let now = now_ms();
        let mut new = false;
        for name in &l.names {
            new |= self.learned.learn(name, &l.addresses, l.ttl, now);
        }
        if let Some(asked) = l.names.first() {
            for p in patterns {
                new |= self.learned.bound_pattern(p, asked);
            }
        }
        // A new address is saved before the answer goes (a restart must not cut what it
        // allows); a longer TTL alone is saved by the next expiry round.
        if new {
            self.save_learned()?;
        }
        if new || self.stats.last_sync_failed {
            self.model.learned = self.learned.snapshot();
            self.reconcile()?;
        }
        if !self.is_synced() {
            return Err(AgentError::Invalid("the agent is not enforcing yet (sources not synced)".into()));
        }
        Ok(())
    }

    /// Forgets learned addresses past their TTL that no live connection uses (those stop
    /// new connections; established ones keep theirs); the next expiry due. Only a
    /// connection a `toFQDNs` rule matching the name allowed keeps the name's address.
    /// Reads conntrack only when something is due.
    pub fn expire_learned(&mut self) -> Result<Option<u64>, AgentError> {
        let now = now_ms();
        if self.learned.unsaved() {
            self.save_learned()?;
        }
        if self.learned.next_expiry().is_none_or(|due| due > now) {
            return Ok(self.learned.next_expiry());
        }
        // A connection keeps an address only when a rule for that very name allowed it.
        let mut in_use: BTreeMap<Ipv4Addr, BTreeSet<u32>> = BTreeMap::new();
        for (rule_id, remote) in self.dp.remotes_in_use()? {
            in_use.entry(remote).or_default().insert(rule_id);
        }
        let (rules, model) = (&self.compiled.rules, &self.model);
        let allowed_by = |name: &Name, rule_id| {
            let names = rules.get(rule_id).map(|r| model.rule_names(r)).unwrap_or_default();
            names.iter().any(|m| m.matches(name))
        };
        let used =
            |name: &Name, ip| in_use.get(&ip).is_some_and(|ids| ids.iter().any(|id| allowed_by(name, id)));
        if self.learned.expire(now, &used) {
            self.save_learned()?;
            self.model.learned = self.learned.snapshot();
            self.reconcile()?;
        }
        Ok(self.learned.next_expiry())
    }

    fn save_learned(&mut self) -> Result<(), AgentError> {
        let path = self.state_dir.join(LEARNED_FILE);
        self.learned.save(&path).map_err(|msg| AgentError::State { path, msg })
    }

    /// What the pod at `from` may ask the DNS server `to` (over `proto`) through the proxy,
    /// by the compiled state, with the pod's endpoint (None: no local pod has that address).
    pub fn dns_permit(&self, from: Ipv4Addr, to: SocketAddrV4, proto: u8) -> Option<(LocalEndpoint, Permit)> {
        let (endpoints, _) = self.registry.local_endpoints();
        let ep = endpoints.into_iter().find(|e| e.ip == from)?;
        let st = &self.compiled.state;
        let names = lookup::dns_names(st, &self.compiled.dns, ep.ifindex, *to.ip(), proto, to.port());
        let audit = self.compiled.state.audited(ep.ifindex);
        Some((ep, Permit { names, audit }))
    }

    /// Tells the datapath where the DNS proxy listens (port 0: nowhere).
    pub fn set_dns_proxy(&mut self, proxy: netpol_common::DnsProxy) -> Result<(), AgentError> {
        Ok(self.dp.set_dns_proxy(proxy)?)
    }

    /// Whether every watched kind has been listed.
    pub fn is_synced(&self) -> bool {
        WATCHED.iter().all(|k| self.listed.contains(k))
    }

    /// Compiles the model for this node and syncs the datapath to it (before the sources
    /// are synced: only holds new endpoints closed). A failure is counted and marks a
    /// retry due.
    pub fn reconcile(&mut self) -> Result<SyncReport, AgentError> {
        let result = if self.is_synced() { self.enforce_model() } else { self.hold_new_endpoints() };
        self.stats.last_sync_failed = result.is_err();
        if result.is_err() {
            self.metrics.sync_errors.inc();
        }
        result
    }

    /// The compile of the model for this node's endpoints, with this agent's budgets (and
    /// audit mode).
    fn compile(&self, alloc: &mut Allocators) -> Compiled {
        let (endpoints, _) = self.registry.local_endpoints();
        let mut compiled = compile_with(&self.model, &self.node.node_name, &endpoints, alloc, &self.budgets);
        if self.audit {
            compiled.audit_all();
        }
        for (ifindex, ep) in &mut compiled.state.endpoints {
            if self.debugging.contains_key(ifindex) {
                ep.flags |= netpol_common::EP_DEBUG;
            }
        }
        compiled
    }

    /// Starts (or, with `on` false, ends) one follower of a local pod's decision steps
    /// (`ns/pod`, or `pod` in default): its endpoint logs them while anyone follows. The
    /// endpoint's id.
    pub fn debug(&mut self, pod: &str, on: bool) -> Result<u32, AgentError> {
        let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
        let (endpoints, _) = self.registry.local_endpoints();
        let ep = endpoints.iter().find(|e| e.namespace == ns && e.pod == name).ok_or_else(|| {
            AgentError::Invalid(format!("pod {ns}/{name} is not on this node: ask the agent of its node"))
        })?;
        let followers = self.debugging.entry(ep.ifindex).or_default();
        if on {
            *followers += 1;
        } else {
            *followers = followers.saturating_sub(1);
        }
        if *followers == 0 {
            self.debugging.remove(&ep.ifindex);
        }
        self.reconcile()?;
        Ok(ep.ep_id)
    }

    fn enforce_model(&mut self) -> Result<SyncReport, AgentError> {
        let t = Instant::now();
        let mut alloc = std::mem::take(&mut self.alloc);
        let compiled = self.compile(&mut alloc);
        self.alloc = alloc;
        self.stats.last_compile = t.elapsed();
        self.metrics.compiles.inc();
        for (key, e) in
            compiled.over_budget.iter().filter(|(k, _)| !self.compiled.over_budget.contains_key(*k))
        {
            warn!(policy = %key, "{e}; it isolates the pods it selects and allows nothing");
        }
        for (f, limit) in
            compiled.services_limited.iter().filter(|(f, _)| !self.compiled.services_limited.contains_key(*f))
        {
            warn!(frontend = %format!("{}:{}/{:?}", f.addr, f.port, f.protocol), ?limit, "Service frontend limited");
        }
        let (_, names) = self.registry.local_endpoints();
        let synced = self.dp.apply_state(&compiled.state, &names);
        if synced.is_ok() {
            self.release_departed_backends(&compiled);
            self.sync_routes()?;
        }
        // What was compiled is what the datapath holds, or should: the over-budget and
        // held-closed reports stand even when the sync must be retried.
        let (endpoints, _) = self.registry.local_endpoints();
        self.directory.set(crate::flows::Directory::new(&self.model, &compiled, &endpoints));
        self.compiled = compiled;
        let report = synced?;
        self.metrics.sync_seconds.observe(t.elapsed().as_secs_f64());
        if !report.is_noop() {
            info!(%report, compile = ?self.stats.last_compile, "datapath synced");
        }
        self.save_numbering()?;
        Ok(report)
    }

    /// Routes to the other nodes' pod ranges, when netpol provides the node network; a node
    /// whose range cannot be routed, or is routed by someone else, is reported once.
    fn sync_routes(&mut self) -> Result<(), AgentError> {
        if self.node_network.is_none() {
            return Ok(());
        }
        let (routes, refused) = self.model.node_routes(&self.node.node_name);
        for (node, why) in refused.iter().filter(|(n, w)| self.refused_routes.get(*n) != Some(*w)) {
            warn!(%node, "no route to the node's pods: {why}");
        }
        self.refused_routes = refused;
        let changes = self.dp.sync_routes(&routes)?;
        for net in changes.taken.iter().filter(|n| !self.taken_routes.contains(n)) {
            warn!(%net, "another component routes this pod range; left as it is");
        }
        self.taken_routes = changes.taken;
        if changes.added + changes.removed > 0 {
            info!(
                added = changes.added,
                removed = changes.removed,
                total = routes.len(),
                "routes to other nodes' pods synced"
            );
        }
        Ok(())
    }

    /// UDP backends the last sync removed: sockets the hooks connected to them are destroyed
    /// in the pods' namespaces and the agent's own (host-network processes).
    fn release_departed_backends(&mut self, compiled: &Compiled) {
        let before = services::udp_backends(&self.compiled.state.services);
        let after = services::udp_backends(&compiled.state.services);
        let gone: BTreeSet<_> = before.difference(&after).copied().collect();
        if gone.is_empty() {
            return;
        }
        let mut namespaces = self.registry.namespaces();
        namespaces.insert(PathBuf::from("/proc/self/ns/net"));
        self.dp.release_backends(&gone, &namespaces);
    }

    /// Before the sources are synced: the pinned state stays; registered endpoints the maps
    /// lack are written held closed (and their addresses as `INIT`), unregistered ones go.
    fn hold_new_endpoints(&mut self) -> Result<SyncReport, AgentError> {
        let (endpoints, names) = self.registry.local_endpoints();
        let mut desired = self.dp.realized()?;
        desired.endpoints.retain(|index, _| names.contains_key(index));
        for ep in &endpoints {
            if desired.endpoints.contains_key(&ep.ifindex) {
                continue;
            }
            let ip = u32::from_ne_bytes(ep.ip.octets());
            let closed = Endpoint {
                ep_id: ep.ep_id,
                ip,
                identity: identity::INIT,
                flags: EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS,
                ..Default::default()
            };
            desired.endpoints.insert(ep.ifindex, closed);
            let host = ipnet::Ipv4Net::new(ep.ip, 32).expect("/32");
            desired
                .ipcache
                .insert(host, IpcacheEntry { identity: identity::INIT, cidr_identity: identity::INIT });
        }
        let report = self.dp.apply_state(&desired, &names)?;
        if !report.is_noop() {
            info!(%report, "sources not listed yet: new endpoints held closed, the rest kept as pinned");
        }
        Ok(report)
    }

    fn save_numbering(&mut self) -> Result<(), AgentError> {
        let path = self.state_dir.join("numbering.json");
        let text = serde_json::to_string(&self.alloc)
            .map_err(|e| AgentError::State { path: path.clone(), msg: e.to_string() })?;
        if text != self.saved_alloc {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, &text)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| AgentError::State { path: path.clone(), msg: e.to_string() })?;
            self.saved_alloc = text;
        }
        Ok(())
    }

    /// Records an attachment and returns once its programs are attached and its policy
    /// applied. On failure nothing of it stays.
    pub fn register(&mut self, req: EndpointRequest) -> Result<EndpointStatus, AgentError> {
        let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
        self.registry.register(req)?;
        if let Err(e) = self.reconcile() {
            let _ = self.registry.unregister(&cid, &ifname);
            let _ = self.reconcile();
            return Err(e);
        }
        self.endpoints_changed.notify_one();
        self.registry
            .status(&self.dp, &cid, &ifname)?
            .ok_or_else(|| AgentError::Invalid("registration vanished".into()))
    }

    pub fn unregister(&mut self, container_id: &str, ifname: &str) -> Result<(), AgentError> {
        if self.registry.unregister(container_id, ifname)? {
            self.endpoints_changed.notify_one();
            self.reconcile()?;
        }
        Ok(())
    }

    /// The agent's counters (shared: what a clone counts, the agent exposes).
    pub fn counters(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Woken whenever an endpoint is registered or removed.
    pub fn endpoints_changed(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.endpoints_changed.clone()
    }

    /// The address announcements this node owes the cluster (none before every kind is
    /// listed: only then are the model's announcements complete).
    pub fn announcements(&self) -> Announcements {
        if !self.is_synced() || self.store.is_some() {
            return Announcements::default();
        }
        announce::diff(&self.model, &self.node.node_name, &self.registry.local_pods())
    }

    /// Adds or replaces an object; a policy that does not validate is reported and leaves
    /// the model as it was.
    fn upsert(&mut self, obj: Object) -> Result<(), PolicyError> {
        self.model.upsert(obj).inspect_err(|e| {
            self.metrics.policies_rejected.inc();
            warn!("{e}");
        })
    }

    /// Applies objects to the local store (kubectl apply semantics: each on its own), then
    /// enforces the result before returning. A policy that does not validate, or would
    /// push a policy over its budget, is refused and stored nowhere.
    pub fn apply_objects(&mut self, objects: Vec<Value>) -> Result<Vec<ObjectResult>, AgentError> {
        if self.store.is_none() {
            return Err(AgentError::Invalid(
                "this agent's source is a Kubernetes API server, not the local store".into(),
            ));
        }
        // The model as it will be, to check each object against what came before it.
        let mut trial = self.model.clone();
        let mut results = Vec::new();
        let mut changes = Vec::new();
        for v in objects {
            let mut o = match Stored::from_value(v) {
                Ok(o) => o,
                Err(e) => {
                    let r = ObjectResult {
                        kind: String::new(),
                        namespace: String::new(),
                        name: String::new(),
                        result: None,
                        error: Some(e.to_string()),
                    };
                    results.push(r);
                    continue;
                }
            };
            let (kind, namespace, name) = o.key();
            let mut r = ObjectResult { kind: kind.to_string(), namespace, name, result: None, error: None };
            if let Err(e) = self.store.as_ref().expect("local").complete(&mut o) {
                r.error = Some(e.to_string());
                results.push(r);
                continue;
            }
            let model_object = to_object(&o);
            let admitted = match &model_object {
                Some(m) => self.admit(&mut trial, m),
                None => Ok(()),
            };
            match admitted {
                Ok(()) => {
                    let action = self.store.as_mut().expect("local").put(o)?;
                    r.result = Some(action.as_str().to_string());
                    changes.extend(model_object.map(Change::Upsert));
                }
                Err(e) => {
                    self.metrics.policies_rejected.inc();
                    warn!("{e}");
                    r.error = Some(e.to_string());
                }
            }
            results.push(r);
        }
        let (_, synced) = self.handle(changes);
        synced?;
        Ok(results)
    }

    /// Puts `obj` in the trial model unless it does not validate or would push a policy
    /// over its budget (then the trial model is left as it was).
    fn admit(&self, trial: &mut Model, obj: &Object) -> Result<(), AgentError> {
        let Some(key) = obj.policy_id() else {
            trial.upsert(obj.clone())?;
            return Ok(());
        };
        let before = (trial.policies.get(&key).cloned(), trial.rejected.get(&key).cloned());
        trial.upsert(obj.clone())?;
        let (endpoints, _) = self.registry.local_endpoints();
        let compiled =
            compile_with(trial, &self.node.node_name, &endpoints, &mut self.alloc.clone(), &self.budgets);
        let Some((other, e)) =
            compiled.over_budget.iter().find(|(k, _)| !self.compiled.over_budget.contains_key(*k))
        else {
            return Ok(());
        };
        trial.policies.remove(&key);
        trial.rejected.remove(&key);
        let (policy, rejected) = before;
        if let Some(p) = policy {
            trial.policies.insert(key.clone(), p);
        }
        if let Some(r) = rejected {
            trial.rejected.insert(key.clone(), r);
        }
        Err(AgentError::OverBudget(if *other == key {
            e.to_string()
        } else {
            format!("{key}: refused, it would push another policy over budget: {e}")
        }))
    }

    /// Deletes an object from the local store; false when there was none.
    pub fn delete_object(&mut self, key: &StoreKey) -> Result<bool, AgentError> {
        let store = self.store.as_mut().ok_or_else(|| AgentError::Invalid("no local store".into()))?;
        if !store.remove(key)? {
            return Ok(false);
        }
        let (kind, ns, name) = key;
        if let Some(kind) = model_kind(*kind) {
            let (_, synced) = self.handle(vec![Change::Delete(kind, ns.clone(), name.clone())]);
            synced?;
        }
        Ok(true)
    }

    /// Objects of the local store, of one kind.
    pub fn objects(&self, kind: ResourceKind) -> Vec<Stored> {
        self.store
            .iter()
            .flat_map(|s| s.objects())
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        let st = &self.compiled.state;
        let pods = self.registry.pods_by_endpoint_id().into_iter();
        let snapshot = Snapshot {
            endpoints: st.endpoints.len(),
            held_closed: self.compiled.held_closed.len(),
            policies_accepted: self.model.policies.len(),
            policies_invalid: self.model.rejected.len(),
            policies_over_budget: self.compiled.over_budget.len(),
            identities: self.compiled.identities.len(),
            cidr_identities: self.compiled.cidrs.len(),
            ipcache_entries: st.ipcache.len(),
            policy_entries: st.policy.len(),
            last_compile_seconds: self.stats.last_compile.as_secs_f64(),
            service_frontends: st.services.keys().filter(|k| k.slot == 0).count(),
            service_frontends_limited: self.compiled.services_limited.len(),
            datapath: self.dp.counters(),
            events: self.events.counts(),
            pods: pods.map(|(id, (ns, pod))| (id, format!("{ns}/{pod}"))).collect(),
            pods_announced_only: self
                .model
                .policy_pods()
                .filter(|(_, p, _)| model::pod_ip(p).is_none())
                .count(),
            policies_of_rules: self
                .compiled
                .rules
                .iter()
                .map(|(id, r)| (*id, r.policy.to_string()))
                .collect(),
            maps: map_fill(st),
        };
        metrics::render(&self.metrics, &snapshot)
    }
}

/// Entries written to each map the compile fills, with its capacity.
fn map_fill(st: &netpol_policy::state::MapState) -> Vec<(&'static str, usize, u32)> {
    use netpol_common::{maps, sizes};
    use netpol_policy::entries::PolicyMapKey;
    let hosts = st.ipcache.keys().filter(|n| n.prefix_len() == 32).count();
    let ranges = st.policy.keys().filter(|k| matches!(k, PolicyMapKey::Range(..))).count();
    vec![
        (maps::ENDPOINTS, st.endpoints.len(), sizes::ENDPOINTS),
        (maps::IPCACHE, hosts, sizes::IPCACHE),
        (maps::IPCACHE_LPM, st.ipcache.len() - hosts, sizes::IPCACHE_LPM),
        (maps::POLICY, st.policy.len() - ranges, sizes::POLICY),
        (maps::POLICY_RANGES, ranges, sizes::POLICY_RANGES),
        (maps::SERVICES, st.services.len(), sizes::SERVICES),
    ]
}

/// Retries a failed sync with backoff (from 200 ms, doubling to 30 s) until one succeeds;
/// runs for the agent's lifetime.
pub async fn retry_failed_syncs<E: Enforcer>(agent: std::sync::Arc<std::sync::Mutex<Agent<E>>>) {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(30);
    let mut delay = FIRST;
    loop {
        tokio::time::sleep(delay).await;
        let a = agent.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut a = a.lock().unwrap_or_else(|p| p.into_inner());
            if !a.stats.last_sync_failed {
                return None;
            }
            Some(a.reconcile().map(|_| ()).map_err(|e| e.to_string()))
        })
        .await
        .unwrap_or(None);
        delay = match outcome {
            None | Some(Ok(())) => FIRST,
            Some(Err(e)) => {
                warn!(retry_in = ?(delay * 2).min(MAX), "sync failed again: {e}");
                (delay * 2).min(MAX)
            }
        };
    }
}
