//! `never-eoi`: takes one local APIC timer interrupt (vector 0x40) and
//! never EOIs it, then keeps running with IF=1 for ~200 ms of TSC time,
//! alternating work and `sti; hlt`. With 0x40 in service, everything of
//! its priority class or below is blocked (a self-IPI at 0x38 and one at
//! 0x45 stay in IRR), so HLT may return only for a higher class: a
//! TSC-deadline timer at vector 0xE0, re-armed ~1 ms ahead before each
//! HLT, wakes it (and is EOI'd, which retires 0xE0, not 0x40). Checks
//! every HLT returned through a 0xE0 interrupt (none woke early without
//! one), the blocked vectors were never delivered and 0x40 is still in
//! service at the end. Ends by itself: the loop is bounded by TSC time and
//! each HLT by the armed deadline.
#![no_std]
#![no_main]

use test_guests::apic::{self, reg};
use test_guests::{cpu, idt, println, BootInfo};

test_guests::entry!(main);

const HELD: u8 = 0x40;
const WAKE: u8 = 0xE0;
const SPURIOUS: u8 = 0xFF;
const RUN_MS: u64 = 200;

fn on_interrupt(vector: u8) {
    if vector != HELD && vector != SPURIOUS {
        apic::eoi();
    }
}

fn fail(what: core::fmt::Arguments<'_>) -> u32 {
    println!("FAIL: {}", what);
    1
}

fn main(_info: &BootInfo) -> u32 {
    println!("never-eoi start");
    apic::mask_pic();
    idt::install_all();
    idt::set_hook(on_interrupt);
    apic::enable(SPURIOUS);
    if !apic::tsc_deadline_supported() {
        return fail(format_args!("no TSC-deadline timer in CPUID"));
    }
    let per_ms = apic::tsc_per_ms();

    apic::timer_one_shot(HELD, u32::try_from(apic::timer_hz() / 1000).unwrap_or(u32::MAX).max(1));
    apic::sti();
    let took = apic::wait_until(apic::tsc_after_ms(200), || idt::count(HELD) >= 1);
    apic::cli();
    if !took {
        return fail(format_args!("the timer interrupt at {:#x} never came", HELD));
    }
    println!(
        "never-eoi: took {:#x}, not EOI'd: isr {:?}, ppr {:#x}",
        HELD,
        apic::highest_in_service(),
        apic::read(reg::PPR)
    );
    apic::self_ipi(0x38);
    apic::self_ipi(0x45);

    apic::timer_deadline_mode(WAKE);
    let start = cpu::rdtsc();
    let end = start.saturating_add(RUN_MS * per_ms);
    let (mut halts, mut early, mut work) = (0u64, 0u64, 0u64);
    let mut slept = 0u64;
    let mut longest = 0u64;
    apic::sti();
    while cpu::rdtsc() < end {
        // Some work with interrupts on.
        for i in 0..2000u64 {
            work = core::hint::black_box(work.wrapping_add(i));
        }
        // Arm with interrupts off, so the deadline cannot fire (after a
        // long deschedule) before the HLT and leave nothing to wake it.
        apic::cli();
        let wakes = idt::count(WAKE);
        let t0 = cpu::rdtsc();
        apic::set_deadline(t0.saturating_add(per_ms));
        apic::sti_hlt();
        let dt = cpu::rdtsc().saturating_sub(t0);
        slept += dt;
        longest = longest.max(dt);
        halts += 1;
        if idt::count(WAKE) == wakes {
            early += 1;
        }
        if halts.is_multiple_of(50) {
            println!("never-eoi: {} halts, {} ms", halts, apic::ms_since(start));
        }
    }
    apic::cli();
    apic::set_deadline(0);
    let ms = apic::ms_since(start);
    println!(
        "never-eoi: {} halts in {} ms ({} woken by {:#x}, {} without it), slept {} ms, longest {} us, 0x38/0x45 delivered {}/{}",
        halts,
        ms,
        idt::count(WAKE),
        WAKE,
        early,
        slept / per_ms,
        longest * 1000 / per_ms,
        idt::count(0x38),
        idt::count(0x45)
    );
    if halts == 0 {
        return fail(format_args!("no HLT completed"));
    }
    if early != 0 {
        return fail(format_args!("{} HLTs returned without a deliverable interrupt", early));
    }
    if idt::count(0x38) + idt::count(0x45) != 0 {
        return fail(format_args!("blocked vectors delivered while {:#x} was in service", HELD));
    }
    if !apic::in_service(HELD) || !apic::requested(0x38) || !apic::requested(0x45) {
        return fail(format_args!(
            "state lost: isr {:?}, irr 0x38 {}, 0x45 {}",
            apic::highest_in_service(),
            apic::requested(0x38),
            apic::requested(0x45)
        ));
    }
    let strays = idt::total() - idt::count(HELD) - idt::count(WAKE);
    if strays != 0 {
        return fail(format_args!("{} interrupts on other vectors", strays));
    }
    println!("never-eoi ok");
    0
}
