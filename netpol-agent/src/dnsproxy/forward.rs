//! One query from a pod, start to end: judged by its one question against the names the
//! pod's rules allow for that server; REFUSED (never forwarded) when none matches; else asked
//! of the server the pod addressed, and what the answer teaches recorded — enforced — before
//! the answer is released, so the pod's first connection after the lookup never races the
//! ipcache. In audit mode a name no rule allows is asked all the same (nothing is learned
//! from its answer) and reported. A query that is not one gets FORMERR; a server that does not answer, or an
//! answer that does not answer this query, gets SERVFAIL.

use std::{
    collections::BTreeSet,
    io::{self, Read, Write},
    net::{SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

use hickory_proto::op::{Message, ResponseCode};
use netpol_policy::names::{Name, NameMatch};

use super::message::{self, Learning, Malformed, Question};

/// How a query ended (for its event and the metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An allowed name; the server's answer was passed on, after its lesson was enforced.
    Answered { name: Name, learned: Option<Learning> },
    /// A name no rule allows: REFUSED, never forwarded.
    Refused(Name),
    /// A name no rule allows, from a pod in audit mode: asked and answered, learned nothing.
    Audited(Name),
    /// Not a query the proxy can judge: FORMERR (nothing when not even a DNS header).
    Malformed(Malformed),
    /// No usable answer, or its lesson could not be enforced: SERVFAIL.
    Failed { name: Name, why: String },
}

/// The reply for the pod (None: none), and how the query ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub reply: Option<Vec<u8>>,
    pub outcome: Outcome,
}

/// What a pod may ask: the names its rules allow; in audit mode, any name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permit {
    pub names: BTreeSet<NameMatch>,
    pub audit: bool,
}

/// Handles one query for a pod with this permit: `ask` forwards it to the server, `learn`
/// enforces what an answer teaches (both are the agent's in production).
pub fn handle(
    query: &[u8],
    permit: &Permit,
    ask: &dyn Fn(&[u8]) -> io::Result<Vec<u8>>,
    learn: &dyn Fn(&Learning) -> Result<(), String>,
) -> Exchange {
    let q = match message::question(query) {
        Ok(q) => q,
        Err(e) => {
            return Exchange {
                reply: message::reply(query, ResponseCode::FormErr),
                outcome: Outcome::Malformed(e),
            }
        }
    };
    let allowed = permit.names.iter().any(|m| m.matches(&q.name));
    if !allowed && !permit.audit {
        return Exchange {
            reply: message::reply(query, ResponseCode::Refused),
            outcome: Outcome::Refused(q.name),
        };
    }
    let failed = |why: String| Exchange {
        reply: message::reply(query, ResponseCode::ServFail),
        outcome: Outcome::Failed { name: q.name.clone(), why },
    };
    let answer = match ask(query) {
        Ok(a) => a,
        Err(e) => return failed(format!("the server did not answer: {e}")),
    };
    if !answers(&answer, &q) {
        return failed("the server's reply does not answer the query".into());
    }
    if !allowed {
        return Exchange { reply: Some(answer), outcome: Outcome::Audited(q.name) };
    }
    let learned = message::learning(&answer, &q.name);
    if let Some(l) = &learned {
        if let Err(e) = learn(l) {
            return failed(format!("the answer's addresses could not be enforced: {e}"));
        }
    }
    Exchange { reply: Some(answer), outcome: Outcome::Answered { name: q.name, learned } }
}

/// Whether `answer` is a reply to `q`: same id, same one question.
fn answers(answer: &[u8], q: &Question) -> bool {
    let Ok(m) = Message::from_vec(answer) else { return false };
    let same_question = match m.queries() {
        [only] => {
            Name::parse(&only.name().to_ascii()).is_ok_and(|n| n == q.name) && only.query_type() == q.qtype
        }
        _ => false,
    };
    m.id() == q.id && same_question
}

/// Asks `server` over UDP, from the node's address; a datagram from anyone else, or with
/// another id, is not the answer.
pub fn ask_udp(server: SocketAddrV4, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(server)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(query)?;
    let mut buf = vec![0u8; 65_535];
    let n = s.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Asks `server` over TCP (two-byte length prefix), from the node's address.
pub fn ask_tcp(server: SocketAddrV4, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut c = TcpStream::connect_timeout(&server.into(), timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    write_framed(&mut c, query)?;
    read_framed(&mut c)
}

/// One DNS-over-TCP message.
pub fn read_framed(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

pub fn write_framed(w: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("a DNS message over 65535 bytes"))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    w.write_all(&framed)
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, net::Ipv4Addr};

    use hickory_proto::{
        op::{MessageType, Query},
        rr::{rdata, Name as WireName, RData, Record, RecordType},
    };

    use super::*;

    fn query(id: u16, names: &[&str]) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id).set_message_type(MessageType::Query);
        for n in names {
            m.add_query(Query::query(WireName::from_ascii(n).unwrap(), RecordType::A));
        }
        m.to_vec().unwrap()
    }

    fn answer_to(q: &[u8], ip: [u8; 4]) -> Vec<u8> {
        let q = Message::from_vec(q).unwrap();
        let mut m = Message::new();
        m.set_id(q.id()).set_message_type(MessageType::Response);
        m.add_queries(q.queries().to_vec());
        let owner = q.queries()[0].name().clone();
        m.add_answer(Record::from_rdata(owner, 30, RData::A(rdata::A(Ipv4Addr::from(ip)))));
        m.to_vec().unwrap()
    }

    fn code(reply: &Option<Vec<u8>>) -> ResponseCode {
        Message::from_vec(reply.as_ref().unwrap()).unwrap().response_code()
    }

    fn only(pattern: &str) -> Permit {
        Permit { names: BTreeSet::from([NameMatch::pattern(pattern).unwrap()]), audit: false }
    }

    /// Audit mode asks for a name no rule allows, learns nothing from it, and says so.
    #[test]
    fn audit_mode_answers_names_no_rule_allows_and_learns_nothing() {
        let ask = |q: &[u8]| Ok(answer_to(q, [198, 51, 100, 9]));
        let audit = Permit { audit: true, ..only("songlaa.com") };
        let q = query(4, &["www.zhaw.ch."]);
        let x = handle(&q, &audit, &ask, &|_| panic!("learned an audited name"));
        assert_eq!(code(&x.reply), ResponseCode::NoError);
        assert_eq!(x.outcome, Outcome::Audited(Name::parse("www.zhaw.ch").unwrap()));
        let learned = std::cell::Cell::new(false);
        let x = handle(&query(5, &["songlaa.com."]), &audit, &ask, &|_| {
            learned.set(true);
            Ok(())
        });
        assert!(matches!(x.outcome, Outcome::Answered { .. }) && learned.get());
        // What the proxy cannot judge is refused whatever the mode.
        let two = query(6, &["songlaa.com.", "x.evil.example."]);
        assert_eq!(code(&handle(&two, &audit, &ask, &|_| Ok(())).reply), ResponseCode::FormErr);
    }

    #[test]
    fn allowed_names_are_answered_after_their_addresses_are_enforced() {
        let events = RefCell::new(Vec::new());
        let ask = |q: &[u8]| {
            events.borrow_mut().push("asked");
            Ok(answer_to(q, [198, 51, 100, 7]))
        };
        let learn = |l: &Learning| {
            events.borrow_mut().push("learned");
            assert!(l.addresses.contains(&Ipv4Addr::new(198, 51, 100, 7)));
            Ok(())
        };
        let q = query(9, &["SONGLAA.com."]);
        let x = handle(&q, &only("songlaa.com"), &ask, &learn);
        assert_eq!(code(&x.reply), ResponseCode::NoError);
        assert!(matches!(x.outcome, Outcome::Answered { learned: Some(_), .. }));
        assert_eq!(*events.borrow(), ["asked", "learned"]);
        // Enforcing failed: the answer is not released.
        let x = handle(&q, &only("songlaa.com"), &ask, &|_| Err("map full".into()));
        assert_eq!(code(&x.reply), ResponseCode::ServFail);
        assert!(matches!(x.outcome, Outcome::Failed { .. }));
    }

    #[test]
    fn denied_and_malformed_queries_are_never_forwarded() {
        let ask = |_: &[u8]| -> io::Result<Vec<u8>> { panic!("forwarded") };
        let learn = |_: &Learning| -> Result<(), String> { panic!("learned") };
        let x = handle(&query(1, &["www.zhaw.ch."]), &only("songlaa.com"), &ask, &learn);
        assert_eq!(code(&x.reply), ResponseCode::Refused);
        assert_eq!(x.outcome, Outcome::Refused(Name::parse("www.zhaw.ch").unwrap()));
        // Tunnelling through a subdomain of an allowed pattern's sibling: refused too.
        let x = handle(&query(2, &["abc123.t.evil.example."]), &only("*.songlaa.com"), &ask, &learn);
        assert_eq!(code(&x.reply), ResponseCode::Refused);
        // Two questions: the second one would ride past the filter.
        let x = handle(&query(3, &["songlaa.com.", "x.evil.example."]), &only("songlaa.com"), &ask, &learn);
        assert_eq!(
            (code(&x.reply), x.outcome),
            (ResponseCode::FormErr, Outcome::Malformed(Malformed::Questions(2)))
        );
        let x = handle(b"\x01", &only("*"), &ask, &learn);
        assert_eq!(x.reply, None, "not even a header: nothing to answer");
    }

    #[test]
    fn an_answer_to_another_query_is_not_passed_on() {
        let q = query(5, &["songlaa.com."]);
        let other_id = |_: &[u8]| Ok(answer_to(&query(6, &["songlaa.com."]), [1, 2, 3, 4]));
        let other_name = |_: &[u8]| Ok(answer_to(&query(5, &["evil.example."]), [1, 2, 3, 4]));
        for ask in [&other_id as &dyn Fn(&[u8]) -> io::Result<Vec<u8>>, &other_name] {
            let x = handle(&q, &only("songlaa.com"), ask, &|_| panic!("learned a forged answer"));
            assert_eq!(code(&x.reply), ResponseCode::ServFail);
        }
        let silent = |_: &[u8]| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        assert_eq!(code(&handle(&q, &only("*"), &silent, &|_| Ok(())).reply), ResponseCode::ServFail);
    }

    #[test]
    fn udp_and_tcp_reach_a_server() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (udp_at, tcp_at) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = udp.recv_from(&mut buf).unwrap();
            udp.send_to(&answer_to(&buf[..n], [10, 0, 0, 1]), from).unwrap();
        });
        std::thread::spawn(move || {
            let (mut c, _) = tcp.accept().unwrap();
            let q = read_framed(&mut c).unwrap();
            write_framed(&mut c, &answer_to(&q, [10, 0, 0, 2])).unwrap();
        });
        let v4 = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let q = query(7, &["songlaa.com."]);
        let t = Duration::from_secs(3);
        let a = ask_udp(v4(udp_at), &q, t).unwrap();
        assert_eq!(Message::from_vec(&a).unwrap().id(), 7);
        let a = ask_tcp(v4(tcp_at), &q, t).unwrap();
        assert_eq!(Message::from_vec(&a).unwrap().answers().len(), 1);
    }
}
