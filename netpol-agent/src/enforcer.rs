//! What the controller needs of a datapath, as a trait: the real one ([`Datapath`]), or
//! [`MemoryMaps`], an in-memory map state with which the controller and the sources are
//! tested without root or a kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use netpol_common::{DnsProxy, Endpoint};
use netpol_policy::state::MapState;

use crate::{
    datapath::{state::SyncReport, AttachMode, Counters, Datapath, DatapathError, SocketHooks, SOCKET_HOOKS},
    masquerade::{self, MasqueradeError},
    routing::{self, RouteChanges, RouteError},
};

pub trait Enforcer: Send + 'static {
    /// What the maps hold now.
    fn realized(&self) -> Result<MapState, DatapathError>;
    /// Makes the maps hold `st` and the programs sit on its endpoints' interfaces (`names`:
    /// ifindex → interface name); see [`Datapath::apply_state`].
    fn apply_state(
        &mut self,
        st: &MapState,
        names: &BTreeMap<u32, String>,
    ) -> Result<SyncReport, DatapathError>;
    /// The endpoint entry of `ifindex` when its programs are attached (it is enforced).
    fn enforced(&self, ifindex: u32) -> Result<Option<Endpoint>, DatapathError>;
    /// The datapath's per-reason counters, when it has any.
    fn counters(&self) -> Option<Counters>;
    /// Attaches (or takes over) the socket hooks for Services on a cgroup2 directory.
    fn attach_socket_hooks(&mut self, cgroup: &Path) -> Result<(), DatapathError>;
    /// Which socket hooks are in effect.
    fn socket_hooks(&self) -> SocketHooks;
    /// Destroys the connected UDP sockets the hooks translated to one of `gone`, in each of
    /// `namespaces`; returns how many.
    fn release_backends(&mut self, gone: &BTreeSet<SocketAddrV4>, namespaces: &BTreeSet<PathBuf>) -> usize;
    /// Makes netpol's routes to the other nodes' pod ranges exactly `routes` (range →
    /// node address).
    fn sync_routes(&mut self, routes: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<RouteChanges, RouteError>;
    /// Masquerades pod traffic from `cluster` that leaves it.
    fn masquerade(&mut self, cluster: Ipv4Net) -> Result<(), MasqueradeError>;
    /// Tells the programs where the DNS proxy listens (port 0: nowhere).
    fn set_dns_proxy(&mut self, proxy: DnsProxy) -> Result<(), DatapathError>;
    /// The outgoing connections conntrack holds alive now: the rule that allowed each, and
    /// its remote address.
    fn remotes_in_use(&self) -> Result<BTreeSet<(u32, Ipv4Addr)>, DatapathError>;
}

impl Enforcer for Datapath {
    fn realized(&self) -> Result<MapState, DatapathError> {
        Datapath::realized(self)
    }

    fn apply_state(
        &mut self,
        st: &MapState,
        names: &BTreeMap<u32, String>,
    ) -> Result<SyncReport, DatapathError> {
        Datapath::apply_state(self, st, names)
    }

    fn enforced(&self, ifindex: u32) -> Result<Option<Endpoint>, DatapathError> {
        let entry = self.endpoints()?.into_iter().find(|(i, _)| *i == ifindex).map(|(_, e)| e);
        // clsact filters have no pins to tell; netlink mode attaches on every sync.
        let attached = self.config().attach == AttachMode::Netlink || self.attached()?.contains(&ifindex);
        Ok(entry.filter(|_| attached))
    }

    fn counters(&self) -> Option<Counters> {
        Datapath::counters(self).ok()
    }

    fn attach_socket_hooks(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        self.attach_cgroup(cgroup)
    }

    fn socket_hooks(&self) -> SocketHooks {
        Datapath::socket_hooks(self)
    }

    fn release_backends(&mut self, gone: &BTreeSet<SocketAddrV4>, namespaces: &BTreeSet<PathBuf>) -> usize {
        Datapath::release_backends(self, gone, namespaces)
    }

    fn sync_routes(&mut self, routes: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<RouteChanges, RouteError> {
        routing::sync(routes)
    }

    fn masquerade(&mut self, cluster: Ipv4Net) -> Result<(), MasqueradeError> {
        masquerade::install(&self.config().name, cluster)
    }

    fn set_dns_proxy(&mut self, proxy: DnsProxy) -> Result<(), DatapathError> {
        Datapath::set_dns_proxy(self, proxy)
    }

    fn remotes_in_use(&self) -> Result<BTreeSet<(u32, Ipv4Addr)>, DatapathError> {
        Datapath::remotes_in_use(self)
    }
}

/// Maps in memory: `apply_state` stores the state and "attaches" its endpoints. Writes can
/// be made to fail, to test the controller's retries.
#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub state: MapState,
    pub attached: BTreeSet<u32>,
    /// Fail this many syncs from now on.
    pub fail_syncs: usize,
    pub syncs: usize,
    /// Where the socket hooks were attached.
    pub cgroup: Option<PathBuf>,
    /// Every backend released so far.
    pub released: BTreeSet<SocketAddrV4>,
    /// The routes to other nodes' pod ranges.
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// The masqueraded pod range.
    pub masquerade: Option<Ipv4Net>,
    pub dns_proxy: DnsProxy,
    /// What `remotes_in_use` answers (set by tests): (rule id, remote address).
    pub in_use: BTreeSet<(u32, Ipv4Addr)>,
}

impl Enforcer for MemoryMaps {
    fn realized(&self) -> Result<MapState, DatapathError> {
        Ok(self.state.clone())
    }

    fn apply_state(
        &mut self,
        st: &MapState,
        names: &BTreeMap<u32, String>,
    ) -> Result<SyncReport, DatapathError> {
        self.syncs += 1;
        if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            return Err(DatapathError::InvalidEntry("the in-memory maps were told to fail".into()));
        }
        if let Some(i) = st.endpoints.keys().find(|i| !names.contains_key(i)) {
            return Err(DatapathError::InvalidEntry(format!("no interface name for ifindex {i}")));
        }
        let count = |a: usize, b: usize| a.saturating_sub(b);
        let report = SyncReport {
            endpoints_upserted: st
                .endpoints
                .iter()
                .filter(|(k, v)| self.state.endpoints.get(k) != Some(v))
                .count(),
            endpoints_removed: count(self.state.endpoints.len(), st.endpoints.len()),
            ipcache_upserted: st.ipcache.iter().filter(|(k, v)| self.state.ipcache.get(k) != Some(v)).count(),
            policy_upserted: st.policy.iter().filter(|(k, v)| self.state.policy.get(k) != Some(v)).count(),
            policy_removed: self.state.policy.keys().filter(|k| !st.policy.contains_key(k)).count(),
            ..Default::default()
        };
        self.state = st.clone();
        self.attached = st.endpoints.keys().copied().collect();
        Ok(report)
    }

    fn enforced(&self, ifindex: u32) -> Result<Option<Endpoint>, DatapathError> {
        Ok(self.state.endpoints.get(&ifindex).copied().filter(|_| self.attached.contains(&ifindex)))
    }

    fn counters(&self) -> Option<Counters> {
        None
    }

    fn attach_socket_hooks(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        self.cgroup = Some(cgroup.to_path_buf());
        Ok(())
    }

    fn socket_hooks(&self) -> SocketHooks {
        let attached = if self.cgroup.is_some() { SOCKET_HOOKS.to_vec() } else { Vec::new() };
        SocketHooks { attached }
    }

    fn release_backends(&mut self, gone: &BTreeSet<SocketAddrV4>, _: &BTreeSet<PathBuf>) -> usize {
        self.released.extend(gone);
        0
    }

    fn sync_routes(&mut self, routes: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<RouteChanges, RouteError> {
        let changes = RouteChanges {
            added: routes.iter().filter(|(k, v)| self.routes.get(k) != Some(v)).count(),
            removed: self.routes.iter().filter(|(k, v)| routes.get(k) != Some(v)).count(),
            taken: Vec::new(),
        };
        self.routes = routes.clone();
        Ok(changes)
    }

    fn masquerade(&mut self, cluster: Ipv4Net) -> Result<(), MasqueradeError> {
        self.masquerade = Some(cluster);
        Ok(())
    }

    fn set_dns_proxy(&mut self, proxy: DnsProxy) -> Result<(), DatapathError> {
        self.dns_proxy = proxy;
        Ok(())
    }

    fn remotes_in_use(&self) -> Result<BTreeSet<(u32, Ipv4Addr)>, DatapathError> {
        Ok(self.in_use.clone())
    }
}
