//! Label selectors (matchLabels AND matchExpressions).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

/// A parsed selector. The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub labels: BTreeMap<String, String>,
    pub exprs: Vec<Requirement>,
}

impl Selector {
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Validates and parses; errors carry the field path relative to the selector.
    pub fn parse(s: &LabelSelector) -> Result<Selector, (String, String)> {
        let mut exprs = Vec::new();
        for (i, r) in s.match_expressions.iter().flatten().enumerate() {
            let at = format!("matchExpressions[{i}]");
            let op = match r.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err((
                        format!("{at}.operator"),
                        format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
                    ))
                }
            };
            let values: BTreeSet<String> = r.values.iter().flatten().cloned().collect();
            match op {
                Op::In | Op::NotIn if values.is_empty() => {
                    return Err((format!("{at}.values"), format!("{} needs at least one value", r.operator)))
                }
                Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                    return Err((format!("{at}.values"), format!("{} takes no values", r.operator)))
                }
                _ => {}
            }
            if r.key.is_empty() {
                return Err((format!("{at}.key"), "is empty".into()));
            }
            exprs.push(Requirement { key: r.key.clone(), op, values });
        }
        Ok(Selector { labels: s.match_labels.clone().unwrap_or_default(), exprs })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.op {
                    Op::In => v.is_some_and(|v| r.values.contains(v)),
                    Op::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                    Op::Exists => v.is_some(),
                    Op::DoesNotExist => v.is_none(),
                }
            })
    }
}
