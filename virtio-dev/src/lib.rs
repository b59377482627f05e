//! Guest-facing virtio device models for BMonitor, independent of the
//! hypervisor so they are tested and fuzzed on the host.
//!
//! Layers, each usable alone:
//! - [`memory`]: the [`GuestMemory`] trait, the only way a device touches guest RAM;
//! - [`queue`]: split virtqueues, with every guest-written index, address and
//!   length checked and bounded work per call;
//! - [`mmio`]: the virtio-mmio v2 transport (registers, status, features,
//!   interrupts), generic over a [`mmio::DeviceBackend`];
//! - [`net`]: virtio-net as such a backend;
//! - [`blk`]: virtio-blk as another, over a [`blk::BlockBackend`] (the encrypted volume).
//!
//! A guest that breaks the queue protocol gets its device put into
//! DEVICE_NEEDS_RESET; it never panics, hangs or reaches outside guest RAM.
#![no_std]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

pub mod blk;
pub mod features;
pub mod memory;
pub mod mmio;
pub mod net;
pub mod queue;

pub use blk::{BlockBackend, BlockError, MemBackend, VirtioBlk};
pub use memory::{GuestMemory, MemoryError, VecMemory};
pub use mmio::{DeviceBackend, MmioDevice, MmioOutcome};
pub use net::VirtioNet;
pub use queue::{DescriptorChain, QueueError, Virtqueue};
