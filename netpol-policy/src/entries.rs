//! Typed datapath entries, and their translation to the raw keys of netpol-common.

use std::{fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;
use netpol_common::{
    PolicyKey, RangeKey, DIR_EGRESS, DIR_INGRESS, EP_AUDIT, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS,
    IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, PORT_ANY, PROTO_ANY, RANGE_FIXED_BITS,
};
use serde::{Deserialize, Serialize};

/// An entry that cannot be written: what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid entry: {0}")]
pub struct EntryError(pub String);

/// Direction seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn raw(self) -> u8 {
        match self {
            Direction::Ingress => DIR_INGRESS,
            Direction::Egress => DIR_EGRESS,
        }
    }

    pub fn from_raw(d: u8) -> Self {
        if d == DIR_EGRESS {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }

    pub fn isolation_flag(self) -> u32 {
        match self {
            Direction::Ingress => EP_ISOLATED_INGRESS,
            Direction::Egress => EP_ISOLATED_EGRESS,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The protocols a NetworkPolicy port can name, plus "any" for rules without ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn raw(self) -> u8 {
        match self {
            Protocol::Any => PROTO_ANY,
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
        }
    }
}

/// Name of an IP protocol number, for events and listings.
pub fn proto_name(p: u8) -> String {
    match p {
        PROTO_ANY => "any".into(),
        1 => "icmp".into(),
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_SCTP => "sctp".into(),
        n => format!("proto-{n}"),
    }
}

/// An endpoint: a pod's host-side interface and what the programs need to know about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    /// Host-side interface name.
    pub interface: String,
    pub id: u32,
    pub ip: Ipv4Addr,
    pub identity: u32,
    #[serde(default)]
    pub isolated_ingress: bool,
    #[serde(default)]
    pub isolated_egress: bool,
    /// Policy audit mode (`EP_AUDIT`).
    #[serde(default)]
    pub audit: bool,
}

impl EndpointSpec {
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.isolated_ingress {
            f |= EP_ISOLATED_INGRESS;
        }
        if self.isolated_egress {
            f |= EP_ISOLATED_EGRESS;
        }
        if self.audit {
            f |= EP_AUDIT;
        }
        f
    }
}

/// An ipcache entry: a prefix and the identities of the addresses it covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpcacheSpec {
    pub cidr: Ipv4Net,
    pub identity: u32,
    /// The identity of the longest CIDR (ipBlock) prefix covering this one; defaults to
    /// `identity` (right for a CIDR entry itself).
    #[serde(default)]
    pub cidr_identity: Option<u32>,
}

/// An allow entry: the endpoint accepts traffic in `direction` from/to `peer` on
/// `protocol` and ports `port..=end_port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyEntry {
    pub endpoint: u32,
    pub direction: Direction,
    /// Peer identity; 0 = any peer.
    #[serde(default)]
    pub peer: u32,
    #[serde(default)]
    pub protocol: Protocol,
    /// None = every port of `protocol`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub end_port: Option<u16>,
}

/// One raw key of the policy maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyMapKey {
    Exact(PolicyKey),
    /// A port block of a range: key and LPM prefix length.
    Range(RangeKey, u32),
}

impl PolicyEntry {
    /// The raw keys that implement the entry: one exact key, or the port/prefix blocks that
    /// exactly cover `port..=end_port`.
    pub fn map_keys(&self) -> Result<Vec<PolicyMapKey>, EntryError> {
        let dir = self.direction.raw();
        let proto = self.protocol.raw();
        let exact =
            |port| PolicyMapKey::Exact(PolicyKey { ep_id: self.endpoint, peer: self.peer, port, proto, dir });
        match (self.protocol, self.port, self.end_port) {
            (Protocol::Any, None, None) => Ok(vec![exact(PORT_ANY)]),
            (Protocol::Any, _, _) => Err(self.invalid("a port needs a protocol")),
            (_, None, Some(_)) => Err(self.invalid("endPort needs port")),
            (_, None, None) => Ok(vec![exact(PORT_ANY)]),
            (_, Some(0), _) => Err(self.invalid("port must be 1-65535")),
            (_, Some(p), None) => Ok(vec![exact(p)]),
            (_, Some(p), Some(e)) if e < p => Err(self.invalid("endPort is less than port")),
            (_, Some(p), Some(e)) if e == p => Ok(vec![exact(p)]),
            (_, Some(p), Some(e)) => Ok(port_blocks(p, e)
                .into_iter()
                .map(|(start, bits)| {
                    let k = RangeKey {
                        ep_id: self.endpoint,
                        peer: self.peer,
                        dir,
                        proto,
                        port_be: start.to_be(),
                    };
                    PolicyMapKey::Range(k, RANGE_FIXED_BITS + bits)
                })
                .collect()),
        }
    }

    fn invalid(&self, why: &str) -> EntryError {
        EntryError(format!("{why}: {self:?}"))
    }
}

/// Splits `first..=last` into aligned blocks `(start, significant bits)`, the fewest that
/// cover it exactly (at most 30 for 16-bit ports).
pub fn port_blocks(first: u16, last: u16) -> Vec<(u16, u32)> {
    let (mut s, e) = (first as u32, last as u32);
    let mut out = Vec::new();
    while s <= e {
        // The largest power-of-two block aligned at s that stays within e.
        let mut size = if s == 0 { 1 << 16 } else { s & s.wrapping_neg() };
        while s + size - 1 > e {
            size >>= 1;
        }
        out.push((s as u16, 16 - size.trailing_zeros()));
        s += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[(u16, u32)]) -> Vec<u32> {
        let mut v: Vec<u32> = blocks
            .iter()
            .flat_map(|&(s, bits)| {
                let size = 1u32 << (16 - bits);
                (s as u32)..(s as u32 + size)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn port_blocks_cover_ranges_exactly() {
        for (a, b) in [(1, 1), (80, 81), (1000, 2000), (1, 65535), (32000, 32768), (65535, 65535), (0, 65535)]
        {
            let blocks = port_blocks(a, b);
            assert_eq!(covered(&blocks), (a as u32..=b as u32).collect::<Vec<_>>(), "{a}-{b}");
            assert!(blocks.len() <= 32, "{a}-{b}: {} blocks", blocks.len());
        }
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(8000, 8003), vec![(8000, 14)]);
    }

    #[test]
    fn entries_validate_ports() {
        let e = |protocol, port, end_port| PolicyEntry {
            endpoint: 1,
            direction: Direction::Ingress,
            peer: 0,
            protocol,
            port,
            end_port,
        };
        assert!(e(Protocol::Any, Some(80), None).map_keys().is_err());
        assert!(e(Protocol::Tcp, Some(0), None).map_keys().is_err());
        assert!(e(Protocol::Tcp, Some(90), Some(80)).map_keys().is_err());
        assert!(e(Protocol::Tcp, None, Some(80)).map_keys().is_err());
        assert_eq!(e(Protocol::Tcp, Some(80), Some(80)).map_keys().unwrap().len(), 1);
        assert_eq!(e(Protocol::Udp, Some(1000), Some(1004)).map_keys().unwrap().len(), 2);
        match e(Protocol::Any, None, None).map_keys().unwrap()[0] {
            PolicyMapKey::Exact(k) => assert_eq!((k.proto, k.port), (PROTO_ANY, PORT_ANY)),
            other => panic!("{other:?}"),
        }
    }
}
