//! Reading manifests as kubectl does: multi-document YAML (or JSON), `List`s expanded,
//! errors that name the file and the line.

use serde::Deserialize;
use serde_json::Value;

/// The kinds local mode knows, as (kind, apiVersion, resource name for messages).
pub const KINDS: [(&str, &str, &str); 6] = [
    ("Namespace", "v1", "namespace"),
    ("Pod", "v1", "pod"),
    ("Service", "v1", "service"),
    ("Deployment", "apps/v1", "deployment.apps"),
    ("NetworkPolicy", "networking.k8s.io/v1", "networkpolicy.networking.k8s.io"),
    ("Node", "v1", "node"),
];

/// `deployment.apps/frontend`
pub fn resource_name(kind: &str) -> &'static str {
    KINDS.iter().find(|k| k.0 == kind).map(|k| k.2).unwrap_or("object")
}

/// The objects of one manifest text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| {
            let at = e.location().map(|l| format!("line {}: ", l.line())).unwrap_or_default();
            format!("error parsing {source}: {at}{e}")
        })?;
        match v {
            Value::Null => continue,
            Value::Object(_) if v["kind"] == "List" => {
                out.extend(v["items"].as_array().cloned().unwrap_or_default());
            }
            Value::Object(_) => out.push(v),
            _ => return Err(format!("error parsing {source}: a document is not an object")),
        }
    }
    for v in &out {
        let kind = v["kind"].as_str().unwrap_or("");
        let api = v["apiVersion"].as_str().unwrap_or("");
        if !KINDS.iter().any(|k| k.0 == kind && k.1 == api) {
            return Err(format!(
                "error: resource mapping not found for name: {:?} namespace: {:?} from {source:?}: no matches for kind {kind:?} in version {api:?}",
                v["metadata"]["name"].as_str().unwrap_or(""),
                v["metadata"]["namespace"].as_str().unwrap_or("")
            ));
        }
        if v["metadata"]["name"].as_str().unwrap_or("").is_empty() {
            return Err(format!("error: error validating {source:?}: a {kind} has no metadata.name"));
        }
    }
    Ok(out)
}

/// Reads FILE, every *.yaml/*.yml/*.json of DIR (sorted), or stdin for "-".
pub fn read(path: &str) -> Result<Vec<Value>, String> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("error: reading stdin: {e}"))?;
        return parse(&s, "STDIN");
    }
    let p = std::path::Path::new(path);
    let files: Vec<std::path::PathBuf> = if p.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .map_err(|e| format!("error: {path}: {e}"))?
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
            .collect();
        v.sort();
        v
    } else {
        vec![p.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| format!("error: the path {:?} does not exist ({e})", f.display().to_string()))?;
        out.extend(parse(&text, &f.display().to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_name_the_line_and_kinds_are_checked() {
        let e = parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n", "x.yaml").unwrap_err();
        assert!(e.contains("x.yaml") && e.contains("line"), "{e}");
        let e = parse("apiVersion: v1\nkind: Frob\nmetadata: {name: a}\n", "x.yaml").unwrap_err();
        assert!(e.contains("no matches for kind \"Frob\""), "{e}");
        let ok = parse("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n", "x").unwrap();
        assert_eq!(ok.len(), 2);
    }
}
