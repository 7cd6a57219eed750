//! This node's address announcements ([`NetpolEndpoint`]): one per pod the CNI plugin
//! wired here, published as soon as the endpoint is registered — before the kubelet posts
//! the pod's `status.podIP` — so that the other nodes give the pod's first connections
//! its identity, not "world". Kept as desired state: what this node's registry holds
//! against the announcements naming this node in the (fully listed) model; a failed write
//! is retried at the next round. Every announcement is owned by its Pod, so the garbage
//! collector removes it with the pod even when its node never comes back.

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    api::{DeleteParams, ObjectMeta, Patch, PatchParams},
    Api, Client, Resource,
};
use netpol_policy::{
    crd::{NetpolEndpoint, NetpolEndpointSpec},
    model::{Key, Model},
};
use tracing::{debug, warn};

use crate::metrics::{Announced, Metrics};

/// A pod wired on this node: its key, address and (when the runtime passed it) UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub key: Key,
    pub ip: std::net::Ipv4Addr,
    pub uid: Option<String>,
}

/// What to write so that the announcements match this node's pods.
#[derive(Debug, Default)]
pub struct Announcements {
    pub publish: Vec<NetpolEndpoint>,
    pub withdraw: Vec<Key>,
}

/// The announcements `node` owes for `pods`, against those the model holds for it. A pod
/// whose UID is unknown (neither passed by the runtime nor yet watched) waits for a later
/// round; of two registrations of one pod name (a recreated pod whose old sandbox is not
/// deleted yet) the later one is announced.
pub fn diff(model: &Model, node: &str, pods: &[LocalPod]) -> Announcements {
    let mut out = Announcements::default();
    let latest: std::collections::BTreeMap<&Key, &LocalPod> = pods.iter().map(|p| (&p.key, p)).collect();
    for p in latest.into_values() {
        let watched_uid = model.pods.get(&p.key).and_then(|pod| pod.metadata.uid.clone());
        let Some(uid) = p.uid.clone().or(watched_uid) else { continue };
        let spec = NetpolEndpointSpec { pod_uid: uid, node_name: node.to_string(), ipv4: p.ip };
        if model.announced.get(&p.key).map(|a| &a.spec) != Some(&spec) {
            out.publish.push(announcement(&p.key, spec));
        }
    }
    for (key, a) in &model.announced {
        if a.spec.node_name == node && !pods.iter().any(|p| p.key == *key) {
            out.withdraw.push(key.clone());
        }
    }
    out
}

fn announcement(key: &Key, spec: NetpolEndpointSpec) -> NetpolEndpoint {
    let owner = OwnerReference {
        api_version: Pod::api_version(&()).to_string(),
        kind: Pod::kind(&()).to_string(),
        name: key.1.clone(),
        uid: spec.pod_uid.clone(),
        ..Default::default()
    };
    NetpolEndpoint {
        metadata: ObjectMeta {
            name: Some(key.1.clone()),
            namespace: Some(key.0.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec,
    }
}

/// The field manager of the agents' server-side applies.
const MANAGER: &str = "netpol-agent";

/// Writes `a` (server-side apply, then delete), counting each outcome; failures are logged
/// and left for the next round, which finds them still different.
pub async fn apply(client: &Client, a: Announcements, metrics: &Metrics) {
    for ep in a.publish {
        let (ns, name) = (ep.metadata.namespace.clone().unwrap_or_default(), ep.metadata.name.clone());
        let name = name.unwrap_or_default();
        let api: Api<NetpolEndpoint> = Api::namespaced(client.clone(), &ns);
        let mut body = serde_json::to_value(&ep).unwrap_or_default();
        body["apiVersion"] = NetpolEndpoint::api_version(&()).as_ref().into();
        body["kind"] = NetpolEndpoint::kind(&()).as_ref().into();
        match api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(body)).await {
            Ok(_) => {
                metrics.announced(Announced::Published);
                debug!(pod = %format!("{ns}/{name}"), ip = %ep.spec.ipv4, "announced")
            }
            Err(e) => {
                metrics.announced(Announced::Failed);
                warn!(pod = %format!("{ns}/{name}"), "announcing the pod's address failed: {e}")
            }
        }
    }
    for (ns, name) in a.withdraw {
        let api: Api<NetpolEndpoint> = Api::namespaced(client.clone(), &ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                metrics.announced(Announced::Withdrawn);
                debug!(pod = %format!("{ns}/{name}"), "announcement withdrawn")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                metrics.announced(Announced::Failed);
                warn!(pod = %format!("{ns}/{name}"), "withdrawing the announcement failed: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use k8s_openapi::api::core::v1::Pod;
    use netpol_policy::model::Object;

    use super::*;

    fn key(name: &str) -> Key {
        ("default".into(), name.into())
    }

    fn announced(m: &mut Model, name: &str, node: &str, ip: [u8; 4]) {
        let spec =
            NetpolEndpointSpec { pod_uid: format!("uid-{name}"), node_name: node.into(), ipv4: ip.into() };
        m.upsert(Object::NetpolEndpoint(Box::new(announcement(&key(name), spec)))).unwrap();
    }

    fn local(name: &str, ip: [u8; 4], uid: Option<&str>) -> LocalPod {
        LocalPod { key: key(name), ip: Ipv4Addr::from(ip), uid: uid.map(String::from) }
    }

    #[test]
    fn publishes_what_differs_withdraws_only_its_own_and_waits_for_unknown_uids() {
        let mut m = Model::default();
        let mut watched = Pod::default();
        watched.metadata.name = Some("watched".into());
        watched.metadata.namespace = Some("default".into());
        watched.metadata.uid = Some("uid-watched".into());
        m.upsert(Object::Pod(Box::new(watched))).unwrap();
        announced(&mut m, "same", "me", [10, 0, 0, 2]);
        announced(&mut m, "moved", "me", [10, 0, 0, 3]);
        announced(&mut m, "stale", "me", [10, 0, 0, 4]);
        announced(&mut m, "theirs", "other", [10, 0, 1, 4]);
        let pods = [
            local("same", [10, 0, 0, 2], Some("uid-same")),
            local("moved", [10, 0, 0, 9], Some("uid-moved")),
            local("watched", [10, 0, 0, 5], None),
            local("unknown", [10, 0, 0, 6], None),
            // Recreated under the same name: the later registration is announced.
            local("again", [10, 0, 0, 7], Some("uid-again-1")),
            local("again", [10, 0, 0, 8], Some("uid-again-2")),
        ];
        let due = diff(&m, "me", &pods);
        let published: Vec<(String, String, Ipv4Addr)> = due
            .publish
            .iter()
            .map(|e| (e.metadata.name.clone().unwrap(), e.spec.pod_uid.clone(), e.spec.ipv4))
            .collect();
        assert_eq!(
            published,
            [
                ("again".into(), "uid-again-2".into(), Ipv4Addr::new(10, 0, 0, 8)),
                ("moved".into(), "uid-moved".into(), Ipv4Addr::new(10, 0, 0, 9)),
                ("watched".into(), "uid-watched".into(), Ipv4Addr::new(10, 0, 0, 5)),
            ]
        );
        let owner = &due.publish[1].metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Pod", "moved", "uid-moved")
        );
        assert_eq!(due.withdraw, [key("stale")]);
    }
}
