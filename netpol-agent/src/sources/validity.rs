//! A CiliumNetworkPolicy's `Valid` condition (`status.conditions`): False, naming the
//! field, while its spec is rejected; True once a later version is accepted. NetworkPolicy
//! has no status in the Kubernetes API: its rejections are Events only.
//!
//! Invariants: validity is the same on every node, so every node writes the same condition
//! for a version of the spec (the writes are idempotent), and a node writes only what
//! differs from the status the object was delivered with — so its own write, delivered
//! back, writes nothing. A policy never rejected gets no condition (no write per policy
//! and node); per-node states (over budget) stay Events.

use kube::{
    api::{Patch, PatchParams},
    Api, Client,
};
use netpol_policy::cilium::CiliumNetworkPolicy;
use serde_json::{json, Value};
use tracing::warn;

pub const CONDITION: &str = "Valid";

/// The condition a delivered policy should carry: None when it needs no write.
pub fn wanted(cnp: &CiliumNetworkPolicy, rejection: Option<&str>) -> Option<Value> {
    let generation = cnp.metadata.generation.unwrap_or(0);
    let current = current(cnp);
    let (status, reason, message) = match rejection {
        Some(msg) => ("False", "InvalidCiliumNetworkPolicy", msg.to_string()),
        // Accepted: only an earlier rejection needs clearing.
        None if current.is_some_and(|c| c["status"] == "False") => ("True", "Accepted", String::new()),
        None => return None,
    };
    let same = current.is_some_and(|c| {
        c["status"] == status && c["message"] == message.as_str() && c["observedGeneration"] == generation
    });
    (!same).then(|| {
        json!({"type": CONDITION, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation,
               "lastTransitionTime": k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)})
    })
}

fn current(cnp: &CiliumNetworkPolicy) -> Option<&Value> {
    let conditions = cnp.status.as_ref()?.get("conditions")?.as_array()?;
    conditions.iter().find(|c| c["type"] == CONDITION)
}

/// Writes the condition on the policy's status.
pub async fn publish(client: &Client, cnp: &CiliumNetworkPolicy, condition: Value) {
    let ns = cnp.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = cnp.metadata.name.clone().unwrap_or_default();
    let api: Api<CiliumNetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let patch = Patch::Merge(json!({"status": {"conditions": [condition]}}));
    if let Err(e) = api.patch_status(&name, &PatchParams::default(), &patch).await {
        warn!(policy = %format!("{ns}/{name}"), "writing the CiliumNetworkPolicy's Valid condition failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cnp(generation: i64, status: Value) -> CiliumNetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "x", "generation": generation},
                                       "spec": {}, "status": status}))
        .unwrap()
    }

    #[test]
    fn a_condition_is_written_on_rejection_and_cleared_once_accepted_never_twice() {
        let fresh = cnp(1, Value::Null);
        let rejected = wanted(&fresh, Some("spec.egress[0]: bad")).expect("a rejection is written");
        assert_eq!(
            (rejected["status"].as_str(), rejected["observedGeneration"].as_i64()),
            (Some("False"), Some(1))
        );
        assert_eq!(rejected["message"], "spec.egress[0]: bad");
        assert_eq!(wanted(&fresh, None), None, "a policy never rejected gets no condition");
        // Delivered back with the condition: nothing more to write for that version.
        let delivered = cnp(1, json!({"conditions": [rejected]}));
        assert_eq!(wanted(&delivered, Some("spec.egress[0]: bad")), None);
        // The next version is accepted: the rejection is cleared.
        let fixed = cnp(2, json!({"conditions": [rejected]}));
        let cleared = wanted(&fixed, None).expect("the rejection is cleared");
        assert_eq!(
            (cleared["status"].as_str(), cleared["observedGeneration"].as_i64()),
            (Some("True"), Some(2))
        );
        assert_eq!(wanted(&cnp(2, json!({"conditions": [cleared]})), None), None);
    }
}
