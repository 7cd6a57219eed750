//! `netpol explain NS/POD`: which policies isolate a pod in each direction, and what each
//! of their rules that applies to it allows — peers, ports, DNS names — in words, with the
//! pods a selector picks now.
//!
//! Invariants: isolation and the applying rules are those of the compile the datapath was
//! given (the same labels and selection); the pods named "now" are those the node's
//! ipcache maps to the selected identities.

use std::collections::BTreeSet;

use netpol_api::flows::{AllowedBy, Explained, Explanation};
use netpol_policy::{
    compiler::{IdentityInfo, RuleKey},
    entries::{Direction, Protocol},
    policy::{Op, Peer, PolicyId, PortRef, PortSpec, Rule, Selector},
};

use crate::{flows::Directory, trace::Held};

pub fn explain(held: &Held, who: &str) -> Result<Explanation, String> {
    let ip = crate::trace::address(held.model, who)?;
    let dir = held.directory;
    let pod = dir.peer(ip, None).to_string();
    let ep = held.endpoints.iter().find(|e| e.ip == ip).ok_or_else(|| {
        format!("{pod} is not on this node: ask the agent of its node (netpol explain --socket)")
    })?;
    let identity = held.state.endpoints.get(&ep.ifindex).map(|e| e.identity);
    let own = identity.and_then(|id| held.compiled.identities.get(&id));
    let directions = [Direction::Ingress, Direction::Egress]
        .into_iter()
        .map(|d| explained(held, dir, ep.ep_id, own, d))
        .collect();
    Ok(Explanation { pod, ip, audit: held.state.audited(ep.ifindex), directions })
}

fn explained(
    held: &Held,
    dir: &Directory,
    ep_id: u32,
    own: Option<&IdentityInfo>,
    d: Direction,
) -> Explained {
    let isolating = held.compiled.isolating.get(&(ep_id, d)).cloned().unwrap_or_default();
    let mut out = Explained {
        direction: d.to_string(),
        isolated_by: isolating.iter().map(PolicyId::to_string).collect(),
        over_budget: isolating
            .iter()
            .filter(|p| held.compiled.over_budget.contains_key(*p))
            .map(PolicyId::to_string)
            .collect(),
        allows: Vec::new(),
    };
    let Some(own) = own else {
        // Held closed: isolated both ways by the agent itself.
        out.isolated_by = vec!["netpol (the pod is not known yet)".into()];
        return out;
    };
    for id in isolating.iter().filter(|p| !held.compiled.over_budget.contains_key(*p)) {
        let Some(stored) = held.model.policies.get(id) else { continue };
        for (part, policy) in stored.parts.iter().enumerate() {
            if !policy.pod_selector.matches(&own.pod_labels) {
                continue;
            }
            for (index, rule) in policy.rules(d).into_iter().flatten().enumerate() {
                let key =
                    RuleKey { policy: id.clone(), part: part as u32, direction: d, index: index as u32 };
                out.allows.push(allowed_by(held, dir, &policy.namespace, &key, rule));
            }
        }
    }
    out
}

fn allowed_by(held: &Held, dir: &Directory, ns: &str, key: &RuleKey, rule: &Rule) -> AllowedBy {
    let peers = match &rule.peers {
        None => vec!["anywhere".to_string()],
        Some(list) => list.iter().map(|p| peer_words(ns, p)).collect(),
    };
    let mut now = BTreeSet::new();
    for p in rule.peers.iter().flatten() {
        match p {
            Peer::Pods { namespaces, pods } => {
                now.extend(selected_pods(held, dir, ns, namespaces.as_ref(), pods))
            }
            Peer::Names(names) => {
                now.extend(held.model.learned_addresses(names).iter().map(|ip| ip.to_string()))
            }
            _ => {}
        }
    }
    let ports = match &rule.ports {
        None => vec!["every port".to_string()],
        Some(list) => list.iter().map(port_words).collect(),
    };
    let dns_names = rule.dns.iter().flatten().map(|m| m.to_string()).collect();
    AllowedBy { rule: key.to_string(), peers, now: now.into_iter().collect(), ports, dns_names }
}

/// The pods (by the node's ipcache) whose identity the peer selects, as the compiler does.
fn selected_pods(
    held: &Held,
    dir: &Directory,
    ns: &str,
    namespaces: Option<&Selector>,
    pods: &Selector,
) -> Vec<String> {
    let ids: BTreeSet<u32> = held
        .compiled
        .identities
        .iter()
        .filter(|(_, info)| {
            let ns_ok = namespaces.map_or(info.namespace == ns, |sel| sel.matches(&info.ns_labels));
            ns_ok && pods.matches(&info.pod_labels)
        })
        .map(|(id, _)| *id)
        .collect();
    let hosts =
        held.state.ipcache.iter().filter(|(net, e)| net.prefix_len() == 32 && ids.contains(&e.identity));
    hosts.filter_map(|(net, _)| dir.peer(net.addr(), None).pod).collect()
}

fn peer_words(ns: &str, p: &Peer) -> String {
    match p {
        Peer::Pods { namespaces: None, pods } => format!("{} in {ns}", pods_words(pods)),
        Peer::Pods { namespaces: Some(n), pods } if n == &Selector::everything() => {
            format!("{} in every namespace", pods_words(pods))
        }
        Peer::Pods { namespaces: Some(n), pods } => {
            format!("{} in namespaces matching {}", pods_words(pods), selector_words(n))
        }
        Peer::Block { cidr, except } if except.is_empty() => cidr.to_string(),
        Peer::Block { cidr, except } => {
            let except: Vec<String> = except.iter().map(ToString::to_string).collect();
            format!("{cidr} except {}", except.join(", "))
        }
        Peer::NoIpv4 => "IPv6 addresses only (no IPv4 peer)".into(),
        Peer::Names(names) => {
            let names: Vec<String> = names.iter().map(ToString::to_string).collect();
            format!("the addresses DNS answers give {}", names.join(", "))
        }
    }
}

fn pods_words(s: &Selector) -> String {
    if s == &Selector::everything() {
        "every pod".into()
    } else {
        format!("pods matching {}", selector_words(s))
    }
}

/// `app=frontend,tier in (a,b),!legacy` — kubectl's selector syntax.
fn selector_words(s: &Selector) -> String {
    let mut parts: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for r in &s.exprs {
        let values = r.values.iter().cloned().collect::<Vec<_>>().join(",");
        parts.push(match r.op {
            Op::In => format!("{} in ({values})", r.key),
            Op::NotIn => format!("{} notin ({values})", r.key),
            Op::Exists => r.key.clone(),
            Op::DoesNotExist => format!("!{}", r.key),
        });
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(",")
    }
}

fn port_words(p: &PortSpec) -> String {
    let proto = match p.protocol {
        Protocol::Any => "any protocol",
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    };
    match &p.port {
        None => format!("every {proto} port"),
        Some(PortRef::Range(a, b)) if a == b => format!("{a}/{proto}"),
        Some(PortRef::Range(a, b)) => format!("{a}-{b}/{proto}"),
        Some(PortRef::Named(n)) => format!("{n}/{proto} (named)"),
    }
}
