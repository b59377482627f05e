//! Fuzzes virtio-blk: the request parser on random chains over random guest
//! RAM, then the whole device (registers, rings, notifications) over the
//! same RAM. Nothing may panic or hang; a refused request never changes
//! storage; the device is either live or in DEVICE_NEEDS_RESET.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_dev::blk::{parse_request, MemBackend, Op, REQUEST_QUEUE};
use virtio_dev::mmio::regs::*;
use virtio_dev::{DescriptorChain, GuestMemory, MmioDevice, VecMemory, VirtioBlk};

const RAM: usize = 0x8000;
const SECTORS: u64 = 16;
const MAX_OPS: usize = 256;

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
    /// A buffer as the queue walker would hand it over: non-zero, non-wrapping.
    fn buffer(&mut self) -> Option<(u64, u32)> {
        let gpa = if self.u8() & 7 == 0 { u64::MAX - u64::from(self.u16()) } else { u64::from(self.u16()) };
        let len = match self.u8() % 4 {
            0 => u32::from(self.u8()),
            1 => 512 * u32::from(self.u8() % 4),
            2 => 16,
            _ => self.u32() % 0x10000,
        };
        // Mostly what the walker guarantees; sometimes not, as a hand-built chain might be.
        let raw = self.u8() == 0xa5;
        (raw || (len != 0 && gpa.checked_add(u64::from(len)).is_some())).then_some((gpa, len))
    }
}

type Dev = MmioDevice<VirtioBlk<MemBackend>>;

fn w(dev: &mut Dev, mem: &VecMemory, off: u64, v: u32) {
    let out = dev.write(off, 4, v, mem);
    if out.error.is_some() {
        assert_ne!(dev.status() & DEVICE_NEEDS_RESET, 0);
    }
}

/// A mostly well-formed handshake with fuzzed features and ring placement.
fn handshake(dev: &mut Dev, mem: &VecMemory, inp: &mut Input<'_>) {
    w(dev, mem, STATUS, 0);
    w(dev, mem, STATUS, ACKNOWLEDGE | DRIVER);
    let f = inp.u8();
    let lo = (u32::from(f & 1) << 28) | (u32::from(f >> 1 & 1) << 29) | (1 << 9) | (1 << 6);
    w(dev, mem, DRIVER_FEATURES_SEL, 0);
    w(dev, mem, DRIVER_FEATURES, lo);
    w(dev, mem, DRIVER_FEATURES_SEL, 1);
    w(dev, mem, DRIVER_FEATURES, 1);
    w(dev, mem, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    w(dev, mem, QUEUE_SEL, 0);
    w(dev, mem, QUEUE_NUM, 1 << (inp.u8() % 9));
    let (d, a, u) = (inp.addr(16), inp.addr(2), inp.addr(4));
    w(dev, mem, QUEUE_DESC_LOW, d as u32);
    w(dev, mem, QUEUE_DRIVER_LOW, a as u32);
    w(dev, mem, QUEUE_DEVICE_LOW, u as u32);
    w(dev, mem, QUEUE_READY, 1);
    w(dev, mem, STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

/// The parser alone, on a random chain.
fn parse_one(mem: &VecMemory, inp: &mut Input<'_>) {
    let mut chain = DescriptorChain::default();
    for _ in 0..inp.u8() % 5 {
        chain.readable.extend(inp.buffer());
    }
    for _ in 0..inp.u8() % 5 {
        chain.writable.extend(inp.buffer());
    }
    let capacity = if inp.u8() & 1 == 0 { SECTORS } else { u64::MAX };
    if let Ok(req) = parse_request(&chain, mem, capacity, inp.u8() & 1 == 0) {
        let (_, last_len) = *chain.writable.last().expect("a status byte was found");
        assert!(last_len > 0);
        match req.op {
            Op::Read { sector, len, ref data } | Op::Write { sector, len, ref data } => {
                assert_eq!(len % 512, 0);
                assert!(sector.checked_add(len / 512).is_some_and(|end| end <= capacity));
                assert_eq!(data.iter().map(|&(_, l)| u64::from(l)).sum::<u64>(), len);
            }
            Op::GetId { len, ref data } => {
                assert!(len <= 20);
                assert_eq!(data.iter().map(|&(_, l)| u64::from(l)).sum::<u64>(), len);
            }
            Op::Flush | Op::Refuse(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mut ram = vec![0u8; RAM];
    let seed_len = usize::from(inp.u16()) % RAM;
    for b in ram.iter_mut().take(seed_len) {
        *b = inp.u8();
    }
    let mem = VecMemory::from_bytes(ram);
    let mut backend = MemBackend::new(SECTORS, *b"fuzz-disk\0\0\0\0\0\0\0\0\0\0\0");
    backend.fail_integrity(u64::from(inp.u8() % 20));
    backend.set_read_only(inp.u8() & 3 == 0);
    let mut dev = MmioDevice::new(VirtioBlk::new(backend));
    for _ in 0..MAX_OPS {
        if inp.0.is_empty() {
            break;
        }
        let counters = dev.backend().counters();
        let disk = dev.backend().backend().bytes().to_vec();
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
            2 => parse_one(&mem, &mut inp),
            3 => {
                let gpa = u64::from(inp.u16());
                let v = inp.u16();
                let _ = mem.write(gpa, &v.to_le_bytes());
            }
            4 => {
                let _ = dev.poll(&mem);
            }
            5 | 6 => handshake(&mut dev, &mem, &mut inp),
            7 => w(&mut dev, &mem, QUEUE_NOTIFY, u32::from(REQUEST_QUEUE)),
            _ => {
                if dev.take_interrupt() {
                    let s = dev.read(INTERRUPT_STATUS, 4);
                    w(&mut dev, &mem, INTERRUPT_ACK, s);
                }
            }
        }
        // Storage changes only through successful writes.
        let after = dev.backend().counters();
        if after.writes == counters.writes {
            assert_eq!(dev.backend().backend().bytes(), &disk[..]);
        }
        assert!(after.integrity_errors <= after.io_errors);
        assert!(!(dev.is_running() && dev.status() & DEVICE_NEEDS_RESET != 0));
    }
});
