//! On-disk records: the per-sector metadata record and the volume header
//! (which is also the volume's key store: it holds the wrapped volume keys).
//!
//! Both are read back from a device an attacker may have rewritten, so
//! decoding checks every field and reports what is wrong; authenticity is
//! then checked by the sector tag (records) or the header MAC (header).
//!
//! # Sector record (32 bytes, 16 per 512-byte device sector)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | write counter, u64 LE (0 = never written: whole record zero) |
//! | 8 | 1 | flags: bit 0 = data slot, bit 1 = key-epoch parity; others 0 |
//! | 9 | 7 | reserved, zero |
//! | 16 | 16 | Poly1305 tag |
//!
//! Records are 32-byte aligned, so none straddles a 512-byte device sector:
//! a torn metadata-block write leaves each record wholly old or wholly new.
//!
//! # Volume header (256 bytes at the start of a block; rest of block zero)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `BMVOLHD1` |
//! | 8 | 2 | format version, u16 LE (1) |
//! | 10 | 1 | state: 0 active, 1 initialising (erase under way), 2 re-keying, 3 replica (read-only copy of another node's volume) |
//! | 11 | 1 | disk-key chain links after the landlord key (0 = landlord only) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 16 | volume id |
//! | 32 | 8 | generation, u64 LE (bumped on every header write and mount) |
//! | 40 | 8 | sector count (4 KiB sectors), u64 LE, 1..=2^32 |
//! | 48 | 4 | key epoch, u32 LE (bumped by erase and re-key) |
//! | 52 | 4 | reserved, zero |
//! | 56 | 60 | current volume key, wrapped under the disk key |
//! | 116 | 60 | next volume key while re-keying, else zero |
//! | 176 | 48 | reserved, zero |
//! | 224 | 32 | HMAC-SHA256 of bytes 0..224 under a disk-key subkey |

use core::fmt;

use crate::bytes::{array, put, u16_at, u32_at, u64_at};
use crate::keys::{WrappedKey, WRAPPED_KEY_LEN};
use crate::sector::{MAX_SECTOR, TAG_LEN};
use crate::VolumeId;

/// Encoded size of a [`SectorRecord`].
pub const RECORD_LEN: usize = 32;
/// Flag bit: the sector's data is in slot 1 (else slot 0).
pub const FLAG_SLOT: u8 = 1;
/// Flag bit: the sector is sealed under the key of an odd epoch.
pub const FLAG_EPOCH: u8 = 2;

/// Why a sector record is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer than [`RECORD_LEN`] bytes.
    Truncated {
        /// Bytes available.
        len: usize,
    },
    /// A flag bit outside [`FLAG_SLOT`] | [`FLAG_EPOCH`] is set.
    UnknownFlags(u8),
    /// A reserved byte is not zero.
    ReservedNotZero,
    /// Counter 0 ("never written") with other bytes set.
    EmptyNotZero,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len } => write!(f, "sector record truncated to {len} bytes"),
            Self::UnknownFlags(b) => write!(f, "unknown sector record flags {b:#04x}"),
            Self::ReservedNotZero => write!(f, "reserved bytes of sector record not zero"),
            Self::EmptyNotZero => write!(f, "unwritten sector record not all zero"),
        }
    }
}

/// Per-sector metadata: which write this is, where it is, and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRecord {
    /// Write counter; 0 means the sector was never written (reads as zeros).
    pub counter: u64,
    /// [`FLAG_SLOT`] and [`FLAG_EPOCH`] bits.
    pub flags: u8,
    /// The Poly1305 tag of the sealed data.
    pub tag: [u8; TAG_LEN],
}

impl SectorRecord {
    /// The record of a sector never written.
    pub const EMPTY: Self = Self { counter: 0, flags: 0, tag: [0; TAG_LEN] };

    /// Whether the sector was ever written.
    #[must_use]
    pub fn is_written(&self) -> bool {
        self.counter != 0
    }

    /// Which of the sector's two data slots holds its current data.
    #[must_use]
    pub fn slot(&self) -> u8 {
        self.flags & FLAG_SLOT
    }

    /// Parity of the key epoch the sector was sealed under.
    #[must_use]
    pub fn epoch_parity(&self) -> u8 {
        (self.flags & FLAG_EPOCH) >> 1
    }

    /// The stored form.
    #[must_use]
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        let (c, rest) = out.split_at_mut(8);
        let (f, rest) = rest.split_at_mut(8);
        c.copy_from_slice(&self.counter.to_le_bytes());
        if let Some(b) = f.first_mut() {
            *b = self.flags;
        }
        rest.copy_from_slice(&self.tag);
        out
    }

    /// Parses and validates the first [`RECORD_LEN`] bytes of `b`.
    ///
    /// # Errors
    /// A [`RecordError`] naming the first problem found.
    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let raw: [u8; RECORD_LEN] = array(b, 0).ok_or(RecordError::Truncated { len: b.len() })?;
        let counter = u64_at(&raw, 0).ok_or(RecordError::Truncated { len: b.len() })?;
        let flags = raw.get(8).copied().unwrap_or(0);
        let reserved = raw.get(9..16).unwrap_or(&[]);
        let tag: [u8; TAG_LEN] = array(&raw, 16).ok_or(RecordError::Truncated { len: b.len() })?;
        if counter == 0 {
            return if raw.iter().all(|&x| x == 0) { Ok(Self::EMPTY) } else { Err(RecordError::EmptyNotZero) };
        }
        if flags & !(FLAG_SLOT | FLAG_EPOCH) != 0 {
            return Err(RecordError::UnknownFlags(flags));
        }
        if reserved.iter().any(|&x| x != 0) {
            return Err(RecordError::ReservedNotZero);
        }
        Ok(Self { counter, flags, tag })
    }

    /// The counter field alone, readable even from a malformed record, so a
    /// write over a damaged record still moves the counter forward.
    #[must_use]
    pub fn raw_counter(b: &[u8]) -> u64 {
        u64_at(b, 0).unwrap_or(0)
    }
}

/// Header magic.
pub const HEADER_MAGIC: [u8; 8] = *b"BMVOLHD1";
/// Header format version this crate writes and reads.
pub const HEADER_VERSION: u16 = 1;
/// Encoded header size (the rest of its block is zero).
pub const HEADER_LEN: usize = 256;
/// Bytes covered by the header MAC.
pub const HEADER_MAC_OFFSET: usize = 224;

/// What the volume was doing when the header was written, so a mount after
/// a crash finishes the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeState {
    /// Normal operation.
    Active,
    /// Crypto-erase under way: the new key is in place, metadata is being
    /// cleared.
    Initialising,
    /// Re-encryption under way from the current to the next volume key.
    Rekeying,
    /// A replica: its sectors are ciphertext copied from another node's
    /// volume that shares this volume key, so writing here could reuse that
    /// node's nonces. Readable, never written; [`crate::Volume::rekey`]
    /// (fresh key) or [`crate::Volume::crypto_erase`] turn it into an
    /// ordinary volume.
    Replica,
}

impl VolumeState {
    fn code(self) -> u8 {
        match self {
            Self::Active => 0,
            Self::Initialising => 1,
            Self::Rekeying => 2,
            Self::Replica => 3,
        }
    }
}

/// Why a header does not parse. (A header that parses may still fail its
/// MAC; that is checked with the disk key.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Truncated {
        /// Bytes available.
        len: usize,
    },
    /// Not a BMonitor volume header (or an all-zero, never-written block).
    BadMagic,
    /// A version this code does not know.
    UnsupportedVersion(u16),
    /// State byte out of range.
    UnknownState(u8),
    /// A reserved byte (at this offset) is not zero.
    ReservedNotZero {
        /// Offset of the first bad byte.
        offset: usize,
    },
    /// Sector count 0 or beyond what a nonce addresses.
    BadSectorCount(u64),
    /// The next-key field does not match the state (present iff re-keying).
    NextKeyMismatch,
    /// The key epoch cannot be advanced (re-key or erase would wrap it).
    EpochExhausted,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len } => write!(f, "volume header truncated to {len} bytes"),
            Self::BadMagic => write!(f, "no volume header (bad magic)"),
            Self::UnsupportedVersion(v) => write!(f, "volume header version {v} unsupported"),
            Self::UnknownState(s) => write!(f, "volume header state {s} unknown"),
            Self::ReservedNotZero { offset } => write!(f, "volume header reserved byte {offset} not zero"),
            Self::BadSectorCount(n) => write!(f, "volume sector count {n} out of range"),
            Self::NextKeyMismatch => write!(f, "volume header next key does not match its state"),
            Self::EpochExhausted => write!(f, "volume key epoch exhausted"),
        }
    }
}

/// The volume header: identity, size, state and the wrapped keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeHeader {
    /// What the volume was doing.
    pub state: VolumeState,
    /// Chain links after the landlord key that the disk key needs.
    pub key_links: u8,
    /// The volume's id.
    pub volume: VolumeId,
    /// Header write generation; the copy with the highest valid one wins.
    pub generation: u64,
    /// Number of 4 KiB sectors.
    pub sector_count: u64,
    /// Epoch of the current volume key.
    pub key_epoch: u32,
    /// The current volume key, wrapped under the disk key.
    pub current_key: WrappedKey,
    /// The next volume key while re-keying.
    pub next_key: Option<WrappedKey>,
    /// HMAC-SHA256 over the first [`HEADER_MAC_OFFSET`] encoded bytes.
    pub mac: [u8; 32],
}

impl VolumeHeader {
    /// The encoded header, MAC included.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        // Every field lies inside the fixed 256-byte array, so `put` cannot fail.
        put(&mut b, 0, &HEADER_MAGIC);
        put(&mut b, 8, &HEADER_VERSION.to_le_bytes());
        put(&mut b, 10, &[self.state.code(), self.key_links]);
        put(&mut b, 16, &self.volume.0);
        put(&mut b, 32, &self.generation.to_le_bytes());
        put(&mut b, 40, &self.sector_count.to_le_bytes());
        put(&mut b, 48, &self.key_epoch.to_le_bytes());
        put(&mut b, 56, &self.current_key.to_bytes());
        if let Some(n) = &self.next_key {
            put(&mut b, 116, &n.to_bytes());
        }
        put(&mut b, HEADER_MAC_OFFSET, &self.mac);
        b
    }

    /// The bytes the MAC covers.
    #[must_use]
    pub fn mac_input(&self) -> [u8; HEADER_MAC_OFFSET] {
        let mut out = [0u8; HEADER_MAC_OFFSET];
        let enc = self.encode();
        if let Some(src) = enc.get(..HEADER_MAC_OFFSET) {
            out.copy_from_slice(src);
        }
        out
    }

    /// Parses and validates a header block (or at least its first
    /// [`HEADER_LEN`] bytes; any bytes after that must be zero).
    ///
    /// # Errors
    /// A [`HeaderError`] naming the first problem found.
    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        let t = HeaderError::Truncated { len: b.len() };
        let h: [u8; HEADER_LEN] = array(b, 0).ok_or(t)?;
        if array::<8>(&h, 0) != Some(HEADER_MAGIC) {
            return Err(HeaderError::BadMagic);
        }
        let version = u16_at(&h, 8).ok_or(t)?;
        if version != HEADER_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let state = match h.get(10).copied() {
            Some(0) => VolumeState::Active,
            Some(1) => VolumeState::Initialising,
            Some(2) => VolumeState::Rekeying,
            Some(3) => VolumeState::Replica,
            other => return Err(HeaderError::UnknownState(other.unwrap_or(0xFF))),
        };
        let key_links = h.get(11).copied().ok_or(t)?;
        for (start, end) in [(12, 16), (52, 56), (176, HEADER_MAC_OFFSET)] {
            if let Some(i) = h.get(start..end).and_then(|r| r.iter().position(|&x| x != 0)) {
                return Err(HeaderError::ReservedNotZero { offset: start + i });
            }
        }
        if let Some(i) = b.get(HEADER_LEN..).and_then(|r| r.iter().position(|&x| x != 0)) {
            return Err(HeaderError::ReservedNotZero { offset: HEADER_LEN + i });
        }
        let volume = VolumeId(array(&h, 16).ok_or(t)?);
        let generation = u64_at(&h, 32).ok_or(t)?;
        let sector_count = u64_at(&h, 40).ok_or(t)?;
        if sector_count == 0 || sector_count > MAX_SECTOR + 1 {
            return Err(HeaderError::BadSectorCount(sector_count));
        }
        let key_epoch = u32_at(&h, 48).ok_or(t)?;
        let current_key = WrappedKey::from_bytes(&array::<WRAPPED_KEY_LEN>(&h, 56).ok_or(t)?);
        let next_raw = array::<WRAPPED_KEY_LEN>(&h, 116).ok_or(t)?;
        let next_present = next_raw.iter().any(|&x| x != 0);
        let next_key = match (state, next_present) {
            (VolumeState::Rekeying, true) => {
                if key_epoch == u32::MAX {
                    return Err(HeaderError::EpochExhausted);
                }
                Some(WrappedKey::from_bytes(&next_raw))
            }
            (VolumeState::Rekeying, false) | (_, true) => return Err(HeaderError::NextKeyMismatch),
            (_, false) => None,
        };
        let mac = array(&h, HEADER_MAC_OFFSET).ok_or(t)?;
        Ok(Self { state, key_links, volume, generation, sector_count, key_epoch, current_key, next_key, mac })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn header() -> VolumeHeader {
        VolumeHeader {
            state: VolumeState::Rekeying,
            key_links: 1,
            volume: VolumeId([4; 16]),
            generation: 77,
            sector_count: 1000,
            key_epoch: 3,
            current_key: WrappedKey { nonce: [1; 12], ciphertext: [2; 32], tag: [3; 16] },
            next_key: Some(WrappedKey { nonce: [5; 12], ciphertext: [6; 32], tag: [7; 16] }),
            mac: [9; 32],
        }
    }

    #[test]
    fn record_roundtrip_and_validation() {
        let r = SectorRecord { counter: 5, flags: FLAG_SLOT | FLAG_EPOCH, tag: [8; 16] };
        let e = r.encode();
        assert_eq!(SectorRecord::decode(&e), Ok(r));
        assert_eq!((r.slot(), r.epoch_parity()), (1, 1));
        assert_eq!(SectorRecord::decode(&[0; 32]), Ok(SectorRecord::EMPTY));
        assert_eq!(SectorRecord::decode(&e[..31]), Err(RecordError::Truncated { len: 31 }));
        let mut bad = e;
        bad[8] = 4;
        assert_eq!(SectorRecord::decode(&bad), Err(RecordError::UnknownFlags(4)));
        let mut bad = e;
        bad[12] = 1;
        assert_eq!(SectorRecord::decode(&bad), Err(RecordError::ReservedNotZero));
        let mut bad = [0u8; 32];
        bad[20] = 1;
        assert_eq!(SectorRecord::decode(&bad), Err(RecordError::EmptyNotZero));
        assert_eq!(SectorRecord::raw_counter(&bad), 0);
        assert_eq!(SectorRecord::raw_counter(&e), 5);
        assert_eq!(SectorRecord::raw_counter(&[1, 2]), 0);
    }

    #[test]
    fn header_roundtrip() {
        let h = header();
        assert_eq!(VolumeHeader::decode(&h.encode()), Ok(h));
        let active = VolumeHeader { state: VolumeState::Active, next_key: None, ..h };
        let mut block = [0u8; 4096];
        block[..HEADER_LEN].copy_from_slice(&active.encode());
        assert_eq!(VolumeHeader::decode(&block), Ok(active));
        assert_eq!(&active.mac_input()[..], &active.encode()[..HEADER_MAC_OFFSET]);
        let replica = VolumeHeader { state: VolumeState::Replica, ..active };
        block[..HEADER_LEN].copy_from_slice(&replica.encode());
        assert_eq!(VolumeHeader::decode(&block), Ok(replica));
    }

    #[test]
    fn header_rejects_bad_fields() {
        let e = header().encode();
        let cases: &[(usize, u8, HeaderError)] = &[
            (0, b'X', HeaderError::BadMagic),
            (8, 2, HeaderError::UnsupportedVersion(2)),
            (10, 4, HeaderError::UnknownState(4)),
            (10, 3, HeaderError::NextKeyMismatch),
            (10, 0, HeaderError::NextKeyMismatch),
            (13, 1, HeaderError::ReservedNotZero { offset: 13 }),
            (53, 1, HeaderError::ReservedNotZero { offset: 53 }),
            (200, 1, HeaderError::ReservedNotZero { offset: 200 }),
        ];
        for &(off, val, err) in cases {
            let mut b = e;
            b[off] = val;
            assert_eq!(VolumeHeader::decode(&b), Err(err), "offset {off}");
        }
        let mut b = e;
        b[40..48].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(VolumeHeader::decode(&b), Err(HeaderError::BadSectorCount(0)));
        b[40..48].copy_from_slice(&(MAX_SECTOR + 2).to_le_bytes());
        assert_eq!(VolumeHeader::decode(&b), Err(HeaderError::BadSectorCount(MAX_SECTOR + 2)));
        let mut b = e;
        b[116..176].fill(0);
        assert_eq!(VolumeHeader::decode(&b), Err(HeaderError::NextKeyMismatch));
        let mut b = e;
        b[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(VolumeHeader::decode(&b), Err(HeaderError::EpochExhausted));
        let mut block = [0u8; 4096];
        block[..HEADER_LEN].copy_from_slice(&e);
        block[4000] = 1;
        assert_eq!(VolumeHeader::decode(&block), Err(HeaderError::ReservedNotZero { offset: 4000 }));
        assert_eq!(VolumeHeader::decode(&e[..100]), Err(HeaderError::Truncated { len: 100 }));
        assert_eq!(VolumeHeader::decode(&[0; 4096]), Err(HeaderError::BadMagic));
    }
}
