//! The transmit path: guest chains become frames for the hypervisor.

use alloc::vec::Vec;

use super::{VirtioNet, HDR_LEN, TX_BACKLOG_MAX, TX_BACKLOG_MAX_BYTES, TX_QUEUE};
use crate::memory::GuestMemory;
use crate::queue::{DescriptorChain, QueueError, Virtqueue};

/// Passes over the ring per notification (each re-checks after re-enabling notifications).
const MAX_PASSES: usize = 4;

impl VirtioNet {
    /// Takes available transmit chains, with notifications off meanwhile so a
    /// busy guest need not exit per packet. Work is bounded by twice the
    /// queue size and by the backlog; what is left sets `tx_backlog`.
    pub(super) fn transmit(&mut self, queues: &mut [Virtqueue], mem: &dyn GuestMemory) -> Result<(), QueueError> {
        let Some(q) = queues.get_mut(usize::from(TX_QUEUE)) else { return Ok(()) };
        let mut budget = 2 * usize::from(q.size());
        self.tx_backlog = false;
        for _ in 0..MAX_PASSES {
            q.set_notifications(mem, false)?;
            while budget > 0 && !self.backlog_full() {
                let Some(chain) = q.pop(mem)? else { break };
                budget -= 1;
                self.take_frame(&chain, mem)?;
                q.push_used(mem, chain.head(), 0)?;
            }
            if self.tx_polled {
                // The hypervisor will come back: leave notifications off.
                if !q.has_available(mem)? {
                    return Ok(());
                }
            } else {
                q.set_notifications(mem, true)?;
                if !q.has_available(mem)? {
                    return Ok(());
                }
            }
            if budget == 0 || self.backlog_full() {
                break;
            }
        }
        self.tx_backlog = true;
        Ok(())
    }

    fn backlog_full(&self) -> bool {
        self.tx_frames.len() >= TX_BACKLOG_MAX || self.tx_bytes >= TX_BACKLOG_MAX_BYTES
    }

    /// Copies one chain's readable bytes, strips the header, queues the frame.
    fn take_frame(&mut self, chain: &DescriptorChain, mem: &dyn GuestMemory) -> Result<(), QueueError> {
        // Bounded by the queue's max_chain_bytes, checked during the walk.
        let total = usize::try_from(chain.readable_len()).map_err(|_| QueueError::TooManyBytes)?;
        let mut data = alloc::vec![0u8; total];
        let mut rest = data.as_mut_slice();
        for &(gpa, len) in &chain.readable {
            let (part, tail) = rest.split_at_mut(usize::try_from(len).unwrap_or(usize::MAX).min(rest.len()));
            mem.read(gpa, part)?;
            rest = tail;
        }
        if data.len() <= HDR_LEN {
            // No frame behind the header: the guest's mistake, not a broken ring.
            self.counters.errors += 1;
            return Ok(());
        }
        let frame: Vec<u8> = data.split_off(HDR_LEN);
        self.tx_bytes += frame.len();
        self.tx_frames.push_back(frame);
        self.counters.tx_frames += 1;
        Ok(())
    }
}
