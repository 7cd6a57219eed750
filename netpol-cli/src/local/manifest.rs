//! Reading manifests as kubectl does: multi-document YAML (or JSON), `List`s expanded,
//! errors that name the file and the line.

use netpol_api::resources::{Object, ResourceKind};
use serde::Deserialize;
use serde_json::Value;

/// The objects of one manifest text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Vec<Object>, String> {
    let mut values = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| {
            let at = e.location().map(|l| format!("line {}: ", l.line())).unwrap_or_default();
            format!("error parsing {source}: {at}{e}")
        })?;
        match v {
            Value::Null => continue,
            Value::Object(_) if v["kind"] == "List" => {
                values.extend(v["items"].as_array().cloned().unwrap_or_default());
            }
            Value::Object(_) => values.push(v),
            _ => return Err(format!("error parsing {source}: a document is not an object")),
        }
    }
    values.into_iter().map(|v| typed(v, source)).collect()
}

/// One document as a typed object, or kubectl's error for it.
fn typed(v: Value, source: &str) -> Result<Object, String> {
    let kind = v["kind"].as_str().unwrap_or("");
    let api = v["apiVersion"].as_str().unwrap_or("");
    if ResourceKind::from_kind(kind).is_none_or(|k| k.api_version() != api) {
        return Err(format!(
            "error: resource mapping not found for name: {:?} namespace: {:?} from {source:?}: no matches for kind {kind:?} in version {api:?}",
            v["metadata"]["name"].as_str().unwrap_or(""),
            v["metadata"]["namespace"].as_str().unwrap_or("")
        ));
    }
    Object::from_value(v).map_err(|e| format!("error: error validating {source:?}: {e}"))
}

/// Reads FILE, every *.yaml/*.yml/*.json of DIR (sorted), or stdin for "-".
pub fn read(path: &str) -> Result<Vec<Object>, String> {
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
        let e = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: http}]}]}\n", "x.yaml").unwrap_err();
        assert!(e.contains("x.yaml") && e.contains("spec.containers[0].ports[0].containerPort"), "{e}");
        let ok = parse("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n", "x").unwrap();
        assert_eq!(ok.len(), 2);
    }
}
