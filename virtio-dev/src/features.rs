//! Device-independent feature bits (spec 6) that the transport and queues act on.

/// Descriptors may point to indirect tables (spec 2.7.5.3).
pub const INDIRECT_DESC: u64 = 1 << 28;
/// `used_event` / `avail_event` notification suppression (spec 2.7.10).
pub const EVENT_IDX: u64 = 1 << 29;
/// A virtio 1.x (non-legacy) driver; required by this device model.
pub const VERSION_1: u64 = 1 << 32;
