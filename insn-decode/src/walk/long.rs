//! 4-level and 5-level (CR4.LA57) IA-32e paging.

use super::{read_u64, xd_reserved, WalkError, ADDR_MASK, P, PS, RW, US};
use crate::mode::{CpuMode, CR4_LA57};
use crate::GuestPhys;

/// Whether `addr` is canonical for `bits`-bit linear addresses (bits 63 down
/// to `bits - 1` all equal).
fn is_canonical(addr: u64, bits: u32) -> bool {
    let shift = 64 - bits;
    (((addr << shift) as i64) >> shift) as u64 == addr
}

/// Walks PML5 (if LA57), PML4, PDPT, PD and PT for `gva`.
pub(super) fn translate(mem: &impl GuestPhys, mode: &CpuMode, gva: u64) -> Result<u64, WalkError> {
    walk(mem, mode, gva).map(|(gpa, _)| gpa)
}

/// Walks like [`translate`] and also returns the R/W (bit 1) and U/S
/// (bit 2) bits ANDed over every level, which decide whether a user or a
/// write access is allowed.
pub(super) fn walk(mem: &impl GuestPhys, mode: &CpuMode, gva: u64) -> Result<(u64, u64), WalkError> {
    let mut rights = RW | US;
    let (top, bits) = if mode.cr4 & CR4_LA57 != 0 { (5u8, 57) } else { (4u8, 48) };
    if !is_canonical(gva, bits) {
        return Err(WalkError::NonCanonical(gva));
    }
    let always = xd_reserved(mode);
    let mut table = mode.cr3 & ADDR_MASK;
    for level in (1..=top).rev() {
        // Level 1 indexes with bits 20:12, level 2 with 29:21, and so on.
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (gva >> shift) & 0x1FF;
        let entry = read_u64(mem, table | (index * 8))?;
        if entry & P == 0 {
            return Err(WalkError::NotPresent { level });
        }
        let large = level > 1 && entry & PS != 0;
        let page_mask = (1u64 << shift) - 1;
        let reserved = match (level, large) {
            // PS is reserved in PML4Es and PML5Es.
            (4 | 5, true) => return Err(WalkError::ReservedBits { level }),
            // 1 GiB / 2 MiB pages: bits shift-1..13 must be zero (bit 12 is PAT).
            (2 | 3, true) => always | (page_mask & !0x1FFF),
            _ => always,
        };
        if entry & reserved != 0 {
            return Err(WalkError::ReservedBits { level });
        }
        rights &= entry;
        if level == 1 || large {
            return Ok(((entry & ADDR_MASK & !page_mask) | (gva & page_mask), rights & (RW | US)));
        }
        table = entry & ADDR_MASK;
    }
    // Unreachable: level 1 always returns above. Report it as a walk failure
    // rather than panicking.
    Err(WalkError::NotPresent { level: 1 })
}

#[cfg(test)]
mod tests {
    use super::is_canonical;

    #[test]
    fn canonical_boundaries() {
        assert!(is_canonical(0x0000_7FFF_FFFF_FFFF, 48));
        assert!(!is_canonical(0x0000_8000_0000_0000, 48));
        assert!(is_canonical(0xFFFF_8000_0000_0000, 48));
        assert!(!is_canonical(0xFFFE_FFFF_FFFF_FFFF, 48));
        assert!(is_canonical(0x00FF_FFFF_FFFF_FFFF, 57));
        assert!(!is_canonical(0x0100_0000_0000_0000, 57));
        assert!(is_canonical(0xFF00_0000_0000_0000, 57));
    }
}
