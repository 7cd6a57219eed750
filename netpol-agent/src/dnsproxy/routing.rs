//! The node's routing for the proxy: a packet the from-pod program assigned to the proxy
//! carries the proxy's mark, and must be delivered locally although it is addressed to the
//! server a pod asked — `ip rule fwmark MARK lookup TABLE` and `local 0.0.0.0/0 dev lo
//! table TABLE`, as a transparent proxy needs. Each agent has its own mark and table, derived
//! from its name, so agents side by side in one namespace (local-mode nodes) never share or
//! remove each other's; both go when the agent stops.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netpol_api::netlink::{converse, SetupError};
use rtnetlink::{
    packet_route::{
        route::{RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
        AddressFamily,
    },
    Handle, IpVersion, RouteMessageBuilder,
};

/// The high bits of every proxy mark ("NP").
const MARK_BASE: u32 = 0x4e50_0000;
/// Tables from here on (well above the 253..255 of main, default and local).
const TABLE_BASE: u32 = 0x4e50_0000;

#[derive(Debug, thiserror::Error)]
#[error("DNS proxy routing: {0}")]
pub struct RoutingError(String);

impl From<SetupError> for RoutingError {
    fn from(e: SetupError) -> Self {
        RoutingError(e.to_string())
    }
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> RoutingError {
    move |e| RoutingError(format!("{what}: {e}"))
}

/// One agent's mark (its low bit clear: `PROXY_ANSWER_BIT` marks the answers) and table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyRouting {
    pub mark: u32,
    pub table: u32,
}

impl ProxyRouting {
    /// The agent named `name`'s: 15 bits of an FNV-1a hash of the name.
    pub fn of_agent(name: &str) -> ProxyRouting {
        let h = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
        let slot = (h ^ (h >> 15)) & 0x7fff;
        ProxyRouting { mark: MARK_BASE | (slot << 1), table: TABLE_BASE | slot }
    }

    /// Installs the rule and the route (again: what is there already stays).
    pub fn install(&self) -> Result<(), RoutingError> {
        let me = *self;
        converse(None, move |h| async move {
            if me.rules(&h).await?.is_empty() {
                let mut add =
                    h.rule().add().v4().fw_mark(me.mark).table_id(me.table).action(RuleAction::ToTable);
                add.message_mut().header.family = AddressFamily::Inet;
                add.execute().await.map_err(nl("adding the rule"))?;
            }
            let lo = crate::datapath::ifindex("lo").map_err(|e| RoutingError(e.to_string()))?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .table_id(me.table)
                .output_interface(lo)
                .build();
            match h.route().add(route).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::EEXIST => Ok(()),
                Err(e) => Err(nl("adding the local route")(e)),
            }
        })
    }

    /// Removes the rule and the table's routes.
    pub fn remove(&self) -> Result<(), RoutingError> {
        let me = *self;
        converse(None, move |h| async move {
            for r in me.rules(&h).await? {
                h.rule().del(r).execute().await.map_err(nl("deleting the rule"))?;
            }
            let routes: Vec<_> = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().table_id(me.table).build())
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            for r in routes.into_iter().filter(|r| table_of(r) == Some(me.table)) {
                h.route().del(r).execute().await.map_err(nl("deleting the local route"))?;
            }
            Ok(())
        })
    }

    /// Whether the rule is in place.
    pub fn installed(&self) -> Result<bool, RoutingError> {
        let me = *self;
        converse(None, move |h| async move { Ok(!me.rules(&h).await?.is_empty()) })
    }

    async fn rules(&self, h: &Handle) -> Result<Vec<RuleMessage>, RoutingError> {
        let all: Vec<RuleMessage> =
            h.rule().get(IpVersion::V4).execute().try_collect().await.map_err(nl("listing rules"))?;
        let ours = |r: &RuleMessage| {
            r.attributes.contains(&RuleAttribute::FwMark(self.mark))
                && r.attributes.contains(&RuleAttribute::Table(self.table))
        };
        Ok(all.into_iter().filter(ours).collect())
    }
}

fn table_of(r: &rtnetlink::packet_route::route::RouteMessage) -> Option<u32> {
    use rtnetlink::packet_route::route::RouteAttribute;
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Table(t) => Some(*t),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_get_their_own_mark_and_table() {
        let (a, b) = (ProxyRouting::of_agent("agent"), ProxyRouting::of_agent("test-lab"));
        assert_ne!((a.mark, a.table), (b.mark, b.table));
        assert_eq!(a, ProxyRouting::of_agent("agent"));
        for r in [a, b] {
            assert_eq!(r.mark & netpol_common::PROXY_ANSWER_BIT, 0);
            assert_eq!(r.mark & 0xffff_0000, MARK_BASE);
            assert!(r.table > 255);
        }
    }
}
