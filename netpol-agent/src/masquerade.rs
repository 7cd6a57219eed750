//! Masquerade: pod traffic leaving the cluster's pod range gets the node's address, so
//! replies find their way back (what kindnet's `ip-masq` does on kind). The agent owns one
//! nftables table, `ip netpol-<name>`, with one NAT chain at postrouting:
//!
//! ```text
//! ip saddr <cluster range> ip daddr != <cluster range> masquerade
//! ```
//!
//! Written through nft's JSON API (the `nftables` crate), replaced atomically in one batch
//! (add, delete, add: the table exists whatever was there before), removed with the agent.
//! Policy is unaffected: the from-pod program has judged the packet by then (tc ingress on
//! the host-side veth comes before netfilter), with the pod's own address.

use std::borrow::Cow;

use ipnet::Ipv4Net;
use nftables::{
    batch::Batch,
    expr::{Expression, NamedExpression, Payload, PayloadField, Prefix},
    helper,
    schema::{Chain, NfListObject, Rule, Table},
    stmt::{Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

const CHAIN: &str = "postrouting";
/// srcnat, as `nft` names it.
const PRIORITY: i32 = 100;

#[derive(Debug, thiserror::Error)]
#[error("masquerade (nftables table {table}): {msg}")]
pub struct MasqueradeError {
    table: String,
    msg: String,
}

/// The table of the agent named `name`.
pub fn table_name(name: &str) -> String {
    format!("netpol-{name}")
}

fn table(name: &str) -> Table<'static> {
    Table { family: NfFamily::IP, name: Cow::Owned(table_name(name)), ..Default::default() }
}

fn address(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: "ip".into(),
        field: field.into(),
    })))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: net.prefix_len().into(),
    }))
}

/// The rule set: the table (emptied first), its chain and its one rule.
fn ruleset(name: &str, cluster: Ipv4Net) -> Batch<'static> {
    let t = table(name);
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(t.clone()));
    batch.delete(NfListObject::Table(t.clone()));
    batch.add(NfListObject::Table(t.clone()));
    batch.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: t.name.clone(),
        name: CHAIN.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    let from_pods = Match { left: address("saddr"), right: prefix(cluster), op: Operator::EQ };
    let leaving = Match { left: address("daddr"), right: prefix(cluster), op: Operator::NEQ };
    batch.add(NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: t.name.clone(),
        chain: CHAIN.into(),
        expr: Cow::Owned(vec![
            Statement::Match(from_pods),
            Statement::Match(leaving),
            Statement::Masquerade(None),
        ]),
        comment: Some("netpol: pod traffic leaving the cluster's pod range".into()),
        ..Default::default()
    }));
    batch
}

/// Installs (or replaces) the masquerade of pod traffic from `cluster` leaving it.
pub fn install(name: &str, cluster: Ipv4Net) -> Result<(), MasqueradeError> {
    helper::apply_ruleset(&ruleset(name, cluster).to_nftables())
        .map_err(|e| MasqueradeError { table: table_name(name), msg: e.to_string() })
}

/// Removes the table; nothing to do when it is not there.
pub fn remove(name: &str) -> Result<(), MasqueradeError> {
    let t = table(name);
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(t.clone()));
    batch.delete(NfListObject::Table(t));
    helper::apply_ruleset(&batch.to_nftables())
        .map_err(|e| MasqueradeError { table: table_name(name), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rule_masquerades_only_what_leaves_the_pod_range() {
        let batch = super::ruleset("n1", "10.244.0.0/16".parse().unwrap());
        let json = serde_json::to_string(&batch.to_nftables()).unwrap();
        for want in [
            r#""name":"netpol-n1""#,
            r#""hook":"postrouting""#,
            r#""op":"==""#,
            r#""op":"!=""#,
            r#""prefix":{"addr":"10.244.0.0","len":16}"#,
            r#""masquerade":null"#,
        ] {
            assert!(json.contains(want), "{want} not in {json}");
        }
    }
}
