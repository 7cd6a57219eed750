//! Stage 4, budgets: how many policy-map keys policies may add on this node.
//!
//! Invariant: the compiled state fits the maps. A policy over the per-policy budget, the
//! policies of a namespace past the per-namespace budget (largest first), and past the
//! node's map capacity the largest remaining ones, are rejected whole — no entry of a
//! rejected policy is written, so no policy is ever half enforced, and one namespace
//! cannot take the room every other policy needs. A rejected policy still isolates the
//! pods it selects (the compiler sets isolation from every stored policy): a pod is never
//! less isolated than its stored policies say.
//!
//! Counting stops at the per-policy budget, so a hostile policy costs at most that much
//! time and memory to reject; and once a namespace's counted policies pass twice its
//! budget, its remaining policies (in name order) are rejected uncounted, so a namespace
//! with many policies costs at most about `2 × per_namespace + per_policy` keys of work.

use std::collections::BTreeMap;

use netpol_common::sizes;
use serde::{Deserialize, Serialize};

use crate::{entries::PolicyMapKey, policy::PolicyId};

/// Policy-map keys policies may add on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budgets {
    /// Keys one policy may add, over all the endpoints it selects on the node.
    pub per_policy: usize,
    /// Keys the policies of one namespace may add together.
    pub per_namespace: usize,
}

impl Default for Budgets {
    /// Four namespaces at their budget fill a node's exact-key map.
    fn default() -> Self {
        Budgets { per_policy: 16_384, per_namespace: 65_536 }
    }
}

/// Room in the node's maps: all but a sixteenth, kept for the sync's adds-before-deletes.
pub const NODE_EXACT_KEYS: usize = sizes::POLICY as usize / 16 * 15;
pub const NODE_RANGE_KEYS: usize = sizes::POLICY_RANGES as usize / 16 * 15;

/// Why a policy was rejected whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "{policy}: expands to more than {budget} policy map entries on this node \
         (the per-policy budget); rejected whole"
    )]
    Policy { policy: PolicyId, budget: usize },
    #[error(
        "{policy}: with it, namespace {namespace}'s policies would expand to \
         {total} policy map entries on this node, over the per-namespace budget of {budget}; \
         rejected whole"
    )]
    Namespace { policy: PolicyId, namespace: String, total: usize, budget: usize },
    #[error(
        "{policy}: its {cost} policy map entries do not fit in this node's maps \
         beside the other policies' ({used} of {capacity} in use); rejected whole"
    )]
    Node { policy: PolicyId, cost: usize, used: usize, capacity: usize },
    #[error(
        "{policy}: namespace {namespace}'s other policies already expand to \
         {counted} policy map entries on this node, past twice the per-namespace budget of \
         {budget}; not expanded, rejected whole"
    )]
    NamespaceUncounted { policy: PolicyId, namespace: String, counted: usize, budget: usize },
}

/// The bound on counting: keys counted per namespace, and the policies left uncounted.
pub struct Counting<'a> {
    budgets: &'a Budgets,
    per_namespace: BTreeMap<String, usize>,
    uncounted: Vec<PolicyId>,
}

impl<'a> Counting<'a> {
    pub fn new(budgets: &'a Budgets) -> Self {
        Counting { budgets, per_namespace: BTreeMap::new(), uncounted: Vec::new() }
    }

    fn limit(&self) -> usize {
        self.budgets.per_namespace.saturating_mul(2)
    }

    /// Whether `key` may still be expanded; if not, it is rejected uncounted.
    pub fn may_count(&mut self, key: &PolicyId) -> bool {
        let counted = self.per_namespace.get(&key.namespace).copied().unwrap_or(0);
        let may = counted <= self.limit();
        if !may {
            self.uncounted.push(key.clone());
        }
        may
    }

    pub fn counted(&mut self, key: &PolicyId, cost: &Cost) {
        *self.per_namespace.entry(key.namespace.clone()).or_default() += cost.total();
    }

    pub fn uncounted(self) -> impl Iterator<Item = (PolicyId, BudgetError)> {
        let (per_namespace, budget) = (self.per_namespace, self.budgets.per_namespace);
        self.uncounted.into_iter().map(move |key| {
            let err = BudgetError::NamespaceUncounted {
                policy: key.clone(),
                namespace: key.namespace.clone(),
                counted: per_namespace[&key.namespace],
                budget,
            };
            (key, err)
        })
    }
}

/// The keys a policy adds on this node, counted up to the per-policy budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub exact: usize,
    pub ranges: usize,
}

impl Cost {
    pub fn total(&self) -> usize {
        self.exact + self.ranges
    }

    pub fn add(&mut self, keys: &[PolicyMapKey]) {
        for k in keys {
            match k {
                PolicyMapKey::Exact(_) => self.exact += 1,
                PolicyMapKey::Range(..) => self.ranges += 1,
            }
        }
    }
}

/// The policies to reject, given every selecting policy's cost.
pub fn admit(costs: &BTreeMap<PolicyId, Cost>, budgets: &Budgets) -> BTreeMap<PolicyId, BudgetError> {
    let mut rejected = BTreeMap::new();
    let mut by_ns: BTreeMap<&str, Vec<(&PolicyId, Cost)>> = BTreeMap::new();
    for (key, cost) in costs {
        if cost.total() > budgets.per_policy {
            rejected
                .insert(key.clone(), BudgetError::Policy { policy: key.clone(), budget: budgets.per_policy });
        } else {
            by_ns.entry(key.namespace.as_str()).or_default().push((key, *cost));
        }
    }
    // Smallest first: a namespace's largest policies are the ones past its budget.
    let mut admitted = Vec::new();
    for (ns, mut list) in by_ns {
        list.sort_by_key(|(k, c)| (c.total(), *k));
        let mut total = 0;
        for (key, cost) in list {
            if total + cost.total() > budgets.per_namespace {
                let err = BudgetError::Namespace {
                    policy: key.clone(),
                    namespace: ns.to_string(),
                    total: total + cost.total(),
                    budget: budgets.per_namespace,
                };
                rejected.insert(key.clone(), err);
            } else {
                total += cost.total();
                admitted.push((key, cost));
            }
        }
    }
    admitted.sort_by_key(|(k, c)| (c.total(), *k));
    let (mut exact, mut ranges) = (0, 0);
    for (key, cost) in admitted {
        let fits = exact + cost.exact <= NODE_EXACT_KEYS && ranges + cost.ranges <= NODE_RANGE_KEYS;
        if fits {
            exact += cost.exact;
            ranges += cost.ranges;
        } else {
            let err = BudgetError::Node {
                policy: key.clone(),
                cost: cost.total(),
                used: exact + ranges,
                capacity: NODE_EXACT_KEYS + NODE_RANGE_KEYS,
            };
            rejected.insert(key.clone(), err);
        }
    }
    rejected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, n: &str) -> PolicyId {
        PolicyId::new(crate::policy::PolicyKind::NetworkPolicy, ns, n)
    }

    #[test]
    fn the_largest_policies_go_first() {
        let b = Budgets { per_policy: 100, per_namespace: 150 };
        let costs = BTreeMap::from([
            (key("t", "huge"), Cost { exact: 101, ranges: 0 }),
            (key("t", "a"), Cost { exact: 60, ranges: 0 }),
            (key("t", "b"), Cost { exact: 80, ranges: 0 }),
            (key("t", "c"), Cost { exact: 10, ranges: 0 }),
            (key("u", "d"), Cost { exact: 100, ranges: 0 }),
        ]);
        let r = admit(&costs, &b);
        assert!(matches!(r[&key("t", "huge")], BudgetError::Policy { .. }));
        // 10 + 60 + 80 = 150: exactly the namespace budget.
        assert!(!r.contains_key(&key("t", "b")), "{r:?}");
        assert!(!r.contains_key(&key("u", "d")));
        assert_eq!(r.len(), 1);
        let tight = Budgets { per_policy: 100, per_namespace: 100 };
        let r = admit(&costs, &tight);
        assert!(matches!(&r[&key("t", "b")], BudgetError::Namespace { total: 150, .. }), "{r:?}");
        assert!(r[&key("t", "b")].to_string().contains("t/b"));
        assert!(!r.contains_key(&key("t", "a")) && !r.contains_key(&key("t", "c")));
    }

    #[test]
    fn the_node_total_never_exceeds_the_maps() {
        let b = Budgets { per_policy: usize::MAX, per_namespace: usize::MAX };
        let costs: BTreeMap<PolicyId, Cost> = (0..20)
            .map(|i| (key(&format!("ns{i}"), "p"), Cost { exact: NODE_EXACT_KEYS / 8, ranges: 0 }))
            .collect();
        let r = admit(&costs, &b);
        assert_eq!(r.len(), 12, "8 fit");
        assert!(r.values().all(|e| matches!(e, BudgetError::Node { .. })));
    }
}
