//! Guest-physical memory of one VM: zeroed frames mapped by EPT or NPT
//! (one builder, `nested-paging`). Hypercall buffers are translated through
//! the same tables the CPU uses, and bounds-checked page by page.

use super::{frames, PAGE_SIZE};
use alloc::vec::Vec;
use nested_paging::{Format, FrameSource, NestedPageTable, Perms};

/// Frames come from the global allocator; tables are reached through the
/// identity map.
pub struct IdentityFrames;

impl FrameSource for IdentityFrames {
    fn alloc_zeroed_frame(&mut self) -> Option<u64> {
        frames::alloc()
    }

    fn table(&mut self, hpa: u64) -> &mut [u64; 512] {
        // SAFETY: `hpa` is a table frame this builder allocated from the
        // frame allocator; it is identity mapped, 4 KiB aligned and owned by
        // exactly one page table.
        unsafe { &mut *(hpa as *mut [u64; 512]) }
    }
}

/// Why a guest-physical access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemError {
    /// Some byte of the range is not guest RAM.
    OutOfRange,
}

/// One VM's RAM: `[0, size)` guest-physical.
pub struct GuestMemory {
    size: u64,
    pages: Vec<u64>,
    table: NestedPageTable,
}

impl GuestMemory {
    /// Allocates and maps `size` bytes (a multiple of 4 KiB) of zeroed RAM.
    pub fn new(size: u64, format: Format) -> Result<GuestMemory, &'static str> {
        let count = size / PAGE_SIZE;
        let table = NestedPageTable::new(format, &mut IdentityFrames).map_err(|_| "out of memory for page tables")?;
        // Built in place so that, on any failure, Drop gives back what was taken.
        let mut mem = GuestMemory { size: 0, pages: Vec::new(), table };
        mem.pages.try_reserve_exact(count as usize).map_err(|_| "out of heap")?;
        for i in 0..count {
            let hpa = frames::alloc().ok_or("out of memory for guest RAM")?;
            mem.pages.push(hpa);
            mem.table
                .map_4k(&mut IdentityFrames, i * PAGE_SIZE, hpa, Perms::RWX)
                .map_err(|_| "out of memory for page tables")?;
        }
        mem.size = size;
        Ok(mem)
    }

    /// RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// EPT pointer or NPT nCR3 for the VMCS/VMCB.
    pub fn root_pointer(&self) -> u64 {
        match self.table.format() {
            Format::Ept => self.table.eptp(),
            Format::Npt => self.table.ncr3(),
        }
    }

    fn check(&self, gpa: u64, len: u64) -> Result<(), GuestMemError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(GuestMemError::OutOfRange),
        }
    }

    /// Copies host bytes into guest RAM (loading images, boot info).
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemError> {
        self.check(gpa, data.len() as u64)?;
        let mut done = 0usize;
        while done < data.len() {
            let at = gpa + done as u64;
            let in_page = (PAGE_SIZE - at % PAGE_SIZE) as usize;
            let n = in_page.min(data.len() - done);
            let hpa = *self.pages.get((at / PAGE_SIZE) as usize).ok_or(GuestMemError::OutOfRange)?;
            let src = data.get(done..done + n).ok_or(GuestMemError::OutOfRange)?;
            // SAFETY: `hpa` is a frame owned by this VM, identity mapped; the
            // copy stays within one page (n <= bytes left in the page).
            unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), (hpa + at % PAGE_SIZE) as *mut u8, n) };
            done += n;
        }
        Ok(())
    }

    /// Reads guest RAM through the nested page table, as the CPU would.
    /// Any byte outside RAM fails the whole read.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemError> {
        self.check(gpa, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = gpa + done as u64;
            let in_page = (PAGE_SIZE - at % PAGE_SIZE) as usize;
            let n = in_page.min(buf.len() - done);
            let (hpa, _) = self.table.translate(&mut IdentityFrames, at).ok_or(GuestMemError::OutOfRange)?;
            let dst = buf.get_mut(done..done + n).ok_or(GuestMemError::OutOfRange)?;
            // SAFETY: `hpa` came from this VM's own page table, so it is one of
            // its frames; the copy stays within that page.
            unsafe { core::ptr::copy_nonoverlapping(hpa as *const u8, dst.as_mut_ptr(), n) };
            done += n;
        }
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // Every CPU that ran this VM drops its cached translations before
        // its next VM entry (see `percpu::TLB_GENERATION`).
        crate::arch::x86_64::percpu::guest_memory_released();
        for &hpa in &self.pages {
            frames::free(hpa);
        }
        for f in self.table.table_frames(&mut IdentityFrames) {
            frames::free(f);
        }
    }
}

impl virtio_dev::GuestMemory for GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), virtio_dev::MemoryError> {
        GuestMemory::read(self, gpa, buf).map_err(|_| virtio_dev::MemoryError { gpa, len: buf.len() as u64 })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), virtio_dev::MemoryError> {
        GuestMemory::write(self, gpa, data).map_err(|_| virtio_dev::MemoryError { gpa, len: data.len() as u64 })
    }
}

impl pc_devices::bus::Memory for GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        GuestMemory::read(self, gpa, buf).is_ok()
    }

    fn write(&self, gpa: u64, data: &[u8]) -> bool {
        GuestMemory::write(self, gpa, data).is_ok()
    }
}
