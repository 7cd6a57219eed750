//! Endpoints handed over by the CNI plugin: registration puts the pod's address in the
//! ipcache, its endpoint entry in the datapath and the programs on its veth — in that order,
//! so no packet ever meets an attached program without an entry. The registry is persisted
//! in the state directory; an agent restart recovers it and forgets attachments whose
//! interface is gone.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use netpol_api::{EndpointRequest, EndpointStatus};
use netpol_common::identity;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::datapath::{self, Datapath, DatapathError, EndpointSpec, IpcacheSpec};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid endpoint: {0}")]
    Invalid(String),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("state file {path}: {msg}")]
    State { path: PathBuf, msg: String },
}

/// The label set an identity stands for (namespace labels are prefixed `ns:`).
pub type Labels = BTreeMap<String, String>;

/// One number per distinct label set, reference-counted, stable while in use.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Identities {
    next: u32,
    by_labels: BTreeMap<String, (u32, usize)>,
}

impl Identities {
    fn key(labels: &Labels) -> String {
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }

    pub fn acquire(&mut self, labels: &Labels) -> u32 {
        let next = &mut self.next;
        let e = self.by_labels.entry(Self::key(labels)).or_insert_with(|| {
            let id = identity::FIRST_LABEL + *next;
            *next += 1;
            (id, 0)
        });
        e.1 += 1;
        e.0
    }

    pub fn release(&mut self, labels: &Labels) {
        let key = Self::key(labels);
        if let Some(e) = self.by_labels.get_mut(&key) {
            e.1 -= 1;
            if e.1 == 0 {
                self.by_labels.remove(&key);
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Registered {
    request: EndpointRequest,
    endpoint_id: u32,
    identity: u32,
    labels: Labels,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    next_endpoint_id: u32,
    identities: Identities,
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

    /// Re-applies every registered endpoint to the datapath and drops those whose host
    /// interface no longer exists (pods deleted while no agent ran).
    pub fn recover(&mut self, dp: &mut Datapath) -> Result<(), EndpointError> {
        let all: Vec<Registered> = self.state.endpoints.clone();
        for r in all {
            let alive = datapath::ifindex(&r.request.host_ifname).ok() == Some(r.request.host_ifindex);
            if alive {
                self.enforce(dp, &r)?;
            } else {
                warn!(
                    container = r.request.container_id,
                    "host interface {} is gone; forgetting it", r.request.host_ifname
                );
                self.unregister(dp, &r.request.container_id, &r.request.ifname)?;
            }
        }
        Ok(())
    }

    fn enforce(&self, dp: &mut Datapath, r: &Registered) -> Result<(), EndpointError> {
        let q = &r.request;
        dp.upsert_ipcache(&IpcacheSpec {
            cidr: ipnet::Ipv4Net::new(q.ip, 32).expect("/32"),
            identity: r.identity,
            cidr_identity: Some(identity::WORLD),
        })?;
        // Keep the isolation the datapath already has for this endpoint (policy state).
        let current = dp.endpoints()?.into_iter().find(|(i, _)| *i == q.host_ifindex).map(|(_, e)| e);
        let (ingress, egress) = match current {
            Some(e) if e.ep_id == r.endpoint_id => (
                e.flags & netpol_common::EP_ISOLATED_INGRESS != 0,
                e.flags & netpol_common::EP_ISOLATED_EGRESS != 0,
            ),
            _ => (false, false),
        };
        dp.upsert_endpoint(&EndpointSpec {
            interface: q.host_ifname.clone(),
            id: r.endpoint_id,
            ip: q.ip,
            identity: r.identity,
            isolated_ingress: ingress,
            isolated_egress: egress,
        })?;
        dp.attach(&q.host_ifname)?;
        Ok(())
    }

    /// Registers (or re-registers) an attachment and enforces it before returning.
    pub fn register(
        &mut self,
        dp: &mut Datapath,
        req: EndpointRequest,
    ) -> Result<EndpointStatus, EndpointError> {
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
        if let Some(i) = self.find(&key) {
            if self.state.endpoints[i].request == req {
                let r = self.state.endpoints[i].clone();
                self.enforce(dp, &r)?;
                return self.status(dp, &req.container_id, &req.ifname).map(|s| s.expect("registered"));
            }
            // Same attachment, new wiring: start over.
            self.unregister(dp, &req.container_id, &req.ifname)?;
        }
        let labels =
            Labels::from([("ns:kubernetes.io/metadata.name".to_string(), req.pod_namespace.clone())]);
        let identity = self.state.identities.acquire(&labels);
        let endpoint_id = self.state.next_endpoint_id.max(1);
        self.state.next_endpoint_id = endpoint_id + 1;
        let r = Registered { request: req.clone(), endpoint_id, identity, labels };
        self.state.endpoints.push(r.clone());
        if let Err(e) = self.enforce(dp, &r) {
            // Leave nothing half-made behind.
            let _ = self.unregister(dp, &req.container_id, &req.ifname);
            return Err(e);
        }
        self.save()?;
        info!(
            container = req.container_id,
            pod = format!("{}/{}", req.pod_namespace, req.pod_name),
            ip = %req.ip,
            endpoint_id,
            identity,
            "endpoint registered"
        );
        Ok(self.status(dp, &req.container_id, &req.ifname)?.expect("registered"))
    }

    /// Removes an attachment; unknown attachments are fine (DEL is idempotent).
    pub fn unregister(
        &mut self,
        dp: &mut Datapath,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), EndpointError> {
        let Some(i) = self.find(&key_of(container_id, ifname)) else { return Ok(()) };
        let r = self.state.endpoints.remove(i);
        let q = &r.request;
        let ours =
            dp.endpoints()?.into_iter().any(|(idx, e)| idx == q.host_ifindex && e.ep_id == r.endpoint_id);
        if ours {
            dp.remove_endpoint(q.host_ifindex)?;
        }
        let still_used = self.state.endpoints.iter().any(|o| o.request.ip == q.ip);
        if !still_used {
            dp.remove_ipcache(ipnet::Ipv4Net::new(q.ip, 32).expect("/32"))?;
        }
        if datapath::ifindex(&q.host_ifname).ok() == Some(q.host_ifindex) {
            dp.detach(&q.host_ifname)?;
        }
        self.state.identities.release(&r.labels);
        self.save()?;
        info!(container = container_id, ifname, "endpoint unregistered");
        Ok(())
    }

    pub fn list(&self, dp: &Datapath) -> Result<Vec<EndpointStatus>, EndpointError> {
        let mut out = Vec::new();
        for r in &self.state.endpoints {
            out.extend(self.status(dp, &r.request.container_id, &r.request.ifname)?);
        }
        Ok(out)
    }

    pub fn status(
        &self,
        dp: &Datapath,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<EndpointStatus>, EndpointError> {
        let Some(i) = self.find(&key_of(container_id, ifname)) else { return Ok(None) };
        let r = &self.state.endpoints[i];
        let q = &r.request;
        let entry =
            dp.endpoints()?.into_iter().find(|(idx, e)| *idx == q.host_ifindex && e.ep_id == r.endpoint_id);
        let attached =
            dp.config().attach == datapath::AttachMode::Netlink || dp.attached()?.contains(&q.host_ifindex);
        let flags = entry.map(|(_, e)| e.flags).unwrap_or(0);
        Ok(Some(EndpointStatus {
            endpoint_id: r.endpoint_id,
            identity: r.identity,
            container_id: q.container_id.clone(),
            ifname: q.ifname.clone(),
            pod_namespace: q.pod_namespace.clone(),
            pod_name: q.pod_name.clone(),
            ip: q.ip,
            host_ifname: q.host_ifname.clone(),
            host_ifindex: q.host_ifindex,
            isolated_ingress: flags & netpol_common::EP_ISOLATED_INGRESS != 0,
            isolated_egress: flags & netpol_common::EP_ISOLATED_EGRESS != 0,
            enforced: entry.is_some() && attached,
        }))
    }
}
