//! A scripted Kubernetes API server for simulations: it holds objects of the kinds the
//! agent watches, numbers every change with a resourceVersion, and serves list and watch
//! (a watch replays the changes after its resourceVersion, then streams new ones) over
//! plain HTTP — enough for kube-runtime's watcher. Events are accepted and kept; clients
//! may server-side apply (PATCH, the whole object) and delete single objects, as the agents
//! do with their address announcements, and merge-patch an object's status. The test changes the objects as a controller would
//! (`apply`, `delete`). A custom resource's kind may be left unserved, as on a cluster
//! without its CRD or one whose API server has not started serving it yet
//! ([`ApiServer::crd`]); a GET of the CRD answers whether it is installed.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// (apiVersion, kind, plural) of each kind served.
const KINDS: [(&str, &str, &str); 8] = [
    ("v1", "Namespace", "namespaces"),
    ("v1", "Pod", "pods"),
    ("v1", "Node", "nodes"),
    ("v1", "Service", "services"),
    ("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    ("netpol.io/v1alpha1", "NetpolEndpoint", "netpolendpoints"),
    ("cilium.io/v2", "CiliumNetworkPolicy", "ciliumnetworkpolicies"),
];

/// (plural, namespace, name)
type Key = (String, String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change: (resourceVersion, plural, watch event).
    history: Vec<(u64, String, Value)>,
    events: Vec<Value>,
    /// Plurals answered with 404, and whether their CRD is installed all the same.
    unserved: BTreeMap<String, Crd>,
}

/// How a custom resource's kind is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crd {
    /// Installed and served.
    Served,
    /// Not installed: its kind and the CRD itself answer 404.
    Absent,
    /// Installed, but its kind answers 404 (an API server starting its CRD handlers).
    NotYetServed,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    changes: broadcast::Sender<(u64, String, Value)>,
}

pub struct ApiServer {
    shared: Shared,
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

fn plural_of(kind: &str) -> &'static str {
    KINDS.iter().find(|k| k.1 == kind).map(|k| k.2).unwrap_or_else(|| panic!("kind {kind} is not served"))
}

fn lines(events: Vec<Value>) -> Vec<Result<Bytes, std::io::Error>> {
    events.into_iter().map(|v| Ok(Bytes::from(format!("{v}\n")))).collect()
}

async fn list_or_watch(
    State(s): State<Shared>,
    Path(path): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(name) = path.strip_prefix("apiextensions.k8s.io/v1/customresourcedefinitions/") {
        return get_crd(&s, name);
    }
    let plural = path.rsplit('/').next().unwrap_or("").to_string();
    let served = !s.store.lock().unwrap().unserved.contains_key(&plural);
    let Some((api, kind, _)) = KINDS.iter().find(|k| k.2 == plural).filter(|_| served) else {
        return (axum::http::StatusCode::NOT_FOUND, "not served").into_response();
    };
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        let st = s.store.lock().unwrap();
        let items: Vec<&Value> = st.objects.iter().filter(|(k, _)| k.0 == plural).map(|(_, v)| v).collect();
        return Json(json!({"kind": format!("{kind}List"), "apiVersion": api,
                            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}))
        .into_response();
    }
    let since: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    // Subscribe first, then replay: nothing falls between the two.
    let rx = s.changes.subscribe();
    let replay: Vec<Value> = {
        let st = s.store.lock().unwrap();
        st.history
            .iter()
            .filter(|(rv, p, _)| *rv > since && *p == plural)
            .map(|(_, _, e)| e.clone())
            .collect()
    };
    let last_replayed = since.max(s.store.lock().unwrap().rv);
    let live = futures::stream::unfold((rx, plural), move |(mut rx, plural)| async move {
        loop {
            match rx.recv().await {
                Ok((rv, p, e)) if p == plural && rv > last_replayed => {
                    return Some((Ok::<Bytes, std::io::Error>(Bytes::from(format!("{e}\n"))), (rx, plural)))
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stream = futures::StreamExt::chain(futures::stream::iter(lines(replay)), live);
    Body::from_stream(stream).into_response()
}

/// The API server's answer for an object that does not exist.
pub fn not_found(name: &str) -> (axum::http::StatusCode, Json<Value>) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                        "code": 404, "message": format!("\"{name}\" not found")});
    (axum::http::StatusCode::NOT_FOUND, Json(status))
}

/// The route of a cluster without CRD `PLURAL.GROUP`, for scripted servers of their own.
pub fn no_crd<S: Clone + Send + Sync + 'static>() -> axum::routing::MethodRouter<S> {
    get(|Path(name): Path<String>| async move { not_found(&name) })
}

/// The path of a CRD, `{name}` its `PLURAL.GROUP`.
pub const CRD_PATH: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}";

/// A CRD (`PLURAL.GROUP`) as far as the agent reads one: it exists or not.
fn get_crd(s: &Shared, name: &str) -> Response {
    let plural = name.split('.').next().unwrap_or("");
    let known = KINDS.iter().any(|k| k.2 == plural);
    let absent = s.store.lock().unwrap().unserved.get(plural) == Some(&Crd::Absent);
    if !known || absent {
        return not_found(name).into_response();
    }
    Json(json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": name}, "spec": {"group": name.split_once('.').map_or("", |g| g.1),
                "names": {"plural": plural, "kind": ""}, "scope": "Namespaced", "versions": []}}))
    .into_response()
}

/// (namespace, plural, name) of an object's path: `.../namespaces/NS/PLURAL/NAME`.
fn object_path(path: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [.., "namespaces", ns, plural, name] => Some((ns.to_string(), plural.to_string(), name.to_string())),
        _ => None,
    }
}

/// A server-side apply as this server knows it: the body is the whole object. On the
/// `status` subresource, a merge patch of the status (the rest of the object unchanged).
async fn apply_object(State(s): State<Shared>, Path(path): Path<String>, body: Bytes) -> Response {
    if let Some(object) = path.strip_suffix("/status") {
        return patch_status(&s, object, &body);
    }
    let Some((ns, plural, name)) = object_path(&path) else {
        return (axum::http::StatusCode::NOT_FOUND, "not an object path").into_response();
    };
    let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    if KINDS.iter().all(|k| k.2 != plural) || obj["metadata"]["name"] != name.as_str() {
        return (axum::http::StatusCode::BAD_REQUEST, "kind or name mismatch").into_response();
    }
    obj["metadata"]["namespace"] = json!(ns);
    Json(s.put(obj)).into_response()
}

fn patch_status(s: &Shared, path: &str, body: &[u8]) -> Response {
    let Some((ns, plural, name)) = object_path(path) else {
        return (axum::http::StatusCode::NOT_FOUND, "not an object path").into_response();
    };
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let stored = s.store.lock().unwrap().objects.get(&(plural, ns, name.clone())).cloned();
    let Some(mut obj) = stored else { return not_found(&name).into_response() };
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    for (k, v) in patch["status"].as_object().into_iter().flatten() {
        obj["status"][k] = v.clone();
    }
    Json(s.put(obj)).into_response()
}

async fn delete_object(State(s): State<Shared>, Path(path): Path<String>) -> Response {
    let Some((ns, plural, name)) = object_path(&path) else {
        return (axum::http::StatusCode::NOT_FOUND, "not an object path").into_response();
    };
    match s.remove(&(plural, ns, name)) {
        Some(obj) => Json(obj).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                        "code": 404, "message": "not found"})),
        )
            .into_response(),
    }
}

impl Shared {
    /// Stores `obj` under a new resourceVersion (keeping its uid) and tells the watchers.
    fn put(&self, mut obj: Value) -> Value {
        let plural = plural_of(obj["kind"].as_str().unwrap()).to_string();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let mut st = self.store.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (plural.clone(), ns.clone(), name.clone());
        let uid = st.objects.get(&key).map(|o| o["metadata"]["uid"].clone());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = uid.unwrap_or_else(|| json!(format!("uid-{plural}-{ns}-{name}")));
        }
        let kind = if st.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        st.objects.insert(key, obj.clone());
        let event = json!({"type": kind, "object": obj});
        st.history.push((rv, plural.clone(), event.clone()));
        let _ = self.changes.send((rv, plural, event));
        obj
    }

    fn remove(&self, key: &Key) -> Option<Value> {
        let mut st = self.store.lock().unwrap();
        let mut obj = st.objects.remove(key)?;
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = json!({"type": "DELETED", "object": obj});
        st.history.push((rv, key.0.clone(), event.clone()));
        let _ = self.changes.send((rv, key.0.clone(), event));
        Some(obj)
    }
}

async fn record_event(
    State(s): State<Shared>,
    Json(ev): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    s.store.lock().unwrap().events.push(ev.clone());
    (axum::http::StatusCode::CREATED, Json(ev))
}

impl ApiServer {
    /// Serves on `addr` (port 0: any) from the calling thread's network namespace.
    pub fn start(addr: SocketAddr) -> ApiServer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (changes, _) = broadcast::channel(4096);
        let shared = Shared { store: Arc::default(), changes };
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).expect("bind the API server");
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/apis/events.k8s.io/v1/namespaces/{ns}/events", post(record_event))
            .route("/api/v1/{*path}", get(list_or_watch))
            .route("/apis/{*path}", get(list_or_watch).patch(apply_object).delete(delete_object))
            .with_state(shared.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        ApiServer { shared, addr, rt: Some(rt) }
    }

    /// A kubeconfig file pointing at this server, written to `path`.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: http://{}\n\
             users:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n\
             current-context: sim\n",
            self.addr
        );
        std::fs::write(path, text).unwrap();
    }

    /// Creates or replaces an object (as `kubectl apply` would end up), with a new
    /// resourceVersion; watchers get ADDED or MODIFIED. Its status stays what the server
    /// holds (a status subresource is written only through `/status`).
    pub fn apply(&self, mut obj: Value) {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if let Some(stored) = self.get(&kind, &ns, &name).filter(|o| o["status"].is_object()) {
            if obj["status"].is_null() {
                obj["status"] = stored["status"].clone();
            }
        }
        self.shared.put(obj);
    }

    /// Deletes an object; watchers get DELETED. False when there was none.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> bool {
        self.shared.remove(&(plural_of(kind).to_string(), ns.to_string(), name.to_string())).is_some()
    }

    /// The object stored under kind, namespace, name.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (plural_of(kind).to_string(), ns.to_string(), name.to_string());
        self.shared.store.lock().unwrap().objects.get(&key).cloned()
    }

    /// Serves `kind` or answers 404 for it, as with and without its CRD.
    pub fn crd(&self, kind: &str, crd: Crd) {
        let plural = plural_of(kind).to_string();
        let mut st = self.shared.store.lock().unwrap();
        if crd == Crd::Served {
            st.unserved.remove(&plural);
        } else {
            st.unserved.insert(plural, crd);
        }
    }

    /// The Events posted so far.
    pub fn events(&self) -> Vec<Value> {
        self.shared.store.lock().unwrap().events.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
