//! `apic-storm`: programs the local APIC timer periodic with initial count
//! 1 (the shortest period there is; BMonitor clamps periodic timers to
//! 100 µs), enables interrupts and counts timer interrupts (EOI each) for
//! ~300 ms of TSC time. Checks the rate is at most ~10 000/s (the clamp)
//! and at least 100/s (the timer works), and that stopping the timer stops
//! the interrupts.
#![no_std]
#![no_main]

use test_guests::apic::{self, reg};
use test_guests::{cpu, idt, println, BootInfo};

test_guests::entry!(main);

const TIMER_VECTOR: u8 = 0x40;
const SPURIOUS: u8 = 0xFF;
const RUN_MS: u64 = 300;
/// 10 000/s from the 100 µs clamp, plus one period of slack per window.
const MAX_RATE: u64 = 10_500;
const MIN_RATE: u64 = 100;

fn on_interrupt(vector: u8) {
    if vector >= 32 && vector != SPURIOUS {
        apic::eoi();
    }
}

fn main(_info: &BootInfo) -> u32 {
    println!("apic-storm start");
    apic::mask_pic();
    idt::install_all();
    idt::set_hook(on_interrupt);
    apic::enable(SPURIOUS);
    let per_ms = apic::tsc_per_ms();
    println!("apic-storm: tsc {} per ms, apic timer {} Hz", per_ms, apic::timer_hz());

    apic::timer_periodic(TIMER_VECTOR, 1);
    let start = cpu::rdtsc();
    let end = start.saturating_add(RUN_MS * per_ms);
    apic::sti();
    let mut spins = 0u64;
    while cpu::rdtsc() < end {
        spins += 1;
        core::hint::spin_loop();
    }
    apic::cli();
    let ticks = cpu::rdtsc().saturating_sub(start);
    let count = idt::count(TIMER_VECTOR);
    let us = (ticks.saturating_mul(1000) / per_ms).max(1);
    let rate = count.saturating_mul(1_000_000) / us;
    println!("apic-storm: {} timer interrupts in {} us ({}/s), {} loop turns", count, us, rate, spins);

    apic::timer_stop();
    apic::sti();
    let after_stop = idt::count(TIMER_VECTOR);
    let _ = apic::wait_until(apic::tsc_after_ms(20), || false);
    apic::cli();
    let late = idt::count(TIMER_VECTOR) - after_stop;
    let others = idt::total() - idt::count(TIMER_VECTOR);
    println!("apic-storm: {} after stop, {} other vectors, isr {:?}", late, others, apic::highest_in_service());

    let mut ok = true;
    if rate > MAX_RATE {
        println!("FAIL: rate {}/s above the 100 us clamp ({}/s)", rate, MAX_RATE);
        ok = false;
    }
    if rate < MIN_RATE {
        println!("FAIL: rate {}/s below {}/s: the timer hardly fires", rate, MIN_RATE);
        ok = false;
    }
    // One interrupt may have been requested before the stop took effect.
    if late > 1 {
        println!("FAIL: {} interrupts after the timer was stopped", late);
        ok = false;
    }
    if others != 0 {
        println!("FAIL: {} interrupts on other vectors", others);
        ok = false;
    }
    if apic::read(reg::INIT_COUNT) != 0 {
        println!("FAIL: initial count not 0 after stop");
        ok = false;
    }
    if !ok {
        return 1;
    }
    println!("apic-storm ok");
    0
}
