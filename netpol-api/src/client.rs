//! A blocking client for the agent's socket: one HTTP/1.1 exchange per call, on a
//! current-thread runtime of its own (callers are short-lived commands).

use std::{path::Path, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Request};
use hyper_util::rt::TokioIo;

pub use hyper::{Method, StatusCode};

#[derive(Debug)]
pub enum ClientError {
    /// The agent could not be reached (no socket, refused, no answer in time).
    Unreachable(String),
    Other(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(m) | ClientError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ClientError {}

fn unreachable(e: &dyn std::fmt::Display) -> ClientError {
    ClientError::Unreachable(e.to_string())
}

/// A runtime of the call's own (callers are short-lived, blocking commands).
fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Other(format!("tokio runtime: {e}")))
}

/// Sends one request on a new connection and returns the response head (the body still
/// streaming).
async fn send(
    socket: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| unreachable(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "netpol-agent")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Other(e.to_string()))?;
    sender.send_request(req).await.map_err(|e| unreachable(&e))
}

/// Sends `body` (JSON) to `path` and returns the status and body of the answer.
pub fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    runtime()?.block_on(async {
        let exchange = async {
            let resp = send(socket, method, path, body.unwrap_or_default()).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| unreachable(&e))?.to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unreachable(&format!("no answer in {timeout:?}")))?
    })
}

/// GETs a streaming `path` (one JSON object per line) and hands each line to `on_line`
/// until it returns false or the stream ends. `connect` bounds only the connection and
/// the response head; the stream itself may run for as long as the caller wants.
pub fn follow(
    socket: &Path,
    path: &str,
    connect: Duration,
    mut on_line: impl FnMut(&[u8]) -> bool,
) -> Result<(), ClientError> {
    runtime()?.block_on(async {
        let resp = tokio::time::timeout(connect, send(socket, Method::GET, path, Vec::new()))
            .await
            .map_err(|_| unreachable(&format!("no answer in {connect:?}")))??;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let mut text = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                text.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]));
            }
            return Err(ClientError::Other(format!("{status}: {}", error_message(&text))));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Other(e.to_string()))?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !on_line(&line[..end]) {
                    return Ok(());
                }
            }
        }
        Ok(())
    })
}

/// The error message of a failed call's body.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<crate::ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}
