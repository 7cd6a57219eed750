//! Stage 2, CIDR identities and the ipcache.
//!
//! - **CIDR identities**: one per prefix any ipBlock mentions (cidr and except). An ipBlock
//!   allows every prefix inside its cidr and outside all its excepts; with longest-prefix
//!   lookup that is exact.
//! - **Pod-in-block identities**: a pod address covered by a prefix gets, as its CIDR
//!   identity, one for the pair (pod identity, longest prefix), so ipBlock rules match pod
//!   addresses too (as the upstream e2e suite requires), including on named ports.
//! - **The ipcache**: prefixes, then pods (a pod's /32 wins over a /32 prefix), then the
//!   nodes' own addresses (this node's are the host, the others' remote nodes).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use netpol_common::{identity, IpcacheEntry};

use super::{identities::Identities, Allocators};
use crate::{
    entries::Direction,
    model::{node_addresses, Model},
    policy::Peer,
};

/// The CIDR side of one compile.
#[derive(Debug, Default)]
pub(super) struct Cidrs {
    /// Every prefix an ipBlock mentions, with its CIDR identity.
    pub ids: BTreeMap<Ipv4Net, u32>,
    /// (pod identity, CIDR identity of its longest prefix) → pod-in-block identity.
    pub pod_in_block: BTreeMap<(u32, u32), u32>,
    pub ipcache: BTreeMap<Ipv4Net, IpcacheEntry>,
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

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32")
}

pub(super) fn cidrs(model: &Model, node: &str, ids: &Identities, alloc: &mut Allocators) -> Cidrs {
    let mut out = Cidrs::default();
    for p in model.policy_parts() {
        let rules = [Direction::Ingress, Direction::Egress].into_iter().filter_map(|d| p.rules(d));
        for peer in rules.flatten().flat_map(|r| r.peers.iter().flatten()) {
            match peer {
                Peer::Block { cidr, except } => {
                    for net in std::iter::once(cidr).chain(except) {
                        out.ids.entry(*net).or_insert_with(|| alloc.cidrs.id(*net));
                    }
                }
                // Learned addresses are /32 blocks of their own.
                Peer::Names(matches) => {
                    for net in model.learned_addresses(matches).into_iter().map(host32) {
                        out.ids.entry(net).or_insert_with(|| alloc.cidrs.id(net));
                    }
                }
                Peer::Pods { .. } | Peer::NoIpv4 => {}
            }
        }
    }
    let prefixes = Prefixes::new(&out.ids);
    for (net, id) in &out.ids {
        out.ipcache.insert(*net, IpcacheEntry { identity: *id, cidr_identity: *id });
    }
    for (ip, id) in &ids.by_ip {
        let cidr_identity = match prefixes.longest(*ip) {
            Some(q) => *out.pod_in_block.entry((*id, q)).or_insert_with(|| alloc.pod_in_block.id((*id, q))),
            None => identity::WORLD,
        };
        out.ipcache.insert(host32(*ip), IpcacheEntry { identity: *id, cidr_identity });
    }
    for (name, n) in &model.nodes {
        let id = if name == node { identity::HOST } else { identity::REMOTE_NODE };
        for ip in node_addresses(n) {
            let cidr_identity = prefixes.longest(ip).unwrap_or(identity::WORLD);
            out.ipcache.entry(host32(ip)).or_insert(IpcacheEntry { identity: id, cidr_identity });
        }
    }
    out
}
