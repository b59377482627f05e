//! Physical frame allocator: a bitmap over the identity-mapped first 4 GiB.
//! Every frame handed out is zeroed, and so is every frame given back, so no
//! VM ever sees another VM's (or the hypervisor's) old data.

use super::PAGE_SIZE;
use crate::arch::x86_64::bootinfo::BootInfo;
use spin::Mutex;

const MAX_FRAMES: usize = 1 << 20; // 4 GiB / 4 KiB
const WORDS: usize = MAX_FRAMES / 64;

struct Bitmap {
    /// Bit set = frame in use (or not RAM).
    used: [u64; WORDS],
    free: usize,
    next: usize,
}

static FRAMES: Mutex<Bitmap> = Mutex::new(Bitmap { used: [u64::MAX; WORDS], free: 0, next: 0 });

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

impl Bitmap {
    fn is_used(&self, frame: usize) -> bool {
        self.used.get(frame / 64).is_none_or(|w| w & (1 << (frame % 64)) != 0)
    }

    fn set(&mut self, frame: usize, used: bool) {
        let was = self.is_used(frame);
        if let Some(w) = self.used.get_mut(frame / 64) {
            if used {
                *w |= 1 << (frame % 64);
            } else {
                *w &= !(1 << (frame % 64));
            }
            match (was, used) {
                (true, false) => self.free += 1,
                (false, true) => self.free -= 1,
                _ => {}
            }
        }
    }

    fn set_range(&mut self, start: u64, end: u64, used: bool) {
        let (first, last) = if used {
            (start / PAGE_SIZE, end.div_ceil(PAGE_SIZE))
        } else {
            (start.div_ceil(PAGE_SIZE), end / PAGE_SIZE)
        };
        for f in first..last.min(MAX_FRAMES as u64) {
            self.set(f as usize, used);
        }
    }

    fn find_run(&mut self, count: usize) -> Option<usize> {
        let mut run = 0usize;
        let mut start = 0usize;
        for pass in 0..2 {
            let (from, to) = if pass == 0 { (self.next, MAX_FRAMES) } else { (0, self.next) };
            run = 0;
            for f in from..to {
                if self.is_used(f) {
                    run = 0;
                    continue;
                }
                if run == 0 {
                    start = f;
                }
                run += 1;
                if run == count {
                    return Some(start);
                }
            }
        }
        let _ = run;
        None
    }
}

fn zero_frames(pa: u64, count: u64) {
    // SAFETY: the frames are identity mapped and owned by the caller (just
    // allocated or being freed), so nothing else aliases them.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, (count * PAGE_SIZE) as usize) }
}

/// Builds the bitmap from the memory map, keeping the image, the first MiB,
/// the loader's info and the boot modules reserved.
pub fn init(info: &BootInfo) {
    let mut bm = FRAMES.lock();
    for r in info.regions().iter().filter(|r| r.usable) {
        bm.set_range(r.base, r.base.saturating_add(r.len), false);
    }
    for r in info.regions().iter().filter(|r| !r.usable) {
        bm.set_range(r.base, r.base.saturating_add(r.len), true);
    }
    // SAFETY: linker-defined symbols; only their addresses are taken.
    let (img_start, img_end) = unsafe { (&__image_start as *const u8 as u64, &__image_end as *const u8 as u64) };
    bm.set_range(0, 0x10_0000, true);
    bm.set_range(img_start, img_end, true);
    bm.set_range(info.info_range.0, info.info_range.1, true);
    for m in info.modules() {
        bm.set_range(m.start, m.end, true);
    }
    bm.next = (img_end / PAGE_SIZE) as usize;
}

/// Allocates one zeroed frame.
pub fn alloc() -> Option<u64> {
    alloc_contiguous(1)
}

/// Allocates `count` physically contiguous zeroed frames.
pub fn alloc_contiguous(count: usize) -> Option<u64> {
    let start = {
        let mut bm = FRAMES.lock();
        let start = bm.find_run(count)?;
        for f in start..start + count {
            bm.set(f, true);
        }
        bm.next = start + count;
        start
    };
    let pa = start as u64 * PAGE_SIZE;
    zero_frames(pa, count as u64);
    Some(pa)
}

/// Zeroes and returns one frame.
pub fn free(pa: u64) {
    zero_frames(pa, 1);
    FRAMES.lock().set((pa / PAGE_SIZE) as usize, false);
}

/// Free frames, for the boot log and node status.
pub fn free_count() -> usize {
    FRAMES.lock().free
}

/// Pattern-tests `count` free frames (taken from where the allocator's
/// cursor is, so successive runs walk through free memory) and gives them
/// back zeroed: the node's memory probe. The first frame that does not
/// read back what was written is the error.
pub fn test_free(count: usize) -> Result<usize, u64> {
    const WORDS: usize = (PAGE_SIZE / 8) as usize;
    let mut tested = 0;
    for _ in 0..count {
        let Some(pa) = alloc() else { break };
        let mut ok = true;
        for pattern in [0x5555_5555_5555_5555u64, 0xAAAA_AAAA_AAAA_AAAA, pa] {
            let base = pa as *mut u64;
            for i in 0..WORDS {
                let v = pattern ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) & (pattern | 0xFF);
                // SAFETY: the frame was just allocated to us and is identity
                // mapped; `i` stays inside its 4 KiB.
                unsafe { core::ptr::write_volatile(base.add(i), v) };
            }
            for i in 0..WORDS {
                let v = pattern ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) & (pattern | 0xFF);
                // SAFETY: as above.
                if unsafe { core::ptr::read_volatile(base.add(i)) } != v {
                    ok = false;
                }
            }
        }
        free(pa);
        if !ok {
            return Err(pa);
        }
        tested += 1;
    }
    Ok(tested)
}
