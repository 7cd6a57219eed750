//! NetworkPolicy v1 and CiliumNetworkPolicy semantics, written plainly over the API objects
//! as users write them: the tests' oracle.
//!
//! It deliberately shares no code with the policy parsers, the compiler or the datapath (it
//! even matches label selectors itself), so that it can disagree with them.

mod cilium;

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use k8s_openapi::{
    api::{
        core::v1::Pod,
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::{
    model::{pod_labels, pod_node, Key, Model, PolicyObject},
    names::{Name, NameMatch},
};

/// A flow to judge. `protocol` is "TCP", "UDP", "SCTP" or anything else (e.g. "ICMP",
/// which no port rule can match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: String,
    pub port: u16,
    /// The name asked, when the flow is a DNS query.
    pub dns_name: Option<Name>,
}

/// Is the flow allowed? Egress of the source (if it is a pod) AND ingress of the
/// destination (if it is a pod); a pod's own node may always reach it.
pub fn allowed(m: &Model, f: &Flow) -> bool {
    let src = pod_at(m, f.src);
    let dst = pod_at(m, f.dst);
    let egress_ok = match src {
        Some((k, p)) => side_allows(m, k, p, "Egress", f.dst, dst.map(|d| d.1), f),
        None => true,
    };
    let ingress_ok = match dst {
        Some((k, p)) => {
            let from_own_node = pod_node(p).is_some_and(|n| m.node_addresses(n).contains(&f.src));
            from_own_node || side_allows(m, k, p, "Ingress", f.src, src.map(|s| s.1), f)
        }
        None => true,
    };
    egress_ok && ingress_ok
}

/// The running (not finished) pod with this address (a Succeeded or Failed pod no longer
/// holds its address; an address not yet posted is the model's to vouch for).
fn pod_at(m: &Model, ip: Ipv4Addr) -> Option<(&Key, &Pod)> {
    m.pod_by_ip(ip)
}

fn policy_types(np: &NetworkPolicy) -> Vec<String> {
    let spec = np.spec.as_ref();
    match spec.and_then(|s| s.policy_types.clone()) {
        Some(t) if !t.is_empty() => t,
        _ => {
            let mut t = vec!["Ingress".to_string()];
            if spec.and_then(|s| s.egress.as_ref()).is_some_and(|e| !e.is_empty()) {
                t.push("Egress".into());
            }
            t
        }
    }
}

fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for r in sel.match_expressions.iter().flatten() {
        let values = r.values.clone().unwrap_or_default();
        let have = labels.get(&r.key);
        let ok = match r.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => !have.is_some_and(|v| values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A rule's peers (from/to) and ports.
type RuleParts<'a> = (Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>);

/// What a side's verdict looks at: the pod whose side it is, the peer, the flow.
struct Side<'a> {
    m: &'a Model,
    key: &'a Key,
    pod: &'a Pod,
    /// "Ingress" or "Egress".
    side: &'a str,
    peer_ip: Ipv4Addr,
    peer_pod: Option<&'a Pod>,
    f: &'a Flow,
}

impl Side<'_> {
    /// The pod whose named ports apply: the selected pod itself for ingress, the peer for
    /// egress.
    fn port_owner(&self) -> Option<&Pod> {
        if self.side == "Ingress" {
            Some(self.pod)
        } else {
            self.peer_pod
        }
    }
}

/// Whether the policies of `pod`'s namespace allow this flow on `pod`'s `side`: not
/// isolated by any, or allowed by one rule of any.
fn side_allows(
    m: &Model,
    key: &Key,
    pod: &Pod,
    side: &str,
    peer_ip: Ipv4Addr,
    peer_pod: Option<&Pod>,
    f: &Flow,
) -> bool {
    let s = Side { m, key, pod, side, peer_ip, peer_pod, f };
    let labels = pod_labels(pod);
    let (mut isolated, mut plain) = (false, false);
    let mut dns: Option<Vec<NameMatch>> = None;
    for stored in m.policies.values() {
        match &stored.object {
            PolicyObject::NetworkPolicy(np)
                if np.metadata.namespace.as_deref().unwrap_or("default") == key.0 =>
            {
                let sel = np.spec.as_ref().and_then(|s| s.pod_selector.clone()).unwrap_or_default();
                if selector_matches(&sel, &labels) && policy_types(np).iter().any(|t| t == side) {
                    isolated = true;
                    plain |= np_allows(&s, np);
                }
            }
            PolicyObject::NetworkPolicy(_) => {}
            PolicyObject::Cilium(cnp) => {
                for items in cilium::isolating(cnp, &key.0, &labels, side) {
                    isolated = true;
                    for v in items.iter().map(|item| cilium::judge(&s, cnp, item)) {
                        plain |= v.plain;
                        if let Some(names) = v.dns {
                            dns.get_or_insert_with(Vec::new).extend(names);
                        }
                    }
                }
            }
        }
    }
    match (isolated, dns) {
        (false, _) => true,
        (true, None) => plain,
        // DNS a DNS rule covers: only as a query for a name allowed.
        (true, Some(names)) => {
            f.dns_name.as_ref().is_some_and(|n| plain || names.iter().any(|m| m.matches(n)))
        }
    }
}

/// Whether one rule of a NetworkPolicy that isolates the side allows the flow.
fn np_allows(s: &Side, np: &NetworkPolicy) -> bool {
    let spec = np.spec.as_ref().unwrap();
    let rules: Vec<RuleParts> = if s.side == "Ingress" {
        spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())).collect()
    } else {
        spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect()
    };
    rules.iter().any(|(peers, ports)| {
        let peer_ok = match peers {
            None => true,
            Some(ps) if ps.is_empty() => true,
            Some(ps) => ps.iter().any(|p| peer_matches(s.m, &s.key.0, p, s.peer_ip, s.peer_pod)),
        };
        let port_ok = match ports {
            None => true,
            Some(ps) if ps.is_empty() => true,
            Some(ps) => ps.iter().any(|p| port_matches(p, s.f, s.port_owner())),
        };
        peer_ok && port_ok
    })
}

fn peer_matches(m: &Model, policy_ns: &str, p: &NetworkPolicyPeer, ip: Ipv4Addr, pod: Option<&Pod>) -> bool {
    if let Some(b) = &p.ip_block {
        let Ok(cidr) = b.cidr.parse::<Ipv4Net>() else { return false };
        let excepted = b.except.iter().flatten().any(|e| e.parse::<Ipv4Net>().is_ok_and(|e| e.contains(&ip)));
        return cidr.contains(&ip) && !excepted;
    }
    // Selectors only ever match pods.
    let Some(pod) = pod else { return false };
    let pod_ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let ns_ok = match &p.namespace_selector {
        None => pod_ns == policy_ns,
        Some(sel) => selector_matches(sel, &m.namespace_labels(&pod_ns)),
    };
    let pod_ok = match &p.pod_selector {
        None => true,
        Some(sel) => selector_matches(sel, &pod_labels(pod)),
    };
    ns_ok && pod_ok
}

fn port_matches(p: &NetworkPolicyPort, f: &Flow, owner: Option<&Pod>) -> bool {
    let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
    if proto != f.protocol {
        return false;
    }
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let last = p.end_port.unwrap_or(*n);
            (*n..=last).contains(&(f.port as i32))
        }
        Some(IntOrString::String(name)) => owner.is_some_and(|pod| has_named_port(pod, name, f)),
    }
}

/// Whether a container of `pod` names port `f.port` of `f.protocol` `name`.
fn has_named_port(pod: &Pod, name: &str, f: &Flow) -> bool {
    let mut ports = pod.spec.iter().flat_map(|s| s.containers.iter()).flat_map(|c| c.ports.iter().flatten());
    ports.any(|cp| {
        cp.name.as_deref() == Some(name)
            && cp.protocol.clone().unwrap_or_else(|| "TCP".into()) == f.protocol
            && cp.container_port == f.port as i32
    })
}
