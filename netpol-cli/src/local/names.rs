//! Names: each pod's `/etc/resolv.conf` as the kubelet writes it, and an `/etc/hosts` with
//! only localhost and the pod itself (`ip netns exec` mounts both from
//! `/etc/netns/<netns>/`). Services are found through the cluster's DNS, never hosts files.

use std::path::Path;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Pod, PodSpec};

use super::{Local, Runtime};

impl Local {
    /// Writes every pod's resolver files.
    pub(super) fn refresh_names(&self, rt: &Runtime) -> Result<()> {
        let kube_dns = self.kube_dns()?;
        let pods = self.list::<Pod>()?;
        for (key, pod) in &rt.pods {
            let (pod_ns, pod_name) = key.split_once('/').expect("namespace/name");
            let spec = pods
                .iter()
                .find(|p| {
                    p.metadata.namespace.as_deref() == Some(pod_ns)
                        && p.metadata.name.as_deref() == Some(pod_name)
                })
                .and_then(|p| p.spec.clone())
                .unwrap_or_default();
            let dir = Path::new("/etc/netns").join(&pod.netns);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("hosts"), format!("127.0.0.1\tlocalhost\n{}\t{pod_name}\n", pod.ip))?;
            std::fs::write(dir.join("resolv.conf"), resolv_conf(&spec, pod_ns, kube_dns.as_deref()))?;
        }
        Ok(())
    }
}

/// A resolv.conf option: its name and, for `name:value` ones, the value.
type ResolvOption = (String, Option<String>);

/// The node's own resolver settings (for `dnsPolicy: Default`): nameservers and searches.
fn host_resolver() -> (Vec<String>, Vec<String>) {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let field = |k: &str| -> Vec<String> {
        host.lines()
            .filter_map(|l| l.strip_prefix(k))
            .flat_map(|rest| rest.split_whitespace().map(str::to_string))
            .collect()
    };
    (field("nameserver "), field("search "))
}

/// A pod's resolv.conf, as the kubelet writes it: `ClusterFirst` (the default) asks the
/// cluster's DNS with the namespace's search path and `ndots:5`; `Default` takes the node's;
/// `None` only what `dnsConfig` says; `dnsConfig` adds nameservers and searches and
/// overrides options by name.
fn resolv_conf(spec: &PodSpec, namespace: &str, kube_dns: Option<&str>) -> String {
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<ResolvOption>) = match spec
        .dns_policy
        .as_deref()
        .unwrap_or("ClusterFirst")
    {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "Default" => {
            let (servers, searches) = host_resolver();
            (servers, searches, Vec::new())
        }
        _ => (
            kube_dns.map(str::to_string).into_iter().collect(),
            [format!("{namespace}.svc.cluster.local"), "svc.cluster.local".into(), "cluster.local".into()]
                .into(),
            vec![("ndots".to_string(), Some("5".to_string()))],
        ),
    };
    if let Some(config) = &spec.dns_config {
        servers.extend(config.nameservers.iter().flatten().cloned());
        searches.extend(config.searches.iter().flatten().cloned());
        for o in config.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            options.retain(|(n, _)| n != name);
            options.push((name.clone(), o.value.clone()));
        }
    }
    let mut out = String::new();
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .into_iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}:{v}"),
                None => n,
            })
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn resolv_conf_follows_dns_policy_and_dns_config() {
        let plain = resolv_conf(&PodSpec::default(), "web", Some("10.96.0.10"));
        assert_eq!(
            plain,
            "nameserver 10.96.0.10\nsearch web.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        let ndots = spec(
            serde_json::json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
        );
        assert!(resolv_conf(&ndots, "web", Some("10.96.0.10")).ends_with("options ndots:1\n"));
        let none = spec(serde_json::json!({"containers": [], "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["192.0.2.53"], "searches": ["example"], "options": [{"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&none, "web", Some("10.96.0.10")),
            "nameserver 192.0.2.53\nsearch example\noptions edns0\n"
        );
    }
}
