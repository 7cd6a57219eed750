//! Connectivity probes between pods: a TCP connect, or a UDP datagram and its answer, from
//! inside the source pod's network namespace. The matrix runs them concurrently. The UDP
//! datagram is a DNS query, so the UDP servers of local mode — echoes and the cluster's DNS
//! — both answer it (with its own ID).

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;

/// What a probe speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "UPPERCASE")]
#[value(rename_all = "UPPER")]
pub enum Protocol {
    /// A connect.
    Tcp,
    /// A DNS query and its answer.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Runs `f` on a thread inside the network namespace `netns`.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{netns}");
    let file = File::open(&path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    std::thread::spawn(move || {
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

/// Whether `from` reaches `ip:port` over `protocol` within `timeout`.
pub fn probe(from: &str, ip: Ipv4Addr, port: u16, protocol: Protocol, timeout: Duration) -> Result<bool> {
    let to = SocketAddrV4::new(ip, port);
    match protocol {
        Protocol::Tcp => in_netns(from, move || TcpStream::connect_timeout(&to.into(), timeout).is_ok()),
        Protocol::Udp => in_netns(from, move || {
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else { return false };
            let _ = s.set_read_timeout(Some(timeout));
            let query = crate::dns::probe_query();
            if s.send_to(&query, to).is_err() {
                return false;
            }
            let mut buf = [0u8; 512];
            matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 2 && buf[..2] == query[..2])
        }),
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub connected: bool,
}

/// One probe of the matrix: source pod (ns/name, netns), destination pod (ns/name, ip).
pub struct Job {
    pub from: (String, String),
    pub to: (String, Ipv4Addr),
    pub port: u16,
    pub protocol: Protocol,
}

/// Runs every job, many at a time.
pub fn run_all(jobs: Vec<Job>, timeout: Duration) -> Result<Vec<Cell>> {
    // A whole 9x9x2x2 matrix in one round: blocked probes all wait out the timeout together.
    const PARALLEL: usize = 512;
    let mut cells = Vec::with_capacity(jobs.len());
    let mut it = jobs.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<Job> = it.by_ref().take(PARALLEL).collect();
        let handles: Vec<_> = batch
            .into_iter()
            .map(|j| {
                std::thread::spawn(move || {
                    let ok = probe(&j.from.1, j.to.1, j.port, j.protocol, timeout).unwrap_or(false);
                    Cell { from: j.from.0, to: j.to.0, port: j.port, protocol: j.protocol, connected: ok }
                })
            })
            .collect();
        for h in handles {
            cells.push(h.join().map_err(|_| anyhow::anyhow!("probe panicked"))?);
        }
    }
    Ok(cells)
}

/// The e2e suite's layout: one grid per port/protocol, rows from, columns to,
/// `.` connected, `X` blocked.
pub fn table(cells: &[Cell]) -> String {
    let mut out = String::new();
    let mut keys: Vec<(u16, Protocol)> = cells.iter().map(|c| (c.port, c.protocol)).collect();
    keys.sort();
    keys.dedup();
    let mut pods: Vec<String> = cells.iter().flat_map(|c| [c.from.clone(), c.to.clone()]).collect();
    pods.sort();
    pods.dedup();
    let w = pods.iter().map(|p| p.len()).max().unwrap_or(4).max(4);
    for (port, proto) in keys {
        out.push_str(&format!("{proto}/{port}\n{:<w$}", ""));
        for p in &pods {
            out.push_str(&format!(" {p:<w$}"));
        }
        out.push('\n');
        for from in &pods {
            out.push_str(&format!("{from:<w$}"));
            for to in &pods {
                let c = cells
                    .iter()
                    .find(|c| c.from == *from && c.to == *to && c.port == port && c.protocol == proto);
                let mark = match c {
                    Some(c) if c.connected => ".",
                    Some(_) => "X",
                    None => "-",
                };
                out.push_str(&format!(" {mark:<w$}"));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}
