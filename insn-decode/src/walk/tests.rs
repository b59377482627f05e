//! Page walks over hand-built guest page tables in a Vec-backed memory.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

extern crate std;

use std::vec;
use std::vec::Vec;

use super::{fetch, translate, translate_checked, Access, WalkError};
use crate::mode::{CpuMode, CR0_PG, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE};
use crate::GuestPhys;

const P: u64 = 1;
const RW: u64 = 2;
const PS: u64 = 1 << 7;

/// Guest RAM at guest-physical 0..len.
struct Ram(Vec<u8>);

impl Ram {
    fn new(len: usize) -> Self {
        Self(vec![0; len])
    }
    fn w32(&mut self, gpa: u64, v: u64) {
        let a = gpa as usize;
        self.0[a..a + 4].copy_from_slice(&(v as u32).to_le_bytes());
    }
    fn w64(&mut self, gpa: u64, v: u64) {
        let a = gpa as usize;
        self.0[a..a + 8].copy_from_slice(&v.to_le_bytes());
    }
}

impl GuestPhys for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let start = usize::try_from(gpa).map_err(|_| ())?;
        let end = start.checked_add(buf.len()).ok_or(())?;
        buf.copy_from_slice(self.0.get(start..end).ok_or(())?);
        Ok(())
    }
}

fn legacy32(cr3: u64, pse: bool) -> CpuMode {
    CpuMode { cr0: CR0_PG | 1, cr3, cr4: if pse { CR4_PSE } else { 0 }, cs_db: true, ..CpuMode::default() }
}
fn pae(cr3: u64, nxe: bool) -> CpuMode {
    CpuMode { cr4: CR4_PAE, efer: if nxe { EFER_NXE } else { 0 }, ..legacy32(cr3, false) }
}
fn long4(cr3: u64) -> CpuMode {
    CpuMode { cr0: CR0_PG | 1, cr3, cr4: CR4_PAE, efer: EFER_LMA | EFER_NXE, cs_long: true, ..CpuMode::default() }
}

#[test]
fn paging_off_is_identity_truncated() {
    let ram = Ram::new(0);
    let m = CpuMode { cs_db: true, ..CpuMode::default() };
    assert_eq!(translate(&ram, &m, 0x1234_5678), Ok(0x1234_5678));
    assert_eq!(translate(&ram, &m, 0xAB_1234_5678), Ok(0x1234_5678));
}

#[test]
fn paging_32_bit() {
    let mut ram = Ram::new(0x10000);
    // gva 0x0040_3ABC: PD index 1, PT index 3.
    ram.w32(0x1000 + 4, 0x2000 | P | RW);
    ram.w32(0x2000 + 3 * 4, 0x7000 | P);
    let m = legacy32(0x1000 | 0x18 /* PWT/PCD ignored */, false);
    assert_eq!(translate(&ram, &m, 0x0040_3ABC), Ok(0x7ABC));
    // Upper 32 bits of the gva are dropped outside long mode.
    assert_eq!(translate(&ram, &m, 0x1_0040_3ABC), Ok(0x7ABC));
    assert_eq!(translate(&ram, &m, 0x0040_4000), Err(WalkError::NotPresent { level: 1 }));
    assert_eq!(translate(&ram, &m, 0x0080_0000), Err(WalkError::NotPresent { level: 2 }));
    // A PS bit without CR4.PSE is ignored: the entry still points to a table.
    ram.w32(0x1000 + 8, 0x2000 | P | PS);
    assert_eq!(translate(&ram, &m, 0x0080_3ABC), Ok(0x7ABC));
    // A page table outside guest RAM.
    ram.w32(0x1000 + 12, 0xFFFF_F000 | P);
    assert_eq!(translate(&ram, &m, 0x00C0_0000), Err(WalkError::BadGpa(0xFFFF_F000)));
}

#[test]
fn paging_32_bit_pse_4mib() {
    let mut ram = Ram::new(0x2000);
    // PD index 2 -> 4 MiB page at 0x0C40_0000 with PSE-36 bits 39:32 = 0x05.
    ram.w32(0x1000 + 2 * 4, 0x0C40_0000 | (0x05 << 13) | PS | P);
    let m = legacy32(0x1000, true);
    assert_eq!(translate(&ram, &m, 0x0092_3456), Ok(0x5_0C52_3456));
    // Bit 21 is reserved in a 4 MiB PDE.
    ram.w32(0x1000 + 3 * 4, 0x0C40_0000 | (1 << 21) | PS | P);
    assert_eq!(translate(&ram, &m, 0x00C0_0000), Err(WalkError::ReservedBits { level: 2 }));
}

#[test]
fn paging_pae() {
    let mut ram = Ram::new(0x10000);
    // PDPT at 0x1020 (32-byte aligned). gva 0x4060_5123: PDPT 1, PD 3, PT 5.
    ram.w64(0x1020 + 8, 0x2000 | P);
    ram.w64(0x2000 + 3 * 8, 0x3000 | P | RW);
    ram.w64(0x3000 + 5 * 8, 0x1_2345_6000 | P | (1 << 63));
    let m = pae(0x1020, true);
    assert_eq!(translate(&ram, &m, 0x4060_5123), Ok(0x1_2345_6123));
    // XD is reserved without EFER.NXE.
    assert_eq!(translate(&ram, &pae(0x1020, false), 0x4060_5123), Err(WalkError::ReservedBits { level: 1 }));
    // 2 MiB page at PD index 4; bit 12 (PAT) is allowed.
    ram.w64(0x2000 + 4 * 8, 0x8_0020_0000 | (1 << 12) | PS | P);
    assert_eq!(translate(&ram, &m, 0x4081_2345), Ok(0x8_0021_2345));
    // Bits 20:13 are reserved in a 2 MiB PDE.
    ram.w64(0x2000 + 6 * 8, 0x0020_0000 | (1 << 13) | PS | P);
    assert_eq!(translate(&ram, &m, 0x40C0_0000), Err(WalkError::ReservedBits { level: 2 }));
    // Bits 62:52 are reserved in PAE entries (they are ignored in 4-level paging).
    ram.w64(0x2000 + 7 * 8, 0x3000 | (1 << 60) | P);
    assert_eq!(translate(&ram, &m, 0x40E0_0000), Err(WalkError::ReservedBits { level: 2 }));
    // PDPTE reserved bit 1 (R/W does not exist there).
    ram.w64(0x1020 + 16, 0x2000 | RW | P);
    assert_eq!(translate(&ram, &m, 0x8000_0000), Err(WalkError::ReservedBits { level: 3 }));
    assert_eq!(translate(&ram, &m, 0xC000_0000), Err(WalkError::NotPresent { level: 3 }));
    assert_eq!(translate(&ram, &m, 0x4000_0000), Err(WalkError::NotPresent { level: 2 }));
    assert_eq!(translate(&ram, &m, 0x4060_6000), Err(WalkError::NotPresent { level: 1 }));
}

/// Builds PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 for
/// gva 0xFFFF_8000_0000_0000 + (pdpt 1, pd 2, pt 3).
fn long_tables(ram: &mut Ram) -> u64 {
    ram.w64(0x1000 + 256 * 8, 0x2000 | P | (0x7FF << 52) /* ignored bits */);
    ram.w64(0x2000 + 8, 0x3000 | P);
    ram.w64(0x3000 + 2 * 8, 0x4000 | P);
    ram.w64(0x4000 + 3 * 8, 0xA_BCDE_F000 | P | (1 << 63));
    0xFFFF_8000_4040_3000
}

#[test]
fn paging_long_4_level() {
    let mut ram = Ram::new(0x10000);
    let gva = long_tables(&mut ram);
    let m = long4(0x1000 | 0x5 /* PCID bits */);
    assert_eq!(translate(&ram, &m, gva + 0x123), Ok(0xA_BCDE_F123));
    // XD without EFER.NXE is reserved.
    let no_nx = CpuMode { efer: EFER_LMA, ..m };
    assert_eq!(translate(&ram, &no_nx, gva), Err(WalkError::ReservedBits { level: 1 }));
    // 2 MiB page at PD index 5.
    ram.w64(0x3000 + 5 * 8, 0x1234_5600_0000 | PS | P);
    assert_eq!(translate(&ram, &m, 0xFFFF_8000_40A1_2345), Ok(0x1234_5601_2345));
    ram.w64(0x3000 + 6 * 8, 0x1234_5600_0000 | (1 << 20) | PS | P);
    assert_eq!(translate(&ram, &m, 0xFFFF_8000_40C0_0000), Err(WalkError::ReservedBits { level: 2 }));
    // 1 GiB page at PDPT index 2.
    ram.w64(0x2000 + 2 * 8, 0x40_C000_0000 | PS | P);
    assert_eq!(translate(&ram, &m, 0xFFFF_8000_9234_5678), Ok(0x40_D234_5678));
    ram.w64(0x2000 + 3 * 8, 0x40_C000_0000 | (1 << 13) | PS | P);
    assert_eq!(translate(&ram, &m, 0xFFFF_8000_C000_0000), Err(WalkError::ReservedBits { level: 3 }));
    // PS in a PML4E is reserved.
    ram.w64(0x1000 + 257 * 8, 0x2000 | PS | P);
    assert_eq!(translate(&ram, &m, 0xFFFF_8080_0000_0000), Err(WalkError::ReservedBits { level: 4 }));
    // Not present at each level.
    assert_eq!(translate(&ram, &m, 0x0000_0000_0000_0000), Err(WalkError::NotPresent { level: 4 }));
    assert_eq!(translate(&ram, &m, 0xFFFF_8000_0000_0000), Err(WalkError::NotPresent { level: 3 }));
    assert_eq!(translate(&ram, &m, 0xFFFF_8000_4000_0000), Err(WalkError::NotPresent { level: 2 }));
    assert_eq!(translate(&ram, &m, 0xFFFF_8000_4040_4000), Err(WalkError::NotPresent { level: 1 }));
    // Non-canonical addresses never touch memory.
    assert_eq!(translate(&ram, &m, 0x0000_8000_0000_0000), Err(WalkError::NonCanonical(0x0000_8000_0000_0000)));
    assert_eq!(translate(&ram, &m, 0x8000_0000_0000_0000), Err(WalkError::NonCanonical(0x8000_0000_0000_0000)));
}

#[test]
fn checked_walk_enforces_user_and_write() {
    let mut ram = Ram::new(0x10000);
    const US: u64 = 4;
    // User, writable page at 0x40_0000 (PML4 0, PDPT 0, PD 2, PT 0).
    ram.w64(0x1000, 0x2000 | P | RW | US);
    ram.w64(0x2000, 0x3000 | P | RW | US);
    ram.w64(0x3000 + 2 * 8, 0x4000 | P | RW | US);
    ram.w64(0x4000, 0x8000 | P | RW | US);
    // Read-only user page next to it, and a supervisor page after that.
    ram.w64(0x4000 + 8, 0x9000 | P | US);
    ram.w64(0x4000 + 16, 0xA000 | P | RW);
    let m = long4(0x1000);
    let (ur, uw, sw) =
        (Access { user: true, write: false }, Access { user: true, write: true }, Access { user: false, write: true });
    assert_eq!(translate_checked(&ram, &m, 0x40_0010, uw), Ok(0x8010));
    assert_eq!(translate_checked(&ram, &m, 0x40_1010, ur), Ok(0x9010));
    assert_eq!(translate_checked(&ram, &m, 0x40_1010, uw), Err(WalkError::Permission(0x40_1010)));
    assert_eq!(translate_checked(&ram, &m, 0x40_2000, ur), Err(WalkError::Permission(0x40_2000)));
    assert_eq!(translate_checked(&ram, &m, 0x40_2000, sw), Ok(0xA000));
    // A supervisor-only upper level hides the whole subtree from CPL 3.
    ram.w64(0x3000 + 2 * 8, 0x4000 | P | RW);
    assert_eq!(translate_checked(&ram, &m, 0x40_0010, ur), Err(WalkError::Permission(0x40_0010)));
    // 32-bit paging is refused for user callers.
    assert!(matches!(translate_checked(&ram, &legacy32(0x1000, false), 0x1000, ur), Err(WalkError::Permission(_))));
}

#[test]
fn paging_long_5_level() {
    let mut ram = Ram::new(0x10000);
    long_tables(&mut ram);
    // PML5 at 0x5000, index 0x1FF (top of a 57-bit canonical address) -> PML4 0x1000.
    ram.w64(0x5000 + 0x1FF * 8, 0x1000 | P);
    let m = CpuMode { cr3: 0x5000, cr4: CR4_PAE | CR4_LA57, ..long4(0) };
    assert_eq!(translate(&ram, &m, 0xFFFF_8000_4040_3321), Ok(0xA_BCDE_F321));
    // 0x0000_8000_0000_0000 is canonical with 57 bits but not mapped (PML5 index 0).
    assert_eq!(translate(&ram, &m, 0x0000_8000_0000_0000), Err(WalkError::NotPresent { level: 5 }));
    assert_eq!(translate(&ram, &m, 0x0100_0000_0000_0000), Err(WalkError::NonCanonical(0x0100_0000_0000_0000)));
    ram.w64(0x5000, 0x1000 | PS | P);
    assert_eq!(translate(&ram, &m, 0), Err(WalkError::ReservedBits { level: 5 }));
}

#[test]
fn fetch_crosses_pages() {
    let mut ram = Ram::new(0x10000);
    let gva = long_tables(&mut ram); // page at 0xA_BCDE_F000 is outside RAM: remap it
    ram.w64(0x4000 + 3 * 8, 0x8000 | P);
    ram.w64(0x4000 + 4 * 8, 0x6000 | P); // next virtual page -> lower physical page
    let code: [u8; 15] = core::array::from_fn(|i| 0xA0 + i as u8);
    ram.0[0x8FF9..0x9000].copy_from_slice(&code[..7]);
    ram.0[0x6000..0x6008].copy_from_slice(&code[7..]);
    let m = long4(0x1000);
    let mut out = [0u8; 15];
    assert_eq!(fetch(&ram, &m, gva + 0xFF9, &mut out), Ok(15));
    assert_eq!(out, code);
    // Second page not present: only the first part is returned.
    ram.w64(0x4000 + 4 * 8, 0);
    let mut out = [0u8; 15];
    assert_eq!(fetch(&ram, &m, gva + 0xFF9, &mut out), Ok(7));
    assert_eq!(out[..7], code[..7]);
    // First page not present: an error.
    assert_eq!(fetch(&ram, &m, gva + 0x1000, &mut out), Err(WalkError::NotPresent { level: 1 }));
    // Whole instruction inside one page.
    assert_eq!(fetch(&ram, &m, gva + 0x10, &mut out), Ok(15));
}

#[test]
fn fetch_uses_cs_base_and_wraps_at_4_gib() {
    let mut ram = Ram::new(0x10000);
    // 32-bit paging: linear 0xFFFF_F000 -> 0x3000, linear 0 -> 0x4000.
    ram.w32(0x1000 + 0x3FF * 4, 0x2000 | P);
    ram.w32(0x2000 + 0x3FF * 4, 0x3000 | P);
    ram.w32(0x1000, 0x5000 | P);
    ram.w32(0x5000, 0x4000 | P);
    ram.0[0x3FFC..0x4000].copy_from_slice(&[1, 2, 3, 4]);
    ram.0[0x4000..0x400B].copy_from_slice(&[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    let m = CpuMode { cs_base: 0xFFFF_0000, ..legacy32(0x1000, false) };
    let mut out = [0u8; 15];
    assert_eq!(fetch(&ram, &m, 0xFFFC, &mut out), Ok(15));
    assert_eq!(out, core::array::from_fn(|i| i as u8 + 1));
    // Paging off, real mode: linear = cs_base + ip.
    ram.0[0x1_0000 - 4..].copy_from_slice(&[0xAA; 4]);
    let real = CpuMode { cs_base: 0xF000, ..CpuMode::default() };
    assert_eq!(fetch(&ram, &real, 0xFFC, &mut out), Ok(4)); // RAM ends at 0x10000
    assert_eq!(out[..4], [0xAA; 4]);
    assert_eq!(fetch(&ram, &real, 0x1000, &mut out), Err(WalkError::BadGpa(0x10000)));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Memory where every address is readable and holds pseudo-random bytes
    /// (a repeating seed), so random walks go deep instead of failing at once.
    struct Noise(Vec<u8>);

    impl GuestPhys for Noise {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
            if self.0.is_empty() || gpa > u64::MAX - 64 {
                return Err(());
            }
            for (i, b) in buf.iter_mut().enumerate() {
                let a = gpa.wrapping_add(i as u64);
                *b = self.0[(a % self.0.len() as u64) as usize] ^ (a >> 12) as u8;
            }
            Ok(())
        }
    }

    fn any_mode() -> impl Strategy<Value = CpuMode> {
        (any::<u64>(), 0u8..6, any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()).prop_map(
            |(cr3, kind, nxe, cs_long, cs_db, cs_base)| {
                let (cr0, cr4, lma) = match kind {
                    0 => (0, 0, false),
                    1 => (CR0_PG, 0, false),
                    2 => (CR0_PG, CR4_PSE, false),
                    3 => (CR0_PG, CR4_PAE, false),
                    4 => (CR0_PG, CR4_PAE, true),
                    _ => (CR0_PG, CR4_PAE | CR4_LA57, true),
                };
                let efer = if lma { EFER_LMA } else { 0 } | if nxe { EFER_NXE } else { 0 };
                CpuMode { cr0, cr3, cr4, efer, cs_long, cs_db, cs_base }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn walk_never_panics(seed in prop::collection::vec(any::<u8>(), 0..512), mode in any_mode(), gva in any::<u64>()) {
            let mem = Noise(seed);
            let _ = translate(&mem, &mode, gva);
            let mut out = [0u8; 15];
            if let Ok(n) = fetch(&mem, &mode, gva, &mut out) {
                prop_assert!((1..=15).contains(&n));
            }
        }
    }

    proptest! {
        // Each case builds up to 8 KiB of random RAM; fewer cases keep the test quick.
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn walk_never_panics_on_small_ram(ram in prop::collection::vec(any::<u8>(), 0..0x2100), mode in any_mode(), gva in any::<u64>()) {
            let mem = Ram(ram);
            let mode = CpuMode { cr3: mode.cr3 & 0x1FFF, ..mode };
            let _ = translate(&mem, &mode, gva);
            let mut out = [0u8; 15];
            if let Ok(n) = fetch(&mem, &mode, gva, &mut out) {
                prop_assert!((1..=15).contains(&n));
            }
        }
    }
}
