//! What a device type (net, block, ...) plugs into the virtio-mmio transport.

use crate::memory::GuestMemory;
use crate::queue::{QueueError, Virtqueue};

/// A virtio device type behind the generic MMIO transport.
///
/// The transport owns status, feature negotiation, queue setup and
/// interrupts; the backend owns the device-specific config space and what a
/// queue notification means. Values returned here are trusted (they come from
/// BMonitor, not the guest).
pub trait DeviceBackend {
    /// virtio device ID (spec 5): 1 = network, 2 = block.
    fn device_id(&self) -> u32;
    /// Feature bits offered; must include [`crate::features::VERSION_1`].
    fn features(&self) -> u64;
    /// Number of virtqueues.
    fn queue_count(&self) -> usize;
    /// Largest queue size offered (QueueNumMax), a power of two.
    fn queue_max(&self) -> u16;
    /// Largest total buffer length of one chain on `queue`, so a request is bounded work.
    fn max_chain_bytes(&self, queue: u16) -> u32;
    /// Fills `data` from config space at `offset`; bytes past the end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to config space at `offset`; ignore what is read-only.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set FEATURES_OK with these (accepted) features.
    fn activate(&mut self, negotiated: u64) {
        let _ = negotiated;
    }
    /// The driver notified `queue`, or the hypervisor polls it. Do a bounded
    /// amount of work; an error puts the device into DEVICE_NEEDS_RESET.
    fn notify(&mut self, queue: u16, queues: &mut [Virtqueue], mem: &dyn GuestMemory) -> Result<(), QueueError>;
    /// The driver reset the device: drop all per-session state.
    fn reset(&mut self);
}

/// What a register write did that the hypervisor may want to act on.
#[must_use]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioOutcome {
    /// The driver notified this queue and the backend processed it.
    pub notified: Option<u16>,
    /// The access made the device enter DEVICE_NEEDS_RESET, for this reason.
    pub error: Option<QueueError>,
    /// The driver reset the device (wrote 0 to Status).
    pub reset: bool,
}
