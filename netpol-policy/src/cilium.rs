//! CiliumNetworkPolicy (`cilium.io/v2`): the subset netpol enforces, validated and lowered
//! to the same normalized [`Policy`] form as NetworkPolicies (one per rule: `spec` and each
//! of `specs`).
//!
//! The subset: `endpointSelector`; ingress `fromEndpoints` with `toPorts`; egress
//! `toEndpoints`, `toFQDNs` (`matchName`, `matchPattern`) and `toPorts` (ports with `port` as
//! a string or a number, `protocol` TCP, UDP or ANY, `endPort`) with `rules.dns`. Anything
//! else — `toCIDR`, `toEntities`, `rules.http`, `ingressDeny` ... — is rejected naming the
//! field, as an invalid NetworkPolicy is.
//!
//! Semantics, as Cilium has them:
//! - selector keys may carry the `k8s:` or `any:` source prefix; `io.kubernetes.pod.namespace`
//!   is the namespace (by name), `io.cilium.k8s.namespace.labels.KEY` a namespace label; a
//!   peer selector that does not name `io.kubernetes.pod.namespace` matches pods of the
//!   policy's own namespace only, as Cilium adds it (so `{}` is every pod there);
//! - a non-empty `ingress` (`egress`) isolates the selected pods in that direction, and its
//!   rules allow a union with every other policy's;
//! - a rule with neither peers nor ports (`{}`) allows nothing (Cilium's way to write
//!   default deny); with ports only, it allows those ports from (to) everyone;
//! - each `toPorts` entry is a rule of its own, with its DNS rules: DNS on those ports must
//!   ask for a name they match. DNS rules need single ports given by number (the DNS proxy
//!   takes everything on them).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    entries::Protocol,
    model::NS_NAME_LABEL,
    names::NameMatch,
    policy::{Peer, Policy, PolicyError, PolicyId, PolicyKind, PortRef, PortSpec, Rule, Selector},
};

pub use netpol_api::cilium::CiliumNetworkPolicy;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleSpec {
    endpoint_selector: LabelSelector,
    #[serde(default)]
    ingress: Vec<IngressRule>,
    #[serde(default)]
    egress: Vec<EgressRule>,
    #[serde(default, rename = "description")]
    _description: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IngressRule {
    #[serde(default)]
    from_endpoints: Vec<LabelSelector>,
    #[serde(default)]
    to_ports: Vec<PortRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EgressRule {
    #[serde(default)]
    to_endpoints: Vec<LabelSelector>,
    #[serde(default, rename = "toFQDNs")]
    to_fqdns: Vec<NameSelector>,
    #[serde(default)]
    to_ports: Vec<PortRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NameSelector {
    match_name: Option<String>,
    match_pattern: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortRule {
    #[serde(default)]
    ports: Vec<PortProtocol>,
    rules: Option<L7Rules>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortProtocol {
    port: Option<StringOrNumber>,
    protocol: Option<String>,
    end_port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    Number(i64),
    String(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct L7Rules {
    #[serde(default)]
    dns: Vec<NameSelector>,
}

type FieldError = (String, String);

/// The label key of a pod's namespace in Cilium's selectors, and the prefix of its
/// namespace's labels.
const NS_KEY: &str = "io.kubernetes.pod.namespace";
const NS_LABELS: &str = "io.cilium.k8s.namespace.labels.";

/// The policy's rules as normalized policies (named as the object), or the first field
/// outside the subset or invalid.
pub fn parse(cnp: &CiliumNetworkPolicy) -> Result<Vec<Policy>, PolicyError> {
    let namespace = cnp.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = cnp.metadata.name.clone().unwrap_or_default();
    let id = PolicyId::new(PolicyKind::CiliumNetworkPolicy, &namespace, &name);
    let err = |(field, msg): FieldError| PolicyError { policy: id.clone(), field, msg };
    if name.is_empty() {
        return Err(err(("metadata.name".into(), "is required".into())));
    }
    let rules: Vec<(String, &Value)> = match (&cnp.spec, &cnp.specs) {
        (None, None) => return Err(err(("spec".into(), "spec or specs is required".into()))),
        (spec, specs) => spec
            .iter()
            .map(|s| ("spec".to_string(), s))
            .chain(specs.iter().flatten().enumerate().map(|(i, s)| (format!("specs[{i}]"), s)))
            .collect(),
    };
    rules
        .into_iter()
        .map(|(at, v)| {
            let spec: RuleSpec = serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { at.clone() } else { format!("{at}.{path}") };
                err((field, e.into_inner().to_string()))
            })?;
            lower(&spec, &at, &namespace, &name).map_err(err)
        })
        .collect()
}

fn lower(spec: &RuleSpec, at: &str, namespace: &str, name: &str) -> Result<Policy, FieldError> {
    let (subject_ns, pod_selector) =
        selector(&spec.endpoint_selector, &format!("{at}.endpointSelector"), namespace)?;
    if subject_ns.is_some() {
        let msg = "selects on the namespace; a CiliumNetworkPolicy applies in its own namespace";
        return Err((format!("{at}.endpointSelector"), msg.into()));
    }
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().enumerate() {
        let at = format!("{at}.ingress[{i}]");
        let peers = endpoints(&r.from_endpoints, &format!("{at}.fromEndpoints"), namespace)?;
        let ports = port_rules(&r.to_ports, &at, false)?;
        ingress.extend(rules(peers, ports));
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().enumerate() {
        let at = format!("{at}.egress[{i}]");
        let peers = match (r.to_endpoints.is_empty(), r.to_fqdns.is_empty()) {
            (_, true) => endpoints(&r.to_endpoints, &format!("{at}.toEndpoints"), namespace)?,
            (true, false) => Some(vec![Peer::Names(name_matches(&r.to_fqdns, &format!("{at}.toFQDNs"))?)]),
            (false, false) => {
                return Err((
                    format!("{at}.toFQDNs"),
                    "cannot be combined with toEndpoints in one rule".into(),
                ))
            }
        };
        let ports = port_rules(&r.to_ports, &at, true)?;
        egress.extend(rules(peers, ports));
    }
    Ok(Policy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        pod_selector,
        ingress: (!spec.ingress.is_empty()).then_some(ingress),
        egress: (!spec.egress.is_empty()).then_some(egress),
    })
}

/// One rule per `toPorts` entry (each with its DNS rules); a rule with neither peers nor
/// ports allows nothing.
fn rules(peers: Option<Vec<Peer>>, ports: Vec<PortRuleSpec>) -> Vec<Rule> {
    match (peers, ports.is_empty()) {
        (None, true) => vec![Rule { peers: Some(Vec::new()), ports: None, dns: None }],
        (peers, true) => vec![Rule { peers, ports: None, dns: None }],
        (peers, false) => {
            ports.into_iter().map(|(ports, dns)| Rule { peers: peers.clone(), ports, dns }).collect()
        }
    }
}

/// Peers of `fromEndpoints`/`toEndpoints` (None: the list is empty, so every peer).
fn endpoints(list: &[LabelSelector], at: &str, own: &str) -> Result<Option<Vec<Peer>>, FieldError> {
    if list.is_empty() {
        return Ok(None);
    }
    let peers = list.iter().enumerate().map(|(i, s)| {
        let (namespaces, pods) = selector(s, &format!("{at}[{i}]"), own)?;
        Ok(Peer::Pods { namespaces, pods })
    });
    peers.collect::<Result<Vec<_>, _>>().map(Some)
}

/// A Cilium endpoint selector split into its namespace part (None: no namespace key, the
/// policy's own namespace) and its pod part, source prefixes removed. Namespace labels
/// without `io.kubernetes.pod.namespace` still mean the policy's own namespace (`own`), as
/// Cilium adds it to every selector that does not name the namespace.
fn selector(s: &LabelSelector, at: &str, own: &str) -> Result<(Option<Selector>, Selector), FieldError> {
    let (mut ns, mut pod) = (LabelSelector::default(), LabelSelector::default());
    let mut keys = s.match_labels.iter().flatten().map(|(k, _)| k);
    let names_namespace = keys.any(|k| without_source(k) == NS_KEY)
        || s.match_expressions.iter().flatten().any(|r| without_source(&r.key) == NS_KEY);
    for (k, v) in s.match_labels.iter().flatten() {
        let (target, key) = split_key(k).map_err(|m| (format!("{at}.matchLabels.{k}"), m))?;
        let side = if target { &mut ns } else { &mut pod };
        side.match_labels.get_or_insert_with(BTreeMap::new).insert(key, v.clone());
    }
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let (target, key) = split_key(&r.key).map_err(|m| (format!("{at}.matchExpressions[{i}].key"), m))?;
        let side = if target { &mut ns } else { &mut pod };
        side.match_expressions
            .get_or_insert_with(Vec::new)
            .push(LabelSelectorRequirement { key, ..r.clone() });
    }
    if ns != LabelSelector::default() && !names_namespace {
        let own = LabelSelectorRequirement {
            key: NS_NAME_LABEL.into(),
            operator: "In".into(),
            values: Some(vec![own.to_string()]),
        };
        ns.match_expressions.get_or_insert_with(Vec::new).push(own);
    }
    let parse = |s: &LabelSelector| Selector::parse(s).map_err(|(f, m)| (format!("{at}.{f}"), m));
    let namespaces = if ns == LabelSelector::default() { None } else { Some(parse(&ns)?) };
    Ok((namespaces, parse(&pod)?))
}

fn without_source(key: &str) -> &str {
    key.strip_prefix("k8s:").or_else(|| key.strip_prefix("any:")).unwrap_or(key)
}

/// (whether the key is a namespace's, the key as Kubernetes labels have it).
fn split_key(key: &str) -> Result<(bool, String), String> {
    let bare = without_source(key);
    if let Some((source, _)) = bare.split_once(':').filter(|(s, _)| !s.contains('/')) {
        return Err(format!("the label source {source:?} is outside the subset (k8s: or any:)"));
    }
    Ok(match bare {
        NS_KEY => (true, NS_NAME_LABEL.to_string()),
        _ => match bare.strip_prefix(NS_LABELS) {
            Some(label) => (true, label.to_string()),
            None => (false, bare.to_string()),
        },
    })
}

fn name_matches(list: &[NameSelector], at: &str) -> Result<Vec<NameMatch>, FieldError> {
    let one = |(i, s): (usize, &NameSelector)| {
        let at = format!("{at}[{i}]");
        match (&s.match_name, &s.match_pattern) {
            (Some(n), None) => NameMatch::name(n).map_err(|e| (format!("{at}.matchName"), e.0)),
            (None, Some(p)) => NameMatch::pattern(p).map_err(|e| (format!("{at}.matchPattern"), e.0)),
            _ => Err((at, "exactly one of matchName and matchPattern".into())),
        }
    };
    list.iter().enumerate().map(one).collect()
}

/// Each `toPorts` entry: its ports (None: every port) and its DNS rules.
type PortRuleSpec = (Option<Vec<PortSpec>>, Option<Vec<NameMatch>>);

fn port_rules(list: &[PortRule], at: &str, egress: bool) -> Result<Vec<PortRuleSpec>, FieldError> {
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let at = format!("{at}.toPorts[{i}]");
        let mut ports = Vec::new();
        for (j, p) in r.ports.iter().enumerate() {
            ports.extend(port(p, &format!("{at}.ports[{j}]"))?);
        }
        let dns = match &r.rules {
            None => None,
            Some(_) if !egress => {
                return Err((format!("{at}.rules"), "DNS rules apply to egress only".into()))
            }
            Some(l7) => {
                single_ports(&ports, &at)?;
                // DNS is UDP and TCP: ANY means those two here.
                ports.retain(|p| p.protocol != Protocol::Sctp);
                Some(name_matches(&l7.dns, &format!("{at}.rules.dns"))?)
            }
        };
        out.push(((!ports.is_empty()).then_some(ports), dns));
    }
    Ok(out)
}

/// DNS rules apply to ports given by number, one each: the DNS proxy takes those ports'
/// traffic whole (all of it is DNS to it), so a wildcard, a range or a name would hand it
/// traffic that is not DNS.
fn single_ports(ports: &[PortSpec], at: &str) -> Result<(), FieldError> {
    let single = |p: &PortSpec| matches!(p.port, Some(PortRef::Range(a, b)) if a == b);
    if ports.is_empty() || !ports.iter().all(single) {
        let msg = "DNS rules need ports given by number, each a single port (such as \"53\")";
        return Err((format!("{at}.ports"), msg.into()));
    }
    Ok(())
}

/// One `ports` entry. ANY with a port is that port of each protocol that has ports.
fn port(p: &PortProtocol, at: &str) -> Result<Vec<PortSpec>, FieldError> {
    let spec = port_spec(p, at)?;
    Ok(match spec.port {
        Some(_) if spec.protocol == Protocol::Any => [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .map(|protocol| PortSpec { protocol, ..spec.clone() })
            .collect(),
        _ => vec![spec],
    })
}

fn port_spec(p: &PortProtocol, at: &str) -> Result<PortSpec, FieldError> {
    let protocol = match p.protocol.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("ANY") => Protocol::Any,
        Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some(other) => return Err((format!("{at}.protocol"), format!("{other:?} is not TCP, UDP or ANY"))),
    };
    let number = match &p.port {
        None => None,
        Some(StringOrNumber::Number(n)) => Some(*n),
        Some(StringOrNumber::String(s)) => match s.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) if p.end_port.is_none() && !s.is_empty() => {
                return Ok(PortSpec { protocol, port: Some(PortRef::Named(s.clone())) })
            }
            Err(_) => return Err((format!("{at}.port"), format!("{s:?} is not a port"))),
        },
    };
    let port = match (number, p.end_port) {
        // Port 0 (or none) is every port, as Cilium has it.
        (None | Some(0), None) => None,
        (None | Some(0), Some(_)) => return Err((format!("{at}.endPort"), "endPort needs a port".into())),
        (Some(n), _) if !(1..=65535).contains(&n) => {
            return Err((format!("{at}.port"), format!("{n} is outside 1-65535")))
        }
        (Some(n), None) => Some(PortRef::Range(n as u16, n as u16)),
        (Some(n), Some(e)) if !(n..=65535).contains(&e) => {
            return Err((format!("{at}.endPort"), format!("{e} is outside {n}-65535")))
        }
        (Some(n), Some(e)) => Some(PortRef::Range(n as u16, e as u16)),
    };
    Ok(PortSpec { protocol, port })
}
