//! Shared vocabulary between BMonitor, its image builder, its test guests and
//! (later) its consoles. `no_std` + `alloc` so the hypervisor links it directly.
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

pub mod bundle;
pub mod config;
pub mod hypercall;
pub mod net;
pub mod text;
