//! Encrypted, integrity-checked block volumes for BMonitor guest disks.
//!
//! This is the pure core of the encrypted-disk feature: everything here is
//! logic (key derivation, sector sealing, on-disk record formats, crash-safe
//! write ordering), so it builds and is tested on the host, and the
//! hypervisor only supplies a [`BlockDevice`] (virtio-blk, or memory when the
//! node has no disk) and random bytes from RDRAND/RDSEED.
//!
//! - [`keys`]: landlord/tenant keys, the disk-key KDF chain, key wrapping.
//! - [`sector`]: ChaCha20-Poly1305 sealing of one sector.
//! - [`metadata`]: the on-disk per-sector record and the volume header.
//! - [`device`]: the block-device trait and an in-memory device.
//! - [`volume`]: an encrypted volume (read, write, flush, crypto-erase, re-key).
//!
//! Every byte read back from the device is treated as untrusted: decoding is
//! bounds-checked and a sector that does not verify is an error value naming
//! the sector, never garbage. See `README.md` for the disk format and for
//! what is and is not detected.
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

pub mod bytes;
pub mod device;
pub mod keys;
pub mod metadata;
pub mod sector;
pub mod volume;

pub use device::{BlockDevice, DeviceError, MemDevice, BLOCK_SIZE};
pub use keys::{DiskKey, DiskKeyChain, KeyError, KeySeed, LandlordKey, SecretKey, TenantKey, VolumeKey, WrappedKey};
pub use metadata::{HeaderError, RecordError, SectorRecord, VolumeHeader, VolumeState};
pub use sector::{SectorCipher, SectorContext, SectorError, SectorSize};
pub use volume::{IntegrityError, IntegrityReason, Layout, RekeyReport, Volume, VolumeError};

/// Identifies one volume. It is bound into the disk key, the wrapped volume
/// key and every sector's associated data, so data copied between volumes
/// never verifies. The hypervisor chooses it (e.g. random, or from the VM id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VolumeId(pub [u8; 16]);
