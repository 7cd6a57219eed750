//! The agent's HTTP/JSON API on its Unix socket (paths and bodies: the netpol-api crate).

use std::{
    future::Future,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use netpol_api::{
    resources::ResourceKind, ApiError, EndpointRequest, NodeInfo, ObjectQuery, PATH_ENDPOINTS, PATH_EVENTS,
    PATH_HEALTH, PATH_METRICS, PATH_NAMES, PATH_NODE, PATH_OBJECTS,
};
use serde_json::Value;

use crate::{
    controller::{Agent, AgentError},
    endpoints::EndpointError,
    sources::local::StoreError,
};

pub type Shared = Arc<Mutex<Agent>>;

struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        let code = match e {
            AgentError::Endpoint(EndpointError::Invalid(_))
            | AgentError::Invalid(_)
            | AgentError::Policy(_)
            | AgentError::Store(StoreError::Invalid(_)) => StatusCode::BAD_REQUEST,
            AgentError::Endpoint(EndpointError::AddressInUse { .. }) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, e.to_string())
    }
}

/// Runs agent work off the async threads (it makes syscalls and compiles).
async fn blocking<T: Send + 'static>(
    st: Shared,
    f: impl FnOnce(&mut Agent) -> Result<T, AgentError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(move || {
        let mut agent = st.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut agent)
    })
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(Failure::from)
}

fn reply<T: serde::Serialize>(r: Result<T, Failure>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(f) => f.into_response(),
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route(PATH_HEALTH, get(health))
        .route(PATH_METRICS, get(metrics))
        .route(PATH_NODE, get(node))
        .route(PATH_ENDPOINTS, axum::routing::post(register).get(list))
        .route(&format!("{PATH_ENDPOINTS}/{{container_id}}/{{ifname}}"), get(status).delete(unregister))
        .route(PATH_OBJECTS, axum::routing::post(apply).get(objects).delete(delete_object))
        .route(PATH_EVENTS, get(events))
        .route(netpol_api::flows::PATH_FLOWS, get(flows))
        .route(netpol_api::flows::PATH_TRACE, get(trace))
        .route(netpol_api::flows::PATH_EXPLAIN, get(explain))
        .route(netpol_api::flows::PATH_DEBUG, get(debug))
        .route(netpol_api::PATH_POLICIES, get(policies))
        .route(PATH_NAMES, get(names))
        .with_state(state)
}

/// 200 `ok` when the agent is fit to serve, 503 naming what is not in effect.
async fn health(State(st): State<Shared>) -> Response {
    // (It queries the kernel: off the async threads, as every call that takes the agent.)
    match blocking(st, |a| Ok(a.health())).await {
        Ok(Ok(())) => "ok".into_response(),
        Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        Err(f) => f.into_response(),
    }
}

async fn metrics(State(st): State<Shared>) -> Response {
    match blocking(st, |a| Ok(a.metrics())).await {
        Ok(text) => ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(f) => f.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    #[serde(default)]
    follow: bool,
}

/// The recent events, or (`follow`) a stream of every event from now on, one JSON object
/// per line. A follower that falls behind skips what it missed.
async fn events(State(st): State<Shared>, Query(q): Query<EventsQuery>) -> Response {
    let hub = st.lock().unwrap_or_else(|p| p.into_inner()).events();
    if !q.follow {
        return Json(hub.recent()).into_response();
    }
    ndjson(hub.follow(), |ev| Some(serde_json::to_vec(&ev)))
}

/// The same as `events`, each verdict with names ([`netpol_api::flows::Flow`]).
async fn flows(State(st): State<Shared>, Query(q): Query<EventsQuery>) -> Response {
    let (hub, dir) = {
        let a = st.lock().unwrap_or_else(|p| p.into_inner());
        (a.events(), a.directory())
    };
    if !q.follow {
        let described: Vec<_> = hub.recent().iter().map(|ev| dir.describe(ev)).collect();
        return Json(described).into_response();
    }
    ndjson(hub.follow(), move |ev| Some(serde_json::to_vec(&dir.describe(&ev))))
}

/// Streams what `rx` receives, each as `line` makes it (None: skipped), one per line.
fn ndjson<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
    line: impl Fn(T) -> Option<serde_json::Result<Vec<u8>>> + Send + Sync + 'static,
) -> Response {
    let line = std::sync::Arc::new(line);
    let lines = futures::stream::unfold(rx, move |mut rx| {
        let line = line.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(item) => {
                        let Some(bytes) = line(item) else { continue };
                        let mut bytes = bytes.unwrap_or_default();
                        bytes.push(b'\n');
                        return Some((Ok::<_, std::convert::Infallible>(bytes), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    ([("content-type", "application/x-ndjson")], axum::body::Body::from_stream(lines)).into_response()
}

/// A pod's decision steps for as long as the request is open: its endpoint logs them
/// until the follower goes ([`Following`]).
async fn debug(State(st): State<Shared>, Query(q): Query<netpol_api::flows::DebugQuery>) -> Response {
    let pod = q.pod.clone();
    let ep_id = match blocking(st.clone(), move |a| a.debug(&pod, true)).await {
        Ok(id) => id,
        Err(f) => return f.into_response(),
    };
    let following = Following { st: st.clone(), pod: q.pod };
    let (hub, dir) = {
        let a = st.lock().unwrap_or_else(|p| p.into_inner());
        (a.events(), a.directory())
    };
    ndjson(hub.follow_steps(), move |step| {
        let _keep = &following;
        let now = netpol_api::flows::now_ms();
        (step.ep_id == ep_id).then(|| serde_json::to_vec(&dir.get().describe_step(&step, now)))
    })
}

/// One follower of a pod's decision steps: when it goes, so does its share in the logging.
struct Following {
    st: Shared,
    pod: String,
}

impl Drop for Following {
    fn drop(&mut self) {
        let (st, pod) = (self.st.clone(), std::mem::take(&mut self.pod));
        let end = move || {
            if let Err(e) = st.lock().unwrap_or_else(|p| p.into_inner()).debug(&pod, false) {
                tracing::warn!("ending the debug steps of {pod}: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(end)),
            Err(_) => end(),
        }
    }
}

async fn trace(State(st): State<Shared>, Query(q): Query<netpol_api::flows::TraceQuery>) -> Response {
    reply(blocking(st, move |a| a.trace(&q)).await)
}

async fn explain(State(st): State<Shared>, Query(q): Query<netpol_api::flows::ExplainQuery>) -> Response {
    reply(blocking(st, move |a| a.explain(&q.pod)).await)
}

async fn policies(State(st): State<Shared>) -> Response {
    reply(blocking(st, |a| Ok(a.policy_status())).await)
}

async fn names(State(st): State<Shared>) -> Response {
    reply(blocking(st, |a| Ok(a.service_names())).await)
}

async fn node(State(st): State<Shared>) -> Json<NodeInfo> {
    Json(st.lock().unwrap_or_else(|p| p.into_inner()).node().clone())
}

async fn register(State(st): State<Shared>, Json(req): Json<EndpointRequest>) -> Response {
    reply(blocking(st, move |a| a.register(req)).await)
}

async fn list(State(st): State<Shared>) -> Response {
    reply(blocking(st, |a| a.endpoints()).await)
}

async fn status(State(st): State<Shared>, UrlPath((cid, ifname)): UrlPath<(String, String)>) -> Response {
    let what = format!("endpoint {cid}/{ifname}");
    match blocking(st, move |a| a.endpoint(&cid, &ifname)).await {
        Ok(Some(s)) => Json(s).into_response(),
        Ok(None) => Failure(StatusCode::NOT_FOUND, format!("{what} is not registered")).into_response(),
        Err(f) => f.into_response(),
    }
}

async fn unregister(State(st): State<Shared>, UrlPath((cid, ifname)): UrlPath<(String, String)>) -> Response {
    match blocking(st, move |a| a.unregister(&cid, &ifname)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(f) => f.into_response(),
    }
}

async fn apply(State(st): State<Shared>, Json(objects): Json<Vec<Value>>) -> Response {
    reply(blocking(st, move |a| a.apply_objects(objects)).await)
}

fn store_kind(q: &ObjectQuery) -> Result<ResourceKind, Failure> {
    ResourceKind::from_kind(&q.kind)
        .ok_or_else(|| Failure(StatusCode::BAD_REQUEST, format!("unknown kind {:?}", q.kind)))
}

async fn objects(State(st): State<Shared>, Query(q): Query<ObjectQuery>) -> Response {
    let kind = match store_kind(&q) {
        Ok(k) => k,
        Err(f) => return f.into_response(),
    };
    reply(blocking(st, move |a| Ok(a.objects(kind))).await)
}

async fn delete_object(State(st): State<Shared>, Query(q): Query<ObjectQuery>) -> Response {
    let kind = match store_kind(&q) {
        Ok(k) => k,
        Err(f) => return f.into_response(),
    };
    let what = format!("{} {}/{}", q.kind, q.namespace, q.name);
    let key = (kind, q.namespace.clone(), q.name.clone());
    match blocking(st, move |a| a.delete_object(&key)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => Failure(StatusCode::NOT_FOUND, format!("{what} not found")).into_response(),
        Err(f) => f.into_response(),
    }
}

/// Serves the API on `socket` (owner-only) until `shutdown` resolves.
pub async fn serve(
    socket: &Path,
    state: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a killed agent would make bind fail.
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    // A socket file without an agent behind it would look like a live agent to readiness
    // checks and to the CNI plugin until the next start.
    let _ = std::fs::remove_file(socket);
    served
}
