//! The kinds of object local mode stores and the CLI names, and the typed objects
//! themselves: one table for the agent, its API and the CLI, built from k8s-openapi's
//! `Resource` constants (kind, apiVersion, group, plural, scope). Only the short names are
//! ours, as kubectl's discovery lists them.
//!
//! Invariant: an [`Object`] is always a valid object of its kind with a name — every way in
//! ([`Object::from_value`]) checks kind, apiVersion, every field's type (errors name the
//! field's path) and `metadata.name`.

use std::{any::TypeId, fmt};

use crate::cilium::CiliumNetworkPolicy;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Node, Pod, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    Metadata, NamespaceResourceScope, Resource,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

/// A kind of object local mode stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    Namespace,
    Node,
    Pod,
    Service,
    Deployment,
    NetworkPolicy,
    CiliumNetworkPolicy,
}

/// One row of the table.
struct Info {
    kind: &'static str,
    api_version: &'static str,
    group: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
}

fn info_of<R: Resource>(short: &'static [&'static str]) -> Info
where
    R::Scope: 'static,
{
    Info {
        kind: R::KIND,
        api_version: R::API_VERSION,
        group: R::GROUP,
        plural: R::URL_PATH_SEGMENT,
        namespaced: TypeId::of::<R::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        short,
    }
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 7] = [
        ResourceKind::Namespace,
        ResourceKind::Node,
        ResourceKind::Pod,
        ResourceKind::Service,
        ResourceKind::Deployment,
        ResourceKind::NetworkPolicy,
        ResourceKind::CiliumNetworkPolicy,
    ];

    fn info(self) -> Info {
        match self {
            ResourceKind::Namespace => info_of::<Namespace>(&["ns"]),
            ResourceKind::Node => info_of::<Node>(&["no"]),
            ResourceKind::Pod => info_of::<Pod>(&["po"]),
            ResourceKind::Service => info_of::<Service>(&["svc"]),
            ResourceKind::Deployment => info_of::<Deployment>(&["deploy"]),
            ResourceKind::NetworkPolicy => info_of::<NetworkPolicy>(&["netpol"]),
            ResourceKind::CiliumNetworkPolicy => info_of::<CiliumNetworkPolicy>(&["cnp", "ciliumnp"]),
        }
    }

    /// `Deployment`
    pub fn kind(self) -> &'static str {
        self.info().kind
    }

    /// `apps/v1`
    pub fn api_version(self) -> &'static str {
        self.info().api_version
    }

    /// `deployments`
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    pub fn namespaced(self) -> bool {
        self.info().namespaced
    }

    /// `deployment.apps`, as kubectl names an object's resource (`deployment.apps/web created`).
    pub fn singular_resource(self) -> String {
        with_group(&self.kind().to_ascii_lowercase(), self.info().group)
    }

    /// `deployments.apps`, as kubectl's NotFound errors name a resource.
    pub fn plural_resource(self) -> String {
        with_group(self.plural(), self.info().group)
    }

    /// The kind of `Kind` as an object names it.
    pub fn from_kind(kind: &str) -> Option<ResourceKind> {
        ResourceKind::ALL.into_iter().find(|k| k.kind() == kind)
    }

    /// A kind as a user types it (kubectl's rules): singular, plural or short name, with or
    /// without the group, in any case.
    pub fn parse(typed: &str) -> Option<ResourceKind> {
        let typed = typed.to_ascii_lowercase();
        ResourceKind::ALL.into_iter().find(|k| {
            let info = k.info();
            let singular = info.kind.to_ascii_lowercase();
            let names = [singular.clone(), info.plural.to_string()];
            names.iter().any(|n| *n == typed || with_group(n, info.group) == typed)
                || info.short.contains(&typed.as_str())
        })
    }
}

/// `GET /v1/objects?kind=K`: the local store's objects of one kind.
pub fn objects_path(kind: ResourceKind) -> String {
    format!("{}?kind={kind}", crate::PATH_OBJECTS)
}

/// `DELETE /v1/objects?kind=K&namespace=N&name=M`
pub fn object_path(kind: ResourceKind, namespace: &str, name: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let q = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    format!("{}?kind={kind}&namespace={}&name={}", crate::PATH_OBJECTS, q(namespace), q(name))
}

fn with_group(name: &str, group: &str) -> String {
    if group.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{group}")
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// An object local mode stores, typed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Object {
    Namespace(Box<Namespace>),
    Node(Box<Node>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    Deployment(Box<Deployment>),
    NetworkPolicy(Box<NetworkPolicy>),
    CiliumNetworkPolicy(Box<CiliumNetworkPolicy>),
}

/// Why a JSON object is not an [`Object`]; the message names the object and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ObjectError(pub String);

/// kind, namespace ("" for cluster-scoped kinds), name
pub type ObjectKey = (ResourceKind, String, String);

fn typed<R: DeserializeOwned>(v: Value, what: &str) -> Result<Box<R>, ObjectError> {
    serde_path_to_error::deserialize(v).map(Box::new).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." { String::new() } else { format!("{at}: ") };
        ObjectError(format!("{what} is invalid: {at}{}", e.inner()))
    })
}

impl Object {
    /// Reads a JSON object, checking its kind, apiVersion, fields and name.
    pub fn from_value(v: Value) -> Result<Object, ObjectError> {
        let field = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_string();
        let (kind_name, api) = (field("kind"), field("apiVersion"));
        let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let known: Vec<&str> = ResourceKind::ALL.iter().map(|k| k.kind()).collect();
        let kind = ResourceKind::from_kind(&kind_name).ok_or_else(|| {
            ObjectError(format!("unknown kind {kind_name:?} (known: {})", known.join(", ")))
        })?;
        if api != kind.api_version() {
            return Err(ObjectError(format!("{kind} needs apiVersion {}, not {api:?}", kind.api_version())));
        }
        if name.is_empty() {
            return Err(ObjectError(format!("{kind} has no metadata.name")));
        }
        let what = format!("{kind} {name:?}");
        Ok(match kind {
            ResourceKind::Namespace => Object::Namespace(typed(v, &what)?),
            ResourceKind::Node => Object::Node(typed(v, &what)?),
            ResourceKind::Pod => Object::Pod(typed(v, &what)?),
            ResourceKind::Service => Object::Service(typed(v, &what)?),
            ResourceKind::Deployment => Object::Deployment(typed(v, &what)?),
            ResourceKind::NetworkPolicy => Object::NetworkPolicy(typed(v, &what)?),
            ResourceKind::CiliumNetworkPolicy => Object::CiliumNetworkPolicy(typed(v, &what)?),
        })
    }

    pub fn kind(&self) -> ResourceKind {
        match self {
            Object::Namespace(_) => ResourceKind::Namespace,
            Object::Node(_) => ResourceKind::Node,
            Object::Pod(_) => ResourceKind::Pod,
            Object::Service(_) => ResourceKind::Service,
            Object::Deployment(_) => ResourceKind::Deployment,
            Object::NetworkPolicy(_) => ResourceKind::NetworkPolicy,
            Object::CiliumNetworkPolicy(_) => ResourceKind::CiliumNetworkPolicy,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => o.metadata(),
            Object::Node(o) => o.metadata(),
            Object::Pod(o) => o.metadata(),
            Object::Service(o) => o.metadata(),
            Object::Deployment(o) => o.metadata(),
            Object::NetworkPolicy(o) => o.metadata(),
            Object::CiliumNetworkPolicy(o) => o.metadata(),
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => o.metadata_mut(),
            Object::Node(o) => o.metadata_mut(),
            Object::Pod(o) => o.metadata_mut(),
            Object::Service(o) => o.metadata_mut(),
            Object::Deployment(o) => o.metadata_mut(),
            Object::NetworkPolicy(o) => o.metadata_mut(),
            Object::CiliumNetworkPolicy(o) => o.metadata_mut(),
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or("")
    }

    /// The namespace of a namespaced object (`default` when it names none), "" otherwise.
    pub fn namespace(&self) -> &str {
        if self.kind().namespaced() {
            self.meta().namespace.as_deref().unwrap_or("default")
        } else {
            ""
        }
    }

    pub fn key(&self) -> ObjectKey {
        (self.kind(), self.namespace().to_string(), self.name().to_string())
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("k8s-openapi objects serialize")
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Object::from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_comes_from_k8s_openapi() {
        let d = ResourceKind::Deployment;
        assert_eq!((d.kind(), d.api_version(), d.plural()), ("Deployment", "apps/v1", "deployments"));
        assert_eq!(
            (d.singular_resource(), d.plural_resource()),
            ("deployment.apps".into(), "deployments.apps".into())
        );
        assert!(ResourceKind::Pod.namespaced() && !ResourceKind::Namespace.namespaced());
        assert!(!ResourceKind::Node.namespaced());
        assert_eq!(ResourceKind::NetworkPolicy.plural_resource(), "networkpolicies.networking.k8s.io");
        assert_eq!(ResourceKind::Service.singular_resource(), "service");
        for (typed, kind) in [
            ("po", ResourceKind::Pod),
            ("Pods", ResourceKind::Pod),
            ("deploy", ResourceKind::Deployment),
            ("deployments.apps", ResourceKind::Deployment),
            ("netpol", ResourceKind::NetworkPolicy),
            ("networkpolicy.networking.k8s.io", ResourceKind::NetworkPolicy),
            ("svc", ResourceKind::Service),
            ("ns", ResourceKind::Namespace),
            ("cnp", ResourceKind::CiliumNetworkPolicy),
            ("CiliumNetworkPolicy", ResourceKind::CiliumNetworkPolicy),
            ("ciliumnetworkpolicies.cilium.io", ResourceKind::CiliumNetworkPolicy),
        ] {
            assert_eq!(ResourceKind::parse(typed), Some(kind), "{typed}");
        }
        assert_eq!(ResourceKind::parse("frob"), None);
    }

    #[test]
    fn objects_are_checked_naming_the_field() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
                         "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]}});
        let e = Object::from_value(pod).unwrap_err().0;
        assert!(e.contains("Pod \"a\"") && e.contains("spec.containers[0].ports[0].containerPort"), "{e}");
        let e =
            Object::from_value(json!({"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "a"}}));
        assert!(e.unwrap_err().0.contains("apps/v1"));
        let e = Object::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}}));
        assert!(e.unwrap_err().0.contains("metadata.name"));
        let ok = Object::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}))
            .unwrap();
        assert_eq!(ok.key(), (ResourceKind::Pod, "default".into(), "a".into()));
        assert_eq!(Object::from_value(ok.to_value()).unwrap(), ok);
    }
}
