//! The `virtio-drivers` HAL: DMA memory comes from the frame allocator and
//! everything is identity mapped, so physical and virtual addresses agree.

use crate::mm::{frames, PAGE_SIZE};
use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// HAL for BMonitor's identity-mapped, single-address-space world.
pub struct BmHal;

// SAFETY: DMA regions are fresh, zeroed, physically contiguous frames that
// nothing else uses until `dma_dealloc`; MMIO and shared buffers are below
// 4 GiB (identity mapped), so the returned pointers are valid.
unsafe impl Hal for BmHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let pa = frames::alloc_contiguous(pages).unwrap_or(0);
        // A failed allocation yields a dangling pointer at address 0 that
        // the driver will fail on; virtio-drivers has no error path here.
        (pa as PhysAddr, NonNull::new(pa as *mut u8).unwrap_or(NonNull::dangling()))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        for i in 0..pages as u64 {
            frames::free(paddr + i * PAGE_SIZE);
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
