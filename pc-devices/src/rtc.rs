//! The MC146818 CMOS RTC and its NVRAM (ports 0x70/0x71, IRQ 8).
//!
//! The clock is the host's wall time plus an offset the guest sets: the
//! model is given the Unix time at its creation and counts TSC seconds
//! from there, so it never drifts from the TSC and never needs a tick.
//! Second updates happen on the TSC-second boundaries after creation; UIP
//! reads 1 in the 244 µs before each. Flags in register C (PF, AF, UF) are
//! computed lazily for any span of time; IRQ 8 goes high when a flag whose
//! enable bit is set in register B becomes set, and low when register C is
//! read (or the enables are cleared).
//!
//! Simplified: the divider bits of register A (6:4) are stored only (the
//! clock always runs, there is no 500 ms delay after a divider reset);
//! day-of-week is kept as an offset from the true weekday of the date so a
//! guest may set it as it likes; the century byte (0x32) is part of the
//! clock and follows register B's data mode like the other time bytes
//! (BCD by default); registers 0x00-0x09 and 0x32 written while SET is
//! clear take effect immediately.

use crate::irq::IrqSink;
use crate::time::TscRate;

/// The RTC's interrupt line (ISA IRQ 8 = GSI 8).
pub const RTC_IRQ: u32 = 8;
/// CMOS bytes, including the clock registers.
pub const CMOS_SIZE: usize = 128;

const REG_A: u8 = 0x0A;
const REG_B: u8 = 0x0B;
const REG_C: u8 = 0x0C;
const REG_D: u8 = 0x0D;
const CENTURY: u8 = 0x32;

const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const FLAGS: u8 = 0x70;

/// The 32.768 kHz time base the periodic interrupt divides.
const BASE_HZ: u64 = 32_768;
const SECS_PER_DAY: i128 = 86_400;
/// Days from 0000-03-01 to 1970-01-01 (proleptic Gregorian).
const DAYS_TO_UNIX_EPOCH: i64 = 719_468;
const DAYS_PER_400Y: i64 = 146_097;
/// Days before each month of a year that starts in March.
const MARCH_CUMULATIVE: [i64; 12] = [0, 31, 61, 92, 122, 153, 184, 214, 245, 275, 306, 337];
const MARCH_LENGTHS: [i64; 12] = [31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, 29];

/// A calendar date (year, month 1-12, day 1-31) from days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days.saturating_add(DAYS_TO_UNIX_EPOCH);
    let era = z.div_euclid(DAYS_PER_400Y);
    let mut rem = z.rem_euclid(DAYS_PER_400Y);
    // A 400-year cycle starting in March: three centuries of 36524 days and
    // a last of 36525 (its final year ends on a 29 February).
    let centuries = (rem / 36_524).min(3);
    rem -= centuries * 36_524;
    let quads = rem / 1461;
    rem -= quads * 1461;
    let years = (rem / 365).min(3);
    rem -= years * 365;
    let mut month_index = 0usize;
    for (i, len) in MARCH_LENGTHS.iter().enumerate() {
        month_index = i;
        if rem < *len {
            break;
        }
        rem -= len;
    }
    let yoe = centuries * 100 + quads * 4 + years;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = era.saturating_mul(400).saturating_add(yoe).saturating_add(i64::from(month <= 2));
    // month is 1..=12 and rem + 1 is 1..=31 by construction.
    (year, month as u8, (rem + 1) as u8)
}

/// Days since 1970-01-01 of a date; out-of-range months and days roll
/// over into the following months, as a calendar addition would.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let m0 = month - 1;
    let year = year + m0.div_euclid(12);
    let month = m0.rem_euclid(12) + 1;
    let (y, mi) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let before_month = usize::try_from(mi).ok().and_then(|i| MARCH_CUMULATIVE.get(i)).copied().unwrap_or(0);
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + before_month + day - 1;
    era * DAYS_PER_400Y + doe - DAYS_TO_UNIX_EPOCH
}

/// The clock's fields as the guest sees them (raw while it is setting
/// them: a month of 13 stays 13 until SET is cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    min: i64,
    sec: i64,
    /// 1 = Sunday.
    wday: i64,
}

fn weekday_of(days: i64) -> i64 {
    // 1970-01-01 was a Thursday (4 with Sunday = 0).
    (days + 4).rem_euclid(7)
}

impl DateTime {
    fn from_secs(secs: i128, wday_adj: i64) -> DateTime {
        let days = i64::try_from(secs.div_euclid(SECS_PER_DAY)).unwrap_or(0);
        let sod = i64::try_from(secs.rem_euclid(SECS_PER_DAY)).unwrap_or(0);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month: i64::from(month),
            day: i64::from(day),
            hour: sod / 3600,
            min: sod / 60 % 60,
            sec: sod % 60,
            wday: (weekday_of(days) + wday_adj).rem_euclid(7) + 1,
        }
    }

    fn days(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
    }

    fn to_secs(self) -> i128 {
        i128::from(self.days()) * SECS_PER_DAY + i128::from(self.hour * 3600 + self.min * 60 + self.sec)
    }

    /// The weekday offset that makes this date show `self.wday`.
    fn wday_adj(&self) -> i64 {
        (self.wday - 1 - weekday_of(self.days())).rem_euclid(7)
    }
}

/// The RTC and CMOS of one VM.
#[derive(Clone, Debug)]
pub struct Rtc {
    rate: TscRate,
    epoch: u64,
    /// Unix time at `epoch`.
    wall0: u64,
    /// Guest clock minus wall clock, in seconds.
    offset: i128,
    wday_adj: i64,
    cmos: [u8; CMOS_SIZE],
    index: u8,
    nmi_disabled: bool,
    reg_a: u8,
    reg_b: u8,
    /// PF, AF, UF as set so far (IRQF is derived).
    flags: u8,
    /// Flags are computed through this TSC tick.
    flags_through: u64,
    /// The clock's fields while SET holds updates.
    frozen: Option<DateTime>,
    irq_line: bool,
}

fn bcd_to_bin(v: u8) -> i64 {
    i64::from(v >> 4) * 10 + i64::from(v & 0x0F)
}

fn bin_to_bcd(v: i64) -> u8 {
    let v = v.rem_euclid(100);
    ((v / 10) << 4 | (v % 10)) as u8
}

impl Rtc {
    /// An RTC showing Unix time `unix_seconds` at `now`: 24-hour BCD mode,
    /// 1024 Hz periodic rate selected, no interrupts enabled.
    pub fn new(rate: TscRate, now: u64, unix_seconds: u64) -> Rtc {
        Rtc {
            rate,
            epoch: now,
            wall0: unix_seconds,
            offset: 0,
            wday_adj: 0,
            cmos: [0; CMOS_SIZE],
            index: 0,
            nmi_disabled: false,
            reg_a: 0x26,
            reg_b: B_24H,
            flags: 0,
            flags_through: now,
            frozen: None,
            irq_line: false,
        }
    }

    /// Whether the guest asked for NMIs to be masked (port 0x70 bit 7).
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// Whole seconds elapsed since creation at `t`.
    fn secs(&self, t: u64) -> u64 {
        self.rate.to_device(t.saturating_sub(self.epoch), 1)
    }

    fn guest_secs_at(&self, elapsed: u64) -> i128 {
        i128::from(self.wall0) + i128::from(elapsed) + self.offset
    }

    fn now_fields(&self, now: u64) -> DateTime {
        match self.frozen {
            Some(f) => f,
            None => DateTime::from_secs(self.guest_secs_at(self.secs(now)), self.wday_adj),
        }
    }

    fn commit(&mut self, dt: DateTime, now: u64) {
        self.offset = dt.to_secs() - i128::from(self.wall0) - i128::from(self.secs(now));
        self.wday_adj = dt.wday_adj();
    }

    fn binary(&self) -> bool {
        self.reg_b & B_BINARY != 0
    }

    fn encode(&self, v: i64) -> u8 {
        if self.binary() {
            (v.rem_euclid(256)) as u8
        } else {
            bin_to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> i64 {
        if self.binary() {
            i64::from(v)
        } else {
            bcd_to_bin(v)
        }
    }

    fn encode_hour(&self, h: i64) -> u8 {
        if self.reg_b & B_24H != 0 {
            return self.encode(h);
        }
        let h = h.rem_euclid(24);
        let h12 = if h % 12 == 0 { 12 } else { h % 12 };
        self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> i64 {
        if self.reg_b & B_24H != 0 {
            return self.decode(v);
        }
        let h = self.decode(v & 0x7F);
        h % 12 + if v & 0x80 != 0 { 12 } else { 0 }
    }

    /// An alarm byte: None = don't care (0xC0-0xFF), else the decoded value.
    fn alarm_field(&self, reg: u8, hour: bool) -> Option<i64> {
        let v = self.cmos.get(usize::from(reg)).copied().unwrap_or(0);
        if v & 0xC0 == 0xC0 {
            None
        } else if hour {
            Some(self.decode_hour(v))
        } else {
            Some(self.decode(v))
        }
    }

    /// The first guest second >= `from` whose time of day matches the
    /// alarm, if the alarm can match at all.
    fn next_alarm(&self, from: i128) -> Option<i128> {
        let a_sec = self.alarm_field(0x01, false);
        let a_min = self.alarm_field(0x03, false);
        let a_hour = self.alarm_field(0x05, true);
        if a_sec.is_some_and(|s| !(0..60).contains(&s))
            || a_min.is_some_and(|m| !(0..60).contains(&m))
            || a_hour.is_some_and(|h| !(0..24).contains(&h))
        {
            return None;
        }
        let tod = i64::try_from(from.rem_euclid(SECS_PER_DAY)).ok()?;
        let day_start = from - i128::from(tod);
        let first_minute = tod / 60;
        // Every minute of the next 24 hours, starting with this one.
        for i in 0..=1440i64 {
            let minute = first_minute + i;
            let h = (minute % 1440) / 60;
            let m = minute % 60;
            if a_hour.is_some_and(|x| x != h) || a_min.is_some_and(|x| x != m) {
                continue;
            }
            let s = match (i, a_sec) {
                (0, Some(s)) if s >= tod % 60 => s,
                (0, Some(_)) => continue,
                (0, None) => tod % 60,
                (_, Some(s)) => s,
                (_, None) => 0,
            };
            return Some(day_start + i128::from(minute * 60 + s));
        }
        None
    }

    fn periodic_ticks(&self) -> Option<u64> {
        match self.reg_a & 0x0F {
            0 => None,
            1 => Some(128),
            2 => Some(256),
            rs => Some(1 << (rs - 1)),
        }
    }

    fn base_ticks(&self, t: u64) -> u64 {
        self.rate.to_device(t.saturating_sub(self.epoch), BASE_HZ)
    }

    /// Sets the flags for everything that happened in (flags_through, now].
    fn accumulate(&mut self, now: u64) {
        if now <= self.flags_through {
            return;
        }
        let from = self.flags_through;
        self.flags_through = now;
        if let Some(p) = self.periodic_ticks() {
            if self.base_ticks(now) / p > self.base_ticks(from) / p {
                self.flags |= B_PIE;
            }
        }
        if self.reg_b & B_SET != 0 {
            return;
        }
        let (sa, sb) = (self.secs(from), self.secs(now));
        if sb > sa {
            self.flags |= B_UIE;
            let first = self.guest_secs_at(sa) + 1;
            let last = self.guest_secs_at(sb);
            if self.next_alarm(first).is_some_and(|g| g <= last) {
                self.flags |= B_AIE;
            }
        }
    }

    fn update_irq(&mut self, irq: &mut dyn IrqSink) {
        let want = self.flags & self.reg_b & FLAGS != 0;
        if want != self.irq_line {
            self.irq_line = want;
            irq.set_irq(RTC_IRQ, want);
        }
    }

    /// Brings the flags and IRQ 8 up to `now`; call it at
    /// [`Rtc::next_deadline`].
    pub fn advance(&mut self, now: u64, irq: &mut dyn IrqSink) {
        self.accumulate(now);
        self.update_irq(irq);
    }

    /// When an enabled interrupt source (PIE, AIE, UIE in register B)
    /// next sets its flag. None when none is enabled, and also while IRQ 8
    /// is high: nothing can change the line until the guest reads
    /// register C, and the flags catch up lazily then.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.irq_line {
            return None;
        }
        let t = self.flags_through;
        let mut best: Option<u64> = None;
        let mut take = |d: Option<u64>| {
            if let Some(d) = d {
                best = Some(best.map_or(d, |b| b.min(d)));
            }
        };
        if self.reg_b & B_PIE != 0 {
            take(self.periodic_ticks().and_then(|p| {
                let next = (self.base_ticks(t) / p).checked_add(1)?.checked_mul(p)?;
                self.epoch.checked_add(self.rate.from_device(next, BASE_HZ))
            }));
        }
        if self.reg_b & B_SET == 0 {
            let next_sec = self.secs(t).checked_add(1);
            if self.reg_b & B_UIE != 0 {
                take(next_sec.and_then(|s| self.epoch.checked_add(self.rate.from_device(s, 1))));
            }
            if self.reg_b & B_AIE != 0 {
                take(next_sec.and_then(|s| {
                    let g = self.next_alarm(self.guest_secs_at(s))?;
                    let elapsed = u64::try_from(g - i128::from(self.wall0) - self.offset).ok()?;
                    self.epoch.checked_add(self.rate.from_device(elapsed, 1))
                }));
            }
        }
        best
    }

    fn uip(&self, now: u64) -> bool {
        if self.reg_b & B_SET != 0 {
            return false;
        }
        let into = now.saturating_sub(self.epoch) % self.rate.hz;
        into >= self.rate.hz.saturating_sub(self.rate.from_ns(244_000))
    }

    fn read_reg(&mut self, index: u8, now: u64, irq: &mut dyn IrqSink) -> u8 {
        let f = self.now_fields(now);
        match index {
            0x00 => self.encode(f.sec),
            0x02 => self.encode(f.min),
            0x04 => self.encode_hour(f.hour),
            0x06 => self.encode(f.wday),
            0x07 => self.encode(f.day),
            0x08 => self.encode(f.month),
            0x09 => self.encode(f.year.rem_euclid(100)),
            CENTURY => self.encode(f.year.div_euclid(100).rem_euclid(100)),
            REG_A => self.reg_a | if self.uip(now) { 0x80 } else { 0 },
            REG_B => self.reg_b,
            REG_C => {
                let v = self.flags | if self.flags & self.reg_b & FLAGS != 0 { C_IRQF } else { 0 };
                self.flags = 0;
                self.update_irq(irq);
                v
            }
            REG_D => 0x80,
            i => self.cmos.get(usize::from(i)).copied().unwrap_or(0xFF),
        }
    }

    fn write_time_field(&mut self, index: u8, value: u8, now: u64) {
        let mut f = self.now_fields(now);
        let v = self.decode(value);
        match index {
            0x00 => f.sec = v,
            0x02 => f.min = v,
            0x04 => f.hour = self.decode_hour(value),
            0x06 => f.wday = v,
            0x07 => f.day = v,
            0x08 => f.month = v,
            0x09 => f.year = f.year.div_euclid(100) * 100 + v,
            _ => f.year = v * 100 + f.year.rem_euclid(100),
        }
        if self.frozen.is_some() {
            self.frozen = Some(f);
        } else {
            self.commit(f, now);
        }
    }

    fn write_reg(&mut self, index: u8, value: u8, now: u64, irq: &mut dyn IrqSink) {
        match index {
            0x00 | 0x02 | 0x04 | 0x06..=0x09 | CENTURY => self.write_time_field(index, value, now),
            REG_A => self.reg_a = value & 0x7F,
            REG_B => {
                let mut value = value;
                let was_set = self.reg_b & B_SET != 0;
                if value & B_SET != 0 && !was_set {
                    self.frozen = Some(self.now_fields(now));
                    // SET going high clears UIE (MC146818/DS12887).
                    value &= !B_UIE;
                } else if value & B_SET == 0 && was_set {
                    if let Some(f) = self.frozen.take() {
                        self.commit(f, now);
                    }
                }
                self.reg_b = value;
                self.update_irq(irq);
            }
            REG_C | REG_D => {}
            i => {
                if let Some(b) = self.cmos.get_mut(usize::from(i)) {
                    *b = value;
                }
            }
        }
    }

    /// Guest read of port 0x70 (write-only: reads 0xFF) or 0x71 (the byte
    /// at the selected index; register C clears its flags and lowers IRQ 8).
    pub fn port_read(&mut self, port: u16, now: u64, irq: &mut dyn IrqSink) -> u8 {
        self.advance(now, irq);
        match port {
            0x71 => self.read_reg(self.index, now, irq),
            _ => 0xFF,
        }
    }

    /// Guest write of port 0x70 (index in bits 6:0, NMI disable in bit 7)
    /// or 0x71 (the byte at the selected index).
    pub fn port_write(&mut self, port: u16, value: u8, now: u64, irq: &mut dyn IrqSink) {
        self.advance(now, irq);
        match port {
            0x70 => {
                self.index = value & 0x7F;
                self.nmi_disabled = value & 0x80 != 0;
            }
            0x71 => self.write_reg(self.index, value, now, irq),
            _ => {}
        }
    }

    /// Fills the BIOS memory-size bytes for `bytes` of RAM, all of it
    /// below 4 GiB up to 4 GiB (use [`Rtc::set_memory_layout`] when there
    /// is a PCI hole).
    pub fn set_memory_size(&mut self, bytes: u64) {
        let low = bytes.min(1 << 32);
        self.set_memory_layout(low, bytes - low);
    }

    /// Fills the memory-size bytes for `below_4g` bytes of RAM from 0 and
    /// `above_4g` bytes from 4 GiB: 0x15/0x16 base memory (640 KiB),
    /// 0x17/0x18 and 0x30/0x31 KiB above 1 MiB (capped 0xFFFF), 0x34/0x35
    /// 64 KiB units above 16 MiB, 0x5B-0x5D 64 KiB units above 4 GiB; then
    /// the standard checksum of 0x10-0x2D at 0x2E/0x2F.
    pub fn set_memory_layout(&mut self, below_4g: u64, above_4g: u64) {
        const MIB: u64 = 1 << 20;
        let ext_kib = (below_4g.saturating_sub(MIB) / 1024).min(0xFFFF);
        let above_16m = (below_4g.saturating_sub(16 * MIB) / 65536).min(0xFFFF);
        let high = (above_4g / 65536).min(0xFF_FFFF);
        let bytes: [(usize, u64); 10] = [
            (0x15, 640 & 0xFF),
            (0x16, 640 >> 8),
            (0x17, ext_kib & 0xFF),
            (0x18, ext_kib >> 8),
            (0x30, ext_kib & 0xFF),
            (0x31, ext_kib >> 8),
            (0x34, above_16m & 0xFF),
            (0x35, above_16m >> 8),
            (0x5B, high & 0xFF),
            (0x5C, (high >> 8) & 0xFF),
        ];
        for (i, v) in bytes {
            if let Some(b) = self.cmos.get_mut(i) {
                *b = (v & 0xFF) as u8;
            }
        }
        if let Some(b) = self.cmos.get_mut(0x5D) {
            *b = ((high >> 16) & 0xFF) as u8;
        }
        let sum: u16 = self.cmos.get(0x10..=0x2D).map_or(0, |s| s.iter().map(|&b| u16::from(b)).sum());
        if let Some(b) = self.cmos.get_mut(0x2E) {
            *b = (sum >> 8) as u8;
        }
        if let Some(b) = self.cmos.get_mut(0x2F) {
            *b = (sum & 0xFF) as u8;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::irq::IrqLog;
    use proptest::prelude::*;

    const HZ: u64 = 1_000_000_000;

    fn rd(r: &mut Rtc, i: u8, now: u64, log: &mut IrqLog) -> u8 {
        r.port_write(0x70, i, now, log);
        r.port_read(0x71, now, log)
    }

    fn wr(r: &mut Rtc, i: u8, v: u8, now: u64, log: &mut IrqLog) {
        r.port_write(0x70, i, now, log);
        r.port_write(0x71, v, now, log);
    }

    fn clock(r: &mut Rtc, now: u64, log: &mut IrqLog) -> [u8; 8] {
        [0x32, 9, 8, 7, 4, 2, 0, 6].map(|i| rd(r, i, now, log))
    }

    #[test]
    fn calendar_round_trips_and_knows_leap_years() {
        for d in -800_000i64..800_000 {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(dd)), d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(1900, 2, 29)), (1900, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(2100, 2, 29)), (2100, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 13, 1)), (2025, 1, 1));
        assert_eq!(days_from_civil(2038, 1, 19), 24_855);
    }

    #[test]
    fn shows_wall_time_in_bcd_and_rolls_over() {
        let mut log = IrqLog::default();
        // 2024-02-29 23:59:59 UTC, a Thursday.
        let mut r = Rtc::new(TscRate::new(HZ), 500, 1_709_251_199);
        assert_eq!(clock(&mut r, 500, &mut log), [0x20, 0x24, 0x02, 0x29, 0x23, 0x59, 0x59, 5]);
        assert_eq!(clock(&mut r, 500 + HZ, &mut log), [0x20, 0x24, 0x03, 0x01, 0x00, 0x00, 0x00, 6]);
        // Year 2099 -> 2100 rolls the century.
        let mut r = Rtc::new(TscRate::new(HZ), 0, 4_102_444_799);
        assert_eq!(clock(&mut r, HZ, &mut log), [0x21, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 6]);
        assert_eq!(rd(&mut r, 0x0D, 0, &mut log), 0x80);
        assert_eq!(rd(&mut r, 0x0A, 0, &mut log), 0x26);
        assert_eq!(rd(&mut r, 0x0B, 0, &mut log), 0x02);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut log = IrqLog::default();
        // 1970-01-01 13:05:09.
        let mut r = Rtc::new(TscRate::new(HZ), 0, 13 * 3600 + 5 * 60 + 9);
        wr(&mut r, 0x0B, 0x04, 0, &mut log);
        assert_eq!(clock(&mut r, 0, &mut log), [19, 70, 1, 1, 0x81, 5, 9, 5]);
        wr(&mut r, 0x0B, 0x00, 0, &mut log);
        assert_eq!(rd(&mut r, 4, 0, &mut log), 0x81);
        let mut r = Rtc::new(TscRate::new(HZ), 0, 30);
        assert_eq!(rd(&mut r, 4, 0, &mut log), 0x00);
        wr(&mut r, 0x0B, 0x00, 0, &mut log);
        assert_eq!(rd(&mut r, 4, 0, &mut log), 0x12);
    }

    #[test]
    fn guest_sets_the_time_under_set_and_it_keeps_running() {
        let mut log = IrqLog::default();
        let mut r = Rtc::new(TscRate::new(HZ), 0, 1_700_000_000);
        wr(&mut r, 0x0B, 0x82 | B_UIE, 10, &mut log);
        // UIE cleared by SET.
        assert_eq!(rd(&mut r, 0x0B, 10, &mut log), 0x82);
        // 1999-12-31 23:59:58 (a Friday).
        for (i, v) in [(0x32, 0x19), (9, 0x99), (8, 0x12), (7, 0x31), (4, 0x23), (2, 0x59), (0, 0x58), (6, 6)] {
            wr(&mut r, i, v, 20, &mut log);
        }
        // Frozen while SET, no UIP.
        assert_eq!(rd(&mut r, 0, 5 * HZ, &mut log), 0x58);
        assert_eq!(rd(&mut r, 0x0A, 6 * HZ - 1, &mut log) & 0x80, 0);
        wr(&mut r, 0x0B, 0x02, 5 * HZ + 100, &mut log);
        assert_eq!(clock(&mut r, 7 * HZ, &mut log), [0x20, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 7]);
        // A field written without SET takes effect at once.
        wr(&mut r, 9, 0x01, 7 * HZ, &mut log);
        assert_eq!(clock(&mut r, 7 * HZ, &mut log)[..2], [0x20, 0x01]);
    }

    #[test]
    fn uip_is_set_in_the_last_244us() {
        let mut log = IrqLog::default();
        let mut r = Rtc::new(TscRate::new(HZ), 0, 0);
        assert_eq!(rd(&mut r, 0x0A, HZ - 244_001, &mut log) & 0x80, 0);
        assert_eq!(rd(&mut r, 0x0A, HZ - 244_000, &mut log) & 0x80, 0x80);
        assert_eq!(rd(&mut r, 0x0A, HZ - 1, &mut log) & 0x80, 0x80);
        assert_eq!(rd(&mut r, 0x0A, HZ, &mut log) & 0x80, 0);
    }

    #[test]
    fn periodic_interrupt_at_1024_hz_held_until_reg_c_is_read() {
        let mut log = IrqLog::default();
        let mut r = Rtc::new(TscRate::new(HZ), 0, 0);
        assert_eq!(r.next_deadline(), None);
        wr(&mut r, 0x0B, 0x02 | B_PIE, 0, &mut log);
        let d = r.next_deadline().unwrap();
        assert_eq!(d, 976_563);
        r.advance(d - 1, &mut log);
        assert!(log.events.is_empty());
        r.advance(d, &mut log);
        assert_eq!(log.events, [(8, true)]);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(rd(&mut r, 0x0C, 10 * d, &mut log), 0xC0);
        assert_eq!(log.events, [(8, true), (8, false)]);
        assert_eq!(rd(&mut r, 0x0C, 10 * d, &mut log), 0x00);
        assert!(r.next_deadline().unwrap() > 10 * d);
        // Rate 15 = 2 Hz; rates 1 and 2 = 256 and 128 Hz.
        wr(&mut r, 0x0A, 0x2F, 10 * d, &mut log);
        assert_eq!(r.next_deadline(), Some(HZ / 2));
        wr(&mut r, 0x0A, 0x21, 10 * d, &mut log);
        assert_eq!(r.next_deadline(), Some(11_718_750));
        wr(&mut r, 0x0A, 0x20, 10 * d, &mut log);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn flags_are_set_without_enables_but_raise_no_irq() {
        let mut log = IrqLog::default();
        let mut r = Rtc::new(TscRate::new(HZ), 0, 0);
        // PF and UF; the alarm (00:00:00) did not match.
        assert_eq!(rd(&mut r, 0x0C, 2 * HZ, &mut log), 0x50);
        assert!(log.events.is_empty());
        // Enabling a source whose flag is already set raises IRQ 8.
        r.advance(3 * HZ, &mut log);
        wr(&mut r, 0x0B, 0x02 | B_UIE, 3 * HZ, &mut log);
        assert_eq!(log.events, [(8, true)]);
        assert_eq!(rd(&mut r, 0x0C, 3 * HZ, &mut log), 0xD0);
    }

    #[test]
    fn update_and_alarm_interrupts() {
        let mut log = IrqLog::default();
        let mut r = Rtc::new(TscRate::new(HZ), 0, 10 * 3600);
        // Alarm at 10:00:05, then at every hh:mm:30.
        wr(&mut r, 1, 0x05, 0, &mut log);
        wr(&mut r, 3, 0x00, 0, &mut log);
        wr(&mut r, 5, 0x10, 0, &mut log);
        wr(&mut r, 0x0B, 0x02 | B_AIE, 0, &mut log);
        assert_eq!(r.next_deadline(), Some(5 * HZ));
        r.advance(5 * HZ, &mut log);
        assert_eq!(log.rising_edges(8), 1);
        // IRQF, AF, UF, and PF (set at its rate even with PIE clear).
        assert_eq!(rd(&mut r, 0x0C, 5 * HZ, &mut log), 0xF0);
        wr(&mut r, 1, 0x30, 5 * HZ, &mut log);
        wr(&mut r, 3, 0xC0, 5 * HZ, &mut log);
        wr(&mut r, 5, 0xFF, 5 * HZ, &mut log);
        assert_eq!(r.next_deadline(), Some(30 * HZ));
        // An impossible alarm never fires.
        wr(&mut r, 5, 0x25, 5 * HZ, &mut log);
        assert_eq!(r.next_deadline(), None);
        // An alarm passed over in one long step still sets AF.
        wr(&mut r, 5, 0x11, 5 * HZ, &mut log);
        wr(&mut r, 0x0B, 0x02, 5 * HZ, &mut log);
        assert_eq!(rd(&mut r, 0x0C, 7200 * HZ, &mut log) & 0x20, 0x20);
        wr(&mut r, 0x0B, 0x02 | B_UIE, 7200 * HZ, &mut log);
        assert_eq!(r.next_deadline(), Some(7201 * HZ));
    }

    #[test]
    fn nvram_and_memory_size() {
        let mut log = IrqLog::default();
        let mut r = Rtc::new(TscRate::new(HZ), 0, 0);
        for i in 0x0Eu8..0x80 {
            if i != 0x32 {
                wr(&mut r, i | 0x80, i ^ 0x5A, 0, &mut log);
            }
        }
        assert!(r.nmi_disabled());
        for i in 0x0Eu8..0x80 {
            if i != 0x32 {
                assert_eq!(rd(&mut r, i, 0, &mut log), i ^ 0x5A);
            }
        }
        assert!(!r.nmi_disabled());
        assert_eq!(r.port_read(0x70, 0, &mut log), 0xFF);
        r.set_memory_size(6 << 30);
        let b = |r: &mut Rtc, i| rd(r, i, 0, &mut IrqLog::default());
        assert_eq!((b(&mut r, 0x15), b(&mut r, 0x16)), (0x80, 0x02));
        assert_eq!((b(&mut r, 0x17), b(&mut r, 0x18)), (0xFF, 0xFF));
        assert_eq!((b(&mut r, 0x30), b(&mut r, 0x31)), (0xFF, 0xFF));
        assert_eq!((b(&mut r, 0x34), b(&mut r, 0x35)), (0x00, 0xFF));
        assert_eq!((b(&mut r, 0x5B), b(&mut r, 0x5C), b(&mut r, 0x5D)), (0x00, 0x80, 0x00));
        r.set_memory_size(8 << 20);
        assert_eq!((b(&mut r, 0x17), b(&mut r, 0x18)), (0x00, 0x1C));
        assert_eq!((b(&mut r, 0x34), b(&mut r, 0x35)), (0, 0));
        let sum: u16 = (0x10..=0x2D).map(|i| u16::from(b(&mut r, i))).sum();
        assert_eq!(u16::from(b(&mut r, 0x2E)) << 8 | u16::from(b(&mut r, 0x2F)), sum);
    }

    proptest! {
        #[test]
        fn arbitrary_io_never_panics_and_irq_follows_the_flags(ops in proptest::collection::vec(
            (0u8..4, any::<u8>(), any::<u8>(), 0u64..3_000_000_000), 0..150), wall in any::<u64>()) {
            let mut log = IrqLog::default();
            let mut r = Rtc::new(TscRate::new(2_000_000_000), 3, wall);
            let mut now = 3u64;
            for (kind, a, b, dt) in ops {
                now += dt;
                match kind {
                    0 => wr(&mut r, a, b, now, &mut log),
                    1 => { rd(&mut r, a, now, &mut log); }
                    2 => r.advance(now, &mut log),
                    _ => {
                        if let Some(d) = r.next_deadline() {
                            prop_assert!(d > r.flags_through);
                            now = now.max(d);
                            r.advance(now, &mut log);
                        }
                    }
                }
                let level = log.events.iter().rev().find(|e| e.0 == 8).is_some_and(|e| e.1);
                prop_assert_eq!(level, r.irq_line);
                prop_assert_eq!(r.irq_line, r.flags & r.reg_b & FLAGS != 0);
                prop_assert_eq!(rd(&mut r, 0x0D, now, &mut log), 0x80);
                if r.reg_b & (B_SET | B_BINARY) == 0 {
                    let s = rd(&mut r, 0, now, &mut log);
                    prop_assert!(s & 0x0F <= 9 && s < 0x60);
                }
            }
        }
    }
}
