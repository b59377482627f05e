//! A minimal virtio-mmio driver over `VecMemory`, building real rings the way
//! a guest driver would, so tests drive the device through its registers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;

use virtio_dev::features::{EVENT_IDX, INDIRECT_DESC, VERSION_1};
use virtio_dev::mmio::regs::*;
use virtio_dev::net::{HDR_LEN, RX_QUEUE, TX_QUEUE};
use virtio_dev::{GuestMemory, MmioDevice, MmioOutcome, VecMemory, VirtioNet};

pub const RAM: usize = 4 << 20;
pub const BUF_START: u64 = 0x10_0000;
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// The driver's view of one queue.
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    pub used_seen: u16,
    next_desc: u16,
    /// head -> (buffer gpa, buffer len) for RX chains.
    pub heads: HashMap<u16, (u64, u32)>,
}

pub struct Driver {
    pub mem: VecMemory,
    pub dev: MmioDevice<VirtioNet>,
    pub rings: Vec<Ring>,
    bump: u64,
}

impl Driver {
    pub fn new() -> Self {
        let rings = (0..2u64)
            .map(|q| {
                let base = 0x1_0000 * (q + 1);
                Ring {
                    size: 256,
                    desc: base,
                    avail: base + 0x1000,
                    used: base + 0x2000,
                    avail_idx: 0,
                    used_seen: 0,
                    next_desc: 0,
                    heads: HashMap::new(),
                }
            })
            .collect();
        Self { mem: VecMemory::new(RAM), dev: MmioDevice::new(VirtioNet::new(MAC)), rings, bump: BUF_START }
    }

    /// A driver that has completed the handshake with `extra` features on top of VERSION_1.
    pub fn ready(extra: u64) -> Self {
        let mut d = Self::new();
        assert!(d.handshake(VERSION_1 | extra));
        d
    }

    pub fn r(&mut self, off: u64) -> u32 {
        self.dev.read(off, 4)
    }

    pub fn w(&mut self, off: u64, v: u32) -> MmioOutcome {
        self.dev.write(off, 4, v, &self.mem)
    }

    /// Spec 3.1.1 driver initialisation; returns whether FEATURES_OK stuck.
    pub fn handshake(&mut self, features: u64) -> bool {
        let _ = self.w(STATUS, 0);
        for r in &mut self.rings {
            r.avail_idx = 0;
            r.used_seen = 0;
            r.next_desc = 0;
            r.heads.clear();
        }
        // Drivers zero the rings before handing them over.
        self.mem.write(0x1_0000, &vec![0u8; 0x2_0000]).unwrap();
        assert_eq!(self.r(MAGIC_VALUE), MAGIC);
        assert_eq!(self.r(VERSION_REG), 2);
        assert_eq!(self.r(DEVICE_ID), 1);
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
        for q in 0..2 {
            let (size, desc, avail, used) = {
                let r = &self.rings[q];
                (r.size, r.desc, r.avail, r.used)
            };
            let _ = self.w(QUEUE_SEL, q as u32);
            assert_eq!(self.r(QUEUE_READY), 0);
            assert!(self.r(QUEUE_NUM_MAX) >= u32::from(size));
            let _ = self.w(QUEUE_NUM, u32::from(size));
            let _ = self.w(QUEUE_DESC_LOW, desc as u32);
            let _ = self.w(QUEUE_DESC_HIGH, (desc >> 32) as u32);
            let _ = self.w(QUEUE_DRIVER_LOW, avail as u32);
            let _ = self.w(QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            let _ = self.w(QUEUE_DEVICE_LOW, used as u32);
            let _ = self.w(QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            let _ = self.w(QUEUE_READY, 1);
            assert_eq!(self.r(QUEUE_READY), 1);
        }
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

    pub fn write_desc(&self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let r = &self.rings[q];
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(r.desc + 16 * u64::from(idx), &d).unwrap();
    }

    /// Puts `head` in the available ring without publishing the index.
    pub fn stage(&mut self, q: usize, head: u16) {
        let r = &mut self.rings[q];
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % r.size);
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem.write(slot, &head.to_le_bytes()).unwrap();
    }

    /// Publishes the available index.
    pub fn publish(&mut self, q: usize) {
        let r = &self.rings[q];
        self.mem.write(r.avail + 2, &r.avail_idx.to_le_bytes()).unwrap();
    }

    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.mem.write(self.rings[q].avail + 2, &idx.to_le_bytes()).unwrap();
    }

    /// Takes `n` consecutive descriptors, wrapping around the table.
    pub fn take_descs(&mut self, q: usize, n: u16) -> Vec<u16> {
        let r = &mut self.rings[q];
        (0..n)
            .map(|_| {
                let d = r.next_desc;
                r.next_desc = (r.next_desc + 1) % r.size;
                d
            })
            .collect()
    }

    /// Writes header + frame as a chain of descriptors, each at most `seg` bytes, and publishes it.
    pub fn queue_tx(&mut self, frame: &[u8], seg: usize) {
        let mut data = vec![0u8; HDR_LEN];
        data.extend_from_slice(frame);
        let parts: Vec<Vec<u8>> = data.chunks(seg.max(1)).map(<[u8]>::to_vec).collect();
        let descs = self.take_descs(TX_QUEUE as usize, parts.len() as u16);
        for (i, part) in parts.iter().enumerate() {
            let gpa = self.alloc(part.len() as u64);
            self.mem.write(gpa, part).unwrap();
            let last = i + 1 == parts.len();
            let next = if last { 0 } else { descs[i + 1] };
            self.write_desc(TX_QUEUE as usize, descs[i], gpa, part.len() as u32, if last { 0 } else { F_NEXT }, next);
        }
        self.stage(TX_QUEUE as usize, descs[0]);
        self.publish(TX_QUEUE as usize);
    }

    pub fn kick(&mut self, q: u16) -> MmioOutcome {
        self.w(QUEUE_NOTIFY, u32::from(q))
    }

    /// Posts one writable RX buffer of `len` bytes.
    pub fn post_rx(&mut self, len: u32) {
        let q = RX_QUEUE as usize;
        let d = self.take_descs(q, 1)[0];
        let gpa = self.alloc(u64::from(len));
        self.write_desc(q, d, gpa, len, F_WRITE, 0);
        self.rings[q].heads.insert(d, (gpa, len));
        self.stage(q, d);
        self.publish(q);
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        let mut b = [0u8; 2];
        self.mem.read(self.rings[q].used + 2, &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    pub fn used_flags(&self, q: usize) -> u16 {
        let mut b = [0u8; 2];
        self.mem.read(self.rings[q].used, &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    pub fn avail_event(&self, q: usize) -> u16 {
        let r = &self.rings[q];
        let mut b = [0u8; 2];
        self.mem.read(r.used + 4 + 8 * u64::from(r.size), &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    pub fn set_used_event(&self, q: usize, v: u16) {
        let r = &self.rings[q];
        self.mem.write(r.avail + 4 + 2 * u64::from(r.size), &v.to_le_bytes()).unwrap();
    }

    pub fn set_avail_flags(&self, q: usize, v: u16) {
        self.mem.write(self.rings[q].avail, &v.to_le_bytes()).unwrap();
    }

    /// New used entries since last call, as (id, len).
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let idx = self.used_idx(q);
        let mut out = Vec::new();
        while self.rings[q].used_seen != idx {
            let r = &self.rings[q];
            let mut e = [0u8; 8];
            self.mem.read(r.used + 4 + 8 * u64::from(r.used_seen % r.size), &mut e).unwrap();
            out.push((
                u32::from_le_bytes(e[0..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
            ));
            self.rings[q].used_seen = self.rings[q].used_seen.wrapping_add(1);
        }
        out
    }

    /// Received frames since last call (header checked and stripped).
    pub fn take_rx(&mut self) -> Vec<Vec<u8>> {
        let q = RX_QUEUE as usize;
        self.take_used(q)
            .into_iter()
            .map(|(id, len)| {
                let (gpa, cap) = self.rings[q].heads.remove(&(id as u16)).expect("unknown rx head");
                assert!(len <= cap && len as usize >= HDR_LEN, "bad used len {len}");
                let mut buf = vec![0u8; len as usize];
                self.mem.read(gpa, &mut buf).unwrap();
                let mut hdr = [0u8; HDR_LEN];
                hdr[10] = 1;
                assert_eq!(buf[..HDR_LEN], hdr);
                buf.split_off(HDR_LEN)
            })
            .collect()
    }

    pub fn needs_reset(&mut self) -> bool {
        self.r(STATUS) & DEVICE_NEEDS_RESET != 0
    }
}

pub const ALL_FEATURES: u64 = EVENT_IDX | INDIRECT_DESC;
