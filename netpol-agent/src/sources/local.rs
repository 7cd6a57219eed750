//! The local store: the objects `netpol local` applies, persisted as JSON in the agent's
//! state directory so a restart recovers them. Namespaces, Pods, NetworkPolicies, Nodes and
//! Services feed the model (local mode derives the EndpointSlices itself, as the
//! endpoint-slice controller would); Deployments are kept for the local runtime (which turns
//! them into pods) and for `get`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use netpol_policy::model::{Kind, Object};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("store {path}: {msg}")]
    Io { path: PathBuf, msg: String },
}

/// kind (as the API names it), namespace ("" for cluster-scoped kinds), name
pub type StoreKey = (String, String, String);

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
    objects: BTreeMap<StoreKey, Value>,
    /// Where ClusterIPs come from (the API server's `--service-cluster-ip-range`).
    service_cidr: Ipv4Net,
}

/// kube-apiserver's default Service range.
pub const DEFAULT_SERVICE_CIDR: Ipv4Net = match Ipv4Net::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 16) {
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

/// The kinds the store takes, with their apiVersion and whether they are namespaced.
pub const KINDS: [(&str, &str, bool); 6] = [
    ("Namespace", "v1", false),
    ("Node", "v1", false),
    ("Pod", "v1", true),
    ("Service", "v1", true),
    ("Deployment", "apps/v1", true),
    ("NetworkPolicy", "networking.k8s.io/v1", true),
];

/// The model kind of a store kind (None for Deployments).
pub fn kind_of(name: &str) -> Option<Kind> {
    match name {
        "Namespace" => Some(Kind::Namespace),
        "Pod" => Some(Kind::Pod),
        "NetworkPolicy" => Some(Kind::NetworkPolicy),
        "Node" => Some(Kind::Node),
        "Service" => Some(Kind::Service),
        _ => None,
    }
}

/// The store key of a JSON object, checking kind, apiVersion and name.
pub fn key_of(v: &Value) -> Result<StoreKey, StoreError> {
    let bad = |m: String| StoreError::Invalid(m);
    let kind = v.get("kind").and_then(Value::as_str).ok_or_else(|| bad("object has no kind".into()))?;
    let names: Vec<&str> = KINDS.iter().map(|k| k.0).collect();
    let (_, want, namespaced) = KINDS
        .iter()
        .find(|k| k.0 == kind)
        .ok_or_else(|| bad(format!("unknown kind {kind:?} (known: {})", names.join(", "))))?;
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if api != *want {
        return Err(bad(format!("{kind} needs apiVersion {want}, not {api:?}")));
    }
    let meta = v.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        return Err(bad(format!("{kind} has no metadata.name")));
    }
    let ns = if *namespaced {
        meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default").to_string()
    } else {
        String::new()
    };
    Ok((kind.to_string(), ns, name.to_string()))
}

/// The model object of a JSON object; None for the kinds the model does not use.
pub fn to_object(v: &Value) -> Result<Option<Object>, StoreError> {
    let (kind, _, name) = key_of(v)?;
    let err = |e: serde_json::Error| StoreError::Invalid(format!("{kind} {name}: {e}"));
    Ok(Some(match kind_of(&kind) {
        Some(Kind::Namespace) => Object::Namespace(Box::new(serde_json::from_value(v.clone()).map_err(err)?)),
        Some(Kind::Pod) => Object::Pod(Box::new(serde_json::from_value(v.clone()).map_err(err)?)),
        Some(Kind::NetworkPolicy) => {
            Object::NetworkPolicy(Box::new(serde_json::from_value(v.clone()).map_err(err)?))
        }
        Some(Kind::Node) => Object::Node(Box::new(serde_json::from_value(v.clone()).map_err(err)?)),
        Some(Kind::Service) => Object::Service(Box::new(serde_json::from_value(v.clone()).map_err(err)?)),
        Some(Kind::EndpointSlice) => {
            Object::EndpointSlice(Box::new(serde_json::from_value(v.clone()).map_err(err)?))
        }
        None => {
            // Still a valid object of its type.
            serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(v.clone()).map_err(err)?;
            return Ok(None);
        }
    }))
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
            objects.insert(key_of(&v)?, v);
        }
        Ok(LocalStore { path, objects, service_cidr })
    }

    fn save(&self) -> Result<(), StoreError> {
        let io = |e: String| StoreError::Io { path: self.path.clone(), msg: e };
        let tmp = self.path.with_extension("json.tmp");
        let list: Vec<&Value> = self.objects.values().collect();
        std::fs::write(&tmp, serde_json::to_vec_pretty(&list).map_err(|e| io(e.to_string()))?)
            .map_err(|e| io(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io(e.to_string()))
    }

    pub fn objects(&self) -> impl Iterator<Item = (&StoreKey, &Value)> {
        self.objects.iter()
    }

    pub fn get(&self, key: &StoreKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Stores an object (already accepted by the model).
    /// Fills in what the API server sets on write (a Service's ClusterIP), or refuses the
    /// object as it would.
    pub fn complete(&self, v: &mut Value) -> Result<(), StoreError> {
        let key = key_of(v)?;
        if key.0 == "Service" {
            self.assign_cluster_ip(&key, v)?;
        }
        Ok(())
    }

    pub fn put(&mut self, v: Value) -> Result<Action, StoreError> {
        let key = key_of(&v)?;
        let action = match self.objects.get(&key) {
            None => Action::Created,
            Some(old) if *old == v => return Ok(Action::Unchanged),
            Some(_) => Action::Configured,
        };
        self.objects.insert(key, v);
        self.save()?;
        Ok(action)
    }

    /// What the API server does to a Service it stores: one that names no ClusterIP gets
    /// the one it had, or a free one of the range; one that names its own must name an
    /// address of the range no other Service has (or `None`: headless). ExternalName
    /// Services get none.
    fn assign_cluster_ip(&self, key: &StoreKey, v: &mut Value) -> Result<(), StoreError> {
        let spec = &v["spec"];
        if spec["type"] == "ExternalName" {
            return Ok(());
        }
        let invalid = |ip: &str, why: String| {
            StoreError::Invalid(format!(
                "Service \"{}\" is invalid: spec.clusterIP: Invalid value: \"{ip}\": {why}",
                key.2
            ))
        };
        let had = self.objects.get(key).and_then(|o| o["spec"]["clusterIP"].as_str().map(str::to_string));
        let asked = spec["clusterIP"].as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let ip = match (asked, had) {
            (Some(a), Some(h)) if a != h => return Err(invalid(&a, "field is immutable".into())),
            (Some(a), _) if a == "None" => a,
            (Some(a), _) => {
                let parsed: std::net::Ipv4Addr =
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
        v["spec"]["clusterIP"] = json!(ip);
        v["spec"]["clusterIPs"] = json!([ip]);
        if v["spec"]["type"].is_null() {
            v["spec"]["type"] = json!("ClusterIP");
        }
        Ok(())
    }

    /// The ClusterIPs of every Service but `except`.
    fn cluster_ips_in_use(&self, except: &StoreKey) -> std::collections::BTreeSet<std::net::Ipv4Addr> {
        self.objects
            .iter()
            .filter(|(k, _)| k.0 == "Service" && *k != except)
            .filter_map(|(_, o)| o["spec"]["clusterIP"].as_str()?.parse().ok())
            .collect()
    }

    /// The first free address of the dynamic band, then of the static one (never the
    /// range's first address).
    fn free_cluster_ip(&self, key: &StoreKey) -> Result<std::net::Ipv4Addr, StoreError> {
        let used = self.cluster_ips_in_use(key);
        let base = u32::from(self.service_cidr.network());
        let size = 1u32 << (32 - self.service_cidr.prefix_len()).min(31);
        let start = dynamic_start(self.service_cidr).min(size - 1);
        (start..size.saturating_sub(1))
            .chain(1..start)
            .map(|i| std::net::Ipv4Addr::from(base + i))
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
