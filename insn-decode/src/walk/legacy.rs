//! 32-bit paging (optionally with 4 MiB PSE pages) and PAE paging.

use super::{read_u32, read_u64, xd_reserved, WalkError, ADDR_MASK, P, PS};
use crate::mode::{CpuMode, CR4_PSE};
use crate::GuestPhys;

/// Bits 62:52 of PAE entries, reserved there (unlike in 4-level paging).
const PAE_HIGH_RESERVED: u64 = 0x7FF0_0000_0000_0000;

/// 32-bit paging: a page directory of 1024 4-byte entries at CR3[31:12].
pub(super) fn translate_32(mem: &impl GuestPhys, mode: &CpuMode, gva: u64) -> Result<u64, WalkError> {
    let pd = mode.cr3 & 0xFFFF_F000;
    let pde = read_u32(mem, pd | (((gva >> 22) & 0x3FF) * 4))?;
    if pde & P == 0 {
        return Err(WalkError::NotPresent { level: 2 });
    }
    if pde & PS != 0 && mode.cr4 & CR4_PSE != 0 {
        // 4 MiB page: bits 31:22 are address bits 31:22, bits 20:13 are
        // address bits 39:32 (PSE-36), bit 21 is reserved.
        if pde & (1 << 21) != 0 {
            return Err(WalkError::ReservedBits { level: 2 });
        }
        let high = ((pde >> 13) & 0xFF) << 32;
        return Ok(high | (pde & 0xFFC0_0000) | (gva & 0x3F_FFFF));
    }
    let pte = read_u32(mem, (pde & 0xFFFF_F000) | (((gva >> 12) & 0x3FF) * 4))?;
    if pte & P == 0 {
        return Err(WalkError::NotPresent { level: 1 });
    }
    Ok((pte & 0xFFFF_F000) | (gva & 0xFFF))
}

/// PAE paging: four PDPTEs at CR3[31:5], then 512-entry PD and PT.
pub(super) fn translate_pae(mem: &impl GuestPhys, mode: &CpuMode, gva: u64) -> Result<u64, WalkError> {
    let pdpt = mode.cr3 & 0xFFFF_FFE0;
    let pdpte = read_u64(mem, pdpt | (((gva >> 30) & 3) * 8))?;
    if pdpte & P == 0 {
        return Err(WalkError::NotPresent { level: 3 });
    }
    // PDPTE bits 2:1, 8:5 and 63:52 are reserved.
    if pdpte & (0x6 | 0x1E0 | 0xFFF0_0000_0000_0000) != 0 {
        return Err(WalkError::ReservedBits { level: 3 });
    }
    let always = PAE_HIGH_RESERVED | xd_reserved(mode);
    let pde = read_u64(mem, (pdpte & ADDR_MASK) | (((gva >> 21) & 0x1FF) * 8))?;
    if pde & P == 0 {
        return Err(WalkError::NotPresent { level: 2 });
    }
    if pde & PS != 0 {
        // 2 MiB page: bits 20:13 reserved (bit 12 is PAT).
        if pde & (always | 0x1F_E000) != 0 {
            return Err(WalkError::ReservedBits { level: 2 });
        }
        return Ok((pde & ADDR_MASK & !0x1F_FFFF) | (gva & 0x1F_FFFF));
    }
    if pde & always != 0 {
        return Err(WalkError::ReservedBits { level: 2 });
    }
    let pte = read_u64(mem, (pde & ADDR_MASK) | (((gva >> 12) & 0x1FF) * 8))?;
    if pte & P == 0 {
        return Err(WalkError::NotPresent { level: 1 });
    }
    if pte & always != 0 {
        return Err(WalkError::ReservedBits { level: 1 });
    }
    Ok((pte & ADDR_MASK) | (gva & 0xFFF))
}
