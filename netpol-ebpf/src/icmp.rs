//! ICMP errors. An error passes as related to a tracked flow only when it is one the kernel
//! would send about that flow from where it claims to come:
//! - it goes back to the quoted packet's sender (outer destination = quoted source);
//! - it comes from the quoted packet's destination with a code an end host emits (port,
//!   protocol, host or net unreachable and the administrative prohibitions a REJECT sends,
//!   reassembly time exceeded, parameter problem), or — towards a pod only — from a router
//!   that is not a pod, with a path error (unreachable, fragmentation needed, TTL exceeded);
//! - it is no longer than the 576 bytes the kernel's `icmp_send` ever builds.
//! Anything else is new traffic, judged by policy like any other packet.

use aya_ebpf::programs::TcContext;
use netpol_common::{Endpoint, DIR_EGRESS, DIR_INGRESS, IPPROTO_ICMP};

use crate::{
    conntrack,
    headers::{
        ensure_linear, ptr_at, IcmpHdr, Ipv4Hdr, Ports, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHOREPLY,
        ICMP_PARAMETERPROB, ICMP_TIME_EXCEEDED, IPV4_HLEN,
    },
    policy::{has_ports, is_pod, resolve},
    verdict::Flow,
};

/// `icmp_send` caps an error at 576 bytes (RFC 1812's minimum reassembly size).
const MAX_ERROR_LEN: u16 = 576;
const NET_UNREACH: u8 = 0;
const HOST_UNREACH: u8 = 1;
const PROT_UNREACH: u8 = 2;
const PORT_UNREACH: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const NET_ANO: u8 = 9;
const HOST_ANO: u8 = 10;
const PKT_FILTERED: u8 = 13;
const EXC_TTL: u8 = 0;
const EXC_FRAGTIME: u8 = 1;

/// An ICMP error as the IPv4 parser found it.
pub struct IcmpError {
    pub kind: u8,
    pub code: u8,
    /// Offset of the quoted IPv4 header.
    pub inner_off: usize,
}

/// Codes the destination of a flow itself sends about it.
#[inline(always)]
fn end_host_error(kind: u8, code: u8) -> bool {
    match kind {
        ICMP_DEST_UNREACH => matches!(
            code,
            NET_UNREACH | HOST_UNREACH | PROT_UNREACH | PORT_UNREACH | NET_ANO | HOST_ANO | PKT_FILTERED
        ),
        ICMP_TIME_EXCEEDED => code == EXC_FRAGTIME,
        ICMP_PARAMETERPROB => code == 0,
        _ => false,
    }
}

/// Codes a router on the path sends about a flow it forwards.
#[inline(always)]
fn path_error(kind: u8, code: u8) -> bool {
    match kind {
        ICMP_DEST_UNREACH => matches!(code, NET_UNREACH | HOST_UNREACH | FRAG_NEEDED | PKT_FILTERED),
        ICMP_TIME_EXCEEDED => code == EXC_TTL,
        _ => false,
    }
}

/// Whether the error is about a tracked flow of this endpoint and plausible for it; None
/// when the quoted headers are cut short.
#[inline(always)]
pub fn related(
    ctx: &TcContext,
    ep: &Endpoint,
    dir: u8,
    outer: &Flow,
    tot_len: u16,
    e: &IcmpError,
) -> Option<bool> {
    if tot_len > MAX_ERROR_LEN {
        return Some(false);
    }
    ensure_linear(ctx, e.inner_off + IPV4_HLEN + 8);
    let ip = ptr_at::<Ipv4Hdr>(ctx, e.inner_off)?;
    let (ver_ihl, proto, saddr, daddr) = unsafe { ((*ip).ver_ihl, (*ip).proto, (*ip).saddr, (*ip).daddr) };
    if ver_ihl != 0x45 || outer.daddr != saddr {
        return Some(false);
    }
    let plausible = if outer.saddr == daddr {
        end_host_error(e.kind, e.code)
    } else {
        dir == DIR_INGRESS && path_error(e.kind, e.code) && !is_pod(resolve(outer.saddr).identity)
    };
    if !plausible {
        return Some(false);
    }
    let (sport, dport) = if has_ports(proto) {
        let p = ptr_at::<Ports>(ctx, e.inner_off + IPV4_HLEN)?;
        unsafe { ((*p).sport, (*p).dport) }
    } else if proto == IPPROTO_ICMP {
        let h = ptr_at::<IcmpHdr>(ctx, e.inner_off + IPV4_HLEN)?;
        let (kind, id) = unsafe { ((*h).kind, (*h).id) };
        match kind {
            ICMP_ECHO => (id, 0),
            ICMP_ECHOREPLY => (0, id),
            _ => return Some(false),
        }
    } else {
        return Some(false);
    };
    // The quoted packet went the other way: from the endpoint when the error comes to it.
    let quoted = Flow { saddr, daddr, sport, dport, proto, tcp_flags: 0 };
    Some(conntrack::live(&conntrack::key(ep.ep_id, other_dir(dir), &quoted)))
}

#[inline(always)]
fn other_dir(dir: u8) -> u8 {
    if dir == DIR_INGRESS {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    }
}
