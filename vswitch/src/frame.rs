//! Parser for untrusted Ethernet frames.
//!
//! Frames come from guests and from the wire, so every field is read through bounds-checked
//! helpers and every length field is checked against the bytes actually present. The parser
//! extracts exactly what the switch and the filters need and nothing more.

use core::fmt;
use core::net::Ipv4Addr;

use crate::bytes::{array, u16_at, u32_at, u8_at};

/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype (TPID) of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// Ethertype (TPID) of an 802.1ad service tag; refused, see [`FrameError::StackedVlan`].
pub const ETHERTYPE_QINQ: u16 = 0x88A8;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Length of an Ethernet header without a VLAN tag.
pub const ETH_HEADER_LEN: usize = 14;
/// Largest frame accepted (a 9000-byte jumbo payload plus headers); bounds the work per frame.
pub const MAX_FRAME_LEN: usize = 9018 + 4;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address, which the switch floods.
    pub const BROADCAST: MacAddr = MacAddr([0xFF; 6]);

    /// True for group (multicast and broadcast) addresses: the I/G bit of the first octet.
    /// Such an address is never a valid source and is flooded as a destination.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    /// True for the all-zero address, which no station owns.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What the parser learned about a frame; everything the switch and filters look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Destination MAC.
    pub dst_mac: MacAddr,
    /// Source MAC.
    pub src_mac: MacAddr,
    /// The 802.1Q tag control information (PCP, DEI, VLAN id), if the frame is tagged.
    pub vlan_tci: Option<u16>,
    /// The (inner) ethertype.
    pub ethertype: u16,
    /// Offset of the network-layer header in the frame, so the refusal builder can quote it.
    pub l3_offset: usize,
    /// The parsed network layer.
    pub network: Network,
}

impl FrameInfo {
    /// The source IPv4 address the frame claims: the IPv4 source or the ARP sender.
    pub fn src_ip(&self) -> Option<Ipv4Addr> {
        match self.network {
            Network::Ipv4(ip) => Some(ip.src),
            Network::Arp(arp) => Some(arp.sender_ip),
            Network::Other => None,
        }
    }

    /// The destination IPv4 address: the IPv4 destination or the ARP target.
    pub fn dst_ip(&self) -> Option<Ipv4Addr> {
        match self.network {
            Network::Ipv4(ip) => Some(ip.dst),
            Network::Arp(arp) => Some(arp.target_ip),
            Network::Other => None,
        }
    }
}

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// An IPv4 packet.
    Ipv4(Ipv4Info),
    /// An Ethernet/IPv4 ARP packet.
    Arp(ArpInfo),
    /// Any other ethertype (IPv6, LLC, ...): passed on by MAC address only.
    Other,
}

/// The fields of an IPv4 header the filters need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Header length in bytes (IHL * 4), checked to lie within the packet.
    pub header_len: usize,
    /// Total length from the header, checked to lie within the frame.
    pub total_len: usize,
    /// Fragment offset in 8-byte units; nonzero means no transport header is present.
    pub fragment_offset: u16,
    /// The parsed transport layer.
    pub transport: Transport,
}

/// The transport layer of an IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A TCP segment.
    Tcp(TcpInfo),
    /// A UDP datagram.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// An ICMP message.
    Icmp {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
    },
    /// A non-first fragment: its transport header is in an earlier fragment.
    Fragment,
    /// Another IP protocol.
    Other,
}

/// The fields of a TCP header the filters and the RST builder need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flag bits (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...).
    pub flags: u8,
    /// Payload bytes after the TCP header, within this packet.
    pub payload_len: usize,
}

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// The fields of an Ethernet/IPv4 ARP packet; anti-spoofing checks the sender fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpInfo {
    /// Operation (1 request, 2 reply).
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// Why a frame could not be parsed; the switch drops such frames and counts the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than an Ethernet header (with its VLAN tag, if any).
    TooShortForEthernet,
    /// Longer than [`MAX_FRAME_LEN`].
    TooLong,
    /// Two VLAN tags (802.1ad or stacked 802.1Q); a guest has no business sending them.
    StackedVlan,
    /// The IPv4 header is cut short, has version other than 4, or IHL below 5.
    BadIpv4Header,
    /// The IPv4 total length is below the header length or beyond the frame.
    BadIpv4Length,
    /// The first fragment's transport header is cut short or malformed.
    BadTransportHeader,
    /// An ARP packet that is not Ethernet/IPv4, or is cut short.
    BadArp,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::TooShortForEthernet => "frame shorter than its Ethernet header",
            FrameError::TooLong => "frame longer than the largest accepted frame",
            FrameError::StackedVlan => "frame carries more than one VLAN tag",
            FrameError::BadIpv4Header => "malformed IPv4 header",
            FrameError::BadIpv4Length => "IPv4 total length inconsistent with header or frame",
            FrameError::BadTransportHeader => "malformed or truncated TCP/UDP/ICMP header",
            FrameError::BadArp => "malformed or non-Ethernet/IPv4 ARP packet",
        })
    }
}

fn mac_at(b: &[u8], off: usize) -> Option<MacAddr> {
    array::<6>(b, off).map(MacAddr)
}

fn ip_at(b: &[u8], off: usize) -> Option<Ipv4Addr> {
    array::<4>(b, off).map(Ipv4Addr::from)
}

/// Parses an Ethernet frame (without FCS) into a [`FrameInfo`].
pub fn parse(frame: &[u8]) -> Result<FrameInfo, FrameError> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLong);
    }
    let short = FrameError::TooShortForEthernet;
    let dst_mac = mac_at(frame, 0).ok_or(short)?;
    let src_mac = mac_at(frame, 6).ok_or(short)?;
    let mut ethertype = u16_at(frame, 12).ok_or(short)?;
    let mut l3_offset = ETH_HEADER_LEN;
    let mut vlan_tci = None;
    if ethertype == ETHERTYPE_QINQ {
        return Err(FrameError::StackedVlan);
    }
    if ethertype == ETHERTYPE_VLAN {
        vlan_tci = Some(u16_at(frame, 14).ok_or(short)?);
        ethertype = u16_at(frame, 16).ok_or(short)?;
        l3_offset = ETH_HEADER_LEN + 4;
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            return Err(FrameError::StackedVlan);
        }
    }
    let l3 = frame.get(l3_offset..).ok_or(short)?;
    let network = match ethertype {
        ETHERTYPE_IPV4 => Network::Ipv4(parse_ipv4(l3)?),
        ETHERTYPE_ARP => Network::Arp(parse_arp(l3)?),
        _ => Network::Other,
    };
    Ok(FrameInfo { dst_mac, src_mac, vlan_tci, ethertype, l3_offset, network })
}

/// Parses an IPv4 packet; `p` may carry Ethernet padding after the total length.
fn parse_ipv4(p: &[u8]) -> Result<Ipv4Info, FrameError> {
    let bad = FrameError::BadIpv4Header;
    let ver_ihl = u8_at(p, 0).ok_or(bad)?;
    if ver_ihl >> 4 != 4 || ver_ihl & 0xF < 5 {
        return Err(bad);
    }
    let header_len = usize::from(ver_ihl & 0xF) * 4;
    if p.len() < header_len {
        return Err(bad);
    }
    let total_len = usize::from(u16_at(p, 2).ok_or(bad)?);
    if total_len < header_len || total_len > p.len() {
        return Err(FrameError::BadIpv4Length);
    }
    let fragment_offset = u16_at(p, 6).ok_or(bad)? & 0x1FFF;
    let protocol = u8_at(p, 9).ok_or(bad)?;
    let src = ip_at(p, 12).ok_or(bad)?;
    let dst = ip_at(p, 16).ok_or(bad)?;
    let segment = p.get(header_len..total_len).ok_or(FrameError::BadIpv4Length)?;
    let transport = if fragment_offset != 0 { Transport::Fragment } else { parse_transport(protocol, segment)? };
    Ok(Ipv4Info { src, dst, protocol, header_len, total_len, fragment_offset, transport })
}

/// Parses the transport header at the start of a first (or only) fragment.
fn parse_transport(protocol: u8, s: &[u8]) -> Result<Transport, FrameError> {
    let bad = FrameError::BadTransportHeader;
    Ok(match protocol {
        IPPROTO_TCP => {
            let data_offset = usize::from(u8_at(s, 12).ok_or(bad)? >> 4) * 4;
            if data_offset < 20 || data_offset > s.len() {
                return Err(bad);
            }
            Transport::Tcp(TcpInfo {
                src_port: u16_at(s, 0).ok_or(bad)?,
                dst_port: u16_at(s, 2).ok_or(bad)?,
                seq: u32_at(s, 4).ok_or(bad)?,
                ack: u32_at(s, 8).ok_or(bad)?,
                flags: u8_at(s, 13).ok_or(bad)?,
                payload_len: s.len().checked_sub(data_offset).ok_or(bad)?,
            })
        }
        IPPROTO_UDP => {
            if s.len() < 8 {
                return Err(bad);
            }
            Transport::Udp { src_port: u16_at(s, 0).ok_or(bad)?, dst_port: u16_at(s, 2).ok_or(bad)? }
        }
        IPPROTO_ICMP => Transport::Icmp { icmp_type: u8_at(s, 0).ok_or(bad)?, code: u8_at(s, 1).ok_or(bad)? },
        _ => Transport::Other,
    })
}

/// Parses an ARP packet; only Ethernet (htype 1, hlen 6) over IPv4 (ptype 0x0800, plen 4).
fn parse_arp(p: &[u8]) -> Result<ArpInfo, FrameError> {
    let bad = FrameError::BadArp;
    let htype = u16_at(p, 0).ok_or(bad)?;
    let ptype = u16_at(p, 2).ok_or(bad)?;
    let (hlen, plen) = (u8_at(p, 4).ok_or(bad)?, u8_at(p, 5).ok_or(bad)?);
    if htype != 1 || ptype != ETHERTYPE_IPV4 || hlen != 6 || plen != 4 {
        return Err(bad);
    }
    Ok(ArpInfo {
        operation: u16_at(p, 6).ok_or(bad)?,
        sender_mac: mac_at(p, 8).ok_or(bad)?,
        sender_ip: ip_at(p, 14).ok_or(bad)?,
        target_mac: mac_at(p, 18).ok_or(bad)?,
        target_ip: ip_at(p, 24).ok_or(bad)?,
    })
}

/// Frame builders for tests, benchmarks and fuzz seeds: they write well-formed headers with
/// zero checksums (the parser does not check checksums; receivers do).
pub mod build {
    use alloc::vec::Vec;
    use core::net::Ipv4Addr;

    use super::{MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

    /// An Ethernet header followed by `payload`.
    pub fn ethernet(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An IPv4 packet (20-byte header) carrying `payload` with protocol `protocol`.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
        let mut p = Vec::with_capacity(usize::from(total));
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    /// A TCP header (no options) with the given ports and flags, then `payload`.
    pub fn tcp(src_port: u16, dst_port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut s = Vec::with_capacity(20 + payload.len());
        s.extend_from_slice(&src_port.to_be_bytes());
        s.extend_from_slice(&dst_port.to_be_bytes());
        s.extend_from_slice(&seq.to_be_bytes());
        s.extend_from_slice(&ack.to_be_bytes());
        s.extend_from_slice(&[0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0]);
        s.extend_from_slice(payload);
        s
    }

    /// A UDP header with the given ports, then `payload`.
    pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
        let mut s = Vec::with_capacity(8 + payload.len());
        s.extend_from_slice(&src_port.to_be_bytes());
        s.extend_from_slice(&dst_port.to_be_bytes());
        s.extend_from_slice(&len.to_be_bytes());
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(payload);
        s
    }

    /// A full Ethernet/IPv4/TCP frame.
    pub fn tcp_frame(
        (src_mac, src_ip, src_port): (MacAddr, Ipv4Addr, u16),
        (dst_mac, dst_ip, dst_port): (MacAddr, Ipv4Addr, u16),
        flags: u8,
    ) -> Vec<u8> {
        let seg = tcp(src_port, dst_port, 1000, 0, flags, b"hello");
        ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, &ipv4(src_ip, dst_ip, IPPROTO_TCP, &seg))
    }

    /// A full Ethernet/IPv4/UDP frame.
    pub fn udp_frame(
        (src_mac, src_ip, src_port): (MacAddr, Ipv4Addr, u16),
        (dst_mac, dst_ip, dst_port): (MacAddr, Ipv4Addr, u16),
    ) -> Vec<u8> {
        let dgram = udp(src_port, dst_port, b"data");
        ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, &ipv4(src_ip, dst_ip, IPPROTO_UDP, &dgram))
    }

    /// A full Ethernet/IPv4 ICMP echo request frame.
    pub fn ping_frame(src: (MacAddr, Ipv4Addr), dst: (MacAddr, Ipv4Addr)) -> Vec<u8> {
        let icmp = [8u8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'];
        ethernet(dst.0, src.0, ETHERTYPE_IPV4, &ipv4(src.1, dst.1, IPPROTO_ICMP, &icmp))
    }

    /// An ARP request from `sender` asking for `target_ip`, broadcast.
    pub fn arp_request(sender: (MacAddr, Ipv4Addr), target_ip: Ipv4Addr) -> Vec<u8> {
        let mut a = Vec::with_capacity(28);
        a.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        a.extend_from_slice(&sender.0 .0);
        a.extend_from_slice(&sender.1.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target_ip.octets());
        ethernet(MacAddr::BROADCAST, sender.0, ETHERTYPE_ARP, &a)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::build::*;
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const IA: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IB: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn parses_tcp() {
        let f = tcp_frame((A, IA, 1234), (B, IB, 80), TCP_SYN);
        let i = parse(&f).unwrap();
        assert_eq!((i.src_mac, i.dst_mac, i.ethertype, i.vlan_tci, i.l3_offset), (A, B, ETHERTYPE_IPV4, None, 14));
        let Network::Ipv4(ip) = i.network else { panic!("not ipv4") };
        assert_eq!((ip.src, ip.dst, ip.protocol, ip.header_len), (IA, IB, IPPROTO_TCP, 20));
        let Transport::Tcp(t) = ip.transport else { panic!("not tcp") };
        assert_eq!((t.src_port, t.dst_port, t.seq, t.flags, t.payload_len), (1234, 80, 1000, TCP_SYN, 5));
        assert_eq!((i.src_ip(), i.dst_ip()), (Some(IA), Some(IB)));
    }

    #[test]
    fn parses_udp_icmp_arp() {
        let u = parse(&udp_frame((A, IA, 5353), (B, IB, 53))).unwrap();
        assert!(matches!(u.network, Network::Ipv4(Ipv4Info { transport: Transport::Udp { dst_port: 53, .. }, .. })));
        let p = parse(&ping_frame((A, IA), (B, IB))).unwrap();
        assert!(matches!(
            p.network,
            Network::Ipv4(Ipv4Info { transport: Transport::Icmp { icmp_type: 8, code: 0 }, .. })
        ));
        let a = parse(&arp_request((A, IA), IB)).unwrap();
        let Network::Arp(arp) = a.network else { panic!("not arp") };
        assert_eq!((arp.operation, arp.sender_mac, arp.sender_ip, arp.target_ip), (1, A, IA, IB));
        assert_eq!((a.src_ip(), a.dst_ip(), a.dst_mac), (Some(IA), Some(IB), MacAddr::BROADCAST));
    }

    #[test]
    fn parses_vlan_tag_and_other_ethertypes() {
        let inner = udp_frame((A, IA, 1), (B, IB, 2));
        let mut tagged = inner[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x20, 0x05]);
        tagged.extend_from_slice(&inner[12..]);
        let i = parse(&tagged).unwrap();
        assert_eq!((i.vlan_tci, i.ethertype, i.l3_offset), (Some(0x2005), ETHERTYPE_IPV4, 18));
        let v6 = ethernet(B, A, 0x86DD, &[0; 40]);
        assert_eq!(parse(&v6).unwrap().network, Network::Other);
        assert_eq!(parse(&v6).unwrap().src_ip(), None);
    }

    #[test]
    fn accepts_ethernet_padding_after_ip_total_length() {
        let mut f = ping_frame((A, IA), (B, IB));
        f.resize(60, 0);
        let i = parse(&f).unwrap();
        let Network::Ipv4(ip) = i.network else { panic!() };
        assert_eq!(ip.total_len, 32);
    }

    #[test]
    fn rejects_short_and_stacked_frames() {
        assert_eq!(parse(&[]), Err(FrameError::TooShortForEthernet));
        assert_eq!(parse(&[0; 13]), Err(FrameError::TooShortForEthernet));
        let mut f = [0u8; 16];
        f[12] = 0x81;
        assert_eq!(parse(&f), Err(FrameError::TooShortForEthernet));
        let mut q = [0u8; 30];
        q[12..14].copy_from_slice(&[0x88, 0xA8]);
        assert_eq!(parse(&q), Err(FrameError::StackedVlan));
        q[12..18].copy_from_slice(&[0x81, 0, 0, 1, 0x81, 0]);
        assert_eq!(parse(&q), Err(FrameError::StackedVlan));
        assert_eq!(parse(&alloc::vec![0u8; MAX_FRAME_LEN + 1]), Err(FrameError::TooLong));
    }

    #[test]
    fn rejects_bad_ipv4_headers() {
        let good = ping_frame((A, IA), (B, IB));
        let with = |off: usize, v: u8| {
            let mut f = good.clone();
            f[off] = v;
            parse(&f)
        };
        assert_eq!(with(14, 0x65), Err(FrameError::BadIpv4Header)); // version 6
        assert_eq!(with(14, 0x44), Err(FrameError::BadIpv4Header)); // IHL 4
        assert_eq!(with(14, 0x4F), Err(FrameError::BadIpv4Header)); // IHL 15 > packet
        assert_eq!(with(17, 19), Err(FrameError::BadIpv4Length)); // total < header
        assert_eq!(with(17, 200), Err(FrameError::BadIpv4Length)); // total > frame
        assert_eq!(parse(&good[..14 + 19]), Err(FrameError::BadIpv4Header));
    }

    #[test]
    fn rejects_truncated_transport_and_handles_fragments() {
        // TCP header cut to 10 bytes, with the IP total length agreeing.
        let seg = tcp(1, 2, 0, 0, 0, b"");
        let f = ethernet(B, A, ETHERTYPE_IPV4, &ipv4(IA, IB, IPPROTO_TCP, &seg[..10]));
        assert_eq!(parse(&f), Err(FrameError::BadTransportHeader));
        // Data offset pointing past the segment.
        let mut seg2 = seg.clone();
        seg2[12] = 0xF0;
        let f2 = ethernet(B, A, ETHERTYPE_IPV4, &ipv4(IA, IB, IPPROTO_TCP, &seg2));
        assert_eq!(parse(&f2), Err(FrameError::BadTransportHeader));
        let f3 = ethernet(B, A, ETHERTYPE_IPV4, &ipv4(IA, IB, IPPROTO_UDP, &[0; 7]));
        assert_eq!(parse(&f3), Err(FrameError::BadTransportHeader));
        let f4 = ethernet(B, A, ETHERTYPE_IPV4, &ipv4(IA, IB, IPPROTO_ICMP, &[8]));
        assert_eq!(parse(&f4), Err(FrameError::BadTransportHeader));
        // A later fragment has no transport header and still parses.
        let mut frag = ethernet(B, A, ETHERTYPE_IPV4, &ipv4(IA, IB, IPPROTO_TCP, &[1, 2, 3]));
        frag[20] = 0;
        frag[21] = 10;
        let Network::Ipv4(ip) = parse(&frag).unwrap().network else { panic!() };
        assert_eq!((ip.transport, ip.fragment_offset), (Transport::Fragment, 10));
    }

    #[test]
    fn rejects_bad_arp() {
        let good = arp_request((A, IA), IB);
        assert_eq!(parse(&good[..14 + 27]), Err(FrameError::BadArp));
        let mut ipv6_arp = good.clone();
        ipv6_arp[14 + 2] = 0x86;
        assert_eq!(parse(&ipv6_arp), Err(FrameError::BadArp));
        let mut hlen = good;
        hlen[14 + 4] = 8;
        assert_eq!(parse(&hlen), Err(FrameError::BadArp));
    }

    #[test]
    fn mac_display_and_bits() {
        assert_eq!(alloc::format!("{A}"), "02:00:00:00:00:01");
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!A.is_multicast());
        assert!(MacAddr([0; 6]).is_zero());
    }

    proptest! {
        /// The parser never panics, whatever the bytes, and what it reports lies inside the frame.
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(info) = parse(&bytes) {
                prop_assert!(info.l3_offset <= bytes.len());
                if let Network::Ipv4(ip) = info.network {
                    prop_assert!(info.l3_offset + ip.total_len <= bytes.len());
                    prop_assert!(ip.header_len <= ip.total_len);
                }
            }
        }

        /// Mutating any byte of a valid frame still never panics.
        #[test]
        fn parser_survives_mutations(pos in 0usize..80, val in any::<u8>(), cut in 0usize..80) {
            let mut f: Vec<u8> = tcp_frame((A, IA, 1), (B, IB, 2), TCP_SYN);
            if let Some(b) = f.get_mut(pos) { *b = val; }
            f.truncate(cut.max(1));
            let _ = parse(&f);
        }
    }
}
