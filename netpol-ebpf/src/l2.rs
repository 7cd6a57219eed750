//! Frames that are not plain IPv4. Whatever the pod's isolation, a pod sends only IPv4 from
//! its own address and ARP about itself; VLAN tags, IPv6 (not enforced, and disabled on
//! both veth ends by the CNI) and every other ethertype are dropped both ways, each with its
//! own reason. ARP towards a pod (the node resolving it) passes.

use aya_ebpf::programs::TcContext;
use netpol_common::{reason, Endpoint, DIR_INGRESS};

use crate::{
    headers::{
        ptr_at, ArpHead, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETH_P_QINQ,
    },
    verdict::{verdict, Decision},
};

const ARPHRD_ETHER: u16 = 1;

#[inline(always)]
pub fn non_ipv4(ctx: &TcContext, ep: &Endpoint, dir: u8, eth_proto: u16) -> Decision {
    match eth_proto {
        ETH_P_ARP => arp(ctx, ep, dir),
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ => verdict(true, reason::DROP_VLAN),
        ETH_P_IPV6 => verdict(true, reason::DROP_IPV6),
        _ => verdict(true, reason::DROP_UNSUPPORTED_L3),
    }
}

/// ARP from a pod must be IPv4-over-Ethernet ARP about the pod's own address.
#[inline(always)]
fn arp(ctx: &TcContext, ep: &Endpoint, dir: u8) -> Decision {
    if dir == DIR_INGRESS {
        return verdict(false, reason::ALLOW_ARP);
    }
    let a = match ptr_at::<ArpHead>(ctx, ETH_HLEN) {
        Some(a) => a,
        None => return verdict(true, reason::DROP_MALFORMED),
    };
    let (htype, ptype, hlen, plen, spa) =
        unsafe { (u16::from_be((*a).htype), u16::from_be((*a).ptype), (*a).hlen, (*a).plen, (*a).spa) };
    if htype == ARPHRD_ETHER && ptype == ETH_P_IP && hlen == 6 && plen == 4 && spa == ep.ip.to_ne_bytes() {
        verdict(false, reason::ALLOW_ARP)
    } else {
        verdict(true, reason::DROP_ARP_SPOOFED)
    }
}
