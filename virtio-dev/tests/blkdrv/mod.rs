//! A minimal virtio-blk driver over `VecMemory`: builds request chains the
//! way a guest driver would and drives the device through its registers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use virtio_dev::blk::{MemBackend, HEADER_LEN, T_IN, T_OUT};
use virtio_dev::features::VERSION_1;
use virtio_dev::mmio::regs::*;
use virtio_dev::{GuestMemory, MmioDevice, MmioOutcome, VecMemory, VirtioBlk};

pub const RAM: usize = 8 << 20;
pub const DESC: u64 = 0x1_0000;
pub const AVAIL: u64 = 0x1_1000;
pub const USED: u64 = 0x1_2000;
pub const BUF_START: u64 = 0x10_0000;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;
pub const ID: [u8; 20] = *b"bmonitor-disk-0\0\0\0\0\0";

/// One buffer of a request chain, as the driver lays it out.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub gpa: u64,
    pub len: u32,
    pub writable: bool,
}

pub struct BlkDriver {
    pub mem: VecMemory,
    pub dev: MmioDevice<VirtioBlk<MemBackend>>,
    pub size: u16,
    pub avail_idx: u16,
    pub used_seen: u16,
    next_desc: u16,
    bump: u64,
}

impl BlkDriver {
    pub fn new(sectors: u64) -> Self {
        Self::with_backend(MemBackend::new(sectors, ID))
    }

    pub fn with_backend(backend: MemBackend) -> Self {
        Self {
            mem: VecMemory::new(RAM),
            dev: MmioDevice::new(VirtioBlk::new(backend)),
            size: 256,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
            bump: BUF_START,
        }
    }

    /// A driver that completed the handshake with `extra` features on top of VERSION_1.
    pub fn ready(sectors: u64, extra: u64) -> Self {
        let mut d = Self::new(sectors);
        assert!(d.handshake(VERSION_1 | extra));
        d
    }

    pub fn r(&mut self, off: u64) -> u32 {
        self.dev.read(off, 4)
    }

    pub fn w(&mut self, off: u64, v: u32) -> MmioOutcome {
        self.dev.write(off, 4, v, &self.mem)
    }

    pub fn features(&mut self) -> u64 {
        let _ = self.w(DEVICE_FEATURES_SEL, 0);
        let lo = self.r(DEVICE_FEATURES);
        let _ = self.w(DEVICE_FEATURES_SEL, 1);
        let hi = self.r(DEVICE_FEATURES);
        u64::from(lo) | u64::from(hi) << 32
    }

    /// Spec 3.1.1 driver initialisation; returns whether the device is live.
    pub fn handshake(&mut self, features: u64) -> bool {
        let _ = self.w(STATUS, 0);
        self.avail_idx = 0;
        self.used_seen = 0;
        self.next_desc = 0;
        self.mem.write(DESC, &vec![0u8; 0x3000]).unwrap();
        assert_eq!(self.r(MAGIC_VALUE), MAGIC);
        assert_eq!(self.r(VERSION_REG), 2);
        assert_eq!(self.r(DEVICE_ID), 2);
        let _ = self.w(STATUS, ACKNOWLEDGE);
        let _ = self.w(STATUS, ACKNOWLEDGE | DRIVER);
        let _ = self.w(DRIVER_FEATURES_SEL, 0);
        let _ = self.w(DRIVER_FEATURES, features as u32);
        let _ = self.w(DRIVER_FEATURES_SEL, 1);
        let _ = self.w(DRIVER_FEATURES, (features >> 32) as u32);
        let _ = self.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if self.r(STATUS) & FEATURES_OK == 0 {
            return false;
        }
        let _ = self.w(QUEUE_SEL, 0);
        assert_eq!(self.r(QUEUE_READY), 0);
        assert!(self.r(QUEUE_NUM_MAX) >= u32::from(self.size));
        let _ = self.w(QUEUE_NUM, u32::from(self.size));
        let _ = self.w(QUEUE_DESC_LOW, DESC as u32);
        let _ = self.w(QUEUE_DESC_HIGH, 0);
        let _ = self.w(QUEUE_DRIVER_LOW, AVAIL as u32);
        let _ = self.w(QUEUE_DRIVER_HIGH, 0);
        let _ = self.w(QUEUE_DEVICE_LOW, USED as u32);
        let _ = self.w(QUEUE_DEVICE_HIGH, 0);
        let _ = self.w(QUEUE_READY, 1);
        assert_eq!(self.r(QUEUE_READY), 1);
        let _ = self.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.dev.is_running()
    }

    /// Guest RAM for a buffer, from a wrapping bump allocator.
    pub fn alloc(&mut self, len: u64) -> u64 {
        if self.bump + len > RAM as u64 {
            self.bump = BUF_START;
        }
        let at = self.bump;
        self.bump = (self.bump + len + 15) & !15;
        at
    }

    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(DESC + 16 * u64::from(idx), &d).unwrap();
    }

    /// Writes `bufs` as one chain of descriptors and makes it available; returns the head.
    pub fn submit(&mut self, bufs: &[Buf]) -> u16 {
        let descs: Vec<u16> = (0..bufs.len())
            .map(|_| {
                let d = self.next_desc;
                self.next_desc = (self.next_desc + 1) % self.size;
                d
            })
            .collect();
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if b.writable { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.write_desc(descs[i], b.gpa, b.len, flags, if last { 0 } else { descs[i + 1] });
        }
        self.publish_head(descs[0]);
        descs[0]
    }

    /// Writes `bufs` as one indirect table and makes it available; returns the head.
    pub fn submit_indirect(&mut self, bufs: &[Buf]) -> u16 {
        let table = self.alloc(16 * bufs.len() as u64);
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if b.writable { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&b.gpa.to_le_bytes());
            d[8..12].copy_from_slice(&b.len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(if last { 0u16 } else { i as u16 + 1 }).to_le_bytes());
            self.mem.write(table + 16 * i as u64, &d).unwrap();
        }
        let head = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.size;
        self.write_desc(head, table, 16 * bufs.len() as u32, F_INDIRECT, 0);
        self.publish_head(head);
        head
    }

    fn publish_head(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write(slot, &head.to_le_bytes()).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write(AVAIL + 2, &self.avail_idx.to_le_bytes()).unwrap();
    }

    /// A readable buffer holding `bytes`.
    pub fn readable(&mut self, bytes: &[u8]) -> Buf {
        let gpa = self.alloc(bytes.len() as u64);
        self.mem.write(gpa, bytes).unwrap();
        Buf { gpa, len: bytes.len() as u32, writable: false }
    }

    /// A writable buffer of `len` bytes, pre-filled with 0xee so writes show.
    pub fn writable(&mut self, len: u32) -> Buf {
        let gpa = self.alloc(u64::from(len));
        self.mem.write(gpa, &vec![0xee; len as usize]).unwrap();
        Buf { gpa, len, writable: true }
    }

    pub fn header(kind: u32, sector: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        h
    }

    pub fn kick(&mut self) -> MmioOutcome {
        self.w(QUEUE_NOTIFY, 0)
    }

    pub fn used_idx(&self) -> u16 {
        let mut b = [0u8; 2];
        self.mem.read(USED + 2, &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    /// New used entries since the last call, as (id, len).
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.used_idx();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let mut e = [0u8; 8];
            self.mem.read(USED + 4 + 8 * u64::from(self.used_seen % self.size), &mut e).unwrap();
            out.push((
                u32::from_le_bytes(e[0..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
            ));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    pub fn byte(&self, gpa: u64) -> u8 {
        let mut b = [0u8; 1];
        self.mem.read(gpa, &mut b).unwrap();
        b[0]
    }

    pub fn bytes(&self, buf: Buf) -> Vec<u8> {
        let mut v = vec![0u8; buf.len as usize];
        self.mem.read(buf.gpa, &mut v).unwrap();
        v
    }

    /// Submits one request, kicks, and returns (status, used len).
    pub fn run(&mut self, bufs: &[Buf]) -> (u8, u32) {
        let head = self.submit(bufs);
        let out = self.kick();
        assert_eq!(out.error, None, "device failed: {:?}", self.dev.last_error());
        let used = self.take_used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, u32::from(head));
        let last = bufs.last().unwrap();
        (self.byte(last.gpa + u64::from(last.len) - 1), used[0].1)
    }

    /// Writes `data` at `sector` as header / data / status; returns the status.
    pub fn write_sectors(&mut self, sector: u64, data: &[u8]) -> u8 {
        let h = self.readable(&Self::header(T_OUT, sector));
        let d = self.readable(data);
        let s = self.writable(1);
        let (status, len) = self.run(&[h, d, s]);
        assert_eq!(len, 1);
        status
    }

    /// Reads `len` bytes at `sector`; returns (status, data, used len).
    pub fn read_sectors(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>, u32) {
        let h = self.readable(&Self::header(T_IN, sector));
        let d = self.writable(len);
        let s = self.writable(1);
        let (status, used) = self.run(&[h, d, s]);
        (status, self.bytes(d), used)
    }

    pub fn needs_reset(&mut self) -> bool {
        self.r(STATUS) & DEVICE_NEEDS_RESET != 0
    }
}

pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed).wrapping_add((i >> 8) as u8)).collect()
}
