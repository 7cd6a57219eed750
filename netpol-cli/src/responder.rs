//! The built-in responders that stand in for container images in local mode: on every
//! declared TCP port an HTTP/1.1 server answering 200 to HEAD and GET (with the ordinary
//! headers a web app sends), on every UDP port an echo — except a DNS port, where the
//! cluster's DNS server answers ([`crate::dns`]). Started inside the pod's network
//! namespace by the local runtime.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, UdpSocket},
};

/// HTTP/1.1 on one connection (plain, or TLS for the simulated internet), answering 200
/// to HEAD and GET with a page naming `pod`, until the client closes it.
pub fn serve_http(stream: impl Read + Write, pod: &str) {
    let mut r = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if r.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" && line != "\n" {
            line.clear();
        }
        let method = request.split_whitespace().next().unwrap_or("");
        let body =
            format!("<!DOCTYPE html><html><body><h1>{pod}</h1><p>netpol local responder</p></body></html>\n");
        let (status, send_body) = match method {
            "GET" => ("200 OK", true),
            "HEAD" => ("200 OK", false),
            _ => ("405 Method Not Allowed", false),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nX-Powered-By: netpol local responder\r\nContent-Type: text/html; charset=UTF-8\r\n\
             Content-Length: {}\r\nDate: {}\r\nConnection: keep-alive\r\n\r\n",
            body.len(),
            crate::local::now().0.format("%a, %d %b %Y %H:%M:%S GMT")
        );
        let w = r.get_mut();
        if w.write_all(head.as_bytes()).is_err() || (send_body && w.write_all(body.as_bytes()).is_err()) {
            return;
        }
        let _ = w.flush();
    }
}

/// What the responder prints once every socket is bound.
pub const READY: &str = "ready";

/// A DNS server's port and where its records and other names come from.
pub struct Dns {
    pub port: u16,
    /// The agent's socket: the Services.
    pub agent: std::path::PathBuf,
    pub upstream: Option<std::net::SocketAddr>,
}

/// Serves until killed; prints [`READY`] (and closes stdout) once every socket is bound.
pub fn run(pod: &str, tcp: &[u16], udp: &[u16], dns: Option<Dns>) -> anyhow::Result<()> {
    let mut threads = Vec::new();
    let dns_port = dns.as_ref().map(|d| d.port);
    if let Some(d) = dns {
        threads.extend(crate::dns::serve(d.port, &d.agent, d.upstream)?);
    }
    let (tcp, udp): (Vec<u16>, Vec<u16>) = (
        tcp.iter().copied().filter(|p| Some(*p) != dns_port).collect(),
        udp.iter().copied().filter(|p| Some(*p) != dns_port).collect(),
    );
    for &port in &tcp {
        let l = TcpListener::bind(("0.0.0.0", port))?;
        let pod = pod.to_string();
        threads.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let pod = pod.clone();
                std::thread::spawn(move || serve_http(s, &pod));
            }
        }));
    }
    for &port in &udp {
        let s = UdpSocket::bind(("0.0.0.0", port))?;
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }));
    }
    println!("{READY}");
    // Closed, so the runtime waiting for the line is not held up by a pipe left open.
    unsafe { libc::close(1) };
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
