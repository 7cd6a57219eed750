//! An agent restart in cluster mode against an API server that is slow to list policies:
//! the pinned state keeps enforcing until every watched kind is listed — no isolated pod
//! loses isolation at any moment, no allowed established flow is cut — and an endpoint
//! registered in that window is held closed (root: real datapath, real traffic).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::Query,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use netpol_agent::{
    controller::Settings,
    datapath::Config,
    testing::{PinnedDatapath, TestAgent},
};
use netpol_tests::{
    need_root, objects,
    topology::Node,
    traffic::{tcp_probe, tcp_server, Conn},
    RemoveOnDrop,
};
use serde_json::{json, Value};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 52, 255, 1);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 52, 0, 2);
const DB: Ipv4Addr = Ipv4Addr::new(10, 52, 0, 3);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 52, 0, 4);
const LATE: Ipv4Addr = Ipv4Addr::new(10, 52, 0, 5);
const ALLOWED: Duration = Duration::from_secs(3);
const DENIED: Duration = Duration::from_millis(600);

fn pod(name: &str, app: &str, ip: Ipv4Addr) -> Value {
    objects::pod("default", name, Some(ip)).label("app", app).json()
}

fn list(kind: &str, api: &str, items: Value) -> Response {
    Json(json!({"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": "1"}, "items": items}))
        .into_response()
}

/// A watch that never says anything.
fn quiet() -> Response {
    axum::body::Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>())
        .into_response()
}

fn is_watch(q: &std::collections::HashMap<String, String>) -> bool {
    q.get("watch").is_some_and(|w| w == "true" || w == "1")
}

/// The cluster: web, db and other pods; db accepts web on 8080. Policy lists fail with 500
/// while `policies_down` is set.
fn server(policies_down: Arc<AtomicBool>) -> Router {
    type Q = Query<std::collections::HashMap<String, String>>;
    let kind = |k: &'static str, api: &'static str, items: Value| {
        get(move |q: Q| async move {
            if is_watch(&q) {
                quiet()
            } else {
                list(k, api, items)
            }
        })
    };
    let namespaces = json!([objects::namespace("default").json()]);
    let nodes = json!([objects::node("n1", NODE_IP).json()]);
    let pods = json!([pod("web", "web", WEB), pod("db", "db", DB), pod("other", "other", OTHER)]);
    let policies = json!([objects::policy(
        "default",
        "db",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 8080}]}]})
    )
    .json()]);
    let policy_route = get(move |q: Q| {
        let (down, items) = (policies_down.load(Ordering::SeqCst), policies.clone());
        async move {
            match (down, is_watch(&q)) {
                (true, _) => (StatusCode::INTERNAL_SERVER_ERROR, "etcd is slow today").into_response(),
                (false, true) => quiet(),
                (false, false) => list("NetworkPolicyList", "networking.k8s.io/v1", items),
            }
        }
    });
    Router::new()
        .route("/api/v1/namespaces", kind("NamespaceList", "v1", namespaces))
        .route("/api/v1/nodes", kind("NodeList", "v1", nodes))
        .route("/api/v1/pods", kind("PodList", "v1", pods))
        .route("/api/v1/services", kind("ServiceList", "v1", json!([])))
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            kind("EndpointSliceList", "discovery.k8s.io/v1", json!([])),
        )
        .route("/apis/networking.k8s.io/v1/networkpolicies", policy_route)
        .route(
            "/apis/netpol.io/v1alpha1/netpolendpoints",
            kind("NetpolEndpointList", "netpol.io/v1alpha1", json!([])),
        )
        .route("/apis/events.k8s.io/v1/namespaces/{ns}/events", post(|| async { StatusCode::CREATED }))
        .route(netpol_tests::apiserver::CRD_PATH, netpol_tests::apiserver::no_crd())
}

/// Hands pod `name` (namespace default) to the agent as netpol-cni would.
fn register(agent: &TestAgent, node: &Node, name: &str, ip: Ipv4Addr) {
    let pod = node.pod(name);
    agent.register_pod("default", name, ip, &pod.ns.path(), &pod.host_if);
}

/// One agent in cluster mode (its threads in the node namespace).
fn cluster_agent(cfg: &Config, settings: &Settings, api: std::net::SocketAddr) -> TestAgent {
    let agent = TestAgent::start(cfg, settings);
    agent.watch(api, "n1");
    agent
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restart_against_a_slow_api_server_never_opens_an_isolated_pod() {
    if need_root() {
        return;
    }
    let mut node = Node::new("rst", NODE_IP);
    for (name, ip) in [("web", WEB), ("db", DB), ("other", OTHER), ("late", LATE)] {
        node.add_pod(name, ip);
    }
    let cfg = Config { name: "test-restart".into(), ..Default::default() };
    let state_dir = std::env::temp_dir().join("netpol-test-restart");
    let _ = std::fs::remove_dir_all(&state_dir);
    let _entered = node.ns.enter();
    let _cleanup = RemoveOnDrop(vec![state_dir.clone()]);
    let _pins = PinnedDatapath::guard(cfg.clone());
    let settings = Settings::new(state_dir, "n1", false);
    // The API server listens in the node namespace, where the agent's threads run.
    let down = Arc::new(AtomicBool::new(false));
    let api_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = api_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server(down.clone());
    api_rt.spawn(async move { axum::serve(listener, app).await });

    let first = cluster_agent(&cfg, &settings, addr);
    for (name, ip) in [("web", WEB), ("db", DB), ("other", OTHER)] {
        register(&first, &node, name, ip);
    }
    wait("the first agent to sync", || first.agent().is_synced());
    let _servers = [tcp_server(&node.pod("db").ns.name, 8080)];
    let db = SocketAddrV4::new(DB, 8080);
    let (web_ns, other_ns) = (node.pod("web").ns.name.clone(), node.pod("other").ns.name.clone());
    wait("the policy to be enforced", || !tcp_probe(&other_ns, db, DENIED));
    assert!(tcp_probe(&web_ns, db, ALLOWED), "web cannot reach db");
    let mut conn = Conn::open(&web_ns, db, ALLOWED).expect("web connects to db");
    assert!(conn.exchange("before", ALLOWED));

    // Restart while the API server fails every policy list.
    down.store(true, Ordering::SeqCst);
    drop(first);
    let second = cluster_agent(&cfg, &settings, addr);
    register(&second, &node, "late", LATE);
    let window = Instant::now();
    let mut probes = 0;
    while window.elapsed() < Duration::from_secs(4) {
        assert!(!second.agent().is_synced(), "synced without the policies");
        assert!(!tcp_probe(&other_ns, db, DENIED), "db lost its isolation during the restart");
        assert!(conn.exchange(&format!("during {probes}"), ALLOWED), "the established flow was cut");
        assert!(!tcp_probe(&node.pod("late").ns.name, db, DENIED), "the held-closed pod reached db");
        probes += 1;
    }
    assert!(probes >= 3, "only {probes} probes in the window");

    // The policies list again: the model is enforced, and still nothing opened or broke.
    down.store(false, Ordering::SeqCst);
    wait("the second agent to sync", || second.agent().is_synced());
    assert!(!tcp_probe(&other_ns, db, DENIED), "db opened after the sync");
    assert!(tcp_probe(&web_ns, db, ALLOWED), "web lost db after the sync");
    assert!(conn.exchange("after", ALLOWED), "the established flow was cut by the sync");
    drop(second);
    api_rt.shutdown_background();
}
