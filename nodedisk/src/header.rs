//! The node header: what this disk is, whose it is, and where things are.
//!
//! Two copies, blocks 0 and 1; a header of generation `g` lives in block
//! `g & 1`, and the valid copy with the highest generation wins. Fields
//! (little-endian; the rest of the block is zero and not read):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `BMNODHD1` |
//! | 8 | 2 | format version (1) |
//! | 10 | 6 | reserved, zero |
//! | 16 | 8 | generation |
//! | 24 | 16 | node id (random at format) |
//! | 40 | 8 | disk size in 4 KiB blocks (at format) |
//! | 48 | 8 | key store start block (2) |
//! | 56 | 4 | key store blocks per copy |
//! | 60 | 4 | volume table blocks per copy |
//! | 64 | 8 | volume table start block |
//! | 72 | 8 | first data block |
//! | 80 | 16 | seal check: HMAC(k_check, "seal check" ‖ node id), first 16 bytes |
//! | 96 | 128 | reserved, zero |
//! | 224 | 32 | HMAC-SHA256 under k_header over bytes 0..224 |

use crate::crypto::{mac, mac_ok, SealKey};
use crate::{DiskError, FormatError};
use blockcrypt::bytes::{array, put, u16_at, u32_at, u64_at};

/// Magic at the start of a node header.
pub const NODE_MAGIC: [u8; 8] = *b"BMNODHD1";
/// The only format version this code writes and reads.
pub const NODE_VERSION: u16 = 1;
/// Encoded length of the header (the rest of its block is zero).
pub const NODE_HEADER_LEN: usize = 256;
const MAC_OFFSET: usize = 224;
/// First key-store block (after the two header copies).
pub const KEYSTORE_START: u64 = 2;
/// Upper bounds on region sizes a header may claim, so a tampered header
/// cannot make the reader allocate without limit.
pub const MAX_KEYSTORE_BLOCKS: u32 = 64;
/// See [`MAX_KEYSTORE_BLOCKS`].
pub const MAX_TABLE_BLOCKS: u32 = 256;

/// Identifies a node's disk; random at format. Bound into every MAC at
/// node level, so structures cannot be moved between two disks of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(pub [u8; 16]);

/// A decoded node header. Decoding checks structure only; [`NodeHeader::seal_matches`]
/// and [`NodeHeader::mac_valid`] check it against the seal key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeHeader {
    /// Write generation; picks the newer copy.
    pub generation: u64,
    /// The node id.
    pub node_id: NodeId,
    /// Disk size in 4 KiB blocks when formatted.
    pub disk_blocks: u64,
    /// Key-store blocks per copy (two copies from [`KEYSTORE_START`]).
    pub keystore_blocks: u32,
    /// First volume-table block.
    pub table_start: u64,
    /// Volume-table blocks per copy (two copies from `table_start`).
    pub table_blocks: u32,
    /// First block volumes may use.
    pub data_start: u64,
    /// Proof of the seal key that tells "another node" from "tampered".
    pub seal_check: [u8; 16],
    /// MAC over the header.
    pub mac: [u8; 32],
}

impl NodeHeader {
    /// The header layout for a disk of `disk_blocks` blocks with the given
    /// region sizes (generation, check and MAC still to be set).
    ///
    /// # Errors
    /// [`DiskError::DiskTooSmall`] if no block is left for volumes.
    pub fn layout(
        node_id: NodeId,
        disk_blocks: u64,
        keystore_blocks: u32,
        table_blocks: u32,
    ) -> Result<Self, DiskError> {
        let small = DiskError::DiskTooSmall { blocks: disk_blocks };
        let table_start = KEYSTORE_START.checked_add(2 * u64::from(keystore_blocks)).ok_or(small.clone())?;
        let data_start = table_start.checked_add(2 * u64::from(table_blocks)).ok_or(small.clone())?;
        if data_start >= disk_blocks {
            return Err(small);
        }
        Ok(Self {
            generation: 0,
            node_id,
            disk_blocks,
            keystore_blocks,
            table_start,
            table_blocks,
            data_start,
            seal_check: [0; 16],
            mac: [0; 32],
        })
    }

    /// First block of key-store copy `copy` (0 or 1).
    #[must_use]
    pub fn keystore_copy(&self, copy: u64) -> u64 {
        KEYSTORE_START + copy * u64::from(self.keystore_blocks)
    }

    /// First block of volume-table copy `copy` (0 or 1).
    #[must_use]
    pub fn table_copy(&self, copy: u64) -> u64 {
        self.table_start + copy * u64::from(self.table_blocks)
    }

    /// The encoded header.
    #[must_use]
    pub fn encode(&self) -> [u8; NODE_HEADER_LEN] {
        let mut b = [0u8; NODE_HEADER_LEN];
        put(&mut b, 0, &NODE_MAGIC);
        put(&mut b, 8, &NODE_VERSION.to_le_bytes());
        put(&mut b, 16, &self.generation.to_le_bytes());
        put(&mut b, 24, &self.node_id.0);
        put(&mut b, 40, &self.disk_blocks.to_le_bytes());
        put(&mut b, 48, &KEYSTORE_START.to_le_bytes());
        put(&mut b, 56, &self.keystore_blocks.to_le_bytes());
        put(&mut b, 60, &self.table_blocks.to_le_bytes());
        put(&mut b, 64, &self.table_start.to_le_bytes());
        put(&mut b, 72, &self.data_start.to_le_bytes());
        put(&mut b, 80, &self.seal_check);
        put(&mut b, MAC_OFFSET, &self.mac);
        b
    }

    /// Decodes and checks the structure: magic, version, reserved bytes
    /// zero, regions in order and inside the disk. Any input is safe.
    ///
    /// # Errors
    /// [`FormatError`] naming what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let t = FormatError::Truncated;
        let b = b.get(..NODE_HEADER_LEN).ok_or(t)?;
        if array::<8>(b, 0).ok_or(t)? != NODE_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16_at(b, 8).ok_or(t)?;
        if version != NODE_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        let zero = |from: usize, to: usize| b.get(from..to).is_some_and(|r| r.iter().all(|&x| x == 0));
        if !zero(10, 16) || !zero(96, MAC_OFFSET) {
            return Err(FormatError::BadField("reserved"));
        }
        let bad = FormatError::BadField;
        let keystore_start = u64_at(b, 48).ok_or(t)?;
        let keystore_blocks = u32_at(b, 56).ok_or(t)?;
        let table_blocks = u32_at(b, 60).ok_or(t)?;
        if keystore_start != KEYSTORE_START {
            return Err(bad("key store start"));
        }
        if keystore_blocks == 0 || keystore_blocks > MAX_KEYSTORE_BLOCKS {
            return Err(bad("key store blocks"));
        }
        if table_blocks == 0 || table_blocks > MAX_TABLE_BLOCKS {
            return Err(bad("volume table blocks"));
        }
        let h = Self {
            generation: u64_at(b, 16).ok_or(t)?,
            node_id: NodeId(array(b, 24).ok_or(t)?),
            disk_blocks: u64_at(b, 40).ok_or(t)?,
            keystore_blocks,
            table_start: u64_at(b, 64).ok_or(t)?,
            table_blocks,
            data_start: u64_at(b, 72).ok_or(t)?,
            seal_check: array(b, 80).ok_or(t)?,
            mac: array(b, MAC_OFFSET).ok_or(t)?,
        };
        // The region sizes are bounded above, so these sums cannot overflow.
        if h.table_start != KEYSTORE_START + 2 * u64::from(keystore_blocks) {
            return Err(bad("volume table start"));
        }
        if h.data_start != h.table_start + 2 * u64::from(table_blocks) {
            return Err(bad("data start"));
        }
        if h.disk_blocks <= h.data_start {
            return Err(bad("disk size"));
        }
        Ok(h)
    }

    fn check_value(&self, seal: &SealKey) -> Result<[u8; 16], DiskError> {
        let full = mac(&seal.subkey(b"seal check")?, &[b"seal check", &self.node_id.0])?;
        let mut out = [0u8; 16];
        out.copy_from_slice(full.get(..16).ok_or(DiskError::Crypto)?);
        Ok(out)
    }

    /// Sets the seal check and MAC for `seal` (before writing).
    ///
    /// # Errors
    /// [`DiskError::Crypto`] only if key derivation fails.
    pub fn seal(&mut self, seal: &SealKey) -> Result<(), DiskError> {
        self.seal_check = self.check_value(seal)?;
        let enc = self.encode();
        self.mac = mac(&seal.subkey(b"node-header mac")?, &[enc.get(..MAC_OFFSET).unwrap_or(&[])])?;
        Ok(())
    }

    /// Whether the header was sealed with `seal` (a mismatch means another
    /// node, or a header forged to look like one: both are refused).
    ///
    /// # Errors
    /// [`DiskError::Crypto`] only if key derivation fails.
    pub fn seal_matches(&self, seal: &SealKey) -> Result<bool, DiskError> {
        // Not secret-dependent in a way an attacker can use: both values are
        // on the disk or derivable only with the key.
        Ok(self.check_value(seal)? == self.seal_check)
    }

    /// Whether the MAC verifies under `seal`.
    ///
    /// # Errors
    /// [`DiskError::Crypto`] only if key derivation fails.
    pub fn mac_valid(&self, seal: &SealKey) -> Result<bool, DiskError> {
        let enc = self.encode();
        Ok(mac_ok(&seal.subkey(b"node-header mac")?, &[enc.get(..MAC_OFFSET).unwrap_or(&[])], &self.mac))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample() -> NodeHeader {
        let mut h = NodeHeader::layout(NodeId([3; 16]), 100, 2, 8).unwrap();
        h.generation = 7;
        h.seal(&SealKey::from_bytes([1; 32])).unwrap();
        h
    }

    #[test]
    fn roundtrip_and_seal() {
        let h = sample();
        assert_eq!(h.data_start, 2 + 4 + 16);
        let d = NodeHeader::decode(&h.encode()).unwrap();
        assert_eq!(d, h);
        assert!(d.seal_matches(&SealKey::from_bytes([1; 32])).unwrap());
        assert!(d.mac_valid(&SealKey::from_bytes([1; 32])).unwrap());
        assert!(!d.seal_matches(&SealKey::from_bytes([2; 32])).unwrap());
        assert!(!d.mac_valid(&SealKey::from_bytes([2; 32])).unwrap());
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let h = sample();
        let seal = SealKey::from_bytes([1; 32]);
        for i in 0..NODE_HEADER_LEN * 8 {
            let mut b = h.encode();
            b[i / 8] ^= 1 << (i % 8);
            if let Ok(d) = NodeHeader::decode(&b) {
                assert!(!d.mac_valid(&seal).unwrap(), "bit {i}");
            }
        }
    }

    #[test]
    fn bad_headers_refused() {
        let h = sample();
        assert_eq!(NodeHeader::decode(&h.encode()[..100]), Err(FormatError::Truncated));
        assert_eq!(NodeHeader::decode(&[0; 256]), Err(FormatError::BadMagic));
        let mut b = h.encode();
        b[8] = 2;
        assert_eq!(NodeHeader::decode(&b), Err(FormatError::BadVersion(2)));
        let mut b = h.encode();
        b[56..60].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(NodeHeader::decode(&b), Err(FormatError::BadField("key store blocks")));
        let mut b = h.encode();
        b[40..48].copy_from_slice(&22u64.to_le_bytes());
        assert_eq!(NodeHeader::decode(&b), Err(FormatError::BadField("disk size")));
        let mut b = h.encode();
        b[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(NodeHeader::decode(&b), Err(FormatError::BadField("data start")));
        assert!(NodeHeader::layout(NodeId([0; 16]), 22, 2, 8).is_err());
    }
}
