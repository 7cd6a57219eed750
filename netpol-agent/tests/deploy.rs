//! deploy/ as an operator uses it, checked without a cluster: every manifest parses as its
//! Kubernetes type with no field unknown to it (a typo would be silently dropped by the
//! API server's pruning); the ClusterRole grants exactly what the agent uses
//! ([`netpol_agent::sources::kubernetes::grants`], the one source of truth); the
//! DaemonSet runs the agent with what it needs (probes on its health command, the CNI
//! configuration directory, the node's cgroup2, bpffs); kustomization.yaml lists every
//! manifest; the kind cluster and the agent agree on the pod range; `crds.yaml` is the
//! CustomResourceDefinition the agent's types define (`NETPOL_UPDATE_MANIFESTS=1` rewrites
//! it from them).

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::CustomResourceExt;
use netpol_policy::crd::NetpolEndpoint;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

fn deploy(path: &str) -> String {
    let full = format!("{}/../deploy/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn documents(path: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&deploy(path)).map(|d| Value::deserialize(d).unwrap()).collect()
}

/// The first path where `a` has something `b` does not (or differs).
fn difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.iter().find_map(|(k, v)| match y.get(k) {
            Some(w) => difference(v, w, &format!("{at}.{k}")),
            None => Some(format!("{at}.{k} (unknown field)")),
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (v, w))| difference(v, w, &format!("{at}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{at}: {a} became {b}")),
    }
}

/// The document of `kind` as its type, refusing any field the type does not know.
fn strict<T: DeserializeOwned + Serialize>(docs: &[Value], kind: &str) -> T {
    let doc = docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if let Some(d) = difference(doc, &back, kind) {
        panic!("{d}");
    }
    typed
}

#[test]
fn every_manifest_parses_strictly_and_the_role_grants_exactly_what_the_agent_uses() {
    let docs = documents("netpol.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]);
    strict::<ServiceAccount>(&docs, "ServiceAccount");
    strict::<ClusterRoleBinding>(&docs, "ClusterRoleBinding");
    let role: ClusterRole = strict(&docs, "ClusterRole");
    let granted: BTreeSet<(String, String, String)> = role
        .rules
        .iter()
        .flatten()
        .flat_map(|r| {
            let groups = r.api_groups.clone().unwrap_or_default();
            let resources = r.resources.clone().unwrap_or_default();
            groups.into_iter().flat_map(move |g| {
                let verbs = r.verbs.clone();
                resources.clone().into_iter().flat_map(move |res| {
                    let g = g.clone();
                    verbs.clone().into_iter().map(move |v| (g.clone(), res.clone(), v))
                })
            })
        })
        .collect();
    let used: BTreeSet<(String, String, String)> = netpol_agent::sources::kubernetes::grants()
        .into_iter()
        .map(|(g, r, v)| (g, r, v.to_string()))
        .collect();
    assert_eq!(granted, used, "the ClusterRole must grant exactly what the agent uses");
    // Besides list and watch of each kind: get the CRD, patch and delete announcements,
    // create and patch Events, patch CiliumNetworkPolicies' status.
    assert_eq!(used.len(), netpol_agent::sources::WATCHED.len() * 2 + 6, "a watched kind has no grant");
}

#[test]
fn the_daemonset_runs_the_agent_with_what_it_needs() {
    let docs = documents("netpol.yaml");
    let ds: DaemonSet = strict(&docs, "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.node_selector.unwrap()["kubernetes.io/os"], "linux");
    assert!(pod.termination_grace_period_seconds.is_some());
    let agent = &pod.containers[0];
    let args = agent.args.clone().unwrap().join(" ");
    for want in [
        "run --source kubernetes --node-name $(NODE_NAME)",
        "--cni-conf-dir /host/etc/cni/net.d",
        "--cgroup /run/netpol/cgroupv2",
        "--cluster-cidr 10.244.0.0/16",
    ] {
        assert!(args.contains(want), "{want} missing from {args}");
    }
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.exec.as_ref()).and_then(|e| e.command.clone()).unwrap_or_default().join(" ")
    };
    assert_eq!(probe(&agent.readiness_probe), "/usr/bin/netpol-agent health");
    assert_eq!(probe(&agent.liveness_probe), "/usr/bin/netpol-agent health --live");
    let mounts: Vec<String> = agent.volume_mounts.iter().flatten().map(|m| m.mount_path.clone()).collect();
    for path in
        ["/sys/fs/bpf", "/run/netpol", "/var/lib/netpol", "/host/etc/cni/net.d", "/run/netpol/cgroupv2"]
    {
        assert!(mounts.iter().any(|m| m == path), "{path} is not mounted");
    }
    let volumes: Vec<(String, String)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
        .collect();
    assert!(volumes.contains(&("cgroup".into(), "/sys/fs/cgroup".into())), "{volumes:?}");
    assert!(agent.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some(), "no resource requests");
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        assert_eq!(c.image.as_deref(), Some("localhost/netpol:dev"), "{}", c.name);
        assert_eq!(
            c.image_pull_policy.as_deref(),
            Some("Never"),
            "{}: a loaded image is never pulled",
            c.name
        );
    }
    // The init container installs only the plugin, atomically; the configuration is the agent's.
    let init = pod.init_containers.unwrap()[0].command.clone().unwrap().join(" ");
    assert!(init.contains("mv ") && !init.contains("conflist"), "{init}");
}

#[test]
fn kustomize_lists_every_manifest_and_kind_agrees_on_the_pod_range() {
    let k = &documents("kustomization.yaml")[0];
    let listed: Vec<&str> = k["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert_eq!(listed, ["crds.yaml", "netpol.yaml"]);
    let kind = &documents("kind/cluster.yaml")[0];
    assert_eq!(kind["networking"]["disableDefaultCNI"], true);
    assert_eq!(kind["networking"]["podSubnet"], "10.244.0.0/16");
    let roles: Vec<&str> =
        kind["nodes"].as_array().unwrap().iter().map(|n| n["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
    let ignore = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "the build context would carry target/");
}

#[test]
fn the_crd_manifest_is_what_the_types_define() {
    let path = format!("{}/../deploy/crds.yaml", env!("CARGO_MANIFEST_DIR"));
    let defined = NetpolEndpoint::crd();
    if std::env::var_os("NETPOL_UPDATE_MANIFESTS").is_some() {
        let header =
            "# Generated from netpol_policy::crd (NETPOL_UPDATE_MANIFESTS=1 cargo test --test deploy).\n";
        std::fs::write(&path, format!("{header}{}", serde_yaml::to_string(&defined).unwrap())).unwrap();
    }
    let docs = documents("crds.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["CustomResourceDefinition"]);
    let shipped: CustomResourceDefinition = strict(&docs, "CustomResourceDefinition");
    assert_eq!(
        serde_json::to_value(&shipped).unwrap(),
        serde_json::to_value(&defined).unwrap(),
        "deploy/crds.yaml differs from the NetpolEndpoint type (NETPOL_UPDATE_MANIFESTS=1 rewrites it)"
    );
}

/// The CiliumNetworkPolicy CRD for clusters without Cilium: what the agent watches, as
/// Cilium names it (kind, group, version, plural, short names), kept out of kustomize so it
/// is only ever created, never applied over Cilium's own.
#[test]
fn the_cilium_crd_serves_what_the_agent_watches_and_is_never_applied() {
    use netpol_api::resources::ResourceKind;
    let docs = documents("cilium/ciliumnetworkpolicies.yaml");
    let crd: CustomResourceDefinition = strict(&docs, "CustomResourceDefinition");
    let kind = ResourceKind::CiliumNetworkPolicy;
    assert_eq!(crd.spec.names.kind, kind.kind());
    assert_eq!(crd.spec.names.plural, kind.plural());
    assert_eq!(crd.metadata.name.as_deref(), Some(kind.plural_resource().as_str()));
    assert_eq!(format!("{}/{}", crd.spec.group, crd.spec.versions[0].name), kind.api_version());
    assert_eq!(crd.spec.scope, "Namespaced");
    for short in crd.spec.names.short_names.iter().flatten() {
        assert_eq!(ResourceKind::parse(short), Some(kind), "{short}");
    }
    let k = &documents("kustomization.yaml")[0];
    assert!(!k.to_string().contains("cilium"), "kustomize would apply over Cilium's CRD");
    let script = deploy("kind/run-lab.sh");
    assert!(script.contains("kubectl create -f deploy/cilium/"), "run-lab.sh does not install it");
}
