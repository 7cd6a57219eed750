//! IPv4: header checks, anti-spoofing, fragments, the L4 tuple, then the verdict from
//! conntrack and policy.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use netpol_common::{
    counter, debug, identity, local_slot, reason, Endpoint, FragKey, FragValue, DIR_EGRESS, IPPROTO_ICMP,
    IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, LOCAL_SLOT_SHARED, POLICY_DNS_PROXY,
};

use crate::{
    conntrack::{self, Allowed, CtHit},
    debug::step,
    headers::*,
    icmp::{self, IcmpError},
    maps::{ENDPOINT_IPS, FRAGMENTS, LOCAL_SLOTS},
    policy::{admits, isolated, resolve},
    proxy,
    verdict::{audit, conclude, count, verdict, Decision, Flow, NO_FLOW},
};

/// What the L4 parse found.
enum L4 {
    /// A flow conntrack follows (TCP, UDP, SCTP, ICMP echo).
    Tracked,
    /// An ICMP error, related or not.
    Error(IcmpError),
    /// Judged packet by packet (other protocols, other ICMP).
    Untracked,
    Malformed,
    /// A packet refused for what it is, whatever the policy.
    Refused(u8),
}

#[inline(always)]
pub fn enforce(ctx: &TcContext, ep: &Endpoint, dir: u8) -> i32 {
    let ip = match ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) {
        Some(ip) => ip,
        None => return refuse(ctx, ep, dir, &NO_FLOW, reason::DROP_MALFORMED),
    };
    let (ver_ihl, tot_len, ip_id, frag_off, proto, saddr, daddr) = unsafe {
        (
            (*ip).ver_ihl,
            u16::from_be((*ip).tot_len),
            (*ip).id,
            u16::from_be((*ip).frag_off),
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    let mut f = Flow { saddr, daddr, sport: 0, dport: 0, proto, tcp_flags: 0 };
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4
        || ihl < IPV4_HLEN
        || (tot_len as usize) < ihl
        || ETH_HLEN + tot_len as usize > ctx.len() as usize
    {
        return refuse(ctx, ep, dir, &f, reason::DROP_MALFORMED);
    }
    if let Some(r) = source_check(ctx, ep, dir, saddr) {
        return refuse(ctx, ep, dir, &f, r);
    }
    let iso = isolated(ep, dir);
    // No Kubernetes workload needs IP options, and source-route options are an evasion
    // vector: an isolated pod gets none.
    if ihl > IPV4_HLEN && iso {
        return refuse(ctx, ep, dir, &f, reason::DROP_IP_OPTIONS);
    }
    let frag_key = FragKey { ep_id: ep.ep_id, saddr, daddr, id: ip_id, proto, dir };
    if frag_off & IP_OFFSET != 0 {
        return later_fragment(ctx, ep, dir, &mut f, &frag_key, iso);
    }
    let l4 = ETH_HLEN + ihl;
    if ihl > IPV4_HLEN {
        ensure_linear(ctx, l4 + 20);
    }
    let (d, event) = match parse_l4(ctx, dir, l4, &mut f) {
        L4::Tracked => judge(ctx, ep, dir, &f, true),
        L4::Untracked => judge(ctx, ep, dir, &f, false),
        L4::Error(e) => match icmp::related(ctx, ep, dir, &f, tot_len, &e) {
            Some(true) => (verdict(false, reason::ALLOW_RELATED), false),
            Some(false) => judge(ctx, ep, dir, &f, false),
            None => (verdict(true, reason::DROP_MALFORMED), true),
        },
        L4::Malformed => return refuse(ctx, ep, dir, &f, reason::DROP_MALFORMED),
        L4::Refused(r) => return refuse(ctx, ep, dir, &f, r),
    };
    if frag_off & IP_MF != 0 && !d.drop {
        let _ = FRAGMENTS.insert(&frag_key, &FragValue { sport: f.sport, dport: f.dport }, 0);
    }
    conclude(ctx, ep, dir, &f, &d, event)
}

#[inline(always)]
fn refuse(ctx: &TcContext, ep: &Endpoint, dir: u8, f: &Flow, r: u8) -> i32 {
    conclude(ctx, ep, dir, f, &audit(ep, verdict(true, r)), true)
}

/// From a pod: only its own address. To a pod: a local pod's address only from that pod's
/// own interface (a packet from outside the node cannot pose as a local pod), or from the
/// node's DNS proxy answering for it.
#[inline(always)]
fn source_check(ctx: &TcContext, ep: &Endpoint, dir: u8, saddr: u32) -> Option<u8> {
    if dir == DIR_EGRESS {
        return (saddr != ep.ip).then_some(reason::DROP_SPOOFED);
    }
    match local_ifindex(saddr) {
        // The DNS proxy answers in the name of the server a pod asked (conntrack still
        // has to know the flow).
        Some(_) if ingress_ifindex(ctx) == 0 && proxy::from_proxy(ctx) => None,
        Some(ifx) if ifx != ingress_ifindex(ctx) => Some(reason::DROP_SPOOFED_LOCAL),
        _ => None,
    }
}

/// The interface of the local endpoint that owns `addr`, if one does: its direct-mapped
/// slot, or the hash map when the slot is shared.
#[inline(always)]
fn local_ifindex(addr: u32) -> Option<u32> {
    let slot = LOCAL_SLOTS.get(local_slot(addr))?;
    if slot.ifindex == LOCAL_SLOT_SHARED {
        return unsafe { ENDPOINT_IPS.get(&addr) }.copied();
    }
    (slot.ip == addr && slot.ifindex != 0).then_some(slot.ifindex)
}

/// A later fragment carries no L4 header: it follows the verdict its first fragment got
/// from this endpoint in this direction.
#[inline(always)]
fn later_fragment(ctx: &TcContext, ep: &Endpoint, dir: u8, f: &mut Flow, key: &FragKey, iso: bool) -> i32 {
    let d = match unsafe { FRAGMENTS.get(key) } {
        Some(v) => {
            f.sport = v.sport;
            f.dport = v.dport;
            verdict(false, reason::ALLOW_FRAGMENT)
        }
        None if iso => audit(ep, verdict(true, reason::DROP_FRAGMENT)),
        None => verdict(false, reason::ALLOW_NOT_ISOLATED),
    };
    conclude(ctx, ep, dir, f, &d, d.drop || d.audit)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, dir: u8, l4: usize, f: &mut Flow) -> L4 {
    match f.proto {
        IPPROTO_TCP => match ptr_at::<TcpHead>(ctx, l4) {
            Some(t) if unsafe { (*t).doff } >> 4 >= 5 => {
                unsafe {
                    f.sport = (*t).sport;
                    f.dport = (*t).dport;
                    f.tcp_flags = (*t).flags;
                }
                L4::Tracked
            }
            _ => L4::Malformed,
        },
        // Both headers start with the two ports; UDP's is 8 bytes, SCTP's common header 12.
        IPPROTO_UDP | IPPROTO_SCTP => {
            let whole = if f.proto == IPPROTO_UDP {
                ptr_at::<[u8; 8]>(ctx, l4).is_some()
            } else {
                ptr_at::<[u8; 12]>(ctx, l4).is_some()
            };
            match ptr_at::<Ports>(ctx, l4) {
                Some(p) if whole => {
                    unsafe {
                        f.sport = (*p).sport;
                        f.dport = (*p).dport;
                    }
                    L4::Tracked
                }
                _ => L4::Malformed,
            }
        }
        IPPROTO_ICMP => {
            let h = match ptr_at::<IcmpHdr>(ctx, l4) {
                Some(h) => h,
                None => return L4::Malformed,
            };
            let (kind, code, id) = unsafe { ((*h).kind, (*h).code, (*h).id) };
            match kind {
                ICMP_ECHO => {
                    f.sport = id;
                    L4::Tracked
                }
                ICMP_ECHOREPLY => {
                    f.dport = id;
                    L4::Tracked
                }
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB => {
                    L4::Error(IcmpError { kind, code, inner_off: l4 + 8 })
                }
                ICMP_REDIRECT | ICMP_ROUTERADVERT if dir == DIR_EGRESS => {
                    L4::Refused(reason::DROP_ICMP_ROUTING)
                }
                _ => L4::Untracked,
            }
        }
        _ => L4::Untracked,
    }
}

/// A packet of a flow that goes to the DNS proxy: handed to it, or dropped without one.
#[inline(always)]
fn to_proxy(ctx: &TcContext, f: &Flow, rule_id: u32) -> Decision {
    let dns_transport = f.proto == IPPROTO_TCP || f.proto == IPPROTO_UDP;
    if dns_transport && proxy::redirect(ctx, f) {
        Decision { rule_id, ..verdict(false, reason::ALLOW_DNS_PROXY) }
    } else {
        verdict(true, reason::DROP_DNS_PROXY_UNAVAILABLE)
    }
}

/// The verdict for a parsed IPv4 packet, and whether it is worth an event.
#[inline(always)]
fn judge(ctx: &TcContext, ep: &Endpoint, dir: u8, f: &Flow, tracked: bool) -> (Decision, bool) {
    let ports = (u16::from_be(f.sport) as u32) << 16 | u16::from_be(f.dport) as u32;
    step(ctx, ep, dir, debug::STEP_PARSE, [f.proto as u32, f.saddr, f.daddr, ports]);
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let key = conntrack::key(ep.ep_id, dir, f);
    if tracked {
        let hit = conntrack::check(ep, dir, &key, now, f.tcp_flags);
        step(ctx, ep, dir, debug::STEP_CONNTRACK, [hit.code() as u32, 0, 0, 0]);
        match hit {
            // Every packet the pod sends on a proxied flow goes to the proxy.
            CtHit::Pass { forward: true, proxy: true } => return (to_proxy(ctx, f, 0), false),
            CtHit::Pass { forward: true, proxy: false } => {
                return (verdict(false, reason::ALLOW_ESTABLISHED), false)
            }
            CtHit::Pass { forward: false, .. } => return (verdict(false, reason::ALLOW_REPLY), false),
            CtHit::Revoked(peer) => {
                let d = Decision { peer, ..verdict(true, reason::DROP_POLICY_REVOKED) };
                return (audit(ep, d), true);
            }
            CtHit::Miss => {}
        }
    }

    // A new flow, or a tracked one whose entry is gone (evicted, or older than the agent):
    // judged in its own direction and, when allowed, tracked from here on.
    let peer = resolve(key.remote_addr);
    step(ctx, ep, dir, debug::STEP_IPCACHE, [key.remote_addr, peer.identity, peer.cidr_identity, 0]);
    if dir == DIR_EGRESS && peer.identity == identity::SERVICE {
        // Bypassed the socket hooks (`admits` refuses it too, for re-judged flows): its
        // own reason when isolated, counted otherwise.
        if isolated(ep, dir) {
            let d = Decision { peer: peer.identity, ..verdict(true, reason::DROP_SERVICE_UNTRANSLATED) };
            return (audit(ep, d), true);
        }
        count(counter::SERVICE_UNTRANSLATED);
    }
    let mut proxy = false;
    let mut d = if !isolated(ep, dir) {
        verdict(false, reason::ALLOW_NOT_ISOLATED)
    } else {
        match admits(ep, dir, &peer, f.proto, f.dport) {
            // Only a tracked flow from the pod can go to the proxy.
            Some((_, v)) if v.flags & POLICY_DNS_PROXY != 0 => {
                proxy = tracked && dir == DIR_EGRESS;
                if proxy {
                    to_proxy(ctx, f, v.rule_id)
                } else {
                    verdict(true, reason::DROP_DNS_PROXY_UNAVAILABLE)
                }
            }
            Some((reason, v)) => Decision { rule_id: v.rule_id, ..verdict(false, reason) },
            None => audit(ep, verdict(true, reason::DROP_POLICY)),
        }
    };
    d.peer = peer.identity;
    let iso = isolated(ep, dir) as u32;
    step(ctx, ep, dir, debug::STEP_POLICY, [iso, d.rule_id, d.reason as u32, 0]);
    let track = tracked && !d.drop;
    if track {
        let allowed = Allowed { rule_id: d.rule_id, peer: peer.identity, proxy };
        conntrack::create(ep, dir, &key, now, &allowed, f.tcp_flags);
    }
    // Untracked packets (ICMP errors, other protocols) are judged one by one; an event for
    // each allowed one would flood the ring, so only their drops (and would-be drops) are
    // reported.
    let event = d.drop || d.audit || track;
    (d, event)
}
