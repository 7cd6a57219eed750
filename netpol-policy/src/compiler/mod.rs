//! The compiler: model in, desired map state out. It never touches the kernel.
//!
//! In stages, one module each: [`identities`] (label identities, `INIT` for endpoints whose
//! pod is unknown), [`cidrs`] (CIDR and pod-in-block identities, the ipcache), [`rules`]
//! (rule expansion and named ports), [`budget`] (what fits), [`dns`] (what goes to the DNS
//! proxy), with stable numbering from [`alloc`].
//!
//! Isolation comes from every stored policy that selects an endpoint; entries only from the
//! policies the budgets admit. An endpoint held closed (`INIT`) is isolated both ways and
//! gets no entries: only its node reaches it. An endpoint in a namespace annotated for
//! audit ([`crate::model::AUDIT_ANNOTATION`]), or on a node audited whole
//! ([`Compiled::audit_all`]), is isolated and gets its entries as usual, and carries
//! `EP_AUDIT`: the datapath passes and reports what they would drop.

mod alloc;
mod budget;
mod cidrs;
mod dns;
mod identities;
pub use identities::HIGH_CHURN_LABELS;
mod rules;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use netpol_common::{
    identity, Endpoint, IpcacheEntry, PolicyValue, EP_AUDIT, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS,
    POLICY_DNS_PROXY,
};

pub use alloc::{Allocator, Allocators, RuleKey, FIRST_POD_IN_BLOCK};
pub use budget::{BudgetError, Budgets, Cost, NODE_EXACT_KEYS, NODE_RANGE_KEYS};
pub use identities::IdentityInfo;

use self::{identities::Identities, rules::Expander};
use crate::{
    entries::{Direction, PolicyMapKey},
    model::{Model, StoredPolicy},
    names::NameMatch,
    policy::PolicyId,
    services,
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
    pub over_budget: BTreeMap<PolicyId, BudgetError>,
    /// Local endpoints held closed because their pod is not known yet (ifindex).
    pub held_closed: BTreeSet<u32>,
    /// The policies that isolate each local endpoint (by `ep_id`) in each direction: they
    /// select its pod and have rules of that direction (whether or not they fit the budgets).
    pub isolating: BTreeMap<(u32, Direction), BTreeSet<PolicyId>>,
    /// The names the rules behind each DNS-proxied key (`POLICY_DNS_PROXY`) allow (the
    /// proxy allows a query the union of every key taking its flow allows:
    /// [`crate::lookup::dns_names`]).
    pub dns: BTreeMap<PolicyMapKey, BTreeSet<NameMatch>>,
    /// Service frontends written with fewer backends than their Service has.
    pub services_limited: BTreeMap<services::Frontend, services::FrontendLimit>,
}

impl Compiled {
    /// Audit mode for the whole node: every endpoint's policies are audited, not enforced.
    pub fn audit_all(&mut self) {
        for ep in self.state.endpoints.values_mut() {
            ep.flags |= EP_AUDIT;
        }
    }
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
    let Selection { selected, flags, isolating } = selection(model, endpoints, &ids);
    let mut expander = Expander::new(&ids.info, &cidrs, model);
    // Each policy's keys are kept from the budget pass while they fit in what the node's maps
    // hold (so memory stays bounded by the maps plus one policy's budget); past that, an
    // admitted policy is expanded again below. Counting itself is bounded per namespace.
    let mut expanded = BTreeMap::new();
    let mut costs = BTreeMap::new();
    let mut counting = budget::Counting::new(budgets);
    let mut held = 0;
    for (key, eps) in &selected {
        if !counting.may_count(key) {
            continue;
        }
        let (cost, keys) = expand_within(&mut expander, &model.policies[key], eps, &ids, budgets);
        counting.counted(key, &cost);
        costs.insert(key.clone(), cost);
        let keep = held + keys.len() <= NODE_EXACT_KEYS + NODE_RANGE_KEYS;
        held += if keep { keys.len() } else { 0 };
        expanded.insert(key, keep.then_some(keys));
    }
    let mut over_budget = budget::admit(&costs, budgets);
    over_budget.extend(counting.uncounted());

    let mut out = Compiled { over_budget, isolating, ..Compiled::default() };
    for (key, keys) in expanded.into_iter().filter(|(k, _)| !out.over_budget.contains_key(*k)) {
        let policy = &model.policies[key];
        let keys =
            keys.unwrap_or_else(|| expand_within(&mut expander, policy, &selected[key], &ids, budgets).1);
        let rule_ids = rule_ids(key, policy, &mut alloc.rules, &mut out.rules);
        for (at, k) in keys {
            add_entry(&mut out.state.policy, &mut out.dns, k, rule_ids[&at], dns_rules(policy, at));
        }
    }
    out.state.ipcache = cidrs.ipcache;
    dns::proxy_wins(&mut out.state, &mut out.dns);
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
    // ClusterIPs: never a pod's or a node's address; what reaches a pod addressed to one
    // bypassed the socket hooks.
    let service = IpcacheEntry { identity: identity::SERVICE, cidr_identity: identity::SERVICE };
    for ip in model.services.values().flat_map(services::cluster_ips) {
        let net = Ipv4Net::new(ip, 32).expect("/32");
        out.state.ipcache.entry(net).or_insert(service);
    }
    let frontends = services::frontends(&model.services, &model.endpoint_slices);
    (out.state.services, out.services_limited) = services::map_entries_within(&frontends, services::CAPACITY);
    out.cidrs = cidrs.ids.iter().map(|(n, id)| (*id, *n)).collect();
    out.identities = ids.info;

    // Forget numbers nothing uses any more.
    alloc.labels.retain(&out.identities.values().cloned().collect());
    alloc.cidrs.retain(&cidrs.ids.keys().copied().collect());
    alloc.pod_in_block.retain(&cidrs.pod_in_block.keys().copied().collect());
    alloc.rules.retain(&out.rules.values().cloned().collect());
    out
}

/// A local endpoint a policy selects, and which part of the policy selects it.
type Selected<'e> = (&'e LocalEndpoint, usize);

/// Which local endpoints each policy selects, and every endpoint's isolation.
struct Selection<'e> {
    selected: BTreeMap<PolicyId, Vec<Selected<'e>>>,
    /// ifindex → isolation flags.
    flags: BTreeMap<u32, u32>,
    /// (ep_id, direction) → the policies isolating it.
    isolating: BTreeMap<(u32, Direction), BTreeSet<PolicyId>>,
}

/// Which local endpoints each policy selects, and every endpoint's isolation flags (from
/// all selecting policies, whatever the budgets say). Held-closed endpoints are isolated
/// both ways and selected by nothing.
fn selection<'e>(model: &Model, endpoints: &'e [LocalEndpoint], ids: &Identities) -> Selection<'e> {
    let mut selected: BTreeMap<PolicyId, Vec<Selected<'e>>> = BTreeMap::new();
    let mut flags = BTreeMap::new();
    let mut isolating: BTreeMap<(u32, Direction), BTreeSet<PolicyId>> = BTreeMap::new();
    for ep in endpoints {
        let id = ids.of_endpoint[&ep.ifindex];
        let audit = if model.audited(&ep.namespace) { EP_AUDIT } else { 0 };
        let Some(own) = ids.info.get(&id) else {
            flags.insert(ep.ifindex, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS | audit);
            continue;
        };
        let mut f = audit;
        for (key, stored) in model.policies_in(&ep.namespace) {
            for (part, policy) in stored.parts.iter().enumerate() {
                if !policy.pod_selector.matches(&own.pod_labels) {
                    continue;
                }
                for dir in [Direction::Ingress, Direction::Egress] {
                    if policy.rules(dir).is_some() {
                        f |= dir.isolation_flag();
                        isolating.entry((ep.ep_id, dir)).or_default().insert(key.clone());
                    }
                }
                selected.entry(key.clone()).or_default().push((ep, part));
            }
        }
        flags.insert(ep.ifindex, f);
    }
    Selection { selected, flags, isolating }
}

/// A policy's keys on its selected endpoints, with where each came from; expansion stops
/// (and the keys are dropped) once they pass the per-policy budget.
fn expand_within(
    expander: &mut Expander,
    policy: &StoredPolicy,
    eps: &[Selected],
    ids: &Identities,
    b: &Budgets,
) -> (Cost, Vec<(RuleAt, PolicyMapKey)>) {
    let mut cost = Cost::default();
    let mut keys = Vec::new();
    for (ep, part) in eps {
        let own = &ids.info[&ids.of_endpoint[&ep.ifindex]];
        let within = expander.expand(&policy.parts[*part], ep, own, &mut |(dir, index), e| {
            let ks = e.map_keys().expect("validated ports");
            cost.add(&ks);
            keys.extend(ks.into_iter().map(|k| ((*part, dir, index), k)));
            cost.total() <= b.per_policy
        });
        if !within {
            return (cost, Vec::new());
        }
    }
    (cost, keys)
}

/// The DNS rules of the rule at `at` (None: it filters no names).
fn dns_rules(policy: &StoredPolicy, (part, dir, index): RuleAt) -> Option<&Vec<NameMatch>> {
    policy.parts[part].rules(dir)?[index].dns.as_ref()
}

/// Writes one key of a rule; the lowest rule id names it. A key any DNS rule writes goes to
/// the DNS proxy (DNS rules' ports go to it whole) with those rules' names — and every name
/// when a rule without DNS rules writes it too (allows are a union).
fn add_entry(
    entries: &mut BTreeMap<PolicyMapKey, PolicyValue>,
    proxied: &mut BTreeMap<PolicyMapKey, BTreeSet<NameMatch>>,
    k: PolicyMapKey,
    rule_id: u32,
    dns: Option<&Vec<NameMatch>>,
) {
    let existed = entries.contains_key(&k);
    let v = entries.entry(k).or_insert(PolicyValue { rule_id, flags: 0 });
    let was_plain = existed && v.flags & POLICY_DNS_PROXY == 0;
    v.rule_id = v.rule_id.min(rule_id);
    match dns {
        Some(names) => {
            v.flags |= POLICY_DNS_PROXY;
            let allowed = proxied.entry(k).or_default();
            allowed.extend(names.iter().cloned());
            if was_plain {
                allowed.insert(NameMatch::All);
            }
        }
        None if v.flags & POLICY_DNS_PROXY != 0 => {
            proxied.entry(k).or_default().insert(NameMatch::All);
        }
        None => {}
    }
}

/// Where an entry came from: the policy part, the rule's direction and its index there.
type RuleAt = (usize, Direction, usize);

/// The rule id of each rule of `policy`, recorded in `names`.
fn rule_ids(
    id: &PolicyId,
    policy: &StoredPolicy,
    alloc: &mut Allocator<RuleKey>,
    names: &mut BTreeMap<u32, RuleKey>,
) -> BTreeMap<RuleAt, u32> {
    let mut out = BTreeMap::new();
    for (part, p) in policy.parts.iter().enumerate() {
        for direction in [Direction::Ingress, Direction::Egress] {
            for index in 0..p.rules(direction).map_or(0, Vec::len) {
                let key = RuleKey { policy: id.clone(), part: part as u32, direction, index: index as u32 };
                let rule_id = alloc.id(key.clone());
                names.insert(rule_id, key);
                out.insert((part, direction, index), rule_id);
            }
        }
    }
    out
}
