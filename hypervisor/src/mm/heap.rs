//! The hypervisor heap, carved out of physical frames at boot.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Heap size: enough for VM bookkeeping and parsed configs; guest RAM and
/// page tables come from frames, not the heap.
pub const HEAP_BYTES: usize = 64 << 20;

/// Free heap bytes, so big allocations (images, snapshots) can be refused
/// instead of failing (which would halt the node).
pub fn free_bytes() -> usize {
    HEAP.lock().free()
}

/// Heap kept free beyond one large buffer, for everything else the node
/// allocates meanwhile.
const HEADROOM: usize = 8 << 20;

/// Whether a buffer of `bytes` (a whole image, say) can be allocated now
/// and still leave [`HEADROOM`].
pub fn has_room_for(bytes: usize) -> bool {
    bytes.saturating_add(HEADROOM) <= free_bytes()
}

/// Gives the allocator its memory; must run before any allocation.
pub fn init() -> Result<(), &'static str> {
    let pages = HEAP_BYTES / super::PAGE_SIZE as usize;
    let base = super::frames::alloc_contiguous(pages).ok_or("no memory for the heap")?;
    // SAFETY: the range was just allocated for the heap alone and is
    // identity mapped.
    unsafe { HEAP.lock().init(base as *mut u8, HEAP_BYTES) };
    Ok(())
}
