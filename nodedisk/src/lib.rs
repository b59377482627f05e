//! The node-level layout of BMonitor's physical disk.
//!
//! One physical disk per node holds a **node header** (two copies), a
//! **key store** sealed to the node (landlord key `K_L`, per-lease tenant
//! keys `K_T`), a **volume table** (named per-VM volumes) and the volumes
//! themselves, each a `blockcrypt` encrypted volume over its own block
//! range. This crate is the logic; the hypervisor supplies the disk (a
//! [`BlockDevice`]: virtio-blk, or memory when the node has none), the
//! 32-byte node seal key (from the TPM, or from the boot image's
//! provisioning secret), and random bytes (RDRAND). See
//! `docs/disk-format.md` for the byte layout and the security argument.
//!
//! - [`NodeDisk::format`] / [`NodeDisk::open`] / [`is_formatted`]: first and later boots.
//! - [`NodeDisk::create_volume`], [`NodeDisk::open_volume`] (a [`VolumeHandle`]
//!   with 512-byte sector read/write/flush), [`NodeDisk::delete_volume`], [`NodeDisk::list`].
//! - [`NodeDisk::rotate_landlord_key`], [`NodeDisk::set_tenant_key`],
//!   [`NodeDisk::regenerate_tenant_key`] (crypto-erase), [`NodeDisk::rekey_volume`]
//!   (re-encryption keeping data).
//! - Replication of a volume's ciphertext to a partner node:
//!   [`NodeDisk::export_volume_secret`] / [`NodeDisk::create_replica_volume`],
//!   [`NodeDisk::read_replica_blocks`] / [`NodeDisk::write_replica_blocks`],
//!   dirty tracking ([`NodeDisk::track_dirty`], [`NodeDisk::take_dirty`]).
//!
//! Everything read from the disk is untrusted: every decoder is
//! bounds-checked and every structure is MACed under a key derived from the
//! seal key; a bad structure is an error value, never a panic.
//!
//! # Several CPUs and the lock order
//!
//! The device is shared between the node and its open volumes through
//! `Arc<spin::Mutex<D>>`, and each open volume through an
//! `Arc<spin::Mutex<..>>` slot held by its [`VolumeHandle`] (the node keeps
//! a `Weak` to it). So with `D: Send`, [`NodeDisk`] is `Send` and
//! [`VolumeHandle`] and [`SharedDevice`] are `Send + Sync`: a VM's handle
//! does its I/O on the CPU running the VM while the boot CPU uses the node
//! (`&mut NodeDisk` itself is one CPU at a time). There are two kinds of
//! lock, always taken in this order:
//!
//! 1. a **volume slot** (one per open volume): held by each
//!    [`VolumeHandle`] call for its duration, and by [`NodeDisk`] while it
//!    deletes, re-keys or re-initialises that open volume or reads its
//!    replica blocks;
//! 2. a volume's **dirty map** (replication): held by a handle's write
//!    (inside its slot lock) and by [`NodeDisk::take_dirty`] and friends;
//! 3. the **device**: held by [`SharedDevice`] for one device call
//!    (read/write of blocks, flush, barrier) and nothing else.
//!
//! No code holds the device lock while taking a slot lock, or holds two
//! slot locks at once; the node's own structures (header, key store,
//! table) take the device lock alone. Spin locks do not detect
//! re-entry (a `RefCell` would have panicked; a spin lock taken twice on
//! one CPU spins forever), so callers must keep to the order too: do not
//! lock [`NodeDisk::device`] around a call into this crate, and do not use
//! these types from an interrupt handler that may have interrupted a
//! holder on the same CPU. A handle's call waits while the node re-keys or
//! rebuilds its volume; the node's delete/re-key waits for a handle's call
//! in progress.
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

mod crypto;
pub mod header;
pub mod keystore;
mod node;
pub mod shared;
pub mod table;

use alloc::string::String;
use core::fmt;

pub use blockcrypt::{BlockDevice, DeviceError, MemDevice, BLOCK_SIZE};
pub use crypto::{SealKey, RANDOM_LEN};
pub use header::{NodeHeader, NodeId};
pub use node::{
    is_formatted, DirtyBatch, NodeDisk, VolumeHandle, VolumeInfo, VolumeSecret, MAX_DIRTY_BITMAP_BYTES,
    VOLUME_SECRET_LEN,
};
pub use shared::SharedDevice;
pub use table::{VolumeEntry, MAX_NAME_LEN};

/// Size of a guest-visible sector: volumes are sized and addressed in
/// 512-byte sectors, as virtio-blk counts them, and stored in 4 KiB
/// encrypted blocks.
pub const SECTOR_SIZE: usize = 512;

/// Identifies a lease (one tenant's contract on this node); its volumes
/// share the lease's tenant key. Same width as `mgmt-proto`'s `LeaseId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub u32);

/// Why a decoder refused bytes read from the disk (before any MAC check).
/// Callers see it as [`DiskError::Corrupt`]; the fuzz target sees it directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    Truncated,
    /// The magic number is not there: not this structure.
    BadMagic,
    /// A version this code does not understand.
    BadVersion(u16),
    /// A field is out of range or inconsistent; names the field.
    BadField(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "truncated"),
            Self::BadMagic => write!(f, "bad magic"),
            Self::BadVersion(v) => write!(f, "unsupported version {v}"),
            Self::BadField(name) => write!(f, "bad field {name}"),
        }
    }
}

/// Why a node-disk operation failed. Device failures, tampering and
/// caller mistakes are distinct so the hypervisor can report each rightly
/// (an I/O error to a guest, a console error, or a refusal to boot the disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The node header is intact but sealed with another seal key: the disk
    /// belongs to another node (or the TPM/provisioning secret changed).
    WrongNode,
    /// Neither node-header copy carries the magic: an empty disk (format it).
    NotFormatted,
    /// [`NodeDisk::format`] refuses a disk that carries a node header.
    AlreadyFormatted,
    /// A structure on disk fails its checks (tampered, or damaged beyond
    /// the backup copy); names the structure.
    Corrupt {
        /// Which structure: "node header", "key store", "volume table", "volume header", ...
        what: &'static str,
    },
    /// The disk is smaller than the layout needs.
    DiskTooSmall {
        /// Blocks present.
        blocks: u64,
    },
    /// No free range of blocks is large enough for the volume.
    NoSpace {
        /// Blocks the volume needs.
        needed_blocks: u64,
    },
    /// The volume table or key store has no room for another entry.
    TableFull {
        /// Which: "volume table" or "key store".
        what: &'static str,
    },
    /// No volume of that name.
    NoSuchVolume,
    /// A volume of that name already exists.
    VolumeExists,
    /// The volume is already open (a volume belongs to one VM at a time).
    Busy,
    /// A volume name is empty, too long, or has characters outside `A-Z a-z 0-9 _ . -`.
    BadName,
    /// A volume size of 0 sectors or beyond what the format can address.
    BadSize {
        /// Sectors asked for.
        sectors: u64,
    },
    /// The lease has no tenant key (for [`NodeDisk::regenerate_tenant_key`]).
    NoTenantKey {
        /// The lease.
        lease: LeaseId,
    },
    /// The lease already has a tenant key (for [`NodeDisk::set_tenant_key`]).
    TenantKeyExists {
        /// The lease.
        lease: LeaseId,
    },
    /// A sector of a volume failed authentication (tampered, misplaced or
    /// from another key): report an I/O error to the guest and count it.
    Integrity {
        /// The volume.
        volume: String,
        /// The first 512-byte sector of the 4 KiB block that failed.
        sector: u64,
    },
    /// A request outside the volume.
    OutOfRange {
        /// First 512-byte sector asked for.
        sector: u64,
        /// Bytes asked for.
        len: usize,
    },
    /// A buffer that is not a whole number of 512-byte sectors.
    BadLength {
        /// Its length.
        len: usize,
    },
    /// A counter or epoch cannot advance any further (after ~2^32 events).
    Exhausted {
        /// Which counter.
        what: &'static str,
    },
    /// The device failed.
    Io(DeviceError),
    /// Key derivation failed (not expected with these parameters; reported, not assumed).
    Crypto,
    /// [`NodeDisk::create_replica_volume`]: a volume with that blockcrypt
    /// volume id is already on this node (two volumes must never share a
    /// volume key).
    VolumeIdExists {
        /// The volume id.
        id: [u8; 16],
        /// The volume that has it.
        volume: String,
    },
    /// A replica-block request beyond the volume's replicable region.
    ReplicaRange {
        /// First block asked for.
        first: u64,
        /// Blocks asked for.
        blocks: u64,
        /// The volume's replicable blocks ([`NodeDisk::replica_blocks`]).
        limit: u64,
    },
    /// A replica-block buffer that is not a whole number of 4096-byte blocks.
    BadBlockLength {
        /// Its length.
        len: usize,
    },
    /// Dirty tracking is off for the volume ([`NodeDisk::track_dirty`]).
    NotTracked {
        /// The volume.
        volume: String,
    },
    /// The volume is too large for a dirty bitmap of at most
    /// [`MAX_DIRTY_BITMAP_BYTES`] (one bit per replicable block).
    BitmapTooLarge {
        /// The volume's replicable blocks.
        blocks: u64,
        /// The most a bitmap covers.
        limit: u64,
    },
    /// [`NodeDisk::write_replica_blocks`] into a volume that is not a
    /// replica: raw ciphertext must never enter a volume that writes with
    /// its own counters under the same key.
    NotReplica {
        /// The volume.
        volume: String,
    },
    /// A write through the handle of a replica, which is read-only until
    /// [`NodeDisk::rekey_volume`] gives it a key of its own (promotion).
    ReadOnlyReplica {
        /// The volume.
        volume: String,
    },
}

impl From<DeviceError> for DiskError {
    fn from(e: DeviceError) -> Self {
        Self::Io(e)
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongNode => write!(f, "disk is sealed to another node (wrong seal key)"),
            Self::NotFormatted => write!(f, "disk is not formatted"),
            Self::AlreadyFormatted => write!(f, "disk is already formatted"),
            Self::Corrupt { what } => write!(f, "{what} is corrupt or tampered"),
            Self::DiskTooSmall { blocks } => write!(f, "disk of {blocks} blocks is too small"),
            Self::NoSpace { needed_blocks } => write!(f, "no free range of {needed_blocks} blocks"),
            Self::TableFull { what } => write!(f, "{what} is full"),
            Self::NoSuchVolume => write!(f, "no such volume"),
            Self::VolumeExists => write!(f, "volume already exists"),
            Self::Busy => write!(f, "volume is open"),
            Self::BadName => write!(f, "volume name must be 1-32 chars of A-Z a-z 0-9 _ . -"),
            Self::BadSize { sectors } => write!(f, "volume size of {sectors} sectors out of range"),
            Self::NoTenantKey { lease } => write!(f, "lease {} has no tenant key", lease.0),
            Self::TenantKeyExists { lease } => write!(f, "lease {} already has a tenant key", lease.0),
            Self::Integrity { volume, sector } => write!(f, "volume {volume}: sector {sector} fails integrity check"),
            Self::OutOfRange { sector, len } => write!(f, "{len} bytes at sector {sector} beyond volume"),
            Self::BadLength { len } => write!(f, "buffer of {len} bytes is not whole 512-byte sectors"),
            Self::Exhausted { what } => write!(f, "{what} exhausted"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Crypto => write!(f, "key derivation failed"),
            Self::VolumeIdExists { id, volume } => {
                write!(f, "volume id ")?;
                for b in id {
                    write!(f, "{b:02x}")?;
                }
                write!(f, " is already used by volume {volume}")
            }
            Self::ReplicaRange { first, blocks, limit } => {
                write!(f, "replica blocks {first}+{blocks} beyond the volume's {limit} replicable blocks")
            }
            Self::BadBlockLength { len } => write!(f, "buffer of {len} bytes is not whole 4096-byte blocks"),
            Self::NotTracked { volume } => write!(f, "volume {volume}: dirty tracking is off"),
            Self::BitmapTooLarge { blocks, limit } => {
                write!(f, "dirty bitmap of {blocks} blocks exceeds the limit of {limit} blocks")
            }
            Self::NotReplica { volume } => write!(f, "volume {volume} is not a replica"),
            Self::ReadOnlyReplica { volume } => write!(f, "volume {volume} is a read-only replica (re-key to promote)"),
        }
    }
}
