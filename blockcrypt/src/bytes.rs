//! Bounds-checked little-endian reads and writes on byte slices, so parsing
//! untrusted records never indexes out of range.

/// Reads `N` bytes at `off`, or `None` if they are not all inside `b`.
pub fn array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Reads a little-endian `u16` at `off`.
pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    array(b, off).map(u16::from_le_bytes)
}

/// Reads a little-endian `u32` at `off`.
pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    array(b, off).map(u32::from_le_bytes)
}

/// Reads a little-endian `u64` at `off`.
pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    array(b, off).map(u64::from_le_bytes)
}

/// Copies `src` into `dst` at `off`; `false` (and nothing written) if it does not fit.
pub fn put(dst: &mut [u8], off: usize, src: &[u8]) -> bool {
    let Some(end) = off.checked_add(src.len()) else { return false };
    match dst.get_mut(off..end) {
        Some(d) => {
            d.copy_from_slice(src);
            true
        }
        None => false,
    }
}
