//! Access to guest-physical memory through the boot identity map.
//!
//! The boot stub maps the first [`MAPPED_LIMIT`] bytes 1:1, so a physical
//! address is also a valid pointer below that. Rust objects of the guest
//! live only inside its image `[__image_start, __image_end)` (code, data,
//! `.bss` with page tables and stack); memory outside it belongs to nobody
//! but the boot structures the loader placed there, which this program only
//! reads ([`crate::BootInfo`] records them so [`test_ram`] never writes them).

use core::ptr;

/// End of the identity map the boot stub builds (4 GiB).
pub const MAPPED_LIMIT: u64 = 4 << 30;

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// A half-open physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// `[start, start + len)`, saturating.
    pub fn new(start: u64, len: u64) -> Self {
        Range { start, end: start.saturating_add(len) }
    }

    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// The guest image (code, data, `.bss`) as loaded.
pub fn image() -> Range {
    #[allow(unused_unsafe)]
    // SAFETY: only the addresses of the linker-defined symbols are taken.
    let (start, end) = unsafe { (ptr::addr_of!(__image_start) as u64, ptr::addr_of!(__image_end) as u64) };
    Range { start, end }
}

/// Whether `[addr, addr + len)` is non-null and inside the identity map.
pub fn mapped(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_LIMIT)
}

/// Reads a `u32` at `addr` (any alignment), if mapped.
pub fn read_u32(addr: u64) -> Option<u32> {
    bytes(addr, 4).map(|b| b.iter().rev().fold(0u32, |acc, &x| (acc << 8) | u32::from(x)))
}

/// Reads a `u64` at `addr` (any alignment), if mapped.
pub fn read_u64(addr: u64) -> Option<u64> {
    bytes(addr, 8).map(|b| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// The `len` bytes at `addr` as a slice, if the range is mapped.
pub fn bytes(addr: u64, len: u64) -> Option<&'static [u8]> {
    if !mapped(addr, len) {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    // SAFETY: the range is non-null and inside the identity map, so every
    // byte is readable; nothing in this program writes memory outside its
    // image except `test_ram`, which skips the boot structures a
    // `BootInfo` references (see module doc), so the bytes stay unchanged
    // for 'static.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// The NUL-terminated string at `addr` (without the NUL), scanning at most
/// `max` bytes; `None` if unmapped or unterminated.
pub fn c_str(addr: u64, max: u64) -> Option<&'static [u8]> {
    let mut len = 0;
    while len < max {
        let b = bytes(addr.checked_add(len)?, 1)?;
        if b.first() == Some(&0) {
            return bytes(addr, len);
        }
        len += 1;
    }
    None
}

/// One volatile 8-byte read of guest-physical `addr`, whatever is there (RAM,
/// MMIO or nothing). Returns `None` without reading if `addr` is unaligned or
/// outside the identity map.
pub fn probe_read(addr: u64) -> Option<u64> {
    if !addr.is_multiple_of(8) || !mapped(addr, 8) {
        return None;
    }
    // SAFETY: aligned and identity-mapped; a read creates no reference and
    // this program keeps no Rust object outside its image that a read could
    // disturb.
    Some(unsafe { ptr::read_volatile(addr as *const u64) })
}

/// Outcome of [`test_ram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamTest {
    /// Patterns written and read back; the old value was restored.
    Ok,
    /// Not tested: the address is unaligned, unmapped, or overlaps the image
    /// or a protected range.
    Skipped,
    /// A pattern read back wrong: (written, read).
    Mismatch(u64, u64),
}

/// Writes two patterns to the 8 bytes at `addr` and reads each back, then
/// restores the old contents. Skips addresses in the image or in `protected`.
pub fn test_ram(addr: u64, protected: &[Range]) -> RamTest {
    let r = Range::new(addr, 8);
    if !addr.is_multiple_of(8) || !mapped(addr, 8) || r.overlaps(&image()) || protected.iter().any(|p| p.overlaps(&r)) {
        return RamTest::Skipped;
    }
    let p = addr as *mut u64;
    // SAFETY: aligned and identity-mapped; the range is outside the image
    // (no Rust object lives there) and outside every boot structure a
    // `BootInfo` slice may reference (`protected`), and the old value is
    // restored.
    unsafe {
        let old = ptr::read_volatile(p);
        for pattern in [0x5A5A_A5A5_0F0F_F0F0u64 ^ addr, !addr] {
            ptr::write_volatile(p, pattern);
            let got = ptr::read_volatile(p);
            if got != pattern {
                ptr::write_volatile(p, old);
                return RamTest::Mismatch(pattern, got);
            }
        }
        ptr::write_volatile(p, old);
    }
    RamTest::Ok
}
