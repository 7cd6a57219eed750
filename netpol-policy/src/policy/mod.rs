//! NetworkPolicy v1, validated and normalized for the compiler.
//!
//! [`Policy::parse`] turns a `k8s-openapi` NetworkPolicy into a form where every default is
//! explicit (policyTypes, TCP, "all peers", "all ports"), or rejects it with an error that
//! names the policy and the field (`spec.ingress[0].from[1].ipBlock.except[0]`).

mod selector;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

pub use selector::{Op, Requirement, Selector};
use serde::{Deserialize, Serialize};

use crate::{
    entries::{Direction, Protocol},
    names::NameMatch,
};

/// The kinds of policy netpol enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    #[default]
    NetworkPolicy,
    CiliumNetworkPolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
        })
    }
}

/// Which policy: kind, namespace, name. Ordered by namespace first, so the policies of one
/// namespace are one range of a map keyed by it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyId {
    pub namespace: String,
    pub kind: PolicyKind,
    pub name: String,
}

impl PolicyId {
    pub fn new(kind: PolicyKind, namespace: &str, name: &str) -> PolicyId {
        PolicyId { namespace: namespace.into(), kind, name: name.into() }
    }

    /// The first id of `namespace` in [`PolicyId`] order.
    pub fn first_of(namespace: &str) -> PolicyId {
        PolicyId { namespace: namespace.into(), kind: PolicyKind::NetworkPolicy, name: String::new() }
    }
}

/// `CiliumNetworkPolicy ns/name`
impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A rejected policy: which one, which field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{policy}: {field}: {msg}")]
pub struct PolicyError {
    pub policy: PolicyId,
    pub field: String,
    pub msg: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// Some when the policy isolates for ingress (policyTypes, explicit or defaulted).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// None: every peer (the field was absent or empty).
    pub peers: Option<Vec<Peer>>,
    /// None: every port of every protocol.
    pub ports: Option<Vec<PortSpec>>,
    /// CiliumNetworkPolicy DNS rules (`toPorts[].rules.dns`): DNS on these ports must ask
    /// for a name one of them matches. None: no name filtering (NetworkPolicies never have
    /// any).
    pub dns: Option<Vec<NameMatch>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods: of the policy's namespace (`namespaces` None) or of the selected namespaces.
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    /// IPv4 block minus exceptions. (IPv6 blocks match nothing: the datapath is IPv4.)
    Block {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    NoIpv4,
    /// CiliumNetworkPolicy `toFQDNs`: the addresses DNS answers gave for matching names.
    Names(Vec<NameMatch>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: Option<PortRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    /// `port` alone (first == last) or `port`..=`endPort`.
    Range(u16, u16),
    /// A named container port.
    Named(String),
}

impl Policy {
    pub fn rules(&self, dir: Direction) -> Option<&Vec<Rule>> {
        match dir {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }

    pub fn parse(np: &NetworkPolicy) -> Result<Policy, PolicyError> {
        let namespace = np.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = np.metadata.name.clone().unwrap_or_default();
        let id = PolicyId::new(PolicyKind::NetworkPolicy, &namespace, &name);
        let err = |field: String, msg: String| PolicyError { policy: id.clone(), field, msg };
        if name.is_empty() {
            return Err(err("metadata.name".into(), "is required".into()));
        }
        let spec = np.spec.clone().unwrap_or_default();
        let pod_selector =
            selector_of(spec.pod_selector.as_ref(), "spec.podSelector").map_err(|(f, m)| err(f, m))?;
        let types: BTreeSet<String> = match &spec.policy_types {
            Some(t) if !t.is_empty() => {
                for (i, v) in t.iter().enumerate() {
                    if v != "Ingress" && v != "Egress" {
                        return Err(err(
                            format!("spec.policyTypes[{i}]"),
                            format!("{v:?} is neither Ingress nor Egress"),
                        ));
                    }
                }
                t.iter().cloned().collect()
            }
            // The API's default: Ingress always, Egress when there are egress rules.
            _ => {
                let mut t = BTreeSet::from(["Ingress".to_string()]);
                if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    t.insert("Egress".into());
                }
                t
            }
        };
        let mut ingress = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let at = format!("spec.ingress[{i}]");
            ingress
                .push(rule(r.from.as_deref(), r.ports.as_deref(), &at, "from").map_err(|(f, m)| err(f, m))?);
        }
        let mut egress = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let at = format!("spec.egress[{i}]");
            egress.push(rule(r.to.as_deref(), r.ports.as_deref(), &at, "to").map_err(|(f, m)| err(f, m))?);
        }
        Ok(Policy {
            namespace,
            name,
            pod_selector,
            ingress: types.contains("Ingress").then_some(ingress),
            egress: types.contains("Egress").then_some(egress),
        })
    }
}

type FieldError = (String, String);

fn selector_of(s: Option<&LabelSelector>, at: &str) -> Result<Selector, FieldError> {
    match s {
        None => Ok(Selector::everything()),
        Some(s) => Selector::parse(s).map_err(|(f, m)| (format!("{at}.{f}"), m)),
    }
}

fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    at: &str,
    side: &str,
) -> Result<Rule, FieldError> {
    let peers = match peers {
        None | Some([]) => None,
        Some(ps) => Some(
            ps.iter()
                .enumerate()
                .map(|(i, p)| peer(p, &format!("{at}.{side}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(ps) => Some(
            ps.iter()
                .enumerate()
                .map(|(i, p)| port(p, &format!("{at}.ports[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Rule { peers, ports, dns: None })
}

fn peer(p: &NetworkPolicyPeer, at: &str) -> Result<Peer, FieldError> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (None, None, None) => {
            Err((at.into(), "a peer needs podSelector, namespaceSelector or ipBlock".into()))
        }
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err((at.into(), "ipBlock cannot be combined with podSelector or namespaceSelector".into()))
        }
        (Some(b), None, None) => {
            let at = format!("{at}.ipBlock");
            let cidr: IpNet =
                b.cidr.parse().map_err(|_| (format!("{at}.cidr"), format!("{:?} is not a CIDR", b.cidr)))?;
            let mut except = Vec::new();
            for (i, e) in b.except.iter().flatten().enumerate() {
                let f = format!("{at}.except[{i}]");
                let x: IpNet = e.parse().map_err(|_| (f.clone(), format!("{e:?} is not a CIDR")))?;
                let inside = match (cidr, x) {
                    (IpNet::V4(c), IpNet::V4(x)) => {
                        x.prefix_len() > c.prefix_len() && c.contains(&x.network())
                    }
                    (IpNet::V6(c), IpNet::V6(x)) => {
                        x.prefix_len() > c.prefix_len() && c.contains(&x.network())
                    }
                    _ => false,
                };
                if !inside {
                    return Err((f, format!("{e} is not strictly inside cidr {}", b.cidr)));
                }
                if let IpNet::V4(x) = x {
                    except.push(x.trunc());
                }
            }
            Ok(match cidr {
                IpNet::V4(c) => Peer::Block { cidr: c.trunc(), except },
                IpNet::V6(_) => Peer::NoIpv4,
            })
        }
        (None, ns, pods) => Ok(Peer::Pods {
            namespaces: ns
                .as_ref()
                .map(|s| selector_of(Some(s), &format!("{at}.namespaceSelector")))
                .transpose()?,
            pods: selector_of(pods.as_ref(), &format!("{at}.podSelector"))?,
        }),
    }
}

/// An IANA service name, as Kubernetes requires of named ports.
fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn port(p: &NetworkPolicyPort, at: &str) -> Result<PortSpec, FieldError> {
    let protocol = match p.protocol.as_deref() {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            return Err((format!("{at}.protocol"), format!("unknown protocol {other:?} (TCP, UDP or SCTP)")))
        }
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => None,
        (None, Some(_)) => return Err((format!("{at}.endPort"), "endPort needs a numeric port".into())),
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err((
                    format!("{at}.endPort"),
                    "endPort needs a numeric port, not a named one".into(),
                ));
            }
            if !valid_port_name(name) {
                return Err((format!("{at}.port"), format!("{name:?} is not a valid port name")));
            }
            Some(PortRef::Named(name.clone()))
        }
        (Some(IntOrString::Int(n)), end) => {
            if !(1..=65535).contains(n) {
                return Err((format!("{at}.port"), format!("{n} is outside 1-65535")));
            }
            let last = match end {
                None => *n,
                Some(e) if !(1..=65535).contains(&e) => {
                    return Err((format!("{at}.endPort"), format!("{e} is outside 1-65535")));
                }
                Some(e) if e < *n => {
                    return Err((format!("{at}.endPort"), format!("{e} is less than port {n}")))
                }
                Some(e) => e,
            };
            Some(PortRef::Range(*n as u16, last as u16))
        }
    };
    Ok(PortSpec { protocol, port })
}

/// Container port name → (protocol, number) of a pod.
pub type NamedPorts = BTreeMap<(String, Protocol), u16>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})).unwrap()
    }

    fn bad(spec: serde_json::Value) -> PolicyError {
        Policy::parse(&np(spec)).unwrap_err()
    }

    #[test]
    fn policy_types_default_as_the_api_says() {
        let p = Policy::parse(&np(json!({"podSelector": {}}))).unwrap();
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = Policy::parse(&np(json!({"podSelector": {}, "egress": [{}]}))).unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        let p = Policy::parse(&np(json!({"podSelector": {}, "egress": []}))).unwrap();
        assert!(p.egress.is_none());
        let p = Policy::parse(&np(json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]})))
            .unwrap();
        assert!(p.ingress.is_none() && p.egress == Some(vec![]));
        let p = Policy::parse(&np(json!({"ingress": [{"from": [], "ports": []}]}))).unwrap();
        assert_eq!(p.ingress.unwrap()[0], Rule { peers: None, ports: None, dns: None });
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let cases = [
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
                "spec.ingress[0].from[0].ipBlock.except[0]",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}]}),
                "spec.ingress[0].from[0].ipBlock.except[0]",
            ),
            (json!({"egress": [{"ports": [{"port": 70000}]}]}), "spec.egress[0].ports[0].port"),
            (json!({"egress": [{"ports": [{"port": 0}]}]}), "spec.egress[0].ports[0].port"),
            (
                json!({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "spec.egress[0].ports[0].endPort",
            ),
            (
                json!({"egress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
                "spec.egress[0].ports[0].endPort",
            ),
            (json!({"egress": [{"ports": [{"protocol": "ICMP"}]}]}), "spec.egress[0].ports[0].protocol"),
            (json!({"egress": [{"ports": [{"port": "Not_A_Name"}]}]}), "spec.egress[0].ports[0].port"),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
                "spec.podSelector.matchExpressions[0].operator",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}),
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                json!({"ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}]}]}),
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            ),
            (json!({"ingress": [{"from": [{}]}]}), "spec.ingress[0].from[0]"),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (json!({"policyTypes": ["Sideways"]}), "spec.policyTypes[0]"),
        ];
        for (spec, field) in cases {
            let e = bad(spec.clone());
            assert_eq!(e.field, field, "{spec}: {e}");
            assert_eq!(e.policy, PolicyId::new(PolicyKind::NetworkPolicy, "ns", "p"));
            assert!(e.to_string().starts_with("NetworkPolicy ns/p: "), "{e}");
        }
    }

    #[test]
    fn ports_normalize() {
        let p = Policy::parse(&np(json!({"ingress": [{"ports": [
            {"port": 80}, {"protocol": "UDP"}, {"port": 8000, "endPort": 8080, "protocol": "SCTP"}, {"port": "http"}
        ]}]})))
        .unwrap();
        let ports = p.ingress.unwrap()[0].ports.clone().unwrap();
        assert_eq!(ports[0], PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Range(80, 80)) });
        assert_eq!(ports[1], PortSpec { protocol: Protocol::Udp, port: None });
        assert_eq!(ports[2], PortSpec { protocol: Protocol::Sctp, port: Some(PortRef::Range(8000, 8080)) });
        assert_eq!(ports[3], PortSpec { protocol: Protocol::Tcp, port: Some(PortRef::Named("http".into())) });
    }
}
