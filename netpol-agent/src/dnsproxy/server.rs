//! The proxy at work in the agent: the node's routing installed, the transparent sockets
//! open and the datapath told where they are; UDP queries served by a fixed set of workers,
//! TCP connections by a thread each up to a limit; the learned names expired on time.
//! Stopping tells the datapath first (its flows are then dropped, never passed), then
//! removes the routing.
//!
//! Invariants:
//! - queries in flight are bounded: [`UDP_WORKERS`] datagrams and [`MAX_TCP`] connections
//!   (a connection past the limit is closed at once; a datagram waits in the socket's
//!   buffer, and what does not fit there is lost, as on any busy server);
//! - a query is judged by the names the compiled state gives its pod for the server it
//!   asked; one from an address that is no local pod is refused.

use std::{
    io,
    net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use netpol_common::{
    reason, DnsProxy, Event, DIR_EGRESS, IPPROTO_TCP, IPPROTO_UDP, VERDICT_AUDIT, VERDICT_DROP,
};
use tracing::{info, warn};

use super::{
    forward::{self, Outcome, Permit},
    learned::now_ms,
    routing::{ProxyRouting, RoutingError},
    sockets,
};
use crate::{
    controller::Agent, datapath::monotonic_coarse_ns, enforcer::Enforcer, metrics::Metrics, monitor::EventHub,
};

/// Threads serving UDP queries, each one query at a time.
pub const UDP_WORKERS: usize = 8;
/// TCP connections served at once.
pub const MAX_TCP: usize = 64;
/// How long the server a pod asked has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP connection may sit idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// How often learned names are looked at for expiry (ms).
const EXPIRY_CHECK_MS: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error("DNS proxy sockets: {0}")]
    Sockets(#[from] io::Error),
    #[error("DNS proxy: {0}")]
    Agent(#[from] crate::controller::AgentError),
}

/// What every query needs.
struct Context<E: Enforcer> {
    agent: Arc<Mutex<Agent<E>>>,
    mark: u32,
    hub: Arc<EventHub>,
    metrics: Metrics,
    stop: AtomicBool,
    tcp_open: AtomicUsize,
}

impl<E: Enforcer> Context<E> {
    fn agent(&self) -> MutexGuard<'_, Agent<E>> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The running proxy; [`Proxy::stop`] (or dropping it) ends it.
pub struct Proxy<E: Enforcer> {
    ctx: Arc<Context<E>>,
    routing: ProxyRouting,
    port: u16,
    threads: Vec<JoinHandle<()>>,
}

impl<E: Enforcer> Proxy<E> {
    /// Starts the proxy of `agent` with its node's `routing`.
    pub fn start(agent: Arc<Mutex<Agent<E>>>, routing: ProxyRouting) -> Result<Proxy<E>, ProxyError> {
        routing.install()?;
        Proxy::listen(agent, routing).inspect_err(|_| {
            if let Err(e) = routing.remove() {
                warn!("{e}");
            }
        })
    }

    fn listen(agent: Arc<Mutex<Agent<E>>>, routing: ProxyRouting) -> Result<Proxy<E>, ProxyError> {
        let (udp, tcp) = sockets::listen(0, routing.mark)?;
        let port = udp.local_addr()?.port();
        udp.set_read_timeout(Some(POLL))?;
        sockets::accept_timeout(&tcp, POLL)?;
        let (hub, metrics) = {
            let mut a = agent.lock().unwrap_or_else(|p| p.into_inner());
            a.set_dns_proxy(DnsProxy { port, _pad: 0, mark: routing.mark })?;
            (a.events(), a.counters())
        };
        let ctx = Arc::new(Context {
            agent,
            mark: routing.mark,
            hub,
            metrics,
            stop: AtomicBool::new(false),
            tcp_open: AtomicUsize::new(0),
        });
        let mut threads = Vec::new();
        for _ in 0..UDP_WORKERS {
            let (ctx, udp) = (ctx.clone(), udp.try_clone()?);
            threads.push(std::thread::spawn(move || serve_udp(&ctx, &udp)));
        }
        let c = ctx.clone();
        threads.push(std::thread::spawn(move || accept_tcp(&c, &tcp)));
        let c = ctx.clone();
        threads.push(std::thread::spawn(move || expire(&c)));
        info!(port, mark = format_args!("{:#x}", routing.mark), "DNS proxy listening");
        Ok(Proxy { ctx, routing, port, threads })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops: the datapath first (DNS for the proxy is dropped from now on), then the
    /// threads, then the routing.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if self.ctx.stop.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.ctx.agent().set_dns_proxy(DnsProxy::default()) {
            warn!("telling the datapath the DNS proxy stopped: {e}");
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Err(e) = self.routing.remove() {
            warn!("{e}");
        }
    }
}

impl<E: Enforcer> Drop for Proxy<E> {
    fn drop(&mut self) {
        self.shut();
    }
}

fn serve_udp<E: Enforcer>(ctx: &Context<E>, udp: &UdpSocket) {
    let mut answerers = sockets::Answerers::new(ctx.mark);
    while !ctx.stopped() {
        let d = match sockets::recv(udp) {
            Ok(d) => d,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => {
                warn!("DNS proxy: receiving a query: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        if let Some(reply) = answer(ctx, &d.data, d.from, d.to, IPPROTO_UDP) {
            if let Err(e) = answerers.send(d.to, d.from, &reply) {
                warn!(to = %d.from, "DNS proxy: sending an answer: {e}");
            }
        }
    }
}

fn accept_tcp<E: Enforcer>(ctx: &Arc<Context<E>>, listener: &TcpListener) {
    while !ctx.stopped() {
        let (conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => {
                warn!("DNS proxy: accepting a connection: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        if ctx.tcp_open.fetch_add(1, Ordering::Relaxed) >= MAX_TCP {
            ctx.tcp_open.fetch_sub(1, Ordering::Relaxed);
            ctx.metrics.dns_query("overloaded");
            continue;
        }
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_tcp(&ctx, conn) {
                if !matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::WouldBlock) {
                    warn!("DNS proxy: a TCP connection: {e}");
                }
            }
            ctx.tcp_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// One connection's queries, one at a time, until the pod closes it or it idles.
fn serve_tcp<E: Enforcer>(ctx: &Context<E>, mut conn: TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(TCP_IDLE))?;
    conn.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
    // Accepted as the server the pod asked: its local address is that server's.
    let (from, to) = match (conn.peer_addr()?, conn.local_addr()?) {
        (std::net::SocketAddr::V4(f), std::net::SocketAddr::V4(t)) => (f, t),
        _ => return Ok(()),
    };
    while !ctx.stopped() {
        let query = forward::read_framed(&mut conn)?;
        match answer(ctx, &query, from, to, IPPROTO_TCP) {
            Some(reply) => forward::write_framed(&mut conn, &reply)?,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// One query from `from` to the server `to`: the reply for the pod, if any.
fn answer<E: Enforcer>(
    ctx: &Context<E>,
    query: &[u8],
    from: SocketAddrV4,
    to: SocketAddrV4,
    proto: u8,
) -> Option<Vec<u8>> {
    let judged = ctx.agent().dns_permit(*from.ip(), to, proto);
    let (ep, permit) = match judged {
        Some((ep, permit)) => ((ep.ep_id, ep.ifindex), permit),
        None => ((0, 0), Permit::default()),
    };
    let ask = |q: &[u8]| match proto {
        IPPROTO_TCP => forward::ask_tcp(to, q, UPSTREAM_TIMEOUT),
        _ => forward::ask_udp(to, q, UPSTREAM_TIMEOUT),
    };
    let learn = |l: &super::message::Learning| {
        let asked = l.names.first();
        let patterns: Vec<_> =
            permit.names.iter().filter(|m| asked.is_some_and(|n| m.matches(n))).cloned().collect();
        ctx.agent().learn(l, &patterns).map_err(|e| e.to_string())
    };
    let x = forward::handle(query, &permit, &ask, &learn);
    report(ctx, &x.outcome, ep, from, to, proto);
    x.reply
}

/// Counts the outcome; a refused or malformed query becomes a drop event.
fn report<E: Enforcer>(
    ctx: &Context<E>,
    outcome: &Outcome,
    (ep_id, ifindex): (u32, u32),
    from: SocketAddrV4,
    to: SocketAddrV4,
    proto: u8,
) {
    let event = |reason, verdict| Event {
        ts_ns: monotonic_coarse_ns(),
        ep_id,
        ifindex,
        saddr: u32::from_ne_bytes(from.ip().octets()),
        daddr: u32::from_ne_bytes(to.ip().octets()),
        sport: from.port().to_be(),
        dport: to.port().to_be(),
        peer: 0,
        rule_id: 0,
        proto,
        dir: DIR_EGRESS,
        verdict,
        reason,
    };
    match outcome {
        Outcome::Answered { .. } => ctx.metrics.dns_query("answered"),
        Outcome::Refused(name) => {
            ctx.metrics.dns_query("refused");
            ctx.hub.publish_query(&event(reason::DROP_DNS_REFUSED, VERDICT_DROP), Some(&name.to_string()));
        }
        Outcome::Audited(name) => {
            ctx.metrics.dns_query("audited");
            ctx.hub.publish_query(&event(reason::DROP_DNS_REFUSED, VERDICT_AUDIT), Some(&name.to_string()));
        }
        Outcome::Malformed(why) => {
            ctx.metrics.dns_query("malformed");
            ctx.hub.publish_query(&event(reason::DROP_DNS_MALFORMED, VERDICT_DROP), None);
            info!(%from, %to, "DNS proxy: malformed query: {why:?}");
        }
        Outcome::Failed { name, why } => {
            ctx.metrics.dns_query("failed");
            warn!(%from, %to, %name, "DNS proxy: answered SERVFAIL: {why}");
        }
    }
}

/// Expires learned names: looks once a second (cheap unless something is due).
fn expire<E: Enforcer>(ctx: &Context<E>) {
    let mut last = 0u64;
    while !ctx.stopped() {
        std::thread::sleep(POLL);
        let now = now_ms();
        if now < last + EXPIRY_CHECK_MS {
            continue;
        }
        last = now;
        if let Err(e) = ctx.agent().expire_learned() {
            warn!("expiring learned DNS names: {e}");
        }
    }
}
