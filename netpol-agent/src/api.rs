//! The agent's HTTP/JSON API on its Unix socket (paths and bodies: the netpol-api crate).

use std::{
    future::Future,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use netpol_api::{ApiError, EndpointRequest, NodeInfo, PATH_ENDPOINTS, PATH_HEALTH, PATH_NODE};

use crate::{
    datapath::Datapath,
    endpoints::{EndpointError, Registry},
};

/// Everything the handlers share; one lock, because every change touches the datapath.
pub struct Agent {
    pub dp: Datapath,
    pub registry: Registry,
    pub node: NodeInfo,
}

pub type Shared = Arc<Mutex<Agent>>;

struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<EndpointError> for Failure {
    fn from(e: EndpointError) -> Self {
        let code = match e {
            EndpointError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, e.to_string())
    }
}

/// Runs datapath work off the async threads.
async fn blocking<T: Send + 'static>(
    st: Shared,
    f: impl FnOnce(&mut Agent) -> Result<T, EndpointError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(move || {
        let mut agent = st.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut agent)
    })
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(Failure::from)
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route(PATH_HEALTH, get(|| async { "ok" }))
        .route(PATH_NODE, get(node))
        .route(PATH_ENDPOINTS, axum::routing::post(register).get(list))
        .route(&format!("{PATH_ENDPOINTS}/{{container_id}}/{{ifname}}"), get(status).delete(unregister))
        .with_state(state)
}

async fn node(State(st): State<Shared>) -> Json<NodeInfo> {
    Json(st.lock().unwrap_or_else(|p| p.into_inner()).node.clone())
}

async fn register(State(st): State<Shared>, Json(req): Json<EndpointRequest>) -> Response {
    match blocking(st, move |a| a.registry.register(&mut a.dp, req)).await {
        Ok(s) => (StatusCode::OK, Json(s)).into_response(),
        Err(f) => f.into_response(),
    }
}

async fn list(State(st): State<Shared>) -> Response {
    match blocking(st, |a| a.registry.list(&a.dp)).await {
        Ok(all) => Json(all).into_response(),
        Err(f) => f.into_response(),
    }
}

async fn status(State(st): State<Shared>, UrlPath((cid, ifname)): UrlPath<(String, String)>) -> Response {
    let what = format!("endpoint {cid}/{ifname}");
    match blocking(st, move |a| a.registry.status(&a.dp, &cid, &ifname)).await {
        Ok(Some(s)) => Json(s).into_response(),
        Ok(None) => Failure(StatusCode::NOT_FOUND, format!("{what} is not registered")).into_response(),
        Err(f) => f.into_response(),
    }
}

async fn unregister(State(st): State<Shared>, UrlPath((cid, ifname)): UrlPath<(String, String)>) -> Response {
    match blocking(st, move |a| a.registry.unregister(&mut a.dp, &cid, &ifname)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
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
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
