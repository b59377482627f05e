//! The volume table: which named volumes exist, whose they are, and where.
//!
//! Two copies of `table_blocks` blocks each; generation `g` lives in copy
//! `g & 1`; the valid copy with the highest generation wins. A copy
//! (little-endian; unused bytes zero):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `BMVOLTB1` |
//! | 8 | 8 | generation |
//! | 16 | 4 | number of entries |
//! | 20 | 12 | reserved, zero |
//! | 32 + 128·i | 128 | entry (below) |
//! | len − 32 | 32 | HMAC-SHA256 under k_table over node id ‖ bytes 0..len−32 |
//!
//! Entry: name length (1), name (32, zero-padded), reserved (7), lease (4),
//! reserved (4), size in 512-byte sectors (8), start block (8), blocks (8),
//! landlord epoch (4), tenant epoch (4, 0 = no tenant key), volume id (16),
//! reserved (32). Entries are sorted by start block and never overlap.
//!
//! A volume of `s` 512-byte sectors is a blockcrypt volume of
//! `n = ⌈s / 8⌉` 4 KiB sectors occupying `2 + ⌈n / 128⌉ + 2n` blocks.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use blockcrypt::{Layout, VolumeId};

use crate::keystore::MAC_LEN;
use crate::{DiskError, FormatError, LeaseId, BLOCK_SIZE, SECTOR_SIZE};
use blockcrypt::bytes::{array, put, u32_at, u64_at};

/// Magic at the start of a volume-table copy.
pub const TABLE_MAGIC: [u8; 8] = *b"BMVOLTB1";
/// Longest volume name (bytes).
pub const MAX_NAME_LEN: usize = 32;
const FIXED_LEN: usize = 32;
const ENTRY_LEN: usize = 128;
const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / SECTOR_SIZE) as u64;

/// One volume, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeEntry {
    /// Unique name (1-32 chars of `A-Z a-z 0-9 _ . -`), e.g. the VM's name.
    pub name: String,
    /// The lease whose tenant key (if any) guards it.
    pub lease: LeaseId,
    /// Size in 512-byte sectors (what the guest sees).
    pub sectors: u64,
    /// First block of its range.
    pub start_block: u64,
    /// Blocks in its range (fixed by `sectors`).
    pub blocks: u64,
    /// The landlord epoch its keys were made under.
    pub landlord_epoch: u32,
    /// The lease's tenant epoch its keys were made under (0: landlord only).
    pub tenant_epoch: u32,
    /// The blockcrypt volume id (random at creation).
    pub id: VolumeId,
}

impl VolumeEntry {
    /// Number of 4 KiB blockcrypt sectors.
    #[must_use]
    pub fn crypt_sectors(&self) -> u64 {
        self.sectors.div_ceil(SECTORS_PER_BLOCK)
    }
}

/// A decoded volume-table copy.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VolumeTable {
    /// Write generation; picks the newer copy.
    pub generation: u64,
    /// Volumes, sorted by start block.
    pub entries: Vec<VolumeEntry>,
}

/// Whether `name` is a valid volume name.
#[must_use]
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// Blockcrypt sectors and device blocks for a volume of `sectors` 512-byte sectors.
///
/// # Errors
/// [`DiskError::BadSize`] for 0 or more than the format addresses.
pub fn geometry(sectors: u64) -> Result<(u64, u64), DiskError> {
    let n = sectors.div_ceil(SECTORS_PER_BLOCK);
    let layout = Layout::new(n).map_err(|_| DiskError::BadSize { sectors })?;
    Ok((n, layout.total_blocks))
}

/// Most entries a table copy of `len` bytes holds.
#[must_use]
pub fn max_entries(len: usize) -> usize {
    len.saturating_sub(FIXED_LEN + MAC_LEN) / ENTRY_LEN
}

impl VolumeTable {
    /// The entry named `name`.
    #[must_use]
    pub fn find(&self, name: &str) -> Option<&VolumeEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// First fit: the lowest start block of a free range of `blocks` blocks
    /// in `[data_start, disk_blocks)`.
    #[must_use]
    pub fn allocate(&self, blocks: u64, data_start: u64, disk_blocks: u64) -> Option<u64> {
        let mut cursor = data_start;
        for e in &self.entries {
            if e.start_block.checked_sub(cursor).is_some_and(|gap| gap >= blocks) {
                return Some(cursor);
            }
            cursor = cursor.max(e.start_block.saturating_add(e.blocks));
        }
        (disk_blocks.checked_sub(cursor)? >= blocks).then_some(cursor)
    }

    /// Adds an entry, keeping the order by start block.
    pub fn insert(&mut self, e: VolumeEntry) {
        let at = self.entries.iter().position(|x| x.start_block > e.start_block).unwrap_or(self.entries.len());
        self.entries.insert(at, e);
    }

    /// Checks that every volume lies in `[data_start, disk_blocks)`.
    ///
    /// # Errors
    /// [`FormatError::BadField`] if one does not.
    pub fn check_layout(&self, data_start: u64, disk_blocks: u64) -> Result<(), FormatError> {
        for e in &self.entries {
            let end = e.start_block.checked_add(e.blocks).ok_or(FormatError::BadField("volume range"))?;
            if e.start_block < data_start || end > disk_blocks {
                return Err(FormatError::BadField("volume range"));
            }
        }
        Ok(())
    }

    /// Encodes into a region of `len` bytes, MAC left zero; `None` if the
    /// entries do not fit.
    #[must_use]
    pub fn encode(&self, len: usize) -> Option<Vec<u8>> {
        if self.entries.len() > max_entries(len) {
            return None;
        }
        let mut b = vec![0u8; len];
        let count = u32::try_from(self.entries.len()).ok()?;
        let mut ok = put(&mut b, 0, &TABLE_MAGIC)
            && put(&mut b, 8, &self.generation.to_le_bytes())
            && put(&mut b, 16, &count.to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let off = FIXED_LEN + i * ENTRY_LEN;
            let name_len = u8::try_from(e.name.len()).ok()?;
            ok = ok
                && put(&mut b, off, &[name_len])
                && put(&mut b, off + 1, e.name.as_bytes())
                && put(&mut b, off + 40, &e.lease.0.to_le_bytes())
                && put(&mut b, off + 48, &e.sectors.to_le_bytes())
                && put(&mut b, off + 56, &e.start_block.to_le_bytes())
                && put(&mut b, off + 64, &e.blocks.to_le_bytes())
                && put(&mut b, off + 72, &e.landlord_epoch.to_le_bytes())
                && put(&mut b, off + 76, &e.tenant_epoch.to_le_bytes())
                && put(&mut b, off + 80, &e.id.0);
        }
        ok.then_some(b)
    }

    /// Decodes a whole table copy and checks its structure: names valid
    /// and unique, ids unique, sizes addressable, block counts matching the
    /// sizes, ranges sorted and disjoint. The MAC is the caller's. Any
    /// input is safe.
    ///
    /// # Errors
    /// [`FormatError`] naming what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let t = FormatError::Truncated;
        if b.len() < FIXED_LEN + MAC_LEN {
            return Err(t);
        }
        if array::<8>(b, 0).ok_or(t)? != TABLE_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let bad = FormatError::BadField;
        let count = usize::try_from(u32_at(b, 16).ok_or(t)?).map_err(|_| bad("volume count"))?;
        if count > max_entries(b.len()) {
            return Err(bad("volume count"));
        }
        let zero = |from: usize, to: usize| b.get(from..to).is_some_and(|r| r.iter().all(|&x| x == 0));
        if !zero(20, FIXED_LEN) {
            return Err(bad("reserved"));
        }
        let mut entries: Vec<VolumeEntry> = Vec::with_capacity(count);
        for i in 0..count {
            let off = FIXED_LEN + i * ENTRY_LEN;
            let name_len = usize::from(*b.get(off).ok_or(t)?);
            let name_bytes = b.get(off + 1..off + 1 + name_len).ok_or(t)?;
            if !valid_name(name_bytes) || !zero(off + 1 + name_len, off + 40) {
                return Err(bad("volume name"));
            }
            let name = String::from(core::str::from_utf8(name_bytes).map_err(|_| bad("volume name"))?);
            if !zero(off + 44, off + 48) || !zero(off + 96, off + ENTRY_LEN) {
                return Err(bad("reserved"));
            }
            let e = VolumeEntry {
                name,
                lease: LeaseId(u32_at(b, off + 40).ok_or(t)?),
                sectors: u64_at(b, off + 48).ok_or(t)?,
                start_block: u64_at(b, off + 56).ok_or(t)?,
                blocks: u64_at(b, off + 64).ok_or(t)?,
                landlord_epoch: u32_at(b, off + 72).ok_or(t)?,
                tenant_epoch: u32_at(b, off + 76).ok_or(t)?,
                id: VolumeId(array(b, off + 80).ok_or(t)?),
            };
            match geometry(e.sectors) {
                Ok((_, blocks)) if blocks == e.blocks => {}
                _ => return Err(bad("volume size")),
            }
            if e.landlord_epoch == 0 {
                return Err(bad("landlord epoch"));
            }
            if e.start_block.checked_add(e.blocks).is_none() {
                return Err(bad("volume range"));
            }
            if let Some(p) = entries.last() {
                if p.start_block.saturating_add(p.blocks) > e.start_block {
                    return Err(bad("volume order"));
                }
            }
            if entries.iter().any(|x| x.name == e.name) {
                return Err(bad("duplicate name"));
            }
            if entries.iter().any(|x| x.id == e.id) {
                return Err(bad("duplicate volume id"));
            }
            entries.push(e);
        }
        if !zero(FIXED_LEN + count * ENTRY_LEN, b.len() - MAC_LEN) {
            return Err(bad("trailing bytes"));
        }
        Ok(Self { generation: u64_at(b, 8).ok_or(t)?, entries })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn entry(name: &str, start: u64, sectors: u64) -> VolumeEntry {
        VolumeEntry {
            name: name.into(),
            lease: LeaseId(1),
            sectors,
            start_block: start,
            blocks: geometry(sectors).unwrap().1,
            landlord_epoch: 1,
            tenant_epoch: 0,
            id: VolumeId([name.len() as u8; 16]),
        }
    }

    #[test]
    fn geometry_matches_blockcrypt() {
        assert_eq!(geometry(1).unwrap(), (1, 5));
        assert_eq!(geometry(8).unwrap(), (1, 5));
        assert_eq!(geometry(9).unwrap(), (2, 7));
        assert_eq!(geometry(8 * 129).unwrap(), (129, 2 + 2 + 258));
        assert_eq!(geometry(0), Err(DiskError::BadSize { sectors: 0 }));
        assert!(geometry(u64::MAX).is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name(b"web-1.disk_0"));
        assert!(valid_name(&[b'a'; 32]));
        assert!(!valid_name(&[b'a'; 33]));
        assert!(!valid_name(b""));
        assert!(!valid_name(b"a b"));
        assert!(!valid_name("é".as_bytes()));
    }

    #[test]
    fn first_fit() {
        let mut t = VolumeTable::default();
        assert_eq!(t.allocate(10, 22, 100), Some(22));
        assert_eq!(t.allocate(79, 22, 100), None);
        t.insert(entry("b", 40, 8)); // 40..45
        t.insert(entry("a", 22, 9)); // 22..29
        assert_eq!(t.entries[0].name, "a");
        assert_eq!(t.allocate(11, 22, 100), Some(29));
        assert_eq!(t.allocate(12, 22, 100), Some(45));
        assert_eq!(t.allocate(55, 22, 100), Some(45));
        assert_eq!(t.allocate(56, 22, 100), None);
    }

    #[test]
    fn roundtrip_and_refusals() {
        let mut t = VolumeTable { generation: 9, entries: Vec::new() };
        t.insert(entry("a", 22, 9));
        t.insert(entry("bb", 40, 8));
        let good = t.encode(4096).unwrap();
        assert_eq!(VolumeTable::decode(&good).unwrap(), t);
        assert!(t.check_layout(22, 100).is_ok());
        assert!(t.check_layout(23, 100).is_err());
        assert!(t.check_layout(22, 44).is_err());
        assert_eq!(max_entries(4096), 31);

        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(VolumeTable::decode(&b), Err(FormatError::BadMagic));
        let mut b = good.clone();
        b[32] = 33;
        assert_eq!(VolumeTable::decode(&b), Err(FormatError::BadField("volume name")));
        let mut b = good.clone();
        b[32 + 128 + 56] = 25; // overlaps "a"
        assert_eq!(VolumeTable::decode(&b), Err(FormatError::BadField("volume order")));
        let mut b = good.clone();
        b[32 + 64] = 99;
        assert_eq!(VolumeTable::decode(&b), Err(FormatError::BadField("volume size")));
        let mut b = good.clone();
        b[32 + 128 + 80..32 + 128 + 96].copy_from_slice(&[1; 16]);
        assert_eq!(VolumeTable::decode(&b), Err(FormatError::BadField("duplicate volume id")));
        let mut b = good.clone();
        b[32 + 128] = 1; // "b" + stray byte
        assert_eq!(VolumeTable::decode(&b), Err(FormatError::BadField("volume name")));
        let mut b = good.clone();
        b[16] = 200;
        assert_eq!(VolumeTable::decode(&b), Err(FormatError::BadField("volume count")));
        let mut b = good;
        b[4000] = 1;
        assert_eq!(VolumeTable::decode(&b), Err(FormatError::BadField("trailing bytes")));
        assert_eq!(VolumeTable::decode(&[0; 64]), Err(FormatError::BadMagic));
        assert_eq!(VolumeTable::decode(&[0; 10]), Err(FormatError::Truncated));
    }
}
