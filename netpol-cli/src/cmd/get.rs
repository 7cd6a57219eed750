//! `netpol local get KIND[,KIND] [NAME...]`: kubectl's tables, `-o wide|yaml|json|name|
//! jsonpath=EXPR`, `-l`, `-A`.

use anyhow::{anyhow, bail, Result};
use k8s_openapi::api::core::v1::Pod;
use netpol_api::{
    client::Method,
    resources::{Object, ResourceKind},
    PolicyStatus, PATH_POLICIES,
};
use serde_json::Value;

use crate::local::{output, output::Format, Local};

#[derive(clap::Args)]
pub struct Args {
    /// KIND[,KIND]: pods, deployments, services, networkpolicies (netpol), namespaces, nodes.
    /// (Parsed when run, so an unknown kind fails in one line as kubectl's does.)
    kinds: String,
    /// Only these objects (with one name, json, yaml and jsonpath show the object itself,
    /// as kubectl does).
    names: Vec<String>,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// wide, yaml, json, name, jsonpath=EXPR
    #[arg(short, long, value_parser = |s: &str| s.parse::<Format>())]
    output: Option<Format>,
}

/// KIND[,KIND] as typed.
fn kinds(s: &str) -> Result<Vec<ResourceKind>> {
    s.split(',')
        .filter(|k| !k.is_empty())
        .map(|k| super::kind(k).map_err(|e| anyhow!("error: {e}")))
        .collect()
}

impl Args {
    /// Whether `o` is in the selection.
    fn selects(&self, o: &Object) -> bool {
        let labels = o.meta().labels.clone().unwrap_or_default();
        (self.all_namespaces || !o.kind().namespaced() || o.namespace() == self.namespace)
            && self.selector.as_deref().is_none_or(|s| output::selector_matches(s, &labels))
            && (self.names.is_empty() || self.names.iter().any(|n| n == o.name()))
    }
}

/// The selected objects of one kind, sorted by namespace and name, typed and as JSON.
fn select(args: &Args, local: &Local, kind: ResourceKind) -> Result<Vec<(Object, Value)>> {
    let mut objs: Vec<(Object, Value)> = local
        .values(kind)?
        .into_iter()
        .map(|v| Ok((Object::from_value(v.clone())?, v)))
        .collect::<Result<Vec<_>>>()?;
    objs.retain(|(o, _)| args.selects(o));
    if let Some(missing) = args.names.iter().find(|n| !objs.iter().any(|(o, _)| o.name() == n.as_str())) {
        bail!("Error from server (NotFound): {} \"{missing}\" not found", kind.singular_resource());
    }
    objs.sort_by(|(a, _), (b, _)| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    Ok(objs)
}

pub fn run(args: Args, local: &Local) -> Result<u8> {
    let kinds = kinds(&args.kinds)?;
    let mut all: Vec<(ResourceKind, Vec<(Object, Value)>)> = Vec::new();
    for kind in &kinds {
        all.push((*kind, select(&args, local, *kind)?));
    }
    let items: Vec<Value> = all.iter().flat_map(|(_, o)| o.iter().map(|(_, v)| v.clone())).collect();
    // One object asked for by name is shown as itself, a selection as a List.
    let shown = match (args.names.len(), items.as_slice()) {
        (1, [one]) => one.clone(),
        _ => output::list(&items),
    };
    match args.output.as_ref().unwrap_or(&Format::Table) {
        Format::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&shown)?),
        Format::Name => {
            for (kind, objs) in &all {
                for (o, _) in objs {
                    println!("{}/{}", kind.singular_resource(), o.name());
                }
            }
        }
        Format::JsonPath(expr) => print!("{}", output::jsonpath(expr, &shown)?),
        Format::Table | Format::Wide => tables(&args, local, &all)?,
    }
    Ok(0)
}

/// kubectl's tables, one per kind, rows named kind/name when several kinds are listed.
fn tables(args: &Args, local: &Local, all: &[(ResourceKind, Vec<(Object, Value)>)]) -> Result<()> {
    let pods: Vec<Pod> = local.list().map_err(|e| anyhow!(e))?;
    let wide = args.output == Some(Format::Wide);
    let policies: Vec<PolicyStatus> = match wide {
        true => local.api(Method::GET, PATH_POLICIES, None)?,
        false => Vec::new(),
    };
    let ctx = output::Context { pods: &pods, policies: &policies };
    let mut first = true;
    for (kind, objs) in all {
        if objs.is_empty() {
            if all.len() == 1 {
                if args.all_namespaces {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {} namespace.", args.namespace);
                }
            }
            continue;
        }
        if !first {
            println!();
        }
        first = false;
        let prefix = if all.len() > 1 { format!("{}/", kind.singular_resource()) } else { String::new() };
        let typed: Vec<Object> = objs.iter().map(|(o, _)| o.clone()).collect();
        println!("{}", output::table(*kind, &typed, args.all_namespaces, wide, &ctx, &prefix));
    }
    Ok(())
}
