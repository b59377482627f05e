//! A window onto part of a shared device, so several volumes (each a
//! `blockcrypt::Volume` that wants to own its device) and the node's own
//! structures can live on one disk at the same time.

use alloc::sync::Arc;
use spin::Mutex;

use crate::{BlockDevice, DeviceError, BLOCK_SIZE};

/// Blocks `[start, start + blocks)` of a device shared through
/// `Arc<spin::Mutex<D>>`, seen as blocks `0..blocks`. `Send` and `Sync`
/// when `D: Send`: views on several CPUs take turns on the device. The
/// device lock is held for one device call ([`BlockDevice::read_block`],
/// [`BlockDevice::write_blocks`], ...) and never while anything else is
/// locked by this crate, so it is the innermost lock (see the crate
/// documentation). It is a spin lock: a caller that already holds it (a
/// re-entrant access, which the crate never makes) spins forever.
#[derive(Debug)]
pub struct SharedDevice<D> {
    dev: Arc<Mutex<D>>,
    start: u64,
    blocks: u64,
}

impl<D: BlockDevice> SharedDevice<D> {
    /// The whole device.
    #[must_use]
    pub fn whole(dev: Arc<Mutex<D>>) -> Self {
        let blocks = dev.lock().block_count();
        Self { dev, start: 0, blocks }
    }

    /// Blocks `[start, start + blocks)` of this view, or `None` if that
    /// range is not inside it.
    #[must_use]
    pub fn sub(&self, start: u64, blocks: u64) -> Option<Self> {
        let end = start.checked_add(blocks)?;
        if end > self.blocks {
            return None;
        }
        Some(Self { dev: Arc::clone(&self.dev), start: self.start.checked_add(start)?, blocks })
    }

    /// The shared device.
    #[must_use]
    pub fn shared(&self) -> &Arc<Mutex<D>> {
        &self.dev
    }

    fn abs(&self, index: u64) -> Result<u64, DeviceError> {
        if index >= self.blocks {
            return Err(DeviceError::OutOfRange { block: index });
        }
        self.start.checked_add(index).ok_or(DeviceError::OutOfRange { block: index })
    }

    /// Runs one device call under the device lock (the innermost lock).
    fn with<R>(&self, f: impl FnOnce(&mut D) -> Result<R, DeviceError>) -> Result<R, DeviceError> {
        f(&mut self.dev.lock())
    }
}

impl<D: BlockDevice> BlockDevice for SharedDevice<D> {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_block(&mut self, index: u64, buf: &mut [u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        let i = self.abs(index)?;
        self.with(|d| d.read_block(i, buf))
    }

    fn write_block(&mut self, index: u64, buf: &[u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        let i = self.abs(index)?;
        self.with(|d| d.write_block(i, buf))
    }

    fn write_blocks(&mut self, writes: &[(u64, &[u8; BLOCK_SIZE])]) -> Result<(), DeviceError> {
        let mut abs = alloc::vec::Vec::with_capacity(writes.len());
        for (index, buf) in writes {
            abs.push((self.abs(*index)?, *buf));
        }
        self.with(|d| d.write_blocks(&abs))
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.with(|d| d.flush())
    }

    fn barrier(&mut self) -> Result<(), DeviceError> {
        self.with(|d| d.barrier())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::MemDevice;

    #[test]
    fn windows_are_bounded_and_offset() {
        let dev = Arc::new(Mutex::new(MemDevice::new(10).unwrap()));
        let whole = SharedDevice::whole(Arc::clone(&dev));
        assert_eq!(whole.block_count(), 10);
        assert!(whole.sub(8, 3).is_none());
        assert!(whole.sub(u64::MAX, 2).is_none());
        let mut a = whole.sub(2, 3).unwrap();
        let mut b = a.sub(1, 2).unwrap();
        a.write_block(0, &[1; BLOCK_SIZE]).unwrap();
        b.write_block(1, &[2; BLOCK_SIZE]).unwrap();
        assert_eq!(a.write_block(3, &[3; BLOCK_SIZE]), Err(DeviceError::OutOfRange { block: 3 }));
        let img = dev.lock().image().to_vec();
        assert!(img[2 * BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&x| x == 1));
        assert!(img[4 * BLOCK_SIZE..5 * BLOCK_SIZE].iter().all(|&x| x == 2));
        let mut r = [0; BLOCK_SIZE];
        b.read_block(1, &mut r).unwrap();
        assert_eq!(r, [2; BLOCK_SIZE]);
        // Every access takes the lock and lets it go again.
        assert!(!dev.is_locked());
        assert!(dev.try_lock().is_some());
    }
}
