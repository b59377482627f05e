//! What the virtio-mmio fuzz targets share: a byte reader that never runs
//! dry, guest RAM seeded from the input, and a fuzzed driver that pokes the
//! device's registers. Kept in one place so both devices are driven alike.

use virtio_dev::mmio::regs::*;
use virtio_dev::{DeviceBackend, MmioDevice, VecMemory};

/// Size of the fuzzed guest RAM: small, so random addresses often hit rings.
pub const RAM: usize = 0x8000;

/// The fuzzer's bytes, read front to back; zeros once they run out.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// A guest-physical address inside RAM with the given alignment.
    pub fn addr(&mut self, align: u64) -> u64 {
        (u64::from(self.u16()) % RAM as u64) & !(align - 1)
    }
    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Guest RAM whose first bytes come from the input, the rest zero.
pub fn seeded_ram(inp: &mut Input<'_>) -> VecMemory {
    let mut ram = vec![0u8; RAM];
    let seed_len = (usize::from(inp.u16()) % RAM).min(inp.0.len());
    let (seed, rest) = inp.0.split_at(seed_len);
    ram[..seed_len].copy_from_slice(seed);
    inp.0 = rest;
    VecMemory::from_bytes(ram)
}

/// A 32-bit register write, as a driver makes them.
pub fn write_reg<B: DeviceBackend>(dev: &mut MmioDevice<B>, mem: &VecMemory, off: u64, v: u32) {
    write_sized(dev, mem, off, 4, v);
}

/// A register write of any size; a refused write must leave the device in
/// DEVICE_NEEDS_RESET, never half-configured.
fn write_sized<B: DeviceBackend>(dev: &mut MmioDevice<B>, mem: &VecMemory, off: u64, size: u8, v: u32) {
    let out = dev.write(off, size, v, mem);
    if out.error.is_some() {
        assert_ne!(dev.status() & DEVICE_NEEDS_RESET, 0);
    }
}

/// A register access of any size at any offset in the window, as a buggy or
/// hostile driver would make it.
pub fn raw_access<B: DeviceBackend>(dev: &mut MmioDevice<B>, mem: &VecMemory, inp: &mut Input<'_>, write: bool) {
    let off = u64::from(inp.u16() % 0x220);
    let size = [1, 2, 4, 8][usize::from(inp.u8() % 4)];
    if write {
        let v = inp.u32();
        write_sized(dev, mem, off, size, v);
    } else {
        let _ = dev.read(off, size);
    }
}

/// A mostly well-formed driver handshake: `device_features` are the low
/// feature bits the driver accepts (event-idx and indirect descriptors are
/// fuzzed on top), then each of `queues` gets a fuzzed size and placement.
pub fn handshake<B: DeviceBackend>(
    dev: &mut MmioDevice<B>,
    mem: &VecMemory,
    inp: &mut Input<'_>,
    device_features: u32,
    queues: u32,
) {
    write_reg(dev, mem, STATUS, 0);
    write_reg(dev, mem, STATUS, ACKNOWLEDGE | DRIVER);
    let f = inp.u8();
    let lo = (u32::from(f & 1) << 28) | (u32::from(f >> 1 & 1) << 29) | device_features;
    write_reg(dev, mem, DRIVER_FEATURES_SEL, 0);
    write_reg(dev, mem, DRIVER_FEATURES, lo);
    write_reg(dev, mem, DRIVER_FEATURES_SEL, 1);
    write_reg(dev, mem, DRIVER_FEATURES, 1);
    write_reg(dev, mem, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for q in 0..queues {
        write_reg(dev, mem, QUEUE_SEL, q);
        write_reg(dev, mem, QUEUE_NUM, 1 << (inp.u8() % 9));
        let (d, a, u) = (inp.addr(16), inp.addr(2), inp.addr(4));
        write_reg(dev, mem, QUEUE_DESC_LOW, d as u32);
        write_reg(dev, mem, QUEUE_DRIVER_LOW, a as u32);
        write_reg(dev, mem, QUEUE_DEVICE_LOW, u as u32);
        write_reg(dev, mem, QUEUE_READY, 1);
    }
    write_reg(dev, mem, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

/// Acknowledges a pending interrupt the way a driver's handler would.
pub fn ack_interrupt<B: DeviceBackend>(dev: &mut MmioDevice<B>, mem: &VecMemory) {
    if dev.take_interrupt() {
        let s = dev.read(INTERRUPT_STATUS, 4);
        write_reg(dev, mem, INTERRUPT_ACK, s);
    }
}
