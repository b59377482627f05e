//! The receive path: a frame from the switch goes into one guest chain.

use super::{VirtioNet, HDR_LEN, RX_QUEUE};
use crate::memory::GuestMemory;
use crate::queue::{DescriptorChain, QueueError, Virtqueue};

/// The header for a received frame: no offloads, `num_buffers` = 1.
fn rx_header() -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    if let Some(n) = h.get_mut(10) {
        *n = 1;
    }
    h
}

/// Scatters `parts` (in order) over the chain's writable buffers.
fn scatter(chain: &DescriptorChain, mem: &dyn GuestMemory, parts: [&[u8]; 2]) -> Result<(), QueueError> {
    let mut buffers = chain.writable.iter().copied();
    let (mut gpa, mut room) = (0u64, 0usize);
    for mut data in parts {
        while !data.is_empty() {
            if room == 0 {
                let Some((g, len)) = buffers.next() else { return Err(QueueError::TooManyBytes) };
                gpa = g;
                room = usize::try_from(len).unwrap_or(usize::MAX);
            }
            let n = room.min(data.len());
            let (now, later) = data.split_at(n);
            mem.write(gpa, now)?;
            gpa += n as u64; // within the buffer, which does not wrap (checked in the walk)
            room -= n;
            data = later;
        }
    }
    Ok(())
}

impl VirtioNet {
    /// Puts `frame` into the next receive chain; `Ok(false)` if dropped.
    ///
    /// Notifications on the receive queue stay off while buffers are
    /// available and are turned on only when the ring runs dry, so buffer
    /// refills cost the guest no exits in the common case.
    pub(super) fn receive(
        &mut self,
        queues: &mut [Virtqueue],
        mem: &dyn GuestMemory,
        frame: &[u8],
    ) -> Result<bool, QueueError> {
        let Some(q) = queues.get_mut(usize::from(RX_QUEUE)) else { return Ok(false) };
        let chain = match q.pop(mem)? {
            Some(c) => c,
            None => {
                q.set_notifications(mem, true)?;
                match q.pop(mem)? {
                    Some(c) => c,
                    None => {
                        self.counters.rx_dropped_no_buffer += 1;
                        return Ok(false);
                    }
                }
            }
        };
        q.set_notifications(mem, false)?;
        let needed = HDR_LEN + frame.len();
        if chain.writable_len() < needed as u64 {
            q.push_used(mem, chain.head(), 0)?;
            self.counters.rx_dropped_too_big += 1;
            return Ok(false);
        }
        scatter(&chain, mem, [&rx_header(), frame])?;
        // needed <= HDR_LEN + MAX_FRAME_LEN, far below u32::MAX.
        q.push_used(mem, chain.head(), needed as u32)?;
        self.counters.rx_frames += 1;
        Ok(true)
    }
}
