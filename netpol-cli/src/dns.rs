//! The local cluster's DNS, served by the kube-dns pods of local mode: the records CoreDNS's
//! `kubernetes` plugin serves for Services, on the DNS wire format of hickory-proto.
//!
//! - `<svc>.<ns>.svc.<domain>` → the Service's ClusterIPs (A); a headless Service → the
//!   addresses of its ready endpoints. Names are matched case-insensitively.
//! - any other name under `<domain>` → NXDOMAIN, authoritatively;
//! - anything else → the upstream resolver when there is one, else SERVFAIL (local mode has
//!   no internet; the resolver then moves on along its search list).
//!
//! Short names (`svc`, `svc.ns`) are the client's business: its resolver appends the search
//! domains (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`) that local mode writes into
//! every pod's resolv.conf, as the kubelet does.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netpol_api::{
    client::{self, Method},
    ServiceName, PATH_NAMES,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{rdata::A, Name, RData, Record, RecordType},
};

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";
/// The TTL of Service records (CoreDNS's default).
pub const TTL: u32 = 30;

/// The A records of the cluster domain, by lower-case fully qualified name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    records: BTreeMap<String, Vec<Ipv4Addr>>,
}

fn fqdn(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.{DOMAIN}.").to_ascii_lowercase()
}

impl Zone {
    /// Adds the addresses of Service `service` in `namespace`.
    pub fn add(&mut self, namespace: &str, service: &str, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        let entry = self.records.entry(fqdn(service, namespace)).or_default();
        entry.extend(addrs);
        entry.sort();
        entry.dedup();
    }

    /// What the zone says of `name`: its addresses, NXDOMAIN (None) for other names in the
    /// cluster domain, or not ours (Err) for names outside it.
    fn lookup(&self, name: &Name) -> Result<Option<&[Ipv4Addr]>, ()> {
        let domain = Name::from_ascii(format!("{DOMAIN}.")).expect("a valid domain");
        if !domain.zone_of(name) {
            return Err(());
        }
        let key = name.to_lowercase().to_ascii();
        let key = if key.ends_with('.') { key } else { format!("{key}.") };
        Ok(self.records.get(&key).map(Vec::as_slice))
    }
}

/// The zone of the agent's Service names: each one's ClusterIPs, or a headless one's
/// ready endpoints.
pub fn zone_of(names: &[ServiceName]) -> Zone {
    let mut zone = Zone::default();
    for n in names {
        zone.add(&n.namespace, &n.name, n.addresses.iter().copied());
    }
    zone
}

/// The zone, read from the agent at most once a second.
struct Source {
    socket: PathBuf,
    cached: Option<(Instant, Arc<Zone>)>,
}

impl Source {
    fn zone(&mut self) -> Arc<Zone> {
        if let Some((at, zone)) = &self.cached {
            if at.elapsed() < Duration::from_secs(1) {
                return zone.clone();
            }
        }
        let fetched = client::call(&self.socket, Method::GET, PATH_NAMES, None, Duration::from_secs(2))
            .ok()
            .and_then(|(status, body)| status.is_success().then_some(body))
            .and_then(|body| serde_json::from_slice::<Vec<ServiceName>>(&body).ok());
        match fetched {
            Some(names) => {
                let zone = Arc::new(zone_of(&names));
                self.cached = Some((Instant::now(), zone.clone()));
                zone
            }
            // The agent is restarting: the last zone is better than none.
            None => self.cached.as_ref().map(|(_, z)| z.clone()).unwrap_or_default(),
        }
    }
}

/// Forwards a query to `upstream` over TCP, as a client that asked over TCP (a truncated
/// UDP answer's retry) is forwarded by CoreDNS; the reply, if one comes within 2 s.
fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let mut c = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let len = u16::try_from(query.len()).ok()?;
    c.write_all(&len.to_be_bytes()).and_then(|()| c.write_all(query)).ok()?;
    let mut n = [0u8; 2];
    c.read_exact(&mut n).ok()?;
    let mut reply = vec![0u8; u16::from_be_bytes(n) as usize];
    c.read_exact(&mut reply).ok()?;
    Some(reply)
}

/// Forwards a query to `upstream` over UDP; its reply, if one comes within 2 s.
fn forward(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    sock.send_to(query, upstream).ok()?;
    let mut buf = vec![0u8; 65_535];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    (from == upstream).then(|| buf[..n].to_vec())
}

/// Serves DNS on UDP and TCP `port` until killed, with the zone of the agent at `socket`
/// and, for other names, `upstream`. Returns once both sockets are bound (serving goes on
/// in threads).
pub fn serve(
    port: u16,
    socket: &Path,
    upstream: Option<SocketAddr>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let source = Arc::new(Mutex::new(Source { socket: socket.to_path_buf(), cached: None }));
    // Forwarded over the protocol the client asked with.
    let answer = move |query: &[u8], tcp: bool| {
        let zone = source.lock().unwrap().zone();
        let fwd = move |q: &[u8]| upstream.and_then(|u| if tcp { forward_tcp(u, q) } else { forward(u, q) });
        respond(query, &zone, Some(&fwd))
    };
    let answer = Arc::new(answer);
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    let tcp = TcpListener::bind(("0.0.0.0", port))?;
    let on_udp = answer.clone();
    let udp_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            if let Some(reply) = on_udp(&buf[..n], false) {
                let _ = udp.send_to(&reply, from);
            }
        }
    });
    let tcp_thread = std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || serve_tcp(conn, &|q| answer(q, true)));
        }
    });
    Ok(vec![udp_thread, tcp_thread])
}

/// DNS over TCP: messages with a two-byte length prefix, until the client closes.
pub fn serve_tcp(mut conn: TcpStream, answer: &dyn Fn(&[u8]) -> Option<Vec<u8>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        if conn.read_exact(&mut query).is_err() {
            return;
        }
        let Some(reply) = answer(&query) else { return };
        let Ok(n) = u16::try_from(reply.len()) else { return };
        if conn.write_all(&n.to_be_bytes()).and_then(|()| conn.write_all(&reply)).is_err() {
            return;
        }
    }
}

/// A query any DNS server answers (with its ID, 0x6e70): an A question for
/// `probe.netpol.`. The connectivity probes send it over UDP.
pub fn probe_query() -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0x6e70).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
    m.add_query(hickory_proto::op::Query::query(
        Name::from_ascii("probe.netpol.").expect("a valid name"),
        RecordType::A,
    ));
    m.to_vec().expect("a query encodes")
}

/// A reply to `query` with nothing in it yet: its id, opcode, RD flag and questions (None
/// when it is not a query).
pub fn reply_to(query: &Message) -> Option<Message> {
    if query.message_type() != MessageType::Query {
        return None;
    }
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired());
    reply.add_queries(query.queries().iter().cloned());
    Some(reply)
}

/// Forwards a query upstream; the upstream's reply, if any.
pub type Forward<'a> = &'a dyn Fn(&[u8]) -> Option<Vec<u8>>;

/// The answer to one query message, or None when it is not one to answer (not a query,
/// unparsable). `upstream` forwards a query for a name outside the cluster domain and
/// returns the upstream's reply.
pub fn respond(query: &[u8], zone: &Zone, upstream: Option<Forward>) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut reply = reply_to(&msg)?;
    reply.set_recursion_available(true);
    let [q] = msg.queries() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply.to_vec().ok();
    };
    if msg.op_code() != OpCode::Query {
        reply.set_response_code(ResponseCode::NotImp);
        return reply.to_vec().ok();
    }
    match zone.lookup(q.name()) {
        Err(()) => match upstream.and_then(|forward| forward(query)) {
            Some(answer) => return Some(recursion_available(answer)),
            None => {
                reply.set_response_code(ResponseCode::ServFail);
            }
        },
        Ok(None) => {
            reply.set_authoritative(true).set_response_code(ResponseCode::NXDomain);
        }
        Ok(Some(addrs)) => {
            reply.set_authoritative(true);
            // A name with addresses has no other record types: NOERROR with no answers.
            if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                let records =
                    addrs.iter().map(|a| Record::from_rdata(q.name().clone(), TTL, RData::A(A(*a))));
                reply.add_answers(records);
            }
        }
    }
    reply.to_vec().ok()
}

/// An upstream's answer as a recursive resolver passes it on: recursion available.
fn recursion_available(answer: Vec<u8>) -> Vec<u8> {
    let Ok(mut m) = Message::from_vec(&answer) else { return answer };
    m.set_recursion_available(true);
    m.to_vec().unwrap_or(answer)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;

    use super::*;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn zone() -> Zone {
        let mut z = Zone::default();
        z.add("default", "backend", [Ipv4Addr::new(10, 96, 0, 20)]);
        z.add("kube-system", "kube-dns", [Ipv4Addr::new(10, 96, 0, 10)]);
        z
    }

    fn answer(bytes: &[u8]) -> (ResponseCode, bool, Vec<Ipv4Addr>) {
        let m = Message::from_vec(bytes).unwrap();
        assert_eq!(m.id(), 4242);
        assert_eq!(m.message_type(), MessageType::Response);
        let addrs = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        (m.response_code(), m.authoritative(), addrs)
    }

    #[test]
    fn service_names_resolve_to_their_cluster_ips_in_any_case() {
        for name in ["backend.default.svc.cluster.local.", "BackEnd.Default.SVC.cluster.local."] {
            let r = respond(&query(name, RecordType::A), &zone(), None).unwrap();
            assert_eq!(
                answer(&r),
                (ResponseCode::NoError, true, vec![Ipv4Addr::new(10, 96, 0, 20)]),
                "{name}"
            );
        }
        // AAAA of a name that exists: no error, no answer (the resolver then uses the A).
        let r =
            respond(&query("backend.default.svc.cluster.local.", RecordType::AAAA), &zone(), None).unwrap();
        assert_eq!(answer(&r), (ResponseCode::NoError, true, vec![]));
    }

    #[test]
    fn unknown_cluster_names_are_nxdomain_and_others_go_upstream() {
        for name in
            ["nothing.default.svc.cluster.local.", "backend.other.svc.cluster.local.", "cluster.local."]
        {
            let r = respond(&query(name, RecordType::A), &zone(), None).unwrap();
            assert_eq!(answer(&r), (ResponseCode::NXDomain, true, vec![]), "{name}");
        }
        // Outside the domain, without an upstream: SERVFAIL, not a made-up answer.
        let r = respond(&query("songlaa.com.", RecordType::A), &zone(), None).unwrap();
        assert_eq!(answer(&r).0, ResponseCode::ServFail);
        // With one, its reply is passed through untouched.
        let canned =
            respond(&query("backend.default.svc.cluster.local.", RecordType::A), &zone(), None).unwrap();
        let forward = |q: &[u8]| {
            assert_eq!(Message::from_vec(q).unwrap().queries()[0].name().to_ascii(), "songlaa.com.");
            Some(canned.clone())
        };
        let r = respond(&query("songlaa.com.", RecordType::A), &zone(), Some(&forward)).unwrap();
        assert_eq!(r, canned);
    }

    #[test]
    fn garbage_and_answers_are_not_answered() {
        assert!(respond(b"\x00\x01", &zone(), None).is_none());
        let reply =
            respond(&query("backend.default.svc.cluster.local.", RecordType::A), &zone(), None).unwrap();
        assert!(respond(&reply, &zone(), None).is_none(), "a response was answered");
    }
}
