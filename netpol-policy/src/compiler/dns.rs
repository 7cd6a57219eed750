//! Stage 5, DNS: a flow a DNS rule covers goes to the DNS proxy, whatever else allows it
//! (the proxy takes DNS rules' ports whole), and the proxy allows the names of every rule
//! taking the flow — every name when one of them has no DNS rules (allows are a union;
//! [`crate::lookup::dns_names`] at query time).
//!
//! The programs take the first entry that matches, most specific peer first (the peer's
//! identity, its CIDR identity, any peer), so an entry of a more specific peer would let DNS
//! a DNS rule for a broader peer covers pass unfiltered. Each such peer gets a proxied entry
//! of its own for that port (with no names of its own: the names are the union at query
//! time).

use std::collections::{BTreeMap, BTreeSet};

use netpol_common::{identity, PolicyKey, PolicyValue, DIR_EGRESS, POLICY_DNS_PROXY};

use crate::{entries::PolicyMapKey, lookup::entries_taking, names::NameMatch, state::MapState};

/// Names each proxied key allows.
pub type Proxied = BTreeMap<PolicyMapKey, BTreeSet<NameMatch>>;

pub(super) fn proxy_wins(st: &mut MapState, proxied: &mut Proxied) {
    let keys: Vec<PolicyKey> = proxied
        .keys()
        .filter_map(|k| match k {
            PolicyMapKey::Exact(pk) if pk.dir == DIR_EGRESS => Some(*pk),
            _ => None,
        })
        .collect();
    for k in keys {
        for q in earlier_peers(st, &k) {
            let own = PolicyMapKey::Exact(PolicyKey { peer: q, ..k });
            let (plain, rule) = covering(st, &k, q);
            let Some(rule_id) = rule else { continue };
            let v = st.policy.entry(own).or_insert(PolicyValue { rule_id, flags: 0 });
            v.flags |= POLICY_DNS_PROXY;
            let names = proxied.entry(own).or_default();
            if plain {
                names.insert(NameMatch::All);
            }
        }
    }
}

/// Whether a plain entry of `peer` takes the flow `k` stands for, and the lowest rule id
/// of the entries of `peer` that do.
fn covering(st: &MapState, k: &PolicyKey, peer: u32) -> (bool, Option<u32>) {
    let hits = entries_taking(st, k.ep_id, k.dir, peer, k.proto, k.port);
    let plain = hits.iter().any(|(_, v)| v.flags & POLICY_DNS_PROXY == 0);
    (plain, hits.iter().map(|(_, v)| v.rule_id).min())
}

/// The peers the programs look up before `k.peer` for some packet `k` takes: for any peer,
/// every other peer with an entry of the endpoint; for a CIDR identity, the identities of
/// the addresses it is the CIDR identity of.
fn earlier_peers(st: &MapState, k: &PolicyKey) -> BTreeSet<u32> {
    let of_endpoint = st.policy.keys().filter_map(|pk| match pk {
        PolicyMapKey::Exact(e) if e.ep_id == k.ep_id && e.dir == k.dir => Some(e.peer),
        PolicyMapKey::Range(r, _) if r.ep_id == k.ep_id && r.dir == k.dir => Some(r.peer),
        _ => None,
    });
    let peers: BTreeSet<u32> = of_endpoint.filter(|q| *q != k.peer).collect();
    if k.peer == identity::ANY {
        return peers;
    }
    let under: BTreeSet<u32> = st
        .ipcache
        .values()
        .filter(|e| e.cidr_identity == k.peer && e.identity != k.peer)
        .map(|e| e.identity)
        .collect();
    peers.intersection(&under).copied().collect()
}
