//! The VM's MMIO device window: 32 slots of 0x200 bytes at 0xFEB0_0000
//! (the layout of QEMU's microvm, so the same guests run on both). A slot
//! without a device reads as zero (virtio-mmio: no magic, device ID 0) and
//! ignores writes.

use crate::mm::guest::GuestMemory;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// First byte of the window.
pub const WINDOW_BASE: u64 = 0xFEB0_0000;
/// Bytes per device slot.
pub const SLOT_SIZE: u64 = 0x200;
/// Number of slots.
pub const SLOTS: usize = 32;
/// One past the last byte of the window.
pub const WINDOW_END: u64 = WINDOW_BASE + SLOT_SIZE * SLOTS as u64;

/// A device that lives in one slot. `offset` is within the slot; accesses
/// are at most 8 bytes and never cross the slot's end.
pub trait MmioDevice {
    /// Guest read of `size` bytes.
    fn read(&mut self, offset: u64, size: u8, mem: &GuestMemory) -> u64;
    /// Guest write of `size` bytes.
    fn write(&mut self, offset: u64, size: u8, value: u64, mem: &GuestMemory);
    /// Moves pending work (e.g. received frames) between the device and the
    /// node; called by the scheduler between slices.
    fn poll(&mut self, _mem: &GuestMemory) {}
    /// Kernel command-line fragment announcing the device to Linux.
    fn cmdline_fragment(&self, base: u64) -> alloc::string::String {
        alloc::format!("virtio_mmio.device=512@{base:#x}:5")
    }
}

/// The VM's devices by slot.
#[derive(Default)]
pub struct MmioBus {
    slots: Vec<(usize, Box<dyn MmioDevice>)>,
    /// Accesses to empty slots or across slot ends.
    pub stray: u64,
}

impl MmioBus {
    /// Whether a guest-physical address is in the device window.
    pub fn window_contains(gpa: u64) -> bool {
        (WINDOW_BASE..WINDOW_END).contains(&gpa)
    }

    /// Places a device in the first free slot; returns its base address.
    pub fn attach(&mut self, dev: Box<dyn MmioDevice>) -> Option<u64> {
        let slot = (0..SLOTS).find(|s| self.slots.iter().all(|(used, _)| used != s))?;
        self.slots.push((slot, dev));
        Some(WINDOW_BASE + slot as u64 * SLOT_SIZE)
    }

    fn locate(&mut self, gpa: u64, size: u8) -> Option<(&mut Box<dyn MmioDevice>, u64)> {
        let rel = gpa.checked_sub(WINDOW_BASE)?;
        let (slot, offset) = ((rel / SLOT_SIZE) as usize, rel % SLOT_SIZE);
        if offset + u64::from(size) > SLOT_SIZE {
            return None;
        }
        self.slots.iter_mut().find(|(s, _)| *s == slot).map(|(_, d)| (d, offset))
    }

    /// Guest read; zero where there is no device.
    pub fn read(&mut self, gpa: u64, size: u8, mem: &GuestMemory) -> u64 {
        match self.locate(gpa, size) {
            Some((dev, off)) => dev.read(off, size, mem),
            None => {
                self.stray += 1;
                0
            }
        }
    }

    /// Guest write; ignored where there is no device.
    pub fn write(&mut self, gpa: u64, size: u8, value: u64, mem: &GuestMemory) {
        match self.locate(gpa, size) {
            Some((dev, off)) => dev.write(off, size, value, mem),
            None => self.stray += 1,
        }
    }

    /// Lets every device move pending work.
    pub fn poll(&mut self, mem: &GuestMemory) {
        for (_, dev) in &mut self.slots {
            dev.poll(mem);
        }
    }

    /// Devices present, for the boot log.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}
