//! deploy/netpol.yaml parses as the Kubernetes types, and its RBAC grants what the agent's
//! watchers (list/watch) and event recorder (create) use. No cluster needed.

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::ConfigMap, rbac::v1::ClusterRole};
use serde::Deserialize;
use serde_json::Value;

fn documents() -> Vec<Value> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/netpol.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let doc = docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

#[test]
fn the_manifests_parse_and_grant_what_the_agent_uses() {
    let docs = documents();
    let role: ClusterRole = of_kind(&docs, "ClusterRole");
    let grants = |group: &str, resource: &str, verb: &str| {
        role.rules.iter().flatten().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for (group, resource) in
        [("", "pods"), ("", "namespaces"), ("", "nodes"), ("networking.k8s.io", "networkpolicies")]
    {
        for verb in ["list", "watch"] {
            assert!(grants(group, resource, verb), "{verb} {resource} is not granted");
        }
    }
    assert!(grants("events.k8s.io", "events", "create"));

    let ds: DaemonSet = of_kind(&docs, "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    let agent = &pod.containers[0];
    let args = agent.args.clone().unwrap().join(" ");
    assert!(args.contains("run --source kubernetes --node-name $(NODE_NAME)"), "{args}");
    let mounts: Vec<String> = agent.volume_mounts.iter().flatten().map(|m| m.mount_path.clone()).collect();
    for path in ["/sys/fs/bpf", "/run/netpol", "/var/lib/netpol"] {
        assert!(mounts.iter().any(|m| m == path), "{path} is not mounted");
    }

    let cm: ConfigMap = of_kind(&docs, "ConfigMap");
    let conflist: Value = serde_json::from_str(&cm.data.unwrap()["10-netpol.conflist"]).unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "netpol-cni");
    assert!(conflist["plugins"][0].get("podCIDR").is_none(), "the Node's podCIDR comes from the agent");
}
