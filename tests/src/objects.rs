//! Kubernetes objects as JSON, one builder per kind, for every suite: the local store, the
//! scripted API servers and the compiler's model all take them. Objects are complete
//! (apiVersion, kind, a resourceVersion) and can be adjusted field by field.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// An object being built.
#[derive(Clone, Debug)]
pub struct Obj(Value);

impl Obj {
    /// Sets the field at a dotted path (`spec.nodeName`), making objects on the way.
    pub fn set(mut self, path: &str, v: Value) -> Obj {
        let mut at = &mut self.0;
        let mut parts = path.split('.').peekable();
        while let Some(p) = parts.next() {
            if parts.peek().is_none() {
                at[p] = v;
                break;
            }
            if !at[p].is_object() {
                at[p] = json!({});
            }
            at = &mut at[p];
        }
        self
    }

    /// Sets a label (keys may hold dots: `kubernetes.io/metadata.name`).
    pub fn label(mut self, key: &str, value: &str) -> Obj {
        if !self.0["metadata"]["labels"].is_object() {
            self.0["metadata"]["labels"] = json!({});
        }
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }

    pub fn json(self) -> Value {
        self.0
    }
}

impl From<Obj> for Value {
    fn from(o: Obj) -> Value {
        o.0
    }
}

fn meta(ns: Option<&str>, name: &str) -> Value {
    let mut m = json!({"name": name, "resourceVersion": "1"});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

/// A running pod on node `n1` labelled `app=<name>`, with one container and, when given,
/// its address.
pub fn pod(ns: &str, name: &str, ip: Option<Ipv4Addr>) -> Obj {
    let mut status = json!({"phase": "Running"});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip.to_string());
    }
    Obj(json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta(Some(ns), name),
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}, "status": status}))
    .label("app", name)
}

/// A NetworkPolicy with this spec.
pub fn policy(ns: &str, name: &str, spec: Value) -> Obj {
    Obj(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": meta(Some(ns), name), "spec": spec}))
}

/// A CiliumNetworkPolicy with this (one rule) spec.
pub fn cilium_policy(ns: &str, name: &str, spec: Value) -> Obj {
    Obj(json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": meta(Some(ns), name), "spec": spec}))
}

/// Ingress to the pods `selector` picks from `blocks` /32 ipBlocks (in 172.16.0.0/12) on
/// `ports` TCP ports from 1000: `blocks × ports` policy keys per selected pod — the
/// oversized-policy attack when large.
pub fn ip_blocks_policy(ns: &str, name: &str, selector: Value, blocks: u32, ports: u32) -> Obj {
    let from: Vec<Value> = (0..blocks)
        .map(|b| json!({"ipBlock": {"cidr": format!("172.{}.{}.{}/32", 16 + b / 65536, (b / 256) % 256, b % 256)}}))
        .collect();
    let ports: Vec<Value> = (0..ports).map(|p| json!({"port": 1000 + p})).collect();
    policy(ns, name, json!({"podSelector": selector, "ingress": [{"from": from, "ports": ports}]}))
}

/// A ClusterIP Service: `ports` as the API takes them.
pub fn service(ns: &str, name: &str, cluster_ip: &str, selector: Value, ports: Value) -> Obj {
    Obj(json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(Some(ns), name),
               "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                        "selector": selector, "ports": ports}}))
}

/// An IPv4 EndpointSlice of Service `service` with ready endpoints at `addresses`.
pub fn endpoint_slice(ns: &str, name: &str, service: &str, ports: Value, addresses: &[&str]) -> Obj {
    let endpoints: Vec<Value> =
        addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect();
    Obj(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta(Some(ns), name),
               "addressType": "IPv4", "ports": ports, "endpoints": endpoints}),
    )
    .label("kubernetes.io/service-name", service)
}

pub fn namespace(name: &str) -> Obj {
    Obj(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(None, name)}))
        .label("kubernetes.io/metadata.name", name)
}

/// A node with one InternalIP.
pub fn node(name: &str, internal: Ipv4Addr) -> Obj {
    Obj(json!({"apiVersion": "v1", "kind": "Node", "metadata": meta(None, name),
               "status": {"addresses": [{"type": "InternalIP", "address": internal.to_string()}]}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_nested_fields_and_dotted_label_keys() {
        let ns = namespace("x").json();
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
        let p = pod("x", "web", Some(Ipv4Addr::new(10, 0, 0, 2))).set("spec.nodeName", json!("n2")).json();
        assert_eq!(
            (p["spec"]["nodeName"].as_str(), p["status"]["podIP"].as_str()),
            (Some("n2"), Some("10.0.0.2"))
        );
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        let big = ip_blocks_policy("x", "big", json!({}), 300, 2).json();
        assert_eq!(big["spec"]["ingress"][0]["from"][299]["ipBlock"]["cidr"], "172.16.1.43/32");
    }
}
