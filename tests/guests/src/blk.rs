//! Block storage for the test guests: finds a virtio-mmio virtio-blk device
//! and drives it with `virtio-drivers`' `VirtIOBlk`.
//!
//! Same windows as the NIC ([`crate::net::scan`]: 32 slots of 0x200 bytes
//! from 0xFEB0_0000); the first one with DeviceID [`DEVICE_ID_BLOCK`] is
//! used. No interrupts: one request is in flight at a time, submitted
//! without waiting (`*_blocks_nb`), then the used ring is polled, giving the
//! CPU away ([`clock::idle`]: `yield` under BMonitor) between looks, with a
//! time limit. Flush and get-id use `virtio-drivers`' blocking calls (which
//! spin on the used ring with PAUSE, no time limit).
//!
//! Memory: the queue (and indirect descriptor tables) come from the heap
//! ([`crate::heap`], which [`BlkDevice::open`] initializes); data buffers
//! are the caller's (heap or stack, both identity-mapped), handed to the
//! device as their own guest-physical addresses by [`GuestHal`].

use alloc::string::String;
use core::fmt;
use core::ptr::NonNull;

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

use crate::net::{scan, GuestHal, Slot, MMIO_SLOT_SIZE};
use crate::{clock, exit, heap, println};

/// Virtio device ID of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// Bytes per sector (virtio-blk's unit, whatever the device's block size).
pub const SECTOR_SIZE: usize = 512;
/// Entries of the request queue (fixed by `virtio-drivers`; the device's
/// QueueNumMax must be at least this).
pub const QUEUE_SIZE: u32 = 16;
/// Default time limit of one read or write request.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// virtio-blk feature: device is read-only.
pub const F_RO: u64 = 1 << 5;
/// virtio-blk feature: FLUSH requests.
pub const F_FLUSH: u64 = 1 << 9;
/// Ring feature: indirect descriptor tables.
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// Ring feature: `used_event` / `avail_event` notification suppression.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
/// Virtio 1.x device.
pub const F_VERSION_1: u64 = 1 << 32;
/// Features `virtio-drivers` 0.13 accepts for a block device (it takes the
/// intersection with what the device offers).
pub const DRIVER_FEATURES: u64 = F_RO | F_FLUSH | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX | F_VERSION_1;

/// Why [`BlkDevice::open`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// No window holds a virtio-blk device.
    NoDevice,
    /// The window's header was rejected by `virtio-drivers`.
    Transport(virtio_drivers::transport::mmio::MmioError),
    /// Device initialisation or queue setup failed.
    Virtio(virtio_drivers::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NoDevice => {
                write!(f, "no virtio-blk device (DeviceID {}) in the virtio-mmio slots", DEVICE_ID_BLOCK)
            }
            OpenError::Transport(e) => write!(f, "virtio-mmio transport: {}", e),
            OpenError::Virtio(e) => write!(f, "virtio-blk init: {}", e),
        }
    }
}

/// How a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The device answered VIRTIO_BLK_S_IOERR (1): under BMonitor a sector
    /// that failed authentication, or one out of range.
    Status,
    /// The device answered VIRTIO_BLK_S_UNSUPP (2).
    Unsupported,
    /// The request never got a status byte (still VIRTIO_BLK_S_NOT_READY,
    /// 3, the value the driver pre-fills) or another driver-side error
    /// (queue full, wrong token, ...).
    Driver(virtio_drivers::Error),
}

impl From<virtio_drivers::Error> for IoError {
    fn from(e: virtio_drivers::Error) -> Self {
        match e {
            virtio_drivers::Error::IoError => IoError::Status,
            virtio_drivers::Error::Unsupported => IoError::Unsupported,
            other => IoError::Driver(other),
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::Status => f.write_str("I/O error status"),
            IoError::Unsupported => f.write_str("unsupported-request status"),
            IoError::Driver(virtio_drivers::Error::NotReady) => f.write_str("no status written (NOT_READY)"),
            IoError::Driver(e) => write!(f, "driver error: {}", e),
        }
    }
}

type Blk = VirtIOBlk<GuestHal, MmioTransport<'static>>;

fn read_reg(base: u64, offset: u64) -> u32 {
    // SAFETY: `base` is a virtio-mmio window below 4 GiB (identity-mapped,
    // device memory, never a Rust object); `offset` is an aligned header
    // register whose reads have no side effects.
    unsafe { core::ptr::read_volatile((base + offset) as *const u32) }
}

fn write_reg(base: u64, offset: u64, value: u32) {
    // SAFETY: as for `read_reg`; only selector registers (DeviceFeaturesSel,
    // QueueSel) are written, before the driver initialises the device.
    unsafe { core::ptr::write_volatile((base + offset) as *mut u32, value) }
}

/// A virtio-blk device brought up and polled.
pub struct BlkDevice {
    blk: Blk,
    slot: Slot,
    offered: u64,
    queue_max: u32,
    timeout_ms: u64,
}

impl BlkDevice {
    /// Finds the first virtio-blk window, initialises the heap and the
    /// device (features: the offered ones of [`DRIVER_FEATURES`]).
    pub fn open() -> Result<Self, OpenError> {
        heap::init();
        let slot = scan().find(|s| s.device_id == DEVICE_ID_BLOCK).ok_or(OpenError::NoDevice)?;
        // What the device offers, read before the driver resets it
        // (DeviceFeaturesSel 0x014 / DeviceFeatures 0x010, QueueSel 0x030 /
        // QueueNumMax 0x034): for the report only.
        write_reg(slot.base, 0x014, 0);
        let lo = read_reg(slot.base, 0x010);
        write_reg(slot.base, 0x014, 1);
        let hi = read_reg(slot.base, 0x010);
        let offered = u64::from(lo) | u64::from(hi) << 32;
        write_reg(slot.base, 0x030, 0);
        let queue_max = read_reg(slot.base, 0x034);
        let header = NonNull::new(slot.base as *mut VirtIOHeader).ok_or(OpenError::NoDevice)?;
        // SAFETY: `header` is a virtio-mmio window (checked magic) of
        // `MMIO_SLOT_SIZE` bytes, identity-mapped device memory that no Rust
        // object overlaps; only this transport uses it from now on (a guest
        // opens its disk once).
        let transport = unsafe { MmioTransport::new(header, MMIO_SLOT_SIZE as usize) }.map_err(OpenError::Transport)?;
        let blk = Blk::new(transport).map_err(OpenError::Virtio)?;
        Ok(BlkDevice { blk, slot, offered, queue_max, timeout_ms: DEFAULT_TIMEOUT_MS })
    }

    /// Capacity in [`SECTOR_SIZE`] sectors (from the config space).
    pub fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    /// Whether the device is read-only (VIRTIO_BLK_F_RO negotiated).
    pub fn read_only(&self) -> bool {
        self.blk.readonly()
    }

    /// The window the device was found in.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// Feature bits the device offered.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Feature bits negotiated (offered ∩ [`DRIVER_FEATURES`]).
    pub fn negotiated_features(&self) -> u64 {
        self.offered & DRIVER_FEATURES
    }

    /// QueueNumMax of queue 0 as the device reported it.
    pub fn queue_max(&self) -> u32 {
        self.queue_max
    }

    /// Sets the time limit of one read or write request.
    pub fn set_timeout_ms(&mut self, ms: u64) {
        self.timeout_ms = ms.max(1);
    }

    /// Polls until the request `token` is the next used one. If it does not
    /// complete within the time limit (or another chain completes), the
    /// device still owns the request's buffers, so this does not return:
    /// it prints `FAIL: ...` and exits with 1.
    fn wait(&mut self, token: u16, what: fmt::Arguments<'_>) {
        let start = clock::now_ms();
        let mut looks = 0u32;
        loop {
            match self.blk.peek_used() {
                Some(t) if t == token => return,
                Some(t) => {
                    println!("FAIL: virtio-blk: {}: device completed chain {} instead of {}", what, t, token);
                    exit(1);
                }
                None => {}
            }
            looks = looks.wrapping_add(1);
            // A few quick looks first (a device emulated on the notify exit
            // has finished already), then give the CPU away between looks.
            if looks > 16 {
                clock::idle();
            } else {
                core::hint::spin_loop();
            }
            if clock::now_ms().saturating_sub(start) > self.timeout_ms {
                println!("FAIL: virtio-blk: {}: no completion within {} ms", what, self.timeout_ms);
                exit(1);
            }
        }
    }

    /// Reads `buf.len() / 512` sectors from `sector` into `buf` (a non-zero
    /// multiple of [`SECTOR_SIZE`] bytes, one descriptor).
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = buf.len();
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
            return Err(IoError::Driver(virtio_drivers::Error::InvalidParam));
        }
        let block = usize::try_from(sector).map_err(|_| IoError::Driver(virtio_drivers::Error::InvalidParam))?;
        let mut req = BlkReq::default();
        let mut resp = BlkResp::default();
        // SAFETY: `req`, `buf` and `resp` are not touched until the request
        // completes: `wait` returns only once the device has used this
        // token (else it exits), and `complete_read_blocks` gets the same
        // three buffers back.
        let token = unsafe { self.blk.read_blocks_nb(block, &mut req, buf, &mut resp) }?;
        self.wait(token, format_args!("read of {} bytes at sector {}", len, sector));
        // SAFETY: the same buffers as passed to `read_blocks_nb` for `token`.
        unsafe { self.blk.complete_read_blocks(token, &req, buf, &mut resp) }?;
        Ok(())
    }

    /// Writes `buf` (a non-zero multiple of [`SECTOR_SIZE`] bytes, one
    /// descriptor) to the sectors from `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), IoError> {
        let len = buf.len();
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
            return Err(IoError::Driver(virtio_drivers::Error::InvalidParam));
        }
        let block = usize::try_from(sector).map_err(|_| IoError::Driver(virtio_drivers::Error::InvalidParam))?;
        let mut req = BlkReq::default();
        let mut resp = BlkResp::default();
        // SAFETY: as in `read`: the buffers stay untouched until `wait`
        // has seen the device use `token`.
        let token = unsafe { self.blk.write_blocks_nb(block, &mut req, buf, &mut resp) }?;
        self.wait(token, format_args!("write of {} bytes at sector {}", len, sector));
        // SAFETY: the same buffers as passed to `write_blocks_nb` for `token`.
        unsafe { self.blk.complete_write_blocks(token, &req, buf, &mut resp) }?;
        Ok(())
    }

    /// Sends a FLUSH request and waits for it (blocking, no time limit).
    /// Returns false without sending anything if the device does not offer
    /// VIRTIO_BLK_F_FLUSH.
    pub fn flush(&mut self) -> Result<bool, IoError> {
        if self.negotiated_features() & F_FLUSH == 0 {
            return Ok(false);
        }
        self.blk.flush()?;
        Ok(true)
    }

    /// The device's serial number (GET_ID, blocking, no time limit), up to
    /// 20 bytes, non-printable bytes as `?`.
    pub fn id(&mut self) -> Result<String, IoError> {
        let mut raw = [0u8; 20];
        let n = self.blk.device_id(&mut raw)?;
        Ok(raw.iter().take(n).map(|&b| if b.is_ascii_graphic() || b == b' ' { char::from(b) } else { '?' }).collect())
    }
}

/// Formats feature bits of a block device by name (`RO FLUSH ...`), with
/// any others as a hex remainder.
pub struct FeaturesDisplay(pub u64);

impl fmt::Display for FeaturesDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: &[(u64, &str)] = &[
            (1 << 0, "BARRIER"),
            (1 << 1, "SIZE_MAX"),
            (1 << 2, "SEG_MAX"),
            (1 << 4, "GEOMETRY"),
            (F_RO, "RO"),
            (1 << 6, "BLK_SIZE"),
            (1 << 7, "SCSI"),
            (F_FLUSH, "FLUSH"),
            (1 << 10, "TOPOLOGY"),
            (1 << 11, "CONFIG_WCE"),
            (1 << 12, "MQ"),
            (1 << 13, "DISCARD"),
            (1 << 14, "WRITE_ZEROES"),
            (1 << 24, "NOTIFY_ON_EMPTY"),
            (1 << 27, "ANY_LAYOUT"),
            (F_RING_INDIRECT_DESC, "INDIRECT_DESC"),
            (F_RING_EVENT_IDX, "EVENT_IDX"),
            (F_VERSION_1, "VERSION_1"),
            (1 << 33, "ACCESS_PLATFORM"),
            (1 << 34, "RING_PACKED"),
            (1 << 35, "IN_ORDER"),
            (1 << 36, "ORDER_PLATFORM"),
            (1 << 37, "SR_IOV"),
            (1 << 38, "NOTIFICATION_DATA"),
            (1 << 39, "NOTIF_CONFIG_DATA"),
            (1 << 40, "RING_RESET"),
        ];
        let mut rest = self.0;
        let mut first = true;
        for &(bit, name) in NAMES {
            if rest & bit != 0 {
                rest &= !bit;
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{:#x}", rest)?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}
