//! The simulated internet of local mode, as served inside its network namespace: an
//! authoritative DNS server for the lab's names (and names the tests need), and HTTP and
//! HTTPS servers answering for each of them — HTTPS with a certificate from local mode's
//! own CA, which pods trust. Every query the DNS server receives is logged, so a user can
//! see what left the node (`netpol local internet queries`).
//!
//! Addresses come from the documentation ranges 198.51.100.0/24 and 203.0.113.0/24, which
//! no real host has. The third, 192.0.2.0/24, is left out: machines like this one use it
//! for their own network, and pods must not lose the way there to the simulated internet.

use std::{
    collections::BTreeSet,
    fs::{File, OpenOptions},
    io::Write,
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{rdata::A, rdata::CNAME, Name, RData, Record, RecordType},
};

/// The internet's DNS server.
pub const DNS_SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
/// The documentation ranges routed from the node's pods to the internet.
pub const RANGES: [&str; 2] = ["198.51.100.0/24", "203.0.113.0/24"];

/// What a name holds.
#[derive(Clone, Copy, Debug)]
pub enum Data {
    A(&'static [Ipv4Addr]),
    /// An alias: the answer follows it.
    Cname(&'static str),
}

/// A name the internet's DNS server is authoritative for, and its TTL in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub name: &'static str,
    pub data: Data,
    pub ttl: u32,
}

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// Forty addresses: an answer too long for a 512-byte UDP reply.
const MANY: [Ipv4Addr; 40] = {
    let mut out = [ip(203, 0, 113, 100); 40];
    let mut i = 0;
    while i < 40 {
        out[i] = ip(203, 0, 113, 100 + i as u8);
        i += 1;
    }
    out
};

/// The names: the lab's two sites, an alias chain, a short TTL, and an answer too long
/// for UDP.
pub const ZONE: &[Entry] = &[
    Entry { name: "www.zhaw.ch", data: Data::A(&[ip(203, 0, 113, 10)]), ttl: 300 },
    Entry { name: "songlaa.com", data: Data::A(&[ip(198, 51, 100, 10)]), ttl: 300 },
    Entry { name: "www.songlaa.com", data: Data::Cname("songlaa.com"), ttl: 300 },
    Entry { name: "cdn.example.net", data: Data::Cname("edge.example.net"), ttl: 120 },
    Entry { name: "edge.example.net", data: Data::A(&[ip(198, 51, 100, 20), ip(198, 51, 100, 21)]), ttl: 60 },
    Entry { name: "short-ttl.example.net", data: Data::A(&[ip(198, 51, 100, 30)]), ttl: 2 },
    Entry { name: "many.example.net", data: Data::A(&MANY), ttl: 300 },
];

/// Every address the zone gives (the internet's namespace holds them all).
pub fn addresses() -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::from([DNS_SERVER]);
    for e in ZONE {
        if let Data::A(ips) = e.data {
            out.extend(ips.iter().copied());
        }
    }
    out
}

/// The names the sites answer for (the HTTPS certificate's names).
pub fn names() -> Vec<String> {
    ZONE.iter().map(|e| e.name.to_string()).collect()
}

fn entry(name: &Name) -> Option<&'static Entry> {
    let asked = name.to_lowercase().to_ascii();
    let asked = asked.trim_end_matches('.');
    ZONE.iter().find(|e| e.name == asked)
}

fn wire(name: &str) -> Name {
    Name::from_ascii(format!("{name}.")).expect("a valid zone name")
}

/// The records answering `qtype` at `name`: the CNAME chain, then the addresses.
fn records(name: &Name, qtype: RecordType) -> Option<Vec<Record>> {
    let mut at = entry(name)?;
    let mut owner = name.clone();
    let mut out = Vec::new();
    for _ in 0..ZONE.len() {
        match at.data {
            Data::Cname(target) => {
                out.push(Record::from_rdata(owner, at.ttl, RData::CNAME(CNAME(wire(target)))));
                owner = wire(target);
                at = entry(&owner)?;
            }
            Data::A(ips) => {
                if qtype == RecordType::A {
                    out.extend(
                        ips.iter().map(|ip| Record::from_rdata(owner.clone(), at.ttl, RData::A(A(*ip)))),
                    );
                }
                break;
            }
        }
    }
    Some(out)
}

/// The UDP payload a query lets the answer have: its EDNS size, else 512 bytes.
fn udp_limit(query: &Message) -> usize {
    query.extensions().as_ref().map_or(512, |e| usize::from(e.max_payload()).max(512))
}

/// The answer to one query (None: not a query), over UDP when `udp` (which truncates it
/// to what the query allows), else TCP.
pub fn respond(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut reply = crate::dns::reply_to(&q)?;
    reply.set_authoritative(true);
    let [question] = q.queries() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply.to_vec().ok();
    };
    match records(question.name(), question.query_type()) {
        Some(answers) => reply.add_answers(answers),
        None => reply.set_response_code(ResponseCode::NXDomain),
    };
    let bytes = reply.to_vec().ok()?;
    if udp && bytes.len() > udp_limit(&q) {
        reply.take_answers();
        reply.set_truncated(true);
        return reply.to_vec().ok();
    }
    Some(bytes)
}

/// One line of the query log: protocol, type, name, asker.
fn log_line(query: &[u8], proto: &str, from: SocketAddr) -> String {
    let asked = Message::from_vec(query).ok().and_then(|m| m.queries().first().cloned());
    match asked {
        Some(q) => format!("{proto} {} {} from {from}\n", q.query_type(), q.name()),
        None => format!("{proto} (not a query) from {from}\n"),
    }
}

/// The query log, appended to as queries arrive.
#[derive(Clone)]
struct Log(Arc<Mutex<File>>);

impl Log {
    fn record(&self, query: &[u8], proto: &str, from: SocketAddr) {
        let line = log_line(query, proto, from);
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.write_all(line.as_bytes());
    }
}

/// Where the internet keeps its files, in the local node's state directory.
pub struct Files<'a>(pub &'a Path);

impl Files<'_> {
    pub fn queries(&self) -> std::path::PathBuf {
        self.0.join("queries.log")
    }
    pub fn ca(&self) -> std::path::PathBuf {
        self.0.join("ca.pem")
    }
    /// The machine's CAs and local mode's: what pods trust.
    pub fn trust(&self) -> std::path::PathBuf {
        self.0.join("ca-bundle.pem")
    }
    fn cert(&self) -> std::path::PathBuf {
        self.0.join("server.der")
    }
    fn key(&self) -> std::path::PathBuf {
        self.0.join("server-key.der")
    }
}

/// The machine's CA bundle (Debian's path).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Makes local mode's CA and the sites' certificate (signed by it, for every zone name),
/// and the trust bundle pods use.
pub fn make_certificates(files: &Files) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(files.0)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "netpol local mode CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut site = CertificateParams::new(names())?;
    site.distinguished_name.push(DnType::CommonName, "netpol simulated internet");
    let cert = site.signed_by(&key, &issuer)?;
    std::fs::write(files.cert(), cert.der())?;
    std::fs::write(files.key(), key.serialize_der())?;
    std::fs::write(files.ca(), ca_cert.pem())?;
    let mut bundle = std::fs::read_to_string(SYSTEM_CAS).unwrap_or_default();
    bundle.push_str(&ca_cert.pem());
    std::fs::write(files.trust(), bundle)?;
    Ok(())
}

fn tls_config(files: &Files) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = CertificateDer::from(std::fs::read(files.cert()).context("the sites' certificate")?);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(std::fs::read(files.key())?));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    Ok(Arc::new(config))
}

/// Serves until killed (with a CA and certificate of its own when `files` has none): DNS on
/// port 53 of [`DNS_SERVER`] (UDP and TCP), HTTP on 80 and HTTPS on 443 of every address; prints [`crate::responder::READY`] once every socket is bound.
pub fn serve(files: &Files) -> Result<()> {
    if !files.cert().exists() {
        make_certificates(files).context("making the sites' certificate")?;
    }
    let log = Log(Arc::new(Mutex::new(OpenOptions::new().create(true).append(true).open(files.queries())?)));
    let tls = tls_config(files)?;
    // Bound to the server's address: a reply must come from where the query went (the
    // namespace has many addresses, and the first is not this one).
    let udp = UdpSocket::bind((DNS_SERVER, 53))?;
    let dns_tcp = TcpListener::bind((DNS_SERVER, 53))?;
    let http = TcpListener::bind(("0.0.0.0", 80))?;
    let https = TcpListener::bind(("0.0.0.0", 443))?;
    let mut threads = Vec::new();
    let l = log.clone();
    threads.push(std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            l.record(&buf[..n], "udp", from);
            if let Some(reply) = respond(&buf[..n], true) {
                let _ = udp.send_to(&reply, from);
            }
        }
    }));
    threads.push(std::thread::spawn(move || {
        for conn in dns_tcp.incoming().flatten() {
            let Ok(from) = conn.peer_addr() else { continue };
            let l = log.clone();
            std::thread::spawn(move || {
                crate::dns::serve_tcp(conn, &|q| {
                    l.record(q, "tcp", from);
                    respond(q, false)
                })
            });
        }
    }));
    threads.push(std::thread::spawn(move || {
        for conn in http.incoming().flatten() {
            std::thread::spawn(move || crate::responder::serve_http(conn, "the simulated internet"));
        }
    }));
    threads.push(std::thread::spawn(move || {
        for conn in https.incoming().flatten() {
            let tls = tls.clone();
            std::thread::spawn(move || {
                let Ok(server) = rustls::ServerConnection::new(tls) else { return };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                crate::responder::serve_http(
                    rustls::StreamOwned::new(server, conn),
                    "the simulated internet",
                );
            });
        }
    }));
    println!("{}", crate::responder::READY);
    unsafe { libc::close(1) };
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, MessageType, Query};

    fn query(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_message_type(MessageType::Query).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn answer(name: &str, qtype: RecordType, udp: bool, edns: bool) -> Message {
        Message::from_vec(&respond(&query(name, qtype, edns), udp).unwrap()).unwrap()
    }

    #[test]
    fn the_zone_answers_its_names_chains_and_nothing_else() {
        let a = answer("SongLaa.com.", RecordType::A, true, false);
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert!(a.authoritative());
        assert_eq!(a.answers().len(), 1);
        let chain = answer("cdn.example.net.", RecordType::A, true, false);
        let types: Vec<RecordType> = chain.answers().iter().map(|r| r.record_type()).collect();
        assert_eq!(types, [RecordType::CNAME, RecordType::A, RecordType::A]);
        assert_eq!(
            answer("x.evil.example.", RecordType::TXT, true, false).response_code(),
            ResponseCode::NXDomain
        );
        let txt = answer("www.zhaw.ch.", RecordType::TXT, true, false);
        assert_eq!((txt.response_code(), txt.answers().len()), (ResponseCode::NoError, 0));
    }

    #[test]
    fn a_long_answer_is_truncated_over_udp_unless_the_query_allows_it() {
        let udp = answer("many.example.net.", RecordType::A, true, false);
        assert!(udp.truncated() && udp.answers().is_empty());
        let tcp = answer("many.example.net.", RecordType::A, false, false);
        assert!(!tcp.truncated() && tcp.answers().len() == 40);
        let edns = answer("many.example.net.", RecordType::A, true, true);
        assert_eq!(edns.answers().len(), 40);
    }
}
