//! Why a virtqueue operation was refused.

use core::fmt;

use crate::memory::MemoryError;

/// A broken ring or descriptor chain. Any of these means the driver (the
/// guest) broke the virtqueue protocol; the MMIO layer answers with
/// DEVICE_NEEDS_RESET and touches the queue no more until a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// A head or `next` index was not below the queue (or indirect table) size.
    DescriptorOutOfRange {
        /// The offending index.
        index: u16,
    },
    /// A chain revisited a descriptor: more steps than the table has entries.
    Loop,
    /// A chain (counting indirect descriptors) had more descriptors than the queue size.
    ChainTooLong,
    /// A chain's buffers add up to more bytes than the queue allows.
    TooManyBytes,
    /// A ring, table or buffer was not inside guest RAM (or wrapped around 2^64).
    BadAddress {
        /// First guest-physical address of the refused range.
        gpa: u64,
    },
    /// A device-readable buffer followed a device-writable one.
    WritableBeforeReadable,
    /// `avail.idx` ran more than the queue size ahead of the device.
    AvailIdxJump,
    /// A descriptor used VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC.
    IndirectNotNegotiated,
    /// An indirect descriptor was nested, chained with NEXT, or had a bad length.
    BadIndirect,
    /// Queue size not a power of two within the maximum, or misaligned rings.
    BadLayout,
    /// The device returned a buffer it did not take (a device-model bug).
    NotInFlight,
    /// A request chain the device cannot even answer (e.g. a block request
    /// with no device-writable status byte).
    BadRequest,
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DescriptorOutOfRange { index } => write!(f, "descriptor index {index} out of range"),
            Self::Loop => f.write_str("descriptor chain loops"),
            Self::ChainTooLong => f.write_str("descriptor chain longer than the queue size"),
            Self::TooManyBytes => f.write_str("descriptor chain exceeds the byte limit"),
            Self::BadAddress { gpa } => write!(f, "guest address {gpa:#x} outside guest RAM"),
            Self::WritableBeforeReadable => f.write_str("device-readable buffer after a device-writable one"),
            Self::AvailIdxJump => f.write_str("avail.idx moved more than the queue size"),
            Self::IndirectNotNegotiated => f.write_str("indirect descriptor without VIRTIO_F_INDIRECT_DESC"),
            Self::BadIndirect => f.write_str("malformed indirect descriptor"),
            Self::BadLayout => f.write_str("bad queue size or ring alignment"),
            Self::NotInFlight => f.write_str("used buffer that was never made available"),
            Self::BadRequest => f.write_str("request has no device-writable status byte"),
        }
    }
}

impl From<MemoryError> for QueueError {
    fn from(e: MemoryError) -> Self {
        Self::BadAddress { gpa: e.gpa }
    }
}
