//! The Internet checksum (RFC 1071), for the headers the refusal builder writes.

use core::net::Ipv4Addr;

/// Adds `data` as big-endian 16-bit words (an odd last byte is padded with zero) to `sum`.
/// Kept unfolded in a `u64` so callers can chain pieces (pseudo-header, header, payload).
pub fn add(sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut s = sum;
    for c in &mut chunks {
        if let [hi, lo] = c {
            s += u64::from(u16::from_be_bytes([*hi, *lo]));
        }
    }
    if let [last] = chunks.remainder() {
        s += u64::from(u16::from_be_bytes([*last, 0]));
    }
    s
}

/// Folds a running sum to 16 bits and complements it: the value to store in a header.
pub fn finish(sum: u64) -> u16 {
    let mut s = sum;
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    // `s` fits in 16 bits after folding.
    !(u16::try_from(s).unwrap_or(0xFFFF))
}

/// The checksum of `data` alone (IPv4 header, ICMP message).
pub fn checksum(data: &[u8]) -> u16 {
    finish(add(0, data))
}

/// The running sum of the TCP/UDP pseudo-header for IPv4.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u64 {
    let s = add(0, &src.octets());
    let s = add(s, &dst.octets());
    s + u64::from(protocol) + u64::from(len)
}

/// True if `data` (with its checksum field filled in) sums to the all-ones value, i.e. the
/// receiver's check passes.
pub fn verify(sum_with_checksum: u64) -> bool {
    finish(sum_with_checksum) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ipv4_header_checksum() {
        // The example header from Wikipedia's "IPv4 header checksum" article.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert!(verify(add(0, &h)));
    }

    #[test]
    fn odd_length_and_carry() {
        assert_eq!(checksum(&[]), 0xFFFF);
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[0xFF, 0xFF, 0x00, 0x01]), !0x0001);
        // RFC 1071's worked example: 0001 f203 f4f5 f6f7 sums to ddf2 (folded).
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }
}
