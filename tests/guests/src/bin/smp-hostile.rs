//! `smp-hostile`: a 2-vCPU guest that abuses its second CPU. It starts it
//! (INIT-SIPI-SIPI) at a three-instruction real-mode stub that reports in
//! and then spins with interrupts off for good; storms IPIs at all its
//! other vCPUs (fixed, all-excluding-self) for 300 ms; then restarts the
//! spinning AP with INIT-SIPI-SIPI 50 times. It exits 0 when each step
//! did what the platform promises. The hypervisor must take both vCPUs
//! back when it exits (one of them spinning on another CPU) and the other
//! VMs must keep their share of time meanwhile.
#![no_std]
#![no_main]

use test_guests::apic::{self, ICR_ASSERT};
use test_guests::phys::Range;
use test_guests::{cpu, println, BootInfo};

test_guests::entry!(main);

/// Where the AP starts: page 0x70 (SIPI vector 0x70).
const AP_PAGE: u64 = 0x7_0000;
const AP_VECTOR: u32 = 0x70;
/// The AP writes its run count here (CS-relative offset 0x100).
const AP_FLAG: u64 = AP_PAGE + 0x100;
/// `inc byte cs:[0x100]; cli; jmp $`.
const AP_CODE: [u8; 8] = [0x2E, 0xFE, 0x06, 0x00, 0x01, 0xFA, 0xEB, 0xFE];

const ICR_INIT: u32 = 5 << 8;
const ICR_STARTUP: u32 = 6 << 8;
const ICR_ALL_BUT_SELF: u32 = 3 << 18;
const STORM_VECTOR: u32 = 0x40;

fn flag() -> u8 {
    // SAFETY: AP_FLAG is guest RAM outside the image and the loader's
    // structures (checked in main); the AP writes it, so read volatile.
    unsafe { core::ptr::read_volatile(AP_FLAG as *const u8) }
}

/// INIT then two start-up IPIs to APIC 1, as the MP spec asks.
fn start_ap() {
    apic::send_ipi(1, ICR_ASSERT | ICR_INIT);
    test_guests::spin_delay(10_000);
    for _ in 0..2 {
        apic::send_ipi(1, ICR_ASSERT | ICR_STARTUP | AP_VECTOR);
        test_guests::spin_delay(2_000);
    }
}

fn main(info: &BootInfo) -> u32 {
    println!("smp-hostile start");
    let page = Range::new(AP_PAGE, 0x1000);
    if page.overlaps(&test_guests::phys::image()) || info.protected.iter().any(|p| p.overlaps(&page)) {
        println!("FAIL: the AP page {AP_PAGE:#x} is taken");
        return 1;
    }
    // SAFETY: the page is guest RAM nobody else uses (checked above).
    unsafe {
        core::ptr::write_bytes(AP_PAGE as *mut u8, 0, 0x1000);
        core::ptr::copy_nonoverlapping(AP_CODE.as_ptr(), AP_PAGE as *mut u8, AP_CODE.len());
    }
    apic::enable(0xFF);
    start_ap();
    if !apic::wait_until(apic::tsc_after_ms(1000), || flag() >= 1) {
        println!("FAIL: the AP never ran its start-up code");
        return 1;
    }
    println!("smp-hostile: AP started, spinning with interrupts off");

    // The storm: fixed IPIs to every other vCPU as fast as the ICR goes.
    let end = apic::tsc_after_ms(300);
    let mut sent: u64 = 0;
    while cpu::rdtsc() < end {
        apic::send_ipi(0, ICR_ASSERT | ICR_ALL_BUT_SELF | STORM_VECTOR);
        sent += 1;
    }
    println!("smp-hostile: {sent} IPIs to all-but-self in 300 ms");

    // Restarts: each INIT-SIPI-SIPI runs the stub again (one increment).
    let before = flag();
    for _ in 0..50 {
        let was = flag();
        start_ap();
        if !apic::wait_until(apic::tsc_after_ms(500), || flag() != was) {
            println!("FAIL: the AP did not restart ({} restarts seen)", flag().wrapping_sub(before));
            return 1;
        }
    }
    println!("smp-hostile: AP restarted {} times", flag().wrapping_sub(before));
    println!("smp-hostile ok");
    0
}
