//! Walking one descriptor chain (spec 2.7.5, 2.7.5.3) into buffer lists.
//!
//! Every index, flag, address and length comes from guest memory and is
//! checked here; the walk takes at most `2 * size` descriptor reads, whatever
//! the table holds.

use alloc::vec::Vec;

use super::QueueError;
use crate::memory::GuestMemory;

/// Size of one `struct virtq_desc` in bytes.
pub(crate) const DESC_SIZE: u64 = 16;
/// The chain continues in `next`.
const F_NEXT: u16 = 1;
/// The buffer is device-writable.
const F_WRITE: u16 = 2;
/// The buffer holds a table of descriptors.
const F_INDIRECT: u16 = 4;

/// A chain of guest buffers taken from the available ring.
///
/// The device reads the `readable` buffers and fills the `writable` ones, in
/// order; each entry is `(guest-physical address, length)`. Lengths are
/// non-zero and `address + length` does not wrap, but whether the range is
/// guest RAM is checked when it is accessed through [`GuestMemory`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    /// Device-readable buffers (driver to device), in chain order.
    pub readable: Vec<(u64, u32)>,
    /// Device-writable buffers (device to driver), in chain order.
    pub writable: Vec<(u64, u32)>,
}

impl DescriptorChain {
    /// The head index to hand back with [`super::Virtqueue::push_used`].
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Total bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|&(_, len)| u64::from(len)).sum()
    }
}

/// What a walk may accept; fixed per queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChainLimits {
    /// Queue size: bound on descriptors per chain and on indices.
    pub size: u16,
    /// Bound on the sum of all buffer lengths.
    pub max_bytes: u64,
    /// Whether VIRTIO_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
}

/// One `struct virtq_desc`, decoded.
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_descriptor(mem: &dyn GuestMemory, table: u64, index: u16) -> Result<Descriptor, QueueError> {
    let gpa = table.checked_add(u64::from(index) * DESC_SIZE).ok_or(QueueError::BadAddress { gpa: table })?;
    let mut b = [0u8; 16];
    mem.read(gpa, &mut b)?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
    Ok(Descriptor {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    })
}

/// Accumulates buffers while enforcing the per-chain rules.
struct Builder {
    chain: DescriptorChain,
    limits: ChainLimits,
    count: u32,
    bytes: u64,
    seen_writable: bool,
}

impl Builder {
    fn add(&mut self, d: &Descriptor) -> Result<(), QueueError> {
        self.count += 1;
        if self.count > u32::from(self.limits.size) {
            return Err(QueueError::ChainTooLong);
        }
        if d.addr.checked_add(u64::from(d.len)).is_none() {
            return Err(QueueError::BadAddress { gpa: d.addr });
        }
        self.bytes += u64::from(d.len);
        if self.bytes > self.limits.max_bytes {
            return Err(QueueError::TooManyBytes);
        }
        let writable = d.flags & F_WRITE != 0;
        if writable {
            self.seen_writable = true;
        } else if self.seen_writable {
            return Err(QueueError::WritableBeforeReadable);
        }
        if d.len != 0 {
            let list = if writable { &mut self.chain.writable } else { &mut self.chain.readable };
            list.push((d.addr, d.len));
        }
        Ok(())
    }

    /// Follows an indirect table (spec 2.7.5.3): it ends the chain, may not nest.
    fn add_indirect(&mut self, mem: &dyn GuestMemory, d: &Descriptor) -> Result<(), QueueError> {
        if !self.limits.indirect {
            return Err(QueueError::IndirectNotNegotiated);
        }
        if d.flags & F_NEXT != 0 || d.len == 0 || u64::from(d.len) % DESC_SIZE != 0 {
            return Err(QueueError::BadIndirect);
        }
        let entries = u64::from(d.len) / DESC_SIZE;
        if entries > u64::from(self.limits.size) {
            return Err(QueueError::ChainTooLong);
        }
        if d.addr.checked_add(u64::from(d.len)).is_none() {
            return Err(QueueError::BadAddress { gpa: d.addr });
        }
        // entries <= size <= u16::MAX, so this cannot truncate.
        let entries = entries as u16;
        let mut index = 0u16;
        for _ in 0..entries {
            let inner = read_descriptor(mem, d.addr, index)?;
            if inner.flags & F_INDIRECT != 0 {
                return Err(QueueError::BadIndirect);
            }
            self.add(&inner)?;
            if inner.flags & F_NEXT == 0 {
                return Ok(());
            }
            index = inner.next;
            if index >= entries {
                return Err(QueueError::DescriptorOutOfRange { index });
            }
        }
        Err(QueueError::Loop)
    }
}

/// Walks the chain starting at `head` in the descriptor table at `table`.
pub(crate) fn walk_chain(
    mem: &dyn GuestMemory,
    table: u64,
    head: u16,
    limits: ChainLimits,
) -> Result<DescriptorChain, QueueError> {
    let mut b = Builder {
        chain: DescriptorChain { head, readable: Vec::new(), writable: Vec::new() },
        limits,
        count: 0,
        bytes: 0,
        seen_writable: false,
    };
    if head >= limits.size {
        return Err(QueueError::DescriptorOutOfRange { index: head });
    }
    let mut index = head;
    for _ in 0..limits.size {
        let d = read_descriptor(mem, table, index)?;
        if d.flags & F_INDIRECT != 0 {
            b.add_indirect(mem, &d)?;
            return Ok(b.chain);
        }
        b.add(&d)?;
        if d.flags & F_NEXT == 0 {
            return Ok(b.chain);
        }
        index = d.next;
        if index >= limits.size {
            return Err(QueueError::DescriptorOutOfRange { index });
        }
    }
    Err(QueueError::Loop)
}
