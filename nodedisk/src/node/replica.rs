//! Replication of a volume's ciphertext to a partner node.
//!
//! A volume's range is two header blocks (its volume key wrapped under
//! this node's disk key) and the *replicable region*: the per-sector
//! records and the two data slots per sector, ciphertext sealed under the
//! volume key alone. A partner holding a volume with the same blockcrypt
//! volume id, volume key and key epoch (a **replica**, whose header wraps
//! that key under the partner's own disk key) reads those blocks, copied
//! verbatim, as this node does. See "Replicas" in `docs/disk-format.md` for
//! the protocol and its consistency guarantee.
//!
//! Replicable block `i` is block `2 + i` of the volume's range: blocks
//! `0 .. M` are the record blocks, `M .. M + 2N` the data slots.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use blockcrypt::{BlockDevice, Layout, Volume, VolumeId, VolumeKey, VolumeState};
use core::fmt;
use zeroize::Zeroize;

use super::{volume_error, NodeDisk, SharedDevice};
use crate::crypto::{Entropy, RANDOM_LEN};
use crate::table::{geometry, VolumeEntry};
use crate::{DiskError, LeaseId, BLOCK_SIZE};

/// The most memory one volume's dirty bitmap may take (one bit per
/// replicable block): 1 MiB covers 8 Mi blocks, i.e. a volume of a little
/// under 16 GiB. Bounds what a tracked volume costs the hypervisor's heap.
pub const MAX_DIRTY_BITMAP_BYTES: usize = 1 << 20;
/// Most replicable blocks a dirty bitmap covers.
const MAX_TRACKED_BLOCKS: u64 = MAX_DIRTY_BITMAP_BYTES as u64 * 8;
/// Encoded size of a [`VolumeSecret`].
pub const VOLUME_SECRET_LEN: usize = 60;
/// Header blocks at the start of a volume's range (not replicated).
const HEADER_BLOCKS: u64 = 2;

/// What a partner node needs to open replicated ciphertext of a volume:
/// its blockcrypt volume id, volume key, key epoch (sector records carry
/// its parity) and size. The key is wiped on drop and never printed; move
/// it only over an authenticated, encrypted channel.
pub struct VolumeSecret {
    /// The blockcrypt volume id (bound into every sector's AD).
    pub volume_id: [u8; 16],
    key: [u8; 32],
    /// The volume's key epoch when exported.
    pub key_epoch: u32,
    /// Size in 512-byte sectors.
    pub sectors: u64,
}

impl fmt::Debug for VolumeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeSecret")
            .field("volume_id", &self.volume_id)
            .field("key_epoch", &self.key_epoch)
            .field("sectors", &self.sectors)
            .finish_non_exhaustive()
    }
}

impl Drop for VolumeSecret {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl VolumeSecret {
    /// Assembles a secret (the key bytes are copied; wipe the caller's copy).
    #[must_use]
    pub fn new(volume_id: [u8; 16], key: &[u8; 32], key_epoch: u32, sectors: u64) -> Self {
        Self { volume_id, key: *key, key_epoch, sectors }
    }

    /// The volume key (secret).
    #[must_use]
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// Encodes as volume id (16), key (32), key epoch (4, LE), sectors (8,
    /// LE), for the key exchange. The result holds the key: wipe it after use.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; VOLUME_SECRET_LEN] {
        let mut b = [0u8; VOLUME_SECRET_LEN];
        let (id, rest) = b.split_at_mut(16);
        let (key, rest) = rest.split_at_mut(32);
        let (epoch, sectors) = rest.split_at_mut(4);
        id.copy_from_slice(&self.volume_id);
        key.copy_from_slice(&self.key);
        epoch.copy_from_slice(&self.key_epoch.to_le_bytes());
        sectors.copy_from_slice(&self.sectors.to_le_bytes());
        b
    }

    /// Decodes [`VolumeSecret::to_bytes`]; exactly [`VOLUME_SECRET_LEN`]
    /// bytes, and a size a volume can have.
    ///
    /// # Errors
    /// [`DiskError::BadLength`] for another length, [`DiskError::BadSize`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, DiskError> {
        let b: &[u8; VOLUME_SECRET_LEN] = b.try_into().map_err(|_| DiskError::BadLength { len: b.len() })?;
        let (id, rest) = b.split_at(16);
        let (key, rest) = rest.split_at(32);
        let (epoch, sectors) = rest.split_at(4);
        let mut s = Self { volume_id: [0; 16], key: [0; 32], key_epoch: 0, sectors: 0 };
        s.volume_id.copy_from_slice(id);
        s.key.copy_from_slice(key);
        let mut e = [0u8; 4];
        e.copy_from_slice(epoch);
        s.key_epoch = u32::from_le_bytes(e);
        let mut n = [0u8; 8];
        n.copy_from_slice(sectors);
        s.sectors = u64::from_le_bytes(n);
        geometry(s.sectors)?;
        Ok(s)
    }
}

/// One batch of dirty replicable blocks from [`NodeDisk::take_dirty`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyBatch {
    /// Block indices, data-slot blocks first (ascending), then record
    /// blocks (ascending): applied in this order, the partner never gets a
    /// record before the data it names.
    pub blocks: Vec<u64>,
    /// Blocks still dirty after this batch.
    pub remaining: u64,
}

impl DirtyBatch {
    /// The batch as runs `(first, count)` of consecutive blocks, in batch
    /// order, so a caller reads and writes few large ranges.
    #[must_use]
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &b in &self.blocks {
            match out.last_mut() {
                Some((first, count)) if first.checked_add(*count) == Some(b) => *count += 1,
                _ => out.push((b, 1)),
            }
        }
        out
    }
}

/// One bit per replicable block of a volume.
#[derive(Debug)]
pub(crate) struct DirtyMap {
    words: Vec<u64>,
    blocks: u64,
    meta_blocks: u64,
    count: u64,
}

impl DirtyMap {
    /// A map of `blocks` blocks (the first `meta_blocks` of them records),
    /// all dirty.
    fn new(blocks: u64, meta_blocks: u64) -> Result<Self, DiskError> {
        let too_large = DiskError::BitmapTooLarge { blocks, limit: MAX_TRACKED_BLOCKS };
        if blocks > MAX_TRACKED_BLOCKS {
            return Err(too_large);
        }
        let n = usize::try_from(blocks.div_ceil(64)).map_err(|_| too_large.clone())?;
        let mut words = Vec::new();
        words.try_reserve_exact(n).map_err(|_| too_large)?;
        words.resize(n, 0);
        let mut m = Self { words, blocks, meta_blocks, count: 0 };
        m.set_all();
        Ok(m)
    }

    /// Marks every block dirty.
    pub(crate) fn set_all(&mut self) {
        self.words.fill(!0);
        let tail = self.blocks % 64;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last = (1u64 << tail) - 1;
            }
        }
        self.count = self.blocks;
    }

    /// Marks replicable block `i` dirty (ignored if out of range).
    fn set(&mut self, i: u64) {
        if i >= self.blocks {
            return;
        }
        let Ok(w) = usize::try_from(i / 64) else { return };
        if let Some(word) = self.words.get_mut(w) {
            let bit = 1u64 << (i % 64);
            if *word & bit == 0 {
                *word |= bit;
                self.count += 1;
            }
        }
    }

    /// Marks block `block` of the volume's range (as blockcrypt numbers
    /// them: headers are 0 and 1) dirty.
    pub(crate) fn mark_volume_block(&mut self, block: u64) {
        if let Some(i) = block.checked_sub(HEADER_BLOCKS) {
            self.set(i);
        }
    }

    /// Takes (clears and appends to `out`) dirty blocks in `[lo, hi)`,
    /// ascending, until `out` holds `max`.
    fn take_range(&mut self, lo: u64, hi: u64, max: usize, out: &mut Vec<u64>) {
        let hi = hi.min(self.blocks);
        let mut w = lo / 64;
        while w * 64 < hi && out.len() < max {
            let Some(word) = usize::try_from(w).ok().and_then(|i| self.words.get_mut(i)) else { return };
            let base = w * 64;
            let mut mask = !0u64;
            if lo > base {
                mask &= !0u64 << (lo - base);
            }
            if hi < base + 64 {
                mask &= (1u64 << (hi - base)) - 1;
            }
            while *word & mask != 0 && out.len() < max {
                let tz = u64::from((*word & mask).trailing_zeros());
                *word &= !(1u64 << tz);
                self.count -= 1;
                out.push(base + tz);
            }
            w += 1;
        }
    }

    /// Takes up to `max` dirty blocks, data slots before records.
    fn take(&mut self, max: usize) -> DirtyBatch {
        let mut blocks = Vec::new();
        let (meta, total) = (self.meta_blocks, self.blocks);
        self.take_range(meta, total, max, &mut blocks);
        self.take_range(0, meta, max, &mut blocks);
        DirtyBatch { blocks, remaining: self.count }
    }
}

/// Writes replicable blocks `(index, bytes)` to a volume's range.
fn put_blocks<D: BlockDevice>(dev: &mut SharedDevice<D>, blocks: Vec<(u64, &[u8])>) -> Result<(), DiskError> {
    for (i, chunk) in blocks {
        let block: &[u8; BLOCK_SIZE] = chunk.try_into().map_err(|_| DiskError::BadBlockLength { len: chunk.len() })?;
        dev.write_block(i + HEADER_BLOCKS, block)?;
    }
    Ok(())
}

impl<D: BlockDevice> NodeDisk<D> {
    fn entry(&self, name: &str) -> Result<VolumeEntry, DiskError> {
        self.table.find(name).cloned().ok_or(DiskError::NoSuchVolume)
    }

    fn range_dev(&self, e: &VolumeEntry) -> Result<SharedDevice<D>, DiskError> {
        self.root.sub(e.start_block, e.blocks).ok_or(DiskError::Corrupt { what: "volume table" })
    }

    /// Record blocks of a volume (the first replicable blocks).
    fn meta_blocks(e: &VolumeEntry) -> Result<u64, DiskError> {
        Ok(Layout::new(e.crypt_sectors()).map_err(|_| DiskError::Corrupt { what: "volume table" })?.meta_blocks)
    }

    /// Checks `[first, first + len/4096)` against the replicable region;
    /// returns the block count.
    fn replica_range(e: &VolumeEntry, first: u64, len: usize) -> Result<u64, DiskError> {
        if !len.is_multiple_of(BLOCK_SIZE) {
            return Err(DiskError::BadBlockLength { len });
        }
        let blocks = (len / BLOCK_SIZE) as u64;
        let limit = e.blocks.saturating_sub(HEADER_BLOCKS);
        match first.checked_add(blocks) {
            Some(end) if end <= limit => Ok(blocks),
            _ => Err(DiskError::ReplicaRange { first, blocks, limit }),
        }
    }

    pub(super) fn mark_all_if_tracked(&self, name: &str) {
        if let Some(cell) = self.dirty.get(name) {
            if let Some(map) = cell.lock().as_mut() {
                map.set_all();
            }
        }
    }

    /// What a partner needs to open this volume's replicated ciphertext:
    /// the volume id, volume key, key epoch and size. Mounts the volume if
    /// it is not open (which finishes a re-key a crash interrupted). The
    /// secret changes with [`NodeDisk::rekey_volume`] and with every key
    /// rotation that re-creates the volume: a replica made with an older
    /// secret then reads as integrity errors until it is re-created.
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::Corrupt`] (pending
    /// re-initialisation, bad header), [`DiskError::Busy`] (a re-key in
    /// progress on the open volume), or device errors.
    pub fn export_volume_secret(&mut self, name: &str) -> Result<VolumeSecret, DiskError> {
        let entry = self.entry(name)?;
        if self.is_stale(&entry) {
            return Err(DiskError::Corrupt { what: "volume keys (re-initialisation pending)" });
        }
        let secret = |vol: &Volume<SharedDevice<D>>| {
            let key = vol.volume_key().ok_or(DiskError::Busy)?;
            Ok(VolumeSecret::new(entry.id.0, key.secret().as_bytes(), vol.key_epoch(), entry.sectors))
        };
        if let Some(slot) = self.live(name) {
            let s = slot.lock();
            return secret(s.as_ref().ok_or(DiskError::NoSuchVolume)?);
        }
        let vol =
            Volume::open(self.range_dev(&entry)?, self.disk_key(&entry)?, 0).map_err(|e| volume_error(name, e))?;
        secret(&vol)
    }

    /// Creates `name` for `lease` as a **replica** of another node's volume
    /// described by `secret`: same size, same blockcrypt volume id, volume
    /// key and key epoch, the key wrapped under this node's disk key for
    /// `lease` (`random` supplies the wrapping nonce). It starts empty (reads
    /// as zeros); [`NodeDisk::write_replica_blocks`] fills it with the
    /// primary's ciphertext. Its handles read but do not write (that would
    /// reuse the primary's nonces) until [`NodeDisk::rekey_volume`] gives it
    /// a key of its own: that is the promotion to a primary.
    ///
    /// Crash-safe as [`NodeDisk::create_volume`]: the volume is built in
    /// free space (header last), then the table is committed.
    ///
    /// # Errors
    /// [`DiskError::VolumeIdExists`] (the id is on this node already), and
    /// as [`NodeDisk::create_volume`].
    pub fn create_replica_volume(
        &mut self,
        name: &str,
        lease: LeaseId,
        secret: &VolumeSecret,
        random: &[u8; RANDOM_LEN],
    ) -> Result<(), DiskError> {
        let (entry, crypt_sectors) = self.place_volume(name, lease, secret.sectors, || {
            let id = VolumeId(secret.volume_id);
            match self.table.entries.iter().find(|x| x.id == id) {
                Some(other) => Err(DiskError::VolumeIdExists { id: id.0, volume: other.name.clone() }),
                None => Ok(id),
            }
        })?;
        let dev = self.volume_device(&entry)?;
        let seed = Entropy::new(random).seed(entry.id)?;
        let key = VolumeKey::from_bytes(secret.key);
        let vol = Volume::create_replica(dev, self.disk_key(&entry)?, crypt_sectors, key, secret.key_epoch, &seed)
            .map_err(|err| volume_error(name, err))?;
        drop(vol);
        self.commit_new_volume(entry)
    }

    /// Number of replicable blocks of a volume: every block of its range
    /// but the two header blocks (records, then data slots).
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`].
    pub fn replica_blocks(&self, name: &str) -> Result<u64, DiskError> {
        Ok(self.entry(name)?.blocks.saturating_sub(HEADER_BLOCKS))
    }

    /// Reads replicable blocks `first ..` (ciphertext, as on the disk) into
    /// `buf` (whole 4096-byte blocks). Allowed while the volume is open: the
    /// read holds the volume's lock, so it sees each handle write whole
    /// (all of its blocks or none).
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::BadBlockLength`],
    /// [`DiskError::ReplicaRange`] (names the limit), or device errors.
    pub fn read_replica_blocks(&mut self, name: &str, first: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let entry = self.entry(name)?;
        Self::replica_range(&entry, first, buf.len())?;
        let mut dev = self.range_dev(&entry)?;
        let slot = self.live(name);
        // Slot lock (if open), then the device lock per block.
        let _held = slot.as_ref().map(|s| s.lock());
        for (b, chunk) in (first + HEADER_BLOCKS..).zip(buf.chunks_exact_mut(BLOCK_SIZE)) {
            let block: &mut [u8; BLOCK_SIZE] =
                chunk.try_into().map_err(|_| DiskError::BadBlockLength { len: BLOCK_SIZE })?;
            dev.read_block(b, block)?;
        }
        Ok(())
    }

    /// Writes replicable blocks `first ..` of a replica from `data` (whole
    /// 4096-byte blocks of the primary's ciphertext, as
    /// [`NodeDisk::read_replica_blocks`] gave them), durable when this
    /// returns. Within one call the data-slot blocks are written first,
    /// then (after a barrier) the record blocks. Refused while the volume is
    /// open ([`DiskError::Busy`]: close the replica's handle first), and
    /// for a volume that is not a replica. Nothing is written when a check
    /// fails.
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::Busy`],
    /// [`DiskError::BadBlockLength`], [`DiskError::ReplicaRange`] (names the
    /// limit), [`DiskError::NotReplica`], [`DiskError::Corrupt`] (its header
    /// does not verify), or device errors.
    pub fn write_replica_blocks(&mut self, name: &str, first: u64, data: &[u8]) -> Result<(), DiskError> {
        let entry = self.entry(name)?;
        if self.live(name).is_some() {
            return Err(DiskError::Busy);
        }
        let count = Self::replica_range(&entry, first, data.len())?;
        if self.is_stale(&entry) {
            return Err(DiskError::Corrupt { what: "volume keys (re-initialisation pending)" });
        }
        let mut dev = self.range_dev(&entry)?;
        let header = Volume::inspect(&mut dev, &self.disk_key(&entry)?).map_err(|e| volume_error(name, e))?;
        if header.state != VolumeState::Replica || header.volume != entry.id {
            return Err(DiskError::NotReplica { volume: String::from(name) });
        }
        if count == 0 {
            return Ok(());
        }
        let meta = Self::meta_blocks(&entry)?;
        let blocks = (first..).zip(data.chunks_exact(BLOCK_SIZE));
        let (records, slots): (Vec<_>, Vec<_>) = blocks.partition(|(i, _)| *i < meta);
        put_blocks(&mut dev, slots)?;
        // The data slots are durable before the records that name them.
        dev.barrier()?;
        put_blocks(&mut dev, records)?;
        dev.flush()?;
        Ok(())
    }

    /// Turns dirty tracking of a volume on or off. Turning it on starts
    /// with **every** replicable block dirty (the partner's state is
    /// unknown: a full copy), and from then on every block a handle of the
    /// volume writes is marked; turning it on again keeps the current map;
    /// off drops it. Kept in memory only: after a reboot tracking is off
    /// and the partner needs a full copy again.
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::BitmapTooLarge`] (more than
    /// [`MAX_DIRTY_BITMAP_BYTES`] · 8 replicable blocks).
    pub fn track_dirty(&mut self, name: &str, on: bool) -> Result<(), DiskError> {
        let entry = self.entry(name)?;
        let cell = Arc::clone(self.dirty.entry(String::from(name)).or_default());
        let mut map = cell.lock();
        if !on {
            *map = None;
        } else if map.is_none() {
            *map = Some(DirtyMap::new(entry.blocks.saturating_sub(HEADER_BLOCKS), Self::meta_blocks(&entry)?)?);
        }
        Ok(())
    }

    /// Whether dirty tracking is on for `name`.
    #[must_use]
    pub fn is_tracking_dirty(&self, name: &str) -> bool {
        self.dirty.get(name).is_some_and(|c| c.lock().is_some())
    }

    fn with_map<R>(&self, name: &str, f: impl FnOnce(&mut DirtyMap) -> R) -> Result<R, DiskError> {
        self.entry(name)?;
        let not_tracked = || DiskError::NotTracked { volume: String::from(name) };
        let cell = self.dirty.get(name).ok_or_else(not_tracked)?;
        let mut map = cell.lock();
        Ok(f(map.as_mut().ok_or_else(not_tracked)?))
    }

    /// Takes (returns and clears) up to `max` dirty replicable blocks of a
    /// tracked volume: data-slot blocks first, then record blocks, so a
    /// record block is only taken once no data block is dirty. Read them
    /// with [`NodeDisk::read_replica_blocks`] after this returns, apply
    /// them on the partner in this order, and give back a batch whose
    /// delivery failed with [`NodeDisk::mark_dirty`].
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::NotTracked`].
    pub fn take_dirty(&mut self, name: &str, max: usize) -> Result<DirtyBatch, DiskError> {
        self.with_map(name, |m| m.take(max))
    }

    /// Marks every replicable block of a tracked volume dirty (a full
    /// resync, e.g. for a new or re-created replica).
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::NotTracked`].
    pub fn mark_dirty_all(&mut self, name: &str) -> Result<(), DiskError> {
        self.with_map(name, DirtyMap::set_all)
    }

    /// Marks `blocks` dirty again (a batch whose delivery failed). All are
    /// checked first: one out of range marks none.
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::NotTracked`],
    /// [`DiskError::ReplicaRange`] (names the limit).
    pub fn mark_dirty(&mut self, name: &str, blocks: &[u64]) -> Result<(), DiskError> {
        self.with_map(name, |m| {
            if let Some(&bad) = blocks.iter().find(|&&b| b >= m.blocks) {
                return Err(DiskError::ReplicaRange { first: bad, blocks: 1, limit: m.blocks });
            }
            for &b in blocks {
                m.set(b);
            }
            Ok(())
        })?
    }

    /// Dirty replicable blocks of a tracked volume.
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::NotTracked`].
    pub fn dirty_count(&self, name: &str) -> Result<u64, DiskError> {
        self.with_map(name, |m| m.count)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;

    #[test]
    fn bitmap_limit_is_enforced() {
        assert!(DirtyMap::new(MAX_TRACKED_BLOCKS, 1).is_ok());
        let err = DirtyMap::new(MAX_TRACKED_BLOCKS + 1, 1).unwrap_err();
        assert_eq!(err, DiskError::BitmapTooLarge { blocks: MAX_TRACKED_BLOCKS + 1, limit: MAX_TRACKED_BLOCKS });
        assert!(alloc::format!("{err}").contains("8388608 blocks"));
        assert_eq!(MAX_DIRTY_BITMAP_BYTES, 1 << 20);
    }

    #[test]
    fn take_orders_data_before_records_across_word_edges() {
        // 130 records then data: boundaries inside words.
        let mut m = DirtyMap::new(200, 130).unwrap();
        assert_eq!(m.count, 200);
        let first = m.take(70);
        assert_eq!(first.blocks, (130..200).collect::<Vec<_>>());
        assert_eq!(first.remaining, 130);
        let rest = m.take(1000);
        assert_eq!(rest.blocks, (0..130).collect::<Vec<_>>());
        assert_eq!((rest.remaining, m.take(5)), (0, DirtyBatch::default()));
        for i in [199, 0, 63, 64, 129, 130, 500] {
            m.set(i);
        }
        m.mark_volume_block(1); // a header block: ignored
        m.mark_volume_block(2 + 5);
        assert_eq!(m.count, 7);
        assert_eq!(m.take(3).blocks, [130, 199, 0]);
        let b = m.take(10);
        assert_eq!((b.blocks, b.remaining), (alloc::vec![5, 63, 64, 129], 0));
        m.set_all();
        assert_eq!(m.count, 200);
        assert_eq!(m.words[3], (1 << 8) - 1);
    }

    #[test]
    fn runs_join_consecutive_blocks_in_order() {
        let b = DirtyBatch { blocks: alloc::vec![5, 6, 7, 9, 0, 1], remaining: 0 };
        assert_eq!(b.runs(), [(5, 3), (9, 1), (0, 2)]);
        assert!(DirtyBatch::default().runs().is_empty());
    }
}
