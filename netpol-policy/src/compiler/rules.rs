//! Stage 3, rule expansion: per local endpoint and direction, the product of each rule's
//! peers and ports, with named ports resolved per peer (ingress: the selected pod's own
//! port; egress: each peer pod's). Entries are handed to a sink one by one, so a caller
//! that only counts (the budget check) never holds an oversized expansion in memory.

use std::collections::{BTreeSet, HashMap};

use ipnet::Ipv4Net;
use netpol_common::identity;

use super::{cidrs::Cidrs, identities::IdentityInfo, LocalEndpoint};
use crate::{
    entries::{Direction, PolicyEntry},
    model::Model,
    policy::{Peer, Policy, PortRef, PortSpec, Rule, Selector},
};

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

impl PeerId {
    /// The identity an entry names, and the pod identity whose named ports apply.
    fn split(self) -> (u32, Option<u32>) {
        match self {
            PeerId::Any => (identity::ANY, None),
            PeerId::Pod(id) => (id, Some(id)),
            PeerId::Cidr(id) => (id, None),
            PeerId::PodInBlock(id, pod) => (id, Some(pod)),
        }
    }
}

/// Where an entry came from: the rule's direction and index in its policy (part).
pub(super) type RuleAt = (Direction, usize);

pub(super) struct Expander<'a> {
    identities: &'a std::collections::BTreeMap<u32, IdentityInfo>,
    cidrs: &'a Cidrs,
    /// For the learned addresses of `toFQDNs`.
    model: &'a Model,
    /// Pod selections, memoized: (policy namespace, namespace selector, pod selector).
    selected: HashMap<(String, Option<Selector>, Selector), Vec<u32>>,
}

impl<'a> Expander<'a> {
    pub fn new(
        identities: &'a std::collections::BTreeMap<u32, IdentityInfo>,
        cidrs: &'a Cidrs,
        model: &'a Model,
    ) -> Self {
        Expander { identities, cidrs, model, selected: HashMap::new() }
    }

    /// Hands every allow entry `policy` gives `ep` (whose identity is `own`) to `sink`, until
    /// the sink returns false; returns false when it stopped early.
    pub fn expand(
        &mut self,
        policy: &Policy,
        ep: &LocalEndpoint,
        own: &IdentityInfo,
        sink: &mut dyn FnMut(RuleAt, PolicyEntry) -> bool,
    ) -> bool {
        for dir in [Direction::Ingress, Direction::Egress] {
            for (i, rule) in policy.rules(dir).into_iter().flatten().enumerate() {
                let peers = self.peers(&policy.namespace, rule);
                for peer in peers {
                    let mut emit = |e: PolicyEntry| sink((dir, i), PolicyEntry { endpoint: ep.ep_id, ..e });
                    if !self.ports(dir, rule, peer, own, &mut emit) {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn peers(&mut self, pns: &str, rule: &Rule) -> BTreeSet<PeerId> {
        let Some(list) = &rule.peers else { return BTreeSet::from([PeerId::Any]) };
        let mut peers = BTreeSet::new();
        for peer in list {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    let ids = self.select(pns, namespaces, pods);
                    peers.extend(ids.iter().map(|id| PeerId::Pod(*id)));
                }
                Peer::Block { cidr, except } => peers.extend(self.block(cidr, except)),
                // Each learned address of a matching name, as a /32 block.
                Peer::Names(matches) => {
                    for ip in self.model.learned_addresses(matches) {
                        let net = Ipv4Net::new(ip, 32).expect("/32");
                        peers.extend(self.block(&net, &[]));
                    }
                }
                Peer::NoIpv4 => {}
            }
        }
        peers
    }

    fn select(&mut self, pns: &str, namespaces: &Option<Selector>, pods: &Selector) -> &Vec<u32> {
        let key = (pns.to_string(), namespaces.clone(), pods.clone());
        let identities = self.identities;
        self.selected.entry(key).or_insert_with(|| {
            identities
                .iter()
                .filter(|(_, info)| {
                    let ns_ok = match namespaces {
                        None => info.namespace == pns,
                        Some(sel) => sel.matches(&info.ns_labels),
                    };
                    ns_ok && pods.matches(&info.pod_labels)
                })
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// The CIDR identities inside the block, and the pod-in-block identities under them.
    fn block(&self, cidr: &Ipv4Net, except: &[Ipv4Net]) -> Vec<PeerId> {
        let inside = |n: &Ipv4Net| cidr.contains(n) && !except.iter().any(|e| e.contains(n));
        let allowed: BTreeSet<u32> =
            self.cidrs.ids.iter().filter(|(n, _)| inside(n)).map(|(_, id)| *id).collect();
        let pods = self
            .cidrs
            .pod_in_block
            .iter()
            .filter(|((_, q), _)| allowed.contains(q))
            .map(|((pod, _), id)| PeerId::PodInBlock(*id, *pod));
        allowed.iter().map(|id| PeerId::Cidr(*id)).chain(pods).collect()
    }

    /// The entries of one peer of a rule, port by port.
    fn ports(
        &self,
        dir: Direction,
        rule: &Rule,
        peer: PeerId,
        own: &IdentityInfo,
        emit: &mut dyn FnMut(PolicyEntry) -> bool,
    ) -> bool {
        let (peer_num, peer_pod) = peer.split();
        let entry = |protocol, port: Option<u16>, end: Option<u16>, peer: u32| PolicyEntry {
            endpoint: 0,
            direction: dir,
            peer,
            protocol,
            port,
            end_port: end.filter(|e| Some(*e) != port),
        };
        let Some(ports) = &rule.ports else {
            return emit(entry(Default::default(), None, None, peer_num));
        };
        for spec in ports {
            let ok = match &spec.port {
                None => emit(entry(spec.protocol, None, None, peer_num)),
                Some(PortRef::Range(a, b)) => emit(entry(spec.protocol, Some(*a), Some(*b), peer_num)),
                Some(PortRef::Named(name)) => self
                    .named(dir, spec, name, peer, peer_pod, own)
                    .into_iter()
                    .all(|(port, peer)| emit(entry(spec.protocol, Some(port), None, peer))),
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// A named port, resolved: (port, peer identity) pairs.
    fn named(
        &self,
        dir: Direction,
        spec: &PortSpec,
        name: &str,
        peer: PeerId,
        peer_pod: Option<u32>,
        own: &IdentityInfo,
    ) -> Vec<(u16, u32)> {
        let key = (name.to_string(), spec.protocol);
        let (peer_num, _) = peer.split();
        match (dir, peer_pod) {
            // The selected pod's own port.
            (Direction::Ingress, _) => {
                own.named_ports.get(&key).map(|p| (*p, peer_num)).into_iter().collect()
            }
            // Each peer pod's own port.
            (Direction::Egress, Some(pod)) => {
                self.identities[&pod].named_ports.get(&key).map(|p| (*p, peer_num)).into_iter().collect()
            }
            // "Any peer": every pod identity that has the port.
            (Direction::Egress, None) if peer == PeerId::Any => self
                .identities
                .iter()
                .filter_map(|(id, info)| info.named_ports.get(&key).map(|p| (*p, *id)))
                .collect(),
            (Direction::Egress, None) => Vec::new(),
        }
    }
}
