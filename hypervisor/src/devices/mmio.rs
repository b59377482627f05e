//! The VM's MMIO device window: 32 slots of 0x200 bytes at 0xFEB0_0000
//! (the layout of QEMU's microvm, so the same guests run on both). Slot 0
//! holds the VM's virtio-net NIC when it has one. A slot without a device
//! reads as zero (virtio-mmio: no magic, device ID 0) and ignores writes.

use crate::mm::guest::GuestMemory;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use virtio_dev::blk::VirtioBlk;
use virtio_dev::{MmioDevice, VirtioNet};
use vswitch::policy::PortId;

/// First byte of the window.
pub const WINDOW_BASE: u64 = 0xFEB0_0000;
/// Bytes per device slot.
pub const SLOT_SIZE: u64 = 0x200;
/// Number of slots.
pub const SLOTS: u64 = 32;
/// One past the last byte of the window.
pub const WINDOW_END: u64 = WINDOW_BASE + SLOT_SIZE * SLOTS;
/// Frames held for a VM whose receive ring is full, before dropping.
const MAX_PENDING_RX: usize = 64;

/// The VM's NIC: the virtio device, its switch port and frames waiting
/// for receive buffers.
pub struct NetSlot {
    pub base: u64,
    pub dev: MmioDevice<VirtioNet>,
    pub port: PortId,
    pub pending_rx: VecDeque<Vec<u8>>,
    /// Frames dropped because the guest posted no receive buffers in time.
    pub rx_overflow: u64,
}

impl NetSlot {
    /// Puts a frame into the guest's receive ring, or holds it until the
    /// guest posts buffers.
    pub fn deliver(&mut self, mem: &GuestMemory, frame: Vec<u8>) {
        if !self.pending_rx.is_empty() {
            self.flush_pending(mem);
        }
        if self.pending_rx.is_empty() {
            match self.dev.deliver_rx(mem, &frame) {
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
    pub fn flush_pending(&mut self, mem: &GuestMemory) {
        while let Some(frame) = self.pending_rx.front() {
            match self.dev.deliver_rx(mem, frame) {
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

/// The VM's disk: a virtio-blk device over its encrypted volume.
pub struct DiskSlot {
    pub base: u64,
    pub dev: MmioDevice<VirtioBlk<crate::storage::GuestDisk>>,
}

/// The VM's devices by slot.
#[derive(Default)]
pub struct MmioBus {
    pub nic: Option<NetSlot>,
    pub disk: Option<DiskSlot>,
    /// Accesses to empty slots.
    pub stray: u64,
}

/// What an MMIO write asks of the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    None,
    /// The guest queued frames to send: end its slice so they are switched.
    TxQueued,
}

impl MmioBus {
    /// Whether a guest-physical address is in the device window.
    pub fn window_contains(gpa: u64) -> bool {
        (WINDOW_BASE..WINDOW_END).contains(&gpa)
    }

    /// Gives the VM a virtio-net NIC in slot 0.
    pub fn attach_nic(&mut self, mac: [u8; 6], port: PortId) -> u64 {
        let base = WINDOW_BASE;
        // The node polls the transmit ring every round, so guests need not
        // exit to notify each frame.
        let mut net = VirtioNet::new(mac);
        net.set_tx_polling(true);
        self.nic = Some(NetSlot { base, dev: MmioDevice::new(net), port, pending_rx: VecDeque::new(), rx_overflow: 0 });
        base
    }

    /// Gives the VM a virtio-blk disk in slot 1.
    pub fn attach_disk(&mut self, disk: crate::storage::GuestDisk) -> u64 {
        let base = WINDOW_BASE + SLOT_SIZE;
        self.disk = Some(DiskSlot { base, dev: MmioDevice::new(VirtioBlk::new(disk)) });
        base
    }

    fn disk_offset(&mut self, gpa: u64, size: u8) -> Option<(&mut DiskSlot, u64)> {
        let disk = self.disk.as_mut()?;
        let off = gpa.checked_sub(disk.base)?;
        (off + u64::from(size) <= SLOT_SIZE).then_some((disk, off))
    }

    /// Finishes block requests left over from a busy notify.
    pub fn poll_disk(&mut self, mem: &GuestMemory) {
        if let Some(d) = self.disk.as_mut() {
            if d.dev.backend().backlog() {
                let _ = d.dev.poll(mem);
            }
        }
    }

    fn nic_offset(&mut self, gpa: u64, size: u8) -> Option<(&mut NetSlot, u64)> {
        let nic = self.nic.as_mut()?;
        let off = gpa.checked_sub(nic.base)?;
        (off + u64::from(size) <= SLOT_SIZE).then_some((nic, off))
    }

    /// Guest read; zero where there is no device.
    pub fn read(&mut self, gpa: u64, size: u8, _mem: &GuestMemory) -> u64 {
        if let Some((disk, off)) = self.disk_offset(gpa, size) {
            return if size == 8 {
                u64::from(disk.dev.read(off, 4)) | (u64::from(disk.dev.read(off + 4, 4)) << 32)
            } else {
                u64::from(disk.dev.read(off, size))
            };
        }
        match self.nic_offset(gpa, size) {
            Some((nic, off)) if size == 8 => {
                u64::from(nic.dev.read(off, 4)) | (u64::from(nic.dev.read(off + 4, 4)) << 32)
            }
            Some((nic, off)) => u64::from(nic.dev.read(off, size)),
            None => {
                self.stray += 1;
                0
            }
        }
    }

    /// Guest write; ignored where there is no device.
    pub fn write(&mut self, gpa: u64, size: u8, value: u64, mem: &GuestMemory) -> WriteEffect {
        if let Some((disk, off)) = self.disk_offset(gpa, size) {
            let _ = disk.dev.write(off, size.min(4), value as u32, mem);
            return WriteEffect::None;
        }
        let Some((nic, off)) = self.nic_offset(gpa, size) else {
            self.stray += 1;
            return WriteEffect::None;
        };
        let outcome = nic.dev.write(off, size.min(4), value as u32, mem);
        if outcome.reset {
            nic.pending_rx.clear();
        }
        match outcome.notified {
            Some(0) => {
                nic.flush_pending(mem);
                WriteEffect::None
            }
            Some(1) => WriteEffect::TxQueued,
            _ => WriteEffect::None,
        }
    }
}
