//! The virtio-mmio version 2 transport (spec 4.2): one register window per
//! device, a status state machine, feature negotiation, queue setup and
//! interrupt status. Device-agnostic: the device type is a [`DeviceBackend`].

mod backend;
mod device;
pub mod regs;

pub use backend::{DeviceBackend, MmioOutcome};
pub use device::MmioDevice;
