//! What the agent knows of the cluster: Namespaces, Pods, NetworkPolicies and
//! CiliumNetworkPolicies, Nodes, Services and EndpointSlices, as the objects the sources
//! deliver. Policies are validated on the way in; a rejected update keeps the policy's last
//! valid version enforced.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnet::Ipv4Net;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};

use crate::{
    cilium::{self, CiliumNetworkPolicy},
    crd::NetpolEndpoint,
    entries::Protocol,
    names::{Name, NameMatch},
    policy::{NamedPorts, Policy, PolicyError, PolicyId, PolicyKind},
};

pub type Key = (String, String);

/// The label Kubernetes puts on every namespace.
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// A namespace annotated with this set to `"true"` has its pods' policies audited, not
/// enforced: what they would drop passes and is reported.
pub const AUDIT_ANNOTATION: &str = "netpol.io/policy-audit-mode";

/// One object from a source.
#[derive(Clone, Debug)]
pub enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    NetworkPolicy(Box<NetworkPolicy>),
    Node(Box<Node>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetpolEndpoint(Box<NetpolEndpoint>),
    CiliumNetworkPolicy(Box<CiliumNetworkPolicy>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Node,
    Service,
    EndpointSlice,
    NetpolEndpoint,
    CiliumNetworkPolicy,
}

impl Object {
    /// The policy id of a policy object (None for other kinds).
    pub fn policy_id(&self) -> Option<PolicyId> {
        match self {
            Object::NetworkPolicy(np) => Some(policy_id(PolicyKind::NetworkPolicy, &np.metadata)),
            Object::CiliumNetworkPolicy(cnp) => {
                Some(policy_id(PolicyKind::CiliumNetworkPolicy, &cnp.metadata))
            }
            _ => None,
        }
    }
}

impl Kind {
    /// The kind of policy objects of this kind are, if they are policies.
    pub fn policy_kind(self) -> Option<PolicyKind> {
        match self {
            Kind::NetworkPolicy => Some(PolicyKind::NetworkPolicy),
            Kind::CiliumNetworkPolicy => Some(PolicyKind::CiliumNetworkPolicy),
            _ => None,
        }
    }
}

/// A policy's API object, as it came.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyObject {
    NetworkPolicy(NetworkPolicy),
    Cilium(CiliumNetworkPolicy),
}

fn policy_id(
    kind: PolicyKind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> PolicyId {
    let (namespace, name) = key_of(meta);
    PolicyId { namespace, kind, name }
}

impl PolicyObject {
    pub fn id(&self) -> PolicyId {
        match self {
            PolicyObject::NetworkPolicy(np) => policy_id(PolicyKind::NetworkPolicy, &np.metadata),
            PolicyObject::Cilium(cnp) => policy_id(PolicyKind::CiliumNetworkPolicy, &cnp.metadata),
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            PolicyObject::NetworkPolicy(np) => &np.metadata,
            PolicyObject::Cilium(cnp) => &cnp.metadata,
        }
    }

    /// The reference an Event about it names.
    pub fn object_ref(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        use kube::Resource;
        match self {
            PolicyObject::NetworkPolicy(np) => np.object_ref(&()),
            PolicyObject::Cilium(cnp) => cnp.object_ref(&()),
        }
    }
}

/// A policy's last valid version: its API object (for the reference evaluator) and its
/// parsed parts (for the compiler: a NetworkPolicy is one, a CiliumNetworkPolicy one per
/// rule of `spec` and `specs`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPolicy {
    pub object: PolicyObject,
    pub parts: Vec<Policy>,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<Key, Pod>,
    /// Each policy's last valid version.
    pub policies: BTreeMap<PolicyId, StoredPolicy>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<Key, Service>,
    pub endpoint_slices: BTreeMap<Key, EndpointSlice>,
    /// The agents' address announcements, under their pods' keys (believed only as
    /// [`Model::pod_address`] says).
    pub announced: BTreeMap<Key, NetpolEndpoint>,
    /// The current rejection of each policy whose latest version was invalid.
    pub rejected: BTreeMap<PolicyId, PolicyError>,
    /// What this node's DNS proxy learned: the addresses DNS answers gave for each name,
    /// while their TTLs last. `toFQDNs` allow these (and only these) addresses.
    pub learned: BTreeMap<Name, BTreeSet<Ipv4Addr>>,
    /// Pod label keys left out of identities unless a policy selects on them (None: the
    /// known high-churn ones, [`crate::compiler::HIGH_CHURN_LABELS`]).
    pub identity_exclusions: Option<BTreeSet<String>>,
}

fn ns_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// The key a namespaced object is stored under: (namespace, name), a missing namespace
/// being `default` as the API server defaults it.
pub fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (ns_of(meta), name_of(meta))
}

impl Model {
    /// Adds or replaces an object. A policy that does not validate is rejected (its error
    /// returned and remembered); the rest of the model is untouched.
    pub fn upsert(&mut self, obj: Object) -> Result<(), PolicyError> {
        match obj {
            Object::Namespace(n) => {
                self.namespaces.insert(name_of(&n.metadata), *n);
            }
            Object::Pod(p) => {
                self.pods.insert(key_of(&p.metadata), *p);
            }
            Object::Node(n) => {
                self.nodes.insert(name_of(&n.metadata), *n);
            }
            Object::Service(svc) => {
                self.services.insert(key_of(&svc.metadata), *svc);
            }
            Object::EndpointSlice(slice) => {
                self.endpoint_slices.insert(key_of(&slice.metadata), *slice);
            }
            Object::NetpolEndpoint(ep) => {
                self.announced.insert(key_of(&ep.metadata), *ep);
            }
            Object::NetworkPolicy(np) => {
                let parsed = Policy::parse(&np).map(|p| vec![p]);
                return self.store_policy(PolicyObject::NetworkPolicy(*np), parsed);
            }
            Object::CiliumNetworkPolicy(cnp) => {
                let parsed = cilium::parse(&cnp);
                return self.store_policy(PolicyObject::Cilium(*cnp), parsed);
            }
        }
        Ok(())
    }

    fn store_policy(
        &mut self,
        object: PolicyObject,
        parsed: Result<Vec<Policy>, PolicyError>,
    ) -> Result<(), PolicyError> {
        let (namespace, name) = key_of(object.meta());
        let kind = match object {
            PolicyObject::NetworkPolicy(_) => PolicyKind::NetworkPolicy,
            PolicyObject::Cilium(_) => PolicyKind::CiliumNetworkPolicy,
        };
        let id = PolicyId { namespace, kind, name };
        match parsed {
            Ok(parts) => {
                self.rejected.remove(&id);
                self.policies.insert(id, StoredPolicy { object, parts });
                Ok(())
            }
            Err(e) => {
                self.rejected.insert(id, e.clone());
                Err(e)
            }
        }
    }

    /// The policies of one namespace.
    pub fn policies_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = (&'a PolicyId, &'a StoredPolicy)> {
        self.policies.range(PolicyId::first_of(ns)..).take_while(move |(id, _)| id.namespace == ns)
    }

    /// Every parsed policy part.
    pub fn policy_parts(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values().flat_map(|p| &p.parts)
    }

    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if let Some(kind) = kind.policy_kind() {
            let id = PolicyId::new(kind, namespace, name);
            self.policies.remove(&id);
            self.rejected.remove(&id);
            return;
        }
        match kind {
            Kind::Namespace => {
                self.namespaces.remove(name);
            }
            Kind::Pod => {
                self.pods.remove(&key);
            }
            // Removed above, by their policy ids.
            Kind::NetworkPolicy | Kind::CiliumNetworkPolicy => {}
            Kind::Node => {
                self.nodes.remove(name);
            }
            Kind::Service => {
                self.services.remove(&key);
            }
            Kind::EndpointSlice => {
                self.endpoint_slices.remove(&key);
            }
            Kind::NetpolEndpoint => {
                self.announced.remove(&key);
            }
        }
    }

    /// Keeps only the objects of `kind` whose keys are in `keep` (after a full list;
    /// cluster-scoped objects have an empty namespace).
    pub fn retain(&mut self, kind: Kind, keep: &BTreeSet<Key>) {
        let cluster = |name: &String| keep.contains(&(String::new(), name.clone()));
        match kind {
            Kind::Namespace => self.namespaces.retain(|n, _| cluster(n)),
            Kind::Node => self.nodes.retain(|n, _| cluster(n)),
            Kind::Pod => self.pods.retain(|k, _| keep.contains(k)),
            Kind::Service => self.services.retain(|k, _| keep.contains(k)),
            Kind::EndpointSlice => self.endpoint_slices.retain(|k, _| keep.contains(k)),
            Kind::NetpolEndpoint => self.announced.retain(|k, _| keep.contains(k)),
            Kind::NetworkPolicy | Kind::CiliumNetworkPolicy => {
                let kept = |id: &PolicyId| {
                    Some(id.kind) != kind.policy_kind()
                        || keep.contains(&(id.namespace.clone(), id.name.clone()))
                };
                self.policies.retain(|id, _| kept(id));
                self.rejected.retain(|id, _| kept(id));
            }
        }
    }

    /// The learned addresses of every name one of `matches` matches.
    pub fn learned_addresses(&self, matches: &[NameMatch]) -> BTreeSet<Ipv4Addr> {
        let matched = self.learned.iter().filter(|(name, _)| matches.iter().any(|m| m.matches(name)));
        matched.flat_map(|(_, ips)| ips.iter().copied()).collect()
    }

    /// The name patterns of the `toFQDNs` peers of one rule (none: the rule is gone or has
    /// no such peers).
    pub fn rule_names(&self, rule: &crate::compiler::RuleKey) -> Vec<NameMatch> {
        let part = self.policies.get(&rule.policy).and_then(|p| p.parts.get(rule.part as usize));
        let rule = part.and_then(|p| p.rules(rule.direction)).and_then(|r| r.get(rule.index as usize));
        let peers = rule.and_then(|r| r.peers.as_ref()).into_iter().flatten();
        peers
            .filter_map(|p| match p {
                crate::policy::Peer::Names(m) => Some(m.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// A namespace's labels; `kubernetes.io/metadata.name` is always there, as the API
    /// server guarantees (also for namespaces this model has not seen yet).
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self.namespaces.get(ns).and_then(|n| n.metadata.labels.clone()).unwrap_or_default();
        labels.insert(NS_NAME_LABEL.into(), ns.into());
        labels
    }

    /// Whether the namespace's policies are audited ([`AUDIT_ANNOTATION`]).
    pub fn audited(&self, ns: &str) -> bool {
        let annotations = self.namespaces.get(ns).and_then(|n| n.metadata.annotations.as_ref());
        annotations.and_then(|a| a.get(AUDIT_ANNOTATION)).is_some_and(|v| v == "true")
    }

    /// Pods of the model that take part in policy: IPv4 address known ([`Model::pod_address`]),
    /// not host-network, not finished (a finished pod's address is free for the next pod
    /// the range hands it to).
    pub fn policy_pods(&self) -> impl Iterator<Item = (&Key, &Pod, Ipv4Addr)> {
        let posted: BTreeSet<Ipv4Addr> =
            self.pods.values().filter(|p| !pod_is_terminal(p)).filter_map(pod_ip).collect();
        self.pods.iter().filter(|(_, p)| !pod_is_terminal(p)).filter_map(move |(k, p)| {
            let ip = self.pod_address(k, p)?;
            // An announced address another pod's status holds is the kubelet's to give.
            (pod_ip(p).is_some() || !posted.contains(&ip)).then_some((k, p, ip))
        })
    }

    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<(&Key, &Pod)> {
        self.policy_pods().find(|(_, _, i)| *i == ip).map(|(k, p, _)| (k, p))
    }

    /// The pod's IPv4 address: its `status.podIP(s)` once the kubelet posted them, before
    /// that the address its node's agent announced — if the announcement names this pod's
    /// UID and node and lies in that node's podCIDR (any agent can write one; see
    /// [`crate::crd`]). Host-network pods have none of their own.
    pub fn pod_address(&self, key: &Key, pod: &Pod) -> Option<Ipv4Addr> {
        if let Some(ip) = pod_ip(pod) {
            return Some(ip);
        }
        if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
            return None;
        }
        let spec = &self.announced.get(key)?.spec;
        let node = pod_node(pod).filter(|n| *n == spec.node_name)?;
        let same_pod = pod.metadata.uid.as_deref() == Some(spec.pod_uid.as_str());
        let range = self.nodes.get(node).and_then(node_pod_cidr)?.parse::<Ipv4Net>().ok()?;
        (same_pod && range.contains(&spec.ipv4)).then_some(spec.ipv4)
    }

    /// A node's own IPv4 addresses (its InternalIPs).
    pub fn node_addresses(&self, node: &str) -> Vec<Ipv4Addr> {
        self.nodes.get(node).map(node_addresses).unwrap_or_default()
    }

    /// The routes node `me` needs to the other nodes' pods: each other node's podCIDR via
    /// its first InternalIP (nodes share one L2 network, as on kind). A node without either
    /// gets none; a range overlapping `me`'s own pod range never does (its pods are local),
    /// nor does one overlapping another node's range (which node holds an address would be
    /// a guess) — both are reported in the second map.
    pub fn node_routes(&self, me: &str) -> (BTreeMap<Ipv4Net, Ipv4Addr>, BTreeMap<String, String>) {
        let own = self.nodes.get(me).and_then(node_pod_cidr).and_then(|c| c.parse::<Ipv4Net>().ok());
        let mut candidates: Vec<(&String, Ipv4Net, Ipv4Addr)> = Vec::new();
        for (name, node) in self.nodes.iter().filter(|(n, _)| n.as_str() != me) {
            let cidr = node_pod_cidr(node).and_then(|c| c.parse::<Ipv4Net>().ok());
            if let (Some(cidr), Some(via)) = (cidr, node_addresses(node).first()) {
                candidates.push((name, cidr.trunc(), *via));
            }
        }
        let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
        let (mut routes, mut refused) = (BTreeMap::new(), BTreeMap::new());
        for (name, cidr, via) in &candidates {
            if own.is_some_and(|o| overlaps(&o, cidr)) {
                refused.insert(name.to_string(), format!("its podCIDR {cidr} overlaps this node's"));
            } else if candidates.iter().any(|(n, c, _)| n != name && overlaps(c, cidr)) {
                refused.insert(name.to_string(), format!("its podCIDR {cidr} overlaps another node's"));
            } else {
                routes.insert(*cidr, *via);
            }
        }
        (routes, refused)
    }
}

pub fn pod_labels(p: &Pod) -> BTreeMap<String, String> {
    p.metadata.labels.clone().unwrap_or_default()
}

/// The pod's IPv4 address, unless it has none yet or shares its node's (hostNetwork).
pub fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    if p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let status = p.status.as_ref()?;
    let ips = status.pod_ips.iter().flatten().map(|i| i.ip.as_str()).chain(status.pod_ip.as_deref());
    ips.filter_map(|s| s.parse::<IpAddr>().ok()).find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
}

/// Whether the pod has finished (phase Succeeded or Failed).
pub fn pod_is_terminal(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

pub fn pod_node(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

/// The pod's named container ports.
pub fn named_ports(p: &Pod) -> NamedPorts {
    let mut out = NamedPorts::new();
    for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
        for port in c.ports.iter().flatten() {
            let Some(name) = &port.name else { continue };
            let proto = match port.protocol.as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(_) => continue,
            };
            if (1..=65535).contains(&port.container_port) {
                out.entry((name.clone(), proto)).or_insert(port.container_port as u16);
            }
        }
    }
    out
}

/// A node's own IPv4 addresses: its InternalIPs. ExternalIPs are left out: they are often
/// addresses of a NAT or load balancer in front of the node, not the node's, and traffic
/// translated to them must not pass isolated pods as the node.
pub fn node_addresses(n: &Node) -> Vec<Ipv4Addr> {
    n.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

pub fn node_pod_cidr(n: &Node) -> Option<String> {
    let spec = n.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find(|c| c.parse::<ipnet::Ipv4Net>().is_ok())
        .cloned()
}
