//! A whole datapath state in raw map terms: what the compiler produces and the datapath
//! syncs to.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use netpol_common::{Endpoint, IpcacheEntry, PolicyValue, ServiceKey, ServiceValue, EP_AUDIT};

use crate::entries::PolicyMapKey;

/// The datapath's contents in raw map terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    /// ifindex → endpoint (`policy_gen` is the datapath's business and ignored here).
    pub endpoints: BTreeMap<u32, Endpoint>,
    pub ipcache: BTreeMap<Ipv4Net, IpcacheEntry>,
    pub policy: BTreeMap<PolicyMapKey, PolicyValue>,
    /// Service frontends and backend slots (the socket hooks' `SERVICES`).
    pub services: BTreeMap<ServiceKey, ServiceValue>,
}

impl MapState {
    /// Whether the endpoint on `ifindex` is in audit mode (`EP_AUDIT`).
    pub fn audited(&self, ifindex: u32) -> bool {
        self.endpoints.get(&ifindex).is_some_and(|e| e.flags & EP_AUDIT != 0)
    }
}
