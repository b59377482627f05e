//! Time: the TSC, calibrated once against the PIT (and the APIC timer with
//! it), so CPU-time budgets and time slices are in real units.

use core::sync::atomic::{AtomicU64, Ordering};
use x86::io::{inb, outb};

static TSC_PER_MS: AtomicU64 = AtomicU64::new(1_000_000);
static APIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per millisecond, as calibrated.
pub fn tsc_per_ms() -> u64 {
    TSC_PER_MS.load(Ordering::Relaxed)
}

/// APIC timer ticks (divide 16) per millisecond, as calibrated.
pub fn apic_ticks_per_ms() -> u64 {
    APIC_TICKS_PER_MS.load(Ordering::Relaxed)
}

/// Nanoseconds since boot (TSC reset) at TSC value `tsc`.
pub fn tsc_to_ns(tsc: u64) -> u64 {
    (u128::from(tsc) * 1_000_000 / u128::from(tsc_per_ms().max(1))) as u64
}

/// Converts TSC ticks to milliseconds.
pub fn tsc_to_ms(ticks: u64) -> u64 {
    ticks / tsc_per_ms().max(1)
}

/// Measures the TSC and APIC timer over 10 ms of PIT channel 2.
pub fn calibrate() {
    const PIT_HZ: u64 = 1_193_182;
    const WINDOW_MS: u64 = 10;
    let count = (PIT_HZ * WINDOW_MS / 1000) as u16;
    super::apic::start_calibration();
    // SAFETY: PIT channel 2 and the port-0x61 gate are the platform timer,
    // used by nothing else at boot.
    let (t0, t1, done) = unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) | 0x01);
        outb(0x43, 0xB0);
        outb(0x42, count as u8);
        outb(0x42, (count >> 8) as u8);
        let t0 = rdtsc();
        let mut spins: u64 = 0;
        let mut done = false;
        while spins < 200_000_000 {
            if inb(0x61) & 0x20 != 0 {
                done = true;
                break;
            }
            spins += 1;
        }
        (t0, rdtsc(), done)
    };
    let apic = u64::from(super::apic::calibration_elapsed());
    if done && t1 > t0 {
        TSC_PER_MS.store(((t1 - t0) / WINDOW_MS).max(1), Ordering::Relaxed);
        APIC_TICKS_PER_MS.store((apic / WINDOW_MS).max(1), Ordering::Relaxed);
    } else {
        crate::log!("time: PIT calibration timed out; assuming 1 GHz TSC");
        APIC_TICKS_PER_MS.store(10_000, Ordering::Relaxed);
    }
}

/// Busy-waits `us` microseconds (TSC-based; `calibrate` must have run).
pub fn delay_us(us: u64) {
    let end = rdtsc() + us.saturating_mul(tsc_per_ms()) / 1000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}
