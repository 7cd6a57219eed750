//! What DNS answers taught: for each name, its addresses and until when each holds (the
//! answer's TTL from when it was seen). `toFQDNs` allow exactly these addresses, so this is
//! security state: it is bounded, and persisted so that learned addresses stay allowed
//! through an agent restart.
//!
//! Invariants:
//! - at most [`MAX_PER_NAME`] addresses per name (the longest-lived kept) and [`MAX_NAMES`]
//!   names (those expiring first go), so a pod resolving random names cannot grow the
//!   ipcache and the policy map without bound;
//! - an address outlives its TTL only while `in_use` says a connection a rule for that
//!   very name allowed still uses it (TTL expiry stops new connections, never established
//!   ones; another pod's connection to the same address keeps nothing alive);
//! - times are wall-clock milliseconds since the Unix epoch, so a restart keeps counting.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use netpol_policy::names::{Name, NameMatch};
use serde::{Deserialize, Serialize};

/// Addresses kept per name.
pub const MAX_PER_NAME: usize = 64;
/// Names kept.
pub const MAX_NAMES: usize = 16_384;
/// Names kept per wildcard pattern (`matchPattern`), so one pattern cannot crowd out the
/// names of others.
pub const MAX_NAMES_PER_PATTERN: usize = 1024;

pub use netpol_api::flows::now_ms;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// name → address → expiry (ms since the epoch).
    names: BTreeMap<Name, BTreeMap<Ipv4Addr, u64>>,
    /// Changed since the last save or load.
    #[serde(skip)]
    unsaved: bool,
}

impl Learned {
    /// Records that `name` has `addresses` for `ttl_s` seconds from `now`; true when an
    /// address is new for the name (the compiled state must then be updated before the
    /// answer is released).
    pub fn learn(&mut self, name: &Name, addresses: &BTreeSet<Ipv4Addr>, ttl_s: u32, now: u64) -> bool {
        let until = now.saturating_add(u64::from(ttl_s) * 1000);
        let known = self.names.entry(name.clone()).or_default();
        let mut new = false;
        for ip in addresses {
            let e = known.entry(*ip).or_insert_with(|| {
                new = true;
                until
            });
            self.unsaved |= *e < until;
            *e = (*e).max(until);
        }
        self.unsaved |= new;
        if known.len() > MAX_PER_NAME {
            let mut by_expiry: Vec<(u64, Ipv4Addr)> = known.iter().map(|(ip, t)| (*t, *ip)).collect();
            by_expiry.sort();
            for (_, ip) in &by_expiry[..by_expiry.len() - MAX_PER_NAME] {
                known.remove(ip);
            }
        }
        if self.names.len() > MAX_NAMES {
            let latest = |m: &BTreeMap<Ipv4Addr, u64>| m.values().copied().max().unwrap_or(0);
            let mut by_expiry: Vec<(u64, Name)> =
                self.names.iter().map(|(n, m)| (latest(m), n.clone())).collect();
            by_expiry.sort();
            for (_, n) in &by_expiry[..by_expiry.len() - MAX_NAMES] {
                self.names.remove(n);
            }
        }
        new
    }

    /// Keeps at most [`MAX_NAMES_PER_PATTERN`] names that `pattern` matches, `keep` (the
    /// name just learned) among them: the first others to expire go. True when any went.
    pub fn bound_pattern(&mut self, pattern: &NameMatch, keep: &Name) -> bool {
        if matches!(pattern, NameMatch::Exact(_)) {
            return false;
        }
        let latest = |m: &BTreeMap<Ipv4Addr, u64>| m.values().copied().max().unwrap_or(0);
        let mut others: Vec<(u64, Name)> = self
            .names
            .iter()
            .filter(|(n, _)| *n != keep && pattern.matches(n))
            .map(|(n, m)| (latest(m), n.clone()))
            .collect();
        let excess = (others.len() + 1).saturating_sub(MAX_NAMES_PER_PATTERN);
        others.sort();
        for (_, n) in &others[..excess.min(others.len())] {
            self.names.remove(n);
        }
        self.unsaved |= excess > 0;
        excess > 0
    }

    /// Forgets what expired by `now`, except addresses `in_use` for their name; true when
    /// anything went.
    pub fn expire(&mut self, now: u64, in_use: &dyn Fn(&Name, Ipv4Addr) -> bool) -> bool {
        let before = self.len();
        for (name, known) in self.names.iter_mut() {
            known.retain(|ip, until| *until > now || in_use(name, *ip));
        }
        self.names.retain(|_, known| !known.is_empty());
        let changed = self.len() != before;
        self.unsaved |= changed;
        changed
    }

    /// True when something changed since the last save or load.
    pub fn unsaved(&self) -> bool {
        self.unsaved
    }

    /// (name, address) pairs held.
    pub fn len(&self) -> usize {
        self.names.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The earliest expiry held, to know when to look again.
    pub fn next_expiry(&self) -> Option<u64> {
        self.names.values().flat_map(|m| m.values()).copied().min()
    }

    /// The model's view: each name's addresses.
    pub fn snapshot(&self) -> BTreeMap<Name, BTreeSet<Ipv4Addr>> {
        self.names.iter().map(|(n, m)| (n.clone(), m.keys().copied().collect())).collect()
    }

    /// Reads the saved state; none saved is empty, unreadable state is an error.
    pub fn load(path: &Path) -> Result<Learned, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Learned::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Saves atomically (a temporary file renamed over the old one).
    pub fn save(&mut self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string(self).expect("serializable");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.unsaved = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn ips(list: &[[u8; 4]]) -> BTreeSet<Ipv4Addr> {
        list.iter().map(|o| Ipv4Addr::from(*o)).collect()
    }

    #[test]
    fn addresses_expire_after_their_ttl_unless_in_use() {
        let mut l = Learned::default();
        assert!(l.learn(&name("songlaa.com"), &ips(&[[198, 51, 100, 1]]), 2, 1000));
        assert!(!l.learn(&name("songlaa.com"), &ips(&[[198, 51, 100, 1]]), 5, 1500), "not new");
        assert!(l.learn(&name("songlaa.com"), &ips(&[[198, 51, 100, 2]]), 1, 1500));
        assert_eq!(l.next_expiry(), Some(2500));
        assert!(!l.expire(2499, &|_, _| false));
        assert!(l.expire(2500, &|_, _| false), "an address is gone when its TTL is up");
        assert_eq!(l.snapshot()[&name("songlaa.com")], ips(&[[198, 51, 100, 1]]));
        // The refreshed TTL holds (until 6500); past it, an address a connection uses stays.
        let used = Ipv4Addr::new(198, 51, 100, 1);
        assert!(!l.expire(6499, &|_, _| false));
        assert!(!l.expire(6500, &|_, ip| ip == used));
        assert!(l.expire(6500, &|_, _| false));
        assert!(l.is_empty());
    }

    #[test]
    fn learning_is_bounded_and_survives_a_restart() {
        let mut l = Learned::default();
        let many: BTreeSet<Ipv4Addr> = (0..200u32).map(|i| Ipv4Addr::from(0xc000_0200 + i)).collect();
        for (i, ip) in many.iter().enumerate() {
            l.learn(&name("big.example"), &BTreeSet::from([*ip]), 10 + i as u32, 0);
        }
        let kept = &l.snapshot()[&name("big.example")];
        assert_eq!(kept.len(), MAX_PER_NAME);
        assert!(kept.contains(many.last().unwrap()), "the longest-lived are kept");
        for i in 0..(MAX_NAMES + 10) {
            l.learn(&name(&format!("n{i}.example")), &ips(&[[10, 0, 0, 1]]), 1 + i as u32, 0);
        }
        assert_eq!(l.snapshot().len(), MAX_NAMES);
        assert!(!l.snapshot().contains_key(&name("n0.example")), "the first to expire went");
        let dir = std::env::temp_dir().join(format!("netpol-learned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("learned.json");
        l.save(&path).unwrap();
        assert_eq!(Learned::load(&path).unwrap(), l);
        assert_eq!(Learned::load(&dir.join("none.json")).unwrap(), Learned::default());
        std::fs::write(&path, "{").unwrap();
        assert!(Learned::load(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_wildcard_pattern_keeps_its_share_of_names() {
        let mut l = Learned::default();
        let pattern = NameMatch::pattern("*.example.com").unwrap();
        let ip = BTreeSet::from([Ipv4Addr::new(198, 51, 100, 1)]);
        let other = Name::parse("songlaa.com").unwrap();
        l.learn(&other, &ip, 300, 0);
        for i in 0..MAX_NAMES_PER_PATTERN + 10 {
            let n = Name::parse(&format!("n{i}.example.com")).unwrap();
            l.learn(&n, &ip, 60 + i as u32, 0);
            l.bound_pattern(&pattern, &n);
        }
        let kept = l.snapshot();
        let matching = kept.keys().filter(|n| pattern.matches(n)).count();
        assert_eq!(matching, MAX_NAMES_PER_PATTERN);
        assert!(kept.contains_key(&other), "another pattern's name was crowded out");
        let last = Name::parse(&format!("n{}.example.com", MAX_NAMES_PER_PATTERN + 9)).unwrap();
        assert!(kept.contains_key(&last), "the name just learned went");
        assert!(!kept.contains_key(&Name::parse("n0.example.com").unwrap()), "the first to expire stayed");
        assert!(!l.bound_pattern(&NameMatch::name("n5.example.com").unwrap(), &last));
    }
}
