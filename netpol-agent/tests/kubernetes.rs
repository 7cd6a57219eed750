//! The Kubernetes source against a scripted API server that speaks list/watch: the agent's
//! real watcher code (kube-runtime) must follow a list, watch events, a bookmark, a dropped
//! watch (reconnect from the bookmark), a `410 Gone` (relist) that reveals a deletion the
//! watch never reported, and must publish a Warning event for an invalid policy. The agent
//! under test enforces into in-memory maps: no root needed.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    routing::{get, post},
    Json, Router,
};
use futures::stream;
use netpol_agent::{
    controller::{Agent, Settings},
    enforcer::MemoryMaps,
};
use netpol_policy::{
    model::Key,
    policy::{PolicyId, PolicyKind},
};
use netpol_tests::{objects, RemoveOnDrop};
use serde_json::{json, Value};

/// What the scripted server has served and received.
#[derive(Default)]
struct Script {
    pod_lists: usize,
    pod_watches: usize,
    events: Vec<Value>,
    /// Creates refused because an event of that name existed (another node's).
    event_conflicts: usize,
}

type Shared = Arc<Mutex<Script>>;

fn pod(name: &str, rv: u32, app: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(), "labels": {"app": app}},
           "spec": {"nodeName": "other", "containers": [{"name": "c"}]},
           "status": {"podIP": format!("10.1.0.{}", name.as_bytes()[0] - b'a' + 2)}})
}

fn lines(items: Vec<Value>) -> Vec<Result<Bytes, std::io::Error>> {
    items.into_iter().map(|v| Ok(Bytes::from(format!("{v}\n")))).collect()
}

/// A watch body: these events, then either the end of the connection or silence.
fn watch_body(events: Vec<Value>, hang: bool) -> Body {
    let s = stream::iter(lines(events));
    if hang {
        Body::from_stream(futures::StreamExt::chain(s, stream::pending()))
    } else {
        Body::from_stream(s)
    }
}

async fn pods(
    State(st): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let mut s = st.lock().unwrap();
    if !watch {
        s.pod_lists += 1;
        // First list: a, b. After the 410: a, c, d (b was deleted while nobody watched).
        let (items, rv) = if s.pod_lists == 1 {
            (vec![pod("a", 5, "web"), pod("b", 6, "web")], 10)
        } else {
            (vec![pod("a", 5, "web"), pod("c", 11, "db"), pod("d", 18, "db")], 20)
        };
        return Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items}))
            .into_response();
    }
    s.pod_watches += 1;
    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}}});
    match s.pod_watches {
        // c appears, a bookmark, then the connection drops.
        1 => watch_body(vec![json!({"type": "ADDED", "object": pod("c", 11, "db")}), bookmark], false)
            .into_response(),
        // Resuming from the bookmark: the version is too old.
        2 => watch_body(
            vec![
                json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "too old resource version: 12 (19)", "reason": "Expired", "code": 410}}),
            ],
            false,
        )
        .into_response(),
        // After the relist: a relabelled, c deleted; then quiet.
        _ => watch_body(
            vec![
                json!({"type": "MODIFIED", "object": pod("a", 21, "api")}),
                json!({"type": "DELETED", "object": pod("c", 22, "db")}),
            ],
            true,
        )
        .into_response(),
    }
}

fn list_then_quiet(
    kind: &'static str,
    api: &'static str,
    items: Value,
) -> axum::routing::MethodRouter<Shared> {
    get(move |Query(q): Query<HashMap<String, String>>| {
        let items = items.clone();
        async move {
            use axum::response::IntoResponse;
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch_body(vec![], true).into_response();
            }
            Json(json!({"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": "1"}, "items": items})).into_response()
        }
    })
}

async fn record_event(
    State(st): State<Shared>,
    Path(_ns): Path<String>,
    Json(ev): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let mut st = st.lock().unwrap();
    // As the API server: names are unique (Recorder names carry a timestamp; netpol's
    // invalid-policy events are named per policy version).
    if st.events.iter().any(|e| e["metadata"]["name"] == ev["metadata"]["name"]) {
        st.event_conflicts += 1;
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists",
                            "message": "events already exists", "code": 409});
        return (axum::http::StatusCode::CONFLICT, Json(status));
    }
    st.events.push(ev.clone());
    (axum::http::StatusCode::CREATED, Json(ev))
}

/// 600 /32 ipBlocks × 500 ports for every pod of `default`: 300k keys per local pod.
fn huge_policy() -> Value {
    objects::ip_blocks_policy("default", "huge", json!({}), 600, 500)
        .set("metadata.uid", json!("u-huge"))
        .json()
}

fn server(st: Shared) -> Router {
    let namespaces = json!([{"metadata": {"name": "default", "resourceVersion": "1", "labels": {"kubernetes.io/metadata.name": "default"}}}]);
    let nodes = json!([{"metadata": {"name": "n1", "resourceVersion": "1"}, "spec": {"podCIDR": "10.244.3.0/24"},
                        "status": {"addresses": [{"type": "InternalIP", "address": "10.9.0.1"}]}}]);
    let policies = json!([
        {"metadata": {"name": "good", "namespace": "default", "resourceVersion": "1"},
         "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 5432}]}]}},
        {"metadata": {"name": "bad", "namespace": "default", "resourceVersion": "1", "uid": "u-bad"},
         "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]}},
        huge_policy(),
    ]);
    let services = json!([objects::service(
        "default",
        "api",
        "10.96.0.20",
        json!({"app": "api"}),
        json!([{"port": 80, "targetPort": 8080}])
    )
    .json()]);
    let slices =
        json!([
            objects::endpoint_slice("default", "api-1", "api", json!([{"port": 8080}]), &["10.1.0.2"]).json()
        ]);
    let listed = Listed { namespaces, nodes, policies, services, slices };
    cluster(get(pods), listed).with_state(st)
}

/// What a scripted cluster lists once (then its watches stay quiet).
struct Listed {
    namespaces: Value,
    nodes: Value,
    policies: Value,
    services: Value,
    slices: Value,
}

/// A scripted API server: pods served by `pods`, every other watched kind by
/// [`list_then_quiet`] (no announcements), events recorded; no CRD for
/// CiliumNetworkPolicies (their list and the CRD answer 404).
fn cluster(pods: axum::routing::MethodRouter<Shared>, l: Listed) -> Router<Shared> {
    Router::new()
        .route("/api/v1/pods", pods)
        .route("/api/v1/services", list_then_quiet("ServiceList", "v1", l.services))
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            list_then_quiet("EndpointSliceList", "discovery.k8s.io/v1", l.slices),
        )
        .route("/api/v1/namespaces", list_then_quiet("NamespaceList", "v1", l.namespaces))
        .route("/api/v1/nodes", list_then_quiet("NodeList", "v1", l.nodes))
        .route(
            "/apis/networking.k8s.io/v1/networkpolicies",
            list_then_quiet("NetworkPolicyList", "networking.k8s.io/v1", l.policies),
        )
        .route(
            "/apis/netpol.io/v1alpha1/netpolendpoints",
            list_then_quiet("NetpolEndpointList", "netpol.io/v1alpha1", json!([])),
        )
        .route("/apis/events.k8s.io/v1/namespaces/{ns}/events", post(record_event))
        .route(netpol_tests::apiserver::CRD_PATH, netpol_tests::apiserver::no_crd())
}

/// Registers pod `default/NAME` at `ip`, the loopback standing in for its veth; its ifindex.
fn register_on_lo(agent: &mut Agent<MemoryMaps>, name: &str, ip: &str) -> u32 {
    let lo = netpol_agent::datapath::ifindex("lo").unwrap();
    let request = netpol_api::EndpointRequest {
        container_id: format!("c-{name}"),
        ifname: "eth0".into(),
        netns: "/proc/1/ns/net".into(),
        pod_namespace: "default".into(),
        pod_name: name.into(),
        ip: ip.parse().unwrap(),
        host_ifname: "lo".into(),
        host_ifindex: lo,
        pod_uid: None,
    };
    agent.register(request).unwrap();
    lo
}

#[test]
fn the_kubernetes_source_follows_list_watch_through_reconnects_and_410() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let script: Shared = Arc::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = server(script.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    let state_dir = std::env::temp_dir().join("netpol-test-k8s-source");
    let _cleanup = RemoveOnDrop(vec![state_dir.clone()]);
    let _ = std::fs::remove_dir_all(&state_dir);
    let dp = MemoryMaps::default();
    let settings = Settings::new(state_dir.clone(), "n1", false);
    let mut agent = Agent::start(dp, &settings).unwrap();
    // Pod a runs here (the loopback stands in for its veth).
    let lo = register_on_lo(&mut agent, "a", "10.1.0.2");
    let agent = Arc::new(Mutex::new(agent));
    // The client's buffer service needs a runtime to start in.
    let client = {
        let _rt = rt.enter();
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap()
    };
    rt.spawn(netpol_agent::sources::kubernetes::run(client, agent.clone(), "n1".into()));

    let want_pods: BTreeSet<Key> =
        [("default".to_string(), "a".to_string()), ("default".to_string(), "d".to_string())].into();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (pods, a_app, policies, rejected, pod_cidr) = loop {
        std::thread::sleep(Duration::from_millis(100));
        let a = agent.lock().unwrap();
        let pods: BTreeSet<Key> = a.model().pods.keys().cloned().collect();
        let a_app = a
            .model()
            .pods
            .get(&("default".into(), "a".into()))
            .and_then(|p| p.metadata.labels.clone())
            .and_then(|l| l.get("app").cloned());
        let snapshot = (
            pods,
            a_app,
            a.model().policies.keys().cloned().collect::<Vec<_>>(),
            a.model().rejected.keys().cloned().collect::<Vec<_>>(),
            a.node().pod_cidr.clone(),
        );
        let events = script.lock().unwrap().events.len();
        if (snapshot.0 == want_pods && snapshot.1.as_deref() == Some("api") && events > 1)
            || Instant::now() > deadline
        {
            break snapshot;
        }
    };
    let s = script.lock().unwrap();
    assert_eq!(pods, want_pods, "b (deleted while the watch was down) or c (deleted by an event) survived");
    assert_eq!(a_app.as_deref(), Some("api"), "the relabel after the relist was missed");
    assert!(s.pod_lists >= 2, "no relist after 410 Gone");
    assert!(s.pod_watches >= 3, "no reconnect: {} watches", s.pod_watches);
    let key = |n: &str| PolicyId::new(PolicyKind::NetworkPolicy, "default", n);
    assert_eq!(policies, vec![key("good"), key("huge")]);
    assert_eq!(rejected, vec![key("bad")], "(and no CiliumNetworkPolicy CRD held the sync back)");
    assert_eq!(pod_cidr.as_deref(), Some("10.244.3.0/24"), "the Node's podCIDR was not taken");
    let of = |reason: &str| s.events.iter().filter(|e| e["reason"] == reason).collect::<Vec<_>>();
    let ev = of("InvalidNetworkPolicy")[0];
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert_eq!(ev["regarding"]["name"], "bad");
    assert!(ev["note"].as_str().unwrap().contains("spec.ingress[0].from[0].ipBlock.except[0]"), "{ev}");
    // The oversized policy: one Warning (not one per reconcile), naming its budget; it
    // isolates pod a and adds nothing.
    let over = of("NetworkPolicyOverBudget");
    assert_eq!(over.len(), 1, "{:?}", s.events);
    assert_eq!(over[0]["regarding"]["name"], "huge");
    assert!(over[0]["note"].as_str().unwrap().contains("16384"), "{}", over[0]);
    let a = agent.lock().unwrap();
    assert_eq!(a.enforcer().state.endpoints[&lo].flags, netpol_common::EP_ISOLATED_INGRESS);
    assert!(a.enforcer().state.policy.is_empty(), "the rejected policy wrote entries");
    // The compiled state reflects the model: the cluster's pods are in the ipcache.
    assert!(
        a.compiled().state.ipcache.keys().any(|n| n.to_string() == "10.1.0.5/32"),
        "d is not in the ipcache"
    );
    // The Service and its EndpointSlice from the API: one frontend, one backend slot, and
    // its ClusterIP known as a Service address.
    let st = &a.enforcer().state;
    assert_eq!(st.services.len(), 2, "{:?}", st.services);
    let front = st.services.iter().find(|(k, _)| k.slot == 0).unwrap();
    assert_eq!(
        (front.0.addr, front.0.port, front.1.count),
        (u32::from_ne_bytes([10, 96, 0, 20]), 80u16.to_be(), 1)
    );
    let cluster_ip = st.ipcache.iter().find(|(n, _)| n.to_string() == "10.96.0.20/32").unwrap();
    assert_eq!(cluster_ip.1.identity, netpol_common::identity::SERVICE);
    drop(a);
    drop(s);
    rt.shutdown_background();
}

/// Two nodes see the same invalid policy: the cluster gets one Warning for it, not one per
/// node (the second node's create meets AlreadyExists).
#[test]
fn an_invalid_policy_is_reported_once_for_the_whole_cluster() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let script: Shared = Arc::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let empty = json!([]);
    let namespaces = json!([{"metadata": {"name": "default", "resourceVersion": "1"}}]);
    let policies = json!([{"metadata": {"name": "bad", "namespace": "default", "resourceVersion": "7", "generation": 3, "uid": "u-bad"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 70}]}]}}]);
    let listed =
        Listed { namespaces, nodes: empty.clone(), policies, services: empty.clone(), slices: empty.clone() };
    let app = cluster(list_then_quiet("PodList", "v1", empty), listed).with_state(script.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    let (mut dirs, mut agents) = (Vec::new(), Vec::new());
    for node in ["n1", "n2"] {
        let state_dir = std::env::temp_dir().join(format!("netpol-test-k8s-once-{node}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        dirs.push(state_dir.clone());
        let settings = Settings::new(state_dir, node, false);
        let agent = Arc::new(Mutex::new(Agent::start(MemoryMaps::default(), &settings).unwrap()));
        agents.push(agent.clone());
        let client = {
            let _rt = rt.enter();
            kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap()
        };
        rt.spawn(netpol_agent::sources::kubernetes::run(client, agent, node.into()));
    }
    let _cleanup = RemoveOnDrop(dirs);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let s = script.lock().unwrap();
        if s.events.len() + s.event_conflicts >= 2 {
            break;
        }
        drop(s);
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = script.lock().unwrap();
    assert_eq!(s.events.len(), 1, "{:?}", s.events);
    assert_eq!(s.event_conflicts, 1, "the second node did not report");
    let ev = &s.events[0];
    assert_eq!((ev["reason"].as_str(), ev["type"].as_str()), (Some("InvalidNetworkPolicy"), Some("Warning")));
    // Named by the spec's generation (the same on every node), regarding the object's version.
    assert_eq!(ev["metadata"]["name"], "bad.netpol-invalid.g3");
    assert_eq!(ev["regarding"]["resourceVersion"], "7");
    assert!(ev["note"].as_str().unwrap().contains("endPort"), "{ev}");
    // Each node's policy status says it is rejected, naming the field.
    for agent in &agents {
        let status = agent.lock().unwrap().policy_status();
        assert_eq!(status.len(), 1, "{status:?}");
        assert_eq!((status[0].name.as_str(), status[0].state), ("bad", netpol_api::PolicyState::Rejected));
        let message = status[0].message.as_deref().unwrap_or("");
        assert!(message.starts_with("spec.ingress[0].ports[0].endPort"), "{message}");
    }
}

/// CiliumNetworkPolicies come from their CRD's watch: while the CRD is installed but its kind
/// not served (an API server starting) the agent does not sync — it cannot know the
/// policies; with no CRD (a cluster without Cilium) it syncs and enforces NetworkPolicies;
/// once the CRD is served, a valid policy isolates and a deleted one stops, and an invalid
/// one gets its Warning naming the field.
#[test]
fn cilium_policies_come_from_their_crd_once_it_is_served() {
    use netpol_tests::apiserver::{ApiServer, Crd};
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap());
    api.crd("CiliumNetworkPolicy", Crd::NotYetServed);
    api.apply(objects::namespace("default").json());
    api.apply(objects::pod("default", "backend", Some("10.1.0.2".parse().unwrap())).json());
    let state_dir = std::env::temp_dir().join("netpol-test-k8s-cnp");
    let _ = std::fs::remove_dir_all(&state_dir);
    let _cleanup = RemoveOnDrop(vec![state_dir.clone()]);
    let mut agent = Agent::start(MemoryMaps::default(), &Settings::new(state_dir, "n1", false)).unwrap();
    let lo = register_on_lo(&mut agent, "backend", "10.1.0.2");
    let agent = Arc::new(Mutex::new(agent));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = {
        let _rt = rt.enter();
        kube::Client::try_from(kube::Config::new(format!("http://{}", api.addr).parse().unwrap())).unwrap()
    };
    rt.spawn(netpol_agent::sources::kubernetes::run(client, agent.clone(), "n1".into()));
    let wait = |what: &str, done: &dyn Fn(&Agent<MemoryMaps>) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&agent.lock().unwrap()) {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let flags = |a: &Agent<MemoryMaps>| a.enforcer().state.endpoints.get(&lo).map(|e| e.flags);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!agent.lock().unwrap().is_synced(), "synced while the CRD's policies could not be listed");
    api.crd("CiliumNetworkPolicy", Crd::Absent);
    wait("synced without the CRD", &|a| a.is_synced() && flags(a) == Some(0));

    api.crd("CiliumNetworkPolicy", Crd::Served);
    let spec = json!({"endpointSelector": {"matchLabels": {"app": "backend"}},
                      "ingress": [{"fromEndpoints": [{"matchLabels": {"k8s:app": "frontend"}}]}]});
    api.apply(objects::cilium_policy("default", "backend-ingress", spec).json());
    wait("the CiliumNetworkPolicy isolates", &|a| flags(a) == Some(netpol_common::EP_ISOLATED_INGRESS));
    let bad = json!({"endpointSelector": {}, "egress": [{"toCIDR": ["10.0.0.0/8"]}]});
    let version = |spec: Value, generation: i64| {
        let mut obj = objects::cilium_policy("default", "bad", spec).json();
        obj["metadata"]["generation"] = json!(generation);
        obj
    };
    api.apply(version(bad, 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let found = api.events().into_iter().find(|e| e["reason"] == "InvalidCiliumNetworkPolicy");
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no Warning for the invalid policy: {:?}", api.events());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(event["note"].as_str().unwrap().contains("spec.egress[0].toCIDR"), "{event}");
    assert_eq!(event["regarding"]["kind"], "CiliumNetworkPolicy");
    assert!(event["metadata"]["name"].as_str().unwrap().starts_with("bad.cnp-invalid."), "{event}");
    assert_eq!(flags(&agent.lock().unwrap()), Some(netpol_common::EP_ISOLATED_INGRESS), "bad cost the rest");
    // Its Valid condition says so, naming the field; a fixed version clears it, once.
    let valid = |generation: i64, status: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let obj = api.get("CiliumNetworkPolicy", "default", "bad").unwrap();
            let c = &obj["status"]["conditions"][0];
            if c["type"] == "Valid" && c["status"] == status && c["observedGeneration"] == generation {
                break obj;
            }
            assert!(Instant::now() < deadline, "no Valid={status} for generation {generation}: {obj}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let obj = valid(1, "False");
    let message = obj["status"]["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("spec.egress[0].toCIDR"), "{message}");
    let fixed =
        json!({"endpointSelector": {"matchLabels": {"app": "none"}}, "egress": [{"toEndpoints": [{}]}]});
    api.apply(version(fixed, 2));
    let obj = valid(2, "True");
    std::thread::sleep(Duration::from_secs(1));
    let later = api.get("CiliumNetworkPolicy", "default", "bad").unwrap();
    assert_eq!(
        later["metadata"]["resourceVersion"], obj["metadata"]["resourceVersion"],
        "status written again"
    );

    assert!(api.delete("CiliumNetworkPolicy", "default", "backend-ingress"));
    wait("the deleted policy stops isolating", &|a| flags(a) == Some(0));
    rt.shutdown_background();
}
