//! A guest disk as virtio-blk sees it: 512-byte sectors on the VM's
//! encrypted volume (`nodedisk` widens them to the volume's 4 KiB sectors).
//! A sector that fails authentication is an I/O error for the guest, never
//! data.

use super::node::AnyDisk;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use nodedisk::{DiskError, VolumeHandle};
use virtio_dev::blk::{BlockBackend, BlockError};

/// The backend of one VM's virtio-blk device.
pub struct GuestDisk {
    volume: VolumeHandle<AnyDisk>,
    id: [u8; 20],
    /// A facility VM's write gate: (the node's fence for it, its epoch);
    /// writes pass only while the fence is not above the epoch.
    gate: Option<(Arc<AtomicU64>, u64)>,
    /// Writes refused by the gate.
    pub fenced_writes: u64,
    /// Sectors that failed authentication, for the stop report.
    pub integrity_errors: u64,
}

impl GuestDisk {
    /// Wraps the VM's open volume; GET_ID answers `name` (first 20 bytes).
    pub fn new(volume: VolumeHandle<AnyDisk>, name: &str) -> Self {
        let mut id = [0u8; 20];
        for (d, s) in id.iter_mut().zip(name.bytes()) {
            *d = s;
        }
        GuestDisk { volume, id, gate: None, fenced_writes: 0, integrity_errors: 0 }
    }

    /// Checks every write against `fence` (shared with the management
    /// plane, which raises it when the VM is fenced) for a copy at `epoch`.
    pub fn with_gate(mut self, fence: Arc<AtomicU64>, epoch: u64) -> Self {
        self.gate = Some((fence, epoch));
        self
    }

    fn map(&mut self, e: DiskError) -> BlockError {
        match e {
            DiskError::Integrity { .. } => {
                self.integrity_errors += 1;
                BlockError::Integrity
            }
            _ => BlockError::Io,
        }
    }
}

impl BlockBackend for GuestDisk {
    fn capacity_sectors(&self) -> u64 {
        self.volume.capacity_sectors()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.volume.read(sector, buf).map_err(|e| self.map(e))
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        if let Some((fence, epoch)) = &self.gate {
            if fence.load(Ordering::Acquire) > *epoch {
                self.fenced_writes += 1;
                return Err(BlockError::Io);
            }
        }
        self.volume.write(sector, data).map_err(|e| self.map(e))
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.volume.flush().map_err(|e| self.map(e))
    }

    fn device_id(&self) -> [u8; 20] {
        self.id
    }
}
