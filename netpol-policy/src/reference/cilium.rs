//! CiliumNetworkPolicy, read from its JSON as Cilium's documentation describes it.
//!
//! - A rule (`spec`, each of `specs`) applies to the pods of the policy's namespace its
//!   `endpointSelector` matches; a non-empty `ingress` (`egress`) list isolates them on that
//!   side, and each item of it may allow.
//! - Selector keys may carry a `k8s:` or `any:` source; `io.kubernetes.pod.namespace` is the
//!   pod's namespace and `io.cilium.k8s.namespace.labels.K` its namespace's label K. A peer
//!   selector that does not name `io.kubernetes.pod.namespace` matches pods of the policy's
//!   namespace only.
//! - An item with neither peers nor `toPorts` allows nothing; with no peers, its ports from
//!   (to) everyone; with no `toPorts`, every port.
//! - `protocol` absent or ANY: with a port, that port of TCP, UDP and SCTP; port 0 or absent,
//!   everything. A port that is not a number names a container port.
//! - `toFQDNs` allow the addresses DNS answers gave for matching names (the model's learned
//!   names, matched with [`crate::names`], the one matcher for every part);
//! - a flow a DNS rule (`rules.dns`) covers is DNS, whatever else allows it: it passes only
//!   as a query for a name one of the covering DNS rules matches — or any name, when a rule
//!   without DNS rules also allows the flow (allows are a union).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{has_named_port, Flow, Side};
use crate::{cilium::CiliumNetworkPolicy, model::pod_labels, names::NameMatch};

const NS: &str = "io.kubernetes.pod.namespace";
const NS_LABEL: &str = "io.cilium.k8s.namespace.labels.";

/// For each rule of `cnp` that selects a pod of namespace `ns` with `labels` and isolates
/// its `side` ("Ingress"/"Egress"): that side's items.
pub(super) fn isolating<'a>(
    cnp: &'a CiliumNetworkPolicy,
    ns: &str,
    labels: &BTreeMap<String, String>,
    side: &str,
) -> Vec<&'a Vec<Value>> {
    if cnp.metadata.namespace.as_deref().unwrap_or("default") != ns {
        return Vec::new();
    }
    let field = if side == "Ingress" { "ingress" } else { "egress" };
    let rules = cnp.spec.iter().chain(cnp.specs.iter().flatten());
    rules
        .filter(|r| r.get("endpointSelector").is_some_and(|s| matches(s, &subject_labels(ns, labels))))
        .filter_map(|r| r.get(field)?.as_array())
        .filter(|items| !items.is_empty())
        .collect()
}

/// What one item of an isolating rule says of the flow: whether it allows it as it is, and
/// the names it allows if the flow is DNS one of its DNS rules covers.
#[derive(Default)]
pub(super) struct ItemVerdict {
    pub plain: bool,
    pub dns: Option<Vec<NameMatch>>,
}

pub(super) fn judge(s: &Side, cnp: &CiliumNetworkPolicy, item: &Value) -> ItemVerdict {
    let list = |name: &str| item.get(name).and_then(Value::as_array).cloned().unwrap_or_default();
    let (endpoints, names) = if s.side == "Ingress" {
        (list("fromEndpoints"), Vec::new())
    } else {
        (list("toEndpoints"), list("toFQDNs"))
    };
    let to_ports = list("toPorts");
    if endpoints.is_empty() && names.is_empty() && to_ports.is_empty() {
        return ItemVerdict::default();
    }
    let policy_ns = cnp.metadata.namespace.as_deref().unwrap_or("default");
    let peer_ok = (endpoints.is_empty() && names.is_empty())
        || endpoints.iter().any(|sel| peer_selected(s, policy_ns, sel))
        || names.iter().any(|sel| name_selected(s, sel));
    if !peer_ok {
        return ItemVerdict::default();
    }
    if to_ports.is_empty() {
        return ItemVerdict { plain: true, dns: None };
    }
    let mut v = ItemVerdict::default();
    for pr in to_ports.iter().filter(|pr| ports_allow(s, pr)) {
        match pr.pointer("/rules/dns").and_then(Value::as_array) {
            // DNS is UDP and TCP: a DNS rule covers those two only.
            Some(_) if s.f.protocol == "SCTP" => {}
            Some(rules) => v.dns.get_or_insert_with(Vec::new).extend(rules.iter().filter_map(name_match)),
            None => v.plain = true,
        }
    }
    v
}
/// The labels a selected pod is matched with: its own and its namespace's name.
fn subject_labels(ns: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    out.insert(NS.into(), ns.into());
    out
}

/// A peer selector against the peer pod's labels, its namespace and its namespace's labels.
fn peer_selected(s: &Side, policy_ns: &str, sel: &Value) -> bool {
    let Some(peer) = s.peer_pod else { return false };
    let peer_ns = peer.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut labels = subject_labels(&peer_ns, &pod_labels(peer));
    for (k, v) in s.m.namespace_labels(&peer_ns) {
        labels.insert(format!("{NS_LABEL}{k}"), v);
    }
    let names_namespace = keys(sel).iter().any(|k| k == NS);
    (names_namespace || peer_ns == policy_ns) && matches(sel, &labels)
}

/// A `toFQDNs` entry: some name it matches was learned at the peer's address.
fn name_selected(s: &Side, sel: &Value) -> bool {
    let Some(m) = name_match(sel) else { return false };
    s.m.learned.iter().any(|(name, ips)| ips.contains(&s.peer_ip) && m.matches(name))
}

/// A `matchName` or `matchPattern`.
fn name_match(sel: &Value) -> Option<NameMatch> {
    let text = |k: &str| sel.get(k).and_then(Value::as_str);
    match (text("matchName"), text("matchPattern")) {
        (Some(n), None) => NameMatch::name(n).ok(),
        (None, Some(p)) => NameMatch::pattern(p).ok(),
        _ => None,
    }
}

/// A selector's keys, without their sources.
fn keys(sel: &Value) -> Vec<String> {
    let labels = sel.get("matchLabels").and_then(Value::as_object).into_iter().flat_map(|m| m.keys());
    let exprs = sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten();
    let exprs = exprs.filter_map(|e| e.get("key")?.as_str());
    labels.map(String::as_str).chain(exprs).map(|k| bare(k).to_string()).collect()
}

fn bare(key: &str) -> &str {
    key.strip_prefix("k8s:").or_else(|| key.strip_prefix("any:")).unwrap_or(key)
}

/// A label selector (JSON) against labels, keys without their sources.
fn matches(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    let pairs = sel.get("matchLabels").and_then(Value::as_object).into_iter().flatten();
    let labels_ok = pairs.into_iter().all(|(k, v)| labels.get(bare(k)).map(String::as_str) == v.as_str());
    let exprs = sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten();
    labels_ok
        && exprs.into_iter().all(|e| {
            let key = e.get("key").and_then(Value::as_str).map(bare).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(key).map(String::as_str);
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => have.is_some_and(|v| values.contains(&v)),
                Some("NotIn") => !have.is_some_and(|v| values.contains(&v)),
                Some("Exists") => have.is_some(),
                Some("DoesNotExist") => have.is_none(),
                _ => false,
            }
        })
}

/// Whether one `toPorts` entry's ports take the flow (no ports: every port).
fn ports_allow(s: &Side, pr: &Value) -> bool {
    let ports = pr.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
    ports.is_empty() || ports.iter().any(|p| port_allows(s, p))
}

fn port_allows(s: &Side, p: &Value) -> bool {
    let f: &Flow = s.f;
    let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("ANY").to_ascii_uppercase();
    let port = match p.get("port") {
        None => "0".to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(v) => v.as_str().unwrap_or("").to_string(),
    };
    let with_ports = ["TCP", "UDP", "SCTP"].contains(&f.protocol.as_str());
    if port == "0" {
        return protocol == "ANY" || protocol == f.protocol;
    }
    if !with_ports || !(protocol == "ANY" || protocol == f.protocol) {
        return false;
    }
    match port.parse::<u16>() {
        Ok(first) => {
            let last = p.get("endPort").and_then(Value::as_u64).unwrap_or(first as u64);
            (first as u64..=last).contains(&(f.port as u64))
        }
        Err(_) => s.port_owner().is_some_and(|pod| has_named_port(pod, &port, f)),
    }
}
