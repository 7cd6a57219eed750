//! `get` as kubectl prints it: tables (plain and wide), JSON/YAML Lists, names, and the
//! jsonpath subset the lab uses (`{.items[0].metadata.name}`, `[*]`, literal text).

use anyhow::{bail, Result};
use serde_json::{json, Value};

/// KIND as typed (pods, po, deploy, svc, netpol, ns, ...) → the API kind.
pub fn kind_from_alias(s: &str) -> Result<&'static str> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => "Pod",
        "deployment" | "deployments" | "deploy" | "deployment.apps" | "deployments.apps" => "Deployment",
        "service" | "services" | "svc" => "Service",
        "networkpolicy" | "networkpolicies" | "netpol" | "networkpolicies.networking.k8s.io" => {
            "NetworkPolicy"
        }
        "namespace" | "namespaces" | "ns" => "Namespace",
        "node" | "nodes" | "no" => "Node",
        _ => bail!("error: the server doesn't have a resource type {s:?}"),
    })
}

pub fn plural(kind: &str) -> &'static str {
    match kind {
        "Pod" => "pods",
        "Deployment" => "deployments",
        "Service" => "services",
        "NetworkPolicy" => "networkpolicies",
        "Namespace" => "namespaces",
        _ => "nodes",
    }
}

/// `deployments.apps`, as kubectl's NotFound errors name a resource.
pub fn plural_resource(kind: &str) -> String {
    match kind {
        "Deployment" => "deployments.apps".into(),
        "NetworkPolicy" => "networkpolicies.networking.k8s.io".into(),
        k => plural(k).into(),
    }
}

/// An equality-based label selector: `a=b,c!=d,e,!f` (also `==`).
pub fn selector_matches(sel: &str, labels: &Value) -> bool {
    sel.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k.trim()].is_null()
        } else {
            !labels[term].is_null()
        }
    })
}

fn age(obj: &Value) -> String {
    let then = obj["metadata"]["creationTimestamp"].as_str().and_then(crate::calendar::parse_rfc3339);
    let Some(then) = then else { return "<unknown>".into() };
    let s = crate::calendar::unix_now().saturating_sub(then);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn selector_text(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let vals: Vec<&str> =
            e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        parts.push(format!(
            "{} {} ({})",
            e["key"].as_str().unwrap_or(""),
            e["operator"].as_str().unwrap_or("").to_lowercase(),
            vals.join(",")
        ));
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// The table of one kind (rows already filtered), kubectl's columns; `prefix` goes before
/// each name (`deployment.apps/` when several kinds are listed).
pub fn table(
    kind: &str,
    objs: &[Value],
    all_namespaces: bool,
    wide: bool,
    pods: &[Value],
    prefix: &str,
) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let head: Vec<&str> = match kind {
        "Pod" if wide => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"],
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "Service" => vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        "NetworkPolicy" => vec!["NAME", "POD-SELECTOR", "AGE"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        _ => vec!["NAME", "STATUS", "AGE"],
    };
    let mut header: Vec<String> = head.iter().map(|s| s.to_string()).collect();
    if all_namespaces && kind != "Namespace" && kind != "Node" {
        header.insert(0, "NAMESPACE".into());
    }
    rows.push(header);
    for o in objs {
        let bare = o["metadata"]["name"].as_str().unwrap_or("").to_string();
        let name = format!("{prefix}{bare}");
        let mut row = match kind {
            "Pod" => {
                let ready = if o["status"]["podIP"].is_string() { "1/1" } else { "0/1" };
                let mut r = vec![
                    name,
                    ready.into(),
                    o["status"]["phase"].as_str().unwrap_or("Pending").into(),
                    "0".into(),
                    age(o),
                ];
                if wide {
                    r.push(o["status"]["podIP"].as_str().unwrap_or("<none>").into());
                    r.push(o["spec"]["nodeName"].as_str().unwrap_or("<none>").into());
                }
                r
            }
            "Deployment" => {
                let want = o["spec"]["replicas"].as_u64().unwrap_or(1);
                let ns = o["metadata"]["namespace"].as_str();
                let have = pods
                    .iter()
                    .filter(|p| p["metadata"]["namespace"].as_str() == ns)
                    .filter(|p| {
                        p["metadata"]["annotations"]["netpol.io/owner"] == json!(format!("Deployment/{bare}"))
                    })
                    .filter(|p| p["status"]["podIP"].is_string())
                    .count();
                vec![name, format!("{have}/{want}"), have.to_string(), have.to_string(), age(o)]
            }
            "Service" => {
                let ports: Vec<String> = o["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                    .collect();
                vec![
                    name,
                    o["spec"]["type"].as_str().unwrap_or("ClusterIP").into(),
                    o["spec"]["clusterIP"].as_str().unwrap_or("<none>").into(),
                    "<none>".into(),
                    ports.join(","),
                    age(o),
                ]
            }
            "NetworkPolicy" => vec![name, selector_text(&o["spec"]["podSelector"]), age(o)],
            _ => vec![name, "Active".into(), age(o)],
        };
        if all_namespaces && kind != "Namespace" && kind != "Node" {
            row.insert(0, o["metadata"]["namespace"].as_str().unwrap_or("").into());
        }
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| if i + 1 == r.len() { c.clone() } else { format!("{c:<w$}   ", w = widths[i]) })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A kubectl-style List of objects.
pub fn list(objs: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": objs, "metadata": {"resourceVersion": ""}})
}

fn walk<'a>(v: &'a Value, path: &str) -> Result<Vec<&'a Value>> {
    let mut cur = vec![v];
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (field, index) = match seg.split_once('[') {
            Some((f, rest)) => (f, Some(rest.trim_end_matches(']'))),
            None => (seg, None),
        };
        let mut next = Vec::new();
        for c in cur {
            let c = if field.is_empty() { c } else { &c[field] };
            match index {
                None => next.push(c),
                Some("*") => next.extend(c.as_array().into_iter().flatten()),
                Some(i) => {
                    let i: usize = i
                        .parse()
                        .map_err(|_| anyhow::anyhow!("error: error parsing jsonpath: bad index {i:?}"))?;
                    match c.as_array().and_then(|a| a.get(i)) {
                        Some(x) => next.push(x),
                        None => bail!(
                            "error: error executing jsonpath {path:?}: array index out of bounds: index {i}"
                        ),
                    }
                }
            }
        }
        cur = next;
    }
    Ok(cur)
}

/// `{.items[0].metadata.name}` and friends, with literal text between expressions.
pub fn jsonpath(expr: &str, v: &Value) -> Result<String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| anyhow::anyhow!("error: error parsing jsonpath {expr:?}: unclosed action"))?;
        let path = &rest[start + 1..start + end];
        let vals = walk(v, path)?;
        let text: Vec<String> = vals
            .iter()
            .filter(|x| !x.is_null())
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&text.join(" "));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_as_the_lab_uses_it() {
        let v = list(&[json!({"metadata": {"name": "frontend-abcde"}}), json!({"metadata": {"name": "b"}})]);
        assert_eq!(jsonpath("{.items[0].metadata.name}", &v).unwrap(), "frontend-abcde");
        assert_eq!(jsonpath("{.items[*].metadata.name}", &v).unwrap(), "frontend-abcde b");
        assert_eq!(jsonpath("name={.items[1].metadata.name}\n", &v).unwrap(), "name=b\n");
        assert!(jsonpath("{.items[5].metadata.name}", &v).is_err());
    }

    #[test]
    fn selectors() {
        let l = json!({"app": "frontend", "tier": "web"});
        assert!(selector_matches("app=frontend", &l));
        assert!(selector_matches("app==frontend,tier", &l));
        assert!(!selector_matches("app!=frontend", &l));
        assert!(selector_matches("!missing", &l));
        assert!(!selector_matches("missing", &l));
    }
}
