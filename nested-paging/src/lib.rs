//! One builder for Intel EPT and AMD NPT 4-level nested page tables, so the
//! hypervisor's two backends share one tested mapping routine.
//!
//! Only 4 KiB leaves are created. Tables live in frames supplied by a
//! [`FrameSource`], which also turns a table's host-physical address into a
//! reference (identity map in the hypervisor, a `Vec` in tests).
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// Which hardware table format to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Intel Extended Page Tables.
    Ept,
    /// AMD Nested Page Tables (long-mode page table format).
    Npt,
}

/// Supplies table frames and access to them by host-physical address.
pub trait FrameSource {
    /// Host-physical address of a newly allocated, zeroed 4 KiB frame.
    fn alloc_zeroed_frame(&mut self) -> Option<u64>;
    /// The table stored in the frame at `hpa` (one this source allocated).
    fn table(&mut self, hpa: u64) -> &mut [u64; 512];
}

/// Access rights of a guest page.
///
/// Every mapping is readable: NPT cannot express a non-readable present page,
/// and EPT forbids write-without-read, so `read` is always set in the entry
/// (and reported by [`NestedPageTable::translate`]) whatever is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Guest may read.
    pub read: bool,
    /// Guest may write.
    pub write: bool,
    /// Guest may execute.
    pub exec: bool,
}

impl Perms {
    /// Read, write, execute: ordinary guest RAM.
    pub const RWX: Perms = Perms { read: true, write: true, exec: true };
    /// Read, write: data-only memory.
    pub const RW: Perms = Perms { read: true, write: true, exec: false };
    /// Read, execute: write-protected code.
    pub const RX: Perms = Perms { read: true, write: false, exec: true };
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The frame source is exhausted.
    OutOfFrames,
    /// The guest or host address is not 4 KiB aligned.
    Misaligned,
    /// This guest-physical page is already mapped.
    AlreadyMapped(u64),
    /// The guest address is not below 2^48, or the host address not below 2^52.
    AddressTooHigh(u64),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::OutOfFrames => write!(f, "out of frames for nested page tables"),
            MapError::Misaligned => write!(f, "address is not 4 KiB aligned"),
            MapError::AlreadyMapped(gpa) => write!(f, "guest page {gpa:#x} is already mapped"),
            MapError::AddressTooHigh(a) => {
                write!(f, "address {a:#x} is beyond what 4-level nested paging maps")
            }
        }
    }
}

impl core::error::Error for MapError {}

const PAGE_MASK: u64 = 0xFFF;
/// Bits 12..52 of an entry: the next table's or the page's address.
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
const GPA_LIMIT: u64 = 1 << 48;
const HPA_LIMIT: u64 = 1 << 52;

const EPT_R: u64 = 1 << 0;
const EPT_W: u64 = 1 << 1;
const EPT_X: u64 = 1 << 2;
const EPT_MEMTYPE_WB: u64 = 6 << 3;
const EPT_NONLEAF: u64 = EPT_R | EPT_W | EPT_X;

const NPT_P: u64 = 1 << 0;
const NPT_RW: u64 = 1 << 1;
const NPT_US: u64 = 1 << 2;
const NPT_NX: u64 = 1 << 63;
const NPT_NONLEAF: u64 = NPT_P | NPT_RW | NPT_US;

/// A 4-level nested page table rooted in one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedPageTable {
    root: u64,
    format: Format,
}

/// Table index of `gpa` at `level` (3 = PML4 .. 0 = PT).
fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * level)) & 0x1FF) as usize
}

impl NestedPageTable {
    /// Allocates an empty root table.
    pub fn new(format: Format, frames: &mut impl FrameSource) -> Result<Self, MapError> {
        let root = frames.alloc_zeroed_frame().ok_or(MapError::OutOfFrames)?;
        Ok(NestedPageTable { root, format })
    }

    fn present(&self, entry: u64) -> bool {
        match self.format {
            Format::Ept => entry & (EPT_R | EPT_W | EPT_X) != 0,
            Format::Npt => entry & NPT_P != 0,
        }
    }

    fn nonleaf_bits(&self) -> u64 {
        match self.format {
            Format::Ept => EPT_NONLEAF,
            Format::Npt => NPT_NONLEAF,
        }
    }

    fn leaf_bits(&self, perms: Perms) -> u64 {
        match self.format {
            Format::Ept => {
                let mut bits = EPT_R | EPT_MEMTYPE_WB;
                if perms.write {
                    bits |= EPT_W;
                }
                if perms.exec {
                    bits |= EPT_X;
                }
                bits
            }
            Format::Npt => {
                let mut bits = NPT_P | NPT_US;
                if perms.write {
                    bits |= NPT_RW;
                }
                if !perms.exec {
                    bits |= NPT_NX;
                }
                bits
            }
        }
    }

    fn leaf_perms(&self, entry: u64) -> Perms {
        match self.format {
            Format::Ept => Perms { read: true, write: entry & EPT_W != 0, exec: entry & EPT_X != 0 },
            Format::Npt => Perms { read: true, write: entry & NPT_RW != 0, exec: entry & NPT_NX == 0 },
        }
    }

    /// Maps the 4 KiB guest page at `gpa` to the host frame at `hpa`.
    pub fn map_4k(&mut self, frames: &mut impl FrameSource, gpa: u64, hpa: u64, perms: Perms) -> Result<(), MapError> {
        if gpa >= GPA_LIMIT {
            return Err(MapError::AddressTooHigh(gpa));
        }
        if hpa >= HPA_LIMIT {
            return Err(MapError::AddressTooHigh(hpa));
        }
        if gpa & PAGE_MASK != 0 || hpa & PAGE_MASK != 0 {
            return Err(MapError::Misaligned);
        }
        let mut table = self.root;
        for level in (1..=3).rev() {
            let slot = frames.table(table).get_mut(index(gpa, level)).ok_or(MapError::AddressTooHigh(gpa))?;
            if self.present(*slot) {
                table = *slot & ADDR_MASK;
                continue;
            }
            let next = frames.alloc_zeroed_frame().ok_or(MapError::OutOfFrames)?;
            let entry = (next & ADDR_MASK) | self.nonleaf_bits();
            let slot = frames.table(table).get_mut(index(gpa, level)).ok_or(MapError::AddressTooHigh(gpa))?;
            *slot = entry;
            table = next & ADDR_MASK;
        }
        let leaf_bits = self.leaf_bits(perms);
        let present = self.present(*frames.table(table).get(index(gpa, 0)).ok_or(MapError::AddressTooHigh(gpa))?);
        if present {
            return Err(MapError::AlreadyMapped(gpa));
        }
        let slot = frames.table(table).get_mut(index(gpa, 0)).ok_or(MapError::AddressTooHigh(gpa))?;
        *slot = hpa | leaf_bits;
        Ok(())
    }

    /// The host-physical address of guest byte `gpa` and the page's rights,
    /// or `None` if it is not mapped.
    pub fn translate(&self, frames: &mut impl FrameSource, gpa: u64) -> Option<(u64, Perms)> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let mut table = self.root;
        for level in (1..=3).rev() {
            let entry = *frames.table(table).get(index(gpa, level))?;
            if !self.present(entry) {
                return None;
            }
            table = entry & ADDR_MASK;
        }
        let entry = *frames.table(table).get(index(gpa, 0))?;
        if !self.present(entry) {
            return None;
        }
        Some(((entry & ADDR_MASK) | (gpa & PAGE_MASK), self.leaf_perms(entry)))
    }

    /// Host-physical address of the root (PML4) table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The format this table was built in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// VMCS EPT pointer: root, write-back paging-structure memory type, 4-level walk.
    /// Meaningful for [`Format::Ept`] only.
    pub fn eptp(&self) -> u64 {
        self.root | 6 | (3 << 3)
    }

    /// VMCB nested CR3. Meaningful for [`Format::Npt`] only.
    pub fn ncr3(&self) -> u64 {
        self.root
    }

    /// Every table frame, root included, so the owner can free them.
    pub fn table_frames(&self, frames: &mut impl FrameSource) -> Vec<u64> {
        let mut out = Vec::new();
        self.walk(frames, &mut |_, _, _| {}, &mut out);
        out
    }

    /// Every mapped page as (guest-physical, host-physical), for teardown.
    pub fn leaf_frames(&self, frames: &mut impl FrameSource) -> Vec<(u64, u64)> {
        let mut leaves = Vec::new();
        let mut tables = Vec::new();
        self.walk(frames, &mut |gpa, hpa, _| leaves.push((gpa, hpa)), &mut tables);
        leaves
    }

    /// Visits all tables (recorded in `tables`) and calls `leaf` for every
    /// leaf, iteratively with an explicit stack of (table, level, gpa base).
    fn walk(&self, frames: &mut impl FrameSource, leaf: &mut impl FnMut(u64, u64, Perms), tables: &mut Vec<u64>) {
        let mut stack: Vec<(u64, u32, u64)> = Vec::from([(self.root, 3u32, 0u64)]);
        while let Some((table, level, base)) = stack.pop() {
            tables.push(table);
            let entries = *frames.table(table);
            for (i, &entry) in entries.iter().enumerate() {
                if !self.present(entry) {
                    continue;
                }
                let gpa = base | ((i as u64) << (12 + 9 * level));
                if level == 0 {
                    leaf(gpa, entry & ADDR_MASK, self.leaf_perms(entry));
                } else {
                    stack.push((entry & ADDR_MASK, level - 1, gpa));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::collections::{BTreeMap, BTreeSet};
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    /// Tables in boxes, addressed by fake frame numbers starting at 0x1000_0000.
    struct Frames {
        tables: Vec<Box<[u64; 512]>>,
        limit: usize,
    }

    const BASE: u64 = 0x1000_0000;

    impl Frames {
        fn new(limit: usize) -> Self {
            Frames { tables: vec![], limit }
        }
    }

    impl FrameSource for Frames {
        fn alloc_zeroed_frame(&mut self) -> Option<u64> {
            if self.tables.len() >= self.limit {
                return None;
            }
            self.tables.push(Box::new([0; 512]));
            Some(BASE + (self.tables.len() as u64 - 1) * 4096)
        }
        fn table(&mut self, hpa: u64) -> &mut [u64; 512] {
            &mut self.tables[((hpa - BASE) / 4096) as usize]
        }
    }

    #[test]
    fn ept_entries() {
        let mut f = Frames::new(10);
        let mut t = NestedPageTable::new(Format::Ept, &mut f).unwrap();
        t.map_4k(&mut f, 0x1234_5000, 0xABC_D000, Perms::RW).unwrap();
        assert_eq!(f.tables.len(), 4);
        let pml4 = f.tables[0][0];
        assert_eq!(pml4, (BASE + 0x1000) | 7);
        let pt_entry = f.tables[3][(0x1234_5000 >> 12) & 0x1FF];
        assert_eq!(pt_entry, 0xABC_D000 | 0b011 | (6 << 3));
        assert_eq!(t.translate(&mut f, 0x1234_5678), Some((0xABC_D678, Perms::RW)));
        assert_eq!(t.eptp(), BASE | 6 | (3 << 3));
        assert_eq!(t.format(), Format::Ept);
        t.map_4k(&mut f, 0x1234_6000, 0x1000, Perms::RX).unwrap();
        assert_eq!(f.tables.len(), 4, "same PT reused");
        assert_eq!(f.tables[3][(0x1234_6000 >> 12) & 0x1FF], 0x1000 | 0b101 | (6 << 3));
    }

    #[test]
    fn npt_entries() {
        let mut f = Frames::new(10);
        let mut t = NestedPageTable::new(Format::Npt, &mut f).unwrap();
        t.map_4k(&mut f, 0x20_0000, 0x30_0000, Perms::RW).unwrap();
        t.map_4k(&mut f, 0x20_1000, 0x30_1000, Perms::RX).unwrap();
        t.map_4k(&mut f, 0x20_2000, 0x30_2000, Perms::RWX).unwrap();
        assert_eq!(f.tables[0][0], (BASE + 0x1000) | 7);
        assert_eq!(f.tables[3][0], 0x30_0000 | 0b111 | (1 << 63));
        assert_eq!(f.tables[3][1], 0x30_1000 | 0b101);
        assert_eq!(f.tables[3][2], 0x30_2000 | 0b111);
        assert_eq!(t.ncr3(), BASE);
        assert_eq!(t.translate(&mut f, 0x20_1FFF), Some((0x30_1FFF, Perms::RX)));
        assert_eq!(t.translate(&mut f, 0x20_3000), None);
    }

    #[test]
    fn errors() {
        let mut f = Frames::new(4);
        let mut t = NestedPageTable::new(Format::Ept, &mut f).unwrap();
        assert_eq!(t.map_4k(&mut f, 0x1001, 0x2000, Perms::RWX), Err(MapError::Misaligned));
        assert_eq!(t.map_4k(&mut f, 0x1000, 0x2001, Perms::RWX), Err(MapError::Misaligned));
        assert_eq!(t.map_4k(&mut f, 1 << 48, 0, Perms::RWX), Err(MapError::AddressTooHigh(1 << 48)));
        assert_eq!(t.map_4k(&mut f, 0, 1 << 52, Perms::RWX), Err(MapError::AddressTooHigh(1 << 52)));
        t.map_4k(&mut f, 0x1000, 0x2000, Perms::RWX).unwrap();
        assert_eq!(t.map_4k(&mut f, 0x1000, 0x3000, Perms::RW), Err(MapError::AlreadyMapped(0x1000)));
        // A different PML4 slot needs three more tables; only 0 left.
        assert_eq!(t.map_4k(&mut f, 1 << 39, 0x3000, Perms::RW), Err(MapError::OutOfFrames));
        assert_eq!(t.translate(&mut f, 1 << 39), None);
        assert_eq!(t.translate(&mut f, u64::MAX), None);
        assert!(NestedPageTable::new(Format::Npt, &mut Frames::new(0)).is_err());
        assert_eq!(MapError::AlreadyMapped(0x1000).to_string(), "guest page 0x1000 is already mapped");
    }

    #[test]
    fn teardown_lists() {
        let mut f = Frames::new(100);
        let mut t = NestedPageTable::new(Format::Npt, &mut f).unwrap();
        t.map_4k(&mut f, 0, 0x5000, Perms::RWX).unwrap();
        t.map_4k(&mut f, 0x8000_0000_0000 - 0x1000, 0x6000, Perms::RWX).unwrap();
        let mut tables = t.table_frames(&mut f);
        tables.sort();
        assert_eq!(tables.len(), 7);
        assert_eq!(tables.len(), f.tables.len());
        let mut leaves = t.leaf_frames(&mut f);
        leaves.sort();
        assert_eq!(leaves, vec![(0, 0x5000), (0x7FFF_FFFF_F000, 0x6000)]);
    }

    fn arb_perms() -> impl Strategy<Value = Perms> {
        (any::<bool>(), any::<bool>()).prop_map(|(write, exec)| Perms { read: true, write, exec })
    }

    proptest! {
        #[test]
        fn translate_returns_exactly_what_was_mapped(
            ept in any::<bool>(),
            pages in proptest::collection::btree_map(
                prop_oneof![0u64..0x400, 0u64..(1 << 36)],
                (0u64..(1 << 40), arb_perms()),
                1..40,
            ),
            probes in proptest::collection::vec(0u64..(1 << 48), 0..40),
            offset in 0u64..4096,
        ) {
            let format = if ept { Format::Ept } else { Format::Npt };
            let mut f = Frames::new(10_000);
            let mut t = NestedPageTable::new(format, &mut f).unwrap();
            let mut mapped = BTreeMap::new();
            for (&page, &(frame, perms)) in &pages {
                t.map_4k(&mut f, page << 12, frame << 12, perms).unwrap();
                mapped.insert(page << 12, (frame << 12, perms));
            }
            for (&gpa, &(hpa, perms)) in &mapped {
                prop_assert_eq!(t.translate(&mut f, gpa + offset), Some((hpa + offset, perms)));
            }
            for p in probes {
                let page = p & !0xFFF;
                let want = mapped.get(&page).map(|&(h, perms)| (h | (p & 0xFFF), perms));
                prop_assert_eq!(t.translate(&mut f, p), want);
            }
            let tables = t.table_frames(&mut f);
            let unique: BTreeSet<u64> = tables.iter().copied().collect();
            prop_assert_eq!(unique.len(), tables.len());
            prop_assert_eq!(tables.len(), f.tables.len());
            prop_assert!(tables.contains(&t.root()));
            let leaves: BTreeMap<u64, u64> = t.leaf_frames(&mut f).into_iter().collect();
            let want: BTreeMap<u64, u64> = mapped.iter().map(|(&g, &(h, _))| (g, h)).collect();
            prop_assert_eq!(leaves, want);
        }
    }
}
