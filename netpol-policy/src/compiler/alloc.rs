//! Stable numbering: a key keeps its number while it is in use, numbers are never reused
//! (a recycled identity could let an old conntrack entry or event be misread), and the
//! whole state is persisted so an agent restart compiles the same numbers again — which
//! keeps the restart's sync a no-op.
//!
//! Keys are typed ([`IdentityInfo`], [`RuleKey`], prefixes). Numbering saved in an older
//! format (string keys; or format 2, whose rule keys had no policy kind) is not migrated
//! key by key: [`Allocators::restore`] starts every
//! allocator above the last number the old one handed out, so the first compile renumbers
//! (one full sync, adds before deletes, so nothing allowed is cut) and no number is reused.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use ipnet::Ipv4Net;
use netpol_common::identity;
use serde::{Deserialize, Serialize};

use super::identities::IdentityInfo;
use crate::{entries::Direction, policy::PolicyId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "K: Serialize", deserialize = "K: Deserialize<'de> + Ord"))]
pub struct Allocator<K: Ord> {
    base: u32,
    next: u32,
    entries: Vec<(K, u32)>,
    #[serde(skip)]
    index: BTreeMap<K, u32>,
}

impl<K: Ord + Clone> Allocator<K> {
    pub fn new(base: u32) -> Self {
        Allocator { base, next: 0, entries: Vec::new(), index: BTreeMap::new() }
    }

    /// An empty allocator whose first number is `base + next`.
    fn continuing(base: u32, next: u32) -> Self {
        Allocator { next, ..Allocator::new(base) }
    }

    fn reindex(&mut self) {
        if self.index.len() != self.entries.len() {
            self.index = self.entries.iter().cloned().collect();
        }
    }

    pub fn id(&mut self, key: K) -> u32 {
        self.reindex();
        if let Some(id) = self.index.get(&key) {
            return *id;
        }
        let id = self.base + self.next;
        self.next += 1;
        self.index.insert(key.clone(), id);
        self.entries.push((key, id));
        id
    }

    /// Drops the keys not in `used`.
    pub fn retain(&mut self, used: &BTreeSet<K>) {
        self.reindex();
        self.index.retain(|k, _| used.contains(k));
        self.entries.retain(|(k, _)| used.contains(k));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Pod-in-block identities start here (above CIDR identities).
pub const FIRST_POD_IN_BLOCK: u32 = identity::FIRST_CIDR + (1 << 23);

/// One rule of one policy: what a rule id stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleKey {
    pub policy: PolicyId,
    /// Which part of the policy (a CiliumNetworkPolicy's rule in `spec` and `specs`; 0 for
    /// a NetworkPolicy).
    pub part: u32,
    pub direction: Direction,
    /// The rule's index in its part's rules of that direction.
    pub index: u32,
}

/// `NetworkPolicy ns/name ingress[0]`, `CiliumNetworkPolicy ns/name #1 egress[2]`
impl fmt::Display for RuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.policy)?;
        if self.part > 0 {
            write!(f, " #{}", self.part)?;
        }
        write!(f, " {}[{}]", self.direction, self.index)
    }
}

/// The saved numbering's format (3: rules keyed by policy kind and part).
const FORMAT: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocators {
    format: u32,
    pub labels: Allocator<IdentityInfo>,
    pub cidrs: Allocator<Ipv4Net>,
    pub pod_in_block: Allocator<(u32, u32)>,
    pub rules: Allocator<RuleKey>,
}

impl Default for Allocators {
    fn default() -> Self {
        Allocators::continuing(&BTreeMap::new())
    }
}

impl Allocators {
    /// Fresh allocators, each starting at `next[name]` (0 when absent) above its base.
    fn continuing(next: &BTreeMap<&str, u32>) -> Self {
        let n = |name: &str| next.get(name).copied().unwrap_or(0);
        Allocators {
            format: FORMAT,
            labels: Allocator::continuing(identity::FIRST_LABEL, n("labels")),
            cidrs: Allocator::continuing(identity::FIRST_CIDR, n("cidrs")),
            pod_in_block: Allocator::continuing(FIRST_POD_IN_BLOCK, n("pod_in_block")),
            rules: Allocator::continuing(1, n("rules")),
        }
    }

    /// Reads saved numbering. An older format is renumbered above its last numbers (see the
    /// module docs); text that is neither is an error.
    pub fn restore(text: &str) -> Result<Allocators, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v.get("format").and_then(|f| f.as_u64()) == Some(FORMAT as u64) {
            return serde_json::from_value(v).map_err(|e| e.to_string());
        }
        let mut next = BTreeMap::new();
        for name in ["labels", "cidrs", "pod_in_block", "rules"] {
            let n = v.get(name).and_then(|a| a.get("next")).and_then(|n| n.as_u64());
            let n = n.ok_or_else(|| format!("{name}.next is missing: not a numbering file"))?;
            next.insert(name, u32::try_from(n).map_err(|e| format!("{name}.next: {e}"))?);
        }
        Ok(Allocators::continuing(&next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_never_reused() {
        let mut a = Allocator::new(100);
        assert_eq!(a.id("x".to_string()), 100);
        assert_eq!(a.id("y".to_string()), 101);
        assert_eq!(a.id("x".to_string()), 100);
        a.retain(&BTreeSet::from(["y".to_string()]));
        assert_eq!(a.id("x".to_string()), 102);
        let json = serde_json::to_string(&a).unwrap();
        let mut b: Allocator<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(b.id("y".to_string()), 101);
        assert_eq!(b.id("z".to_string()), 103);
    }

    #[test]
    fn typed_numbering_round_trips_and_old_numbering_is_continued() {
        let mut a = Allocators::default();
        let rule = RuleKey { policy: np("x", "p"), part: 0, direction: Direction::Egress, index: 1 };
        let info = IdentityInfo { namespace: "x".into(), ..Default::default() };
        let (r, l) = (a.rules.id(rule.clone()), a.labels.id(info.clone()));
        let mut b = Allocators::restore(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!((b.rules.id(rule), b.labels.id(info)), (r, l));
        // The string-keyed format of earlier versions: numbering continues above it.
        let old = r#"{"labels":{"base":256,"next":7,"entries":[["ns[] pod[] ports[]",262]]},
            "cidrs":{"base":16777216,"next":3,"entries":[]},
            "pod_in_block":{"base":25165824,"next":0,"entries":[]},
            "rules":{"base":1,"next":40,"entries":[["x/p ingress[0]",39]]}}"#;
        let mut c = Allocators::restore(old).unwrap();
        assert_eq!(c.labels.id(IdentityInfo::default()), identity::FIRST_LABEL + 7);
        assert_eq!(c.cidrs.id("10.0.0.0/8".parse().unwrap()), identity::FIRST_CIDR + 3);
        assert_eq!(c.rules.id(RuleKey { index: 0, ..RuleKey::default_for_test() }), 41);
        assert!(Allocators::restore(r#"{"labels":{}}"#).is_err());
        // Format 2: rules keyed without the policy's kind.
        let two = r#"{"format":2,"labels":{"base":256,"next":2,"entries":[]},
            "cidrs":{"base":16777216,"next":0,"entries":[]},
            "pod_in_block":{"base":25165824,"next":0,"entries":[]},
            "rules":{"base":1,"next":9,"entries":[[{"namespace":"x","policy":"p","direction":"Ingress","index":0},9]]}}"#;
        let mut d = Allocators::restore(two).unwrap();
        assert_eq!(d.rules.id(RuleKey::default_for_test()), 10);
    }

    fn np(ns: &str, name: &str) -> PolicyId {
        PolicyId::new(crate::policy::PolicyKind::NetworkPolicy, ns, name)
    }

    impl RuleKey {
        fn default_for_test() -> RuleKey {
            RuleKey { policy: np("x", "p"), part: 0, direction: Direction::Ingress, index: 0 }
        }
    }
}
