//! The boot-info area's bump allocator and a little-endian struct builder,
//! shared by the boot-info, zero-page and ACPI builders.

use alloc::vec::Vec;

use crate::plan::{BOOT_INFO_END, BOOT_INFO_START};
use crate::LoadError;

/// Bump allocator over the boot-info area, building its bytes.
#[derive(Default)]
pub(crate) struct Area {
    pub(crate) buf: Vec<u8>,
}

impl Area {
    /// Appends `bytes` at `align`; returns the guest address (fits in u32).
    pub(crate) fn push(&mut self, bytes: &[u8], align: usize) -> Result<u32, LoadError> {
        let start = self.buf.len().div_ceil(align.max(1)) * align.max(1);
        let end = start.saturating_add(bytes.len());
        let capacity = (BOOT_INFO_END - BOOT_INFO_START) as usize;
        if end > capacity {
            return Err(LoadError::BootInfoTooLarge(end));
        }
        self.buf.resize(start, 0);
        self.buf.extend_from_slice(bytes);
        Ok((BOOT_INFO_START as usize + start) as u32)
    }

    /// Appends `s` NUL-terminated.
    pub(crate) fn push_str(&mut self, s: &str) -> Result<u32, LoadError> {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.push(&v, 1)
    }

    /// Overwrites bytes previously pushed at guest address `gpa`.
    pub(crate) fn patch(&mut self, gpa: u32, bytes: &[u8]) {
        let start = (gpa as usize).saturating_sub(BOOT_INFO_START as usize);
        if let Some(dst) = self.buf.get_mut(start..start.saturating_add(bytes.len())) {
            dst.copy_from_slice(bytes);
        }
    }
}

/// Little-endian struct builder.
#[derive(Default)]
pub(crate) struct Le(pub(crate) Vec<u8>);

impl Le {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}
