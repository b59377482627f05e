//! virtio-net (device ID 1, spec 5.1) on top of the generic transport.
//!
//! Queue 0 receives (device to guest), queue 1 transmits. Every buffer
//! starts with the 12-byte `virtio_net_hdr` of virtio 1.x; no offloads are
//! offered, so the header carries nothing the device must act on. Frames
//! leave through [`VirtioNet::take_tx_frames`] and enter through
//! [`MmioDevice::deliver_rx`].

mod rx;
mod tx;

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::features::{EVENT_IDX, INDIRECT_DESC, VERSION_1};
use crate::memory::GuestMemory;
use crate::mmio::{DeviceBackend, MmioDevice};
use crate::queue::{QueueError, Virtqueue};

/// virtio device ID of a network card.
pub const DEVICE_ID: u32 = 1;
/// Feature: config space holds the MAC address.
pub const F_MAC: u64 = 1 << 5;
/// Feature: config space holds the link status.
pub const F_STATUS: u64 = 1 << 16;
/// Config `status` bit: the link is up.
pub const STATUS_LINK_UP: u16 = 1;
/// Length of `struct virtio_net_hdr` with VERSION_1 (includes `num_buffers`).
pub const HDR_LEN: usize = 12;
/// Largest frame (without the virtio header) carried either way.
pub const MAX_FRAME_LEN: usize = 65_536;
/// Receive queue index.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue index.
pub const TX_QUEUE: u16 = 1;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Transmitted frames held for the hypervisor before the device stops taking more.
pub const TX_BACKLOG_MAX: usize = 512;
/// Transmitted bytes held for the hypervisor before the device stops taking more,
/// so a guest cannot make BMonitor buffer megabytes of its frames.
pub const TX_BACKLOG_MAX_BYTES: usize = 256 * 1024;

/// Packet and error counts, for the consoles (DESIGN: "counted, not guessed").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames taken from the guest's transmit queue.
    pub tx_frames: u64,
    /// Frames written into the guest's receive buffers.
    pub rx_frames: u64,
    /// Frames dropped because the guest had no receive buffer posted.
    pub rx_dropped_no_buffer: u64,
    /// Frames dropped because the posted buffer was too small, or the frame too large.
    pub rx_dropped_too_big: u64,
    /// Malformed transmit chains (shorter than the header) and queue errors.
    pub errors: u64,
}

/// The virtio-net device type: MAC, link state, frames in flight, counters.
#[derive(Debug)]
pub struct VirtioNet {
    mac: [u8; 6],
    tx_frames: VecDeque<Vec<u8>>,
    /// Sum of the lengths in `tx_frames`.
    tx_bytes: usize,
    /// The last transmit pass stopped with chains still pending.
    tx_backlog: bool,
    /// The hypervisor polls the transmit ring itself, so the guest is asked
    /// never to notify (no exit per packet).
    tx_polled: bool,
    counters: NetCounters,
}

impl VirtioNet {
    /// Polled transmit: the guest is told not to notify after sends (and
    /// EVENT_IDX is not offered, see `features`), and
    /// the hypervisor drains the ring with `MmioDevice::poll` on its own
    /// schedule (e.g. every time slice and whenever the guest yields).
    pub fn set_tx_polling(&mut self, polled: bool) {
        self.tx_polled = polled;
    }

    /// A NIC with the MAC address BMonitor assigned; the link is always up.
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            tx_frames: VecDeque::new(),
            tx_bytes: 0,
            tx_backlog: false,
            tx_polled: false,
            counters: NetCounters::default(),
        }
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The counters so far (not cleared by a device reset).
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Frames the guest transmitted, oldest first, without virtio headers.
    /// Afterwards call [`MmioDevice::poll`] if [`Self::tx_backlog`] is set.
    pub fn take_tx_frames(&mut self) -> Vec<Vec<u8>> {
        self.tx_bytes = 0;
        self.tx_frames.drain(..).collect()
    }

    /// The device stopped transmitting early (backlog full or work budget
    /// spent) and chains may still wait: drain and poll.
    pub fn tx_backlog(&self) -> bool {
        self.tx_backlog
    }

    fn config_bytes(&self) -> [u8; 8] {
        let [m0, m1, m2, m3, m4, m5] = self.mac;
        let [s0, s1] = STATUS_LINK_UP.to_le_bytes();
        [m0, m1, m2, m3, m4, m5, s0, s1]
    }
}

impl DeviceBackend for VirtioNet {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        // Polled transmit relies on used.flags NO_NOTIFY, which every driver
        // honours; some drivers (virtio-drivers 0.13) misread avail_event and
        // would notify per frame with EVENT_IDX.
        if self.tx_polled {
            return VERSION_1 | F_MAC | F_STATUS | INDIRECT_DESC;
        }
        VERSION_1 | F_MAC | F_STATUS | EVENT_IDX | INDIRECT_DESC
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn queue_max(&self) -> u16 {
        QUEUE_SIZE
    }

    fn max_chain_bytes(&self, _queue: u16) -> u32 {
        (HDR_LEN + MAX_FRAME_LEN) as u32
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|a| config.get(a)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // MAC and status are read-only without VIRTIO_NET_F_CTRL_MAC_ADDR.
    }

    fn notify(&mut self, queue: u16, queues: &mut [Virtqueue], mem: &dyn GuestMemory) -> Result<(), QueueError> {
        if queue != TX_QUEUE {
            // RX refills need no work now: buffers are taken when a frame arrives.
            return Ok(());
        }
        let result = self.transmit(queues, mem);
        if result.is_err() {
            self.counters.errors += 1;
        }
        result
    }

    fn reset(&mut self) {
        self.tx_frames.clear();
        self.tx_bytes = 0;
        self.tx_backlog = false;
    }
}

impl MmioDevice<VirtioNet> {
    /// Writes one frame into the guest's next receive buffer.
    ///
    /// `Ok(true)`: delivered (check [`MmioDevice::take_interrupt`]);
    /// `Ok(false)`: dropped and counted (no buffer, buffer too small, frame
    /// too large, or device not live); `Err`: the ring was broken and the
    /// device is now in DEVICE_NEEDS_RESET.
    pub fn deliver_rx(&mut self, mem: &dyn GuestMemory, frame: &[u8]) -> Result<bool, QueueError> {
        if frame.len() > MAX_FRAME_LEN {
            self.backend_mut().counters.rx_dropped_too_big += 1;
            return Ok(false);
        }
        let result = self.run_backend(mem, |net, queues, mem| net.receive(queues, mem, frame));
        match result {
            Ok(Some(delivered)) => Ok(delivered),
            Ok(None) => {
                self.backend_mut().counters.rx_dropped_no_buffer += 1;
                Ok(false)
            }
            Err(e) => {
                self.backend_mut().counters.errors += 1;
                Err(e)
            }
        }
    }
}
