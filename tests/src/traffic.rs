//! Traffic inside namespaces: servers that stop when dropped, and probes that say whether a
//! connection or a round trip got through.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::{in_netns, spawn_in_netns, NetNs};

const POLL: Duration = Duration::from_millis(50);

/// A server thread; stops (and is joined) on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP server on `port` in `ns`: answers an HTTP GET/HEAD with 200, and echoes any other
/// line back (for long-lived connection tests).
pub fn tcp_server(ns: &str, port: u16) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = spawn_in_netns(ns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !s.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((c, _)) => {
                    let s = s.clone();
                    std::thread::spawn(move || serve_tcp(c, s));
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    });
    rx.recv().expect("tcp server started");
    Server { stop, handle: Some(handle) }
}

fn serve_tcp(c: TcpStream, stop: Arc<AtomicBool>) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(POLL * 4)).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.starts_with("GET ") || line.starts_with("HEAD ") {
                    // Read the rest of the request head, then answer and close.
                    let mut l = String::new();
                    while r.read_line(&mut l).map(|n| n > 0).unwrap_or(false) && l != "\r\n" {
                        l.clear();
                    }
                    let body = "netpol test server\n";
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        body.len(),
                        if line.starts_with("GET ") { body } else { "" }
                    );
                    return;
                }
                if w.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A UDP echo server on `port` in `ns`.
pub fn udp_echo(ns: &str, port: u16) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = spawn_in_netns(ns, move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
        sock.set_read_timeout(Some(POLL)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 65536];
        while !s.load(Ordering::SeqCst) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    rx.recv().expect("udp server started");
    Server { stop, handle: Some(handle) }
}

/// Connects from `ns` and exchanges one line with the echo server.
pub fn tcp_probe(ns: &str, to: SocketAddrV4, timeout: Duration) -> bool {
    match Conn::open(ns, to, timeout) {
        Some(mut c) => c.exchange("probe", timeout),
        None => false,
    }
}

/// Sends a datagram of `size` bytes from `ns` and waits for its echo.
pub fn udp_probe(ns: &str, to: SocketAddrV4, size: usize, timeout: Duration) -> bool {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        if s.send_to(&msg, to).is_err() {
            return false;
        }
        let mut buf = vec![0u8; size + 16];
        matches!(s.recv_from(&mut buf), Ok((n, _)) if buf[..n] == msg[..])
    })
}

/// A TCP connection opened from inside a namespace (the socket stays in that namespace;
/// the handle can be used from any thread).
pub struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(ns: &str, to: SocketAddrV4, timeout: Duration) -> Option<Conn> {
        let stream = in_netns(ns, move || TcpStream::connect_timeout(&to.into(), timeout).ok())?;
        let reader = BufReader::new(stream.try_clone().ok()?);
        Some(Conn { stream, reader })
    }

    /// Sends a line and waits for its echo.
    pub fn exchange(&mut self, msg: &str, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        if writeln!(self.stream, "{msg}").is_err() {
            return false;
        }
        let mut line = String::new();
        matches!(self.reader.read_line(&mut line), Ok(n) if n > 0 && line.trim_end() == msg)
    }

    /// Drains anything the peer sent (used after a blocked exchange).
    pub fn drain(&mut self) {
        self.stream.set_read_timeout(Some(POLL)).unwrap();
        let mut buf = [0u8; 4096];
        while matches!(self.reader.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Runs curl in `ns`; returns its exit code (0 = HTTP 200, 28 = timed out) and output.
pub fn curl(ns: &NetNs, url: &str, timeout_s: f64) -> (i32, String) {
    let out = ns
        .cmd("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", &timeout_s.to_string(), url])
        .output()
        .expect("curl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Sends a raw Ethernet frame out of `ifname` in `ns` (AF_PACKET), bypassing the stack:
/// how a pod would send a malformed or forged packet.
pub fn inject_frame(ns: &str, ifname: &str, frame: Vec<u8>) {
    let ifname = std::ffi::CString::new(ifname).unwrap();
    in_netns(ns, move || unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
        addr.sll_halen = 6;
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, frame.len() as isize, "sendto: {err}");
    })
}

/// Every frame a pod's interface receives (not those it sends), captured with a packet
/// socket until [`Sniffer::frames`] stops it: what the pod actually got.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Sniffer {
    pub fn start(ns: &str, ifname: &str) -> Sniffer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let ifname = std::ffi::CString::new(ifname).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = spawn_in_netns(ns, move || unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            tx.send(()).unwrap();
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::SeqCst) {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                );
                if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            libc::close(fd);
            frames
        });
        rx.recv().expect("sniffer started");
        Sniffer { stop, handle: Some(handle) }
    }

    /// Stops capturing (after a moment for frames in flight) and returns what arrived.
    pub fn frames(mut self) -> Vec<Vec<u8>> {
        std::thread::sleep(POLL * 4);
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().map(|h| h.join().expect("sniffer")).unwrap_or_default()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The MAC address of `ifname` in `ns`.
pub fn mac_of(ns: &NetNs, ifname: &str) -> crate::packet::Mac {
    let out = ns.ip(&["-br", "link", "show", ifname]);
    let text = out.split_whitespace().nth(2).expect("mac");
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(h, 16).expect("mac byte");
    }
    mac
}

/// Retries a non-blocking operation until it is done; panics after 2 s without progress
/// (a filter that drops what it should pass fails a benchmark instead of hanging it).
pub fn spin<T>(mut op: impl FnMut() -> std::io::Result<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        match op() {
            Ok(v) => return v,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "no progress for 2 s: is a filter dropping?"
                );
                std::hint::spin_loop();
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Probes flows with new TCP connections, round after round, until finished; counts the
/// allowed flows that failed and the denied ones that passed (an agent restart must change
/// neither).
pub struct Prober {
    stop: Arc<AtomicBool>,
    failed: Arc<std::sync::atomic::AtomicUsize>,
    leaked: Arc<std::sync::atomic::AtomicUsize>,
    rounds: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// `timeouts`: how long an allowed probe may take, how long a denied one is waited for.
    pub fn start(
        allowed: Vec<(String, SocketAddrV4)>,
        denied: Vec<(String, SocketAddrV4)>,
        timeouts: (Duration, Duration),
    ) -> Prober {
        let (stop, failed, leaked, rounds) = (Arc::default(), Arc::default(), Arc::default(), Arc::default());
        let (s, f, l, r): (
            Arc<AtomicBool>,
            Arc<std::sync::atomic::AtomicUsize>,
            Arc<std::sync::atomic::AtomicUsize>,
            Arc<std::sync::atomic::AtomicUsize>,
        ) = (Arc::clone(&stop), Arc::clone(&failed), Arc::clone(&leaked), Arc::clone(&rounds));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for (ns, to) in &allowed {
                    if !tcp_probe(ns, *to, timeouts.0) {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }
                for (ns, to) in &denied {
                    if tcp_probe(ns, *to, timeouts.1) {
                        l.fetch_add(1, Ordering::SeqCst);
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        Prober { stop, failed, leaked, rounds, thread: Some(thread) }
    }

    /// Stops; returns (rounds, allowed failures, denied leaks).
    pub fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the prober panicked");
        }
        (
            self.rounds.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.leaked.load(Ordering::SeqCst),
        )
    }
}
