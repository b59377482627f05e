//! Builds the reply that tells a sender its frame was refused by a rule with
//! [`Action::Refuse`](crate::policy::Action::Refuse): a TCP RST for TCP (so the connect fails
//! at once rather than timing out), else ICMP destination unreachable, code 13
//! "communication administratively prohibited" (RFC 1812), quoting the refused header.
//!
//! The reply comes from the refused frame's destination (its MAC, IPv4 and port), as a host
//! firewall's would, and goes back out of the ingress port. No reply is built where one would
//! be wrong or abusable: for a RST, an ICMP error, a non-first fragment, or a frame with a
//! broadcast/multicast destination or an unusable source (RFC 1122 3.2.2, RFC 793).

use alloc::vec::Vec;
use core::net::Ipv4Addr;

use crate::checksum;
use crate::frame::{
    FrameInfo, Network, TcpInfo, Transport, ETHERTYPE_IPV4, ETHERTYPE_VLAN, IPPROTO_ICMP, IPPROTO_TCP, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN,
};

/// ICMP type "destination unreachable".
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
/// ICMP code "communication administratively prohibited".
pub const ICMP_ADMIN_PROHIBITED: u8 = 13;
/// Bytes of the refused packet's payload quoted after its IP header (RFC 792).
const QUOTE_PAYLOAD: usize = 8;
/// Shortest Ethernet frame without FCS; replies are padded to it.
const MIN_FRAME: usize = 60;
/// TTL of replies.
const TTL: u8 = 64;

/// The refusal for `frame` (parsed as `info`), or `None` when no reply should be sent.
pub fn refusal(frame: &[u8], info: &FrameInfo) -> Option<Vec<u8>> {
    let Network::Ipv4(ip) = info.network else { return None };
    if info.dst_mac.is_multicast() || info.src_mac.is_multicast() || info.src_mac.is_zero() {
        return None;
    }
    if !usable_source(ip.src) || ip.dst.is_broadcast() || ip.dst.is_multicast() || ip.fragment_offset != 0 {
        return None;
    }
    let (protocol, l4) = match ip.transport {
        Transport::Tcp(t) => (IPPROTO_TCP, tcp_rst(ip.dst, ip.src, t)?),
        Transport::Icmp { icmp_type, .. } if is_icmp_error(icmp_type) => return None,
        _ => {
            let quote_len = ip.header_len.checked_add(QUOTE_PAYLOAD)?.min(ip.total_len);
            let quote = frame.get(info.l3_offset..info.l3_offset.checked_add(quote_len)?)?;
            (IPPROTO_ICMP, icmp_prohibited(quote))
        }
    };
    let mut out = Vec::with_capacity(MIN_FRAME.max(18 + 20 + l4.len()));
    out.extend_from_slice(&info.src_mac.0);
    out.extend_from_slice(&info.dst_mac.0);
    if let Some(tci) = info.vlan_tci {
        out.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        out.extend_from_slice(&tci.to_be_bytes());
    }
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    out.extend_from_slice(&ipv4_header(ip.dst, ip.src, protocol, l4.len())?);
    out.extend_from_slice(&l4);
    if out.len() < MIN_FRAME {
        out.resize(MIN_FRAME, 0);
    }
    Some(out)
}

fn usable_source(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

/// ICMP types that are themselves error reports, which must never draw an ICMP error.
fn is_icmp_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// A 20-byte IPv4 header with its checksum.
fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) -> Option<[u8; 20]> {
    let total = u16::try_from(payload_len.checked_add(20)?).ok()?.to_be_bytes();
    let [s0, s1, s2, s3] = src.octets();
    let [d0, d1, d2, d3] = dst.octets();
    let mut h = [0x45, 0, total[0], total[1], 0, 0, 0x40, 0, TTL, protocol, 0, 0, s0, s1, s2, s3, d0, d1, d2, d3];
    let [c0, c1] = checksum::checksum(&h).to_be_bytes();
    if let Some(c) = h.get_mut(10..12) {
        c.copy_from_slice(&[c0, c1]);
    }
    Some(h)
}

/// ICMP destination unreachable / administratively prohibited, quoting `quote`.
fn icmp_prohibited(quote: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + quote.len());
    m.extend_from_slice(&[ICMP_DEST_UNREACHABLE, ICMP_ADMIN_PROHIBITED, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(quote);
    let c = checksum::checksum(&m).to_be_bytes();
    if let Some(field) = m.get_mut(2..4) {
        field.copy_from_slice(&c);
    }
    m
}

/// The RST answering segment `t` (RFC 793, "Reset Generation"), from `src` to `dst`; `None`
/// if `t` is itself a RST.
fn tcp_rst(src: Ipv4Addr, dst: Ipv4Addr, t: TcpInfo) -> Option<Vec<u8>> {
    if t.flags & TCP_RST != 0 {
        return None;
    }
    let (seq, ack, flags) = if t.flags & TCP_ACK != 0 {
        (t.ack, 0, TCP_RST)
    } else {
        let len = u32::try_from(t.payload_len).ok()?;
        let syn_fin = u32::from(t.flags & TCP_SYN != 0) + u32::from(t.flags & TCP_FIN != 0);
        (0, t.seq.wrapping_add(len).wrapping_add(syn_fin), TCP_RST | TCP_ACK)
    };
    let mut s = Vec::with_capacity(20);
    s.extend_from_slice(&t.dst_port.to_be_bytes());
    s.extend_from_slice(&t.src_port.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.extend_from_slice(&[0x50, flags, 0, 0, 0, 0, 0, 0]);
    let sum = checksum::add(checksum::pseudo_header(src, dst, IPPROTO_TCP, 20), &s);
    let c = checksum::finish(sum).to_be_bytes();
    if let Some(field) = s.get_mut(16..18) {
        field.copy_from_slice(&c);
    }
    Some(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::frame::{build, parse, MacAddr, IPPROTO_UDP};

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const IA: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IB: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn reply_for(frame: &[u8]) -> Option<Vec<u8>> {
        refusal(frame, &parse(frame).unwrap())
    }

    /// Checks the IPv4 header checksum and returns (ip header, l4 bytes).
    fn check_ip(reply: &[u8]) -> (&[u8], &[u8]) {
        let ip = &reply[14..34];
        assert!(checksum::verify(checksum::add(0, ip)), "IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        (ip, &reply[34..14 + total])
    }

    #[test]
    fn icmp_admin_prohibited_for_udp_with_valid_checksums() {
        let f = build::udp_frame((A, IA, 5000), (B, IB, 53));
        let r = reply_for(&f).unwrap();
        assert_eq!((&r[0..6], &r[6..12], &r[12..14]), (&A.0[..], &B.0[..], &[8u8, 0][..]));
        let (ip, icmp) = check_ip(&r);
        assert_eq!((ip[9], &ip[12..16], &ip[16..20]), (IPPROTO_ICMP, &IB.octets()[..], &IA.octets()[..]));
        assert_eq!((icmp[0], icmp[1]), (ICMP_DEST_UNREACHABLE, ICMP_ADMIN_PROHIBITED));
        assert!(checksum::verify(checksum::add(0, icmp)), "ICMP checksum");
        // The quote is the refused IP header plus the first 8 payload bytes (the UDP header).
        assert_eq!(&icmp[8..], &f[14..14 + 28]);
        assert_eq!(r.len(), 14 + 20 + 8 + 28);
        // A receiver's parser accepts the reply.
        let p = parse(&r).unwrap();
        assert!(matches!(p.network, Network::Ipv4(i) if i.transport == Transport::Icmp { icmp_type: 3, code: 13 }));
    }

    #[test]
    fn icmp_reply_for_ping_quotes_what_exists() {
        let f = build::ping_frame((A, IA), (B, IB));
        let r = reply_for(&f).unwrap();
        let (_, icmp) = check_ip(&r);
        assert!(checksum::verify(checksum::add(0, icmp)));
        assert_eq!(&icmp[8..], &f[14..14 + 28]);
        // A short protocol-99 payload: the quote stops at the packet's end.
        let tiny = build::ethernet(B, A, ETHERTYPE_IPV4, &build::ipv4(IA, IB, 99, &[1, 2, 3]));
        let tiny_reply = reply_for(&tiny).unwrap();
        let (_, icmp) = check_ip(&tiny_reply);
        assert_eq!(icmp.len(), 8 + 23);
    }

    #[test]
    fn rst_for_syn_acknowledges_it_with_valid_checksum() {
        let f = build::tcp_frame((A, IA, 40000), (B, IB, 22), TCP_SYN);
        let r = reply_for(&f).unwrap();
        assert_eq!(r.len(), MIN_FRAME);
        let (ip, tcp) = check_ip(&r);
        assert_eq!(ip[9], IPPROTO_TCP);
        let sum = checksum::add(checksum::pseudo_header(IB, IA, IPPROTO_TCP, 20), tcp);
        assert!(checksum::verify(sum), "TCP checksum");
        let p = parse(&r).unwrap();
        let Network::Ipv4(i) = p.network else { panic!() };
        let Transport::Tcp(t) = i.transport else { panic!() };
        // SYN with 5 payload bytes at seq 1000: ack = 1000 + 5 + 1.
        assert_eq!((t.src_port, t.dst_port, t.seq, t.ack, t.flags), (22, 40000, 0, 1006, TCP_RST | TCP_ACK));
    }

    #[test]
    fn rst_for_ack_segment_uses_its_ack_as_seq() {
        let seg = build::tcp(40000, 22, 5, 0xDEAD_BEEF, TCP_ACK, b"");
        let f = build::ethernet(B, A, ETHERTYPE_IPV4, &build::ipv4(IA, IB, IPPROTO_TCP, &seg));
        let r = reply_for(&f).unwrap();
        let (_, tcp) = check_ip(&r);
        assert!(checksum::verify(checksum::add(checksum::pseudo_header(IB, IA, IPPROTO_TCP, 20), tcp)));
        let Network::Ipv4(i) = parse(&r).unwrap().network else { panic!() };
        let Transport::Tcp(t) = i.transport else { panic!() };
        assert_eq!((t.seq, t.ack, t.flags), (0xDEAD_BEEF, 0, TCP_RST));
    }

    #[test]
    fn keeps_the_vlan_tag() {
        let inner = build::udp_frame((A, IA, 1), (B, IB, 2));
        let mut tagged = inner[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&inner[12..]);
        let r = reply_for(&tagged).unwrap();
        assert_eq!(parse(&r).unwrap().vlan_tci, Some(7));
    }

    #[test]
    fn no_reply_where_one_would_be_wrong() {
        let rst = build::tcp_frame((A, IA, 1), (B, IB, 2), TCP_RST);
        assert_eq!(reply_for(&rst), None);
        let unreachable = build::ethernet(B, A, ETHERTYPE_IPV4, &build::ipv4(IA, IB, IPPROTO_ICMP, &[3, 1, 0, 0]));
        assert_eq!(reply_for(&unreachable), None);
        assert_eq!(reply_for(&build::arp_request((A, IA), IB)), None);
        let bcast = build::udp_frame((A, IA, 1), (MacAddr::BROADCAST, IB, 2));
        assert_eq!(reply_for(&bcast), None);
        let to_bcast_ip = build::udp_frame((A, IA, 1), (B, Ipv4Addr::BROADCAST, 2));
        assert_eq!(reply_for(&to_bcast_ip), None);
        let from_zero = build::udp_frame((A, Ipv4Addr::UNSPECIFIED, 68), (B, IB, 67));
        assert_eq!(reply_for(&from_zero), None);
        let mut frag = build::ethernet(B, A, ETHERTYPE_IPV4, &build::ipv4(IA, IB, IPPROTO_UDP, &[0; 8]));
        frag[21] = 1;
        assert_eq!(reply_for(&frag), None);
        let v6 = build::ethernet(B, A, 0x86DD, &[0; 40]);
        assert_eq!(reply_for(&v6), None);
    }
}
