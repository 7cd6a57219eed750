//! `apply` and `delete` as kubectl does them against the local store: objects in
//! dependency order, each on its own, reported in the order given; Deployments turned into
//! their pods (names with a deterministic suffix); deleting a Deployment or a Namespace
//! takes what it owns with it.

use anyhow::{bail, Result};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use netpol_api::resources::{Object, ResourceKind};
use sha2::{Digest, Sha256};

use super::{now, Local, Runtime};

/// The annotation that ties a local pod to the Deployment that made it.
pub const OWNER: &str = "netpol.io/owner";

/// A pod's deterministic name suffix within its deployment.
fn suffix(ns: &str, deployment: &str, i: usize) -> String {
    let h = Sha256::digest(format!("{ns}/{deployment}/{i}"));
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    h.iter().take(5).map(|b| alphabet[*b as usize % alphabet.len()] as char).collect()
}

/// Whether the runtime pod `key` ("ns/name") belongs to the Deployment `ns/name`.
pub(super) fn owned_by(key: &str, ns: &str, deployment: &str) -> bool {
    key.strip_prefix(&format!("{ns}/{deployment}-")).is_some_and(|rest| rest.len() == 5)
}

/// Namespaces first, then policies (so a pod is never up before the policies that select
/// it), then Services, then the rest.
fn apply_order(o: &Object) -> u8 {
    match o.kind() {
        ResourceKind::Namespace => 0,
        ResourceKind::NetworkPolicy => 1,
        ResourceKind::Service => 2,
        _ => 3,
    }
}

impl Local {
    fn namespaces(&self) -> Result<Vec<String>> {
        Ok(self.objects(ResourceKind::Namespace)?.iter().map(|n| n.name().to_string()).collect())
    }

    /// kubectl apply: each object on its own; returns the lines to print and whether all
    /// succeeded. Returns once the datapath enforces the result.
    pub fn apply(&self, objects: Vec<Object>) -> Result<(Vec<String>, bool)> {
        self.require_up()?;
        let _lock = self.lock()?;
        let mut rt = self.load();
        let mut ok = true;
        let mut known = self.namespaces()?;
        // Applied in dependency order, reported in the order given (as kubectl prints).
        let mut objects: Vec<(usize, Object)> = objects.into_iter().enumerate().collect();
        objects.sort_by_key(|(i, o)| (apply_order(o), *i));
        let mut lines: Vec<(usize, String)> = Vec::new();
        for (at, mut obj) in objects {
            let what = format!("{}/{}", obj.kind().singular_resource(), obj.name());
            let ns = obj.namespace().to_string();
            if obj.kind().namespaced() {
                obj.meta_mut().namespace = Some(ns.clone());
                if !known.contains(&ns) {
                    lines.push((at, format!("Error from server (NotFound): error when creating {what:?}: namespaces {ns:?} not found")));
                    ok = false;
                    continue;
                }
            }
            obj.meta_mut().creation_timestamp.get_or_insert_with(now);
            let name = obj.name().to_string();
            let is_namespace = obj.kind() == ResourceKind::Namespace;
            let outcome = match obj {
                Object::Pod(p) => self.ensure_pod(&mut rt, &p).map(str::to_string),
                Object::Deployment(d) => self.apply_deployment(&mut rt, *d),
                other => self.put_keeping_age(other),
            };
            match outcome {
                Ok(action) => {
                    if is_namespace {
                        known.push(name);
                    }
                    lines.push((at, format!("{what} {action}")));
                }
                Err(e) => {
                    ok = false;
                    lines.push((at, format!("Error from server: error when applying {what:?}: {e:#}")));
                }
            }
            self.save(&rt)?;
        }
        self.refresh_names(&rt)?;
        lines.sort_by_key(|(at, _)| *at);
        Ok((lines.into_iter().map(|(_, l)| l).collect(), ok))
    }

    /// Stores an object, keeping the creation time of the version already stored.
    pub(super) fn put_keeping_age(&self, mut obj: Object) -> Result<String> {
        let key = obj.key();
        if let Some(old) = self.objects(obj.kind())?.into_iter().find(|o| o.key() == key) {
            obj.meta_mut().creation_timestamp = old.meta().creation_timestamp.clone();
        }
        let res = self.put(&[obj])?;
        match (&res[0].result, &res[0].error) {
            (_, Some(e)) => bail!("{e}"),
            (Some(r), None) => Ok(r.clone()),
            _ => bail!("no result"),
        }
    }

    /// Stores a Deployment and makes its pods exactly `replicas` pods of its template.
    pub(super) fn apply_deployment(&self, rt: &mut Runtime, dep: Deployment) -> Result<String> {
        let ns = dep.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = dep.metadata.name.clone().unwrap_or_default();
        let spec = dep.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        if selector.is_empty() || !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            bail!("Deployment.apps {name:?} is invalid: spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`");
        }
        let created = dep.metadata.creation_timestamp.clone();
        let action = self.put_keeping_age(Object::Deployment(Box::new(dep)))?;
        let wanted: Vec<String> =
            (0..replicas).map(|i| format!("{name}-{}", suffix(&ns, &name, i))).collect();
        // Pods of this deployment that should no longer exist.
        let surplus: Vec<String> = rt
            .pods
            .keys()
            .filter(|k| owned_by(k, &ns, &name) && !wanted.iter().any(|w| k[ns.len() + 1..] == **w))
            .cloned()
            .collect();
        for k in surplus {
            self.remove_pod(rt, &k, true)?;
        }
        for pod_name in wanted {
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(pod_name),
                    namespace: Some(ns.clone()),
                    labels: Some(labels.clone()),
                    annotations: Some([(OWNER.to_string(), format!("Deployment/{name}"))].into()),
                    creation_timestamp: created.clone(),
                    ..Default::default()
                },
                spec: spec.template.spec.clone(),
                status: None,
            };
            self.ensure_pod(rt, &pod)?;
        }
        Ok(action)
    }

    /// Deletes one object (a deployment with its pods, a namespace with its contents).
    pub fn delete_one(&self, kind: ResourceKind, ns: &str, name: &str) -> Result<String> {
        self.require_up()?;
        let _lock = self.lock()?;
        let mut rt = self.load();
        let ns = if kind.namespaced() { ns } else { "" };
        let found = match kind {
            ResourceKind::Pod => {
                let key = format!("{ns}/{name}");
                let had = rt.pods.contains_key(&key);
                self.remove_pod(&mut rt, &key, true)?;
                had || self.remove(kind, ns, name)?
            }
            ResourceKind::Deployment => {
                let pods: Vec<String> = rt.pods.keys().filter(|k| owned_by(k, ns, name)).cloned().collect();
                for k in pods {
                    self.remove_pod(&mut rt, &k, true)?;
                }
                self.remove(kind, ns, name)?
            }
            ResourceKind::Namespace => self.delete_namespace(&mut rt, name)?,
            _ => self.remove(kind, ns, name)?,
        };
        self.save(&rt)?;
        self.refresh_names(&rt)?;
        if found {
            Ok(format!("{} {name:?} deleted", kind.singular_resource()))
        } else {
            bail!("Error from server (NotFound): {} {name:?} not found", kind.plural_resource())
        }
    }

    /// A namespace with everything in it.
    fn delete_namespace(&self, rt: &mut Runtime, name: &str) -> Result<bool> {
        let inside: Vec<String> =
            rt.pods.keys().filter(|k| k.starts_with(&format!("{name}/"))).cloned().collect();
        for k in inside {
            self.remove_pod(rt, &k, true)?;
        }
        for kind in ResourceKind::ALL.into_iter().filter(|k| k.namespaced()) {
            for o in self.objects(kind)?.into_iter().filter(|o| o.namespace() == name) {
                self.remove(kind, name, o.name())?;
            }
        }
        self.remove(ResourceKind::Namespace, "", name)
    }
}
