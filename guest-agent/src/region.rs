//! The shared region the agent registers with `agent_attach`: locked,
//! page-aligned anonymous memory that the node reads and writes only during
//! the agent's own hypercalls.

use std::io;
use std::ptr::NonNull;

use agent_proto::ring::RingFault;
use agent_proto::RingMem;

/// An mmap'd, mlock'd region, excluded from fork so children never share
/// (copy-on-write) the pages the node writes into.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    /// Maps `len` bytes (a multiple of the page size), locks them in RAM.
    pub fn new(len: usize) -> io::Result<Region> {
        // SAFETY: anonymous private mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let region = Region { ptr, len };
        // SAFETY: the range is the mapping we just created.
        if unsafe { libc::mlock(p, len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; MADV_DONTFORK only affects future forks.
        if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(region)
    }

    /// The region's address, as `agent_attach` takes it.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe our live mapping; the node only touches
        // it during our own (synchronous) hypercalls, never concurrently.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in bytes(); &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl RingMem for Region {
    fn read(&self, off: u32, buf: &mut [u8]) -> Result<(), RingFault> {
        self.bytes().read(off, buf)
    }

    fn write(&mut self, off: u32, data: &[u8]) -> Result<(), RingFault> {
        self.bytes_mut().write(off, data)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no references outlive self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
