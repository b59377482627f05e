//! The 8254 PIT (ports 0x40-0x43) and the PC's port 0x61 (speaker gate, OUT2).
//!
//! Every counter value and OUT level is a closed-form function of the PIT
//! clock tick (`now` converted at 1.193182 MHz from the model's creation),
//! so nothing runs per period and reads are exact however seldom the
//! caller steps time. Timing follows the datasheet: a count written at
//! tick `c` is loaded into the counting element at tick `c + 1` and
//! decremented from `c + 2` on (mode 0's OUT rises N + 1 clocks after the
//! write). Channel 0's gate is tied high and its OUT is IRQ 0, which this
//! model does not raise itself: the caller collects rising edges with
//! [`Pit::advance`] and schedules with [`Pit::next_irq0`]. Channel 2's gate
//! and OUT are port 0x61 bits 0 and 5; channel 1 (DRAM refresh) just runs.
//!
//! Simplified: BCD counting is accepted and reported in the status byte
//! but counts in binary; a new count written in mode 3 takes effect at the
//! end of the current full period (not half-period); mode 2/3 counts of 1
//! (illegal on the chip) give no OUT edges; port 0x61's refresh bit toggles
//! every 18 PIT clocks (15.09 µs) whatever channel 1 is programmed to.

use crate::time::TscRate;

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;
/// PIT clocks per refresh-request toggle on port 0x61 bit 4.
const REFRESH_TICKS: u64 = 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// No count since the control word, counting stopped by mode 0's first
    /// byte, or (modes 1 and 5) waiting for a gate trigger.
    Idle,
    /// Counting: `t - start` clocks have elapsed at tick `t` (0 before).
    Counting { start: u64 },
    /// Gate low in modes 0, 2, 3, 4: `e` clocks elapsed, frozen.
    Paused { e: u64 },
}

#[derive(Clone, Debug)]
struct Channel {
    /// Effective mode 0-5 (6 and 7 alias 2 and 3).
    mode: u8,
    /// Mode bits as written, for the status byte.
    raw_mode: u8,
    /// 1 LSB, 2 MSB, 3 LSB then MSB.
    access: u8,
    bcd: bool,
    /// The count register as last written (0 = 65536).
    cr: u16,
    have_count: bool,
    write_msb_next: bool,
    cr_lsb: u8,
    read_msb_next: bool,
    latch: Option<u16>,
    status_latch: Option<u8>,
    gate: bool,
    run: Run,
    /// The count the counting element runs with, 1..=65536.
    n: u64,
    /// What a read shows while idle.
    idle_count: u16,
    /// Modes 2/3: a new count `n` takes over at tick `.0` (end of period).
    pending: Option<(u64, u64)>,
    /// NULL COUNT is set until this tick (`u64::MAX`: until an event).
    load_at: u64,
}

fn count_from(mode: u8, n: u64, e: u64) -> u16 {
    let v = match mode {
        2 => n - e % n,
        3 => {
            let p = e % n;
            if n.is_multiple_of(2) {
                let h = n / 2;
                n - 2 * (p % h)
            } else {
                let hh = n.div_ceil(2);
                let q = if p < hh { p } else { p - hh };
                n - 1 - 2 * q
            }
        }
        _ => n.wrapping_sub(e),
    };
    (v & 0xFFFF) as u16
}

fn out_from(mode: u8, n: u64, e: u64) -> bool {
    match mode {
        0 | 1 => e >= n,
        2 => e % n != n - 1,
        3 => e % n < n.div_ceil(2),
        _ => e != n,
    }
}

/// Rising edges of OUT at elapsed counts in `(ea, eb]`.
fn edges_from(mode: u8, n: u64, ea: u64, eb: u64) -> u64 {
    match mode {
        0 | 1 => u64::from(ea < n && n <= eb),
        2 | 3 if n >= 2 => (eb / n).saturating_sub(ea / n),
        2 | 3 => 0,
        _ => u64::from(ea <= n && n < eb),
    }
}

/// The first elapsed count after `e` at which OUT rises.
fn next_edge_from(mode: u8, n: u64, e: u64) -> Option<u64> {
    match mode {
        0 | 1 => (e < n).then_some(n),
        2 | 3 if n >= 2 => (e / n).checked_add(1)?.checked_mul(n),
        2 | 3 => None,
        _ => (e <= n).then(|| n + 1),
    }
}

impl Channel {
    fn new(gate: bool) -> Channel {
        Channel {
            mode: 3,
            raw_mode: 3,
            access: 3,
            bcd: false,
            cr: 0,
            have_count: false,
            write_msb_next: false,
            cr_lsb: 0,
            read_msb_next: false,
            latch: None,
            status_latch: None,
            gate,
            run: Run::Idle,
            n: 65536,
            idle_count: 0,
            pending: None,
            load_at: u64::MAX,
        }
    }

    fn cr_n(&self) -> u64 {
        if self.cr == 0 {
            65536
        } else {
            u64::from(self.cr)
        }
    }

    /// The configuration in force at tick `t` (a pending mode 2/3 count
    /// applied if its time has come).
    fn effective(&self, t: u64) -> (Run, u64) {
        match self.pending {
            Some((s, n2)) if t >= s => (Run::Counting { start: s }, n2),
            _ => (self.run, self.n),
        }
    }

    fn normalize(&mut self, t: u64) {
        let (run, n) = self.effective(t);
        if self.pending.is_some_and(|(s, _)| t >= s) {
            self.pending = None;
        }
        self.run = run;
        self.n = n;
    }

    fn count_at(&self, t: u64) -> u16 {
        match self.effective(t) {
            (Run::Idle, _) => self.idle_count,
            (Run::Paused { e }, n) => count_from(self.mode, n, e),
            (Run::Counting { start }, n) => count_from(self.mode, n, t.saturating_sub(start)),
        }
    }

    fn out_at(&self, t: u64) -> bool {
        match self.effective(t) {
            (Run::Idle, _) => self.mode != 0,
            (Run::Paused { .. }, _) if matches!(self.mode, 2 | 3) => true,
            (Run::Paused { e }, n) => out_from(self.mode, n, e),
            (Run::Counting { start }, n) => out_from(self.mode, n, t.saturating_sub(start)),
        }
    }

    fn status_at(&self, t: u64) -> u8 {
        (u8::from(self.out_at(t)) << 7)
            | (u8::from(t < self.load_at) << 6)
            | (self.access << 4)
            | (self.raw_mode << 1)
            | u8::from(self.bcd)
    }

    fn edges_cfg(&self, run: Run, n: u64, ta: u64, tb: u64) -> u64 {
        match run {
            Run::Counting { start } if tb > ta => {
                edges_from(self.mode, n, ta.saturating_sub(start), tb.saturating_sub(start))
            }
            _ => 0,
        }
    }

    /// Rising edges of OUT at ticks in `(ta, tb]`.
    fn rising_edges(&self, ta: u64, tb: u64) -> u64 {
        match self.pending {
            Some((s, n2)) if s <= ta => self.edges_cfg(Run::Counting { start: s }, n2, ta, tb),
            Some((s, n2)) if s <= tb => self.edges_cfg(self.run, self.n, ta, s).saturating_add(self.edges_cfg(
                Run::Counting { start: s },
                n2,
                s,
                tb,
            )),
            _ => self.edges_cfg(self.run, self.n, ta, tb),
        }
    }

    fn next_edge_cfg(&self, run: Run, n: u64, t: u64) -> Option<u64> {
        match run {
            Run::Counting { start } => start.checked_add(next_edge_from(self.mode, n, t.saturating_sub(start))?),
            _ => None,
        }
    }

    /// The first tick after `t` at which OUT rises.
    fn next_edge_after(&self, t: u64) -> Option<u64> {
        match self.pending {
            Some((s, n2)) if s <= t => self.next_edge_cfg(Run::Counting { start: s }, n2, t),
            Some((s, n2)) => match self.next_edge_cfg(self.run, self.n, t) {
                Some(x) if x <= s => Some(x),
                _ => self.next_edge_cfg(Run::Counting { start: s }, n2, s),
            },
            None => self.next_edge_cfg(self.run, self.n, t),
        }
    }

    fn control(&mut self, value: u8, t: u64) {
        self.idle_count = self.count_at(t);
        self.run = Run::Idle;
        self.pending = None;
        self.access = (value >> 4) & 3;
        self.raw_mode = (value >> 1) & 7;
        self.mode = if self.raw_mode >= 6 { self.raw_mode - 4 } else { self.raw_mode };
        self.bcd = value & 1 != 0;
        self.have_count = false;
        self.write_msb_next = false;
        self.read_msb_next = false;
        self.latch = None;
        self.status_latch = None;
        self.load_at = u64::MAX;
    }

    fn latch_count(&mut self, t: u64) {
        if self.latch.is_none() {
            self.latch = Some(self.count_at(t));
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.status_latch.is_none() {
            self.status_latch = Some(self.status_at(t));
        }
    }

    fn write_count(&mut self, value: u16, t: u64) {
        self.cr = value;
        self.have_count = true;
        let nv = self.cr_n();
        let load = t.saturating_add(1);
        match self.mode {
            0 | 4 => {
                self.run = if self.gate { Run::Counting { start: load } } else { Run::Paused { e: 0 } };
                self.n = nv;
                self.load_at = load;
            }
            1 | 5 => self.load_at = u64::MAX,
            _ => match self.run {
                Run::Idle => {
                    self.run = if self.gate { Run::Counting { start: load } } else { Run::Paused { e: 0 } };
                    self.n = nv;
                    self.load_at = load;
                }
                Run::Counting { start } if t < start => {
                    self.n = nv;
                    self.load_at = start;
                }
                Run::Counting { start } => {
                    let s = match self.pending {
                        Some((s, _)) => Some(s),
                        None => {
                            let e = t - start;
                            (e / self.n)
                                .checked_add(1)
                                .and_then(|k| k.checked_mul(self.n))
                                .and_then(|d| start.checked_add(d))
                        }
                    };
                    if let Some(s) = s {
                        self.pending = Some((s, nv));
                        self.load_at = s;
                    }
                }
                // Loaded when the gate rises.
                Run::Paused { .. } => self.load_at = u64::MAX,
            },
        }
    }

    fn write_data(&mut self, value: u8, t: u64) {
        match self.access {
            1 => self.write_count(u16::from(value), t),
            2 => self.write_count(u16::from(value) << 8, t),
            _ => {
                if self.write_msb_next {
                    self.write_msb_next = false;
                    self.write_count(u16::from(self.cr_lsb) | (u16::from(value) << 8), t);
                } else {
                    self.cr_lsb = value;
                    self.write_msb_next = true;
                    if self.mode == 0 {
                        // The first byte stops counting and drops OUT.
                        self.idle_count = self.count_at(t);
                        self.run = Run::Idle;
                        self.pending = None;
                    }
                }
            }
        }
    }

    fn read_data(&mut self, t: u64) -> u8 {
        if let Some(s) = self.status_latch.take() {
            return s;
        }
        let latched = self.latch.is_some();
        let c = self.latch.unwrap_or_else(|| self.count_at(t));
        let lsb = (c & 0xFF) as u8;
        let msb = (c >> 8) as u8;
        match self.access {
            1 => {
                self.latch = None;
                lsb
            }
            2 => {
                self.latch = None;
                msb
            }
            _ => {
                let msb_now = self.read_msb_next;
                self.read_msb_next = !msb_now;
                if msb_now {
                    if latched {
                        self.latch = None;
                    }
                    msb
                } else {
                    lsb
                }
            }
        }
    }

    fn set_gate(&mut self, level: bool, t: u64) {
        self.normalize(t);
        if level == self.gate {
            return;
        }
        self.gate = level;
        let load = t.saturating_add(1);
        if level {
            match (self.mode, self.run) {
                (0 | 4, Run::Paused { e }) => self.run = Run::Counting { start: t.saturating_sub(e) },
                (1 | 5 | 2 | 3, _) if self.have_count => {
                    self.n = self.cr_n();
                    self.run = Run::Counting { start: load };
                    self.pending = None;
                    self.load_at = load;
                }
                _ => {}
            }
        } else if let (0 | 2 | 3 | 4, Run::Counting { start }) = (self.mode, self.run) {
            self.run = Run::Paused { e: t.saturating_sub(start) };
            self.pending = None;
        }
    }
}

/// The 8254 and port 0x61 of one VM.
#[derive(Clone, Debug)]
pub struct Pit {
    rate: TscRate,
    epoch: u64,
    channels: [Channel; 3],
    /// Port 0x61 bits 1-3 (speaker data, parity/IOCHK check disables).
    port61: u8,
    /// The latest PIT tick seen (time never runs backwards here).
    last_tick: u64,
    /// Channel 0 edges are counted through this tick.
    irq_tick: u64,
    /// IRQ 0 rising edges counted and not yet returned by `advance`.
    irq_edges: u64,
}

impl Pit {
    /// A PIT whose clock starts at `now`. Every channel is idle in mode 3
    /// with no count (channel 0 gives no IRQ 0 until the guest programs
    /// it); channel 2's gate is low.
    pub fn new(rate: TscRate, now: u64) -> Pit {
        Pit {
            rate,
            epoch: now,
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port61: 0,
            last_tick: 0,
            irq_tick: 0,
            irq_edges: 0,
        }
    }

    fn tick(&mut self, now: u64) -> u64 {
        let t = self.rate.to_device(now.saturating_sub(self.epoch), PIT_HZ).max(self.last_tick);
        self.last_tick = t;
        t
    }

    fn tsc_of(&self, tick: u64) -> u64 {
        self.epoch.saturating_add(self.rate.from_device(tick, PIT_HZ))
    }

    /// Counts channel 0's edges through tick `t`.
    fn account0(&mut self, t: u64) {
        let [c0, _, _] = &mut self.channels;
        if t > self.irq_tick {
            self.irq_edges = self.irq_edges.saturating_add(c0.rising_edges(self.irq_tick, t));
            self.irq_tick = t;
        }
        c0.normalize(t);
    }

    /// Runs `f` on channel `i` at tick `t`, counting an IRQ 0 edge if it
    /// raises channel 0's OUT.
    fn with_channel(&mut self, i: usize, t: u64, f: impl FnOnce(&mut Channel, u64)) {
        if i == 0 {
            self.account0(t);
        }
        let Some(c) = self.channels.get_mut(i) else { return };
        c.normalize(t);
        let before = c.out_at(t);
        f(c, t);
        if i == 0 && !before && c.out_at(t) {
            self.irq_edges = self.irq_edges.saturating_add(1);
        }
    }

    /// Guest read of 0x40-0x43 (0x43 and other ports read 0xFF).
    pub fn port_read(&mut self, port: u16, now: u64) -> u8 {
        let t = self.tick(now);
        let i = usize::from(port.wrapping_sub(0x40));
        // No normalize here: that would fold a pending count into channel
        // 0 before its IRQ 0 edges are counted (reads see it anyway).
        match self.channels.get_mut(i) {
            Some(c) => c.read_data(t),
            None => 0xFF,
        }
    }

    /// Guest write of 0x40-0x43 (others dropped).
    pub fn port_write(&mut self, port: u16, value: u8, now: u64) {
        let t = self.tick(now);
        match port {
            0x40..=0x42 => self.with_channel(usize::from(port - 0x40), t, |c, t| c.write_data(value, t)),
            0x43 => {
                let sc = usize::from(value >> 6);
                if sc == 3 {
                    // Read-back: bit 5 clear latches counts, bit 4 clear status.
                    for i in 0..3 {
                        if value & (2 << i) != 0 {
                            self.with_channel(i, t, |c, t| {
                                if value & 0x10 == 0 {
                                    c.latch_status(t);
                                }
                                if value & 0x20 == 0 {
                                    c.latch_count(t);
                                }
                            });
                        }
                    }
                } else if (value >> 4) & 3 == 0 {
                    self.with_channel(sc, t, |c, t| c.latch_count(t));
                } else {
                    self.with_channel(sc, t, |c, t| c.control(value, t));
                }
            }
            _ => {}
        }
    }

    /// Guest read of port 0x61: gate 2, speaker data and check-enable bits
    /// as written, the refresh toggle (bit 4) and OUT2 (bit 5).
    pub fn port61_read(&mut self, now: u64) -> u8 {
        let t = self.tick(now);
        let [_, _, c2] = &self.channels;
        let refresh = u8::from((t / REFRESH_TICKS) % 2 == 1) << 4;
        let out2 = u8::from(c2.out_at(t)) << 5;
        u8::from(c2.gate) | self.port61 | refresh | out2
    }

    /// Guest write of port 0x61: bit 0 gates channel 2; bits 1-3 are
    /// stored (the speaker itself is silent).
    pub fn port61_write(&mut self, value: u8, now: u64) {
        let t = self.tick(now);
        self.port61 = value & 0x0E;
        let [_, _, c2] = &mut self.channels;
        c2.set_gate(value & 1 != 0, t);
    }

    /// IRQ 0 rising edges (channel 0 OUT going high) since the last call,
    /// up to `now`. The caller injects them (coalesced or reinjected, its
    /// choice); call it at [`Pit::next_irq0`] and after guest writes to
    /// the PIT.
    pub fn advance(&mut self, now: u64) -> u64 {
        let t = self.tick(now);
        self.account0(t);
        core::mem::take(&mut self.irq_edges)
    }

    /// The TSC tick at which the next IRQ 0 rising edge happens (in the
    /// past if `advance` has edges to return); None if channel 0 will
    /// produce none as programmed.
    pub fn next_irq0(&self) -> Option<u64> {
        if self.irq_edges > 0 {
            return Some(self.tsc_of(self.irq_tick));
        }
        let [c0, _, _] = &self.channels;
        c0.next_edge_after(self.irq_tick).map(|t| self.tsc_of(t))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two TSC ticks per PIT clock: tick k is at TSC 2k.
    fn pit() -> Pit {
        Pit::new(TscRate::new(2 * PIT_HZ), 0)
    }

    fn at(k: u64) -> u64 {
        2 * k
    }

    fn read16(p: &mut Pit, port: u16, now: u64) -> u16 {
        let lo = p.port_read(port, now);
        let hi = p.port_read(port, now);
        u16::from(lo) | (u16::from(hi) << 8)
    }

    #[test]
    fn mode0_on_channel2_counts_down_and_raises_out2() {
        let mut p = pit();
        // Linux's pit_calibrate_tsc: gate on, speaker off, mode 0, LSB/MSB.
        let v = p.port61_read(0);
        p.port61_write((v & !0x02) | 0x01, 0);
        p.port_write(0x43, 0xB0, 0);
        p.port_write(0x42, 0x00, at(10));
        assert_eq!(p.port61_read(at(10)) & 0x20, 0);
        p.port_write(0x42, 0x10, at(10));
        // Loaded at tick 11, counts from 12.
        assert_eq!(read16(&mut p, 0x42, at(11)), 0x1000);
        assert_eq!(read16(&mut p, 0x42, at(12)), 0x0FFF);
        assert_eq!(read16(&mut p, 0x42, at(11 + 0x800)), 0x0800);
        assert_eq!(p.port61_read(at(11 + 0xFFF)) & 0x20, 0);
        assert_eq!(p.port61_read(at(11 + 0x1000)) & 0x21, 0x21);
        // Keeps counting through 0 with OUT high.
        assert_eq!(read16(&mut p, 0x42, at(11 + 0x1001)), 0xFFFF);
        assert_eq!(p.port61_read(at(11 + 0x1001)) & 0x20, 0x20);
    }

    #[test]
    fn gate_low_pauses_mode0() {
        let mut p = pit();
        p.port61_write(1, 0);
        p.port_write(0x43, 0xB0, 0);
        p.port_write(0x42, 100, 0);
        p.port_write(0x42, 0, 0);
        p.port61_write(0, at(51));
        assert_eq!(read16(&mut p, 0x42, at(51)), 50);
        assert_eq!(read16(&mut p, 0x42, at(5000)), 50);
        p.port61_write(1, at(5000));
        assert_eq!(read16(&mut p, 0x42, at(5010)), 40);
        assert_eq!(p.port61_read(at(5049)) & 0x20, 0);
        assert_eq!(p.port61_read(at(5050)) & 0x20, 0x20);
    }

    #[test]
    fn latch_and_flip_flops() {
        let mut p = pit();
        p.port61_write(1, 0);
        p.port_write(0x43, 0xB4, 0); // ch2 mode 2 lsb/msb
        p.port_write(0x42, 0x34, 0);
        p.port_write(0x42, 0x12, 0);
        p.port_write(0x43, 0x80, at(3)); // latch ch2
        assert_eq!(p.port_read(0x42, at(100)), 0x32);
        // A second latch before the latch is read out is ignored.
        p.port_write(0x43, 0x80, at(200));
        assert_eq!(p.port_read(0x42, at(300)), 0x12);
        // Live again.
        assert_eq!(read16(&mut p, 0x42, at(301)), 0x1234 - 300);
        // LSB-only access.
        p.port_write(0x43, 0x90, at(400));
        p.port_write(0x42, 0x40, at(400));
        assert_eq!(p.port_read(0x42, at(411)), 0x36);
        assert_eq!(p.port_read(0x42, at(411)), 0x36);
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let mut p = pit();
        p.port_write(0x43, 0x34, 0);
        // Before a count: NULL COUNT set, OUT high (mode 2).
        p.port_write(0x43, 0xE2, 0);
        assert_eq!(p.port_read(0x40, 0), 0x80 | 0x40 | 0x34);
        p.port_write(0x40, 0x00, 0);
        p.port_write(0x40, 0x01, 0);
        p.port_write(0x43, 0xC2, at(101));
        assert_eq!(p.port_read(0x40, at(500)), 0x34 | 0x80);
        assert_eq!(read16(&mut p, 0x40, at(500)), 0x100 - 100);
        // Status only, BCD bit reported.
        p.port_write(0x43, 0x31, at(600));
        p.port_write(0x43, 0xE2, at(600));
        assert_eq!(p.port_read(0x40, at(600)), 0x31 | 0x40);
    }

    #[test]
    fn mode2_periodic_irq0_edges_are_arithmetic() {
        let mut p = pit();
        assert_eq!(p.next_irq0(), None);
        p.port_write(0x43, 0x34, 0);
        p.port_write(0x40, 0xA9, 0);
        p.port_write(0x40, 0x04, 0); // 1193: ~1 kHz
        assert_eq!(p.next_irq0(), Some(at(1 + 1193)));
        // OUT low for exactly the clock before reload.
        assert_eq!(read16(&mut p, 0x40, at(1 + 1191)), 2);
        p.port_write(0x43, 0xE2, at(1 + 1191));
        assert_eq!(p.port_read(0x40, at(1 + 1191)) & 0x80, 0x80);
        p.port_write(0x43, 0xE2, at(1 + 1192));
        assert_eq!(p.port_read(0x40, at(1 + 1192)) & 0x80, 0);
        assert_eq!(p.advance(at(1193)), 0);
        assert_eq!(p.advance(at(1194)), 1);
        assert_eq!(p.next_irq0(), Some(at(1 + 2 * 1193)));
        // One simulated hour in one step.
        let hour = 3600 * PIT_HZ;
        assert_eq!(p.advance(at(hour)), (hour - 1) / 1193 - 1);
    }

    #[test]
    fn mode3_square_wave_counts_by_two() {
        let mut p = pit();
        p.port61_write(1, 0);
        p.port_write(0x43, 0xB6, 0);
        p.port_write(0x42, 10, 0);
        p.port_write(0x42, 0, 0);
        let c = |p: &mut Pit, k: u64| read16(p, 0x42, at(1 + k));
        assert_eq!(c(&mut p, 0), 10);
        assert_eq!(c(&mut p, 1), 8);
        assert_eq!(c(&mut p, 4), 2);
        assert_eq!(p.port61_read(at(1 + 4)) & 0x20, 0x20);
        assert_eq!(c(&mut p, 5), 10);
        assert_eq!(p.port61_read(at(1 + 5)) & 0x20, 0);
        assert_eq!(p.port61_read(at(1 + 10)) & 0x20, 0x20);
        // Odd count: high 3 clocks, low 2.
        p.port_write(0x43, 0xB6, at(100));
        p.port_write(0x42, 5, at(100));
        p.port_write(0x42, 0, at(100));
        let out = |p: &mut Pit, k: u64| p.port61_read(at(101 + k)) & 0x20 != 0;
        let pattern: Vec<bool> = (0..10).map(|k| out(&mut p, k)).collect();
        assert_eq!(pattern, [true, true, true, false, false, true, true, true, false, false]);
    }

    #[test]
    fn mode2_new_count_takes_effect_at_period_end() {
        let mut p = pit();
        p.port_write(0x43, 0x34, 0);
        p.port_write(0x40, 100, 0);
        p.port_write(0x40, 0, 0);
        p.port_write(0x40, 50, at(30));
        p.port_write(0x40, 0, at(30));
        assert_eq!(p.next_irq0(), Some(at(101)));
        assert_eq!(p.advance(at(101 + 50 * 3)), 4);
        assert_eq!(read16(&mut p, 0x40, at(101 + 50 * 3 + 10)), 40);
    }

    #[test]
    fn reads_after_a_pending_count_switch_lose_no_edges() {
        let mut p = pit();
        p.port_write(0x43, 0x34, 0);
        p.port_write(0x40, 100, 0);
        p.port_write(0x40, 0, 0);
        p.port_write(0x40, 50, at(30));
        p.port_write(0x40, 0, at(30));
        p.port_read(0x40, at(120));
        assert_eq!(p.advance(at(121)), 1);
    }

    #[test]
    fn control_word_edge_and_mode0_one_shot_on_channel0() {
        let mut p = pit();
        // Linux oneshot: mode 0; OUT low, then one edge at N+1.
        p.port_write(0x43, 0x30, 0);
        p.port_write(0x40, 0x10, 0);
        p.port_write(0x40, 0x00, 0);
        assert_eq!(p.next_irq0(), Some(at(17)));
        assert_eq!(p.advance(at(16)), 0);
        assert_eq!(p.advance(at(1000)), 1);
        assert_eq!(p.next_irq0(), None);
        // Mode 0 re-armed, then switched to mode 2 before it fires: the
        // control word raises OUT, which is an edge.
        p.port_write(0x43, 0x30, at(2000));
        p.port_write(0x43, 0x34, at(2001));
        assert_eq!(p.next_irq0(), Some(at(2001)));
        assert_eq!(p.advance(at(2001)), 1);
        assert_eq!(p.next_irq0(), None);
    }

    #[test]
    fn mode1_and_5_wait_for_a_gate_trigger() {
        let mut p = pit();
        p.port_write(0x43, 0xB2, 0);
        p.port_write(0x42, 5, 0);
        p.port_write(0x42, 0, 0);
        assert_eq!(p.port61_read(at(100)) & 0x20, 0x20);
        p.port61_write(1, at(100));
        assert_eq!(p.port61_read(at(102)) & 0x20, 0);
        assert_eq!(p.port61_read(at(106)) & 0x20, 0x20);
        p.port_write(0x43, 0xBA, at(200));
        p.port_write(0x42, 5, at(200));
        p.port_write(0x42, 0, at(200));
        p.port61_write(0, at(200));
        p.port61_write(1, at(300));
        let pattern: Vec<bool> = (300..310).map(|k| p.port61_read(at(k)) & 0x20 != 0).collect();
        assert_eq!(pattern, [true, true, true, true, true, true, false, true, true, true]);
    }

    #[test]
    fn refresh_bit_toggles() {
        let mut p = pit();
        let a = p.port61_read(at(0)) & 0x10;
        let b = p.port61_read(at(18)) & 0x10;
        assert_ne!(a, b);
        p.port61_write(0xFF, 0);
        assert_eq!(p.port61_read(at(0)) & 0x0F, 0x0F);
    }

    #[test]
    fn next_irq0_is_exact_at_real_clock_rates() {
        let mut p = Pit::new(TscRate::new(2_893_571_000), 1_000_000);
        p.port_write(0x43, 0x34, 1_000_000);
        p.port_write(0x40, 0x9C, 1_000_000);
        p.port_write(0x40, 0x2E, 1_000_000);
        let mut now = 1_000_000;
        for _ in 0..1000 {
            let d = p.next_irq0().unwrap();
            assert!(d > now);
            assert_eq!(p.advance(d - 1), 0);
            assert_eq!(p.advance(d), 1);
            now = d;
        }
    }

    proptest! {
        #[test]
        fn arbitrary_io_never_panics_and_edges_are_chunking_invariant(ops in proptest::collection::vec(
            (0u8..6, any::<u8>(), 0u64..3_000_000), 0..200)) {
            let mut p = Pit::new(TscRate::new(2_400_000_000), 7);
            let mut now = 7u64;
            for (kind, v, dt) in ops {
                now += dt;
                match kind {
                    0 => p.port_write(0x40 + u16::from(v % 4), v, now),
                    1 => p.port_write(0x43, v, now),
                    2 => { p.port_read(0x40 + u16::from(v % 5), now); }
                    3 => p.port61_write(v, now),
                    4 => { p.port61_read(now); }
                    _ => {
                        // Stepping in pieces counts the same edges as one step.
                        let mut q = p.clone();
                        let end = now + dt * 1000;
                        let mut sum = 0u64;
                        for k in 1..=7 {
                            let at = now + (end - now) * k / 7;
                            // Reads in between must not disturb the count.
                            p.port_read(0x40 + u16::from(v % 3), at);
                            sum += p.advance(at);
                        }
                        prop_assert_eq!(sum, q.advance(end));
                        now = end;
                    }
                }
                let r = p.port61_read(now);
                prop_assert_eq!(r & 0xC0, 0);
                p.advance(now);
                if let Some(d) = p.next_irq0() {
                    prop_assert!(d > now);
                }
            }
        }
    }
}
