//! The CiliumNetworkPolicy object (`cilium.io/v2`), as the API server and the local store
//! hold it. Its rules stay JSON here: `netpol_policy::cilium` validates them, so a policy
//! outside the subset netpol enforces is rejected naming its field instead of failing the
//! watch or the store that delivers it.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::ObjectMeta, Metadata, NamespaceResourceScope, Resource,
};
use serde::{ser::SerializeStruct, Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// One rule (`spec`) ...
    #[serde(default)]
    pub spec: Option<Value>,
    /// ... and/or a list of them (`specs`).
    #[serde(default)]
    pub specs: Option<Vec<Value>>,
    /// What the agents report (`conditions`: `Valid`, False while the spec is rejected).
    #[serde(default)]
    pub status: Option<Value>,
}

impl Resource for CiliumNetworkPolicy {
    const API_VERSION: &'static str = "cilium.io/v2";
    const GROUP: &'static str = "cilium.io";
    const KIND: &'static str = "CiliumNetworkPolicy";
    const VERSION: &'static str = "v2";
    const URL_PATH_SEGMENT: &'static str = "ciliumnetworkpolicies";
    type Scope = NamespaceResourceScope;
}

impl Metadata for CiliumNetworkPolicy {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// With `apiVersion` and `kind`, as k8s-openapi's objects serialize.
impl Serialize for CiliumNetworkPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct(Self::KIND, 6)?;
        st.serialize_field("apiVersion", Self::API_VERSION)?;
        st.serialize_field("kind", Self::KIND)?;
        st.serialize_field("metadata", &self.metadata)?;
        if let Some(spec) = &self.spec {
            st.serialize_field("spec", spec)?;
        }
        if let Some(specs) = &self.specs {
            st.serialize_field("specs", specs)?;
        }
        if let Some(status) = &self.status {
            st.serialize_field("status", status)?;
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_serializes_as_the_api_server_has_it() {
        let v = serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "songlaa", "namespace": "default"},
            "spec": {"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "songlaa.com"}]}]}});
        let cnp: CiliumNetworkPolicy = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(cnp.specs, None);
        assert_eq!(serde_json::to_value(&cnp).unwrap(), v);
    }
}
