//! The agent's API over its Unix socket (HTTP/1.1, JSON bodies).

use std::{path::Path, time::Duration};

use netpol_api::{
    client::{self, ClientError, Method, StatusCode},
    endpoint_path, EndpointRequest, EndpointStatus, NodeInfo, PATH_ENDPOINTS, PATH_HEALTH, PATH_NODE,
};
use serde::de::DeserializeOwned;

use crate::error::{code, internal, CniError, Result};

/// Registration waits for the agent to attach and apply policy; that is quick, but a busy
/// agent gets time.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Errors: TRY_AGAIN_LATER means the agent could not be reached (and only that); anything
/// the agent itself refused is INTERNAL with its message.
pub struct Agent<'a> {
    socket: &'a Path,
}

impl<'a> Agent<'a> {
    pub fn new(socket: &'a Path) -> Self {
        Agent { socket }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> CniError {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("the netpol agent is unreachable at {}: {e}", self.socket.display()),
        )
        .with_details("is netpol-agent running on this node?")
    }

    fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(StatusCode, Vec<u8>)> {
        client::call(self.socket, method, path, body, TIMEOUT).map(|(s, b)| (s, b.to_vec())).map_err(|e| {
            match e {
                ClientError::Unreachable(m) => self.unreachable(m),
                ClientError::Other(m) => internal("calling the agent", m),
            }
        })
    }

    fn json<T: DeserializeOwned>(&self, what: &str, status: StatusCode, body: &[u8]) -> Result<T> {
        if !status.is_success() {
            let msg = client::error_message(body);
            let code = if status == StatusCode::CONFLICT { code::ADDRESS_IN_USE } else { code::INTERNAL };
            return Err(CniError::new(code, format!("the agent refused {what}: {msg}")));
        }
        serde_json::from_slice(body)
            .map_err(|e| internal(format!("decoding the agent's answer to {what}"), e))
    }

    pub fn health(&self) -> Result<()> {
        let (status, body) = self.call(Method::GET, PATH_HEALTH, None)?;
        if !status.is_success() {
            return Err(self.unreachable(String::from_utf8_lossy(&body)));
        }
        Ok(())
    }

    pub fn node(&self) -> Result<NodeInfo> {
        let (status, body) = self.call(Method::GET, PATH_NODE, None)?;
        self.json("the node query", status, &body)
    }

    /// Registers the endpoint; returns once the agent enforces it.
    pub fn register(&self, req: &EndpointRequest) -> Result<EndpointStatus> {
        let body = serde_json::to_vec(req).map_err(|e| internal("encoding the registration", e))?;
        let (status, body) = self.call(Method::POST, PATH_ENDPOINTS, Some(body))?;
        self.json("the registration", status, &body)
    }

    pub fn status(&self, container_id: &str, ifname: &str) -> Result<Option<EndpointStatus>> {
        let (status, body) = self.call(Method::GET, &endpoint_path(container_id, ifname), None)?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.json("the endpoint query", status, &body).map(Some)
    }

    pub fn list(&self) -> Result<Vec<EndpointStatus>> {
        let (status, body) = self.call(Method::GET, PATH_ENDPOINTS, None)?;
        self.json("the endpoint list", status, &body)
    }

    pub fn unregister(&self, container_id: &str, ifname: &str) -> Result<()> {
        let (status, body) = self.call(Method::DELETE, &endpoint_path(container_id, ifname), None)?;
        if !status.is_success() {
            return Err(CniError::new(
                code::INTERNAL,
                format!(
                    "the agent could not unregister {container_id}/{ifname}: {}",
                    String::from_utf8_lossy(&body)
                ),
            ));
        }
        Ok(())
    }
}
