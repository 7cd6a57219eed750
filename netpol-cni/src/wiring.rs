//! The pod's network plumbing, through netlink (rtnetlink): no `ip` commands.
//!
//! - a veth pair: the host side (deterministic name) stays here, the peer is created directly
//!   inside the pod's namespace under CNI_IFNAME, so no name can clash in the host namespace;
//! - the pod gets its address as a /32, a link-scope route to the gateway 169.254.1.1 and a
//!   default route via it, plus a permanent neighbour entry for the gateway pointing at the
//!   host-side veth: no ARP for the gateway, no proxy_arp, and the host needs no address in
//!   the pod range;
//! - the host gets a /32 route to the pod through the veth, and forwarding on;
//! - both ends get their [`sysctl`] settings before they come up, so a pod never has an
//!   interface on which it could configure the node.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt;
use netpol_api::netlink::converse;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
        neighbour::NeighbourState,
        route::{RouteAddress, RouteAttribute, RouteScope},
    },
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use sha2::{Digest, Sha256};

use crate::{
    error::{code, internal, io, CniError, Result},
    sysctl,
};

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The host-side veth name: "np" + 12 hex digits of sha256(container id, ifname) — stable
/// for DEL and GC, at most 15 characters, collision-free in practice.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("np{hex}")
}

pub fn mac_string(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// [`converse`] with the plugin's errors.
fn netlink<T, F, Fut>(netns: Option<&File>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>>,
{
    converse(netns, f)
}

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> CniError + '_ {
    move |e| internal(what, e)
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno)
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(internal(format!("looking up {name}"), e)),
    }
}

fn link_mac(l: &LinkMessage) -> Vec<u8> {
    l.attributes
        .iter()
        .find_map(|a| if let LinkAttribute::Address(m) = a { Some(m.clone()) } else { None })
        .unwrap_or_default()
}

async fn set_up(h: &Handle, index: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl("setting a link up"))
}

/// What ADD made.
#[derive(Clone, Debug)]
pub struct Wired {
    pub host_name: String,
    pub host_index: u32,
    pub host_mac: String,
    pub pod_mac: String,
}

/// Creates and configures the veth pair. On error, whatever was made is removed.
pub fn add(netns: &File, ifname: &str, host_name: &str, ip: Ipv4Addr, mtu: u32) -> Result<Wired> {
    let r = add_inner(netns, ifname, host_name, ip, mtu);
    if r.is_err() {
        let _ = del(host_name);
    }
    r
}

fn add_inner(netns: &File, ifname: &str, host_name: &str, ip: Ipv4Addr, mtu: u32) -> Result<Wired> {
    let netns_fd = netns.as_raw_fd();
    let (host_index, host_mac) = netlink(None, |h| async move {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname.to_string())
            .mtu(mtu)
            .setns_by_fd(netns_fd)
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link().add(veth).execute().await.map_err(|e| {
            if is_errno(&e, libc::EEXIST) {
                CniError::new(
                    code::INTERNAL,
                    format!("interface {host_name} (host) or {ifname} (pod) already exists: is this container already attached?"),
                )
            } else {
                internal("creating the veth pair", e)
            }
        })?;
        let link = link_by_name(&h, host_name)
            .await?
            .ok_or_else(|| CniError::new(code::INTERNAL, format!("{host_name} vanished")))?;
        let index = link.header.index;
        sysctl::apply(host_name, &sysctl::HOST)?;
        set_up(&h, index).await?;
        Ok((index, link_mac(&link)))
    })?;

    let host_mac_bytes = host_mac.clone();
    let pod_mac = netlink(Some(netns), |h| async move {
        let lo =
            link_by_name(&h, "lo").await?.ok_or_else(|| CniError::new(code::INTERNAL, "no lo in the pod"))?;
        set_up(&h, lo.header.index).await?;
        let link = link_by_name(&h, ifname)
            .await?
            .ok_or_else(|| CniError::new(code::INTERNAL, format!("{ifname} did not appear in the pod")))?;
        let index = link.header.index;
        sysctl::apply(ifname, &sysctl::POD)?;
        set_up(&h, index).await?;
        h.address().add(index, IpAddr::V4(ip), 32).execute().await.map_err(nl("adding the pod address"))?;
        let to_gw = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(GATEWAY, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        h.route().add(to_gw).execute().await.map_err(nl("adding the gateway route"))?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(GATEWAY).output_interface(index).build();
        h.route().add(default).execute().await.map_err(nl("adding the default route"))?;
        h.neighbours()
            .add(index, IpAddr::V4(GATEWAY))
            .link_layer_address(&host_mac_bytes)
            .state(NeighbourState::Permanent)
            .execute()
            .await
            .map_err(nl("adding the gateway neighbour"))?;
        Ok(mac_string(&link_mac(&link)))
    })?;

    netlink(None, |h| async move {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(host_index)
            .scope(RouteScope::Link)
            .build();
        // Never replace: a /32 that is already there routes a live pod (of another network
        // with an overlapping range); ours went with the old veth above.
        match h.route().add(route).execute().await {
            Err(e) if is_errno(&e, libc::EEXIST) => Err(CniError::new(
                code::ADDRESS_IN_USE,
                format!("{ip}/32 is already routed on this host (another live pod holds the address)"),
            )),
            r => r.map_err(nl("adding the host route to the pod")),
        }
    })?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| io("enabling IPv4 forwarding", e))?;
    Ok(Wired { host_name: host_name.to_string(), host_index, host_mac: mac_string(&host_mac), pod_mac })
}

/// Deletes the host-side veth (and with it the pod side and the host route); false when it
/// was already gone.
pub fn del(host_name: &str) -> Result<bool> {
    netlink(None, |h| async move {
        let Some(link) = link_by_name(&h, host_name).await? else { return Ok(false) };
        match h.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
            Err(e) => Err(internal(format!("deleting {host_name}"), e)),
        }
    })
}

/// The up link named `name`, or what is wrong with it.
async fn up_link(h: &Handle, name: &str, side: &str) -> Result<u32> {
    let mismatch = |m: String| CniError::new(code::CHECK_MISMATCH, m);
    let link = link_by_name(h, name)
        .await?
        .ok_or_else(|| mismatch(format!("{side} interface {name} is missing")))?;
    if !link.header.flags.contains(LinkFlags::Up) {
        return Err(mismatch(format!("{side} interface {name} is down")));
    }
    Ok(link.header.index)
}

/// Whether an IPv4 route with this prefix length, attribute and output interface exists.
async fn has_route(h: &Handle, prefix_len: u8, attr: RouteAttribute, oif: u32) -> Result<bool> {
    let routes: Vec<_> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    Ok(routes.iter().any(|r| {
        r.header.destination_prefix_length == prefix_len
            && r.attributes.contains(&attr)
            && r.attributes.contains(&RouteAttribute::Oif(oif))
    }))
}

/// Verifies what ADD made; the error says what differs.
pub fn check(netns: &File, ifname: &str, host_name: &str, ip: Ipv4Addr) -> Result<()> {
    let mismatch = |m: String| CniError::new(code::CHECK_MISMATCH, m);
    netlink(None, |h| async move {
        let index = up_link(&h, host_name, "host").await?;
        sysctl::verify(host_name, "host", &sysctl::HOST)?;
        if !has_route(&h, 32, RouteAttribute::Destination(RouteAddress::Inet(ip)), index).await? {
            return Err(mismatch(format!("host route {ip}/32 via {host_name} is missing")));
        }
        Ok(())
    })?;
    netlink(Some(netns), |h| async move {
        let index = up_link(&h, ifname, "pod").await?;
        sysctl::verify(ifname, "pod", &sysctl::POD)?;
        let addrs: Vec<_> = h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        if !addrs.iter().any(|a| a.attributes.contains(&AddressAttribute::Address(IpAddr::V4(ip)))) {
            return Err(mismatch(format!("pod interface {ifname} does not have {ip}")));
        }
        if !has_route(&h, 0, RouteAttribute::Gateway(RouteAddress::Inet(GATEWAY)), index).await? {
            return Err(mismatch(format!("the pod has no default route via {GATEWAY} on {ifname}")));
        }
        Ok(())
    })
}
