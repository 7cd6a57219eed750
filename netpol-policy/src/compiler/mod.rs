//! The compiler: model in, desired map state out. It never touches the kernel.
//!
//! In stages, one module each: [`identities`] (label identities, `INIT` for endpoints whose
//! pod is unknown), [`cidrs`] (CIDR and pod-in-block identities, the ipcache), [`rules`]
//! (rule expansion and named ports), [`budget`] (what fits), with stable numbering from
//! [`alloc`].
//!
//! Isolation comes from every stored policy that selects an endpoint; entries only from the
//! policies the budgets admit. An endpoint held closed (`INIT`) is isolated both ways and
//! gets no entries: only its node reaches it.

mod alloc;
mod budget;
mod cidrs;
mod identities;
mod rules;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use netpol_common::{identity, Endpoint, PolicyValue, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS};

pub use alloc::{Allocator, Allocators, RuleKey, FIRST_POD_IN_BLOCK};
pub use budget::{BudgetError, Budgets, Cost, NODE_EXACT_KEYS, NODE_RANGE_KEYS};
pub use identities::IdentityInfo;

use self::{identities::Identities, rules::Expander};
use crate::{
    entries::Direction,
    model::{Key, Model},
    policy::Policy,
    state::MapState,
};

/// A pod attachment on this node (from the endpoint registry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub ifindex: u32,
    pub ep_id: u32,
    pub ip: std::net::Ipv4Addr,
    pub namespace: String,
    pub pod: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub state: MapState,
    /// What each rule id in the state stands for.
    pub rules: BTreeMap<u32, RuleKey>,
    pub identities: BTreeMap<u32, IdentityInfo>,
    pub cidrs: BTreeMap<u32, Ipv4Net>,
    /// Policies that select local endpoints but do not fit the budgets: they isolate, and
    /// add no entries.
    pub over_budget: BTreeMap<Key, BudgetError>,
    /// Local endpoints held closed because their pod is not known yet (ifindex).
    pub held_closed: BTreeSet<u32>,
}

/// Compiles with the default budgets.
pub fn compile(model: &Model, node: &str, endpoints: &[LocalEndpoint], alloc: &mut Allocators) -> Compiled {
    compile_with(model, node, endpoints, alloc, &Budgets::default())
}

pub fn compile_with(
    model: &Model,
    node: &str,
    endpoints: &[LocalEndpoint],
    alloc: &mut Allocators,
    budgets: &Budgets,
) -> Compiled {
    let ids = identities::identities(model, endpoints, &mut alloc.labels);
    let cidrs = cidrs::cidrs(model, node, &ids, alloc);
    let (selected, flags) = selection(model, endpoints, &ids);
    let mut expander = Expander::new(&ids.info, &cidrs);
    let costs = selected
        .iter()
        .map(|(key, eps)| (key.clone(), cost(&mut expander, &model.policies[key].1, eps, &ids, budgets)))
        .collect();
    let over_budget = budget::admit(&costs, budgets);

    let mut out = Compiled { over_budget, ..Compiled::default() };
    for (key, eps) in selected.iter().filter(|(k, _)| !out.over_budget.contains_key(*k)) {
        let policy = &model.policies[key].1;
        let rule_ids = rule_ids(policy, &mut alloc.rules, &mut out.rules);
        for ep in eps {
            let own = &ids.info[&ids.of_endpoint[&ep.ifindex]];
            expander.expand(policy, ep, own, &mut |at, e| {
                for k in e.map_keys().expect("validated ports") {
                    let v = out.state.policy.entry(k).or_insert(PolicyValue { rule_id: rule_ids[&at] });
                    v.rule_id = v.rule_id.min(rule_ids[&at]);
                }
                true
            });
        }
    }
    for ep in endpoints {
        let identity = ids.of_endpoint[&ep.ifindex];
        if identity == identity::INIT {
            out.held_closed.insert(ep.ifindex);
        }
        let ep_entry = Endpoint {
            ep_id: ep.ep_id,
            ip: u32::from_ne_bytes(ep.ip.octets()),
            identity,
            flags: flags[&ep.ifindex],
            policy_gen: 0,
            _pad: 0,
        };
        out.state.endpoints.insert(ep.ifindex, ep_entry);
    }
    out.state.ipcache = cidrs.ipcache;
    out.cidrs = cidrs.ids.iter().map(|(n, id)| (*id, *n)).collect();
    out.identities = ids.info;

    // Forget numbers nothing uses any more.
    alloc.labels.retain(&out.identities.values().cloned().collect());
    alloc.cidrs.retain(&cidrs.ids.keys().copied().collect());
    alloc.pod_in_block.retain(&cidrs.pod_in_block.keys().copied().collect());
    alloc.rules.retain(&out.rules.values().cloned().collect());
    out
}

/// Which local endpoints each policy selects, and every endpoint's isolation flags (from
/// all selecting policies, whatever the budgets say). Held-closed endpoints are isolated
/// both ways and selected by nothing.
fn selection<'e>(
    model: &Model,
    endpoints: &'e [LocalEndpoint],
    ids: &Identities,
) -> (BTreeMap<Key, Vec<&'e LocalEndpoint>>, BTreeMap<u32, u32>) {
    let mut selected: BTreeMap<Key, Vec<&LocalEndpoint>> = BTreeMap::new();
    let mut flags = BTreeMap::new();
    for ep in endpoints {
        let id = ids.of_endpoint[&ep.ifindex];
        let Some(own) = ids.info.get(&id) else {
            flags.insert(ep.ifindex, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
            continue;
        };
        let mut f = 0;
        let in_ns = model.policies.range((ep.namespace.clone(), String::new())..);
        for (key, (_, policy)) in in_ns.take_while(|((ns, _), _)| *ns == ep.namespace) {
            if !policy.pod_selector.matches(&own.pod_labels) {
                continue;
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                if policy.rules(dir).is_some() {
                    f |= dir.isolation_flag();
                }
            }
            selected.entry(key.clone()).or_default().push(ep);
        }
        flags.insert(ep.ifindex, f);
    }
    (selected, flags)
}

/// A policy's keys on its selected endpoints, counted until they pass the per-policy budget.
fn cost(
    expander: &mut Expander,
    policy: &Policy,
    eps: &[&LocalEndpoint],
    ids: &Identities,
    b: &Budgets,
) -> Cost {
    let mut cost = Cost::default();
    for ep in eps {
        let own = &ids.info[&ids.of_endpoint[&ep.ifindex]];
        let within = expander.expand(policy, ep, own, &mut |_, e| {
            cost.add(&e.map_keys().expect("validated ports"));
            cost.total() <= b.per_policy
        });
        if !within {
            break;
        }
    }
    cost
}

/// The rule id of each rule of `policy`, recorded in `names`.
fn rule_ids(
    policy: &Policy,
    alloc: &mut Allocator<RuleKey>,
    names: &mut BTreeMap<u32, RuleKey>,
) -> BTreeMap<rules::RuleAt, u32> {
    let mut out = BTreeMap::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        for index in 0..policy.rules(direction).map_or(0, Vec::len) {
            let key = RuleKey {
                namespace: policy.namespace.clone(),
                policy: policy.name.clone(),
                direction,
                index: index as u32,
            };
            let id = alloc.id(key.clone());
            names.insert(id, key);
            out.insert((direction, index), id);
        }
    }
    out
}
