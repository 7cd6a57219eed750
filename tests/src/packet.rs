//! Crafted Ethernet frames: for BPF_PROG_TEST_RUN, and for pods to send through a packet
//! socket. IPv4 header and ICMP checksums are filled in (a forwarding node drops IPv4 with a
//! bad header checksum); UDP checksums are left 0 ("none"), TCP's are not computed.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// ICMP type, code, identifier; `quoted` is the IP packet an error quotes.
    Icmp {
        kind: u8,
        code: u8,
        id: u16,
        quoted: Vec<u8>,
    },
    /// Any other protocol with an opaque 8-byte payload.
    Other(u8),
}

/// An IPv4 packet under construction.
#[derive(Clone, Debug)]
pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub l4: L4,
    pub id: u16,
    /// Raw flags + fragment offset field (host order).
    pub frag: u16,
    pub options: Vec<u8>,
    pub payload: usize,
}

pub const MF: u16 = 0x2000;

impl Ip {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Ip {
        Ip { src, dst, l4, id: 1, frag: 0, options: Vec::new(), payload: 16 }
    }

    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Ip {
        Ip::new(src, dst, L4::Tcp { sport, dport, flags })
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Ip {
        Ip::new(src, dst, L4::Udp { sport, dport })
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Sctp { .. } => 132,
            L4::Icmp { .. } => 1,
            L4::Other(p) => p,
        }
    }

    /// The IP packet without an Ethernet header (what an ICMP error quotes).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let mut l4 = match &self.l4 {
            L4::Tcp { sport, dport, flags } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = *flags;
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                h
            }
            L4::Sctp { sport, dport } => {
                let mut h = vec![0u8; 12];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h
            }
            L4::Icmp { kind, code, id, quoted } => {
                let mut h = vec![*kind, *code, 0, 0, 0, 0, 0, 1];
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h.extend_from_slice(quoted);
                h
            }
            L4::Other(_) => vec![0u8; 8],
        };
        if self.frag & 0x1fff != 0 {
            // A later fragment: no L4 header, just data.
            l4 = vec![0xab; l4.len()];
        }
        l4.extend(std::iter::repeat_n(0x5a, self.payload));
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let ihl = 20 + self.options.len();
        let mut ip = vec![0u8; ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.id.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto();
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip[20..].copy_from_slice(&self.options);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        if matches!(self.l4, L4::Icmp { .. }) && self.frag & 0x1fff == 0 {
            let sum = checksum(&l4);
            l4[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        ip.extend(l4);
        ip
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ether(0x0800, &self.ip_bytes())
    }
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub type Mac = [u8; 6];

/// An Ethernet frame of `ethertype` around `payload` (fixed test MACs).
pub fn ether(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    ether_to([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x01], ethertype, payload)
}

/// An Ethernet frame from `src` to `dst`.
pub fn ether_to(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `frame` with VLAN tags (vid 0) inserted after the MACs, outermost first: e.g.
/// `[0x88a8, 0x8100]` for an 802.1ad outer tag around an 802.1Q tag.
pub fn vlan_tagged(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for tpid in tpids {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// The link-local address EUI-64 derives from `mac`.
pub fn link_local(mac: Mac) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// An ICMPv6 router advertisement from `src` (link-local, from `mac`) to all nodes: router
/// lifetime `lifetime_s` (0 = not a default router) and one autonomous on-link /64 prefix.
pub fn router_advert(mac: Mac, lifetime_s: u16, prefix: Ipv6Addr) -> Vec<u8> {
    let src = link_local(mac);
    let dst: Ipv6Addr = "ff02::1".parse().unwrap();
    let mut icmp = vec![134, 0, 0, 0, 64, 0];
    icmp.extend_from_slice(&lifetime_s.to_be_bytes());
    icmp.extend_from_slice(&[0; 8]); // reachable time, retransmit timer
                                     // Prefix information: type 3, length 4 (32 bytes), /64, on-link + autonomous.
    icmp.extend_from_slice(&[3, 4, 64, 0xc0]);
    icmp.extend_from_slice(&86400u32.to_be_bytes());
    icmp.extend_from_slice(&14400u32.to_be_bytes());
    icmp.extend_from_slice(&[0; 4]);
    icmp.extend_from_slice(&prefix.octets());
    // Source link-layer address.
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&mac);
    let mut pseudo = src.octets().to_vec();
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let sum = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[58, 255]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&icmp);
    ether_to([0x33, 0x33, 0, 0, 0, 1], mac, 0x86dd, &ip)
}

/// An ARP request for `target` from `sender`.
pub fn arp(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 1];
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    ether(0x0806, &a)
}

/// A minimal IPv6 UDP packet.
pub fn ipv6_udp() -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    p.extend_from_slice(&[0xfd; 16]);
    p.extend_from_slice(&[0xfe; 16]);
    p.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 8, 0, 0]);
    ether(0x86dd, &p)
}
