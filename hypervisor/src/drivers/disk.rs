//! The node's physical disk: the first virtio-blk device on PCI, driven by
//! `virtio-drivers`, offered to the encrypted-volume layer as 4 KiB blocks.

use super::pci::PciTransportHandle;
use super::virtio_hal::BmHal;
use blockcrypt::device::{BlockDevice, DeviceError, BLOCK_SIZE};
use virtio_drivers::device::blk::VirtIOBlk;

/// Device sectors per 4 KiB block.
const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / 512) as u64;

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

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.dev.flush().map_err(|_| {
            self.errors += 1;
            DeviceError::Io
        })
    }
}
