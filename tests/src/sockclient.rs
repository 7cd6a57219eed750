//! A socket client as applications use sockets (CPython's socket module: plain connect,
//! sendto/recvfrom, getpeername), for the Service tests: it reports what the application
//! saw — the peer address, the reply and its source, or the errno.

use std::{net::SocketAddrV4, process::Command};

use serde_json::Value;

use crate::netns::NetNs;

const SCRIPT: &str = include_str!("sockclient.py");

/// How the client talks.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// connect, getpeername, one echoed line.
    Tcp,
    /// Unconnected sendto/recvfrom; `accepted` says whether the reply came from the address
    /// asked (musl's resolver drops it otherwise).
    Udp,
    /// connect, send, recv, getpeername.
    UdpConnected,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Udp => "udp",
            Mode::UdpConnected => "udp-connected",
        }
    }
}

/// Runs the client in `ns`; `prepare` may adjust the command (put it in a cgroup).
pub fn sock_client(ns: &NetNs, prepare: impl FnOnce(&mut Command), mode: Mode, to: SocketAddrV4) -> Value {
    let mut cmd = ns.cmd("python3");
    cmd.args(["-c", SCRIPT, mode.arg(), &to.ip().to_string(), &to.port().to_string()]);
    prepare(&mut cmd);
    let out = cmd.output().expect("run the socket client");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("socket client: {e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}
