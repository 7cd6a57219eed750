//! Connected UDP sockets to a backend that went away are destroyed (sock_diag
//! `SOCK_DESTROY`). connect4 translated such a socket once, to that backend: left alone it
//! would send there forever (a resolver's socket to a DNS pod that was replaced). Destroyed,
//! its next call fails with `ECONNABORTED` and the application opens a new socket, which
//! the hooks translate to a live backend. TCP connections are left to end on their own, as
//! with kube-proxy.
//!
//! Sockets live in their network namespace, so each namespace whose processes the hooks
//! translate is searched on a thread that has entered it: the pods' (from the endpoint
//! registry) and the agent's own (host-network processes, in a cluster). Only sockets the
//! hooks translated are candidates: the caller decides by socket cookie (`SOCK_REV_NAT`), so
//! a socket an application connected to a pod address directly is never touched.

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddrV4},
    os::fd::AsRawFd,
    path::Path,
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, IPPROTO_UDP, SOCK_DESTROY},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// Destroys the connected UDP sockets in the namespace at `netns` for which `doomed` says
/// so, given their cookie and peer; returns how many.
pub fn destroy_connected_udp(
    netns: &Path,
    doomed: impl Fn(u64, SocketAddrV4) -> bool + Sync,
) -> io::Result<usize> {
    let ns = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns affects only this thread; the netlink socket belongs to the namespace
            // it is opened in.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let sock = open()?;
            let victims: Vec<SocketId> = connected_udp(&sock)?
                .into_iter()
                .filter(|id| peer(id).is_some_and(|p| doomed(u64::from_ne_bytes(id.cookie), p)))
                .collect();
            let mut destroyed = 0;
            for id in victims {
                match request(&sock, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, id) {
                    Ok(()) => destroyed += 1,
                    // Closed meanwhile.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(destroyed)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("sock_diag thread panicked")))
    })
}

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

fn peer(id: &SocketId) -> Option<SocketAddrV4> {
    match id.destination_address {
        IpAddr::V4(a) => Some(SocketAddrV4::new(a, id.destination_port)),
        IpAddr::V6(_) => None,
    }
}

/// Sends one sock_diag request about connected IPv4 UDP sockets.
fn send(sock: &Socket, message_type: u16, flags: u16, socket_id: SocketId) -> io::Result<()> {
    let req = InetRequest {
        family: AF_INET,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        // Connected UDP sockets are in state ESTABLISHED.
        states: StateFlags::ESTABLISHED,
        socket_id,
    };
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::InetRequest(req).into());
    msg.finalize();
    // The crate knows only the dump type; SOCK_DESTROY takes the same body.
    msg.header.message_type = message_type;
    let mut buf = vec![0; msg.header.length as usize];
    msg.serialize(&mut buf);
    sock.send(&buf, 0)?;
    Ok(())
}

/// Reads replies until the dump ends (or the ack comes); calls `each` per socket listed.
fn receive(sock: &Socket, mut each: impl FnMut(SocketId)) -> io::Result<()> {
    loop {
        let (buf, _) = sock.recv_from_full()?;
        let mut at = 0;
        while at < buf.len() {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            at += msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => each(r.header.socket_id),
                _ => {}
            }
            if msg.header.length == 0 {
                break;
            }
        }
    }
}

fn request(sock: &Socket, message_type: u16, flags: u16, id: SocketId) -> io::Result<()> {
    send(sock, message_type, flags, id)?;
    receive(sock, |_| {})
}

/// Every connected UDP socket of this namespace.
fn connected_udp(sock: &Socket) -> io::Result<Vec<SocketId>> {
    send(
        sock,
        netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        SocketId::new_v4(),
    )?;
    let mut out = Vec::new();
    receive(sock, |id| out.push(id))?;
    Ok(out)
}
