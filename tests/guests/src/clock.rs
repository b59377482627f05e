//! Monotonic time for guests that poll with timeouts.
//!
//! Under BMonitor: the `clock` hypercall (nanoseconds since node boot).
//! Elsewhere (plain QEMU smoke tests): the TSC, its rate measured once
//! against PIT channel 0 (10 ms); if no PIT answers, an assumed 1 GHz.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{cpu, hypercall, port};

/// TSC rate assumed when it cannot be measured.
pub const ASSUMED_TSC_HZ: u64 = 1_000_000_000;

/// PIT input clock (Hz).
const PIT_HZ: u64 = 1_193_182;
/// PIT ticks of the calibration gate (10 ms).
const PIT_GATE_TICKS: u64 = 11_932;

// 0 = not yet known.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Where [`now_ns`] gets its time from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// BMonitor's `clock` hypercall.
    Hypercall,
    /// The TSC at the given rate (Hz), measured against the PIT.
    TscMeasured(u64),
    /// The TSC at [`ASSUMED_TSC_HZ`].
    TscAssumed,
}

/// The time source in use (measures the TSC on first use without BMonitor).
pub fn source() -> Source {
    if hypercall::present() && hypercall::clock().is_ok() {
        return Source::Hypercall;
    }
    match tsc_hz() {
        ASSUMED_TSC_HZ => Source::TscAssumed,
        hz => Source::TscMeasured(hz),
    }
}

// Under BMonitor: one clock sample, then RDTSC extrapolation (no exits).
static BASE_NS: AtomicU64 = AtomicU64::new(0);
static BASE_TSC: AtomicU64 = AtomicU64::new(0);
static BASE_TSC_PER_MS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds since some fixed point (node boot under BMonitor).
pub fn now_ns() -> u64 {
    if BASE_TSC_PER_MS.load(Ordering::Relaxed) == 0 && hypercall::present() {
        if let Ok(c) = hypercall::clock_sample() {
            if c.tsc_per_ms > 0 {
                BASE_NS.store(c.ns, Ordering::Relaxed);
                BASE_TSC.store(c.tsc, Ordering::Relaxed);
                BASE_TSC_PER_MS.store(c.tsc_per_ms, Ordering::Relaxed);
            }
        }
    }
    let per_ms = BASE_TSC_PER_MS.load(Ordering::Relaxed);
    if per_ms != 0 {
        let dt = cpu::rdtsc().saturating_sub(BASE_TSC.load(Ordering::Relaxed));
        let ns = u128::from(dt) * 1_000_000 / u128::from(per_ms);
        return BASE_NS.load(Ordering::Relaxed).saturating_add(u64::try_from(ns).unwrap_or(u64::MAX));
    }
    let hz = tsc_hz();
    let ns = u128::from(cpu::rdtsc()) * 1_000_000_000 / u128::from(hz);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Milliseconds since the same point as [`now_ns`].
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// The TSC rate used without BMonitor (measured once).
pub fn tsc_hz() -> u64 {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => {
            let hz = measure_tsc_hz().unwrap_or(ASSUMED_TSC_HZ);
            TSC_HZ.store(hz, Ordering::Relaxed);
            hz
        }
        hz => hz,
    }
}

/// Counts TSC ticks while PIT channel 0 (read back with latch commands,
/// so no port 0x61 is needed: QEMU's `microvm` has none) counts 10 ms.
/// `None` if the counter does not move (no PIT). Channel 0 drives IRQ 0,
/// which stays masked: the guests run with interrupts off.
fn measure_tsc_hz() -> Option<u64> {
    // Channel 0, lobyte/hibyte, mode 2 (rate generator), binary; reload
    // value 0 = 65536.
    port::outb(0x43, 0b0011_0100);
    port::outb(0x40, 0);
    port::outb(0x40, 0);
    let read = || {
        port::outb(0x43, 0b0000_0000); // latch channel 0
        let lo = port::inb(0x40);
        let hi = port::inb(0x40);
        u16::from_le_bytes([lo, hi])
    };
    let mut last = read();
    let start = cpu::rdtsc();
    let mut elapsed = 0u64;
    let mut turns = 0u64;
    while elapsed < PIT_GATE_TICKS {
        let now = read();
        // Counting down; u16 wrap-around matches the 65536 reload.
        elapsed += u64::from(last.wrapping_sub(now));
        last = now;
        turns += 1;
        if (elapsed == 0 && turns > 100_000) || turns > 10_000_000 {
            return None;
        }
    }
    let ticks = cpu::rdtsc().wrapping_sub(start);
    let hz = u128::from(ticks) * u128::from(PIT_HZ) / u128::from(elapsed);
    // Plausible TSC rates only (10 MHz .. 100 GHz).
    u64::try_from(hz).ok().filter(|hz| (10_000_000..100_000_000_000).contains(hz))
}

/// Gives the CPU away when a poll loop has nothing to do: the `yield`
/// hypercall under BMonitor, a PAUSE elsewhere.
pub fn idle() {
    if hypercall::present() {
        let _ = hypercall::yield_now();
    } else {
        core::hint::spin_loop();
    }
}
