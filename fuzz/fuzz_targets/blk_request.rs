//! Fuzzes virtio-blk: the request parser on random chains over random guest
//! RAM, then the whole device (registers, rings, notifications) over the
//! same RAM. Nothing may panic or hang; a refused request never changes
//! storage; the device is either live or in DEVICE_NEEDS_RESET.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_dev::blk::{parse_request, BlockBackend, BlockError, MemBackend, Op, REQUEST_QUEUE};
#[path = "common/mmio_driver.rs"]
mod mmio_driver;

use mmio_driver::{ack_interrupt, handshake, raw_access, seeded_ram, write_reg, Input};
use virtio_dev::mmio::regs::*;
use virtio_dev::{DescriptorChain, GuestMemory, MmioDevice, VecMemory, VirtioBlk};

const SECTORS: u64 = 16;
const MAX_OPS: usize = 256;
/// virtio-blk features the driver takes: BLK_SIZE and FLUSH.
const BLK_FEATURES: u32 = (1 << 9) | (1 << 6);

/// The in-memory disk, counting the writes that reached it: the device has
/// no other way to change storage, so counting replaces comparing the whole
/// disk after every operation.
struct Tracked {
    disk: MemBackend,
    stored: u64,
}

impl BlockBackend for Tracked {
    fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.disk.read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        let r = self.disk.write(sector, data);
        self.stored += u64::from(r.is_ok());
        r
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.disk.flush()
    }
    fn device_id(&self) -> [u8; 20] {
        self.disk.device_id()
    }
    fn read_only(&self) -> bool {
        self.disk.read_only()
    }
}

/// A buffer as the queue walker would hand it over: non-zero, non-wrapping.
fn buffer(inp: &mut Input<'_>) -> Option<(u64, u32)> {
    let gpa = if inp.u8() & 7 == 0 { u64::MAX - u64::from(inp.u16()) } else { u64::from(inp.u16()) };
    let len = match inp.u8() % 4 {
        0 => u32::from(inp.u8()),
        1 => 512 * u32::from(inp.u8() % 4),
        2 => 16,
        _ => inp.u32() % 0x10000,
    };
    // Mostly what the walker guarantees; sometimes not, as a hand-built chain might be.
    let raw = inp.u8() == 0xa5;
    (raw || (len != 0 && gpa.checked_add(u64::from(len)).is_some())).then_some((gpa, len))
}

/// The parser alone, on a random chain.
fn parse_one(mem: &VecMemory, inp: &mut Input<'_>) {
    let mut chain = DescriptorChain::default();
    for _ in 0..inp.u8() % 5 {
        chain.readable.extend(buffer(inp));
    }
    for _ in 0..inp.u8() % 5 {
        chain.writable.extend(buffer(inp));
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
    let mem = seeded_ram(&mut inp);
    let mut backend = MemBackend::new(SECTORS, *b"fuzz-disk\0\0\0\0\0\0\0\0\0\0\0");
    backend.fail_integrity(u64::from(inp.u8() % 20));
    backend.set_read_only(inp.u8() & 3 == 0);
    let mut dev = MmioDevice::new(VirtioBlk::new(Tracked { disk: backend, stored: 0 }));
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let counters = dev.backend().counters();
        let stored = dev.backend().backend().stored;
        match inp.u8() % 9 {
            0 => raw_access(&mut dev, &mem, &mut inp, true),
            1 => raw_access(&mut dev, &mem, &mut inp, false),
            2 => parse_one(&mem, &mut inp),
            3 => {
                let gpa = u64::from(inp.u16());
                let v = inp.u16();
                let _ = mem.write(gpa, &v.to_le_bytes());
            }
            4 => {
                let _ = dev.poll(&mem);
            }
            5 | 6 => handshake(&mut dev, &mem, &mut inp, BLK_FEATURES, 1),
            7 => write_reg(&mut dev, &mem, QUEUE_NOTIFY, u32::from(REQUEST_QUEUE)),
            _ => ack_interrupt(&mut dev, &mem),
        }
        // Storage changes only through successful write requests.
        let after = dev.backend().counters();
        if after.writes == counters.writes {
            assert_eq!(dev.backend().backend().stored, stored, "storage changed by a refused request");
        }
        assert!(after.integrity_errors <= after.io_errors);
        assert!(!(dev.is_running() && dev.status() & DEVICE_NEEDS_RESET != 0));
    }
});
