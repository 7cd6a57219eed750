//! `get` as kubectl prints it: tables (plain and wide), JSON/YAML Lists, names, and the
//! jsonpath subset the lab uses (`{.items[0].metadata.name}`, `[*]`, literal text).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
};
use netpol_api::{
    resources::{Object, ResourceKind},
    PolicyState, PolicyStatus,
};
use serde_json::{json, Value};

/// How `get` prints (`-o`): kubectl's table, wide table, YAML, JSON, names, or a jsonpath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
    JsonPath(String),
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        Ok(match s {
            "wide" => Format::Wide,
            "yaml" => Format::Yaml,
            "json" => Format::Json,
            "name" => Format::Name,
            _ => match s.strip_prefix("jsonpath=") {
                Some(expr) => Format::JsonPath(expr.to_string()),
                None => {
                    return Err(format!("unable to match a printer suitable for the output format {s:?}"))
                }
            },
        })
    }
}

/// An equality-based label selector: `a=b,c!=d,e,!f` (also `==`).
pub fn selector_matches(sel: &str, labels: &BTreeMap<String, String>) -> bool {
    let value = |k: &str| labels.get(k.trim()).map(String::as_str);
    sel.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            value(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            value(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            value(k).is_none()
        } else {
            value(term).is_some()
        }
    })
}

fn age(created: Option<&Time>) -> String {
    let Some(then) = created else { return "<unknown>".into() };
    let s = (super::now().0 - then.0).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn selector_text(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(format!("{} {} ({vals})", e.key, e.operator.to_lowercase()));
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn header(kind: ResourceKind, wide: bool) -> Vec<&'static str> {
    match kind {
        ResourceKind::Pod if wide => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"],
        ResourceKind::Pod => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        ResourceKind::Deployment => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ResourceKind::Service => vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        ResourceKind::NetworkPolicy if wide => vec!["NAME", "POD-SELECTOR", "AGE", "SELECTED", "STATUS"],
        ResourceKind::NetworkPolicy => vec!["NAME", "POD-SELECTOR", "AGE"],
        ResourceKind::CiliumNetworkPolicy if wide => vec!["NAME", "AGE", "SELECTED", "STATUS"],
        ResourceKind::CiliumNetworkPolicy => vec!["NAME", "AGE"],
        ResourceKind::Namespace | ResourceKind::Node => vec!["NAME", "STATUS", "AGE"],
    }
}

/// One row of kubectl's table, after the NAME column.
fn columns(o: &Object, wide: bool, ctx: &Context) -> Vec<String> {
    let pods = ctx.pods;
    let created = age(o.meta().creation_timestamp.as_ref());
    match o {
        Object::Pod(p) => {
            let status = p.status.clone().unwrap_or_default();
            let ready = if status.pod_ip.is_some() { "1/1" } else { "0/1" };
            let mut r =
                vec![ready.into(), status.phase.unwrap_or_else(|| "Pending".into()), "0".into(), created];
            if wide {
                r.push(status.pod_ip.unwrap_or_else(|| "<none>".into()));
                r.push(p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "<none>".into()));
            }
            r
        }
        Object::Deployment(d) => {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let owner = format!("Deployment/{}", o.name());
            let have = pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(o.namespace()))
                .filter(|p| {
                    let owned = p.metadata.annotations.as_ref().and_then(|a| a.get(super::objects::OWNER));
                    owned == Some(&owner)
                })
                .filter(|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
                .count();
            vec![format!("{have}/{want}"), have.to_string(), have.to_string(), created]
        }
        Object::Service(s) => {
            let spec = s.spec.clone().unwrap_or_default();
            let ports: Vec<String> = spec
                .ports
                .iter()
                .flatten()
                .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
                .collect();
            vec![
                spec.type_.unwrap_or_else(|| "ClusterIP".into()),
                spec.cluster_ip.unwrap_or_else(|| "<none>".into()),
                "<none>".into(),
                ports.join(","),
                created,
            ]
        }
        Object::NetworkPolicy(np) => {
            let selector = np
                .spec
                .as_ref()
                .and_then(|s| s.pod_selector.as_ref())
                .map(selector_text)
                .unwrap_or_else(|| "<none>".into());
            let mut r = vec![selector, created];
            if wide {
                r.extend(policy_status(ctx, "NetworkPolicy", o));
            }
            r
        }
        Object::CiliumNetworkPolicy(_) if wide => {
            let mut r = vec![created];
            r.extend(policy_status(ctx, "CiliumNetworkPolicy", o));
            r
        }
        Object::CiliumNetworkPolicy(_) => vec![created],
        Object::Namespace(_) | Object::Node(_) => vec!["Active".into(), created],
    }
}

/// What the rows of a table need besides their objects.
pub struct Context<'a> {
    pub pods: &'a [Pod],
    /// The agent's view of each policy (for the wide policy tables).
    pub policies: &'a [PolicyStatus],
}

/// SELECTED and STATUS: how many local endpoints the policy selects, and whether it is
/// enforced (or rejected, or over budget, and why).
fn policy_status(ctx: &Context, kind: &str, o: &Object) -> [String; 2] {
    let status =
        ctx.policies.iter().find(|p| p.kind == kind && p.namespace == o.namespace() && p.name == o.name());
    match status {
        None => ["0".into(), "Unknown".into()],
        Some(s) => {
            let state = match s.state {
                PolicyState::Enforced => "Enforced",
                PolicyState::Rejected => "Rejected",
                PolicyState::OverBudget => "OverBudget",
            };
            let text = s.message.as_ref().map_or(state.to_string(), |m| format!("{state}: {m}"));
            [s.selected.to_string(), text]
        }
    }
}

/// The table of one kind (rows already filtered), kubectl's columns; `prefix` goes before
/// each name (`deployment.apps/` when several kinds are listed).
pub fn table(
    kind: ResourceKind,
    objs: &[Object],
    all_namespaces: bool,
    wide: bool,
    ctx: &Context,
    prefix: &str,
) -> String {
    let namespaced = all_namespaces && kind.namespaced();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head: Vec<String> = header(kind, wide).iter().map(|s| s.to_string()).collect();
    if namespaced {
        head.insert(0, "NAMESPACE".into());
    }
    rows.push(head);
    for o in objs {
        let mut row = vec![format!("{prefix}{}", o.name())];
        row.extend(columns(o, wide, ctx));
        if namespaced {
            row.insert(0, o.namespace().to_string());
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
        let l: BTreeMap<String, String> =
            [("app", "frontend"), ("tier", "web")].map(|(k, v)| (k.to_string(), v.to_string())).into();
        assert!(selector_matches("app=frontend", &l));
        assert!(selector_matches("app==frontend,tier", &l));
        assert!(!selector_matches("app!=frontend", &l));
        assert!(selector_matches("!missing", &l));
        assert!(!selector_matches("missing", &l));
    }
}
