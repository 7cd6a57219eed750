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
//!   names, matched with [`crate::names`], the one matcher for every part); `rules.dns`
//!   allow DNS asking for matching names, which a flow of addresses and ports does not
//!   carry, so here they allow nothing.

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

/// Whether one item of an isolating rule allows the flow.
pub(super) fn allows(s: &Side, cnp: &CiliumNetworkPolicy, item: &Value) -> bool {
    let list = |name: &str| item.get(name).and_then(Value::as_array).cloned().unwrap_or_default();
    let (endpoints, names) = if s.side == "Ingress" {
        (list("fromEndpoints"), Vec::new())
    } else {
        (list("toEndpoints"), list("toFQDNs"))
    };
    let to_ports = list("toPorts");
    if endpoints.is_empty() && names.is_empty() && to_ports.is_empty() {
        return false;
    }
    let policy_ns = cnp.metadata.namespace.as_deref().unwrap_or("default");
    let peer_ok = (endpoints.is_empty() && names.is_empty())
        || endpoints.iter().any(|sel| peer_selected(s, policy_ns, sel))
        || names.iter().any(|sel| name_selected(s, sel));
    let ports_ok = to_ports.is_empty() || to_ports.iter().any(|pr| port_rule_allows(s, pr));
    peer_ok && ports_ok
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
    let text = |k: &str| sel.get(k).and_then(Value::as_str);
    let m = match (text("matchName"), text("matchPattern")) {
        (Some(n), None) => NameMatch::name(n),
        (None, Some(p)) => NameMatch::pattern(p),
        _ => return false,
    };
    let Ok(m) = m else { return false };
    s.m.learned.iter().any(|(name, ips)| ips.contains(&s.peer_ip) && m.matches(name))
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

/// One `toPorts` entry: DNS rules allow no plain flow; no ports, every port.
fn port_rule_allows(s: &Side, pr: &Value) -> bool {
    if pr.pointer("/rules/dns").is_some() {
        return false;
    }
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
