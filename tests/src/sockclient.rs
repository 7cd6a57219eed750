//! A socket client as applications use sockets (CPython's socket module: plain connect,
//! sendto/recvfrom, getpeername), for the Service tests: it reports what the application
//! saw — the peer address, the reply and its source, or the errno.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddrV4,
    process::{Child, ChildStdin, Command, Stdio},
};

use serde_json::Value;

use crate::netns::NetNs;

const SCRIPT: &str = include_str!("sockclient.py");

/// How the client talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// connect, getpeername, one echoed line.
    Tcp,
    /// Unconnected sendto/recvfrom; `accepted` says whether the reply came from the address
    /// asked (musl's resolver drops it otherwise).
    Udp,
    /// connect, send, recv, getpeername.
    UdpConnected,
    /// An A query for the name over UDP (`accepted`: the reply came from the address asked,
    /// as musl requires); `rcode` and `addrs` of the answer.
    Dns(&'static str),
    /// The same over TCP.
    DnsTcp(&'static str),
}

/// A connected UDP socket kept open in a client process (a resolver's): one exchange at
/// start, one more when asked.
pub struct HeldSocket {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// The first exchange.
    pub first: Value,
}

impl HeldSocket {
    /// Connects from `ns` to `to` and exchanges once; `prepare` as for [`sock_client`].
    pub fn open(ns: &NetNs, prepare: impl FnOnce(&mut Command), to: SocketAddrV4) -> HeldSocket {
        let mut cmd = ns.cmd("python3");
        cmd.args(["-c", SCRIPT, "udp-hold", &to.ip().to_string(), &to.port().to_string()]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        prepare(&mut cmd);
        let mut child = cmd.spawn().expect("start the socket client");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let first =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("socket client: {e}: {line}"));
        HeldSocket { child: Some(child), stdin, first }
    }

    /// Exchanges once more on the same socket; what the application saw.
    pub fn again(mut self) -> Value {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("socket client: {e}: {text}"))
    }
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Udp => "udp",
            Mode::UdpConnected => "udp-connected",
            Mode::Dns(_) => "dns",
            Mode::DnsTcp(_) => "dns-tcp",
        }
    }

    fn name(self) -> Option<&'static str> {
        match self {
            Mode::Dns(n) | Mode::DnsTcp(n) => Some(n),
            _ => None,
        }
    }
}

/// Runs the client in `ns`; `prepare` may adjust the command (put it in a cgroup).
pub fn sock_client(ns: &NetNs, prepare: impl FnOnce(&mut Command), mode: Mode, to: SocketAddrV4) -> Value {
    let mut cmd = ns.cmd("python3");
    cmd.args(["-c", SCRIPT, mode.arg(), &to.ip().to_string(), &to.port().to_string()]);
    cmd.args(mode.name());
    prepare(&mut cmd);
    let out = cmd.output().expect("run the socket client");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("socket client: {e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}
