//! The ACPI fixed-hardware ports: PM1a event and control blocks and the PM timer.
//!
//! The FADT names these ports; a guest uses them to power off (S5), to read
//! a fixed-rate clock (the PM timer) and to see fixed events such as the
//! power button. There is no SMI command port: the machine is in ACPI mode
//! from boot, so SCI_EN always reads 1.
//!
//! Every port is decoded a byte at a time, so accesses of any width at any
//! offset inside a block see the same bytes (a 16-bit read at `PM_TMR + 1`
//! is bytes 1 and 2 of the timer value at `now`).

use crate::time::TscRate;

/// PM1a event block: status word at +0, enable word at +2.
pub const PM1A_EVT: u16 = 0x600;
/// PM1a control block (2 bytes).
pub const PM1A_CNT: u16 = 0x604;
/// PM timer (4 bytes, read-only).
pub const PM_TMR: u16 = 0x608;
/// The SLP_TYP our DSDT's `\_S5` package names; the only sleep state we
/// implement.
pub const S5_SLP_TYP: u8 = 5;
/// QEMU's DSDT gives S5 as SLP_TYP 0; guests written against it (and
/// kvm-unit-tests) hard-code that, so 0 is taken as S5 too. BMonitor's own
/// DSDT offers no other sleep state, so no announced state is lost.
pub const QEMU_S5_SLP_TYP: u8 = 0;
/// The PM timer's fixed frequency (ACPI spec, 3.579545 MHz).
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// PM1 status: the timer's MSB (bit 31, TMR_VAL_EXT) changed.
pub const TMR_STS: u16 = 1 << 0;
/// PM1 status: the power button was pressed.
pub const PWRBTN_STS: u16 = 1 << 8;
/// PM1 status: woken (set when the guest enters a sleep state; we never do).
pub const WAK_STS: u16 = 1 << 15;

/// Status bits this model can set (all are write-1-to-clear).
const STS_IMPLEMENTED: u16 = TMR_STS | PWRBTN_STS | WAK_STS;
/// Enable bits that are stored: TMR_EN, GBL_EN (5), PWRBTN_EN, SLPBTN_EN (9),
/// RTC_EN (10).
const EN_WRITABLE: u16 = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10);
/// PM1_CNT bits that read back: SCI_EN, BM_RLD, SLP_TYP. GBL_RLS (2) and
/// SLP_EN (13) are write-only.
const CNT_STORED: u16 = 0b0001_1100_0000_0011;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;

/// What a write asks of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmEffect {
    /// Nothing beyond the register change.
    None,
    /// The guest entered S5: power the VM off.
    PowerOff,
}

/// The PM1a blocks and PM timer of one VM.
#[derive(Clone, Debug)]
pub struct AcpiPm {
    rate: TscRate,
    /// TSC tick at which the timer read 0.
    epoch: u64,
    /// Status bits other than TMR_STS (which is computed from the timer).
    sts: u16,
    en: u16,
    cnt: u16,
    /// The timer's 64-bit tick count when TMR_STS was last cleared: the
    /// bit is set when bit 31 of the count has changed since.
    tmr_sts_ref: u64,
}

impl AcpiPm {
    /// The blocks at power-on; the timer reads 0 at `now`.
    pub fn new(rate: TscRate, now: u64) -> AcpiPm {
        AcpiPm { rate, epoch: now, sts: 0, en: 0, cnt: 0, tmr_sts_ref: 0 }
    }

    /// PM timer ticks since power-on (64 bits; the register shows 32).
    fn ticks(&self, now: u64) -> u64 {
        self.rate.to_device(now.saturating_sub(self.epoch), PM_TIMER_HZ)
    }

    fn status(&self, now: u64) -> u16 {
        let tmr = if self.ticks(now) >> 31 != self.tmr_sts_ref >> 31 { TMR_STS } else { 0 };
        self.sts | tmr
    }

    /// The PM timer's value at `now` (TMR_VAL_EXT: 32 bits, wrapping).
    pub fn timer(&self, now: u64) -> u32 {
        // Truncation is the register's wrap-around.
        (self.ticks(now) & 0xFFFF_FFFF) as u32
    }

    fn read_byte(&self, port: u16, now: u64) -> u8 {
        let word_byte = |w: u16, hi: bool| if hi { (w >> 8) as u8 } else { (w & 0xFF) as u8 };
        match port.wrapping_sub(PM1A_EVT) {
            0 | 1 => word_byte(self.status(now), port & 1 == 1),
            2 | 3 => word_byte(self.en, port & 1 == 1),
            4 | 5 => word_byte((self.cnt & CNT_STORED) | SCI_EN, port & 1 == 1),
            o @ 8..=11 => {
                let shift = u32::from(o - 8) * 8;
                ((self.timer(now) >> shift) & 0xFF) as u8
            }
            _ => 0xFF,
        }
    }

    /// Guest read of `size` bytes (1, 2 or 4; others are taken as 4, 0
    /// reads nothing) at `port`, little-endian. Bytes outside the three
    /// blocks read 0xFF.
    pub fn read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        let mut v = 0u32;
        for i in 0..size.min(4) {
            let b = self.read_byte(port.wrapping_add(u16::from(i)), now);
            v |= u32::from(b) << (u32::from(i) * 8);
        }
        v
    }

    /// Guest write of `size` bytes at `port`. Status bits are
    /// write-1-to-clear; the timer is read-only. Setting SLP_EN with
    /// SLP_TYP = [`S5_SLP_TYP`] powers off; other sleep types (S1-S4) are
    /// not implemented and the write only stores SLP_TYP.
    pub fn write(&mut self, port: u16, size: u8, value: u32, now: u64) -> PmEffect {
        let mut effect = PmEffect::None;
        for i in 0..size.min(4) {
            let byte = ((value >> (u32::from(i) * 8)) & 0xFF) as u8;
            if self.write_byte(port.wrapping_add(u16::from(i)), byte, now) == PmEffect::PowerOff {
                effect = PmEffect::PowerOff;
            }
        }
        effect
    }

    fn write_byte(&mut self, port: u16, byte: u8, now: u64) -> PmEffect {
        let b = u16::from(byte);
        match port.wrapping_sub(PM1A_EVT) {
            o @ (0 | 1) => {
                let bits = if o == 1 { b << 8 } else { b };
                if bits & TMR_STS != 0 {
                    self.tmr_sts_ref = self.ticks(now);
                }
                self.sts &= !(bits & STS_IMPLEMENTED);
            }
            2 => self.en = (self.en & 0xFF00) | (b & EN_WRITABLE),
            3 => self.en = (self.en & 0x00FF) | ((b << 8) & EN_WRITABLE),
            4 => self.cnt = (self.cnt & 0xFF00) | (b & CNT_STORED),
            5 => {
                let hi = b << 8;
                self.cnt = (self.cnt & 0x00FF) | (hi & CNT_STORED);
                let slp_typ = ((hi >> 10) & 7) as u8;
                if hi & SLP_EN != 0 && (slp_typ == S5_SLP_TYP || slp_typ == QEMU_S5_SLP_TYP) {
                    return PmEffect::PowerOff;
                }
            }
            _ => {}
        }
        PmEffect::None
    }

    /// The host asks the guest to shut down (an ACPI power-button press).
    pub fn press_power_button(&mut self) {
        self.sts |= PWRBTN_STS;
    }

    /// The SCI line (GSI 9 by our FADT): some enabled status bit is set.
    /// It is level-triggered; the caller samples it after accesses, after
    /// [`AcpiPm::press_power_button`] and at [`AcpiPm::next_sci_deadline`].
    pub fn sci_level(&self, now: u64) -> bool {
        self.status(now) & self.en & (TMR_STS | PWRBTN_STS) != 0
    }

    /// When the timer's MSB next changes, if TMR_EN is set and TMR_STS is
    /// clear (so the SCI could rise then); None otherwise.
    pub fn next_sci_deadline(&self, now: u64) -> Option<u64> {
        if self.en & TMR_STS == 0 || self.status(now) & TMR_STS != 0 {
            return None;
        }
        let next = (self.tmr_sts_ref >> 31).checked_add(1)?.checked_mul(1 << 31)?;
        self.epoch.checked_add(self.rate.from_device(next, PM_TIMER_HZ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HZ: u64 = 2_000_000_000;

    fn pm() -> AcpiPm {
        AcpiPm::new(TscRate::new(HZ), 1000)
    }

    #[test]
    fn timer_runs_at_3_58_mhz_and_wraps_at_32_bits() {
        let mut p = pm();
        assert_eq!(p.read(PM_TMR, 4, 1000), 0);
        assert_eq!(p.read(PM_TMR, 4, 1000 + HZ), 3_579_545);
        let wrap = 1000 + TscRate::new(HZ).from_device(1 << 32, PM_TIMER_HZ);
        assert!(p.read(PM_TMR, 4, wrap) < 4);
    }

    #[test]
    fn timer_reads_of_any_width_agree() {
        let mut p = pm();
        let now = 1000 + 123_456_789_012;
        let full = p.read(PM_TMR, 4, now);
        assert_eq!(p.read(PM_TMR, 2, now), full & 0xFFFF);
        assert_eq!(p.read(PM_TMR + 2, 2, now), full >> 16);
        assert_eq!(p.read(PM_TMR + 1, 2, now), (full >> 8) & 0xFFFF);
        for i in 0..4u16 {
            assert_eq!(p.read(PM_TMR + i, 1, now), (full >> (8 * i)) & 0xFF);
        }
        // Writes to the timer change nothing.
        assert_eq!(p.write(PM_TMR, 4, 0, now), PmEffect::None);
        assert_eq!(p.read(PM_TMR, 4, now), full);
    }

    #[test]
    fn sci_en_reads_one_and_s5_powers_off() {
        let mut p = pm();
        assert_eq!(p.read(PM1A_CNT, 2, 0) & 1, 1);
        p.write(PM1A_CNT, 2, 0, 0);
        assert_eq!(p.read(PM1A_CNT, 2, 0) & 1, 1);
        // S3 is ignored (stored SLP_TYP, SLP_EN reads 0).
        assert_eq!(p.write(PM1A_CNT, 2, (1 << 13) | (3 << 10), 0), PmEffect::None);
        assert_eq!(p.read(PM1A_CNT, 2, 0), (3 << 10) | 1);
        // SLP_TYP without SLP_EN: nothing.
        assert_eq!(p.write(PM1A_CNT, 2, 5 << 10, 0), PmEffect::None);
        assert_eq!(p.write(PM1A_CNT, 2, (1 << 13) | (5 << 10), 0), PmEffect::PowerOff);
        // A byte write of the high half works too.
        assert_eq!(p.write(PM1A_CNT + 1, 1, 0x20 | (5 << 2), 0), PmEffect::PowerOff);
    }

    #[test]
    fn status_bits_are_write_one_to_clear_and_drive_sci() {
        let mut p = pm();
        p.press_power_button();
        assert_eq!(p.read(PM1A_EVT, 2, 0), u32::from(PWRBTN_STS));
        assert!(!p.sci_level(0));
        p.write(PM1A_EVT + 2, 2, u32::from(PWRBTN_STS), 0);
        assert_eq!(p.read(PM1A_EVT + 2, 2, 0), u32::from(PWRBTN_STS));
        assert!(p.sci_level(0));
        // Writing 0 clears nothing; writing the bit clears it.
        p.write(PM1A_EVT, 2, 0, 0);
        assert!(p.sci_level(0));
        p.write(PM1A_EVT, 4, u32::from(PWRBTN_STS) | (u32::from(PWRBTN_STS) << 16), 0);
        assert!(!p.sci_level(0));
        assert_eq!(p.read(PM1A_EVT, 4, 0), u32::from(PWRBTN_STS) << 16);
    }

    #[test]
    fn timer_status_sets_when_the_msb_flips() {
        let mut p = pm();
        p.write(PM1A_EVT + 2, 2, 1, 1000);
        let dl = p.next_sci_deadline(1000).unwrap();
        assert_eq!(p.read(PM1A_EVT, 2, dl - 1) & 1, 0);
        assert_eq!(p.read(PM1A_EVT, 2, dl) & 1, 1);
        assert!(p.sci_level(dl));
        assert_eq!(p.next_sci_deadline(dl), None);
        p.write(PM1A_EVT, 2, 1, dl);
        assert!(!p.sci_level(dl));
        assert!(p.next_sci_deadline(dl).unwrap() > dl);
    }

    proptest! {
        #[test]
        fn arbitrary_accesses_never_panic(ops in proptest::collection::vec(
            (any::<bool>(), 0x5F0u16..0x620, 0u8..6, any::<u32>(), any::<u64>()), 0..64)) {
            let mut p = AcpiPm::new(TscRate::new(3_000_000_000), 5);
            for (w, port, size, value, now) in ops {
                if w {
                    let e = p.write(port, size, value, now);
                    if e == PmEffect::PowerOff {
                        prop_assert!(port <= PM1A_CNT + 1);
                    }
                } else {
                    let v = p.read(port, size, now);
                    if size == 1 { prop_assert!(v <= 0xFF); }
                }
                prop_assert_eq!(p.read(PM1A_CNT, 1, now) & 1, 1);
                let _ = p.next_sci_deadline(now);
                let _ = p.sci_level(now);
            }
        }
    }
}
