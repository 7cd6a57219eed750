//! Stage 1, identities: one per distinct (namespace labels, pod labels, named container
//! ports). Named ports are part of the key so an egress rule on a named port resolves
//! exactly per peer: pods that share labels but number a port differently get different
//! identities.
//!
//! A local endpoint whose pod the sources have not delivered yet gets the reserved `INIT`
//! identity, which no selector matches: the compiler holds it closed (host only) until its
//! labels are known, so label-selected isolation never arrives late.
//!
//! Labels that change with every rollout or name a single pod ([`HIGH_CHURN_LABELS`], or
//! the model's own list) are left out of the key unless some policy's pod selector names
//! them, so identities do not multiply with rollouts against fixed map sizes. Semantics are
//! exact either way: a selector only ever looks at the keys it names, and those are kept.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use netpol_common::identity;
use serde::{Deserialize, Serialize};

use super::{alloc::Allocator, LocalEndpoint};
use crate::{
    entries::Protocol,
    model::{named_ports, pod_is_terminal, pod_labels, Model},
    policy::{NamedPorts, Peer, Selector},
};

/// Pod labels left out of identities by default (as Cilium's default label filter does):
/// set per ReplicaSet or revision, or naming one pod.
pub const HIGH_CHURN_LABELS: [&str; 7] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

fn selector_keys(s: &Selector) -> impl Iterator<Item = &String> {
    s.labels.keys().chain(s.exprs.iter().map(|r| &r.key))
}

/// The pod-label keys some policy's pod selectors name (its own, and its peers').
fn selected_keys(model: &Model) -> BTreeSet<&String> {
    let mut keys = BTreeSet::new();
    for p in model.policy_parts() {
        keys.extend(selector_keys(&p.pod_selector));
        let rules = p.ingress.iter().chain(p.egress.iter()).flatten();
        for peer in rules.flat_map(|r| r.peers.iter().flatten()) {
            if let Peer::Pods { pods, .. } = peer {
                keys.extend(selector_keys(pods));
            }
        }
    }
    keys
}

/// A pod's labels as its identity keeps them.
fn identity_labels(
    mut labels: BTreeMap<String, String>,
    excluded: &dyn Fn(&str) -> bool,
    selected: &BTreeSet<&String>,
) -> BTreeMap<String, String> {
    labels.retain(|k, _| !excluded(k) || selected.contains(k));
    labels
}

/// What a label identity stands for (and the key it is numbered by).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityInfo {
    pub namespace: String,
    pub ns_labels: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
    #[serde(with = "ports_as_list")]
    pub named_ports: NamedPorts,
}

/// Named ports as a list (JSON object keys must be strings).
mod ports_as_list {
    use super::*;

    pub fn serialize<S: serde::Serializer>(p: &NamedPorts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(p.iter().map(|((name, proto), port)| (name, proto, port)))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NamedPorts, D::Error> {
        let list: Vec<(String, Protocol, u16)> = Vec::deserialize(d)?;
        Ok(list.into_iter().map(|(name, proto, port)| ((name, proto), port)).collect())
    }
}

/// The identities of one compile.
#[derive(Debug, Default)]
pub(super) struct Identities {
    pub info: BTreeMap<u32, IdentityInfo>,
    /// Address → identity of every running pod and every local endpoint.
    pub by_ip: BTreeMap<Ipv4Addr, u32>,
    /// ifindex → identity of each local endpoint (`INIT` while its pod is unknown).
    pub of_endpoint: BTreeMap<u32, u32>,
}

pub(super) fn identities(
    model: &Model,
    endpoints: &[LocalEndpoint],
    alloc: &mut Allocator<IdentityInfo>,
) -> Identities {
    let mut ids = Identities::default();
    let mut of_pod = BTreeMap::new();
    let selected = selected_keys(model);
    let excluded = |k: &str| match &model.identity_exclusions {
        Some(own) => own.contains(k),
        None => HIGH_CHURN_LABELS.contains(&k),
    };
    for ((ns, name), pod) in model.pods.iter().filter(|(_, p)| !pod_is_terminal(p)) {
        let info = IdentityInfo {
            namespace: ns.clone(),
            ns_labels: model.namespace_labels(ns),
            pod_labels: identity_labels(pod_labels(pod), &excluded, &selected),
            named_ports: named_ports(pod),
        };
        let id = alloc.id(info.clone());
        ids.info.entry(id).or_insert(info);
        of_pod.insert((ns.clone(), name.clone()), id);
    }
    for ((ns, name), _, ip) in model.policy_pods() {
        ids.by_ip.insert(ip, of_pod[&(ns.clone(), name.clone())]);
    }
    for ep in endpoints {
        let id = of_pod.get(&(ep.namespace.clone(), ep.pod.clone())).copied().unwrap_or(identity::INIT);
        ids.by_ip.insert(ep.ip, id);
        ids.of_endpoint.insert(ep.ifindex, id);
    }
    ids
}
