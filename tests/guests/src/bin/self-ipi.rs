//! `self-ipi`: sends itself fixed IPIs (vector 0x40) in a loop for ~200 ms
//! through the xAPIC ICR (shorthand self), with interrupts on, counting
//! sends and deliveries; a few malformed ICR writes go in between (reserved
//! delivery modes, vectors below 16, all-including-self, own physical ID).
//! Then, if CPUID offers x2APIC, switches to x2APIC mode and does the same
//! ~200 ms through the SELF IPI MSR 0x83F and the x2APIC ICR MSR. Checks
//! every phase delivered (at most one delivery per send; coalescing allowed)
//! and that nothing arrives once the sending stops.
#![no_std]
#![no_main]

use test_guests::apic::{self, reg, ICR_ASSERT, ICR_SELF};
use test_guests::{cpu, idt, println, BootInfo};

test_guests::entry!(main);

const VECTOR: u8 = 0x40;
const SPURIOUS: u8 = 0xFF;
const PHASE_MS: u64 = 200;

fn on_interrupt(vector: u8) {
    if vector >= 32 && vector != SPURIOUS {
        apic::eoi();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    XapicIcr,
    X2apicSelfMsr,
}

/// One phase: returns (sends, deliveries) or prints why it failed.
fn phase(via: Via, name: &str) -> Result<(u64, u64), ()> {
    let per_ms = apic::tsc_per_ms();
    let before = idt::count(VECTOR);
    let start = cpu::rdtsc();
    let end = start.saturating_add(PHASE_MS * per_ms);
    let mut sent = 0u64;
    let mut garbage = 0u64;
    apic::sti();
    while cpu::rdtsc() < end {
        match via {
            Via::XapicIcr => apic::self_ipi(VECTOR),
            Via::X2apicSelfMsr => {
                if (sent + 1).is_multiple_of(16) {
                    // The x2APIC ICR: shorthand self, then own ID.
                    apic::send_ipi(0, ICR_SELF | ICR_ASSERT | u32::from(VECTOR));
                } else {
                    apic::wrmsr(apic::MSR_SELF_IPI, u64::from(VECTOR));
                }
            }
        }
        sent += 1;
        if sent.is_multiple_of(64) {
            // Malformed or odd ICR writes: reserved delivery modes 3 and 7,
            // an illegal vector, all-including-self (the others' copy is
            // dropped: there are no other vCPUs), own physical ID.
            let id = if via == Via::XapicIcr { apic::read(reg::ID) >> 24 } else { apic::read(reg::ID) };
            for low in [
                ICR_SELF | (3 << 8) | u32::from(VECTOR),
                ICR_SELF | (7 << 8) | u32::from(VECTOR),
                ICR_SELF | ICR_ASSERT | 0x05,
                (2 << 18) | ICR_ASSERT | u32::from(VECTOR),
                ICR_ASSERT | u32::from(VECTOR),
            ] {
                apic::send_ipi(id, low);
                garbage += 1;
            }
            sent += 2; // the all-including-self and own-ID ones reach us too
        }
    }
    // Let the last one land.
    let _ = apic::wait_until(apic::tsc_after_ms(5), || false);
    apic::cli();
    let delivered = idt::count(VECTOR) - before;
    let ms = apic::ms_since(start).max(1);
    println!(
        "self-ipi {}: {} sent, {} delivered in {} ms ({}/s), {} malformed ICR writes, esr {:#x}",
        name,
        sent,
        delivered,
        ms,
        delivered * 1000 / ms,
        garbage,
        read_esr()
    );
    // Nothing more arrives once sending stops.
    let settled = idt::count(VECTOR);
    apic::sti();
    let _ = apic::wait_until(apic::tsc_after_ms(10), || false);
    apic::cli();
    let late = idt::count(VECTOR) - settled;
    if delivered == 0 {
        println!("FAIL: {}: no IPI delivered", name);
        return Err(());
    }
    if delivered > sent {
        println!("FAIL: {}: {} deliveries for {} sends", name, delivered, sent);
        return Err(());
    }
    if late != 0 {
        println!("FAIL: {}: {} deliveries after sending stopped", name, late);
        return Err(());
    }
    if apic::highest_in_service().is_some() || apic::requested(VECTOR) {
        println!("FAIL: {}: vector still in service or requested", name);
        return Err(());
    }
    Ok((sent, delivered))
}

/// ESR after latching (a write, then the read).
fn read_esr() -> u32 {
    apic::write(reg::ESR, 0);
    apic::read(reg::ESR)
}

fn main(_info: &BootInfo) -> u32 {
    println!("self-ipi start");
    apic::mask_pic();
    idt::install_all();
    // An illegal vector (below 16) that got delivered anyway is counted as
    // a stray below instead of stopping the guest.
    idt::catch_exceptions(true);
    idt::set_hook(on_interrupt);
    apic::enable(SPURIOUS);
    apic::write(reg::LVT_ERROR, apic::LVT_MASKED);
    let _ = read_esr();
    if phase(Via::XapicIcr, "xapic icr").is_err() {
        return 1;
    }
    if apic::x2apic_supported() {
        apic::enable_x2apic();
        println!("self-ipi: x2apic on, id {}", apic::read(reg::ID));
        if phase(Via::X2apicSelfMsr, "x2apic self-ipi msr").is_err() {
            return 1;
        }
    } else {
        println!("self-ipi: no x2apic in cpuid, skipped");
    }
    let others = idt::total() - idt::count(VECTOR);
    if others != 0 {
        println!("FAIL: {} interrupts on other vectors", others);
        return 1;
    }
    println!("self-ipi ok");
    0
}
