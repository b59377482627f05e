//! Finds out what a guest did when it touched an emulated MMIO window.
//!
//! On an EPT violation (Intel) or nested page fault (AMD) the CPU tells the
//! hypervisor only the guest-physical address that was touched. To emulate the
//! access the hypervisor must:
//! 1. translate the guest's RIP to a guest-physical address through the
//!    guest's *own* page tables ([`walk::translate`], [`walk::fetch`]);
//! 2. decode the instruction there to learn the access size, direction and
//!    register or immediate ([`decode::decode_mmio`]);
//! 3. apply the result to the guest's registers ([`apply_load`],
//!    [`store_value`]) and advance RIP by [`decode::MmioAccess::len`].
//!
//! Everything here reads guest-controlled data (page tables, instruction
//! bytes): nothing panics, every read is bounds-checked and all work is
//! bounded (at most 5 table levels, 2 pages, 15 instruction bytes).
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod decode;
mod mode;
mod regs;
pub mod walk;

pub use mode::{CodeBits, CpuMode, CR0_PG, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE};
pub use regs::{apply_load, compare_flags, store_value, ARITH_FLAGS};

/// Read access to guest-physical memory, so this crate never needs to know
/// how the hypervisor maps guest RAM (it goes through EPT/NPT).
///
/// Implementors must bounds-check: return `Err(())` when any byte of
/// `gpa..gpa + buf.len()` is not ordinary guest RAM (including MMIO windows),
/// and never panic on any `gpa`, including ones near `u64::MAX`.
pub trait GuestPhys {
    /// Fills `buf` with guest-physical memory starting at `gpa`.
    #[allow(clippy::result_unit_err)] // the interface is fixed by the hypervisor's design
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()>;
}
