//! Endpoints handed over by the CNI plugin: which pod sits behind which host-side veth, with
//! a stable endpoint id. The registry only records them (persisted in the state directory);
//! the controller compiles and enforces them. An agent restart recovers the registry and
//! forgets attachments whose interface is gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use netpol_api::{EndpointRequest, EndpointStatus};
use netpol_policy::compiler::LocalEndpoint;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    datapath::{self, DatapathError},
    enforcer::Enforcer,
    sources::announce::LocalPod,
};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid endpoint: {0}")]
    Invalid(String),
    /// Another live endpoint holds the address (overlapping ranges of two networks, or a
    /// stale registration): the first one keeps it.
    #[error("address {ip} is held by the live endpoint {holder}")]
    AddressInUse { ip: std::net::Ipv4Addr, holder: String },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("state file {path}: {msg}")]
    State { path: PathBuf, msg: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Registered {
    request: EndpointRequest,
    endpoint_id: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    next_endpoint_id: u32,
    endpoints: Vec<Registered>,
}

pub struct Registry {
    path: PathBuf,
    state: Persisted,
}

type Key = (String, String);

fn key_of(container_id: &str, ifname: &str) -> Key {
    (container_id.to_string(), ifname.to_string())
}

impl Registry {
    /// Loads the registry from `state_dir` (empty when absent).
    pub fn load(state_dir: &Path) -> Result<Registry, EndpointError> {
        let path = state_dir.join("endpoints.json");
        let err = |msg: String| EndpointError::State { path: path.clone(), msg };
        std::fs::create_dir_all(state_dir).map_err(|e| err(e.to_string()))?;
        let state = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Persisted { next_endpoint_id: 1, ..Default::default() }
            }
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Registry { path, state })
    }

    fn save(&self) -> Result<(), EndpointError> {
        let err = |msg: String| EndpointError::State { path: self.path.clone(), msg };
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&self.state).map_err(|e| err(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err(e.to_string()))
    }

    fn find(&self, key: &Key) -> Option<usize> {
        self.state.endpoints.iter().position(|r| key_of(&r.request.container_id, &r.request.ifname) == *key)
    }

    /// Forgets attachments whose host interface no longer exists (pods deleted while no
    /// agent ran); returns how many.
    pub fn prune(&mut self) -> Result<usize, EndpointError> {
        let before = self.state.endpoints.len();
        self.state.endpoints.retain(|r| {
            let alive = datapath::ifindex(&r.request.host_ifname).ok() == Some(r.request.host_ifindex);
            if !alive {
                warn!(
                    container = r.request.container_id,
                    "host interface {} is gone; forgetting it", r.request.host_ifname
                );
            }
            alive
        });
        let pruned = before - self.state.endpoints.len();
        if pruned > 0 {
            self.save()?;
        }
        Ok(pruned)
    }

    /// The registered endpoints, for the compiler, and their interface names.
    pub fn local_endpoints(&self) -> (Vec<LocalEndpoint>, BTreeMap<u32, String>) {
        let eps = self
            .state
            .endpoints
            .iter()
            .map(|r| LocalEndpoint {
                ifindex: r.request.host_ifindex,
                ep_id: r.endpoint_id,
                ip: r.request.ip,
                namespace: r.request.pod_namespace.clone(),
                pod: r.request.pod_name.clone(),
            })
            .collect();
        let names = self
            .state
            .endpoints
            .iter()
            .map(|r| (r.request.host_ifindex, r.request.host_ifname.clone()))
            .collect();
        (eps, names)
    }

    /// The registered pods, for their address announcements.
    pub fn local_pods(&self) -> Vec<LocalPod> {
        let pods = self.state.endpoints.iter().map(|r| LocalPod {
            key: (r.request.pod_namespace.clone(), r.request.pod_name.clone()),
            ip: r.request.ip,
            uid: r.request.pod_uid.clone(),
        });
        pods.collect()
    }

    /// The network namespaces of the registered pods.
    pub fn namespaces(&self) -> BTreeSet<PathBuf> {
        self.state.endpoints.iter().map(|r| PathBuf::from(&r.request.netns)).collect()
    }

    /// Records an attachment (validated against the interface it names); the caller
    /// enforces it. Re-registering the same attachment is a no-op.
    pub fn register(&mut self, req: EndpointRequest) -> Result<(), EndpointError> {
        for (what, v) in
            [("containerId", &req.container_id), ("ifname", &req.ifname), ("hostIfname", &req.host_ifname)]
        {
            if v.is_empty() || v.contains('/') {
                return Err(EndpointError::Invalid(format!(
                    "{what} {v:?} must be non-empty and contain no '/'"
                )));
            }
        }
        if req.ip.is_unspecified() || req.ip.is_broadcast() {
            return Err(EndpointError::Invalid(format!("ip {} is not a pod address", req.ip)));
        }
        match datapath::ifindex(&req.host_ifname) {
            Ok(i) if i == req.host_ifindex => {}
            Ok(i) => {
                return Err(EndpointError::Invalid(format!(
                    "host interface {} has index {i}, not {}",
                    req.host_ifname, req.host_ifindex
                )))
            }
            Err(e) => return Err(EndpointError::Invalid(e.to_string())),
        }
        let key = key_of(&req.container_id, &req.ifname);
        if let Some(other) = self
            .state
            .endpoints
            .iter()
            .find(|r| r.request.ip == req.ip && key_of(&r.request.container_id, &r.request.ifname) != key)
        {
            let q = &other.request;
            return Err(EndpointError::AddressInUse {
                ip: req.ip,
                holder: format!("{}/{} ({} {})", q.pod_namespace, q.pod_name, q.container_id, q.ifname),
            });
        }
        if let Some(i) = self.find(&key) {
            if self.state.endpoints[i].request == req {
                return Ok(());
            }
            // Same attachment, new wiring: it gets a new endpoint id.
            self.state.endpoints.remove(i);
        }
        let endpoint_id = self.state.next_endpoint_id.max(1);
        self.state.next_endpoint_id = endpoint_id + 1;
        info!(
            container = req.container_id,
            pod = format!("{}/{}", req.pod_namespace, req.pod_name),
            ip = %req.ip,
            endpoint_id,
            "endpoint registered"
        );
        self.state.endpoints.push(Registered { request: req, endpoint_id });
        self.save()
    }

    /// Forgets an attachment; unknown attachments are fine (DEL is idempotent).
    pub fn unregister(&mut self, container_id: &str, ifname: &str) -> Result<bool, EndpointError> {
        let Some(i) = self.find(&key_of(container_id, ifname)) else { return Ok(false) };
        self.state.endpoints.remove(i);
        self.save()?;
        info!(container = container_id, ifname, "endpoint unregistered");
        Ok(true)
    }

    /// Endpoint id → (namespace, pod).
    pub fn pods_by_endpoint_id(&self) -> BTreeMap<u32, (String, String)> {
        let r = self.state.endpoints.iter();
        r.map(|r| (r.endpoint_id, (r.request.pod_namespace.clone(), r.request.pod_name.clone()))).collect()
    }

    pub fn list(&self, dp: &impl Enforcer) -> Result<Vec<EndpointStatus>, EndpointError> {
        let mut out = Vec::new();
        for r in &self.state.endpoints {
            out.extend(self.status(dp, &r.request.container_id, &r.request.ifname)?);
        }
        Ok(out)
    }

    pub fn status(
        &self,
        dp: &impl Enforcer,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<EndpointStatus>, EndpointError> {
        let Some(i) = self.find(&key_of(container_id, ifname)) else { return Ok(None) };
        let r = &self.state.endpoints[i];
        let q = &r.request;
        let entry = dp.enforced(q.host_ifindex)?.filter(|e| e.ep_id == r.endpoint_id);
        let flags = entry.map(|e| e.flags).unwrap_or(0);
        Ok(Some(EndpointStatus {
            endpoint_id: r.endpoint_id,
            identity: entry.map(|e| e.identity).unwrap_or(0),
            container_id: q.container_id.clone(),
            ifname: q.ifname.clone(),
            pod_namespace: q.pod_namespace.clone(),
            pod_name: q.pod_name.clone(),
            ip: q.ip,
            host_ifname: q.host_ifname.clone(),
            host_ifindex: q.host_ifindex,
            isolated_ingress: flags & netpol_common::EP_ISOLATED_INGRESS != 0,
            isolated_egress: flags & netpol_common::EP_ISOLATED_EGRESS != 0,
            enforced: entry.is_some(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cid: &str, ip: [u8; 4]) -> EndpointRequest {
        // The loopback interface stands in for a veth: the registry only checks that the
        // interface exists with this index.
        EndpointRequest {
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: "/proc/1/ns/net".into(),
            pod_namespace: "x".into(),
            pod_name: cid.into(),
            ip: ip.into(),
            host_ifname: "lo".into(),
            host_ifindex: datapath::ifindex("lo").unwrap(),
            pod_uid: None,
        }
    }

    #[test]
    fn a_live_address_is_never_registered_twice() {
        let dir = std::env::temp_dir().join(format!("netpol-registry-{}", std::process::id()));
        let mut r = Registry::load(&dir).unwrap();
        r.register(req("a", [10, 0, 0, 5])).unwrap();
        let e = r.register(req("b", [10, 0, 0, 5])).unwrap_err();
        assert!(matches!(e, EndpointError::AddressInUse { .. }), "{e}");
        assert!(e.to_string().contains("x/a"), "{e}");
        // The same attachment again is fine, and once it is gone the address is free.
        r.register(req("a", [10, 0, 0, 5])).unwrap();
        assert!(r.unregister("a", "eth0").unwrap());
        r.register(req("b", [10, 0, 0, 5])).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
