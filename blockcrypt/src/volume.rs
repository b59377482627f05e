//! An encrypted volume of 4 KiB sectors over a [`BlockDevice`].
//!
//! # Layout (in 4 KiB blocks)
//!
//! ```text
//! 0, 1             two header copies; the valid one with the highest generation wins
//! 2 .. 2+M         metadata: one 32-byte record per sector, 128 per block
//! 2+M .. 2+M+2N    data: two slots per sector (sector s: blocks 2+M+2s and 2+M+2s+1)
//! ```
//!
//! # Write order (each sector is old or new after a crash)
//!
//! A write never touches the data the current record points at:
//!
//! 1. read the metadata block; the new counter is `max(old + 1, floor)`;
//! 2. seal the new data and write it to the sector's *other* slot;
//! 3. barrier (the data is durable before the record that points at it);
//! 4. rewrite the metadata block with the new record (counter, slot, tag).
//!
//! A cut before step 4 completes leaves the old record, which still points
//! at the intact old slot: the sector reads old. Records are 32-byte aligned
//! and never straddle a 512-byte device sector, so a torn metadata write
//! leaves each record wholly old or wholly new, and a new record is only
//! written after its data is durable. Multi-sector writes do steps 2 for
//! every sector of a metadata block, then one barrier, then one metadata
//! write. The cost is twice the data space.
//!
//! # Counters and nonces
//!
//! Each mount bumps the header generation `g` and sets `floor = g << 32`,
//! so every write counter of this mount exceeds those of every earlier mount
//! (unless a sector took 2^32 writes in one mount). A record rolled back
//! while the volume was off therefore never leads to a reused nonce, as long
//! as the header was not rolled back with it: pass a `min_generation` kept
//! in trusted storage (TPM NV) to [`Volume::open`] to catch that.
//!
//! # Keys
//!
//! Sectors are sealed with a random per-volume [`VolumeKey`] wrapped in the
//! header under the [`DiskKey`]. [`Volume::crypto_erase`] replaces it (old
//! data becomes unreadable, the volume reads as zeros);
//! [`Volume::rekey`] re-encrypts every sector under a fresh volume key and a
//! new disk key, keeping the data. Both are crash-safe: the header records
//! the operation, and [`Volume::open`] finishes it.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use crate::device::{BlockDevice, DeviceError, BLOCK_SIZE};
use crate::keys::{DiskKey, KeyError, KeySeed, VolumeKey, WrappedKey};
use crate::metadata::{
    HeaderError, RecordError, SectorRecord, VolumeHeader, VolumeState, FLAG_EPOCH, FLAG_SLOT, HEADER_LEN, RECORD_LEN,
};
use crate::sector::{SectorCipher, SectorContext, SectorError, SectorSize, MAX_SECTOR};
use crate::VolumeId;

/// Sector records per metadata block.
pub const RECORDS_PER_BLOCK: u64 = (BLOCK_SIZE / RECORD_LEN) as u64;
/// Volume sector size (one device block).
pub const SECTOR_SIZE: usize = BLOCK_SIZE;

const KEY_AD_LABEL: &[u8; 22] = b"BMonitor volume key v1";
const ZERO_BLOCK: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

/// Why a sector failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityReason {
    /// The tag did not verify (data, tag, counter, flags, or position changed).
    TagMismatch,
    /// The metadata record itself is malformed.
    BadRecord(RecordError),
    /// The record names a key epoch the volume has no key for.
    UnknownKeyEpoch,
}

/// A sector that does not verify: returned instead of its data, so the
/// hypervisor reports an I/O error to the guest and counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegrityError {
    /// The sector.
    pub sector: u64,
    /// What failed.
    pub reason: IntegrityReason,
}

/// Why a volume operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeError {
    /// The device failed.
    Device(DeviceError),
    /// A sector did not verify.
    Integrity(IntegrityError),
    /// Sectors `[sector, sector + count)` are not all inside the volume.
    OutOfRange {
        /// First sector asked for.
        sector: u64,
        /// Number of sectors asked for.
        count: u64,
    },
    /// A buffer is not a whole number of sectors.
    BadLength {
        /// Its length.
        len: usize,
    },
    /// The device is smaller than the layout needs.
    DeviceTooSmall {
        /// Blocks needed.
        needed: u64,
        /// Blocks present.
        have: u64,
    },
    /// Sector count 0 or above 2^32.
    BadSectorCount(u64),
    /// Neither header copy parses (the first copy's reason).
    NoHeader(HeaderError),
    /// The header belongs to another volume than the disk key.
    WrongVolume,
    /// A header parses but its MAC does not verify: wrong keys, or tampered.
    WrongKeyOrTampered,
    /// The header generation is older than the caller's trusted minimum:
    /// the whole disk was rolled back.
    RolledBack {
        /// Generation found.
        found: u64,
        /// Minimum expected.
        minimum: u64,
    },
    /// A key operation failed (e.g. the volume key did not unwrap).
    Key(KeyError),
    /// A sector's write counter cannot advance.
    CounterExhausted {
        /// The sector.
        sector: u64,
    },
    /// The header generation cannot advance (2^32 mounts).
    GenerationExhausted,
    /// The key epoch cannot advance.
    EpochExhausted,
    /// A write to a [`VolumeState::Replica`] volume: it shares its volume
    /// key with another node's volume, so its own writes could reuse that
    /// volume's nonces. Re-key it first ([`Volume::rekey`]).
    ReadOnlyReplica,
}

impl From<DeviceError> for VolumeError {
    fn from(e: DeviceError) -> Self {
        Self::Device(e)
    }
}

impl From<KeyError> for VolumeError {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(e) => write!(f, "{e}"),
            Self::Integrity(e) => write!(f, "sector {} fails integrity check: {:?}", e.sector, e.reason),
            Self::OutOfRange { sector, count } => write!(f, "sectors {sector}+{count} beyond volume"),
            Self::BadLength { len } => write!(f, "buffer of {len} bytes is not whole sectors"),
            Self::DeviceTooSmall { needed, have } => write!(f, "device has {have} blocks, volume needs {needed}"),
            Self::BadSectorCount(n) => write!(f, "sector count {n} out of range"),
            Self::NoHeader(e) => write!(f, "{e}"),
            Self::WrongVolume => write!(f, "header is for another volume"),
            Self::WrongKeyOrTampered => write!(f, "header MAC does not verify (wrong keys or tampered)"),
            Self::RolledBack { found, minimum } => write!(f, "header generation {found} older than {minimum}"),
            Self::Key(e) => write!(f, "{e}"),
            Self::CounterExhausted { sector } => write!(f, "write counter of sector {sector} exhausted"),
            Self::GenerationExhausted => write!(f, "header generation exhausted"),
            Self::EpochExhausted => write!(f, "key epoch exhausted"),
            Self::ReadOnlyReplica => write!(f, "volume is a replica (read-only until re-keyed)"),
        }
    }
}

/// Where a volume's parts are on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of sectors.
    pub sector_count: u64,
    /// First metadata block.
    pub meta_start: u64,
    /// Number of metadata blocks.
    pub meta_blocks: u64,
    /// First data block.
    pub data_start: u64,
    /// Blocks the volume needs.
    pub total_blocks: u64,
}

impl Layout {
    /// The layout of a volume of `sector_count` sectors.
    ///
    /// # Errors
    /// [`VolumeError::BadSectorCount`] for 0 or more than 2^32 sectors.
    pub fn new(sector_count: u64) -> Result<Self, VolumeError> {
        let bad = VolumeError::BadSectorCount(sector_count);
        if sector_count == 0 || sector_count > MAX_SECTOR + 1 {
            return Err(bad);
        }
        let meta_blocks = sector_count.div_ceil(RECORDS_PER_BLOCK);
        let data_start = meta_blocks.checked_add(2).ok_or(bad)?;
        let total_blocks = sector_count.checked_mul(2).and_then(|d| d.checked_add(data_start)).ok_or(bad)?;
        Ok(Self { sector_count, meta_start: 2, meta_blocks, data_start, total_blocks })
    }

    /// Metadata block holding sector `s`'s record, and the record's index in it.
    fn meta_pos(&self, s: u64) -> (u64, usize) {
        (self.meta_start + s / RECORDS_PER_BLOCK, (s % RECORDS_PER_BLOCK) as usize)
    }

    /// Block of slot `slot` (0 or 1) of sector `s`.
    fn data_block(&self, s: u64, slot: u8) -> u64 {
        self.data_start + 2 * s + u64::from(slot & 1)
    }
}

/// What a re-key did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Sectors re-encrypted under the new key.
    pub reencrypted: u64,
    /// Sectors that failed verification and were left as they were (they
    /// stay unreadable: an integrity error, never garbage).
    pub unreadable: u64,
}

/// An open encrypted volume. Holds the device exclusively, so nothing else
/// writes it while open.
pub struct Volume<D: BlockDevice> {
    dev: D,
    header: VolumeHeader,
    layout: Layout,
    disk_key: DiskKey,
    current_key: VolumeKey,
    current: SectorCipher,
    next: Option<(VolumeKey, SectorCipher)>,
    floor: u64,
    meta: Box<[u8; BLOCK_SIZE]>,
    data: Box<[u8; BLOCK_SIZE]>,
}

impl<D: BlockDevice> fmt::Debug for Volume<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Volume").field("header", &self.header).field("layout", &self.layout).finish_non_exhaustive()
    }
}

fn key_ad(volume: VolumeId, epoch: u32) -> [u8; 42] {
    let mut ad = [0u8; 42];
    let (l, rest) = ad.split_at_mut(KEY_AD_LABEL.len());
    let (v, e) = rest.split_at_mut(16);
    l.copy_from_slice(KEY_AD_LABEL);
    v.copy_from_slice(&volume.0);
    e.copy_from_slice(&epoch.to_le_bytes());
    ad
}

fn wrap(disk_key: &DiskKey, key: &VolumeKey, nonce: [u8; 12], epoch: u32) -> Result<WrappedKey, VolumeError> {
    Ok(disk_key.wrapping_key()?.wrap(key.secret(), nonce, &key_ad(disk_key.volume(), epoch))?)
}

fn unwrap(disk_key: &DiskKey, w: &WrappedKey, epoch: u32) -> Result<VolumeKey, VolumeError> {
    let k = disk_key.wrapping_key()?.unwrap_key(w, &key_ad(disk_key.volume(), epoch))?;
    Ok(VolumeKey::from_bytes(*k.as_bytes()))
}

fn cipher(k: &VolumeKey) -> SectorCipher {
    SectorCipher::new(k, SectorSize::B4096)
}

/// Reads one header copy and checks it against the disk key.
fn load_header<D: BlockDevice>(dev: &mut D, block: u64, key: &DiskKey) -> Result<VolumeHeader, VolumeError> {
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    dev.read_block(block, &mut buf)?;
    let h = VolumeHeader::decode(&buf[..]).map_err(VolumeError::NoHeader)?;
    if h.volume != key.volume() {
        return Err(VolumeError::WrongVolume);
    }
    key.verify_header_mac(&h.mac_input(), &h.mac).map_err(|_| VolumeError::WrongKeyOrTampered)?;
    Ok(h)
}

/// Writes `h` with the next generation into the copy that generation names,
/// MACed under `key`, and makes it durable.
fn store_header<D: BlockDevice>(dev: &mut D, h: &mut VolumeHeader, key: &DiskKey) -> Result<(), VolumeError> {
    h.generation = h.generation.checked_add(1).ok_or(VolumeError::GenerationExhausted)?;
    h.key_links = key.links();
    h.mac = key.header_mac(&h.mac_input())?;
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    if let Some(dst) = block.get_mut(..HEADER_LEN) {
        dst.copy_from_slice(&h.encode());
    }
    dev.barrier()?;
    dev.write_block(h.generation & 1, &block)?;
    dev.flush()?;
    Ok(())
}

impl<D: BlockDevice> Volume<D> {
    /// Formats `dev` as a new, empty volume (every sector reads as zeros)
    /// keyed by `disk_key`, with a volume key from `seed`.
    ///
    /// # Errors
    /// Bad sector count, device too small, or a device error.
    pub fn create(mut dev: D, disk_key: DiskKey, sector_count: u64, seed: &KeySeed) -> Result<Self, VolumeError> {
        let layout = Layout::new(sector_count)?;
        if dev.block_count() < layout.total_blocks {
            return Err(VolumeError::DeviceTooSmall { needed: layout.total_blocks, have: dev.block_count() });
        }
        // Stale headers from an earlier volume must not win over this one.
        dev.write_block(0, &ZERO_BLOCK)?;
        dev.write_block(1, &ZERO_BLOCK)?;
        let current_key = seed.volume_key();
        let header = VolumeHeader {
            state: VolumeState::Initialising,
            key_links: disk_key.links(),
            volume: disk_key.volume(),
            generation: 0,
            sector_count,
            key_epoch: 0,
            current_key: wrap(&disk_key, &current_key, seed.nonce(false), 0)?,
            next_key: None,
            mac: [0; 32],
        };
        let mut v = Self::assemble(dev, header, layout, disk_key, current_key, None);
        v.write_header()?;
        v.floor = 1 << 32;
        v.finish_init()?;
        Ok(v)
    }

    /// Opens an existing volume with its disk key, finishing an erase or
    /// re-key a crash interrupted, and bumps the header generation (which
    /// raises the write-counter floor).
    ///
    /// `min_generation` is the lowest header generation the caller accepts
    /// (from trusted storage, e.g. a TPM NV index; 0 to skip): it detects a
    /// whole-disk rollback. After `open`, store [`Volume::generation`] there.
    ///
    /// # Errors
    /// No valid header, wrong keys, rollback, device too small, or device errors.
    pub fn open(mut dev: D, disk_key: DiskKey, min_generation: u64) -> Result<Self, VolumeError> {
        let a = load_header(&mut dev, 0, &disk_key);
        let b = load_header(&mut dev, 1, &disk_key);
        let header = match (a, b) {
            (Ok(x), Ok(y)) => {
                if x.generation >= y.generation {
                    x
                } else {
                    y
                }
            }
            (Ok(x), Err(_)) | (Err(_), Ok(x)) => x,
            (Err(e), Err(f)) => return Err(worst(e, f)),
        };
        if header.generation < min_generation {
            return Err(VolumeError::RolledBack { found: header.generation, minimum: min_generation });
        }
        let layout = Layout::new(header.sector_count)?;
        if dev.block_count() < layout.total_blocks {
            return Err(VolumeError::DeviceTooSmall { needed: layout.total_blocks, have: dev.block_count() });
        }
        let current_key = unwrap(&disk_key, &header.current_key, header.key_epoch)?;
        let next_key = match &header.next_key {
            Some(w) => {
                let epoch = header.key_epoch.checked_add(1).ok_or(VolumeError::EpochExhausted)?;
                Some(unwrap(&disk_key, w, epoch)?)
            }
            None => None,
        };
        let mut v = Self::assemble(dev, header, layout, disk_key, current_key, next_key);
        v.write_header()?;
        v.floor = v.header.generation.checked_mul(1 << 32).ok_or(VolumeError::GenerationExhausted)?;
        match v.header.state {
            VolumeState::Active | VolumeState::Replica => {}
            VolumeState::Initialising => v.finish_init()?,
            VolumeState::Rekeying => {
                v.finish_rekey()?;
            }
        }
        Ok(v)
    }

    /// Formats `dev` as an empty **replica** of another node's volume:
    /// same volume id (that of `disk_key`), sector count, volume key and key
    /// epoch as that volume, the key wrapped under this node's `disk_key`
    /// (with a nonce from `seed`, whose key part is unused). Ciphertext
    /// blocks copied verbatim from the other volume (every block but the
    /// two headers) then read here as they do there. The volume is in state
    /// [`VolumeState::Replica`]: readable, never written (that would reuse
    /// the other volume's nonces) until [`Volume::rekey`] gives it a key
    /// of its own.
    ///
    /// Order: both header blocks zeroed, metadata cleared, barrier, then the
    /// header (both copies). A crash before the header lands leaves no
    /// valid header (`open` fails), never a writable volume under the
    /// shared key.
    ///
    /// # Errors
    /// Bad sector count, device too small, or a device error.
    pub fn create_replica(
        mut dev: D,
        disk_key: DiskKey,
        sector_count: u64,
        key: VolumeKey,
        key_epoch: u32,
        seed: &KeySeed,
    ) -> Result<Self, VolumeError> {
        let layout = Layout::new(sector_count)?;
        if dev.block_count() < layout.total_blocks {
            return Err(VolumeError::DeviceTooSmall { needed: layout.total_blocks, have: dev.block_count() });
        }
        dev.write_block(0, &ZERO_BLOCK)?;
        dev.write_block(1, &ZERO_BLOCK)?;
        for i in 0..layout.meta_blocks {
            dev.write_block(layout.meta_start + i, &ZERO_BLOCK)?;
        }
        let header = VolumeHeader {
            state: VolumeState::Replica,
            key_links: disk_key.links(),
            volume: disk_key.volume(),
            generation: 0,
            sector_count,
            key_epoch,
            current_key: wrap(&disk_key, &key, seed.nonce(false), key_epoch)?,
            next_key: None,
            mac: [0; 32],
        };
        let mut v = Self::assemble(dev, header, layout, disk_key, key, None);
        // `store_header` puts a barrier before each header write.
        v.write_header_twice()?;
        v.floor = v.header.generation.checked_mul(1 << 32).ok_or(VolumeError::GenerationExhausted)?;
        Ok(v)
    }

    /// The newest valid header of the volume on `dev` under `disk_key`,
    /// without mounting it (nothing is written, nothing is finished).
    ///
    /// # Errors
    /// The same header errors as [`Volume::open`], or device errors.
    pub fn inspect(dev: &mut D, disk_key: &DiskKey) -> Result<VolumeHeader, VolumeError> {
        let a = load_header(dev, 0, disk_key);
        let b = load_header(dev, 1, disk_key);
        match (a, b) {
            (Ok(x), Ok(y)) => Ok(if x.generation >= y.generation { x } else { y }),
            (Ok(x), Err(_)) | (Err(_), Ok(x)) => Ok(x),
            (Err(e), Err(f)) => Err(worst(e, f)),
        }
    }

    fn assemble(
        dev: D,
        header: VolumeHeader,
        layout: Layout,
        disk_key: DiskKey,
        current_key: VolumeKey,
        next_key: Option<VolumeKey>,
    ) -> Self {
        let current = cipher(&current_key);
        let next = next_key.map(|k| {
            let c = cipher(&k);
            (k, c)
        });
        Self {
            dev,
            header,
            layout,
            disk_key,
            current_key,
            current,
            next,
            floor: 0,
            meta: Box::new([0; BLOCK_SIZE]),
            data: Box::new([0; BLOCK_SIZE]),
        }
    }

    fn write_header(&mut self) -> Result<(), VolumeError> {
        store_header(&mut self.dev, &mut self.header, &self.disk_key)
    }

    /// Writes the header into both copies, so no copy keeps a retired key.
    fn write_header_twice(&mut self) -> Result<(), VolumeError> {
        self.write_header()?;
        self.write_header()
    }

    /// Clears all metadata (every sector unwritten), then marks the volume active.
    fn finish_init(&mut self) -> Result<(), VolumeError> {
        for i in 0..self.layout.meta_blocks {
            self.dev.write_block(self.layout.meta_start + i, &ZERO_BLOCK)?;
        }
        self.header.state = VolumeState::Active;
        self.write_header_twice()
    }

    /// Number of 4 KiB sectors.
    #[must_use]
    pub fn sector_count(&self) -> u64 {
        self.layout.sector_count
    }

    /// The volume id.
    #[must_use]
    pub fn volume_id(&self) -> VolumeId {
        self.header.volume
    }

    /// Current header generation; keep it in trusted storage to detect a
    /// whole-disk rollback at the next [`Volume::open`].
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.header.generation
    }

    /// The key epoch (how many erases and re-keys the volume has had).
    #[must_use]
    pub fn key_epoch(&self) -> u32 {
        self.header.key_epoch
    }

    /// The volume key sealing the sectors, so that another node can open a
    /// replica of this volume's ciphertext ([`Volume::create_replica`]).
    /// `None` while a re-key is under way (two keys are in use). Handle it
    /// as the secret it is: whoever holds it and the ciphertext reads the
    /// volume.
    #[must_use]
    pub fn volume_key(&self) -> Option<&VolumeKey> {
        if self.next.is_some() {
            None
        } else {
            Some(&self.current_key)
        }
    }

    /// The current header (state, sizes, wrapped keys).
    #[must_use]
    pub fn header(&self) -> &VolumeHeader {
        &self.header
    }

    /// Where the volume's parts are on the device.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The underlying device.
    #[must_use]
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The underlying device, mutable (tests use it to tamper or cut power).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Closes the volume, returning the device (keys are wiped on drop).
    #[must_use]
    pub fn into_device(self) -> D {
        self.dev
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<u64, VolumeError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(VolumeError::BadLength { len });
        }
        let count = (len / SECTOR_SIZE) as u64;
        match sector.checked_add(count) {
            Some(end) if end <= self.layout.sector_count => Ok(count),
            _ => Err(VolumeError::OutOfRange { sector, count }),
        }
    }

    /// Reads one sector into `buf` (4096 bytes).
    ///
    /// # Errors
    /// [`VolumeError::Integrity`] if it does not verify; range, length or device errors.
    pub fn read_sector(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        if buf.len() != SECTOR_SIZE {
            return Err(VolumeError::BadLength { len: buf.len() });
        }
        self.read_sectors(sector, buf)
    }

    /// Writes one sector from `data` (4096 bytes).
    ///
    /// # Errors
    /// Range, length, counter or device errors.
    pub fn write_sector(&mut self, sector: u64, data: &[u8]) -> Result<(), VolumeError> {
        if data.len() != SECTOR_SIZE {
            return Err(VolumeError::BadLength { len: data.len() });
        }
        self.write_sectors(sector, data)
    }

    /// Reads consecutive sectors from `sector` into `buf` (a whole number of
    /// sectors). Sectors never written read as zeros. On an integrity error
    /// the failing sector is named and `buf` holds no unverified plaintext.
    ///
    /// # Errors
    /// [`VolumeError::Integrity`], range, length or device errors.
    pub fn read_sectors(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check_range(sector, buf.len())?;
        for (s, out) in (sector..).zip(buf.chunks_exact_mut(SECTOR_SIZE)) {
            let (mblock, idx) = self.layout.meta_pos(s);
            if idx == 0 || s == sector {
                self.dev.read_block(mblock, &mut self.meta)?;
            }
            let rec_bytes = self.meta.get(idx * RECORD_LEN..).unwrap_or(&[]);
            let integrity = |reason| VolumeError::Integrity(IntegrityError { sector: s, reason });
            let rec = SectorRecord::decode(rec_bytes).map_err(|e| integrity(IntegrityReason::BadRecord(e)))?;
            if !rec.is_written() {
                out.fill(0);
            } else {
                if self.cipher_for(rec.epoch_parity()).is_none() {
                    return Err(integrity(IntegrityReason::UnknownKeyEpoch));
                }
                let block: &mut [u8; BLOCK_SIZE] =
                    out.try_into().map_err(|_| VolumeError::BadLength { len: SECTOR_SIZE })?;
                if let Err(e) = self.dev.read_block(self.layout.data_block(s, rec.slot()), block) {
                    block.fill(0);
                    return Err(e.into());
                }
                let c = self.cipher_for(rec.epoch_parity()).ok_or(integrity(IntegrityReason::UnknownKeyEpoch))?;
                let ctx =
                    SectorContext { volume: self.header.volume, sector: s, counter: rec.counter, flags: rec.flags };
                c.open(&ctx, block, &rec.tag).map_err(|_| integrity(IntegrityReason::TagMismatch))?;
            }
        }
        Ok(())
    }

    /// The cipher for sectors sealed under the epoch of this parity, if the
    /// volume holds that key.
    fn cipher_for(&self, parity: u8) -> Option<&SectorCipher> {
        let cur = (self.header.key_epoch & 1) as u8;
        if parity == cur {
            Some(&self.current)
        } else {
            self.next.as_ref().map(|(_, c)| c)
        }
    }

    /// Writes consecutive sectors from `sector` (data: a whole number of
    /// sectors), in the crash-safe order described in the module docs. Data
    /// is durable after [`Volume::flush`].
    ///
    /// # Errors
    /// Range, length, counter or device errors. After an error each sector
    /// holds its old or its new contents.
    pub fn write_sectors(&mut self, sector: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.write_sectors_logged(sector, data, |_| {})
    }

    /// [`Volume::write_sectors`], calling `written(block)` with every
    /// device block it writes (data slots, then their metadata block; the
    /// header blocks 0 and 1 are never among them), each after that block
    /// was written (also when that write failed: the device may hold part
    /// of it). For change tracking (replication).
    ///
    /// # Errors
    /// As [`Volume::write_sectors`]; [`VolumeError::ReadOnlyReplica`] on a replica.
    pub fn write_sectors_logged(
        &mut self,
        sector: u64,
        data: &[u8],
        mut written: impl FnMut(u64),
    ) -> Result<(), VolumeError> {
        self.check_range(sector, data.len())?;
        if self.header.state == VolumeState::Replica {
            return Err(VolumeError::ReadOnlyReplica);
        }
        // Writes go under the newest key: the next one while re-keying.
        let (cipher, parity) = match &self.next {
            Some((_, c)) => (c, (self.header.key_epoch.wrapping_add(1) & 1) as u8),
            None => (&self.current, (self.header.key_epoch & 1) as u8),
        };
        let mut chunks = data.chunks_exact(SECTOR_SIZE).peekable();
        let mut s = sector;
        while chunks.peek().is_some() {
            let (mblock, first_idx) = self.layout.meta_pos(s);
            self.dev.read_block(mblock, &mut self.meta)?;
            // The sealed sectors of this metadata block, written together.
            let room = (RECORDS_PER_BLOCK as usize - first_idx).min(data.len() / SECTOR_SIZE);
            let mut sealed: Vec<(u64, [u8; BLOCK_SIZE])> = Vec::with_capacity(room);
            let mut idx = first_idx;
            while idx < RECORDS_PER_BLOCK as usize {
                let Some(chunk) = chunks.next() else { break };
                let off = idx * RECORD_LEN;
                let rec_bytes = self.meta.get(off..off + RECORD_LEN).unwrap_or(&[]);
                let (old_counter, old_slot, written) = match SectorRecord::decode(rec_bytes) {
                    Ok(r) => (r.counter, r.slot(), r.is_written()),
                    // A damaged record: its data is lost anyway; keep the
                    // counter moving forward and use either slot.
                    Err(_) => (SectorRecord::raw_counter(rec_bytes), 1, true),
                };
                let counter =
                    old_counter.checked_add(1).ok_or(VolumeError::CounterExhausted { sector: s })?.max(self.floor);
                let slot = if written { old_slot ^ 1 } else { 0 };
                let flags = (slot & FLAG_SLOT) | ((parity << 1) & FLAG_EPOCH);
                let ctx = SectorContext { volume: self.header.volume, sector: s, counter, flags };
                self.data.copy_from_slice(chunk);
                let tag = cipher.seal(&ctx, &mut self.data[..]).map_err(|e| match e {
                    SectorError::ZeroCounter => VolumeError::CounterExhausted { sector: s },
                    _ => VolumeError::OutOfRange { sector: s, count: 1 },
                })?;
                sealed.push((self.layout.data_block(s, slot), *self.data));
                let rec = SectorRecord { counter, flags, tag };
                if let Some(dst) = self.meta.get_mut(off..off + RECORD_LEN) {
                    dst.copy_from_slice(&rec.encode());
                }
                idx += 1;
                s += 1;
            }
            let writes: Vec<(u64, &[u8; BLOCK_SIZE])> = sealed.iter().map(|(b, d)| (*b, d)).collect();
            // Logged even when the write fails: the device may hold part of it.
            let done = self.dev.write_blocks(&writes);
            for (b, _) in &writes {
                written(*b);
            }
            done?;
            self.dev.barrier()?;
            let done = self.dev.write_block(mblock, &self.meta);
            written(mblock);
            done?;
        }
        Ok(())
    }

    /// Makes every completed write (data and metadata) durable.
    ///
    /// # Errors
    /// Device errors.
    pub fn flush(&mut self) -> Result<(), VolumeError> {
        Ok(self.dev.flush()?)
    }

    /// Crypto-erase: discards the volume key (earlier data is unreadable
    /// for good) and re-initialises the volume (all sectors read as zeros)
    /// under `new_disk_key` (e.g. derived from a new landlord or tenant key)
    /// and a fresh volume key from `seed`.
    ///
    /// The new header is durable before anything else changes: a crash
    /// after that leaves an `Initialising` volume, which `open` (with the
    /// new disk key) finishes.
    ///
    /// # Errors
    /// Wrong volume for the key, epoch exhausted, or device errors.
    pub fn crypto_erase(&mut self, new_disk_key: DiskKey, seed: &KeySeed) -> Result<(), VolumeError> {
        if new_disk_key.volume() != self.header.volume {
            return Err(VolumeError::WrongVolume);
        }
        let epoch = self.header.key_epoch.checked_add(1).ok_or(VolumeError::EpochExhausted)?;
        let key = seed.volume_key();
        self.header.current_key = wrap(&new_disk_key, &key, seed.nonce(false), epoch)?;
        self.header.next_key = None;
        self.header.key_epoch = epoch;
        self.header.state = VolumeState::Initialising;
        self.disk_key = new_disk_key;
        self.current = cipher(&key);
        self.current_key = key;
        self.next = None;
        self.write_header()?;
        self.finish_init()
    }

    /// Re-key keeping the data: re-encrypts every written sector under a
    /// fresh volume key from `seed`, wrapped under `new_disk_key` (which
    /// may be the same disk key). Keep both key sets until this returns: a
    /// crash part-way leaves a `Rekeying` volume that `open` with the new
    /// disk key finishes, and one before the first header write leaves the
    /// old volume, which opens with the old disk key.
    ///
    /// # Errors
    /// Wrong volume for the key, epoch exhausted, or device errors.
    pub fn rekey(&mut self, new_disk_key: DiskKey, seed: &KeySeed) -> Result<RekeyReport, VolumeError> {
        if new_disk_key.volume() != self.header.volume {
            return Err(VolumeError::WrongVolume);
        }
        let epoch = self.header.key_epoch;
        let next_epoch = epoch.checked_add(1).ok_or(VolumeError::EpochExhausted)?;
        let key = seed.volume_key();
        self.header.current_key = wrap(&new_disk_key, &self.current_key, seed.nonce(false), epoch)?;
        self.header.next_key = Some(wrap(&new_disk_key, &key, seed.nonce(true), next_epoch)?);
        self.header.state = VolumeState::Rekeying;
        self.disk_key = new_disk_key;
        let c = cipher(&key);
        self.next = Some((key, c));
        self.write_header()?;
        self.finish_rekey()
    }

    /// Re-encrypts every sector still under the old key, then makes the
    /// next key current.
    fn finish_rekey(&mut self) -> Result<RekeyReport, VolumeError> {
        let new_parity = (self.header.key_epoch.wrapping_add(1) & 1) as u8;
        let mut report = RekeyReport::default();
        let mut plain = Box::new([0u8; BLOCK_SIZE]);
        for s in 0..self.layout.sector_count {
            let (mblock, idx) = self.layout.meta_pos(s);
            if idx == 0 || s == 0 {
                self.dev.read_block(mblock, &mut self.meta)?;
            }
            let rec = SectorRecord::decode(self.meta.get(idx * RECORD_LEN..).unwrap_or(&[]));
            match rec {
                Ok(r) if !r.is_written() || r.epoch_parity() == new_parity => continue,
                Ok(_) => {}
                Err(_) => {
                    report.unreadable += 1;
                    continue;
                }
            }
            match self.read_sectors(s, &mut plain[..]) {
                Ok(()) => {
                    self.write_sectors(s, &plain[..])?;
                    report.reencrypted += 1;
                }
                Err(VolumeError::Integrity(_)) => report.unreadable += 1,
                Err(e) => return Err(e),
            }
            // read/write reused the metadata buffer: reload for the next sector.
            self.dev.read_block(mblock, &mut self.meta)?;
        }
        plain.fill(0);
        self.dev.flush()?;
        let Some((key, c)) = self.next.take() else { return Ok(report) };
        let Some(next_wrapped) = self.header.next_key.take() else { return Ok(report) };
        self.header.key_epoch = self.header.key_epoch.checked_add(1).ok_or(VolumeError::EpochExhausted)?;
        self.header.current_key = next_wrapped;
        self.header.state = VolumeState::Active;
        self.current_key = key;
        self.current = c;
        self.write_header_twice()?;
        Ok(report)
    }
}

/// The more telling of two header failures: a header that parsed but did not
/// verify says more than one that did not parse.
fn worst(a: VolumeError, b: VolumeError) -> VolumeError {
    let rank = |e: &VolumeError| match e {
        VolumeError::WrongKeyOrTampered => 3,
        VolumeError::WrongVolume => 2,
        VolumeError::NoHeader(HeaderError::BadMagic) => 0,
        _ => 1,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests;
