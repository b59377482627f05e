//! The node's physical disk: the first virtio-blk device on PCI, driven by
//! `virtio-drivers`, offered to the encrypted-volume layer as 4 KiB blocks.

use super::pci::PciTransportHandle;
use super::virtio_hal::BmHal;
use alloc::vec::Vec;
use blockcrypt::device::{BlockDevice, DeviceError, BLOCK_SIZE};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};

/// Device sectors per 4 KiB block.
const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / 512) as u64;
/// Write requests in flight at once (the queue has 16 entries; each request
/// takes one with indirect descriptors).
const WRITES_IN_FLIGHT: usize = 8;

/// The physical disk.
pub struct PhysDisk {
    dev: VirtIOBlk<BmHal, PciTransportHandle>,
    blocks: u64,
    /// Device errors seen, for node status.
    pub errors: u64,
}

impl PhysDisk {
    /// Brings up the virtio-blk device.
    pub fn new(transport: PciTransportHandle) -> Result<PhysDisk, &'static str> {
        let dev = VirtIOBlk::new(transport).map_err(|_| "virtio-blk initialisation failed")?;
        if dev.readonly() {
            return Err("the disk is read-only");
        }
        let blocks = dev.capacity() / SECTORS_PER_BLOCK;
        Ok(PhysDisk { dev, blocks, errors: 0 })
    }

    fn sector(&self, index: u64) -> Result<usize, DeviceError> {
        if index >= self.blocks {
            return Err(DeviceError::OutOfRange { block: index });
        }
        usize::try_from(index * SECTORS_PER_BLOCK).map_err(|_| DeviceError::OutOfRange { block: index })
    }
}

impl BlockDevice for PhysDisk {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_block(&mut self, index: u64, buf: &mut [u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        let sector = self.sector(index)?;
        self.dev.read_blocks(sector, buf).map_err(|_| {
            self.errors += 1;
            DeviceError::Io
        })
    }

    fn write_block(&mut self, index: u64, buf: &[u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        let sector = self.sector(index)?;
        self.dev.write_blocks(sector, buf).map_err(|_| {
            self.errors += 1;
            DeviceError::Io
        })
    }

    fn write_blocks(&mut self, writes: &[(u64, &[u8; BLOCK_SIZE])]) -> Result<(), DeviceError> {
        // Up to WRITES_IN_FLIGHT requests at a time: the device works on
        // them together instead of one round trip each.
        for batch in writes.chunks(WRITES_IN_FLIGHT) {
            let mut sectors = Vec::with_capacity(batch.len());
            for (index, _) in batch {
                sectors.push(self.sector(*index)?);
            }
            let mut reqs: Vec<BlkReq> = batch.iter().map(|_| BlkReq::default()).collect();
            let mut resps: Vec<BlkResp> = batch.iter().map(|_| BlkResp::default()).collect();
            let mut tokens: Vec<Option<u16>> = Vec::with_capacity(batch.len());
            let mut failed = false;
            for (((sector, (_, buf)), req), resp) in
                sectors.iter().zip(batch).zip(reqs.iter_mut()).zip(resps.iter_mut())
            {
                // SAFETY: `req`, `buf` and `resp` live in `reqs`, `writes`
                // and `resps`, which are neither moved nor touched until
                // every token added here has been completed below.
                match unsafe { self.dev.write_blocks_nb(*sector, req, &buf[..], resp) } {
                    Ok(t) => tokens.push(Some(t)),
                    Err(_) => {
                        failed = true;
                        tokens.push(None);
                    }
                }
            }
            let mut left = tokens.iter().filter(|t| t.is_some()).count();
            while left > 0 {
                let Some(done) = self.dev.peek_used() else {
                    core::hint::spin_loop();
                    continue;
                };
                let Some(i) = tokens.iter().position(|t| *t == Some(done)) else {
                    // Not one of ours: nothing else is in flight on this
                    // queue, so the device is confused.
                    self.errors += 1;
                    return Err(DeviceError::Io);
                };
                let (Some(req), Some((_, buf)), Some(resp)) = (reqs.get(i), batch.get(i), resps.get_mut(i)) else {
                    return Err(DeviceError::Io);
                };
                // SAFETY: the same `req`, `buf` and `resp` that were passed
                // to `write_blocks_nb` for this token.
                if unsafe { self.dev.complete_write_blocks(done, req, &buf[..], resp) }.is_err() {
                    failed = true;
                }
                if let Some(t) = tokens.get_mut(i) {
                    *t = None;
                }
                left -= 1;
            }
            if failed {
                self.errors += 1;
                return Err(DeviceError::Io);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.dev.flush().map_err(|_| {
            self.errors += 1;
            DeviceError::Io
        })
    }
}
