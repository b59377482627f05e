//! `smp-hostile`: a 2-vCPU guest that abuses its second CPU. It starts it
//! (INIT-SIPI-SIPI) at a three-instruction real-mode stub that reports in
//! and then spins with interrupts off for good; storms IPIs at all its
//! other vCPUs (fixed, all-excluding-self) for 300 ms; restarts the
//! spinning AP with INIT-SIPI-SIPI 50 times; then sends it 20 NMIs one by
//! one, which its real-mode NMI handler counts (NMIs reach a CPU with
//! interrupts off). It exits 0 when each step did what the platform
//! promises. The hypervisor must take both vCPUs
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
/// Its NMI handler counts NMIs here (offset 0x101).
const NMI_FLAG: u64 = AP_PAGE + 0x101;
/// `mov ax, cs; mov ss, ax; mov sp, 0xF00; inc byte cs:[0x100]; cli; jmp $`.
const AP_CODE: [u8; 15] = [0x8C, 0xC8, 0x8E, 0xD0, 0xBC, 0x00, 0x0F, 0x2E, 0xFE, 0x06, 0x00, 0x01, 0xFA, 0xEB, 0xFE];
/// At offset 0x20: `inc byte cs:[0x101]; iret`.
const NMI_CODE: [u8; 6] = [0x2E, 0xFE, 0x06, 0x01, 0x01, 0xCF];
/// Real-mode vector 2 (NMI) in the interrupt vector table: 0x7000:0x0020.
const IVT_NMI: u64 = 2 * 4;
const NMI_ENTRY: [u8; 4] = [0x20, 0x00, 0x00, 0x70];
const ICR_NMI: u32 = 4 << 8;

const ICR_INIT: u32 = 5 << 8;
const ICR_STARTUP: u32 = 6 << 8;
const ICR_ALL_BUT_SELF: u32 = 3 << 18;
const STORM_VECTOR: u32 = 0x40;

fn read(at: u64) -> u8 {
    // SAFETY: `at` is in the AP page, guest RAM outside the image and the
    // loader's structures (checked in main); the AP writes it, so read
    // volatile.
    unsafe { core::ptr::read_volatile(at as *const u8) }
}

fn flag() -> u8 {
    read(AP_FLAG)
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
    for (what, range) in [("AP page", Range::new(AP_PAGE, 0x1000)), ("vector table", Range::new(0, 0x400))] {
        if range.overlaps(&test_guests::phys::image()) || info.protected.iter().any(|p| p.overlaps(&range)) {
            println!("FAIL: the {what} at {:#x} is taken", range.start);
            return 1;
        }
    }
    // SAFETY: the page and the vector table's NMI entry are guest RAM
    // nobody else uses (checked above); the boot stub maps them 1:1.
    unsafe {
        core::ptr::write_bytes(AP_PAGE as *mut u8, 0, 0x1000);
        core::ptr::copy_nonoverlapping(AP_CODE.as_ptr(), AP_PAGE as *mut u8, AP_CODE.len());
        core::ptr::copy_nonoverlapping(NMI_CODE.as_ptr(), (AP_PAGE + 0x20) as *mut u8, NMI_CODE.len());
        core::ptr::copy_nonoverlapping(NMI_ENTRY.as_ptr(), IVT_NMI as *mut u8, NMI_ENTRY.len());
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

    // NMIs: each is taken with interrupts off and counted by the handler;
    // the next is sent once the last one's IRET ran.
    for i in 0..20u8 {
        apic::send_ipi(1, ICR_ASSERT | ICR_NMI);
        if !apic::wait_until(apic::tsc_after_ms(500), || read(NMI_FLAG) == i.wrapping_add(1)) {
            println!("FAIL: NMI {} not handled by the AP (count {})", i + 1, read(NMI_FLAG));
            return 1;
        }
    }
    println!("smp-hostile: 20 NMIs handled by the AP");
    println!("smp-hostile ok");
    0
}
