//! The shared-memory region between the agent and the node.
//!
//! The agent registers `CTRL_SIZE + 2 * data` bytes of its own memory with
//! the `agent_attach` hypercall. The node touches it only inside the
//! agent's `agent_kick` hypercall, so neither side races the other. Layout
//! (little-endian u32 fields in the control block):
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | magic `BMA1` | agent |
//! | 16 | guest-to-host head | agent (producer) |
//! | 20 | guest-to-host tail | node (consumer) |
//! | 24 | host-to-guest head | node (producer) |
//! | 28 | host-to-guest tail | agent (consumer) |
//! | 32 | node flags ([`FLAG_MORE`]) | node |
//! | `CTRL_SIZE` | guest-to-host data, `data` bytes | agent |
//! | `CTRL_SIZE + data` | host-to-guest data, `data` bytes | node |
//!
//! Heads and tails are free-running byte counters (wrapping u32); the
//! bytes in use are `head - tail`, which must never exceed `data`. A ring
//! carries records: a u32 length (1..=[`MAX_RECORD`]) then that many bytes,
//! wrapping at the end of the data area. A producer publishes its head only
//! after whole records, so a consumer that finds a partial record, a bad
//! length or more bytes in use than the ring holds has met a broken or
//! hostile peer ([`RingFault::Corrupt`]). Each side keeps its own cursor in
//! its own memory and only ever *reads* the other side's cursor.

use alloc::vec::Vec;

use crate::MAX_RECORD;

/// Size of the control block at the start of the region.
pub const CTRL_SIZE: u32 = 4096;
/// Smallest data area per direction.
pub const MIN_DATA: u32 = 64 * 1024;
/// Largest data area per direction.
pub const MAX_DATA_AREA: u32 = 1024 * 1024;
/// The magic value at offset 0 (`BMA1` in memory order).
pub const MAGIC: u32 = u32::from_le_bytes(*b"BMA1");
/// Node flag: the node had more for the agent than fit; kick again.
pub const FLAG_MORE: u32 = 1;

const OFF_MAGIC: u32 = 0;
const OFF_G2H_HEAD: u32 = 16;
const OFF_G2H_TAIL: u32 = 20;
const OFF_H2G_HEAD: u32 = 24;
const OFF_H2G_TAIL: u32 = 28;
const OFF_FLAGS: u32 = 32;

/// Why the region could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingFault {
    /// The region's memory could not be read or written (the node could
    /// not translate or reach a page).
    Memory,
    /// The peer broke the ring's rules (see the module docs).
    Corrupt(&'static str),
    /// The data size is not a power of two in [`MIN_DATA`]..=[`MAX_DATA_AREA`].
    BadSize,
}

impl core::fmt::Display for RingFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RingFault::Memory => write!(f, "ring memory not accessible"),
            RingFault::Corrupt(why) => write!(f, "ring corrupt: {why}"),
            RingFault::BadSize => {
                write!(f, "ring data size must be a power of two between {} and {} bytes", MIN_DATA, MAX_DATA_AREA)
            }
        }
    }
}

/// Byte access to the region, by offset from its start. The node's
/// implementation goes through the guest's page tables and nested paging;
/// the agent's and the tests' are plain memory.
pub trait RingMem {
    /// Reads `buf.len()` bytes at `off`.
    fn read(&self, off: u32, buf: &mut [u8]) -> Result<(), RingFault>;
    /// Writes `data` at `off`.
    fn write(&mut self, off: u32, data: &[u8]) -> Result<(), RingFault>;
}

impl RingMem for [u8] {
    fn read(&self, off: u32, buf: &mut [u8]) -> Result<(), RingFault> {
        let start = off as usize;
        let src = self.get(start..start.saturating_add(buf.len())).ok_or(RingFault::Memory)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, off: u32, data: &[u8]) -> Result<(), RingFault> {
        let start = off as usize;
        let dst = self.get_mut(start..start.saturating_add(data.len())).ok_or(RingFault::Memory)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

fn read_u32(mem: &(impl RingMem + ?Sized), off: u32) -> Result<u32, RingFault> {
    let mut b = [0u8; 4];
    mem.read(off, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn write_u32(mem: &mut (impl RingMem + ?Sized), off: u32, v: u32) -> Result<(), RingFault> {
    mem.write(off, &v.to_le_bytes())
}

/// The region's geometry, from the data size the agent registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    data: u32,
}

impl Layout {
    /// Checks a data size (per direction).
    pub fn new(data: u64) -> Result<Layout, RingFault> {
        if !(u64::from(MIN_DATA)..=u64::from(MAX_DATA_AREA)).contains(&data) || !data.is_power_of_two() {
            return Err(RingFault::BadSize);
        }
        Ok(Layout { data: data as u32 })
    }

    /// Bytes per direction.
    pub fn data(&self) -> u32 {
        self.data
    }

    /// The whole region's length.
    pub fn total(&self) -> u32 {
        CTRL_SIZE + 2 * self.data
    }

    /// The agent-to-node ring.
    pub fn guest_to_host(&self) -> Ring {
        Ring { base: CTRL_SIZE, size: self.data, head_off: OFF_G2H_HEAD, tail_off: OFF_G2H_TAIL }
    }

    /// The node-to-agent ring.
    pub fn host_to_guest(&self) -> Ring {
        Ring { base: CTRL_SIZE + self.data, size: self.data, head_off: OFF_H2G_HEAD, tail_off: OFF_H2G_TAIL }
    }

    /// Agent side: zeroes the control block's cursors and writes the magic,
    /// before the region is attached.
    pub fn init(&self, mem: &mut (impl RingMem + ?Sized)) -> Result<(), RingFault> {
        for off in [OFF_G2H_HEAD, OFF_G2H_TAIL, OFF_H2G_HEAD, OFF_H2G_TAIL, OFF_FLAGS] {
            write_u32(mem, off, 0)?;
        }
        write_u32(mem, OFF_MAGIC, MAGIC)
    }

    /// Node side: whether the agent wrote the magic.
    pub fn check_magic(&self, mem: &(impl RingMem + ?Sized)) -> Result<(), RingFault> {
        if read_u32(mem, OFF_MAGIC)? != MAGIC {
            return Err(RingFault::Corrupt("bad magic"));
        }
        Ok(())
    }

    /// Node side: publishes the node flags.
    pub fn set_flags(&self, mem: &mut (impl RingMem + ?Sized), flags: u32) -> Result<(), RingFault> {
        write_u32(mem, OFF_FLAGS, flags)
    }

    /// Agent side: reads the node flags.
    pub fn flags(&self, mem: &(impl RingMem + ?Sized)) -> Result<u32, RingFault> {
        read_u32(mem, OFF_FLAGS)
    }
}

/// One direction of the region. The producer owns the head, the consumer
/// the tail; each passes its own copy of its cursor in and never trusts the
/// value in shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    base: u32,
    size: u32,
    head_off: u32,
    tail_off: u32,
}

impl Ring {
    /// Copies `len` bytes at ring position `pos` (wrapping) into `out`.
    fn copy_out(&self, mem: &(impl RingMem + ?Sized), pos: u32, out: &mut [u8]) -> Result<(), RingFault> {
        let at = pos & (self.size - 1);
        let first = ((self.size - at) as usize).min(out.len());
        let (a, b) = out.split_at_mut(first);
        mem.read(self.base + at, a)?;
        if !b.is_empty() {
            mem.read(self.base, b)?;
        }
        Ok(())
    }

    fn copy_in(&self, mem: &mut (impl RingMem + ?Sized), pos: u32, data: &[u8]) -> Result<(), RingFault> {
        let at = pos & (self.size - 1);
        let first = ((self.size - at) as usize).min(data.len());
        let (a, b) = data.split_at(first);
        mem.write(self.base + at, a)?;
        if !b.is_empty() {
            mem.write(self.base, b)?;
        }
        Ok(())
    }

    /// Bytes in use, from the producer's published head and our tail.
    fn used_by_peer_head(&self, mem: &(impl RingMem + ?Sized), tail: u32) -> Result<(u32, u32), RingFault> {
        let head = read_u32(mem, self.head_off)?;
        let used = head.wrapping_sub(tail);
        if used > self.size {
            return Err(RingFault::Corrupt("producer head beyond the ring"));
        }
        Ok((head, used))
    }

    /// Consumer: takes the next whole record into `out` (cleared first).
    /// `Ok(false)` when the ring is empty. The new tail is published.
    pub fn consume(
        &self,
        mem: &mut (impl RingMem + ?Sized),
        tail: &mut u32,
        out: &mut Vec<u8>,
    ) -> Result<bool, RingFault> {
        out.clear();
        let (_, used) = self.used_by_peer_head(mem, *tail)?;
        if used == 0 {
            return Ok(false);
        }
        if used < 4 {
            return Err(RingFault::Corrupt("partial record length"));
        }
        let mut lb = [0u8; 4];
        self.copy_out(mem, *tail, &mut lb)?;
        let len = u32::from_le_bytes(lb);
        if len == 0 || len as usize > MAX_RECORD {
            return Err(RingFault::Corrupt("record length out of range"));
        }
        if len > used - 4 {
            return Err(RingFault::Corrupt("partial record"));
        }
        out.resize(len as usize, 0);
        self.copy_out(mem, tail.wrapping_add(4), out)?;
        *tail = tail.wrapping_add(4 + len);
        write_u32(mem, self.tail_off, *tail)?;
        Ok(true)
    }

    /// Producer: appends one record if it fits; `Ok(false)` when the ring
    /// has no room now. The new head is published.
    pub fn produce(
        &self,
        mem: &mut (impl RingMem + ?Sized),
        head: &mut u32,
        payload: &[u8],
    ) -> Result<bool, RingFault> {
        if payload.is_empty() || payload.len() > MAX_RECORD {
            return Err(RingFault::Corrupt("record length out of range"));
        }
        let tail = read_u32(mem, self.tail_off)?;
        let used = head.wrapping_sub(tail);
        if used > self.size {
            return Err(RingFault::Corrupt("consumer tail beyond the ring"));
        }
        let need = 4 + payload.len() as u32;
        if need > self.size - used {
            return Ok(false);
        }
        self.copy_in(mem, *head, &(payload.len() as u32).to_le_bytes())?;
        self.copy_in(mem, head.wrapping_add(4), payload)?;
        *head = head.wrapping_add(need);
        write_u32(mem, self.head_off, *head)?;
        Ok(true)
    }

    /// Producer: free bytes now (for a record of `n` bytes, `4 + n` are needed).
    pub fn free(&self, mem: &(impl RingMem + ?Sized), head: u32) -> Result<u32, RingFault> {
        let tail = read_u32(mem, self.tail_off)?;
        let used = head.wrapping_sub(tail);
        if used > self.size {
            return Err(RingFault::Corrupt("consumer tail beyond the ring"));
        }
        Ok(self.size - used)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn region() -> (Layout, Vec<u8>) {
        let l = Layout::new(u64::from(MIN_DATA)).unwrap();
        let mut m = vec![0u8; l.total() as usize];
        l.init(&mut m[..]).unwrap();
        (l, m)
    }

    #[test]
    fn sizes_checked() {
        assert_eq!(Layout::new(4096), Err(RingFault::BadSize));
        assert_eq!(Layout::new(u64::from(MIN_DATA) + 1), Err(RingFault::BadSize));
        assert_eq!(Layout::new(u64::from(MAX_DATA_AREA) * 2), Err(RingFault::BadSize));
        assert!(Layout::new(u64::from(MAX_DATA_AREA)).is_ok());
    }

    #[test]
    fn records_wrap_and_fill() {
        let (l, mut m) = region();
        let r = l.guest_to_host();
        let (mut head, mut tail) = (0u32, 0u32);
        let mut out = Vec::new();
        for round in 0..50u32 {
            let rec = vec![round as u8; 10_000 + round as usize];
            assert!(r.produce(&mut m[..], &mut head, &rec).unwrap());
            assert!(r.consume(&mut m[..], &mut tail, &mut out).unwrap());
            assert_eq!(out, rec);
        }
        // Fill until refused, then drain.
        let mut n = 0;
        while r.produce(&mut m[..], &mut head, &[7u8; 1000]).unwrap() {
            n += 1;
        }
        assert_eq!(n, MIN_DATA as usize / 1004);
        for _ in 0..n {
            assert!(r.consume(&mut m[..], &mut tail, &mut out).unwrap());
        }
        assert!(!r.consume(&mut m[..], &mut tail, &mut out).unwrap());
    }

    #[test]
    fn hostile_heads_refused() {
        let (l, mut m) = region();
        let r = l.guest_to_host();
        let mut out = Vec::new();
        // Head far beyond the ring.
        m[16..20].copy_from_slice(&(MIN_DATA + 1).to_le_bytes());
        assert!(matches!(r.consume(&mut m[..], &mut 0, &mut out), Err(RingFault::Corrupt(_))));
        // A length larger than what is published.
        m[16..20].copy_from_slice(&8u32.to_le_bytes());
        let base = CTRL_SIZE as usize;
        m[base..base + 4].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(r.consume(&mut m[..], &mut 0, &mut out), Err(RingFault::Corrupt(_))));
        // A zero length.
        m[base..base + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(r.consume(&mut m[..], &mut 0, &mut out), Err(RingFault::Corrupt(_))));
        // Consumer tail beyond the ring, seen by the producer.
        let h = l.host_to_guest();
        m[28..32].copy_from_slice(&(MIN_DATA * 3).to_le_bytes());
        assert!(matches!(h.produce(&mut m[..], &mut 0, &[1]), Err(RingFault::Corrupt(_))));
    }

    proptest! {
        /// Whatever the guest writes into the region, the consumer either
        /// returns records no longer than MAX_RECORD or a fault; it never
        /// panics and never reads outside the region.
        #[test]
        fn garbage_never_panics(seed in proptest::collection::vec(any::<u8>(), 0..4096), head: u32, tail: u32) {
            let (l, mut m) = region();
            for (i, b) in seed.iter().enumerate() {
                let at = (CTRL_SIZE as usize + i * 13) % m.len();
                m[at] = *b;
            }
            m[16..20].copy_from_slice(&head.to_le_bytes());
            let r = l.guest_to_host();
            let mut t = tail;
            let mut out = Vec::new();
            for _ in 0..64 {
                match r.consume(&mut m[..], &mut t, &mut out) {
                    Ok(true) => prop_assert!(out.len() <= MAX_RECORD),
                    _ => break,
                }
            }
        }

        /// Records produced are consumed whole and in order.
        #[test]
        fn fifo(lens in proptest::collection::vec(1usize..20_000, 1..40)) {
            let (l, mut m) = region();
            let r = l.host_to_guest();
            let start = u32::MAX - 100;
            m[24..28].copy_from_slice(&start.to_le_bytes());
            m[28..32].copy_from_slice(&start.to_le_bytes());
            let (mut head, mut tail) = (start, start);
            let mut out = Vec::new();
            for (i, n) in lens.iter().enumerate() {
                let rec = vec![i as u8; *n];
                prop_assert!(r.produce(&mut m[..], &mut head, &rec).unwrap());
                prop_assert!(r.consume(&mut m[..], &mut tail, &mut out).unwrap());
                prop_assert_eq!(&out, &rec);
            }
        }
    }
}
