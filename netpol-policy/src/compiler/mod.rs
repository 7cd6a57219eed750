//! The compiler: model in, desired datapath state out. It never touches the kernel.
//!
//! - **Identities**: one per distinct (namespace labels, pod labels, named container ports).
//!   Named ports are part of the key so an egress rule on a named port resolves exactly per
//!   peer: pods that share labels but number a port differently get different identities.
//! - **CIDR identities**: one per prefix any ipBlock mentions (cidr and except). An ipBlock
//!   allows every prefix inside its cidr and outside all its excepts; with longest-prefix
//!   lookup that is exact.
//! - **Pod-in-block identities**: a pod address covered by a prefix gets, as its CIDR
//!   identity, one for the pair (pod identity, longest prefix), so ipBlock rules match pod
//!   addresses too (as the upstream e2e suite requires), including on named ports.
//! - **Entries**: per local endpoint and direction, the product of each rule's peers and
//!   ports, keyed by the lowest rule id that yields them.

mod alloc;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use netpol_common::{identity, Endpoint, IpcacheEntry, PolicyValue, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS};

pub use alloc::{Allocators, FIRST_POD_IN_BLOCK};

use crate::{
    entries::{Direction, PolicyEntry, Protocol},
    model::{named_ports, pod_labels, Model},
    policy::{NamedPorts, Peer, PortRef, Selector},
    state::MapState,
};

/// A pod attachment on this node (from the endpoint registry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub ifindex: u32,
    pub ep_id: u32,
    pub ip: Ipv4Addr,
    pub namespace: String,
    pub pod: String,
}

/// What a compiled identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdentityInfo {
    pub namespace: String,
    pub ns_labels: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
    pub named_ports: NamedPorts,
}

impl IdentityInfo {
    fn key(&self) -> String {
        let kv = |m: &BTreeMap<String, String>| {
            m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        };
        let ports: Vec<String> =
            self.named_ports.iter().map(|((n, p), v)| format!("{n}/{p:?}={v}")).collect();
        format!("ns[{}] pod[{}] ports[{}]", kv(&self.ns_labels), kv(&self.pod_labels), ports.join(","))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub state: MapState,
    /// rule id → "namespace/policy ingress[i]"
    pub rules: BTreeMap<u32, String>,
    pub identities: BTreeMap<u32, IdentityInfo>,
    pub cidrs: BTreeMap<u32, Ipv4Net>,
}

/// Longest-prefix lookup over the ipBlock prefixes.
struct Prefixes {
    by_len: Vec<HashMap<u32, u32>>,
}

impl Prefixes {
    fn new(ids: &BTreeMap<Ipv4Net, u32>) -> Prefixes {
        let mut by_len = vec![HashMap::new(); 33];
        for (net, id) in ids {
            by_len[net.prefix_len() as usize].insert(u32::from(net.network()), *id);
        }
        Prefixes { by_len }
    }

    fn longest(&self, ip: Ipv4Addr) -> Option<u32> {
        let ip = u32::from(ip);
        (0..=32u32).rev().find_map(|len| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            self.by_len[len as usize].get(&(ip & mask)).copied()
        })
    }
}

/// A peer an entry can name, with what named-port resolution needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PeerId {
    Any,
    /// A pod identity.
    Pod(u32),
    /// A CIDR identity (non-pod addresses).
    Cidr(u32),
    /// A pod-in-block identity and its pod identity.
    PodInBlock(u32, u32),
}

pub fn compile(model: &Model, node: &str, endpoints: &[LocalEndpoint], alloc: &mut Allocators) -> Compiled {
    let mut out = Compiled::default();

    // Identities of every pod that takes part in policy, and of every local endpoint.
    let mut by_ip: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    let mut pod_identity: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut info_of = |ns: &str, labels: BTreeMap<String, String>, ports: NamedPorts, out: &mut Compiled| {
        let info = IdentityInfo {
            namespace: ns.to_string(),
            ns_labels: model.namespace_labels(ns),
            pod_labels: labels,
            named_ports: ports,
        };
        let id = alloc.labels.id(info.key());
        out.identities.entry(id).or_insert(info);
        id
    };
    for ((ns, name), pod) in &model.pods {
        let id = info_of(ns, pod_labels(pod), named_ports(pod), &mut out);
        pod_identity.insert((ns.clone(), name.clone()), id);
    }
    for (_, pod, ip) in model.policy_pods() {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        by_ip.insert(ip, pod_identity[&(ns, name)]);
    }
    let mut ep_identity = BTreeMap::new();
    for ep in endpoints {
        let id = match pod_identity.get(&(ep.namespace.clone(), ep.pod.clone())) {
            Some(id) => *id,
            // A pod the sources have not delivered (yet): no labels of its own.
            None => info_of(&ep.namespace, BTreeMap::new(), NamedPorts::new(), &mut out),
        };
        by_ip.insert(ep.ip, id);
        ep_identity.insert(ep.ifindex, id);
    }

    // CIDR identities for every prefix an ipBlock mentions.
    let mut cidr_ids: BTreeMap<Ipv4Net, u32> = BTreeMap::new();
    for (_, p) in model.policies.values() {
        for dir in [Direction::Ingress, Direction::Egress] {
            for rule in p.rules(dir).into_iter().flatten() {
                for peer in rule.peers.iter().flatten() {
                    if let Peer::Block { cidr, except } = peer {
                        for net in std::iter::once(cidr).chain(except) {
                            cidr_ids.entry(*net).or_insert_with(|| alloc.cidrs.id(*net));
                        }
                    }
                }
            }
        }
    }
    out.cidrs = cidr_ids.iter().map(|(n, id)| (*id, *n)).collect();
    let prefixes = Prefixes::new(&cidr_ids);

    // The ipcache: prefixes, then pods (a pod's /32 wins over a /32 prefix), then nodes.
    let ipc = &mut out.state.ipcache;
    for (net, id) in &cidr_ids {
        ipc.insert(*net, IpcacheEntry { identity: *id, cidr_identity: *id });
    }
    let mut pod_in_block: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    for (ip, id) in &by_ip {
        let cidr_identity = match prefixes.longest(*ip) {
            Some(q) => *pod_in_block.entry((*id, q)).or_insert_with(|| alloc.pod_in_block.id((*id, q))),
            None => identity::WORLD,
        };
        ipc.insert(Ipv4Net::new(*ip, 32).unwrap(), IpcacheEntry { identity: *id, cidr_identity });
    }
    for (name, n) in &model.nodes {
        let id = if name == node { identity::HOST } else { identity::REMOTE_NODE };
        for ip in crate::model::node_addresses(n) {
            let cidr_identity = prefixes.longest(ip).unwrap_or(identity::WORLD);
            ipc.entry(Ipv4Net::new(ip, 32).unwrap()).or_insert(IpcacheEntry { identity: id, cidr_identity });
        }
    }

    // Policy entries for the local endpoints.
    let mut selected: HashMap<(String, Option<Selector>, Selector), Vec<u32>> = HashMap::new();
    let mut used_rules = BTreeSet::new();
    for ep in endpoints {
        let own_id = ep_identity[&ep.ifindex];
        let own = out.identities[&own_id].clone();
        let mut flags = 0;
        for ((pns, pname), (_, policy)) in model.policies.range((ep.namespace.clone(), String::new())..) {
            if *pns != ep.namespace {
                break;
            }
            if !policy.pod_selector.matches(&own.pod_labels) {
                continue;
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                let Some(rules) = policy.rules(dir) else { continue };
                flags |= if dir == Direction::Ingress { EP_ISOLATED_INGRESS } else { EP_ISOLATED_EGRESS };
                for (i, rule) in rules.iter().enumerate() {
                    let rule_name = format!("{pns}/{pname} {dir}[{i}]");
                    let rule_id = alloc.rules.id(rule_name.clone());
                    used_rules.insert(rule_name.clone());
                    out.rules.insert(rule_id, rule_name);
                    // Peers.
                    let mut peers = BTreeSet::new();
                    match &rule.peers {
                        None => {
                            peers.insert(PeerId::Any);
                        }
                        Some(list) => {
                            for peer in list {
                                match peer {
                                    Peer::Pods { namespaces, pods } => {
                                        let key = (pns.clone(), namespaces.clone(), pods.clone());
                                        let ids = selected.entry(key).or_insert_with(|| {
                                            out.identities
                                                .iter()
                                                .filter(|(_, info)| {
                                                    let ns_ok = match namespaces {
                                                        None => info.namespace == *pns,
                                                        Some(sel) => sel.matches(&info.ns_labels),
                                                    };
                                                    ns_ok && pods.matches(&info.pod_labels)
                                                })
                                                .map(|(id, _)| *id)
                                                .collect()
                                        });
                                        peers.extend(ids.iter().map(|id| PeerId::Pod(*id)));
                                    }
                                    Peer::Block { cidr, except } => {
                                        let inside = |n: &Ipv4Net| {
                                            cidr.contains(n) && !except.iter().any(|e| e.contains(n))
                                        };
                                        let allowed: BTreeSet<u32> = cidr_ids
                                            .iter()
                                            .filter(|(n, _)| inside(n))
                                            .map(|(_, id)| *id)
                                            .collect();
                                        peers.extend(allowed.iter().map(|id| PeerId::Cidr(*id)));
                                        peers.extend(
                                            pod_in_block
                                                .iter()
                                                .filter(|((_, q), _)| allowed.contains(q))
                                                .map(|((pod, _), id)| PeerId::PodInBlock(*id, *pod)),
                                        );
                                    }
                                    Peer::NoIpv4 => {}
                                }
                            }
                        }
                    }
                    // Ports, resolved per peer.
                    let named_of = |id: u32| &out.identities[&id].named_ports;
                    let mut entries = Vec::new();
                    for peer in &peers {
                        let (peer_num, peer_pod) = match *peer {
                            PeerId::Any => (identity::ANY, None),
                            PeerId::Pod(id) => (id, Some(id)),
                            PeerId::Cidr(id) => (id, None),
                            PeerId::PodInBlock(id, pod) => (id, Some(pod)),
                        };
                        let mut push = |protocol, port: Option<u16>, end: Option<u16>, peer: u32| {
                            entries.push(PolicyEntry {
                                endpoint: ep.ep_id,
                                direction: dir,
                                peer,
                                protocol,
                                port,
                                end_port: end.filter(|e| Some(*e) != port),
                            })
                        };
                        let Some(ports) = &rule.ports else {
                            push(Protocol::Any, None, None, peer_num);
                            continue;
                        };
                        for spec in ports {
                            match &spec.port {
                                None => push(spec.protocol, None, None, peer_num),
                                Some(PortRef::Range(a, b)) => {
                                    push(spec.protocol, Some(*a), Some(*b), peer_num)
                                }
                                Some(PortRef::Named(name)) => {
                                    let key = (name.clone(), spec.protocol);
                                    match dir {
                                        // The selected pod's own port.
                                        Direction::Ingress => {
                                            if let Some(p) = own.named_ports.get(&key) {
                                                push(spec.protocol, Some(*p), None, peer_num);
                                            }
                                        }
                                        // Each peer pod's own port; "any peer" means every pod
                                        // identity that has the port.
                                        Direction::Egress => match peer_pod {
                                            Some(pod) => {
                                                if let Some(p) = named_of(pod).get(&key) {
                                                    push(spec.protocol, Some(*p), None, peer_num);
                                                }
                                            }
                                            None if *peer == PeerId::Any => {
                                                for (id, info) in &out.identities {
                                                    if let Some(p) = info.named_ports.get(&key) {
                                                        push(spec.protocol, Some(*p), None, *id);
                                                    }
                                                }
                                            }
                                            None => {}
                                        },
                                    }
                                }
                            }
                        }
                    }
                    for e in entries {
                        for k in e.map_keys().expect("validated ports") {
                            let v = out.state.policy.entry(k).or_insert(PolicyValue { rule_id });
                            v.rule_id = v.rule_id.min(rule_id);
                        }
                    }
                }
            }
        }
        out.state.endpoints.insert(
            ep.ifindex,
            Endpoint {
                ep_id: ep.ep_id,
                ip: u32::from_ne_bytes(ep.ip.octets()),
                identity: own_id,
                flags,
                policy_gen: 0,
                _pad: 0,
            },
        );
    }

    // Forget numbers nothing uses any more.
    let used_labels: BTreeSet<String> = out.identities.values().map(|i| i.key()).collect();
    alloc.labels.retain(&used_labels);
    alloc.cidrs.retain(&cidr_ids.keys().copied().collect());
    alloc.pod_in_block.retain(&pod_in_block.keys().copied().collect());
    alloc.rules.retain(&used_rules);
    out
}
