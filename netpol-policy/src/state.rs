//! A whole datapath state in raw map terms: what the compiler produces and the datapath
//! syncs to.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use netpol_common::{Endpoint, IpcacheEntry, PolicyValue, ServiceKey, ServiceValue};

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
