//! The local store: the objects `netpol local` applies (Namespaces, Pods, NetworkPolicies,
//! Nodes), persisted as JSON in the agent's state directory so a restart recovers them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::model::{Kind, Object};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("store {path}: {msg}")]
    Io { path: PathBuf, msg: String },
}

/// kind, namespace ("" for cluster-scoped kinds), name
pub type StoreKey = (Kind, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

pub struct LocalStore {
    path: PathBuf,
    objects: BTreeMap<StoreKey, Value>,
}

pub fn kind_of(name: &str) -> Option<Kind> {
    match name {
        "Namespace" => Some(Kind::Namespace),
        "Pod" => Some(Kind::Pod),
        "NetworkPolicy" => Some(Kind::NetworkPolicy),
        "Node" => Some(Kind::Node),
        _ => None,
    }
}

/// The store key of a JSON object, checking kind, apiVersion and name.
pub fn key_of(v: &Value) -> Result<StoreKey, StoreError> {
    let bad = |m: String| StoreError::Invalid(m);
    let kind_name = v.get("kind").and_then(Value::as_str).ok_or_else(|| bad("object has no kind".into()))?;
    let kind = kind_of(kind_name)
        .ok_or_else(|| bad(format!("unknown kind {kind_name:?} (Namespace, Pod, NetworkPolicy, Node)")))?;
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let want = if kind == Kind::NetworkPolicy { "networking.k8s.io/v1" } else { "v1" };
    if api != want {
        return Err(bad(format!("{kind_name} needs apiVersion {want}, not {api:?}")));
    }
    let meta = v.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        return Err(bad(format!("{kind_name} has no metadata.name")));
    }
    let ns = match kind {
        Kind::Namespace | Kind::Node => String::new(),
        _ => meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or("default").to_string(),
    };
    Ok((kind, ns, name.to_string()))
}

/// The typed object of a JSON object.
pub fn to_object(v: &Value) -> Result<Object, StoreError> {
    let (kind, _, name) = key_of(v)?;
    let err = |e: serde_json::Error| StoreError::Invalid(format!("{kind:?} {name}: {e}"));
    Ok(match kind {
        Kind::Namespace => Object::Namespace(Box::new(serde_json::from_value(v.clone()).map_err(err)?)),
        Kind::Pod => Object::Pod(Box::new(serde_json::from_value(v.clone()).map_err(err)?)),
        Kind::NetworkPolicy => {
            Object::NetworkPolicy(Box::new(serde_json::from_value(v.clone()).map_err(err)?))
        }
        Kind::Node => Object::Node(Box::new(serde_json::from_value(v.clone()).map_err(err)?)),
    })
}

impl LocalStore {
    pub fn load(state_dir: &Path) -> Result<LocalStore, StoreError> {
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
        Ok(LocalStore { path, objects })
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

    pub fn remove(&mut self, key: &StoreKey) -> Result<bool, StoreError> {
        let had = self.objects.remove(key).is_some();
        if had {
            self.save()?;
        }
        Ok(had)
    }
}
