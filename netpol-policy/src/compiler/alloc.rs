//! Stable numbering: a key keeps its number while it is in use, numbers are never reused
//! (a recycled identity could let an old conntrack entry or event be misread), and the
//! whole state is persisted so an agent restart compiles the same numbers again — which
//! keeps the restart's sync a no-op.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use netpol_common::identity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocators {
    pub labels: Allocator<String>,
    pub cidrs: Allocator<Ipv4Net>,
    pub pod_in_block: Allocator<(u32, u32)>,
    pub rules: Allocator<String>,
}

impl Default for Allocators {
    fn default() -> Self {
        Allocators {
            labels: Allocator::new(identity::FIRST_LABEL),
            cidrs: Allocator::new(identity::FIRST_CIDR),
            pod_in_block: Allocator::new(FIRST_POD_IN_BLOCK),
            rules: Allocator::new(1),
        }
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
}
