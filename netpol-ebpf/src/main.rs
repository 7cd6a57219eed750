//! netpol's datapath: two TC classifiers on the host side of every pod veth, and the
//! socket hooks that translate Services ([`service`]).
//!
//! `netpol_from_pod` (tc ingress there) judges packets the pod sends: what it may send at
//! all (anti-spoofing, no VLAN tags, no IPv6, no router messages), then the pod's egress
//! policy. `netpol_to_pod` (tc egress there) judges packets delivered to the pod: where they
//! may come from, then its ingress policy. All policy logic that can be precomputed is
//! precomputed by user space: the programs only parse, look up, and track flows.
//!
//! Per packet: endpoint lookup (by ifindex) → frame checks → IPv4 checks → conntrack
//! (forward, then reply) → for a new flow: ipcache (exact, then LPM) → policy (exact port,
//! port range, any port, any protocol; for the peer's identity, its CIDR identity, then any
//! peer) → conntrack insert. Verdicts (isolated = the pod is selected by a policy of this
//! direction):
//!
//! | packet                                             | not isolated | isolated |
//! |----------------------------------------------------|--------------|----------|
//! | no endpoint entry for the interface                | drop         | drop     |
//! | VLAN-tagged (tag in the frame or taken off already) | drop         | drop     |
//! | ARP to the pod; ARP from the pod about itself       | pass         | pass     |
//! | ARP from the pod about another address             | drop         | drop     |
//! | IPv6 (not enforced; disabled on the veths)         | drop         | drop     |
//! | other ethertypes                                   | drop         | drop     |
//! | truncated / malformed IPv4 or L4                   | drop         | drop     |
//! | from the pod: source address not its own           | drop         | drop     |
//! | to the pod: a local pod's source, other interface  | drop         | drop     |
//! | from the pod: ICMP redirect / router advertisement | drop         | drop     |
//! | IPv4 options (IHL > 5)                             | policy       | drop     |
//! | later fragment, first one let through              | pass         | pass     |
//! | later fragment, first one unseen                   | pass         | drop     |
//! | host → pod                                         | pass         | pass     |
//! | packet of a tracked flow / its reply               | pass         | pass     |
//! | packet of a revoked flow (either way)              | policy       | policy   |
//! | ICMP error plausibly about a tracked flow          | pass         | pass     |
//! | from the pod: new flow to a ClusterIP (untranslated) | pass, counted | drop    |
//! | anything else                                      | pass         | policy   |
//!
//! An endpoint in audit mode (`EP_AUDIT`) passes what its policies would drop — the
//! `policy` cells above, later fragments and IP options of an isolated endpoint, an
//! untranslated ClusterIP — and reports it (`VERDICT_AUDIT`); every other drop stands.
#![no_std]
#![no_main]

mod conntrack;
mod debug;
mod headers;
mod icmp;
mod ipv4;
mod l2;
mod maps;
mod policy;
mod proxy;
mod service;
mod verdict;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use netpol_common::{reason, DIR_EGRESS, DIR_INGRESS};

use crate::{
    headers::{ensure_linear, ifindex, ptr_at, vlan_tagged, BASE_HEADERS, ETH_P_IP},
    maps::ENDPOINTS,
    verdict::{conclude, finish, verdict, NO_FLOW},
};

#[inline(always)]
fn enforce(ctx: &TcContext, dir: u8) -> i32 {
    let ep = match unsafe { ENDPOINTS.get(&ifindex(ctx)) } {
        Some(ep) => *ep,
        // Attached but unknown: the pod is being set up or torn down. Fail closed.
        None => return finish(ctx, 0, dir, &NO_FLOW, &verdict(true, reason::DROP_NO_ENDPOINT), true),
    };
    ensure_linear(ctx, BASE_HEADERS);
    let eth_proto = match ptr_at::<u16>(ctx, 12) {
        Some(p) => u16::from_be(unsafe { *p }),
        None => return conclude(ctx, &ep, dir, &NO_FLOW, &verdict(true, reason::DROP_MALFORMED), true),
    };
    if vlan_tagged(ctx) {
        return conclude(ctx, &ep, dir, &NO_FLOW, &verdict(true, reason::DROP_VLAN), true);
    }
    if eth_proto != ETH_P_IP {
        let d = l2::non_ipv4(ctx, &ep, dir, eth_proto);
        return conclude(ctx, &ep, dir, &NO_FLOW, &d, d.drop);
    }
    ipv4::enforce(ctx, &ep, dir)
}

#[classifier]
pub fn netpol_from_pod(ctx: TcContext) -> i32 {
    enforce(&ctx, DIR_EGRESS)
}

#[classifier]
pub fn netpol_to_pod(ctx: TcContext) -> i32 {
    enforce(&ctx, DIR_INGRESS)
}

#[classifier]
pub fn netpol_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
