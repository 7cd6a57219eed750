//! The datapath: the TC programs of netpol-ebpf and its socket hooks for Services, their
//! maps pinned under one bpffs directory, their links, and a typed API to program them.
//!
//! Opening a datapath never detaches or empties anything: maps are reused from their pins,
//! and the programs behind existing links are swapped atomically for this binary's
//! (BPF_LINK_UPDATE), so a restarted agent takes over with no unfiltered window.

mod attach;
mod bpffs;
pub mod debuglog;
pub mod events;
mod services;
pub mod state;

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
use ipnet::Ipv4Net;
use netpol_common::{
    counter, local_slot, maps, programs, sizes, CtKey, CtValue, Endpoint, Event, FragKey, FragValue,
    IpcacheEntry, LocalSlot, PolicyKey, PolicyValue, RangeKey, RevNatKey, RevNatValue, ServiceKey,
    ServiceValue, LAYOUT_VERSION, LOCAL_SLOT_SHARED,
};

pub use attach::{ifindex, ifname, remove_pins, AttachMode, Hook};
pub use bpffs::ensure_mounted as mount_bpffs;
pub use netpol_policy::entries::{
    port_blocks, proto_name, Direction, EndpointSpec, IpcacheSpec, PolicyEntry, PolicyMapKey, Protocol,
};
pub use services::{cgroup_programs, SocketHooks, HOOKS as SOCKET_HOOKS};

/// The eBPF object, built from netpol-ebpf by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpol.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("bpffs at {path}: {msg}")]
    Bpffs { path: PathBuf, msg: String },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error(
        "pinned map {path} has key/value/max_entries {found:?}, this build expects {expected:?}; \
         a datapath of another layout is pinned there"
    )]
    Layout { path: PathBuf, found: (u32, u32, u32), expected: (u32, u32, u32) },
    #[error("program {prog}: {source}")]
    Program { prog: &'static str, source: ProgramError },
    #[error("interface {name}: {msg}")]
    Interface { name: String, msg: String },
    #[error("link {path}: {msg}")]
    Link { path: PathBuf, msg: String },
    #[error("invalid entry: {0}")]
    InvalidEntry(String),
    #[error(transparent)]
    Entry(#[from] netpol_policy::entries::EntryError),
    /// A sync wrote everything else (isolation included) but `missing` allow entries.
    #[error("{missing} of {tried} policy entries could not be written (isolation is in place): {source}")]
    Incomplete { missing: usize, tried: usize, source: Box<DatapathError> },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Io { path: path.to_path_buf(), source }
}

/// Where the datapath lives and how it attaches.
#[derive(Clone, Debug)]
pub struct Config {
    /// bpffs mount point; mounted if nothing is mounted there.
    pub bpffs: PathBuf,
    /// Directory under `bpffs` for this node's datapath (tests use their own).
    pub name: String,
    pub attach: AttachMode,
    /// Whether the programs may log debug steps (for endpoints switched to `EP_DEBUG`).
    /// False loads them with `AYA_LOG_LEVEL` 0: the verifier drops every step (the
    /// benchmark's baseline for what the steps cost while off).
    pub debug_steps: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bpffs: PathBuf::from("/sys/fs/bpf"),
            name: "netpol".into(),
            attach: AttachMode::Auto,
            debug_steps: true,
        }
    }
}

impl Config {
    /// The root of everything this datapath pins.
    pub fn root(&self) -> PathBuf {
        self.bpffs.join(&self.name)
    }

    /// Pins are versioned with the map layout: a build with another layout gets its own
    /// directory instead of silently reusing maps it would misread.
    pub fn pin_dir(&self) -> PathBuf {
        self.root().join(format!("v{LAYOUT_VERSION}"))
    }
}

/// The expected (key size, value size, max_entries) of every map, to check reused pins.
fn expected_layout(name: &str) -> (u32, u32, u32) {
    use std::mem::size_of;
    let s = |k: usize, v: usize, n: u32| (k as u32, v as u32, n);
    match name {
        maps::ENDPOINTS => s(4, size_of::<Endpoint>(), sizes::ENDPOINTS),
        maps::ENDPOINT_IPS => s(4, 4, sizes::ENDPOINT_IPS),
        maps::LOCAL_SLOTS => s(4, size_of::<LocalSlot>(), sizes::LOCAL_SLOTS),
        maps::IPCACHE => s(4, size_of::<IpcacheEntry>(), sizes::IPCACHE),
        maps::IPCACHE_LPM => s(8, size_of::<IpcacheEntry>(), sizes::IPCACHE_LPM),
        maps::POLICY => s(size_of::<PolicyKey>(), size_of::<PolicyValue>(), sizes::POLICY),
        maps::POLICY_RANGES => s(4 + size_of::<RangeKey>(), size_of::<PolicyValue>(), sizes::POLICY_RANGES),
        maps::CONNTRACK => s(size_of::<CtKey>(), size_of::<CtValue>(), sizes::CONNTRACK),
        maps::FRAGMENTS => s(size_of::<FragKey>(), size_of::<FragValue>(), sizes::FRAGMENTS),
        maps::EVENTS => s(0, 0, sizes::EVENTS_BYTES),
        maps::COUNTERS => s(4, 8, counter::COUNT),
        maps::SERVICES => s(size_of::<ServiceKey>(), size_of::<ServiceValue>(), sizes::SERVICES),
        maps::SOCK_REV_NAT => s(size_of::<RevNatKey>(), size_of::<RevNatValue>(), sizes::SOCK_REV_NAT),
        maps::DNS_PROXY => s(4, size_of::<netpol_common::DnsProxy>(), 1),
        maps::EVENT_BUCKETS => s(
            size_of::<netpol_common::EventBucketKey>(),
            size_of::<netpol_common::EventBucket>(),
            sizes::EVENT_BUCKETS,
        ),
        other => unreachable!("unknown map {other}"),
    }
}

/// Per-reason packet counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub Vec<u64>);

impl Counters {
    pub fn reason(&self, r: u8) -> u64 {
        self.0[r as usize]
    }
    pub fn events_lost(&self) -> u64 {
        self.0[counter::EVENTS_LOST as usize]
    }
    pub fn events_rate_limited(&self) -> u64 {
        self.0[counter::EVENTS_RATE_LIMITED as usize]
    }

    /// Packets audit mode let pass that the policies would have dropped.
    pub fn audited(&self) -> u64 {
        self.0[counter::AUDITED as usize]
    }

    pub fn ct_insert_failed(&self) -> u64 {
        self.0[counter::CT_INSERT_FAILED as usize]
    }
    /// Every named counter with its value.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let names = netpol_common::reason::NAMES.iter().chain(counter::NAMES.iter());
        names.copied().zip(self.0.iter().copied()).collect()
    }
}

pub struct Datapath {
    cfg: Config,
    pin_dir: PathBuf,
    bpf: Ebpf,
    endpoints: HashMap<MapData, u32, Endpoint>,
    /// Pod address (network order) → ifindex: where packets from that address must come from.
    endpoint_ips: HashMap<MapData, u32, u32>,
    /// `endpoint_ips`, direct-mapped (see netpol_common::maps::LOCAL_SLOTS).
    local_slots: Array<MapData, LocalSlot>,
    ipcache: HashMap<MapData, u32, IpcacheEntry>,
    ipcache_lpm: LpmTrie<MapData, u32, IpcacheEntry>,
    policy: HashMap<MapData, PolicyKey, PolicyValue>,
    ranges: LpmTrie<MapData, RangeKey, PolicyValue>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    rev_nat: HashMap<MapData, RevNatKey, RevNatValue>,
    dns_proxy: Array<MapData, netpol_common::DnsProxy>,
    /// The programs' debug steps (aya-log), until the agent takes them.
    debug_log: Option<debuglog::DebugLog>,
    /// The cgroup2 directory the socket hooks were attached to by this process.
    cgroup: Option<PathBuf>,
}

impl Datapath {
    /// Loads the programs, creating or reopening the pinned maps, and moves every existing
    /// link of this datapath to the freshly loaded programs: what the agent does when it
    /// takes over.
    pub fn open(cfg: Config) -> Result<Self> {
        let mut dp = Datapath::load(cfg)?;
        dp.relink()?;
        Ok(dp)
    }

    /// Reopens a pinned datapath to look at it, changing nothing: no link is moved to this
    /// binary's programs, and no map or directory is created (a missing pin is an error).
    pub fn inspect(cfg: Config) -> Result<Self> {
        let pin_dir = cfg.pin_dir();
        for path in maps::ALL.iter().map(|m| pin_dir.join(m)).chain([pin_dir.join("links")]) {
            if !path.exists() {
                return Err(DatapathError::Io {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "not pinned"),
                });
            }
        }
        Datapath::load(cfg)
    }

    fn load(cfg: Config) -> Result<Self> {
        bpffs::ensure_mounted(&cfg.bpffs)?;
        let pin_dir = cfg.pin_dir();
        let links = pin_dir.join("links");
        std::fs::create_dir_all(&links).map_err(io_err(&links))?;
        for name in maps::ALL {
            let path = pin_dir.join(name);
            if path.exists() {
                let info = MapData::from_pin(&path).and_then(|m| m.info()).map_err(map_err(name))?;
                let found = (info.key_size(), info.value_size(), info.max_entries());
                let expected = expected_layout(name);
                if found != expected {
                    return Err(DatapathError::Layout { path, found, expected });
                }
            }
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_dir);
        if !cfg.debug_steps {
            loader.override_global(debuglog::LEVEL_GLOBAL, &0u8, true);
        }
        let mut bpf = loader.load(OBJECT)?;
        for name in [programs::FROM_POD, programs::TO_POD, programs::PASS] {
            classifier(&mut bpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { prog: name, source })?;
        }
        for name in services::HOOKS {
            services::sock_program(&mut bpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { prog: name, source })?;
        }
        let mut take = |name: &'static str| {
            bpf.take_map(name)
                .ok_or(DatapathError::Map { map: name, source: MapError::InvalidName { name: name.into() } })
        };
        let endpoints = HashMap::try_from(take(maps::ENDPOINTS)?).map_err(map_err(maps::ENDPOINTS))?;
        let endpoint_ips =
            HashMap::try_from(take(maps::ENDPOINT_IPS)?).map_err(map_err(maps::ENDPOINT_IPS))?;
        let local_slots = Array::try_from(take(maps::LOCAL_SLOTS)?).map_err(map_err(maps::LOCAL_SLOTS))?;
        let ipcache = HashMap::try_from(take(maps::IPCACHE)?).map_err(map_err(maps::IPCACHE))?;
        let ipcache_lpm = LpmTrie::try_from(take(maps::IPCACHE_LPM)?).map_err(map_err(maps::IPCACHE_LPM))?;
        let policy = HashMap::try_from(take(maps::POLICY)?).map_err(map_err(maps::POLICY))?;
        let ranges = LpmTrie::try_from(take(maps::POLICY_RANGES)?).map_err(map_err(maps::POLICY_RANGES))?;
        let conntrack = HashMap::try_from(take(maps::CONNTRACK)?).map_err(map_err(maps::CONNTRACK))?;
        let counters = PerCpuArray::try_from(take(maps::COUNTERS)?).map_err(map_err(maps::COUNTERS))?;
        let events = Some(RingBuf::try_from(take(maps::EVENTS)?).map_err(map_err(maps::EVENTS))?);
        let services = HashMap::try_from(take(maps::SERVICES)?).map_err(map_err(maps::SERVICES))?;
        let rev_nat = HashMap::try_from(take(maps::SOCK_REV_NAT)?).map_err(map_err(maps::SOCK_REV_NAT))?;
        let dns_proxy = Array::try_from(take(maps::DNS_PROXY)?).map_err(map_err(maps::DNS_PROXY))?;
        let debug_log = debuglog::DebugLog::take(&mut bpf);
        Ok(Datapath {
            cfg,
            pin_dir,
            bpf,
            endpoints,
            endpoint_ips,
            local_slots,
            ipcache,
            ipcache_lpm,
            policy,
            ranges,
            conntrack,
            counters,
            events,
            services,
            rev_nat,
            dns_proxy,
            debug_log,
            cgroup: None,
        })
    }

    /// Where the DNS proxy listens (port 0: none; flows for it are then dropped).
    pub fn set_dns_proxy(&mut self, proxy: netpol_common::DnsProxy) -> Result<()> {
        self.dns_proxy.set(0, proxy, 0).map_err(map_err(maps::DNS_PROXY))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn program(&mut self, hook: Hook) -> Result<&mut SchedClassifier> {
        classifier(&mut self.bpf, hook.program())
    }

    /// Runs one of the programs on a packet through BPF_PROG_TEST_RUN (the skb arrives on
    /// the loopback device, ifindex 1, of the caller's network namespace).
    pub fn test_run(&mut self, hook: Hook, packet: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let prog = self.program(hook)?;
        let r = prog
            .test_run(TestRunOptions { data_in: Some(packet), repeat, ..Default::default() })
            .map_err(|source| DatapathError::Program { prog: hook.program(), source })?;
        Ok((r.return_value, r.duration))
    }

    /// The cumulative run time and run count of one of the programs: what real traffic
    /// costs per invocation. The kernel counts only while BPF run-time statistics are on
    /// (`aya::sys::enable_stats(Stats::RunTime)`, or kernel.bpf_stats_enabled).
    pub fn program_stats(&mut self, hook: Hook) -> Result<(Duration, u64)> {
        let info = self
            .program(hook)?
            .info()
            .map_err(|source| DatapathError::Program { prog: hook.program(), source })?;
        Ok((info.run_time(), info.run_count()))
    }

    // ---------------------------------------------------------------- endpoints

    /// Adds or updates the endpoint of `spec.interface` (which must exist here).
    pub fn upsert_endpoint(&mut self, spec: &EndpointSpec) -> Result<u32> {
        let ifindex = attach::ifindex(&spec.interface)?;
        let ep = Endpoint {
            ep_id: spec.id,
            ip: u32::from_ne_bytes(spec.ip.octets()),
            identity: spec.identity,
            flags: spec.flags(),
            ..Default::default()
        };
        self.put_endpoint(ifindex, ep)?;
        Ok(ifindex)
    }

    /// Writes an endpoint, keeping its policy generation; a change that can only take
    /// traffic away (a new isolation, audit mode ending, another id or address) bumps it so
    /// established flows are re-checked.
    /// The endpoint's address is bound to its interface first, so it is never enforced
    /// without its anti-spoofing binding.
    pub(crate) fn put_endpoint(&mut self, ifindex: u32, mut ep: Endpoint) -> Result<()> {
        ep.policy_gen = 0;
        let old = self.endpoints.get(&ifindex, 0).ok();
        if self.endpoint_ips.get(&ep.ip, 0).ok() != Some(ifindex) {
            self.endpoint_ips.insert(ep.ip, ifindex, 0).map_err(map_err(maps::ENDPOINT_IPS))?;
            self.refresh_slot(local_slot(ep.ip))?;
        }
        if let Some(old) = old {
            ep.policy_gen = old.policy_gen;
            if netpol_common::flags_tighten(old.flags, ep.flags) || ep.ep_id != old.ep_id || ep.ip != old.ip {
                ep.policy_gen = old.policy_gen.wrapping_add(1);
            }
            if old == ep {
                return Ok(());
            }
        }
        self.endpoints.insert(ifindex, ep, 0).map_err(map_err(maps::ENDPOINTS))?;
        match old {
            Some(old) if old.ip != ep.ip => self.unbind_ip(old.ip, ifindex),
            _ => Ok(()),
        }
    }

    /// Forgets that `ip` belongs to `ifindex`, unless another endpoint has taken it since.
    fn unbind_ip(&mut self, ip: u32, ifindex: u32) -> Result<()> {
        if self.endpoint_ips.get(&ip, 0).ok() == Some(ifindex) {
            remove_quiet(&mut self.endpoint_ips, &ip, maps::ENDPOINT_IPS)?;
            self.refresh_slot(local_slot(ip))?;
        }
        Ok(())
    }

    /// Rewrites a direct-mapped slot from `endpoint_ips` (which is written first, so a
    /// shared slot always finds its addresses there).
    fn refresh_slot(&mut self, slot: u32) -> Result<()> {
        // A read error must not make a shared slot look owned by one address (the other
        // would then pass as not local): it fails the write instead.
        let all = self.endpoint_ips()?;
        let mut owners = all
            .into_iter()
            .map(|(ip, ifindex)| (u32::from_ne_bytes(ip.octets()), ifindex))
            .filter(|(ip, _)| local_slot(*ip) == slot);
        let value = match (owners.next(), owners.next()) {
            (None, _) => LocalSlot::default(),
            (Some((ip, ifindex)), None) => LocalSlot { ip, ifindex },
            (Some(_), Some(_)) => LocalSlot { ip: 0, ifindex: LOCAL_SLOT_SHARED },
        };
        self.local_slots.set(slot, value, 0).map_err(map_err(maps::LOCAL_SLOTS))
    }

    /// The address → interface bindings the programs check sources against.
    pub fn endpoint_ips(&self) -> Result<Vec<(Ipv4Addr, u32)>> {
        let mut out = Vec::new();
        for kv in self.endpoint_ips.iter() {
            let (ip, ifindex) = kv.map_err(map_err(maps::ENDPOINT_IPS))?;
            out.push((Ipv4Addr::from(ip.to_ne_bytes()), ifindex));
        }
        out.sort();
        Ok(out)
    }

    /// Removes the endpoint on `ifindex` with its policy entries and conntrack entries.
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        let ep = match self.endpoints.get(&ifindex, 0) {
            Ok(ep) => ep,
            Err(MapError::KeyNotFound) => return Ok(()),
            Err(e) => return Err(map_err(maps::ENDPOINTS)(e)),
        };
        remove_quiet(&mut self.endpoints, &ifindex, maps::ENDPOINTS)?;
        self.unbind_ip(ep.ip, ifindex)?;
        let keys: Vec<PolicyKey> =
            self.policy.keys().filter_map(|k| k.ok()).filter(|k| k.ep_id == ep.ep_id).collect();
        for k in keys {
            remove_quiet(&mut self.policy, &k, maps::POLICY)?;
        }
        let keys: Vec<Key<RangeKey>> =
            self.ranges.keys().filter_map(|k| k.ok()).filter(|k| k.data().ep_id == ep.ep_id).collect();
        for k in keys {
            remove_lpm_quiet(&mut self.ranges, &k, maps::POLICY_RANGES)?;
        }
        self.flush_conntrack(Some(ep.ep_id))
    }

    pub fn endpoints(&self) -> Result<Vec<(u32, Endpoint)>> {
        self.endpoints.iter().collect::<Result<_, _>>().map_err(map_err(maps::ENDPOINTS))
    }

    /// Bumps the policy generation of the endpoints with these ids (all when `None`).
    pub(crate) fn bump_generations(&mut self, ep_ids: Option<&BTreeSet<u32>>) -> Result<()> {
        for (ifindex, mut ep) in self.endpoints()? {
            if ep_ids.is_none_or(|ids| ids.contains(&ep.ep_id)) {
                ep.policy_gen = ep.policy_gen.wrapping_add(1);
                self.endpoints.insert(ifindex, ep, 0).map_err(map_err(maps::ENDPOINTS))?;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- ipcache

    /// Adds or updates the identities of a prefix. /32s go to the exact map, shorter
    /// prefixes to the LPM trie; changing an existing entry re-checks every flow.
    pub fn upsert_ipcache(&mut self, spec: &IpcacheSpec) -> Result<()> {
        let entry = IpcacheEntry {
            identity: spec.identity,
            cidr_identity: spec.cidr_identity.unwrap_or(spec.identity),
        };
        let changed = self.put_ipcache(spec.cidr, entry)?;
        if changed {
            self.bump_generations(None)?;
        }
        Ok(())
    }

    /// Writes an ipcache entry; true when it replaced a different one.
    pub(crate) fn put_ipcache(&mut self, cidr: Ipv4Net, entry: IpcacheEntry) -> Result<bool> {
        let cidr = cidr.trunc();
        let addr = u32::from_ne_bytes(cidr.addr().octets());
        if cidr.prefix_len() == 32 {
            let old = self.ipcache.get(&addr, 0).ok();
            if old != Some(entry) {
                self.ipcache.insert(addr, entry, 0).map_err(map_err(maps::IPCACHE))?;
            }
            Ok(old.is_some_and(|o| o != entry))
        } else {
            let key = Key::new(cidr.prefix_len() as u32, addr);
            let old = self.ipcache_lpm.get(&key, 0).ok();
            if old != Some(entry) {
                self.ipcache_lpm.insert(&key, entry, 0).map_err(map_err(maps::IPCACHE_LPM))?;
            }
            Ok(old.is_some_and(|o| o != entry))
        }
    }

    pub fn remove_ipcache(&mut self, cidr: Ipv4Net) -> Result<()> {
        if self.delete_ipcache(cidr)? {
            self.bump_generations(None)?;
        }
        Ok(())
    }

    /// Deletes an ipcache entry; true when there was one.
    pub(crate) fn delete_ipcache(&mut self, cidr: Ipv4Net) -> Result<bool> {
        let cidr = cidr.trunc();
        let addr = u32::from_ne_bytes(cidr.addr().octets());
        if cidr.prefix_len() == 32 {
            remove_quiet(&mut self.ipcache, &addr, maps::IPCACHE)
        } else {
            remove_lpm_quiet(
                &mut self.ipcache_lpm,
                &Key::new(cidr.prefix_len() as u32, addr),
                maps::IPCACHE_LPM,
            )
        }
    }

    pub fn ipcache(&self) -> Result<Vec<(Ipv4Net, IpcacheEntry)>> {
        let mut out = Vec::new();
        for kv in self.ipcache.iter() {
            let (addr, e) = kv.map_err(map_err(maps::IPCACHE))?;
            out.push((Ipv4Net::new(Ipv4Addr::from(addr.to_ne_bytes()), 32).unwrap(), e));
        }
        for kv in self.ipcache_lpm.iter() {
            let (k, e) = kv.map_err(map_err(maps::IPCACHE_LPM))?;
            let net = Ipv4Net::new(Ipv4Addr::from(k.data().to_ne_bytes()), k.prefix_len() as u8)
                .map_err(|e| DatapathError::InvalidEntry(e.to_string()))?;
            out.push((net, e));
        }
        out.sort();
        Ok(out)
    }

    // ---------------------------------------------------------------- policy

    /// Adds (or re-labels with `rule_id`) an allow entry.
    pub fn add_policy(&mut self, entry: &PolicyEntry, rule_id: u32) -> Result<()> {
        self.add_policy_value(entry, PolicyValue { rule_id, flags: 0 })
    }

    /// Adds an entry with its whole value (`flags`: `POLICY_DNS_PROXY`).
    pub fn add_policy_value(&mut self, entry: &PolicyEntry, value: PolicyValue) -> Result<()> {
        for k in entry.map_keys()? {
            self.put_policy_key(k, value)?;
        }
        Ok(())
    }

    /// Removes an allow entry; established flows of the endpoint are re-checked.
    pub fn remove_policy(&mut self, entry: &PolicyEntry) -> Result<()> {
        for k in entry.map_keys()? {
            self.delete_policy_key(k)?;
        }
        self.bump_generations(Some(&BTreeSet::from([entry.endpoint])))
    }

    pub(crate) fn put_policy_key(&mut self, k: PolicyMapKey, v: PolicyValue) -> Result<()> {
        match k {
            PolicyMapKey::Exact(k) => self.policy.insert(k, v, 0).map_err(map_err(maps::POLICY)),
            PolicyMapKey::Range(k, len) => {
                self.ranges.insert(&Key::new(len, k), v, 0).map_err(map_err(maps::POLICY_RANGES))
            }
        }
    }

    pub(crate) fn delete_policy_key(&mut self, k: PolicyMapKey) -> Result<bool> {
        match k {
            PolicyMapKey::Exact(k) => remove_quiet(&mut self.policy, &k, maps::POLICY),
            PolicyMapKey::Range(k, len) => {
                remove_lpm_quiet(&mut self.ranges, &Key::new(len, k), maps::POLICY_RANGES)
            }
        }
    }

    /// Every raw policy key with its value.
    pub fn policy_keys(&self) -> Result<Vec<(PolicyMapKey, PolicyValue)>> {
        let mut out = Vec::new();
        for kv in self.policy.iter() {
            let (k, v) = kv.map_err(map_err(maps::POLICY))?;
            out.push((PolicyMapKey::Exact(k), v));
        }
        for kv in self.ranges.iter() {
            let (k, v) = kv.map_err(map_err(maps::POLICY_RANGES))?;
            out.push((PolicyMapKey::Range(k.data(), k.prefix_len()), v));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    // ---------------------------------------------------------------- conntrack, counters, events

    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>> {
        self.conntrack.iter().collect::<Result<_, _>>().map_err(map_err(maps::CONNTRACK))
    }

    /// The live outgoing conntrack entries (not past their timeout; a revoked flow is not
    /// alive): the rule that allowed each, and its remote address.
    pub fn remotes_in_use(&self) -> Result<std::collections::BTreeSet<(u32, std::net::Ipv4Addr)>> {
        let now = monotonic_coarse_ns();
        Ok(self
            .conntrack()?
            .into_iter()
            .filter(|(k, v)| {
                v.dir == netpol_common::DIR_EGRESS
                    && v.flags & netpol_common::CT_REVOKED == 0
                    && now.saturating_sub(v.last_seen) <= netpol_common::ct_timeout_ns(k.proto, v.flags)
            })
            .map(|(k, v)| (v.rule_id, std::net::Ipv4Addr::from(k.remote_addr.to_ne_bytes())))
            .collect())
    }

    /// Deletes the conntrack entries of one endpoint, or all of them.
    pub fn flush_conntrack(&mut self, ep_id: Option<u32>) -> Result<()> {
        let keys: Vec<CtKey> = self
            .conntrack
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| ep_id.is_none_or(|id| k.ep_id == id))
            .collect();
        for k in keys {
            remove_quiet(&mut self.conntrack, &k, maps::CONNTRACK)?;
        }
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters> {
        let mut out = vec![0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self.counters.get(&(i as u32), 0).map_err(map_err(maps::COUNTERS))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(Counters(out))
    }

    /// Hands the event ring buffer to a consumer (see [`events::EventStream`]).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The programs' debug steps, for the agent's reader ([`crate::monitor::consume_debug`]).
    pub fn take_debug_log(&mut self) -> Option<debuglog::DebugLog> {
        self.debug_log.take()
    }

    /// Reads every event waiting in the ring buffer, without blocking.
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.as_mut().map(events::drain).unwrap_or_default()
    }
}

fn classifier<'a>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    let prog = bpf
        .program_mut(name)
        .ok_or(DatapathError::Program { prog: name, source: ProgramError::NotLoaded })?;
    prog.try_into().map_err(|source| DatapathError::Program { prog: name, source })
}

/// A removal's outcome: true when the key was there, false when it was not.
fn removed(r: std::result::Result<(), MapError>, name: &'static str) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// Removes a key; true when it was there.
fn remove_quiet<K: aya::Pod, V: aya::Pod>(
    m: &mut HashMap<MapData, K, V>,
    k: &K,
    name: &'static str,
) -> Result<bool> {
    removed(m.remove(k), name)
}

fn remove_lpm_quiet<K: aya::Pod, V: aya::Pod>(
    m: &mut LpmTrie<MapData, K, V>,
    k: &Key<K>,
    name: &'static str,
) -> Result<bool> {
    removed(m.remove(k), name)
}

/// The clock of `bpf_ktime_get_coarse_ns`, which conntrack entries and events carry.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
