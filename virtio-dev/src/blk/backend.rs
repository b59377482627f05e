//! What stores a guest disk's sectors, and an in-memory implementation.

use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;

use super::SECTOR_SIZE;

/// Why the storage behind a guest disk refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The storage failed (or the range was outside it): the guest sees an I/O error.
    Io,
    /// A sector failed authentication (tampered, misplaced or rolled back):
    /// the guest sees an I/O error, never the unverified bytes, and it is counted.
    Integrity,
    /// The storage cannot do this kind of request: the guest sees UNSUPP.
    Unsupported,
}

/// Storage behind a guest disk; the hypervisor implements it (an encrypted
/// volume) and [`MemBackend`] is the in-memory stand-in. A sector is
/// [`SECTOR_SIZE`] bytes.
///
/// The device checks every range against [`Self::capacity_sectors`] before
/// calling, and passes buffers whose length is a non-zero multiple of
/// [`SECTOR_SIZE`] and at most [`super::IO_CHUNK`] bytes, so an implementor
/// sees only well-formed requests; it should still refuse a bad one with
/// [`BlockError::Io`] rather than panic.
pub trait BlockBackend {
    /// Size of the disk in sectors; fixed for the life of the device.
    fn capacity_sectors(&self) -> u64;
    /// Fills `buf` (a multiple of 512 bytes) from the disk starting at `sector`.
    /// On error the content of `buf` is not used.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Stores `data` (a multiple of 512 bytes) starting at `sector`.
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError>;
    /// Makes every completed write durable (VIRTIO_BLK_T_FLUSH).
    fn flush(&mut self) -> Result<(), BlockError>;
    /// The 20-byte serial the guest reads with VIRTIO_BLK_T_GET_ID (NUL-padded).
    fn device_id(&self) -> [u8; 20];
    /// Whether the guest may only read: then VIRTIO_BLK_F_RO is offered and writes fail.
    fn read_only(&self) -> bool {
        false
    }
}

/// A disk held in a heap buffer: for host tests, fuzzing, and VMs that run
/// without a physical disk. Sectors can be marked to fail authentication, to
/// exercise the [`BlockError::Integrity`] path.
#[derive(Clone, Debug)]
pub struct MemBackend {
    data: Vec<u8>,
    id: [u8; 20],
    read_only: bool,
    bad: BTreeSet<u64>,
    flushes: u64,
}

impl MemBackend {
    /// A zeroed disk of `sectors` sectors, with serial `id`.
    pub fn new(sectors: u64, id: [u8; 20]) -> Self {
        let len = usize::try_from(sectors).ok().and_then(|s| s.checked_mul(SECTOR_SIZE)).unwrap_or(0);
        Self { data: vec![0; len], id, read_only: false, bad: BTreeSet::new(), flushes: 0 }
    }

    /// Makes the disk read-only (offers VIRTIO_BLK_F_RO) or writable again.
    pub fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }

    /// From now on, reads covering `sector` fail with [`BlockError::Integrity`],
    /// as a sector whose tag does not verify would.
    pub fn fail_integrity(&mut self, sector: u64) {
        self.bad.insert(sector);
    }

    /// Forgets every sector marked with [`Self::fail_integrity`].
    pub fn clear_failures(&mut self) {
        self.bad.clear();
    }

    /// The whole disk, for checking what the guest wrote.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The whole disk, mutable, for preparing content.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// How many flushes the device asked for.
    pub fn flush_count(&self) -> u64 {
        self.flushes
    }

    /// The byte range of `len` bytes at `sector`, if whole sectors inside the disk.
    fn range(&self, sector: u64, len: usize) -> Result<core::ops::Range<usize>, BlockError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Io);
        }
        let start = usize::try_from(sector).ok().and_then(|s| s.checked_mul(SECTOR_SIZE)).ok_or(BlockError::Io)?;
        let end = start.checked_add(len).ok_or(BlockError::Io)?;
        if end > self.data.len() {
            return Err(BlockError::Io);
        }
        Ok(start..end)
    }
}

impl BlockBackend for MemBackend {
    fn capacity_sectors(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let range = self.range(sector, buf.len())?;
        let count = (buf.len() / SECTOR_SIZE) as u64;
        if self.bad.range(sector..sector.saturating_add(count)).next().is_some() {
            return Err(BlockError::Integrity);
        }
        buf.copy_from_slice(self.data.get(range).ok_or(BlockError::Io)?);
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::Io);
        }
        let range = self.range(sector, data.len())?;
        self.data.get_mut(range).ok_or(BlockError::Io)?.copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.flushes += 1;
        Ok(())
    }

    fn device_id(&self) -> [u8; 20] {
        self.id
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}
