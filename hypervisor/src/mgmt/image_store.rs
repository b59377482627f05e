//! Image bytes on the node: one landlord-owned encrypted volume of the node
//! disk holds every uploaded image (extents handed out by the management
//! state), or memory within a fixed budget when the node has no disk.
//! Either way a completed image is checked by the kernel loader.

use crate::storage::node::AnyDisk;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use node_logic::images::{Extent, ImageStore, MemImageStore, StoreError, BLOCK};
use nodedisk::VolumeHandle;

const SECTOR: u64 = 512;

/// Image budget without a disk: images then live in the heap.
pub const MEMORY_BUDGET: u64 = 16 << 20;

/// Whether `image` is a kernel this node can boot (the loader's verdict)
/// or an initramfs a VM can be given (`VmSpec::initrd`): a newc cpio
/// archive or one compressed the ways Linux unpacks.
pub fn bootable(image: &[u8]) -> Result<(), String> {
    match guest_loader::parse_kernel(image, guest_loader::Preference::Auto) {
        Ok(_) => Ok(()),
        Err(_) if guest_loader::initramfs_format(image).is_some() => Ok(()),
        Err(e) => Err(format!("{e}; nor an initramfs (cpio, gzip, xz, zstd, lz4, bzip2, lzma)")),
    }
}

/// Most the memory budget grows to so the node config's preloaded images
/// (`[[image]]`, `preload_bytes` in all) fit besides it: half the heap.
pub const MEMORY_PRELOAD_MAX: u64 = 32 << 20;

/// A store in memory (nodes without a disk): [`MEMORY_BUDGET`], or room
/// for the preloaded images when they need more (up to [`MEMORY_PRELOAD_MAX`]).
pub fn memory(preload_bytes: u64) -> Box<dyn ImageStore> {
    Box::new(MemImageStore::new(MEMORY_BUDGET.max(preload_bytes.min(MEMORY_PRELOAD_MAX)), bootable))
}

/// Images in an encrypted volume of the node disk.
pub struct VolumeImageStore {
    vol: VolumeHandle<AnyDisk>,
    /// Whole sectors received in order and not yet written, from byte
    /// `pending_at`: every volume write ends with a barrier (a flush of the
    /// host's disk), so writing per megabyte instead of per 60 KiB chunk
    /// makes uploads several times faster. Drained before any read, check,
    /// flush or out-of-order write, so nothing is acknowledged as stored
    /// (an image is only when its commit has checked it) before it is.
    pending: Vec<u8>,
    pending_at: u64,
}

/// Bytes gathered before one volume write.
const WRITE_BEHIND: usize = 1 << 20;

// SAFETY: the volume handle shares the node disk through an `Rc`, which is
// not `Send`. BMonitor runs its node loop (management plane, storage,
// reconcile) on the boot CPU only; the store is created, used and dropped
// there and never reaches another CPU. SMP work must give the node disk a
// lock before serving management from another CPU.
unsafe impl Send for VolumeImageStore {}

impl VolumeImageStore {
    /// Uses `vol` (the image pool volume) for image bytes.
    pub fn new(vol: VolumeHandle<AnyDisk>) -> VolumeImageStore {
        VolumeImageStore { vol, pending: Vec::new(), pending_at: 0 }
    }

    /// Writes what is gathered.
    fn drain(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let r = self.vol.write(self.pending_at / SECTOR, &self.pending).map_err(disk_err);
        self.pending.clear();
        r
    }

    /// Sector-aligned bytes continuing the gathered run: gathered.
    fn gather(&mut self, offset: u64, bytes: &[u8]) -> Result<bool, StoreError> {
        let end = self.pending_at + self.pending.len() as u64;
        let aligned = offset.is_multiple_of(SECTOR) && (bytes.len() as u64).is_multiple_of(SECTOR);
        if !aligned || (!self.pending.is_empty() && offset != end) {
            return Ok(false);
        }
        if self.pending.is_empty() {
            self.pending_at = offset;
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= WRITE_BEHIND {
            self.drain()?;
        }
        Ok(true)
    }

    fn bytes(&self) -> u64 {
        self.vol.capacity_sectors() * SECTOR
    }

    fn span(&self, offset: u64, len: usize) -> Result<(), StoreError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.bytes() => Ok(()),
            _ => Err(String::from("access beyond the image volume")),
        }
    }
}

fn disk_err(e: nodedisk::DiskError) -> StoreError {
    format!("image volume: {e}")
}

impl ImageStore for VolumeImageStore {
    fn capacity_blocks(&self) -> u64 {
        self.bytes() / BLOCK
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.span(offset, bytes.len())?;
        if self.gather(offset, bytes)? {
            return Ok(());
        }
        self.drain()?;
        let mut done = 0usize;
        // A partial first sector: read, patch, write back.
        let head = (offset % SECTOR) as usize;
        if head != 0 {
            let mut sector = [0u8; SECTOR as usize];
            let n = (SECTOR as usize - head).min(bytes.len());
            self.vol.read(offset / SECTOR, &mut sector).map_err(disk_err)?;
            if let (Some(dst), Some(src)) = (sector.get_mut(head..head + n), bytes.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.vol.write(offset / SECTOR, &sector).map_err(disk_err)?;
            done = n;
        }
        // Whole sectors straight through.
        let whole = (bytes.len() - done) / SECTOR as usize * SECTOR as usize;
        if whole > 0 {
            let src = bytes.get(done..done + whole).ok_or("chunk bounds")?;
            self.vol.write((offset + done as u64) / SECTOR, src).map_err(disk_err)?;
            done += whole;
        }
        // A partial last sector (the end of an image): zero-padded.
        if done < bytes.len() {
            let mut sector = [0u8; SECTOR as usize];
            let rest = bytes.get(done..).ok_or("chunk bounds")?;
            if let Some(dst) = sector.get_mut(..rest.len()) {
                dst.copy_from_slice(rest);
            }
            self.vol.write((offset + done as u64) / SECTOR, &sector).map_err(disk_err)?;
        }
        Ok(())
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.span(offset, buf.len())?;
        self.drain()?;
        if !offset.is_multiple_of(SECTOR) {
            return Err(String::from("image reads start at a sector"));
        }
        let whole = buf.len() / SECTOR as usize * SECTOR as usize;
        if whole > 0 {
            let dst = buf.get_mut(..whole).ok_or("read bounds")?;
            self.vol.read(offset / SECTOR, dst).map_err(disk_err)?;
        }
        if whole < buf.len() {
            let mut sector = [0u8; SECTOR as usize];
            self.vol.read((offset + whole as u64) / SECTOR, &mut sector).map_err(disk_err)?;
            let dst = buf.get_mut(whole..).ok_or("read bounds")?;
            let n = dst.len();
            dst.copy_from_slice(sector.get(..n).ok_or("read bounds")?);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.drain()?;
        self.vol.flush().map_err(disk_err)
    }

    fn discard(&mut self, extent: Extent) {
        // The extent is free for the next image once the state forgets it;
        // its old ciphertext is overwritten then (never readable as an
        // image). Bytes of it still gathered need not be written at all.
        let start = extent.start.saturating_mul(BLOCK);
        let end = extent.start.saturating_add(extent.blocks).saturating_mul(BLOCK);
        if (start..end).contains(&self.pending_at) {
            self.pending.clear();
        }
    }

    fn check(&mut self, extent: Extent, size: u64) -> Result<(), StoreError> {
        self.drain()?;
        let len = usize::try_from(size).map_err(|_| String::from("image too large"))?;
        // The whole image is read once to run the loader on it.
        if !crate::mm::heap::has_room_for(len) {
            return Err(format!("not enough node memory to check a {} MiB image now; retry", len >> 20));
        }
        let mut buf = vec![0u8; len];
        self.read(extent.start * BLOCK, &mut buf)?;
        bootable(&buf)
    }

    fn kind(&self) -> &'static str {
        "node disk"
    }
}
