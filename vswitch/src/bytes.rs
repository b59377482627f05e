//! Bounds-checked big-endian (network order) reads from untrusted bytes.

/// Reads `N` bytes at `off`, or `None` if they are not all inside `b`.
pub(crate) fn array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Reads the byte at `off`.
pub(crate) fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

/// Reads a big-endian `u16` at `off`.
pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    array(b, off).map(u16::from_be_bytes)
}

/// Reads a big-endian `u32` at `off`.
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    array(b, off).map(u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_and_refuses_outside() {
        let b = [1u8, 2, 3, 4, 5];
        assert_eq!(u8_at(&b, 4), Some(5));
        assert_eq!(u8_at(&b, 5), None);
        assert_eq!(u16_at(&b, 3), Some(0x0405));
        assert_eq!(u16_at(&b, 4), None);
        assert_eq!(u32_at(&b, 1), Some(0x0203_0405));
        assert_eq!(u32_at(&b, 2), None);
        assert_eq!(array::<2>(&b, usize::MAX), None);
    }
}
