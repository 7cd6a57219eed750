//! netpol's own API resource, `NetpolEndpoint` (`netpol.io/v1alpha1`): a node's agent
//! announces, at CNI ADD, the address it gave a pod, so that the other nodes know the pod's
//! identity before the kubelet posts `status.podIP` (a pod's first connections would
//! otherwise reach remote nodes as "world"). Cilium's CiliumEndpoint plays the same part.
//!
//! Trust: any agent can write any announcement (they share one service account), so a
//! consumer believes one only where it agrees with what the API server says of the pod
//! ([`crate::model::Model::pod_address`]): same pod UID, same node, the address inside that
//! node's podCIDR, and no `status.podIP` yet (the kubelet's word wins). The deploy manifest
//! carries the CRD generated from this type (`NetpolEndpoint::crd()`; a test compares).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One pod's address as its node's agent assigned it. Named and namespaced as the pod, owned
/// by it (so the garbage collector removes it with the pod, also when its node is gone).
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "netpol.io",
    version = "v1alpha1",
    kind = "NetpolEndpoint",
    plural = "netpolendpoints",
    shortname = "npep",
    namespaced,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"IPv4","type":"string","jsonPath":".spec.ipv4"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetpolEndpointSpec {
    /// The pod's `metadata.uid` (CNI_ARGS `K8S_POD_UID`).
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    /// The node whose agent wired the pod.
    pub node_name: String,
    /// The pod's IPv4 address.
    pub ipv4: std::net::Ipv4Addr,
}
