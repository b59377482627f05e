//! The block device a volume lives on, and an in-memory one (for tests, and
//! for nodes with no disk, e.g. under Bochs).

use alloc::vec::Vec;
use core::fmt;

/// Size of one device block and of one volume sector: 4 KiB (a page, so the
/// hypervisor can move whole guest pages).
pub const BLOCK_SIZE: usize = 4096;

/// A device-side failure, kept apart from integrity errors so the caller can
/// tell a dead disk from a tampered one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// Block index beyond the device.
    OutOfRange {
        /// The block asked for.
        block: u64,
    },
    /// The device reported an I/O error.
    Io,
    /// The device lost power (simulated by [`MemDevice`]'s crash injection).
    PowerLost,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { block } => write!(f, "block {block} beyond device"),
            Self::Io => write!(f, "device I/O error"),
            Self::PowerLost => write!(f, "device lost power"),
        }
    }
}

/// Storage in 4 KiB blocks. The volume relies on two properties only:
/// a block that is written and then covered by a completed `barrier`/`flush`
/// is durable; and a write torn by a power cut is torn at 512-byte
/// boundaries at worst (each 512-byte device sector is old or new).
pub trait BlockDevice {
    /// Number of blocks.
    fn block_count(&self) -> u64;

    /// Reads block `index` into `buf`.
    ///
    /// # Errors
    /// [`DeviceError`] from the device.
    fn read_block(&mut self, index: u64, buf: &mut [u8; BLOCK_SIZE]) -> Result<(), DeviceError>;

    /// Writes `buf` to block `index` (durable only after `flush`).
    ///
    /// # Errors
    /// [`DeviceError`] from the device.
    fn write_block(&mut self, index: u64, buf: &[u8; BLOCK_SIZE]) -> Result<(), DeviceError>;

    /// Writes several blocks, in no particular order, and returns when all
    /// are written (durable only after `flush`). A device that can have many
    /// requests in flight (virtio-blk) submits them together instead of
    /// waiting for each; the default writes them one by one.
    ///
    /// # Errors
    /// [`DeviceError`] from the device; some of the blocks may be written.
    fn write_blocks(&mut self, writes: &[(u64, &[u8; BLOCK_SIZE])]) -> Result<(), DeviceError> {
        for (index, buf) in writes {
            self.write_block(*index, buf)?;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    ///
    /// # Errors
    /// [`DeviceError`] from the device.
    fn flush(&mut self) -> Result<(), DeviceError>;

    /// Orders writes: none issued after it becomes durable before all issued
    /// before it. Defaults to `flush`; a device with ordered queues or FUA
    /// can make it cheaper.
    ///
    /// # Errors
    /// [`DeviceError`] from the device.
    fn barrier(&mut self) -> Result<(), DeviceError> {
        self.flush()
    }
}

/// A planned power cut: after `writes_left` more whole writes, the next
/// write stores only its first `torn_bytes` and the device dies.
#[derive(Clone, Copy, Debug)]
struct Crash {
    writes_left: u64,
    torn_bytes: usize,
}

/// A block device in memory. Writes are durable at once. It can simulate a
/// power cut in the middle of a write ([`MemDevice::crash_after`]).
#[derive(Clone, Debug)]
pub struct MemDevice {
    data: Vec<u8>,
    blocks: u64,
    writes: u64,
    crash: Option<Crash>,
    dead: bool,
}

impl MemDevice {
    /// A zeroed device of `blocks` blocks (`None` if its size overflows or
    /// the memory cannot be had: a hypervisor must not panic on a big disk).
    #[must_use]
    pub fn new(blocks: u64) -> Option<Self> {
        let len = usize::try_from(blocks).ok()?.checked_mul(BLOCK_SIZE)?;
        let mut data = Vec::new();
        data.try_reserve_exact(len).ok()?;
        data.resize(len, 0);
        Some(Self { data, blocks, writes: 0, crash: None, dead: false })
    }

    /// The raw image, to inspect ciphertext in tests.
    #[must_use]
    pub fn image(&self) -> &[u8] {
        &self.data
    }

    /// The raw image, mutable, to simulate tampering.
    pub fn image_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Number of completed block writes so far.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Arms a power cut: `writes` more writes complete, the one after stores
    /// only its first `torn_bytes` bytes, then every operation fails with
    /// [`DeviceError::PowerLost`] until [`MemDevice::power_on`].
    pub fn crash_after(&mut self, writes: u64, torn_bytes: usize) {
        self.crash = Some(Crash { writes_left: writes, torn_bytes: torn_bytes.min(BLOCK_SIZE) });
    }

    /// Restores power after a simulated cut; the image keeps what was written.
    pub fn power_on(&mut self) {
        self.dead = false;
        self.crash = None;
    }

    fn range(&self, index: u64) -> Result<core::ops::Range<usize>, DeviceError> {
        if self.dead {
            return Err(DeviceError::PowerLost);
        }
        let oob = DeviceError::OutOfRange { block: index };
        if index >= self.blocks {
            return Err(oob);
        }
        let start = usize::try_from(index).map_err(|_| oob)?.checked_mul(BLOCK_SIZE).ok_or(oob)?;
        Ok(start..start.checked_add(BLOCK_SIZE).ok_or(oob)?)
    }
}

impl BlockDevice for MemDevice {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_block(&mut self, index: u64, buf: &mut [u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        let r = self.range(index)?;
        buf.copy_from_slice(self.data.get(r).ok_or(DeviceError::OutOfRange { block: index })?);
        Ok(())
    }

    fn write_block(&mut self, index: u64, buf: &[u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        let r = self.range(index)?;
        let dst = self.data.get_mut(r).ok_or(DeviceError::OutOfRange { block: index })?;
        let mut len = BLOCK_SIZE;
        if let Some(c) = &mut self.crash {
            if c.writes_left == 0 {
                len = c.torn_bytes;
                self.dead = true;
            } else {
                c.writes_left -= 1;
            }
        }
        if let (Some(d), Some(s)) = (dst.get_mut(..len), buf.get(..len)) {
            d.copy_from_slice(s);
        }
        if self.dead {
            return Err(DeviceError::PowerLost);
        }
        self.writes += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        if self.dead {
            Err(DeviceError::PowerLost)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn read_write_bounds() {
        let mut d = MemDevice::new(2).unwrap();
        let b = [7u8; BLOCK_SIZE];
        d.write_block(1, &b).unwrap();
        let mut r = [0u8; BLOCK_SIZE];
        d.read_block(1, &mut r).unwrap();
        assert_eq!(r, b);
        assert_eq!(d.write_block(2, &b), Err(DeviceError::OutOfRange { block: 2 }));
        assert_eq!(d.read_block(u64::MAX, &mut r), Err(DeviceError::OutOfRange { block: u64::MAX }));
        assert!(MemDevice::new(u64::MAX).is_none());
    }

    #[test]
    fn crash_tears_then_kills() {
        let mut d = MemDevice::new(2).unwrap();
        d.crash_after(1, 512);
        d.write_block(0, &[1; BLOCK_SIZE]).unwrap();
        assert_eq!(d.write_block(1, &[2; BLOCK_SIZE]), Err(DeviceError::PowerLost));
        assert_eq!(d.flush(), Err(DeviceError::PowerLost));
        d.power_on();
        assert!(d.image()[BLOCK_SIZE..BLOCK_SIZE + 512].iter().all(|&x| x == 2));
        assert!(d.image()[BLOCK_SIZE + 512..].iter().all(|&x| x == 0));
        assert_eq!(d.writes(), 1);
    }
}
