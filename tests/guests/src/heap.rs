//! The guests' global allocator.
//!
//! A `linked_list_allocator` heap that starts empty, so every allocation
//! fails (returns null) until a guest calls [`init`]. Only guests that need
//! `alloc` (the network guests) call it; the heap array is referenced from
//! [`init`] alone, so the linker's section garbage collection keeps it out
//! of every other guest's `.bss`.

use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::LockedHeap;

/// Size of the heap [`init`] hands to the allocator.
pub const HEAP_BYTES: usize = 2 << 20;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Page-aligned backing store of the heap (in `.bss`).
#[repr(C, align(4096))]
struct HeapArea([u8; HEAP_BYTES]);

static mut HEAP_AREA: HeapArea = HeapArea([0; HEAP_BYTES]);

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Gives the allocator its [`HEAP_BYTES`] heap. Later calls do nothing.
pub fn init() {
    if INITIALIZED.swap(true, Ordering::AcqRel) {
        return;
    }
    let bottom = core::ptr::addr_of_mut!(HEAP_AREA).cast::<u8>();
    // SAFETY: `HEAP_AREA` is referenced nowhere else, and the flag above
    // makes this the only time it is handed out, so the allocator owns
    // these `HEAP_BYTES` bytes exclusively for the rest of the program.
    unsafe { ALLOCATOR.lock().init(bottom, HEAP_BYTES) };
}

/// Bytes of the heap currently allocated.
pub fn used() -> usize {
    ALLOCATOR.lock().used()
}
