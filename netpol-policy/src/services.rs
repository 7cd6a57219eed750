//! Services: where each ClusterIP:port/protocol leads. A Service names its frontends; its
//! EndpointSlices (`discovery.k8s.io/v1`, labelled `kubernetes.io/service-name`) name the
//! backends, with the target port already resolved per backend — so a named targetPort
//! that differs between pods is simply two port groups.
//!
//! [`endpoint_slices`] is the endpoint-slice controller for local mode, where no controller
//! manager writes them: the same slices from the Service's selector and the pods.
//!
//! Invariants: a frontend lists only backends that are ready and not terminating, each
//! once, in a stable order; headless and ExternalName Services have no frontends; only TCP
//! and UDP are translated (the socket hooks see no other protocol).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service, ServicePort},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use netpol_common::{ServiceKey, ServiceValue};

use crate::{
    entries::Protocol,
    model::{named_ports, pod_ip, pod_is_terminal, pod_labels, Key},
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label the endpoint-slice controller marks its slices with.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const LOCAL_CONTROLLER: &str = "netpol.local";

/// A ClusterIP:port/protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

/// A ready backend address and its target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// TCP and UDP; anything else is not translated.
fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        _ => None,
    }
}

/// A Service's IPv4 ClusterIPs; none for headless (`None`) and ExternalName Services.
pub fn cluster_ips(svc: &Service) -> Vec<Ipv4Addr> {
    let Some(spec) = &svc.spec else { return Vec::new() };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let ips = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter());
    let mut out: Vec<Ipv4Addr> = ips.filter_map(|s| s.parse().ok()).collect();
    out.sort();
    out.dedup();
    out
}

/// Whether an EndpointSlice endpoint may get new connections: ready (an unset condition
/// counts as ready, as the API documents) and not terminating.
pub fn usable(conditions: Option<&EndpointConditions>) -> bool {
    let c = conditions.cloned().unwrap_or_default();
    c.ready != Some(false) && c.terminating != Some(true)
}

fn same_name(a: Option<&String>, b: Option<&String>) -> bool {
    a.map_or("", String::as_str) == b.map_or("", String::as_str)
}

/// Every frontend of every Service, with its usable backends. `slices` are all the
/// EndpointSlices the model holds, keyed by (namespace, name).
pub fn frontends(
    services: &BTreeMap<Key, Service>,
    slices: &BTreeMap<Key, EndpointSlice>,
) -> BTreeMap<Frontend, Vec<Backend>> {
    let by_service = slices_by_service(slices);
    let mut out = BTreeMap::new();
    for (key, svc) in services {
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
        let ips = cluster_ips(svc);
        for sp in ports.into_iter().flatten() {
            let (Some(proto), Ok(port)) = (protocol(sp.protocol.as_deref()), u16::try_from(sp.port)) else {
                continue;
            };
            let backends = backends_of(sp, proto, by_service.get(key).map_or(&[][..], Vec::as_slice));
            for addr in &ips {
                out.insert(Frontend { addr: *addr, port, protocol: proto }, backends.clone());
            }
        }
    }
    out
}

/// The IPv4 EndpointSlices of each Service, keyed by the Service's (namespace, name).
fn slices_by_service(slices: &BTreeMap<Key, EndpointSlice>) -> BTreeMap<Key, Vec<&EndpointSlice>> {
    let mut by_service: BTreeMap<Key, Vec<&EndpointSlice>> = BTreeMap::new();
    for ((ns, _), slice) in slices {
        let labels = slice.metadata.labels.as_ref();
        let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
        if slice.address_type == "IPv4" {
            by_service.entry((ns.clone(), svc.clone())).or_default().push(slice);
        }
    }
    by_service
}

/// Whether a Service is headless (`clusterIP: None`): its name stands for its endpoints.
pub fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// What each Service's cluster DNS name resolves to: its ClusterIPs, or for a headless
/// Service the addresses of its usable endpoints (each once, sorted). ExternalName
/// Services have no addresses (they would be a CNAME) and are left out.
pub fn dns_addresses(
    services: &BTreeMap<Key, Service>,
    slices: &BTreeMap<Key, EndpointSlice>,
) -> BTreeMap<Key, Vec<Ipv4Addr>> {
    let by_service = slices_by_service(slices);
    let mut out = BTreeMap::new();
    for (key, svc) in services {
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let addrs = if headless(svc) {
            let endpoints = by_service.get(key).into_iter().flatten().flat_map(|s| &s.endpoints);
            let usable = endpoints.filter(|e| usable(e.conditions.as_ref()));
            let addrs: BTreeSet<Ipv4Addr> =
                usable.flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok())).collect();
            addrs.into_iter().collect()
        } else {
            cluster_ips(svc)
        };
        out.insert(key.clone(), addrs);
    }
    out
}

/// The usable backends of one Service port: the slice ports of the same name and protocol.
fn backends_of(sp: &ServicePort, proto: Protocol, slices: &[&EndpointSlice]) -> Vec<Backend> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let matching = slice.ports.iter().flatten().find(|p| {
            same_name(p.name.as_ref(), sp.name.as_ref()) && protocol(p.protocol.as_deref()) == Some(proto)
        });
        let Some(port) = matching.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else { continue };
        for ep in slice.endpoints.iter().filter(|e| usable(e.conditions.as_ref())) {
            let addrs = ep.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok());
            out.extend(addrs.filter(|a| port != 0 && !a.is_unspecified()).map(|addr| Backend { addr, port }));
        }
    }
    out.into_iter().collect()
}

/// A pod's target port for a Service port: the number, or the pod's container port of that
/// name and protocol (None: this pod does not serve the port).
fn target_port(sp: &ServicePort, proto: Protocol, pod: &Pod) -> Option<u16> {
    match &sp.target_port {
        None => u16::try_from(sp.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => match name.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => named_ports(pod).get(&(name.clone(), proto)).copied(),
        },
    }
}

/// Whether the pod counts as ready: its Ready condition, or (no conditions reported, as
/// local mode's pods) Running.
fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_ref());
    match conditions.and_then(|cs| cs.iter().find(|c| c.type_ == "Ready")) {
        Some(c) => c.status == "True",
        None => status.and_then(|s| s.phase.as_deref()) == Some("Running"),
    }
}

/// The EndpointSlices the endpoint-slice controller keeps for `svc`: one per distinct set of
/// resolved ports, holding the selected pods of its namespace that have an address.
/// Services without a selector get none (their slices are written by hand).
pub fn endpoint_slices<'p>(svc: &Service, pods: impl IntoIterator<Item = &'p Pod>) -> Vec<EndpointSlice> {
    let ns = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.filter(|s| !s.is_empty()) else { return Vec::new() };
    let ports: Vec<(&ServicePort, Protocol)> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|sp| protocol(sp.protocol.as_deref()).map(|p| (sp, p)))
        .collect();
    let mut groups: BTreeMap<Vec<SlicePort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let pod_ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let labels = pod_labels(pod);
        if pod_ns != ns || !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) || pod_is_terminal(pod) {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let resolved: Vec<_> = ports
            .iter()
            .filter_map(|(sp, protocol)| {
                let port = target_port(sp, *protocol, pod)?;
                Some(SlicePort { name: sp.name.clone(), protocol: *protocol, port })
            })
            .collect();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let conditions = EndpointConditions {
            ready: Some(pod_ready(pod) && !terminating),
            serving: Some(pod_ready(pod)),
            terminating: Some(terminating),
        };
        let endpoint = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(conditions),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(ns.clone()),
                name: pod.metadata.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        groups.entry(resolved).or_default().push(endpoint);
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (ports, endpoints))| slice(&ns, &name, i, ports, endpoints))
        .collect()
}

/// A Service port resolved for a group of pods: its name, protocol and target port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SlicePort {
    name: Option<String>,
    protocol: Protocol,
    port: u16,
}

fn slice(
    ns: &str,
    service: &str,
    index: usize,
    ports: Vec<SlicePort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), service.to_string()),
        (MANAGED_BY_LABEL.to_string(), LOCAL_CONTROLLER.to_string()),
    ]);
    let ports = ports
        .into_iter()
        .map(|p| EndpointPort {
            name: p.name,
            port: Some(p.port as i32),
            protocol: Some(if p.protocol == Protocol::Udp { "UDP" } else { "TCP" }.into()),
            ..Default::default()
        })
        .collect();
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints,
        metadata: ObjectMeta {
            name: Some(format!("{service}-{index}")),
            namespace: Some(ns.into()),
            labels: Some(labels),
            ..Default::default()
        },
        ports: Some(ports),
    }
}

/// Backends one frontend may have in `SERVICES`; past it the lowest addresses are kept.
pub const MAX_BACKENDS: usize = 1024;
/// Entries the node's `SERVICES` map may hold: all but a sixteenth, kept for the sync's
/// writes before its deletions.
pub const CAPACITY: usize = netpol_common::sizes::SERVICES as usize / 16 * 15;

/// Why a frontend is not written as its Service says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrontendLimit {
    /// More than [`MAX_BACKENDS`] backends: only that many are used.
    Truncated { backends: usize },
    /// No room left in the node's map for its backends: it refuses connections.
    NoRoom { backends: usize },
}

/// The `SERVICES` entries of the frontends: slot 0 with the backend count, then a slot per
/// backend (addresses and ports in network order). Bounded: see [`map_entries_within`].
pub fn map_entries(frontends: &BTreeMap<Frontend, Vec<Backend>>) -> BTreeMap<ServiceKey, ServiceValue> {
    map_entries_within(frontends, CAPACITY).0
}

/// The entries within `capacity`, and the frontends that did not get all their backends.
/// Every frontend gets its slot 0 first (so a ClusterIP is always known to the hooks); then
/// backends go in, the frontends with fewest first, so one huge Service cannot take the
/// room of many small ones. A frontend whose backends do not fit gets none: it refuses
/// connections at once rather than spreading them over a partial set.
pub fn map_entries_within(
    frontends: &BTreeMap<Frontend, Vec<Backend>>,
    capacity: usize,
) -> (BTreeMap<ServiceKey, ServiceValue>, BTreeMap<Frontend, FrontendLimit>) {
    let mut limits = BTreeMap::new();
    let mut room = capacity.saturating_sub(frontends.len());
    let mut by_size: Vec<(&Frontend, &[Backend])> = frontends
        .iter()
        .map(|(f, b)| {
            if b.len() > MAX_BACKENDS {
                limits.insert(*f, FrontendLimit::Truncated { backends: b.len() });
            }
            (f, &b[..b.len().min(MAX_BACKENDS)])
        })
        .collect();
    by_size.sort_by_key(|(f, b)| (b.len(), **f));
    let mut out = BTreeMap::new();
    for (f, backends) in by_size {
        let key = |slot| ServiceKey {
            addr: u32::from_ne_bytes(f.addr.octets()),
            port: f.port.to_be(),
            proto: f.protocol.raw(),
            _pad: 0,
            slot,
        };
        let fits = backends.len() <= room;
        if !fits {
            limits.insert(*f, FrontendLimit::NoRoom { backends: backends.len() });
        }
        let used: &[Backend] = if fits { backends } else { &[] };
        room -= used.len();
        out.insert(key(0), ServiceValue { count: used.len() as u32, ..Default::default() });
        for (slot, b) in (1..).zip(used) {
            let value = ServiceValue {
                addr: u32::from_ne_bytes(b.addr.octets()),
                port: b.port.to_be(),
                ..Default::default()
            };
            out.insert(key(slot), value);
        }
    }
    (out, limits)
}

/// The UDP backends (address, target port) that `SERVICES` entries name.
pub fn udp_backends(entries: &BTreeMap<ServiceKey, ServiceValue>) -> BTreeSet<SocketAddrV4> {
    entries
        .iter()
        .filter(|(k, _)| k.slot != 0 && k.proto == Protocol::Udp.raw())
        .map(|(_, v)| SocketAddrV4::new(Ipv4Addr::from(v.addr.to_ne_bytes()), u16::from_be(v.port)))
        .collect()
}
