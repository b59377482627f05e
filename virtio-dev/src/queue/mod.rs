//! Split virtqueues (virtio 1.2, section 2.7), device side.
//!
//! A [`Virtqueue`] knows where the driver put the descriptor table, the
//! available ring and the used ring, and walks them through [`GuestMemory`].
//! It is transport- and device-agnostic: virtio-net and virtio-blk use it the
//! same way (`pop` a chain, do the work, `push_used`, ask `needs_interrupt`).
//!
//! All ring contents are guest-controlled. Each operation does a bounded
//! amount of work (a `pop` reads at most `2 * size + 3` guest locations) and
//! reports protocol violations as [`QueueError`] instead of guessing.

mod chain;
mod error;

use core::sync::atomic::{fence, Ordering};

pub use chain::DescriptorChain;
use chain::{walk_chain, ChainLimits, DESC_SIZE};
pub use error::QueueError;

use crate::memory::{read_u16, write_u16, GuestMemory};

/// Largest queue size the split ring format allows (spec 2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// `avail.flags`: the driver asks for no used-buffer interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: the device asks for no available-buffer notifications.
const USED_F_NO_NOTIFY: u16 = 1;

/// Where the driver placed a queue's three parts, and the size it chose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueLayout {
    /// Number of descriptors; a power of two.
    pub size: u16,
    /// Guest-physical address of the descriptor table (16-byte aligned).
    pub desc: u64,
    /// Guest-physical address of the available ring, the "driver area" (2-byte aligned).
    pub avail: u64,
    /// Guest-physical address of the used ring, the "device area" (4-byte aligned).
    pub used: u64,
}

/// What the device allows on a queue; fixed when the queue is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    /// Largest size the device offered (QueueNumMax).
    pub max_size: u16,
    /// VIRTIO_F_EVENT_IDX was negotiated: use `used_event` / `avail_event`.
    pub event_idx: bool,
    /// VIRTIO_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
    /// Largest total length of one chain's buffers, so one request is bounded work.
    pub max_chain_bytes: u32,
}

/// One split virtqueue, device side.
#[derive(Clone, Debug)]
pub struct Virtqueue {
    layout: QueueLayout,
    opts: QueueOptions,
    ready: bool,
    last_avail_idx: u16,
    used_idx: u16,
    /// `used_idx` when interrupts were last decided; the "old" of `vring_need_event`.
    signalled_used: u16,
    /// Chains popped but not yet returned; never above `size`.
    in_flight: u16,
    notifications: bool,
}

impl Default for Virtqueue {
    fn default() -> Self {
        Self::disabled()
    }
}

/// `vring_need_event` (spec 2.7.10): did `new - old` steps cross `event`?
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// `base + offset`, or the error naming `base` if it wraps.
fn at(base: u64, offset: u64) -> Result<u64, QueueError> {
    base.checked_add(offset).ok_or(QueueError::BadAddress { gpa: base })
}

impl Virtqueue {
    /// A queue the driver has not enabled: `pop` finds nothing.
    pub const fn disabled() -> Self {
        Self {
            layout: QueueLayout { size: 0, desc: 0, avail: 0, used: 0 },
            opts: QueueOptions { max_size: 0, event_idx: false, indirect: false, max_chain_bytes: 0 },
            ready: false,
            last_avail_idx: 0,
            used_idx: 0,
            signalled_used: 0,
            in_flight: 0,
            notifications: true,
        }
    }

    /// An enabled queue, after checking the layout the driver wrote: a
    /// power-of-two size not above `opts.max_size`, aligned rings, and no
    /// ring that wraps around the address space.
    pub fn new(layout: QueueLayout, opts: QueueOptions) -> Result<Self, QueueError> {
        let size = layout.size;
        if size == 0 || !size.is_power_of_two() || size > opts.max_size.min(MAX_QUEUE_SIZE) {
            return Err(QueueError::BadLayout);
        }
        if !layout.desc.is_multiple_of(16) || !layout.avail.is_multiple_of(2) || !layout.used.is_multiple_of(4) {
            return Err(QueueError::BadLayout);
        }
        let n = u64::from(size);
        at(layout.desc, n * DESC_SIZE)?;
        at(layout.avail, 6 + 2 * n)?;
        at(layout.used, 6 + 8 * n)?;
        Ok(Self { layout, opts, ready: true, ..Self::disabled() })
    }

    /// Whether the driver enabled this queue.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The queue size (0 when disabled).
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Where the rings are.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Index of the next available-ring entry the device will take.
    pub fn last_avail_idx(&self) -> u16 {
        self.last_avail_idx
    }

    /// Index of the next used-ring entry the device will write.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    fn avail_entry(&self, i: u16) -> Result<u64, QueueError> {
        at(self.layout.avail, 4 + 2 * u64::from(i % self.layout.size))
    }

    fn used_event_addr(&self) -> Result<u64, QueueError> {
        at(self.layout.avail, 4 + 2 * u64::from(self.layout.size))
    }

    fn avail_event_addr(&self) -> Result<u64, QueueError> {
        at(self.layout.used, 4 + 8 * u64::from(self.layout.size))
    }

    /// Number of chains the driver has made available and the device not yet
    /// taken; a jump beyond the queue size is a protocol violation.
    fn pending(&self, mem: &dyn GuestMemory) -> Result<u16, QueueError> {
        let avail_idx = read_u16(mem, at(self.layout.avail, 2)?)?;
        let pending = avail_idx.wrapping_sub(self.last_avail_idx);
        if pending > self.layout.size {
            return Err(QueueError::AvailIdxJump);
        }
        Ok(pending)
    }

    /// Whether a chain is waiting; used to close the race after re-enabling notifications.
    pub fn has_available(&self, mem: &dyn GuestMemory) -> Result<bool, QueueError> {
        if !self.ready {
            return Ok(false);
        }
        Ok(self.pending(mem)? != 0)
    }

    /// Takes the next available chain, checking every descriptor in it.
    ///
    /// `Ok(None)` when the ring is empty, the queue disabled, or all `size`
    /// descriptors already in flight.
    pub fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<DescriptorChain>, QueueError> {
        if !self.ready || self.in_flight >= self.layout.size || self.pending(mem)? == 0 {
            return Ok(None);
        }
        // The ring entry and descriptors were written before avail.idx.
        fence(Ordering::Acquire);
        let head = read_u16(mem, self.avail_entry(self.last_avail_idx)?)?;
        let limits = ChainLimits {
            size: self.layout.size,
            max_bytes: u64::from(self.opts.max_chain_bytes),
            indirect: self.opts.indirect,
        };
        let chain = walk_chain(mem, self.layout.desc, head, limits)?;
        self.last_avail_idx = self.last_avail_idx.wrapping_add(1);
        self.in_flight += 1;
        if self.opts.event_idx && self.notifications {
            write_u16(mem, self.avail_event_addr()?, self.last_avail_idx)?;
        }
        Ok(Some(chain))
    }

    /// Returns chain `head` to the driver, reporting `written` bytes filled.
    pub fn push_used(&mut self, mem: &dyn GuestMemory, head: u16, written: u32) -> Result<(), QueueError> {
        if !self.ready || self.in_flight == 0 || head >= self.layout.size {
            return Err(QueueError::NotInFlight);
        }
        let slot = at(self.layout.used, 4 + 8 * u64::from(self.used_idx % self.layout.size))?;
        let mut elem = [0u8; 8];
        let (id, len) = elem.split_at_mut(4);
        id.copy_from_slice(&u32::from(head).to_le_bytes());
        len.copy_from_slice(&written.to_le_bytes());
        mem.write(slot, &elem)?;
        // The element must be visible before the index that publishes it.
        fence(Ordering::Release);
        self.used_idx = self.used_idx.wrapping_add(1);
        write_u16(mem, at(self.layout.used, 2)?, self.used_idx)?;
        self.in_flight -= 1;
        Ok(())
    }

    /// Whether the driver wants an interrupt for the buffers used since the
    /// last call: honours `avail.flags` NO_INTERRUPT, or `used_event` when
    /// EVENT_IDX was negotiated (spec 2.7.7, 2.7.10).
    pub fn needs_interrupt(&mut self, mem: &dyn GuestMemory) -> Result<bool, QueueError> {
        if !self.ready || self.used_idx == self.signalled_used {
            return Ok(false);
        }
        let (old, new) = (self.signalled_used, self.used_idx);
        self.signalled_used = new;
        // used.idx must be visible before we read the driver's suppression state.
        fence(Ordering::SeqCst);
        if self.opts.event_idx {
            let event = read_u16(mem, self.used_event_addr()?)?;
            Ok(need_event(event, new, old))
        } else {
            let flags = read_u16(mem, self.layout.avail)?;
            Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks the driver to stop (`false`) or resume (`true`) notifying this queue.
    ///
    /// Without EVENT_IDX this is `used.flags` NO_NOTIFY; with it, resuming
    /// sets `avail_event` to the next entry the device will take. After
    /// resuming, check [`Self::has_available`]: the driver may have added a
    /// chain while notifications were off.
    pub fn set_notifications(&mut self, mem: &dyn GuestMemory, enabled: bool) -> Result<(), QueueError> {
        if !self.ready {
            return Ok(());
        }
        self.notifications = enabled;
        if self.opts.event_idx {
            if enabled {
                write_u16(mem, self.avail_event_addr()?, self.last_avail_idx)?;
            }
        } else {
            write_u16(mem, self.layout.used, if enabled { 0 } else { USED_F_NO_NOTIFY })?;
        }
        fence(Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_spec_formula() {
        // used_event = 5: moving from 5 to 6 crosses it, 6 to 7 does not.
        assert!(need_event(5, 6, 5));
        assert!(!need_event(5, 7, 6));
        assert!(need_event(5, 10, 0));
        // Wrap-around.
        assert!(need_event(0xffff, 1, 0xfffe));
        assert!(!need_event(3, 2, 1));
    }

    #[test]
    fn layout_is_checked() {
        let opts = QueueOptions { max_size: 256, event_idx: false, indirect: false, max_chain_bytes: 4096 };
        let ok = QueueLayout { size: 256, desc: 0x1000, avail: 0x2000, used: 0x3000 };
        assert!(Virtqueue::new(ok, opts).is_ok());
        for bad in [
            QueueLayout { size: 0, ..ok },
            QueueLayout { size: 100, ..ok },
            QueueLayout { size: 512, ..ok },
            QueueLayout { desc: 0x1008, ..ok },
            QueueLayout { avail: 0x2001, ..ok },
            QueueLayout { used: 0x3002, ..ok },
        ] {
            assert_eq!(Virtqueue::new(bad, opts).err(), Some(QueueError::BadLayout), "{bad:?}");
        }
        let wrap = QueueLayout { used: u64::MAX - 3, ..ok };
        assert!(matches!(Virtqueue::new(wrap, opts), Err(QueueError::BadAddress { .. })));
    }
}
