//! Fuzzes the virtio-mmio net device and its virtqueue walker: guest RAM,
//! register accesses, ring edits, notifications and RX deliveries all come
//! from the input. The device must never panic or hang, and must either be
//! live or report DEVICE_NEEDS_RESET consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_dev::mmio::regs::*;
use virtio_dev::net::{MAX_FRAME_LEN, RX_QUEUE, TX_QUEUE};
use virtio_dev::{GuestMemory, MmioDevice, VecMemory, VirtioNet};

const RAM: usize = 0x8000;
const MAX_OPS: usize = 512;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn addr(&mut self, align: u64) -> u64 {
        u64::from(self.u16()) % RAM as u64 & !(align - 1)
    }
}

fn w(dev: &mut MmioDevice<VirtioNet>, mem: &VecMemory, off: u64, v: u32) {
    let out = dev.write(off, 4, v, mem);
    if out.error.is_some() {
        assert_ne!(dev.status() & DEVICE_NEEDS_RESET, 0);
    }
}

/// A mostly well-formed driver handshake with fuzzed features and ring placement.
fn handshake(dev: &mut MmioDevice<VirtioNet>, mem: &VecMemory, inp: &mut Input<'_>) {
    w(dev, mem, STATUS, 0);
    w(dev, mem, STATUS, ACKNOWLEDGE | DRIVER);
    let f = inp.u8();
    let lo = (u32::from(f & 1) << 28) | (u32::from(f >> 1 & 1) << 29) | (1 << 5) | (1 << 16);
    w(dev, mem, DRIVER_FEATURES_SEL, 0);
    w(dev, mem, DRIVER_FEATURES, lo);
    w(dev, mem, DRIVER_FEATURES_SEL, 1);
    w(dev, mem, DRIVER_FEATURES, 1);
    w(dev, mem, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for q in 0..2 {
        w(dev, mem, QUEUE_SEL, q);
        w(dev, mem, QUEUE_NUM, 1 << (inp.u8() % 9));
        let (d, a, u) = (inp.addr(16), inp.addr(2), inp.addr(4));
        w(dev, mem, QUEUE_DESC_LOW, d as u32);
        w(dev, mem, QUEUE_DRIVER_LOW, a as u32);
        w(dev, mem, QUEUE_DEVICE_LOW, u as u32);
        w(dev, mem, QUEUE_READY, 1);
    }
    w(dev, mem, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mut ram = vec![0u8; RAM];
    let seed_len = usize::from(inp.u16()) % RAM;
    for b in ram.iter_mut().take(seed_len) {
        *b = inp.u8();
    }
    let mem = VecMemory::from_bytes(ram);
    let mut dev = MmioDevice::new(VirtioNet::new([2, 0, 0, 0, 0, 1]));
    for _ in 0..MAX_OPS {
        if inp.0.is_empty() {
            break;
        }
        match inp.u8() % 9 {
            0 => {
                let off = u64::from(inp.u16() % 0x220);
                let size = [1, 2, 4, 8][usize::from(inp.u8() % 4)];
                let v = inp.u32();
                let out = dev.write(off, size, v, &mem);
                if out.error.is_some() {
                    assert_ne!(dev.status() & DEVICE_NEEDS_RESET, 0);
                }
            }
            1 => {
                let off = u64::from(inp.u16() % 0x220);
                let _ = dev.read(off, [1, 2, 4, 8][usize::from(inp.u8() % 4)]);
            }
            2 => {
                let len = usize::from(inp.u16()) % 2000;
                let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
                if dev.deliver_rx(&mem, &frame).is_err() {
                    assert_ne!(dev.status() & DEVICE_NEEDS_RESET, 0);
                }
            }
            3 => {
                let gpa = u64::from(inp.u16());
                let v = inp.u16();
                let _ = mem.write(gpa, &v.to_le_bytes());
            }
            4 => {
                let _ = dev.poll(&mem);
            }
            5 => {
                for f in dev.backend_mut().take_tx_frames() {
                    assert!(!f.is_empty() && f.len() <= MAX_FRAME_LEN);
                }
            }
            6 => handshake(&mut dev, &mem, &mut inp),
            7 => w(&mut dev, &mem, QUEUE_NOTIFY, u32::from(if inp.u8() & 1 == 0 { TX_QUEUE } else { RX_QUEUE })),
            _ => {
                if dev.take_interrupt() {
                    let s = dev.read(INTERRUPT_STATUS, 4);
                    w(&mut dev, &mem, INTERRUPT_ACK, s);
                }
            }
        }
        assert!(!(dev.is_running() && dev.status() & DEVICE_NEEDS_RESET != 0));
    }
});
