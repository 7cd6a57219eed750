//! The proxy's transparent sockets (`IP_TRANSPARENT`): what the from-pod program assigns
//! DNS to (a UDP socket and a TCP listener on one port of any address, which therefore
//! receive packets addressed to the servers pods asked), and the sockets that answer in a
//! server's name. Answers carry the proxy's answer mark (`SO_MARK`, the redirect mark with
//! `PROXY_ANSWER_BIT`), by which the to-pod program knows the node's proxy speaks for a
//! local DNS server; the redirect mark itself must not be on them (the node routes it to
//! itself).

use netpol_common::PROXY_ANSWER_BIT;
use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn set(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = size_of::<libc::c_int>() as libc::socklen_t;
    check(unsafe { libc::setsockopt(fd, level, opt, &value as *const _ as *const libc::c_void, len) })?;
    Ok(())
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
    sa
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()), u16::from_be(sa.sin_port))
}

/// A transparent socket of `kind` bound to `at`, with `mark` on what it sends (0: none).
fn transparent(kind: libc::c_int, at: SocketAddrV4, mark: u32) -> io::Result<OwnedFd> {
    let fd = check(unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    set(raw, libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    set(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if mark != 0 {
        set(raw, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)?;
    }
    let sa = sockaddr(at);
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    check(unsafe { libc::bind(raw, &sa as *const _ as *const libc::sockaddr, len) })?;
    Ok(fd)
}

/// The proxy's UDP socket and TCP listener, on one port (0: any free one) of any address;
/// what the listener's connections send carries the answer mark `mark | PROXY_ANSWER_BIT`.
pub fn listen(port: u16, mark: u32) -> io::Result<(UdpSocket, TcpListener)> {
    let mark = mark | PROXY_ANSWER_BIT;
    let udp = transparent(libc::SOCK_DGRAM, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port), mark)?;
    set(udp.as_raw_fd(), libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
    let udp = UdpSocket::from(udp);
    let port = match udp.local_addr()? {
        std::net::SocketAddr::V4(a) => a.port(),
        std::net::SocketAddr::V6(a) => a.port(),
    };
    let tcp = transparent(libc::SOCK_STREAM, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port), mark)?;
    check(unsafe { libc::listen(tcp.as_raw_fd(), 128) })?;
    Ok((udp, TcpListener::from(tcp)))
}

/// A datagram the proxy received: its bytes, who sent it, and where it was going.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub data: Vec<u8>,
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
}

/// Receives one datagram with its original destination (`IP_ORIGDSTADDR`).
pub fn recv(udp: &UdpSocket) -> io::Result<Datagram> {
    let mut buf = vec![0u8; 65_535];
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut control = [0u8; 64];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.len();
    let n = check(unsafe { libc::recvmsg(udp.as_raw_fd(), &mut msg, 0) as libc::c_int })? as usize;
    let mut to = None;
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_ORIGDSTADDR {
            let sa = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::sockaddr_in) };
            to = Some(from_sockaddr(&sa));
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    let to = to.ok_or_else(|| io::Error::other("no original destination"))?;
    buf.truncate(n);
    Ok(Datagram { data: buf, from: from_sockaddr(&from), to })
}

/// Server addresses a worker keeps an answering socket for.
const ANSWERERS: usize = 64;

/// The sockets one worker answers through, one per server address pods asked (opened on
/// first use and kept, at most [`ANSWERERS`]). They are bound to a server's address but
/// never receive: the programs assign queries to the proxy's port, never to them.
pub struct Answerers {
    mark: u32,
    sockets: std::collections::HashMap<SocketAddrV4, UdpSocket>,
}

impl Answerers {
    /// Answerers with the answer mark of the proxy's `mark`.
    pub fn new(mark: u32) -> Answerers {
        Answerers { mark: mark | PROXY_ANSWER_BIT, sockets: Default::default() }
    }

    /// Sends `data` to `to` from `from` (a server's address and port the pod asked).
    pub fn send(&mut self, from: SocketAddrV4, to: SocketAddrV4, data: &[u8]) -> io::Result<()> {
        if !self.sockets.contains_key(&from) {
            if self.sockets.len() >= ANSWERERS {
                self.sockets.clear();
            }
            let s = UdpSocket::from(transparent(libc::SOCK_DGRAM, from, self.mark)?);
            self.sockets.insert(from, s);
        }
        self.sockets[&from].send_to(data, to)?;
        Ok(())
    }
}

/// Makes `accept` on `listener` give up after `timeout` (`WouldBlock`), so its thread can
/// look at a stop flag.
pub fn accept_timeout(listener: &TcpListener, timeout: std::time::Duration) -> io::Result<()> {
    let tv =
        libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as _ };
    let len = size_of::<libc::timeval>() as libc::socklen_t;
    let fd = listener.as_raw_fd();
    check(unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv as *const _ as *const _, len)
    })?;
    Ok(())
}
