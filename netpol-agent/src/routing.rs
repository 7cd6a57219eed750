//! Cross-node routes: every other node's pod range via that node's InternalIP, in the main
//! table of the node's network namespace (what kindnet does on kind, where the nodes share
//! one L2 network).
//!
//! Every route the agent makes carries its own route protocol number ([`RTPROT_NETPOL`]),
//! so it finds exactly its own routes again after a restart and never touches anyone
//! else's: a sync lists ours, replaces what should be there and deletes the rest.

use std::{collections::BTreeMap, net::Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netpol_api::netlink::{converse, SetupError};
use rtnetlink::{
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
    Handle, RouteMessageBuilder,
};

/// The route protocol that marks netpol's routes (`ip route show proto 78`).
pub const RTPROT_NETPOL: u8 = 78;
const MAIN_TABLE: u8 = 254;

#[derive(Debug, thiserror::Error)]
#[error("routes: {0}")]
pub struct RouteError(String);

/// What a sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteChanges {
    pub added: usize,
    pub removed: usize,
    /// Destinations another component already routes: left to it, never replaced.
    pub taken: Vec<Ipv4Net>,
}

impl From<SetupError> for RouteError {
    fn from(e: SetupError) -> Self {
        RouteError(e.to_string())
    }
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> RouteError {
    move |e| RouteError(format!("{what}: {e}"))
}

/// The destination and gateway of one of our routes.
fn parse(r: &RouteMessage) -> Option<(Ipv4Net, Option<Ipv4Addr>)> {
    let mut dst = None;
    let mut via = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
            _ => {}
        }
    }
    let net = Ipv4Net::new(dst.unwrap_or(Ipv4Addr::UNSPECIFIED), r.header.destination_prefix_length).ok()?;
    Some((net, via))
}

/// Our routes in the main table.
async fn ours(h: &Handle) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, RouteMessage)>, RouteError> {
    let all: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    Ok(all
        .into_iter()
        .filter(|r| r.header.protocol == RouteProtocol::Other(RTPROT_NETPOL) && r.header.table == MAIN_TABLE)
        .filter_map(|r| parse(&r).map(|(net, via)| (net, via, r)))
        .collect())
}

fn route(net: Ipv4Net, via: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .gateway(via)
        .protocol(RouteProtocol::Other(RTPROT_NETPOL))
        .build()
}

/// Makes our routes exactly `desired` (destination → gateway).
pub fn sync(desired: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<RouteChanges, RouteError> {
    let desired = desired.clone();
    converse(None, move |h| async move {
        let mut changes = RouteChanges::default();
        let existing = ours(&h).await?;
        for (net, via, msg) in &existing {
            if desired.get(net) != via.as_ref() {
                h.route().del(msg.clone()).execute().await.map_err(nl("deleting a route"))?;
                changes.removed += 1;
            }
        }
        for (net, via) in &desired {
            if existing.iter().any(|(n, v, _)| n == net && v.as_ref() == Some(via)) {
                continue;
            }
            // Never NLM_F_REPLACE: a route to the same destination that is not ours belongs
            // to someone else (another CNI, the operator).
            match h.route().add(route(*net, *via)).execute().await {
                Ok(()) => changes.added += 1,
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::EEXIST => {
                    changes.taken.push(*net)
                }
                Err(e) => return Err(nl("adding a route")(e)),
            }
        }
        Ok(changes)
    })
}

/// Our routes now (destination → gateway).
pub fn current() -> Result<BTreeMap<Ipv4Net, Ipv4Addr>, RouteError> {
    converse(None, |h| async move {
        Ok(ours(&h).await?.into_iter().filter_map(|(net, via, _)| via.map(|v| (net, v))).collect())
    })
}
