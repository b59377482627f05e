//! Sealing and opening one sector with ChaCha20-Poly1305 under a volume key.
//!
//! - Nonce (12 bytes) = sector number (u32 LE) || write counter (u64 LE).
//!   The volume never writes the same (sector, counter) twice under one
//!   volume key, so a nonce is never reused for a key.
//! - Associated data = volume id (16) || sector (u64 LE) || counter (u64 LE)
//!   || flags (1 byte: which data slot, which key epoch). A sector copied to
//!   another position, another volume, another slot, or paired with another
//!   counter fails to open.
//! - The 16-byte tag and the counter live in the per-sector metadata record;
//!   the ciphertext is exactly as long as the plaintext.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use core::fmt;

use crate::keys::VolumeKey;
use crate::VolumeId;

/// Largest sector number a nonce can carry (32 bits): 16 TiB of 4 KiB
/// sectors, 2 TiB of 512-byte sectors per volume.
pub const MAX_SECTOR: u64 = u32::MAX as u64;

/// Length of the Poly1305 tag kept per sector.
pub const TAG_LEN: usize = 16;

/// Sector sizes the cipher accepts: 4 KiB (the volume's unit and a page) and
/// 512 bytes (virtio-blk's logical sector, for callers that seal those).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorSize {
    /// 512-byte logical sectors.
    B512,
    /// 4096-byte sectors.
    B4096,
}

impl SectorSize {
    /// Size in bytes.
    #[must_use]
    pub const fn bytes(self) -> usize {
        match self {
            Self::B512 => 512,
            Self::B4096 => 4096,
        }
    }
}

/// Why a sector could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorError {
    /// The buffer is not one whole sector of the cipher's size.
    BadLength {
        /// The length given.
        len: usize,
    },
    /// The sector number does not fit the nonce ([`MAX_SECTOR`]).
    SectorTooLarge(u64),
    /// Counter 0 is reserved for "never written".
    ZeroCounter,
    /// The tag did not verify: tampered data, tag, counter or flags, or a
    /// sector from another place, volume or key.
    TagMismatch,
}

impl fmt::Display for SectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLength { len } => write!(f, "sector buffer of {len} bytes"),
            Self::SectorTooLarge(s) => write!(f, "sector {s} beyond {MAX_SECTOR}"),
            Self::ZeroCounter => write!(f, "write counter 0 is reserved"),
            Self::TagMismatch => write!(f, "sector tag does not verify"),
        }
    }
}

/// Where and when a sector was written: everything the tag binds besides the
/// data itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorContext {
    /// The volume the sector belongs to.
    pub volume: VolumeId,
    /// Sector number within the volume.
    pub sector: u64,
    /// The sector's write counter (never 0, never repeated).
    pub counter: u64,
    /// The record's flag byte (slot and key epoch), bound so flipping it fails.
    pub flags: u8,
}

impl SectorContext {
    fn nonce(&self) -> Result<[u8; 12], SectorError> {
        let s = u32::try_from(self.sector).map_err(|_| SectorError::SectorTooLarge(self.sector))?;
        if self.counter == 0 {
            return Err(SectorError::ZeroCounter);
        }
        let mut n = [0u8; 12];
        let (a, b) = n.split_at_mut(4);
        a.copy_from_slice(&s.to_le_bytes());
        b.copy_from_slice(&self.counter.to_le_bytes());
        Ok(n)
    }

    fn associated_data(&self) -> [u8; 33] {
        let mut ad = [0u8; 33];
        let (v, rest) = ad.split_at_mut(16);
        let (s, rest) = rest.split_at_mut(8);
        let (c, f) = rest.split_at_mut(8);
        v.copy_from_slice(&self.volume.0);
        s.copy_from_slice(&self.sector.to_le_bytes());
        c.copy_from_slice(&self.counter.to_le_bytes());
        f.fill(self.flags);
        ad
    }
}

/// A volume key ready to seal and open sectors of one size.
#[derive(Clone)]
pub struct SectorCipher {
    aead: ChaCha20Poly1305,
    size: SectorSize,
}

impl fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SectorCipher").field("size", &self.size).finish_non_exhaustive()
    }
}

impl SectorCipher {
    /// Keys the cipher (the AEAD wipes its key copy when dropped).
    #[must_use]
    pub fn new(key: &VolumeKey, size: SectorSize) -> Self {
        Self { aead: key.secret().aead(), size }
    }

    /// The sector size this cipher seals.
    #[must_use]
    pub fn size(&self) -> SectorSize {
        self.size
    }

    /// Encrypts `data` (one sector) in place and returns its tag.
    ///
    /// # Errors
    /// [`SectorError::BadLength`], [`SectorError::SectorTooLarge`] or
    /// [`SectorError::ZeroCounter`]; then `data` is unchanged.
    pub fn seal(&self, ctx: &SectorContext, data: &mut [u8]) -> Result<[u8; TAG_LEN], SectorError> {
        self.check_len(data)?;
        let nonce = ctx.nonce()?;
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &ctx.associated_data(), data)
            .map_err(|_| SectorError::BadLength { len: data.len() })?;
        Ok(tag.into())
    }

    /// Verifies and decrypts `data` (one sealed sector) in place.
    ///
    /// # Errors
    /// [`SectorError::TagMismatch`] if anything bound by the tag changed; on
    /// any error `data` holds no plaintext (it is zeroed on a mismatch).
    pub fn open(&self, ctx: &SectorContext, data: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), SectorError> {
        self.check_len(data)?;
        let nonce = ctx.nonce()?;
        let r = self.aead.decrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &ctx.associated_data(),
            data,
            Tag::from_slice(tag),
        );
        if r.is_err() {
            data.fill(0);
            return Err(SectorError::TagMismatch);
        }
        Ok(())
    }

    fn check_len(&self, data: &[u8]) -> Result<(), SectorError> {
        if data.len() == self.size.bytes() {
            Ok(())
        } else {
            Err(SectorError::BadLength { len: data.len() })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use alloc::vec;

    fn cipher(size: SectorSize) -> SectorCipher {
        SectorCipher::new(&VolumeKey::from_bytes([3; 32]), size)
    }
    fn ctx(sector: u64, counter: u64) -> SectorContext {
        SectorContext { volume: VolumeId([1; 16]), sector, counter, flags: 0 }
    }

    #[test]
    fn roundtrip_both_sizes() {
        for size in [SectorSize::B512, SectorSize::B4096] {
            let c = cipher(size);
            let plain: alloc::vec::Vec<u8> = (0..size.bytes()).map(|i| i as u8).collect();
            let mut buf = plain.clone();
            let tag = c.seal(&ctx(5, 9), &mut buf).unwrap();
            assert_ne!(buf, plain);
            c.open(&ctx(5, 9), &mut buf, &tag).unwrap();
            assert_eq!(buf, plain);
        }
    }

    #[test]
    fn misplaced_or_stale_sectors_fail() {
        let c = cipher(SectorSize::B4096);
        let mut sealed = vec![0xAAu8; 4096];
        let tag = c.seal(&ctx(5, 9), &mut sealed).unwrap();
        let other = [
            ctx(6, 9),
            ctx(5, 8),
            ctx(5, 10),
            SectorContext { flags: 1, ..ctx(5, 9) },
            SectorContext { volume: VolumeId([2; 16]), ..ctx(5, 9) },
        ];
        for o in other {
            let mut b = sealed.clone();
            assert_eq!(c.open(&o, &mut b, &tag), Err(SectorError::TagMismatch), "{o:?}");
            assert!(b.iter().all(|&x| x == 0));
        }
        let mut b = sealed.clone();
        let other_key = SectorCipher::new(&VolumeKey::from_bytes([4; 32]), SectorSize::B4096);
        assert_eq!(other_key.open(&ctx(5, 9), &mut b, &tag), Err(SectorError::TagMismatch));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = cipher(SectorSize::B4096);
        let mut small = vec![0u8; 512];
        assert_eq!(c.seal(&ctx(0, 1), &mut small), Err(SectorError::BadLength { len: 512 }));
        let mut buf = vec![0u8; 4096];
        assert_eq!(c.seal(&ctx(0, 0), &mut buf), Err(SectorError::ZeroCounter));
        assert_eq!(c.seal(&ctx(MAX_SECTOR + 1, 1), &mut buf), Err(SectorError::SectorTooLarge(MAX_SECTOR + 1)));
        assert!(buf.iter().all(|&x| x == 0));
        assert_eq!(c.open(&ctx(0, 1), &mut small, &[0; 16]), Err(SectorError::BadLength { len: 512 }));
    }
}
