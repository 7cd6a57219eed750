//! Services at the socket (Cilium's socket LB): cgroup `sock_addr` programs translate a
//! ClusterIP:port to a ready backend before any packet exists, so the TC programs judge the
//! real backend, and translate it back wherever the application looks, so the application
//! only ever sees the ClusterIP.
//!
//! - `connect4` (TCP, connected UDP): a random backend for TCP, one per socket for UDP
//!   (the socket cookie picks it); no backend: `ECONNREFUSED` at once.
//! - `sendmsg4` (unconnected UDP): the same per-socket backend for every datagram.
//! - `recvmsg4` (UDP replies) and `getpeername4`: the backend back to the ClusterIP, from
//!   `SOCK_REV_NAT` (socket cookie, backend) → frontend. musl's resolver drops a reply
//!   whose source is not the nameserver it asked, so recvmsg4 is required, not cosmetic.
//!
//! Invariant: a program never fails a call it does not translate (return 1); it refuses
//! only a connect/send to a frontend without backends.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, generated::bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use netpol_common::{counter, RevNatKey, RevNatValue, ServiceKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    maps::{SERVICES, SOCK_REV_NAT},
    verdict::count,
};

/// `ECONNREFUSED` (Linux errno).
const ECONNREFUSED: i32 = 111;
/// The program's return values: let the call proceed / fail it.
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

/// The address a call names: IPv4 and port as the kernel holds them (network order).
#[derive(Clone, Copy)]
struct SockAddr {
    addr: u32,
    port: u16,
    proto: u8,
}

/// Reads the call's address. The context allows 4-byte loads only: volatile keeps the
/// compiler from narrowing them.
#[inline(always)]
fn read(sa: *mut bpf_sock_addr) -> SockAddr {
    unsafe {
        let addr = read_volatile(addr_of!((*sa).user_ip4));
        let port = read_volatile(addr_of!((*sa).user_port)) as u16;
        let proto = read_volatile(addr_of!((*sa).protocol)) as u8;
        SockAddr { addr, port, proto }
    }
}

#[inline(always)]
fn write(sa: *mut bpf_sock_addr, addr: u32, port: u16) {
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), addr);
        write_volatile(addr_of_mut!((*sa).user_port), port as u32);
    }
}

/// Why a translation did not happen.
enum Miss {
    /// Not a Service frontend: leave the call alone.
    NotAService,
    /// A frontend without (reachable) backends.
    NoBackend,
}

/// Picks a backend of the frontend `to`: random for TCP, by socket for UDP.
#[inline(always)]
fn pick(to: &SockAddr, cookie: u64) -> Result<(u32, u16), Miss> {
    let mut key = ServiceKey { addr: to.addr, port: to.port, proto: to.proto, _pad: 0, slot: 0 };
    let count = match unsafe { SERVICES.get(&key) } {
        Some(front) => front.count,
        None => return Err(Miss::NotAService),
    };
    if count == 0 {
        return Err(Miss::NoBackend);
    }
    let n = if to.proto == IPPROTO_TCP { u64::from(unsafe { bpf_get_prandom_u32() }) } else { cookie };
    key.slot = (n % count as u64) as u32 + 1;
    if let Some(b) = unsafe { SERVICES.get(&key) } {
        return Ok((b.addr, b.port));
    }
    // The slots are being rewritten (user space shrinks the count before it deletes).
    key.slot = 1;
    match unsafe { SERVICES.get(&key) } {
        Some(b) => Ok((b.addr, b.port)),
        None => Err(Miss::NoBackend),
    }
}

/// Remembers which frontend a socket's backend stands for. A UDP socket keeps its backend,
/// so every datagram after its first finds the entry already there: only a lookup (which
/// also keeps the entry recently used), no write.
#[inline(always)]
fn remember(key: &RevNatKey, addr: u32, port: u16) {
    if let Some(front) = unsafe { SOCK_REV_NAT.get(key) } {
        if front.addr == addr && front.port == port {
            return;
        }
    }
    let front = RevNatValue { addr, port, _pad: 0 };
    if SOCK_REV_NAT.insert(key, &front, 0).is_err() {
        count(counter::SOCK_REV_NAT_FAILED);
    }
}

/// connect4 / sendmsg4: frontend → backend, remembered for the way back.
#[inline(always)]
fn translate(ctx: &SockAddrContext) -> i32 {
    let to = read(ctx.sock_addr);
    if to.proto != IPPROTO_TCP && to.proto != IPPROTO_UDP {
        return PROCEED;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    match pick(&to, cookie) {
        Ok((addr, port)) => {
            remember(&RevNatKey { cookie, addr, port, proto: to.proto, _pad: 0 }, to.addr, to.port);
            write(ctx.sock_addr, addr, port);
            count(counter::SOCK_TRANSLATED);
            PROCEED
        }
        Err(Miss::NotAService) => PROCEED,
        Err(Miss::NoBackend) => {
            count(counter::SOCK_NO_BACKEND);
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REFUSE
        }
    }
}

/// recvmsg4 / getpeername4: backend → the frontend this socket asked for.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) -> i32 {
    let from = read(ctx.sock_addr);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey { cookie, addr: from.addr, port: from.port, proto: from.proto, _pad: 0 };
    if let Some(front) = unsafe { SOCK_REV_NAT.get(&key) } {
        write(ctx.sock_addr, front.addr, front.port);
    }
    PROCEED
}

#[cgroup_sock_addr(connect4)]
pub fn netpol_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn netpol_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn netpol_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn netpol_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}
