//! Memory: physical frames, the hypervisor heap, and guest-physical memory.

pub mod frames;
pub mod guest;
pub mod heap;

/// Size of a small page / frame.
pub const PAGE_SIZE: u64 = 4096;
