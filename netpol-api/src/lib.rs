//! The agent's HTTP/JSON API on its Unix socket: paths and bodies.
//!
//! | method | path | body → response |
//! |---|---|---|
//! | GET | `/healthz` | → `ok`, or 503 naming what is not in effect (the socket hooks) |
//! | GET | `/v1/node` | → [`NodeInfo`] |
//! | GET | `/v1/endpoints` | → [`EndpointStatus`]s |
//! | POST | `/v1/endpoints` | [`EndpointRequest`] → [`EndpointStatus`] (once enforced) |
//! | GET | `/v1/endpoints/{containerID}/{ifname}` | → [`EndpointStatus`] |
//! | DELETE | `/v1/endpoints/{containerID}/{ifname}` | → 204 (also when unknown) |
//! | POST | `/v1/objects` | Kubernetes objects (JSON list) → [`ObjectResult`]s, once enforced |
//! | GET | `/v1/objects?kind=K` | → the local store's objects of kind K |
//! | DELETE | `/v1/objects?kind=K&namespace=N&name=M` | → 204, or 404 |
//! | GET | `/v1/names` | → [`ServiceName`]s: what each Service's cluster DNS name resolves to |
//! | GET | `/v1/events` | → the most recent verdict events (JSON list, oldest first) |
//! | GET | `/v1/events?follow=true` | → every verdict event from now on, one JSON object per line |
//! | GET | `/v1/flows[?follow=true]` | → the same verdicts with names: [`flows::Flow`]s |
//! | GET | `/v1/trace?from=..&to=..&port=..&protocol=..` | → [`flows::Trace`] |
//! | GET | `/v1/explain?pod=NS/POD` | → [`flows::Explanation`] |
//! | GET | `/v1/policies` | → [`PolicyStatus`]es: each policy's state on this node |
//! | GET | `/metrics` | → Prometheus metrics (OpenMetrics text) |
//!
//! Errors come back with a 4xx/5xx status and an [`ApiError`] body.

pub mod cgroup;
#[cfg(feature = "resources")]
pub mod cilium;
#[cfg(feature = "client")]
pub mod client;
pub mod flows;
#[cfg(feature = "netlink")]
pub mod netlink;
#[cfg(feature = "resources")]
pub mod resources;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/netpol/agent.sock";

pub const PATH_HEALTH: &str = "/healthz";
pub const PATH_NODE: &str = "/v1/node";
pub const PATH_ENDPOINTS: &str = "/v1/endpoints";
pub const PATH_OBJECTS: &str = "/v1/objects";
pub const PATH_METRICS: &str = "/metrics";
pub const PATH_EVENTS: &str = "/v1/events";
pub const PATH_NAMES: &str = "/v1/names";
pub const PATH_POLICIES: &str = "/v1/policies";

/// A policy's state on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyState {
    /// Its entries are in the datapath.
    Enforced,
    /// Its latest version is invalid (the last valid one, if any, stays enforced).
    Rejected,
    /// It does not fit the node's budgets: it isolates the pods it selects, allows nothing.
    OverBudget,
}

/// `GET /v1/policies`: a policy as this node enforces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `NetworkPolicy` or `CiliumNetworkPolicy`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub state: PolicyState,
    /// The local endpoints it selects (isolates in some direction).
    pub selected: usize,
    /// Why it is rejected or over budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `/v1/endpoints/{container_id}/{ifname}`, each segment percent-encoded (an interface
/// name may hold `?`, `#` or `%`, which would otherwise cut the path short).
pub fn endpoint_path(container_id: &str, ifname: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let seg = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    format!("{PATH_ENDPOINTS}/{}/{}", seg(container_id), seg(ifname))
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_paths_encode_their_segments() {
        assert_eq!(super::endpoint_path("c0ffee", "eth0"), "/v1/endpoints/c0ffee/eth0");
        assert_eq!(super::endpoint_path("a.b-c", "e?x#1%"), "/v1/endpoints/a%2Eb%2Dc/e%3Fx%231%25");
    }
}

/// A pod attachment the CNI plugin wired and hands over for enforcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRequest {
    pub container_id: String,
    /// The interface name inside the pod (CNI_IFNAME).
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub ip: Ipv4Addr,
    /// The host-side veth, by name and index (the index guards against a renamed link).
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// The pod's UID (CNI_ARGS `K8S_POD_UID`), when the runtime passed it: the agent
    /// announces the pod's address under it before the kubelet posts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// An endpoint as the agent enforces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub endpoint_id: u32,
    pub identity: u32,
    pub container_id: String,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub ip: Ipv4Addr,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub isolated_ingress: bool,
    pub isolated_egress: bool,
    /// Both programs are attached to the host-side veth and its endpoint entry is in place.
    pub enforced: bool,
}

/// What the agent knows about its node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub node_name: String,
    /// The node's pod range (from the Node object in a cluster, from a flag locally).
    pub pod_cidr: Option<String>,
    /// The cgroup2 directory whose processes get Services translated at the socket (local
    /// mode puts the pods' processes there); None when the hooks are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_lb_cgroup: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// What applying one object did: `result` is created, configured or unchanged; `error`
/// names the object and field when it was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectResult {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub result: Option<String>,
    pub error: Option<String>,
}

/// Query of `GET`/`DELETE /v1/objects`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectQuery {
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

/// What one Service's cluster DNS name (`NAME.NAMESPACE.svc.cluster.local`) resolves to:
/// its ClusterIPs, or for a headless Service its ready endpoints' addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
}
