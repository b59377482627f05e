//! virtio-blk (device ID 2, spec 5.2) on top of the generic transport.
//!
//! One request queue (queue 0). Each chain is parsed and checked by
//! [`parse_request`] before storage is touched; data then moves between
//! guest RAM and the [`BlockBackend`] through a bounce buffer of at most
//! [`IO_CHUNK`] bytes, so no request makes BMonitor hold more than that.
//! Storage errors and failed authentication reach the guest as
//! VIRTIO_BLK_S_IOERR, never as unverified data; they are counted.

mod backend;
mod io;
mod request;

use crate::features::{EVENT_IDX, INDIRECT_DESC, VERSION_1};
use crate::memory::GuestMemory;
use crate::mmio::DeviceBackend;
use crate::queue::{QueueError, Virtqueue};

pub use backend::{BlockBackend, BlockError, MemBackend};
pub use request::{
    parse_request, Op, Refusal, Request, Segments, HEADER_LEN, ID_LEN, NO_STATUS_BYTE, S_IOERR, S_OK, S_UNSUPP,
    T_FLUSH, T_GET_ID, T_IN, T_OUT,
};

/// virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;
/// Bytes per sector, the unit of `capacity` and of the request header's `sector`.
pub const SECTOR_SIZE: usize = 512;

/// Feature: config `size_max` bounds any single segment.
pub const F_SIZE_MAX: u64 = 1 << 1;
/// Feature: config `seg_max` bounds the segments per request.
pub const F_SEG_MAX: u64 = 1 << 2;
/// Feature: the disk is read-only.
pub const F_RO: u64 = 1 << 5;
/// Feature: config `blk_size` holds the block size.
pub const F_BLK_SIZE: u64 = 1 << 6;
/// Feature: VIRTIO_BLK_T_FLUSH is supported (a write-back cache the guest must flush).
pub const F_FLUSH: u64 = 1 << 9;

/// Request queue index.
pub const REQUEST_QUEUE: u16 = 0;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Largest segment (`size_max`).
pub const SIZE_MAX: u32 = 64 * 1024;
/// Most data segments per request (`seg_max`): the queue size less the header
/// and status descriptors, so a request fits the ring (or one indirect table,
/// which the walker also bounds by the queue size).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest total buffer length of one chain: header, `SEG_MAX` full segments, status.
pub const MAX_CHAIN_BYTES: u32 = HEADER_LEN as u32 + SEG_MAX * SIZE_MAX + 1;
/// Bounce buffer size: the most data moved to or from the backend in one call.
pub const IO_CHUNK: usize = 64 * 1024;
/// Data bytes one notification may move before the device stops and sets
/// [`VirtioBlk::backlog`]; a request is never split, so one pass can exceed
/// this by at most one request.
pub const MAX_BYTES_PER_NOTIFY: u64 = 4 * 1024 * 1024;
/// Size of the config space exposed (`struct virtio_blk_config` through `blk_size`).
pub const CONFIG_LEN: usize = 24;

/// Request and error counts, for the consoles (DESIGN: "counted, not guessed").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkCounters {
    /// IN requests completed with OK.
    pub reads: u64,
    /// OUT requests completed with OK.
    pub writes: u64,
    /// FLUSH requests completed with OK.
    pub flushes: u64,
    /// Data bytes delivered to the guest by successful IN requests.
    pub bytes_read: u64,
    /// Data bytes stored by successful OUT requests.
    pub bytes_written: u64,
    /// Requests completed with IOERR, for any reason (includes `integrity_errors`).
    pub io_errors: u64,
    /// Reads that failed because a sector did not authenticate.
    pub integrity_errors: u64,
    /// Requests completed with UNSUPP (unknown type, or refused by the backend).
    pub unsupported: u64,
}

/// The virtio-blk device type: the storage, the counters, and whether work is left.
#[derive(Debug)]
pub struct VirtioBlk<B: BlockBackend> {
    backend: B,
    counters: BlkCounters,
    backlog: bool,
}

impl<B: BlockBackend> VirtioBlk<B> {
    /// A disk backed by `backend`; capacity and read-only state come from it.
    pub fn new(backend: B) -> Self {
        Self { backend, counters: BlkCounters::default(), backlog: false }
    }

    /// The storage, e.g. to inspect it in tests.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The storage, mutable.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The counters so far (not cleared by a device reset).
    pub fn counters(&self) -> BlkCounters {
        self.counters
    }

    /// The last notification stopped with its work budget spent and requests
    /// may still wait: call [`crate::MmioDevice::poll`] soon (the guest will
    /// not notify again for requests it already published).
    pub fn backlog(&self) -> bool {
        self.backlog
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let fields: [(usize, &[u8]); 4] = [
            (0, &self.backend.capacity_sectors().to_le_bytes()),
            (8, &SIZE_MAX.to_le_bytes()),
            (12, &SEG_MAX.to_le_bytes()),
            // 16..20: geometry, not offered, reads as zero.
            (20, &(SECTOR_SIZE as u32).to_le_bytes()),
        ];
        for (at, bytes) in fields {
            if let Some(dst) = c.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
        c
    }
}

impl<B: BlockBackend> DeviceBackend for VirtioBlk<B> {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        let ro = if self.backend.read_only() { F_RO } else { 0 };
        VERSION_1 | F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | EVENT_IDX | INDIRECT_DESC | ro
    }

    fn queue_count(&self) -> usize {
        1
    }

    fn queue_max(&self) -> u16 {
        QUEUE_SIZE
    }

    fn max_chain_bytes(&self, _queue: u16) -> u32 {
        MAX_CHAIN_BYTES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|a| config.get(a)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE.
    }

    fn notify(&mut self, queue: u16, queues: &mut [Virtqueue], mem: &dyn GuestMemory) -> Result<(), QueueError> {
        if queue != REQUEST_QUEUE {
            return Ok(());
        }
        self.process(queues, mem)
    }

    fn reset(&mut self) {
        self.backlog = false;
    }
}
