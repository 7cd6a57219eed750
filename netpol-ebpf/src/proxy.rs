//! Handing DNS that a rule filters by name to the agent's DNS proxy: the packet keeps its
//! addresses and ports, is assigned to the proxy's socket (`bpf_sk_assign`) and marked so
//! the node's routing delivers it locally (a transparent proxy without rewriting anything).
//! Without a proxy socket to take it, the flow is dropped: DNS a rule filters never passes
//! unfiltered.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, BPF_F_CURRENT_NETNS},
    helpers::{bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::TcContext,
    EbpfContext,
};
use netpol_common::{IPPROTO_TCP, PROXY_ANSWER_BIT};

use crate::{maps::DNS_PROXY, verdict::Flow};

const TCP_LISTEN: u32 = 10;

/// Assigns the packet to the proxy; false when no proxy takes it.
#[inline(always)]
pub fn redirect(ctx: &TcContext, f: &Flow) -> bool {
    let Some(cfg) = DNS_PROXY.get(0) else { return false };
    if cfg.port == 0 {
        return false;
    }
    let sk = lookup(ctx, f, cfg.port);
    if sk.is_null() {
        return false;
    }
    let assigned = unsafe { bpf_sk_assign(ctx.as_ptr(), sk as *mut _, 0) };
    unsafe { bpf_sk_release(sk as *mut _) };
    if assigned != 0 {
        return false;
    }
    ctx.set_mark(cfg.mark);
    true
}

/// Whether a packet the node sends carries the proxy's answer mark: the DNS proxy answering
/// a pod in the name of the server it asked (so with that server's address, also a local
/// pod's).
#[inline(always)]
pub fn from_proxy(ctx: &TcContext) -> bool {
    match DNS_PROXY.get(0) {
        Some(cfg) => cfg.port != 0 && unsafe { (*ctx.skb.skb).mark } == cfg.mark | PROXY_ANSWER_BIT,
        None => false,
    }
}

/// The proxy's socket for this packet: for TCP the connection the proxy accepted (found by
/// the packet's own tuple, as the proxy's end carries the server's address), else its
/// listener; for UDP its socket.
#[inline(always)]
fn lookup(ctx: &TcContext, f: &Flow, proxy_port: u16) -> *mut bpf_sock {
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // Writing a union field is safe; the tuple is IPv4.
    t.__bindgen_anon_1.ipv4.saddr = f.saddr;
    t.__bindgen_anon_1.ipv4.daddr = f.daddr;
    t.__bindgen_anon_1.ipv4.sport = f.sport;
    t.__bindgen_anon_1.ipv4.dport = f.dport;
    if f.proto == IPPROTO_TCP {
        // Any socket of the tuple, also one still in its handshake (a full-socket lookup
        // would answer a handshake with its listener).
        let sk = unsafe { bpf_skc_lookup_tcp(ctx.as_ptr(), &mut t, size, netns, 0) };
        if !sk.is_null() {
            // A listener on the server's port is not the proxy (it may be the node's own
            // DNS server): only a connection the proxy accepted counts.
            if unsafe { (*sk).state } != TCP_LISTEN {
                return sk;
            }
            unsafe { bpf_sk_release(sk as *mut _) };
        }
        t.__bindgen_anon_1.ipv4.dport = proxy_port.to_be();
        return unsafe { bpf_sk_lookup_tcp(ctx.as_ptr(), &mut t, size, netns, 0) };
    }
    t.__bindgen_anon_1.ipv4.dport = proxy_port.to_be();
    unsafe { bpf_sk_lookup_udp(ctx.as_ptr(), &mut t, size, netns, 0) }
}
