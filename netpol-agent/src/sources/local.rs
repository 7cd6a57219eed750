//! The local store: the objects `netpol local` applies, persisted as JSON in the agent's
//! state directory so a restart recovers them. Namespaces, Pods, NetworkPolicies, Nodes and
//! Services feed the model (local mode derives the EndpointSlices itself, as the
//! endpoint-slice controller would); Deployments are kept for the local runtime (which turns
//! them into pods) and for `get`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use netpol_api::resources::{Object as Stored, ObjectError, ObjectKey, ResourceKind};
use serde_json::Value;

use k8s_openapi::api::core::v1::Service;
use netpol_policy::model::{Kind, Object};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("store {path}: {msg}")]
    Io { path: PathBuf, msg: String },
}

impl From<ObjectError> for StoreError {
    fn from(e: ObjectError) -> Self {
        StoreError::Invalid(e.0)
    }
}

/// kind, namespace ("" for cluster-scoped kinds), name
pub type StoreKey = ObjectKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        }
    }
}

pub struct LocalStore {
    path: PathBuf,
    objects: BTreeMap<StoreKey, Stored>,
    /// Where ClusterIPs come from (the API server's `--service-cluster-ip-range`).
    service_cidr: Ipv4Net,
}

/// kube-apiserver's default Service range.
pub const DEFAULT_SERVICE_CIDR: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 16) {
    Ok(n) => n,
    Err(_) => panic!("a valid range"),
};

/// The part of a Service range that is handed out first: above a static band kept for
/// ClusterIPs that Services ask for by number (as kube-apiserver does: a sixteenth of the
/// range, at least 16 and at most 256 addresses).
fn dynamic_start(range: Ipv4Net) -> u32 {
    let size = 1u64 << (32 - range.prefix_len());
    (size / 16).clamp(16, 256) as u32
}

/// The model kind of a stored kind (None for Deployments, which only the runtime reads).
pub fn model_kind(kind: ResourceKind) -> Option<Kind> {
    match kind {
        ResourceKind::Namespace => Some(Kind::Namespace),
        ResourceKind::Pod => Some(Kind::Pod),
        ResourceKind::NetworkPolicy => Some(Kind::NetworkPolicy),
        ResourceKind::CiliumNetworkPolicy => Some(Kind::CiliumNetworkPolicy),
        ResourceKind::Node => Some(Kind::Node),
        ResourceKind::Service => Some(Kind::Service),
        ResourceKind::Deployment => None,
    }
}

/// The model object of a stored object; None for the kinds the model does not use.
pub fn to_object(o: &Stored) -> Option<Object> {
    Some(match o.clone() {
        Stored::Namespace(n) => Object::Namespace(n),
        Stored::Pod(p) => Object::Pod(p),
        Stored::NetworkPolicy(np) => Object::NetworkPolicy(np),
        Stored::CiliumNetworkPolicy(cnp) => Object::CiliumNetworkPolicy(cnp),
        Stored::Node(n) => Object::Node(n),
        Stored::Service(s) => Object::Service(s),
        Stored::Deployment(_) => return None,
    })
}

impl LocalStore {
    pub fn load(state_dir: &Path, service_cidr: Ipv4Net) -> Result<LocalStore, StoreError> {
        let path = state_dir.join("objects.json");
        let io = |e: String| StoreError::Io { path: path.clone(), msg: e };
        std::fs::create_dir_all(state_dir).map_err(|e| io(e.to_string()))?;
        let list: Vec<Value> = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| io(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e.to_string())),
        };
        let mut objects = BTreeMap::new();
        for v in list {
            let o = Stored::from_value(v)?;
            objects.insert(o.key(), o);
        }
        Ok(LocalStore { path, objects, service_cidr })
    }

    fn save(&self) -> Result<(), StoreError> {
        let io = |e: String| StoreError::Io { path: self.path.clone(), msg: e };
        let tmp = self.path.with_extension("json.tmp");
        let list: Vec<&Stored> = self.objects.values().collect();
        std::fs::write(&tmp, serde_json::to_vec_pretty(&list).map_err(|e| io(e.to_string()))?)
            .map_err(|e| io(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io(e.to_string()))
    }

    pub fn objects(&self) -> impl Iterator<Item = (&StoreKey, &Stored)> {
        self.objects.iter()
    }

    pub fn get(&self, key: &StoreKey) -> Option<&Stored> {
        self.objects.get(key)
    }

    /// Fills in what the API server sets on write (a Service's ClusterIP), or refuses the
    /// object as it would.
    pub fn complete(&self, o: &mut Stored) -> Result<(), StoreError> {
        let key = o.key();
        if let Stored::Service(svc) = o {
            self.assign_cluster_ip(&key, svc)?;
        }
        Ok(())
    }

    /// Stores an object (already accepted by the model).
    pub fn put(&mut self, o: Stored) -> Result<Action, StoreError> {
        let key = o.key();
        let action = match self.objects.get(&key) {
            None => Action::Created,
            Some(old) if *old == o => return Ok(Action::Unchanged),
            Some(_) => Action::Configured,
        };
        self.objects.insert(key, o);
        self.save()?;
        Ok(action)
    }

    /// What the API server does to a Service it stores: one that names no ClusterIP gets
    /// the one it had, or a free one of the range; one that names its own must name an
    /// address of the range no other Service has (or `None`: headless). ExternalName
    /// Services get none.
    fn assign_cluster_ip(&self, key: &StoreKey, svc: &mut Service) -> Result<(), StoreError> {
        let spec = svc.spec.get_or_insert_with(Default::default);
        if spec.type_.as_deref() == Some("ExternalName") {
            return Ok(());
        }
        let invalid = |ip: &str, why: String| {
            StoreError::Invalid(format!(
                "Service \"{}\" is invalid: spec.clusterIP: Invalid value: \"{ip}\": {why}",
                key.2
            ))
        };
        let had = match self.objects.get(key) {
            Some(Stored::Service(old)) => old.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
            _ => None,
        };
        let asked = spec.cluster_ip.clone().filter(|s| !s.is_empty());
        let ip = match (asked, had) {
            (Some(a), Some(h)) if a != h => return Err(invalid(&a, "field is immutable".into())),
            (Some(a), _) if a == "None" => a,
            (Some(a), _) => {
                let parsed: Ipv4Addr =
                    a.parse().map_err(|_| invalid(&a, "must be a valid IPv4 address".into()))?;
                if !self.service_cidr.contains(&parsed) {
                    let why = format!(
                        "provided IP is not in the valid range. The range of valid IPs is {}",
                        self.service_cidr
                    );
                    return Err(invalid(&a, why));
                }
                if self.cluster_ips_in_use(key).contains(&parsed) {
                    return Err(invalid(&a, "provided IP is already allocated".into()));
                }
                a
            }
            (None, Some(h)) => h,
            (None, None) => self.free_cluster_ip(key)?.to_string(),
        };
        spec.cluster_ips = Some(vec![ip.clone()]);
        spec.cluster_ip = Some(ip);
        spec.type_.get_or_insert_with(|| "ClusterIP".into());
        Ok(())
    }

    /// The ClusterIPs of every Service but `except`.
    fn cluster_ips_in_use(&self, except: &StoreKey) -> std::collections::BTreeSet<Ipv4Addr> {
        self.objects
            .iter()
            .filter(|(k, _)| *k != except)
            .filter_map(|(_, o)| match o {
                Stored::Service(s) => s.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok(),
                _ => None,
            })
            .collect()
    }

    /// The first free address of the dynamic band, then of the static one (never the
    /// range's first address).
    fn free_cluster_ip(&self, key: &StoreKey) -> Result<Ipv4Addr, StoreError> {
        let used = self.cluster_ips_in_use(key);
        let base = u32::from(self.service_cidr.network());
        let size = 1u32 << (32 - self.service_cidr.prefix_len()).min(31);
        let start = dynamic_start(self.service_cidr).min(size - 1);
        (start..size.saturating_sub(1))
            .chain(1..start)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| StoreError::Invalid(format!("no ClusterIP left in {}", self.service_cidr)))
    }

    pub fn remove(&mut self, key: &StoreKey) -> Result<bool, StoreError> {
        let had = self.objects.remove(key).is_some();
        if had {
            self.save()?;
        }
        Ok(had)
    }
}
