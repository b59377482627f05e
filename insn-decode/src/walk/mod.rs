//! Guest-virtual to guest-physical translation through the guest's own page
//! tables, for fetching the instruction that caused an MMIO exit.
//!
//! Supported: paging off, 32-bit paging (with 4 MiB PSE pages, PSE-36 high
//! address bits), PAE paging (2 MiB pages), 4-level and 5-level (CR4.LA57)
//! long-mode paging (2 MiB and 1 GiB pages).
//!
//! Permission bits (R/W, U/S, XD, SMEP, SMAP, protection keys) are *not*
//! checked: the guest has already executed (or faulted on) this instruction,
//! so the walk only needs to find the same bytes the CPU fetched. Present and
//! reserved bits *are* checked, so a walk never follows an entry the CPU
//! would have refused. Accessed/dirty bits are never written.
//!
//! Reserved physical-address bits are checked for a 52-bit physical address
//! width ([`MAX_PHYS_BITS`]); an address above the real width simply fails
//! [`GuestPhys::read`] because it is not guest RAM.
//!
//! In PAE mode the CPU caches the four PDPTEs when CR3 is loaded; this walk
//! re-reads them from memory, which differs only if the guest changed them
//! without reloading CR3.

mod legacy;
mod long;

use core::fmt;

use crate::mode::CpuMode;
use crate::GuestPhys;

/// The physical-address width assumed for reserved-bit checks (the
/// architectural maximum).
pub const MAX_PHYS_BITS: u32 = 52;

/// Size of the smallest page; fetches are split at these boundaries.
pub const PAGE_SIZE: u64 = 4096;

/// Bits 51:12 of a 64-bit entry or CR3: the next table's or page's address.
const ADDR_MASK: u64 = ((1 << MAX_PHYS_BITS) - 1) & !(PAGE_SIZE - 1);
/// Present bit of every entry.
const P: u64 = 1 << 0;
/// Page-size bit of directory entries.
const PS: u64 = 1 << 7;
/// Read/write bit: writes allowed through this entry.
const RW: u64 = 1 << 1;
/// User/supervisor bit: CPL 3 accesses allowed through this entry.
const US: u64 = 1 << 2;

/// Why a guest-virtual address could not be translated; the hypervisor
/// typically injects nothing and reports the exit as unhandled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The address is not canonical for the current long-mode paging depth.
    NonCanonical(u64),
    /// The entry at this level (1 = page table .. 5 = PML5) is not present.
    NotPresent {
        /// Paging-structure level, 1 = PTE, 2 = PDE, 3 = PDPTE, 4 = PML4E, 5 = PML5E.
        level: u8,
    },
    /// The entry at this level has a reserved bit set.
    ReservedBits {
        /// Paging-structure level, as in [`WalkError::NotPresent`].
        level: u8,
    },
    /// Guest-physical memory at this address could not be read (not RAM).
    BadGpa(u64),
    /// The page does not allow this access (a user access to a supervisor
    /// page, or a write to a read-only page), or the paging mode is one
    /// where [`translate_checked`] does not check user accesses.
    Permission(u64),
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NonCanonical(a) => write!(f, "non-canonical linear address {a:#x}"),
            Self::NotPresent { level } => write!(f, "level-{level} paging entry not present"),
            Self::ReservedBits { level } => write!(f, "level-{level} paging entry has reserved bits set"),
            Self::BadGpa(a) => write!(f, "guest-physical address {a:#x} is not readable RAM"),
            Self::Permission(a) => write!(f, "linear address {a:#x} does not allow this access"),
        }
    }
}

/// Translates linear address `gva` to a guest-physical address using the
/// paging mode described by `mode`.
///
/// With paging off the result is `gva` truncated to 32 bits. Outside long
/// mode `gva` is truncated to 32 bits before the walk. Permission bits are
/// ignored (see the module documentation).
pub fn translate(mem: &impl GuestPhys, mode: &CpuMode, gva: u64) -> Result<u64, WalkError> {
    if !mode.paging() {
        Ok(gva & 0xFFFF_FFFF)
    } else if mode.long_mode() {
        long::translate(mem, mode, gva)
    } else if mode.cr4 & crate::mode::CR4_PAE != 0 {
        legacy::translate_pae(mem, mode, gva & 0xFFFF_FFFF)
    } else {
        legacy::translate_32(mem, mode, gva & 0xFFFF_FFFF)
    }
}

/// How a hypercall will touch a guest buffer, so the walk refuses what the
/// CPU would refuse the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The caller runs at CPL 3: every level must have U/S set.
    pub user: bool,
    /// The buffer is written: every level must have R/W set (supervisor
    /// writes are checked too, as with CR0.WP set, which every modern
    /// kernel sets).
    pub write: bool,
}

/// Translates `gva` like [`translate`] and checks the page allows `access`.
/// Long mode is checked fully; with paging off there is nothing to check;
/// the 32-bit paging modes are refused for user accesses (no agent runs
/// there) and checked for nothing else.
pub fn translate_checked(mem: &impl GuestPhys, mode: &CpuMode, gva: u64, access: Access) -> Result<u64, WalkError> {
    if !mode.paging() || !mode.long_mode() {
        if access.user && mode.paging() {
            return Err(WalkError::Permission(gva));
        }
        return translate(mem, mode, gva);
    }
    let (gpa, rights) = long::walk(mem, mode, gva)?;
    if (access.user && rights & US == 0) || (access.write && rights & RW == 0) {
        return Err(WalkError::Permission(gva));
    }
    Ok(gpa)
}

/// Fetches up to 15 instruction bytes at `rip` (linear `cs_base + rip`
/// outside 64-bit code) into `out`, translating each page separately.
///
/// Returns how many bytes were read: at least 1, fewer than 15 when the
/// instruction runs into a page that cannot be translated or read (the
/// decoder then reports truncation if it needed those bytes). Fails only if
/// the first byte cannot be fetched.
pub fn fetch(mem: &impl GuestPhys, mode: &CpuMode, rip: u64, out: &mut [u8; 15]) -> Result<usize, WalkError> {
    let start = mode.linear_rip(rip);
    let mut done = 0usize;
    // At most two iterations: 15 bytes span at most two 4 KiB pages.
    while done < out.len() {
        let linear = mode.wrap_linear(start.wrapping_add(done as u64));
        let room = PAGE_SIZE - (linear & (PAGE_SIZE - 1));
        let want = (out.len() - done).min(usize::try_from(room).unwrap_or(usize::MAX));
        let step = translate(mem, mode, linear).and_then(|gpa| {
            let chunk = out.get_mut(done..done + want).ok_or(WalkError::BadGpa(gpa))?;
            mem.read(gpa, chunk).map_err(|()| WalkError::BadGpa(gpa))
        });
        match step {
            Ok(()) => done += want,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// Reads a little-endian 64-bit paging entry.
fn read_u64(mem: &impl GuestPhys, gpa: u64) -> Result<u64, WalkError> {
    let mut b = [0u8; 8];
    mem.read(gpa, &mut b).map_err(|()| WalkError::BadGpa(gpa))?;
    Ok(u64::from_le_bytes(b))
}

/// Reads a little-endian 32-bit paging entry.
fn read_u32(mem: &impl GuestPhys, gpa: u64) -> Result<u64, WalkError> {
    let mut b = [0u8; 4];
    mem.read(gpa, &mut b).map_err(|()| WalkError::BadGpa(gpa))?;
    Ok(u64::from(u32::from_le_bytes(b)))
}

/// Bit 63 (XD) is reserved unless EFER.NXE is set.
fn xd_reserved(mode: &CpuMode) -> u64 {
    if mode.efer & crate::mode::EFER_NXE != 0 {
        0
    } else {
        1 << 63
    }
}

#[cfg(test)]
mod tests;
