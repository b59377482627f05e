//! The node's physical NIC, driven through `virtio-drivers`.

use crate::drivers::pci::PciTransportHandle;
use crate::drivers::virtio_hal::BmHal;
use alloc::vec::Vec;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::Transport;

const QUEUE_SIZE: usize = 64;
/// Receive buffer size: a full Ethernet frame plus the virtio-net header.
const RX_BUF_LEN: usize = 2048;

/// Raw frame I/O on the uplink.
pub struct PhysNic {
    dev: VirtIONet<BmHal, PciTransportHandle, QUEUE_SIZE>,
    /// Frames sent and received, for node status.
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub tx_errors: u64,
    /// A second handle on the same device, only to read its config space
    /// (link status), which the driver does not expose; `None` when the
    /// device does not offer VIRTIO_NET_F_STATUS.
    status: Option<PciTransportHandle>,
}

/// VIRTIO_NET_F_STATUS: the config space's `status` field is valid.
const F_STATUS: u64 = 1 << 16;
/// Offset of `status` in virtio-net config space (after the MAC).
const STATUS_OFFSET: usize = 6;
/// VIRTIO_NET_S_LINK_UP.
const S_LINK_UP: u16 = 1;

impl PhysNic {
    /// Brings up the device on `transport`.
    /// `config` is a second transport on the same device for reading the
    /// link status, if one could be made.
    pub fn new(transport: PciTransportHandle, config: Option<PciTransportHandle>) -> Result<PhysNic, &'static str> {
        let dev = VirtIONet::new(transport, RX_BUF_LEN).map_err(|_| "virtio-net initialisation failed")?;
        let status = config.and_then(|mut t| (t.read_device_features() & F_STATUS != 0).then_some(t));
        Ok(PhysNic { dev, tx_frames: 0, rx_frames: 0, tx_errors: 0, status })
    }

    /// Whether the link is up, as the device reports it; `None` when the
    /// device does not report link status.
    pub fn link_up(&self) -> Option<bool> {
        let t = self.status.as_ref()?;
        let status: u16 = t.read_config_space(STATUS_OFFSET).ok()?;
        Some(status & S_LINK_UP != 0)
    }

    /// The NIC's MAC address (the management stack uses it).
    pub fn mac(&self) -> [u8; 6] {
        self.dev.mac_address()
    }

    /// Takes one received frame, if any.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        if !self.dev.can_recv() {
            return None;
        }
        let buf = self.dev.receive().ok()?;
        let frame = buf.packet().to_vec();
        let _ = self.dev.recycle_rx_buffer(buf);
        self.rx_frames += 1;
        Some(frame)
    }

    /// Sends one frame; drops it (counted) if the device refuses.
    pub fn send(&mut self, frame: &[u8]) {
        let mut tx = self.dev.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        match self.dev.send(tx) {
            Ok(()) => self.tx_frames += 1,
            Err(_) => self.tx_errors += 1,
        }
    }
}
