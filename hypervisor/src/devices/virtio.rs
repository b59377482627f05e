//! The VM's virtio-mmio devices (virtio 1.x, "virtio-mmio v2"): 32 slots of
//! 0x200 bytes at 0xFEB0_0000 (QEMU microvm's layout), slot n raising GSI
//! 16 + n, level-triggered, as the DSDT announces them. The NIC and the
//! disk are bus devices; the node reaches them through their shared
//! handles (frames to deliver, transmit rings to drain, disk backlog).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use pc_devices::bus::{BusDevice, Effect, Env, Memory};
use virtio_dev::blk::VirtioBlk;
use virtio_dev::{MemoryError, MmioDevice, VirtioNet};
use vswitch::policy::PortId;

/// First byte of the device window.
pub const WINDOW_BASE: u64 = 0xFEB0_0000;
/// Bytes per device slot.
pub const SLOT_SIZE: u64 = 0x200;
/// Number of slots.
pub const SLOTS: u64 = 32;
/// GSI of slot 0.
pub const FIRST_GSI: u32 = 16;
/// Slot of the NIC and of the disk.
pub const NIC_SLOT: u64 = 0;
/// Slot of the disk.
pub const DISK_SLOT: u64 = 1;
/// Frames held for a VM whose receive ring is full, before dropping.
const MAX_PENDING_RX: usize = 64;

/// Whether `gpa` is in the device window (empty slots read as no device).
pub fn in_window(gpa: u64) -> bool {
    (WINDOW_BASE..WINDOW_BASE + SLOT_SIZE * SLOTS).contains(&gpa)
}

/// Base address and GSI of slot `n`.
pub fn slot(n: u64) -> (u64, u32) {
    (WINDOW_BASE + SLOT_SIZE * n, FIRST_GSI + n as u32)
}

/// Guest RAM as virtio-dev wants it, over the bus's view of it.
pub struct VirtioMem<'a>(pub &'a dyn Memory);

impl virtio_dev::GuestMemory for VirtioMem<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if self.0.read(gpa, buf) {
            Ok(())
        } else {
            Err(MemoryError { gpa, len: buf.len() as u64 })
        }
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        if self.0.write(gpa, data) {
            Ok(())
        } else {
            Err(MemoryError { gpa, len: data.len() as u64 })
        }
    }
}

fn read_device<B: virtio_dev::DeviceBackend>(dev: &mut MmioDevice<B>, offset: u64, data: &mut [u8]) {
    let v = match data.len() {
        8 => u64::from(dev.read(offset, 4)) | (u64::from(dev.read(offset + 4, 4)) << 32),
        n => u64::from(dev.read(offset, n as u8)),
    };
    for (i, b) in data.iter_mut().enumerate() {
        *b = (v >> (8 * i)) as u8;
    }
}

fn value_of(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    for (d, s) in v.iter_mut().zip(data) {
        *d = *s;
    }
    u32::from_le_bytes(v)
}

/// The VM's NIC: the virtio device, its switch port and frames waiting
/// for receive buffers.
pub struct NetSlot {
    pub dev: MmioDevice<VirtioNet>,
    pub port: PortId,
    pub pending_rx: VecDeque<Vec<u8>>,
    /// Frames dropped because the guest posted no receive buffers in time.
    pub rx_overflow: u64,
}

impl NetSlot {
    /// A NIC with `mac` on switch port `port`. The node polls
    /// the transmit ring every round, so guests need not exit to notify
    /// each frame.
    pub fn new(mac: [u8; 6], port: PortId) -> NetSlot {
        let mut net = VirtioNet::new(mac);
        net.set_tx_polling(true);
        NetSlot { dev: MmioDevice::new(net), port, pending_rx: VecDeque::new(), rx_overflow: 0 }
    }

    /// Puts a frame into the guest's receive ring, or holds it until the
    /// guest posts buffers.
    pub fn deliver(&mut self, mem: &dyn Memory, frame: Vec<u8>) {
        if !self.pending_rx.is_empty() {
            self.flush_pending(mem);
        }
        if self.pending_rx.is_empty() {
            match self.dev.deliver_rx(&VirtioMem(mem), &frame) {
                Ok(true) => return,
                Ok(false) => {}
                Err(_) => return, // device now needs a reset; counted by the device
            }
        }
        if self.pending_rx.len() >= MAX_PENDING_RX {
            self.rx_overflow += 1;
            return;
        }
        self.pending_rx.push_back(frame);
    }

    /// Retries held frames.
    pub fn flush_pending(&mut self, mem: &dyn Memory) {
        while let Some(frame) = self.pending_rx.front() {
            match self.dev.deliver_rx(&VirtioMem(mem), frame) {
                Ok(true) => {
                    self.pending_rx.pop_front();
                }
                Ok(false) => break,
                Err(_) => {
                    self.pending_rx.clear();
                    break;
                }
            }
        }
    }
}

impl BusDevice for NetSlot {
    fn read(&mut self, offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        read_device(&mut self.dev, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8], env: &mut Env<'_>) -> Effect {
        let size = data.len().min(4) as u8;
        let outcome = self.dev.write(offset, size, value_of(data), &VirtioMem(env.mem));
        if outcome.reset {
            self.pending_rx.clear();
        }
        match outcome.notified {
            Some(0) => {
                self.flush_pending(env.mem);
                Effect::None
            }
            // Frames queued to send: end the slice so the node switches them.
            Some(1) => Effect::Kick,
            _ => Effect::None,
        }
    }

    fn irq_level(&self) -> bool {
        self.dev.interrupt_pending()
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }
}

/// The VM's disk: a virtio-blk device over its encrypted volume.
pub struct DiskSlot {
    pub dev: MmioDevice<VirtioBlk<crate::storage::GuestDisk>>,
}

impl DiskSlot {
    /// Finishes block requests left over from a busy notify.
    pub fn poll(&mut self, mem: &dyn Memory) {
        if self.dev.backend().backlog() {
            let _ = self.dev.poll(&VirtioMem(mem));
        }
    }
}

impl BusDevice for DiskSlot {
    fn read(&mut self, offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        read_device(&mut self.dev, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8], env: &mut Env<'_>) -> Effect {
        let size = data.len().min(4) as u8;
        let _ = self.dev.write(offset, size, value_of(data), &VirtioMem(env.mem));
        Effect::None
    }

    fn irq_level(&self) -> bool {
        self.dev.interrupt_pending()
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }
}
