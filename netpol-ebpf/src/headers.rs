//! Header layouts and bounds-checked access to the packet.

use aya_ebpf::programs::TcContext;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ outer tag some switches still use.
pub const ETH_P_QINQ: u16 = 0x9100;
pub const IPV4_HLEN: usize = 20;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_REDIRECT: u8 = 5;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_ROUTERADVERT: u8 = 9;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;
/// Ethernet + IPv4 without options + the largest fixed L4 header we read (TCP's 20 bytes):
/// what every IPv4 packet needs in the linear area.
pub const BASE_HEADERS: usize = ETH_HLEN + IPV4_HLEN + 20;

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
pub struct TcpHead {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff: u8,
    pub flags: u8,
}

#[repr(C)]
pub struct Ports {
    pub sport: u16,
    pub dport: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub csum: u16,
    pub id: u16,
    pub seq: u16,
}

/// ARP for IPv4 over Ethernet, up to the sender's protocol address.
#[repr(C)]
pub struct ArpHead {
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub oper: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
}

#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Makes the first `want` bytes directly accessible when they are not yet: only then, and
/// only that many. A pull makes the skb writable, and TCP's transmitted skbs are clones, so
/// an unconditional pull would copy every data packet a pod sends.
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, want: usize) {
    let linear = ctx.data_end() - ctx.data();
    let len = ctx.len() as usize;
    if linear < want && len > linear {
        let n = if len < want { len } else { want };
        let _ = ctx.pull_data(n as u32);
    }
}

#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The interface the packet entered the node on (0 for the node's own packets).
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}

/// Whether the kernel already took an 802.1Q/802.1ad tag off the frame (it does so before
/// tc ingress runs, and hands the inner frame on afterwards).
#[inline(always)]
pub fn vlan_tagged(ctx: &TcContext) -> bool {
    unsafe { (*ctx.skb.skb).vlan_present != 0 }
}
