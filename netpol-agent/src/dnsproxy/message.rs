//! DNS messages as the proxy reads and writes them, in hickory-proto's wire format.
//!
//! A query is judged by its one question: a message that is not a standard query or asks
//! anything but exactly one question is malformed (DNS servers answer no more than one,
//! and a second question is a way to smuggle a name past a filter that reads the first).
//! An answer teaches the addresses of the asked name and of every name its CNAME chain
//! passes through, for the shortest TTL along the way.

use std::{collections::BTreeSet, net::Ipv4Addr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{RData, RecordType},
};
use netpol_policy::names::Name;

/// Why a message is not a query the proxy can judge.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not DNS: {0}")]
    Wire(String),
    #[error("not a standard query")]
    NotAQuery,
    #[error("{0} questions (one is allowed)")]
    Questions(usize),
    #[error("the question's name: {0}")]
    Name(String),
}

/// The one question of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub name: Name,
    pub qtype: RecordType,
}

/// Reads a query's one question.
pub fn question(bytes: &[u8]) -> Result<Question, Malformed> {
    let m = Message::from_vec(bytes).map_err(|e| Malformed::Wire(e.to_string()))?;
    if m.message_type() != MessageType::Query || m.op_code() != OpCode::Query {
        return Err(Malformed::NotAQuery);
    }
    let [q] = m.queries() else { return Err(Malformed::Questions(m.queries().len())) };
    let text = q.name().to_ascii();
    let name = Name::parse(&text).map_err(|e| Malformed::Name(e.0))?;
    Ok(Question { id: m.id(), name, qtype: q.query_type() })
}

/// The answer to a query with `code` and no records: the query's id and question echoed.
pub fn reply(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    m.add_queries(q.queries().to_vec());
    m.to_vec().ok()
}

/// What an answer teaches: the names of the chain (the asked one first), their addresses,
/// and for how long.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learning {
    pub names: Vec<Name>,
    pub addresses: BTreeSet<Ipv4Addr>,
    /// The shortest TTL among the chain's CNAMEs and the addresses' A records (seconds).
    pub ttl: u32,
}

/// The longest CNAME chain followed.
const MAX_CHAIN: usize = 16;

/// What a NOERROR answer to `asked` teaches (None for any other answer, or one without
/// addresses).
pub fn learning(answer: &[u8], asked: &Name) -> Option<Learning> {
    let m = Message::from_vec(answer).ok()?;
    if m.message_type() != MessageType::Response || m.response_code() != ResponseCode::NoError {
        return None;
    }
    let owner = |r: &hickory_proto::rr::Record| Name::parse(&r.name().to_ascii()).ok();
    let mut out = Learning { names: vec![asked.clone()], addresses: BTreeSet::new(), ttl: u32::MAX };
    while out.names.len() < MAX_CHAIN {
        let last = out.names.last().expect("the asked name");
        let next = m.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(target) if owner(r).as_ref() == Some(last) => {
                Some((Name::parse(&target.0.to_ascii()).ok()?, r.ttl()))
            }
            _ => None,
        });
        match next {
            Some((target, ttl)) if !out.names.contains(&target) => {
                out.ttl = out.ttl.min(ttl);
                out.names.push(target);
            }
            _ => break,
        }
    }
    for r in m.answers().iter().filter(|r| r.record_type() == RecordType::A) {
        if let (RData::A(a), Some(name)) = (r.data(), owner(r)) {
            if out.names.contains(&name) {
                out.addresses.insert(a.0);
                out.ttl = out.ttl.min(r.ttl());
            }
        }
    }
    (!out.addresses.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::Query,
        rr::{rdata, Name as WireName, Record},
    };

    fn query(names: &[&str]) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_message_type(MessageType::Query).set_recursion_desired(true);
        for n in names {
            m.add_query(Query::query(WireName::from_ascii(n).unwrap(), RecordType::A));
        }
        m.to_vec().unwrap()
    }

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn a_query_has_exactly_one_valid_question() {
        let q = question(&query(&["WWW.Songlaa.com."])).unwrap();
        assert_eq!((q.id, q.name, q.qtype), (7, name("www.songlaa.com"), RecordType::A));
        assert_eq!(question(&query(&["a.com.", "b.com."])), Err(Malformed::Questions(2)));
        assert_eq!(question(&query(&[])), Err(Malformed::Questions(0)));
        assert!(matches!(question(b"\x00\x07garbage"), Err(Malformed::Wire(_))));
        // The longest name (253 characters, 255 bytes on the wire) is a name; past it, not.
        let longest = format!("{}.{}.{}.{}.", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61));
        assert_eq!(question(&query(&[&longest])).unwrap().name.as_str().len(), 253);
        let mut over = vec![0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            over.push(63);
            over.extend([b'a'; 63]);
        }
        over.extend([0, 0, 1, 0, 1]);
        assert!(matches!(question(&over), Err(Malformed::Wire(_)) | Err(Malformed::Name(_))));
        let refused = reply(&query(&["x.com."]), ResponseCode::Refused).unwrap();
        let m = Message::from_vec(&refused).unwrap();
        assert_eq!((m.id(), m.response_code(), m.queries().len()), (7, ResponseCode::Refused, 1));
        assert!(m.answers().is_empty());
    }

    #[test]
    fn an_answer_teaches_the_cname_chain_for_its_shortest_ttl() {
        let mut m = Message::new();
        m.set_id(7).set_message_type(MessageType::Response);
        let wire = |s: &str| WireName::from_ascii(s).unwrap();
        let cname = |from: &str, to: &str, ttl| {
            Record::from_rdata(wire(from), ttl, RData::CNAME(rdata::CNAME(wire(to))))
        };
        let a = |owner: &str, ip: [u8; 4], ttl| {
            Record::from_rdata(wire(owner), ttl, RData::A(rdata::A(Ipv4Addr::from(ip))))
        };
        m.add_answer(cname("www.songlaa.com.", "edge.cdn.example.", 300));
        m.add_answer(a("edge.cdn.example.", [198, 51, 100, 7], 60));
        m.add_answer(a("edge.cdn.example.", [198, 51, 100, 8], 120));
        // Not on the chain: never learned.
        m.add_answer(a("evil.example.", [203, 0, 113, 9], 999));
        let l = learning(&m.to_vec().unwrap(), &name("www.songlaa.com")).unwrap();
        assert_eq!(l.names, vec![name("www.songlaa.com"), name("edge.cdn.example")]);
        let want: BTreeSet<Ipv4Addr> =
            ["198.51.100.7".parse().unwrap(), "198.51.100.8".parse().unwrap()].into();
        assert_eq!((l.addresses, l.ttl), (want, 60));
        // A loop ends the chain; an error answer teaches nothing.
        let mut looped = Message::new();
        looped.set_message_type(MessageType::Response);
        looped.add_answer(cname("a.example.", "b.example.", 5));
        looped.add_answer(cname("b.example.", "a.example.", 5));
        assert_eq!(learning(&looped.to_vec().unwrap(), &name("a.example")), None);
        m.set_response_code(ResponseCode::NXDomain);
        assert_eq!(learning(&m.to_vec().unwrap(), &name("www.songlaa.com")), None);
    }
}
