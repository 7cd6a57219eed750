//! Every map of the datapath. Each is pinned by name, so a restarted agent reopens the same
//! kernel maps and the programs behind pinned links keep enforcing while no agent runs.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use netpol_common::{
    counter, sizes, CtKey, CtValue, DnsProxy, Endpoint, EventBucket, EventBucketKey, FragKey, FragValue,
    IpcacheEntry, LocalSlot, PolicyKey, PolicyValue, RangeKey, RevNatKey, RevNatValue, ServiceKey,
    ServiceValue,
};

#[map]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(sizes::ENDPOINTS, 0);
#[map]
pub static ENDPOINT_IPS: HashMap<u32, u32> = HashMap::pinned(sizes::ENDPOINT_IPS, 0);
#[map]
pub static LOCAL_SLOTS: Array<LocalSlot> = Array::pinned(sizes::LOCAL_SLOTS, 0);
#[map]
pub static IPCACHE: HashMap<u32, IpcacheEntry> = HashMap::pinned(sizes::IPCACHE, 0);
#[map]
pub static IPCACHE_LPM: LpmTrie<u32, IpcacheEntry> = LpmTrie::pinned(sizes::IPCACHE_LPM, 0);
#[map]
pub static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(sizes::POLICY, 0);
#[map]
pub static POLICY_RANGES: LpmTrie<RangeKey, PolicyValue> = LpmTrie::pinned(sizes::POLICY_RANGES, 0);
#[map]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(sizes::CONNTRACK, 0);
#[map]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(sizes::FRAGMENTS, 0);
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(sizes::EVENTS_BYTES, 0);
#[map]
pub static EVENT_BUCKETS: LruHashMap<EventBucketKey, EventBucket> =
    LruHashMap::pinned(sizes::EVENT_BUCKETS, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(sizes::SERVICES, 0);
#[map]
pub static SOCK_REV_NAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::pinned(sizes::SOCK_REV_NAT, 0);
#[map]
pub static DNS_PROXY: Array<DnsProxy> = Array::pinned(1, 0);
