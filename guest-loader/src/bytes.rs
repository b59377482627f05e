//! Bounds-checked little-endian reads from untrusted bytes.

/// Reads `N` bytes at `off`, or `None` if they are not all inside `b`.
pub(crate) fn array<const N: usize>(b: &[u8], off: u64) -> Option<[u8; N]> {
    let off = usize::try_from(off).ok()?;
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Reads a little-endian `u16` at `off`.
pub(crate) fn u16_at(b: &[u8], off: u64) -> Option<u16> {
    array(b, off).map(u16::from_le_bytes)
}

/// Reads a little-endian `u32` at `off`.
pub(crate) fn u32_at(b: &[u8], off: u64) -> Option<u32> {
    array(b, off).map(u32::from_le_bytes)
}

/// Reads a little-endian `u64` at `off`.
pub(crate) fn u64_at(b: &[u8], off: u64) -> Option<u64> {
    array(b, off).map(u64::from_le_bytes)
}

/// The sub-slice `[off, off + len)`, or `None` if it is not inside `b`.
pub(crate) fn range(b: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = usize::try_from(off.checked_add(len)?).ok()?;
    b.get(start..end)
}

/// Rounds `v` up to a multiple of `align` (a power of two), `None` on overflow.
pub(crate) fn align_up(v: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(v.checked_add(mask)? & !mask)
}
