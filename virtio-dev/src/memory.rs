//! Guest-physical memory as a device model sees it.
//!
//! The device never holds a pointer into guest RAM: every access goes through
//! [`GuestMemory`], whose implementor checks the whole range against the VM's
//! RAM. Rings live in memory another vCPU may change at any moment, so every
//! value read here is treated as fresh, untrusted input.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

/// A guest-physical range that is not entirely inside the VM's RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryError {
    /// First guest-physical address of the refused access.
    pub gpa: u64,
    /// Length of the refused access in bytes.
    pub len: u64,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest range {:#x}+{:#x} is outside guest RAM", self.gpa, self.len)
    }
}

/// Guest-physical memory; the device's only way to touch guest RAM.
///
/// Implementors must refuse (not truncate) any access whose range is not
/// entirely inside the VM's RAM, including ranges that wrap around 2^64. The
/// device copes with any data read, so implementors need no ordering beyond
/// what a plain copy gives; the queue code issues its own fences.
pub trait GuestMemory {
    /// Fills `buf` with the guest bytes starting at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Copies `data` into guest RAM starting at `gpa`.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError>;
}

/// Guest RAM held in a heap buffer starting at guest-physical 0.
///
/// For host tests, fuzzing and in-memory experiments; the hypervisor uses its
/// own implementation over the VM's real RAM.
#[derive(Debug)]
pub struct VecMemory {
    bytes: RefCell<Vec<u8>>,
}

impl VecMemory {
    /// Zeroed RAM of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self { bytes: RefCell::new(vec![0; size]) }
    }

    /// RAM initialised from `bytes` (guest-physical 0 is `bytes[0]`).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes: RefCell::new(bytes) }
    }

    /// Size of the RAM in bytes.
    pub fn len(&self) -> usize {
        self.bytes.try_borrow().map_or(0, |b| b.len())
    }

    /// Whether the RAM has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn range(gpa: u64, len: usize, size: usize) -> Result<core::ops::Range<usize>, MemoryError> {
        let err = MemoryError { gpa, len: len as u64 };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > size {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl GuestMemory for VecMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let err = MemoryError { gpa, len: buf.len() as u64 };
        let bytes = self.bytes.try_borrow().map_err(|_| err)?;
        let range = Self::range(gpa, buf.len(), bytes.len())?;
        buf.copy_from_slice(bytes.get(range).ok_or(err)?);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let err = MemoryError { gpa, len: data.len() as u64 };
        let mut bytes = self.bytes.try_borrow_mut().map_err(|_| err)?;
        let range = Self::range(gpa, data.len(), bytes.len())?;
        bytes.get_mut(range).ok_or(err)?.copy_from_slice(data);
        Ok(())
    }
}

/// Reads a little-endian `u16` at `gpa`.
pub(crate) fn read_u16(mem: &dyn GuestMemory, gpa: u64) -> Result<u16, MemoryError> {
    let mut b = [0; 2];
    mem.read(gpa, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

/// Writes a little-endian `u16` at `gpa`.
pub(crate) fn write_u16(mem: &dyn GuestMemory, gpa: u64, value: u16) -> Result<(), MemoryError> {
    mem.write(gpa, &value.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_out_of_range_and_wrapping_accesses() {
        let mem = VecMemory::new(16);
        let mut b = [0u8; 4];
        assert!(mem.read(12, &mut b).is_ok());
        assert!(mem.read(13, &mut b).is_err());
        assert!(mem.read(u64::MAX - 1, &mut b).is_err());
        assert!(mem.write(16, &[1]).is_err());
        assert!(mem.write(15, &[1]).is_ok());
        assert_eq!(read_u16(&mem, 15), Err(MemoryError { gpa: 15, len: 2 }));
    }
}
