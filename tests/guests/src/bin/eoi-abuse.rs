//! `eoi-abuse`: abuses the local APIC's EOI and priority logic.
//!
//! 1. Writes EOI 5000 times with nothing in service (interrupts off, then
//!    on), then arms a one-shot timer and checks it fires exactly once.
//! 2. Takes a timer interrupt (vector 0x80) and never EOIs it. With 0x80
//!    in service: self-IPIs at 0x70 (lower class) and 0x85 (same class)
//!    and a one-shot timer at 0x60 must be held in IRR; a self-IPI at 0x90
//!    and a timer at 0xC0 (higher classes) must be delivered. TPR 0xA0 then
//!    holds 0x95 and passes 0xB5. Progress lines show the vCPU keeps
//!    running with IF=1 while interrupts are held.
//! 3. TPR back to 0 lets 0x95 in; one EOI retires 0x80, after which the
//!    held 0x85, 0x70 and 0x60 arrive once each, highest first.
//!
//! Every wait is bounded by TSC time.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use test_guests::apic::{self, reg};
use test_guests::{idt, println, BootInfo};

test_guests::entry!(main);

const SPURIOUS: u8 = 0xFF;
const HELD: u8 = 0x80;

/// Vectors whose handler does not EOI (bit per vector, in 4 words).
static NO_EOI: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Delivery order, for phase 3.
static ORDER: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
static ORDER_LEN: AtomicUsize = AtomicUsize::new(0);

fn no_eoi(vector: u8) -> bool {
    NO_EOI.get(usize::from(vector >> 6)).is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (vector & 63)) != 0)
}

fn set_no_eoi(vector: u8) {
    if let Some(w) = NO_EOI.get(usize::from(vector >> 6)) {
        w.fetch_or(1 << (vector & 63), Ordering::SeqCst);
    }
}

fn on_interrupt(vector: u8) {
    let i = ORDER_LEN.fetch_add(1, Ordering::SeqCst);
    if let Some(slot) = ORDER.get(i) {
        slot.store(u64::from(vector), Ordering::SeqCst);
    }
    if vector >= 32 && vector != SPURIOUS && !no_eoi(vector) {
        apic::eoi();
    }
}

/// Interrupts on for `ms` of TSC time, then off again.
fn run_ms(ms: u64) {
    apic::sti();
    let _ = apic::wait_until(apic::tsc_after_ms(ms), || false);
    apic::cli();
}

/// Interrupts on until `vector` was taken `n` times (at most `ms`).
fn wait_count(vector: u8, n: u64, ms: u64) -> bool {
    apic::sti();
    let ok = apic::wait_until(apic::tsc_after_ms(ms), || idt::count(vector) >= n);
    apic::cli();
    ok
}

struct Checker {
    failed: u32,
}

impl Checker {
    fn check(&mut self, ok: bool, what: core::fmt::Arguments<'_>) {
        if ok {
            println!("check {}: ok", what);
        } else {
            println!("FAIL: {}", what);
            self.failed += 1;
        }
    }
}

fn one_ms() -> u32 {
    u32::try_from(apic::timer_hz() / 1000).unwrap_or(u32::MAX).max(1)
}

fn main(_info: &BootInfo) -> u32 {
    println!("eoi-abuse start");
    apic::mask_pic();
    idt::install_all();
    idt::set_hook(on_interrupt);
    apic::enable(SPURIOUS);
    let mut c = Checker { failed: 0 };

    // --- 1: EOIs with nothing in service -------------------------------
    for _ in 0..2500 {
        apic::eoi();
    }
    apic::sti();
    for _ in 0..2500 {
        apic::eoi();
    }
    apic::cli();
    c.check(
        apic::highest_in_service().is_none() && apic::read(reg::PPR) == 0,
        format_args!("5000 stray EOIs leave ISR empty, PPR {}", apic::read(reg::PPR)),
    );
    apic::timer_one_shot(0x50, one_ms());
    let fired = wait_count(0x50, 1, 200);
    run_ms(20);
    c.check(
        fired && idt::count(0x50) == 1,
        format_args!("one-shot after stray EOIs fired {} time(s)", idt::count(0x50)),
    );
    for _ in 0..1000 {
        apic::eoi();
    }
    run_ms(5);
    c.check(idt::count(0x50) == 1, format_args!("more stray EOIs do not re-fire the timer"));

    // --- 2: an interrupt never EOI'd -----------------------------------
    set_no_eoi(HELD);
    apic::timer_one_shot(HELD, one_ms());
    let took = wait_count(HELD, 1, 200);
    c.check(
        took && apic::in_service(HELD) && apic::read(reg::PPR) == 0x80,
        format_args!("vector {:#x} in service without EOI, PPR {:#x}", HELD, apic::read(reg::PPR)),
    );
    apic::self_ipi(0x70);
    apic::self_ipi(0x85);
    run_ms(20);
    c.check(
        idt::count(0x70) == 0 && idt::count(0x85) == 0 && apic::requested(0x70) && apic::requested(0x85),
        format_args!("0x70 and 0x85 held in IRR while 0x80 is in service"),
    );
    apic::self_ipi(0x90);
    let ok = wait_count(0x90, 1, 50);
    c.check(ok && idt::count(0x90) == 1, format_args!("0x90 (higher class) delivered over 0x80"));
    apic::timer_one_shot(0x60, one_ms());
    run_ms(20);
    c.check(
        idt::count(0x60) == 0 && apic::requested(0x60),
        format_args!("timer at 0x60 held in IRR while 0x80 is in service"),
    );
    apic::timer_one_shot(0xC0, one_ms());
    let ok = wait_count(0xC0, 1, 50);
    c.check(ok && idt::count(0xC0) == 1, format_args!("timer at 0xC0 delivered over 0x80"));
    apic::write(reg::TPR, 0xA0);
    apic::self_ipi(0x95);
    apic::self_ipi(0xB5);
    let ok = wait_count(0xB5, 1, 50);
    run_ms(10);
    c.check(
        ok && idt::count(0xB5) == 1 && idt::count(0x95) == 0 && apic::requested(0x95),
        format_args!("TPR 0xA0 holds 0x95, passes 0xB5 (PPR {:#x})", apic::read(reg::PPR)),
    );
    // Still running, interrupts on, with four vectors held.
    let start = test_guests::cpu::rdtsc();
    let mut turns = 0u64;
    for step in 1..=5 {
        apic::sti();
        let end = apic::tsc_after_ms(20);
        while test_guests::cpu::rdtsc() < end {
            turns += 1;
        }
        apic::cli();
        println!(
            "eoi-abuse: progress {}/5 ({} turns, {} ms, isr {:?})",
            step,
            turns,
            apic::ms_since(start),
            apic::highest_in_service()
        );
    }
    c.check(
        idt::count(0x70) + idt::count(0x85) + idt::count(0x60) + idt::count(0x95) == 0,
        format_args!("nothing held was delivered while running"),
    );

    // --- 3: release ------------------------------------------------------
    let mark = ORDER_LEN.load(Ordering::SeqCst);
    apic::write(reg::TPR, 0);
    let ok = wait_count(0x95, 1, 50);
    c.check(ok && idt::count(0x85) == 0, format_args!("TPR 0 lets 0x95 in, 0x85 still held"));
    apic::eoi(); // retires 0x80, the only vector still in service
    let ok = wait_count(0x60, 1, 50);
    run_ms(10);
    let order: [u64; 4] = core::array::from_fn(|i| ORDER.get(mark + i).map_or(0, |s| s.load(Ordering::SeqCst)));
    c.check(
        ok && order == [0x95, 0x85, 0x70, 0x60],
        format_args!("after the EOI the held vectors arrive highest first: {:x?}", order),
    );
    for v in [0x60u8, 0x70, 0x85, 0x95] {
        c.check(idt::count(v) == 1, format_args!("{:#x} delivered once ({})", v, idt::count(v)));
    }
    c.check(
        apic::highest_in_service().is_none() && apic::read(reg::PPR) == 0,
        format_args!("ISR empty at the end, PPR {}", apic::read(reg::PPR)),
    );
    let expected = [0x50u8, 0x60, 0x70, 0x80, 0x85, 0x90, 0x95, 0xB5, 0xC0];
    let strays = idt::total() - expected.iter().map(|&v| idt::count(v)).sum::<u64>();
    c.check(strays == 0, format_args!("no other vectors ({} strays)", strays));
    apic::timer_stop();
    if c.failed != 0 {
        println!("eoi-abuse: {} check(s) failed", c.failed);
        return 1;
    }
    println!("eoi-abuse ok");
    0
}
