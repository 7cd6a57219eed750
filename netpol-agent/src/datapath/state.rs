//! Desired vs realized datapath state, and the sync that moves one to the other.
//!
//! The sync orders its writes so that no flow both states allow is ever dropped on the way:
//! policy entries that allow traffic go in first, then ipcache changes (an address moving to
//! a new identity finds that identity's entries in place), then endpoint changes (new
//! isolation), then deletions, and only then the policy generations of the touched
//! endpoints are bumped —
//! after the deletions, so a flow re-checked in between cannot be re-approved by an entry
//! that is about to disappear.
//!
//! Fail closed: an entry that does not fit (a full map) does not stop the sync. Isolation
//! and every other write still happen, the deletions free room, the entries that failed are
//! tried once more, and only then is the sync reported failed — so a full map can cost an
//! allow, never an isolation.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use netpol_common::{Endpoint, IpcacheEntry, PolicyValue};
use netpol_policy::state::MapState;
use serde::{Deserialize, Serialize};

use super::{attach, Datapath, DatapathError, EndpointSpec, IpcacheSpec, PolicyEntry, PolicyMapKey, Result};

/// A policy entry with the id of the rule it came from: the entry's fields plus `ruleId`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    #[serde(flatten)]
    pub entry: PolicyEntry,
    pub rule_id: u32,
}

// By hand, because serde's flatten would let unknown fields (typos) through silently.
impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::deserialize(d)?;
        let rule_id = match map.remove("ruleId") {
            Some(v) => serde_json::from_value(v).map_err(D::Error::custom)?,
            None => 0,
        };
        let entry = serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        Ok(RuleSpec { entry, rule_id })
    }
}

/// A whole datapath state in typed form (the `datapath apply -f` file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredState {
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub ipcache: Vec<IpcacheSpec>,
    #[serde(default)]
    pub policy: Vec<RuleSpec>,
}

impl DesiredState {
    /// Validates and translates to map terms; interface names are resolved here.
    pub fn compile(&self) -> Result<MapState> {
        let mut st = MapState::default();
        let mut ids = BTreeSet::new();
        for ep in &self.endpoints {
            if !ids.insert(ep.id) {
                return Err(DatapathError::InvalidEntry(format!("endpoint id {} used twice", ep.id)));
            }
            let index = attach::ifindex(&ep.interface)?;
            let raw = Endpoint {
                ep_id: ep.id,
                ip: u32::from_ne_bytes(ep.ip.octets()),
                identity: ep.identity,
                flags: ep.flags(),
                ..Default::default()
            };
            if st.endpoints.insert(index, raw).is_some() {
                return Err(DatapathError::InvalidEntry(format!("interface {} used twice", ep.interface)));
            }
        }
        for c in &self.ipcache {
            let e =
                IpcacheEntry { identity: c.identity, cidr_identity: c.cidr_identity.unwrap_or(c.identity) };
            st.ipcache.insert(c.cidr.trunc(), e);
        }
        for r in &self.policy {
            for k in r.entry.map_keys()? {
                st.policy.insert(k, PolicyValue { rule_id: r.rule_id, flags: 0 });
            }
        }
        Ok(st)
    }
}

/// What a sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub endpoints_upserted: usize,
    pub endpoints_removed: usize,
    pub ipcache_upserted: usize,
    pub ipcache_removed: usize,
    pub policy_upserted: usize,
    pub policy_removed: usize,
    pub services_upserted: usize,
    pub services_removed: usize,
    pub generations_bumped: usize,
    pub attached: usize,
    pub detached: usize,
}

impl SyncReport {
    pub fn is_noop(&self) -> bool {
        *self == SyncReport::default()
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoints +{}/-{}, ipcache +{}/-{}, policy +{}/-{}, services +{}/-{}, re-checked endpoints {}, attached {}, detached {}",
            self.endpoints_upserted,
            self.endpoints_removed,
            self.ipcache_upserted,
            self.ipcache_removed,
            self.policy_upserted,
            self.policy_removed,
            self.services_upserted,
            self.services_removed,
            self.generations_bumped,
            self.attached,
            self.detached
        )
    }
}

fn without_gen(ep: &Endpoint) -> Endpoint {
    Endpoint { policy_gen: 0, ..*ep }
}

impl Datapath {
    /// What the maps hold now.
    pub fn realized(&self) -> Result<MapState> {
        Ok(MapState {
            endpoints: self.endpoints()?.into_iter().collect(),
            ipcache: self.ipcache()?.into_iter().collect(),
            policy: self.policy_keys()?.into_iter().collect(),
            services: self.services()?,
        })
    }

    /// Makes the maps hold `desired`, touching only what differs.
    pub fn sync(&mut self, desired: &MapState) -> Result<SyncReport> {
        let cur = self.realized()?;
        let mut report = SyncReport::default();
        let mut bump_all = false;
        let mut bump = BTreeSet::new();

        // Entries first: an address may move to a new identity below, and that identity's
        // entries must already be there when it does.
        let mut failed = Vec::new();
        for (k, v) in &desired.policy {
            if cur.policy.get(k) != Some(v) {
                match self.put_policy_key(*k, *v) {
                    Ok(()) => report.policy_upserted += 1,
                    Err(e) => failed.push((*k, *v, e)),
                }
            }
        }
        for (net, e) in &desired.ipcache {
            if cur.ipcache.get(net) != Some(e) {
                bump_all |= self.put_ipcache(*net, *e)?;
                report.ipcache_upserted += 1;
            }
        }
        for (index, ep) in &desired.endpoints {
            if cur.endpoints.get(index).map(without_gen) != Some(without_gen(ep)) {
                self.put_endpoint(*index, *ep)?;
                report.endpoints_upserted += 1;
            }
        }
        // Services after the ipcache knows their ClusterIPs and backends.
        let (written, removed) = self.sync_services(&desired.services)?;
        report.services_upserted = written;
        report.services_removed = removed;

        for k in cur.policy.keys().filter(|k| !desired.policy.contains_key(k)) {
            self.delete_policy_key(*k)?;
            bump.insert(match k {
                PolicyMapKey::Exact(k) => k.ep_id,
                PolicyMapKey::Range(k, _) => k.ep_id,
            });
            report.policy_removed += 1;
        }
        for net in cur.ipcache.keys().filter(|n| !desired.ipcache.contains_key(n)) {
            self.delete_ipcache(*net)?;
            bump_all = true;
            report.ipcache_removed += 1;
        }
        for index in cur.endpoints.keys().filter(|i| !desired.endpoints.contains_key(i)) {
            self.remove_endpoint(*index)?;
            report.endpoints_removed += 1;
        }

        if bump_all {
            self.bump_generations(None)?;
            report.generations_bumped = desired.endpoints.len();
        } else if !bump.is_empty() {
            self.bump_generations(Some(&bump))?;
            report.generations_bumped = bump.len();
        }
        self.retry_policy_keys(failed, &mut report)?;
        Ok(report)
    }

    /// The entries that did not fit before the deletions, once more.
    fn retry_policy_keys(
        &mut self,
        failed: Vec<(PolicyMapKey, PolicyValue, DatapathError)>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let total = failed.len();
        let mut first_error = None;
        let mut missing = 0;
        for (k, v, e) in failed {
            match self.put_policy_key(k, v) {
                Ok(()) => report.policy_upserted += 1,
                Err(_) => {
                    missing += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(DatapathError::Incomplete { missing, tried: total, source: Box::new(e) }),
        }
    }

    /// Syncs the maps to `desired` and attaches its endpoints' interfaces; interfaces of
    /// endpoints that are gone are detached.
    pub fn apply(&mut self, desired: &DesiredState) -> Result<SyncReport> {
        let st = desired.compile()?;
        let names = desired
            .endpoints
            .iter()
            .map(|ep| Ok((attach::ifindex(&ep.interface)?, ep.interface.clone())))
            .collect::<Result<BTreeMap<_, _>>>()?;
        self.apply_state(&st, &names)
    }

    /// Syncs the maps to `st`, then attaches the programs to every endpoint's interface
    /// (`names`: ifindex → name) and detaches them from interfaces whose endpoint is gone.
    /// Endpoint entries are written before the programs go on: an attached program without
    /// its entry would drop everything.
    pub fn apply_state(&mut self, st: &MapState, names: &BTreeMap<u32, String>) -> Result<SyncReport> {
        let before: BTreeSet<u32> = self.endpoints()?.into_iter().map(|(i, _)| i).collect();
        let attached_before: BTreeSet<u32> = self.attached()?.into_iter().collect();
        let mut report = self.sync(st)?;
        for index in st.endpoints.keys() {
            let name = names.get(index).ok_or_else(|| {
                DatapathError::InvalidEntry(format!("no interface name for ifindex {index}"))
            })?;
            // A pinned TCX link is already there (and was moved to this datapath's programs
            // when it opened); clsact filters have no pins to tell, so re-attach (replace).
            let pinned = attached_before.contains(index);
            if !pinned || self.config().attach == attach::AttachMode::Netlink {
                self.attach(name)?;
            }
            if !pinned {
                report.attached += 1;
            }
        }
        for index in before.iter().filter(|i| !st.endpoints.contains_key(i)) {
            if let Some(name) = attach::ifname(*index) {
                self.detach(&name)?;
                report.detached += 1;
            }
        }
        Ok(report)
    }
}

/// Parses a desired-state file (JSON), naming the field at fault.
pub fn parse_state(text: &str) -> Result<DesiredState, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_reject_unknown_and_bad_fields() {
        assert!(parse_state(r#"{"endpoints":[],"polcy":[]}"#).unwrap_err().contains("polcy"));
        let e = parse_state(r#"{"policy":[{"endpoint":1,"direction":"sideways"}]}"#).unwrap_err();
        assert!(e.contains("sideways"), "{e}");
        let e = parse_state(r#"{"policy":[{"endpoint":1,"direction":"ingress","prot":"TCP"}]}"#).unwrap_err();
        assert!(e.contains("prot"), "{e}");
        let ok = parse_state(
            r#"{"ipcache":[{"cidr":"10.0.0.0/8","identity":16777216}],
                "policy":[{"endpoint":1,"direction":"ingress","peer":256,"protocol":"TCP","port":80,"ruleId":7}]}"#,
        )
        .unwrap();
        assert_eq!(ok.policy[0].rule_id, 7);
        let st = ok.compile().unwrap();
        assert_eq!(st.policy.len(), 1);
        assert_eq!(st.ipcache.len(), 1);
    }
}
