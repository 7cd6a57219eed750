//! The Kubernetes source: kube-runtime watchers for Namespaces, Pods, NetworkPolicies,
//! CiliumNetworkPolicies, Nodes, Services, EndpointSlices and the agents' address
//! announcements ([`NetpolEndpoint`], which this node also writes: [`super::announce`]). kube's watcher lists, then watches from the list's resourceVersion with bookmarks;
//! on a dropped connection it resumes from the last version seen, and on `410 Gone` it
//! lists again — so every relist is a full snapshot, and objects that vanished while the
//! watch was down are deleted from the model when the snapshot completes. Errors back off
//! exponentially (kube's default backoff) and never end the source.
//!
//! The agent enforces the model only once every kind has listed
//! ([`Agent::mark_synced`](crate::controller::Agent::mark_synced)): a restart against a slow
//! or failing API server keeps the pinned state enforcing instead of compiling a partial
//! model (policies without their peers, pods without their policies). One exception: where
//! the API server does not serve CiliumNetworkPolicies (no CRD: a cluster without Cilium
//! whose operator did not install `deploy/cilium/`), there are none, and the kind counts
//! as listed empty; the watch keeps retrying, and the first list once the CRD is there
//! brings them in. A 404 alone does not prove the CRD absent (an API server answers 404
//! while its CRD handlers start): the absence counts only when a GET of the CRD itself
//! answers 404 too; otherwise the kind stays unlisted (fail closed) and the watch retries.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, ObjectReference, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    NamespaceResourceScope,
};
use kube::{
    runtime::{
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use netpol_policy::{
    cilium::CiliumNetworkPolicy,
    crd::NetpolEndpoint,
    model::{Key, Kind, Object},
    policy::{PolicyId, PolicyKind},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{announce, validity, Change};
use crate::{controller::Agent, enforcer::Enforcer};

fn key_of<K: Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Whether a kind the API server does not serve (404 on list) counts as listed empty.
enum Served {
    Always,
    /// A custom resource another project may or may not have installed: absent (listed
    /// empty) when its CRD, named here, is absent too.
    IfCrd(Api<CustomResourceDefinition>, String),
}

impl Served {
    /// A custom resource `K` whose CRD may be missing.
    fn if_crd<K: Resource<DynamicType = ()>>(client: &Client) -> Served {
        Served::IfCrd(Api::all(client.clone()), format!("{}.{}", K::plural(&()), K::group(&())))
    }

    /// After a 404 on list: whether the kind provably does not exist on this server.
    async fn provably_absent(&self) -> bool {
        let Served::IfCrd(crds, name) = self else { return false };
        match crds.get_opt(name).await {
            Ok(None) => true,
            Ok(Some(_)) => {
                warn!(crd = %name, "CRD installed but its kind not served yet: waiting");
                false
            }
            Err(e) => {
                warn!(crd = %name, "could not tell whether the CRD is installed, retrying: {e}");
                false
            }
        }
    }
}

async fn watch<K>(
    api: Api<K>,
    kind: Kind,
    served: Served,
    wrap: fn(K) -> Object,
    tx: mpsc::UnboundedSender<Change>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut listing: Option<BTreeSet<Key>> = None;
    let mut absent = false;
    while let Some(item) = stream.next().await {
        let change = match item {
            Ok(Event::Init) => {
                listing = Some(BTreeSet::new());
                absent = false;
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listing.get_or_insert_with(BTreeSet::new).insert(key_of(&o));
                Change::Upsert(wrap(o))
            }
            Ok(Event::InitDone) => {
                let seen = listing.take().unwrap_or_default();
                info!(?kind, objects = seen.len(), "listed");
                Change::Relisted(kind, seen)
            }
            Ok(Event::Apply(o)) => Change::Upsert(wrap(o)),
            Ok(Event::Delete(o)) => {
                let (ns, name) = key_of(&o);
                Change::Delete(kind, ns, name)
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(e))) if e.code == 404 => {
                if absent || !served.provably_absent().await {
                    continue;
                }
                absent = true;
                warn!(?kind, "not served by the API server (CRD not installed): none to enforce");
                Change::Relisted(kind, BTreeSet::new())
            }
            Err(e) => {
                warn!(?kind, "watch failed, retrying: {e}");
                continue;
            }
        };

        if tx.send(change).is_err() {
            return;
        }
    }
}

/// One RBAC grant: API group, resource (plural), verb.
pub type Grant = (String, String, &'static str);

fn watched<K: Resource<DynamicType = ()>>() -> [Grant; 2] {
    let (group, plural) = (K::group(&()).to_string(), K::plural(&()).to_string());
    [(group.clone(), plural.clone(), "list"), (group, plural, "watch")]
}

/// Everything the agent asks of the API server, as RBAC grants — the one source of truth
/// for the ClusterRole in `deploy/netpol.yaml` (its test checks they are equal): list and
/// watch for each kind [`start`] watches (kube's watcher does nothing else), get on CRDs
/// (whether an optional kind's CRD is installed: [`Served::IfCrd`]), patch (a
/// server-side apply) and delete on address announcements, and create and patch on events
/// (invalid policies are created; the event recorder patches a repeated over-budget
/// event's series).
pub fn grants() -> Vec<Grant> {
    let mut out: Vec<Grant> = [
        watched::<Namespace>(),
        watched::<Pod>(),
        watched::<NetworkPolicy>(),
        watched::<CiliumNetworkPolicy>(),
        watched::<Node>(),
        watched::<Service>(),
        watched::<EndpointSlice>(),
        watched::<NetpolEndpoint>(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (group, plural) =
        (CustomResourceDefinition::group(&()).to_string(), CustomResourceDefinition::plural(&()).to_string());
    out.push((group, plural, "get"));
    let (group, plural) = (NetpolEndpoint::group(&()).to_string(), NetpolEndpoint::plural(&()).to_string());
    out.push((group.clone(), plural.clone(), "patch"));
    out.push((group, plural, "delete"));
    // The Valid condition of CiliumNetworkPolicies (`validity`).
    let (group, plural) = (CiliumNetworkPolicy::group(&()).to_string(), CiliumNetworkPolicy::plural(&()));
    out.push((group, format!("{plural}/status"), "patch"));
    type K8sEvent = k8s_openapi::api::events::v1::Event;
    let (group, plural) = (K8sEvent::group(&()).to_string(), K8sEvent::plural(&()).to_string());
    out.push((group.clone(), plural.clone(), "create"));
    out.push((group, plural, "patch"));
    out
}

fn all<K: Resource<DynamicType = ()>>(client: &Client) -> Api<K> {
    Api::all(client.clone())
}

fn namespaced_all<K: Resource<DynamicType = (), Scope = NamespaceResourceScope>>(client: &Client) -> Api<K> {
    Api::all(client.clone())
}

/// Starts the watchers; their changes arrive on the returned channel.
pub fn start(client: &Client) -> mpsc::UnboundedReceiver<Change> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(watch(
        all::<Namespace>(client),
        Kind::Namespace,
        Served::Always,
        |o| Object::Namespace(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        namespaced_all::<Pod>(client),
        Kind::Pod,
        Served::Always,
        |o| Object::Pod(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        namespaced_all::<NetworkPolicy>(client),
        Kind::NetworkPolicy,
        Served::Always,
        |o| Object::NetworkPolicy(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        namespaced_all::<CiliumNetworkPolicy>(client),
        Kind::CiliumNetworkPolicy,
        Served::if_crd::<CiliumNetworkPolicy>(client),
        |o| Object::CiliumNetworkPolicy(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        all::<Node>(client),
        Kind::Node,
        Served::Always,
        |o| Object::Node(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        namespaced_all::<Service>(client),
        Kind::Service,
        Served::Always,
        |o| Object::Service(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        namespaced_all::<EndpointSlice>(client),
        Kind::EndpointSlice,
        Served::Always,
        |o| Object::EndpointSlice(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        namespaced_all::<NetpolEndpoint>(client),
        Kind::NetpolEndpoint,
        Served::Always,
        |o| Object::NetpolEndpoint(Box::new(o)),
        tx,
    ));
    rx
}

/// How long changes are gathered before one compilation takes them all.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// How often the announcements are checked without a change to prompt it (a failed write
/// is retried then).
const ANNOUNCE_RETRY: Duration = Duration::from_secs(10);

/// Feeds the agent from the cluster until the channel closes: batches of changes, one
/// reconcile per batch ([`handle_batch`]); after each batch, each endpoint registered or
/// removed, and every [`ANNOUNCE_RETRY`], this node's address announcements.
pub async fn run<E: Enforcer>(client: Client, agent: Arc<Mutex<Agent<E>>>, node_name: String) {
    let mut rx = start(&client);
    let mut reports = Reports {
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "netpol-agent".into(), instance: Some(node_name.clone()) },
        ),
        over_budget: BTreeSet::new(),
    };
    let (endpoints_changed, metrics) = {
        let a = agent.lock().unwrap_or_else(|p| p.into_inner());
        (a.endpoints_changed(), a.counters())
    };
    let mut retry = tokio::time::interval(ANNOUNCE_RETRY);
    loop {
        tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { return };
                tokio::time::sleep(DEBOUNCE).await;
                let mut batch = vec![first];
                while let Ok(c) = rx.try_recv() {
                    batch.push(c);
                }
                handle_batch(&client, &agent, batch, &mut reports).await;
            }
            _ = endpoints_changed.notified() => {}
            _ = retry.tick() => {}
        }
        let due = agent.lock().unwrap_or_else(|p| p.into_inner()).announcements();
        announce::apply(&client, due, &metrics).await;
    }
}

/// Where rejections are published, and the over-budget policies already reported.
struct Reports {
    recorder: Recorder,
    over_budget: BTreeSet<PolicyId>,
}

/// One reconcile for `batch`, and a Warning event on every policy rejected as invalid (one
/// per policy version for the whole cluster: see [`publish_invalid`]) or over this node's
/// budget (one per node: budgets are per node).
async fn handle_batch<E: Enforcer>(
    client: &Client,
    agent: &Arc<Mutex<Agent<E>>>,
    batch: Vec<Change>,
    reports: &mut Reports,
) {
    // Where to publish a rejection: the policy object as this batch delivered it, and the
    // version of its spec.
    let references: BTreeMap<PolicyId, (ObjectReference, String)> = batch
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(o) => Some((o.policy_id()?, policy_reference(o)?)),
            _ => None,
        })
        .collect();
    let cnps: BTreeMap<PolicyId, CiliumNetworkPolicy> = batch
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(o @ Object::CiliumNetworkPolicy(cnp)) => Some((o.policy_id()?, (**cnp).clone())),
            _ => None,
        })
        .collect();
    let a = Arc::clone(agent);
    let (rejected, over_budget) = tokio::task::spawn_blocking(move || {
        let mut a = a.lock().unwrap_or_else(|p| p.into_inner());
        let (rejected, synced) = a.handle(batch);
        if let Err(e) = synced {
            warn!("reconcile failed (retrying with backoff): {e}");
        }
        let rejected: Vec<(PolicyId, String)> =
            rejected.into_iter().map(|e| (e.policy.clone(), e.to_string())).collect();
        let over_budget: Vec<(PolicyId, ObjectReference, String)> = a
            .compiled()
            .over_budget
            .iter()
            .filter_map(|(k, e)| {
                Some((k.clone(), a.model().policies.get(k)?.object.object_ref(), e.to_string()))
            })
            .collect();
        (rejected, over_budget)
    })
    .await
    .unwrap_or_default();
    for (key, cnp) in &cnps {
        let rejection = rejected.iter().find(|(k, _)| k == key).map(|(_, msg)| msg.as_str());
        if let Some(condition) = validity::wanted(cnp, rejection) {
            validity::publish(client, cnp, condition).await;
        }
    }
    let rejected =
        rejected.into_iter().filter_map(|(k, msg)| Some((k.kind, references.get(&k)?.clone(), msg)));
    for (kind, (reference, version), msg) in rejected {
        publish_invalid(client, kind, &reference, &version, msg).await;
    }
    // Once per policy and rejection: again only after it fitted in between.
    reports.over_budget.retain(|k| over_budget.iter().any(|(o, _, _)| o == k));
    for (key, reference, msg) in over_budget {
        let reason = format!("{}OverBudget", key.kind);
        if reports.over_budget.insert(key) {
            let msg = format!("{msg}; it isolates the pods it selects and allows nothing");
            publish_rejection(&reports.recorder, &reference, &reason, msg).await;
        }
    }
}

/// Where to publish a policy's rejection: the object as delivered (with its
/// resourceVersion), and the version of its spec.
fn policy_reference(o: &Object) -> Option<(ObjectReference, String)> {
    let (reference, meta) = match o {
        Object::NetworkPolicy(np) => (np.object_ref(&()), &np.metadata),
        Object::CiliumNetworkPolicy(cnp) => (cnp.object_ref(&()), &cnp.metadata),
        _ => return None,
    };
    let reference = ObjectReference { resource_version: meta.resource_version.clone(), ..reference };
    Some((reference, spec_version(meta)))
}

/// Which version of a policy's spec this is: its generation (a label or annotation edit
/// makes none), or its resourceVersion where the server sets no generation.
fn spec_version(meta: &kube::api::ObjectMeta) -> String {
    match (meta.generation, &meta.resource_version) {
        (Some(g), _) => format!("g{g}"),
        (None, Some(rv)) => rv.clone(),
        (None, None) => "0".into(),
    }
}

/// The event name for an invalid version of a policy's spec: the same on every node, so
/// the first node's create wins and the others meet `AlreadyExists` — one Warning per
/// version for the cluster, not one per node.
pub fn invalid_event_name(kind: PolicyKind, policy: &str, version: &str) -> String {
    let name: String = policy.chars().take(200).collect();
    let tag = match kind {
        PolicyKind::NetworkPolicy => "netpol",
        PolicyKind::CiliumNetworkPolicy => "cnp",
    };
    format!("{name}.{tag}-invalid.{version}")
}

/// Publishes `Invalid<Kind>` on the policy under [`invalid_event_name`].
async fn publish_invalid(
    client: &Client,
    kind: PolicyKind,
    reference: &ObjectReference,
    version: &str,
    msg: String,
) {
    use k8s_openapi::{api::events::v1::Event as K8sEvent, apimachinery::pkg::apis::meta::v1::MicroTime};
    let ns = reference.namespace.clone().unwrap_or_else(|| "default".into());
    let event = K8sEvent {
        metadata: kube::api::ObjectMeta {
            name: Some(invalid_event_name(kind, reference.name.as_deref().unwrap_or(""), version)),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(k8s_openapi::chrono::Utc::now())),
        type_: Some("Warning".into()),
        reason: Some(format!("Invalid{kind}")),
        action: Some("Compile".into()),
        note: Some(msg),
        regarding: Some(reference.clone()),
        reporting_controller: Some("netpol-agent".into()),
        reporting_instance: Some("netpol-agent".into()),
        ..Default::default()
    };
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    match events.create(&kube::api::PostParams::default(), &event).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {} // another node reported it first
        Err(e) => warn!("publishing the rejection event failed: {e}"),
    }
}

async fn publish_rejection(recorder: &Recorder, reference: &ObjectReference, reason: &str, msg: String) {
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(msg),
        action: "Compile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        warn!("publishing the rejection event failed: {e}");
    }
}
