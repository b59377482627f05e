//! The host's local APIC (xAPIC, MMIO): the scheduler tick under SVM, where
//! there is no VMX preemption timer. The legacy PIC is masked for good.

use core::sync::atomic::{AtomicU64, Ordering};
use x86::io::outb;

const APIC_BASE_MSR: u32 = 0x1B;
const REG_EOI: u64 = 0xB0;
const REG_SVR: u64 = 0xF0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INIT: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3E0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
/// ICR delivery status: the previous IPI is still being sent.
const ICR_PENDING: u32 = 1 << 12;

static BASE: AtomicU64 = AtomicU64::new(0);

fn write(reg: u64, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: the APIC page is identity mapped (first 4 GiB) and `reg` is a
    // valid register offset within it.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) }
}

fn read(reg: u64) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        return 0;
    }
    // SAFETY: as in `write`.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

/// Enables the local APIC and masks the 8259 PICs.
pub fn init() {
    // SAFETY: masking both legacy PICs; reading the APIC base MSR.
    let base = unsafe {
        outb(0x21, 0xFF);
        outb(0xA1, 0xFF);
        x86::msr::rdmsr(APIC_BASE_MSR)
    };
    BASE.store(base & 0xF_FFFF_F000, Ordering::Relaxed);
    write(REG_SVR, 0x100 | u32::from(super::idt::SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, 0x3); // divide by 16
    write(REG_LVT_TIMER, 1 << 16); // masked
}

/// Enables an application processor's own local APIC (same MMIO address,
/// its own registers) for kicks and the one-shot slice timer.
pub fn init_ap() {
    write(REG_SVR, 0x100 | u32::from(super::idt::SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, 0x3);
    write(REG_LVT_TIMER, 1 << 16);
}

/// Fixed IPI with the kick vector: the target leaves its guest (or its
/// HLT) and looks at its run queue again.
pub fn send_kick(apic_id: u32) {
    send_ipi(apic_id, u32::from(super::idt::KICK_VECTOR));
}

/// Stops the one-shot timer (an idle CPU that was woken early).
pub fn disarm() {
    write(REG_TIMER_INIT, 0);
}

/// Starts a masked one-shot count from the maximum, for calibration.
pub fn start_calibration() {
    write(REG_TIMER_DIVIDE, 0x3);
    write(REG_LVT_TIMER, 1 << 16);
    write(REG_TIMER_INIT, u32::MAX);
}

/// Timer ticks elapsed since `start_calibration`.
pub fn calibration_elapsed() -> u32 {
    u32::MAX - read(REG_TIMER_CURRENT)
}

/// Starts the periodic scheduler tick every `ticks` timer counts.
pub fn start_periodic(ticks: u32) {
    write(REG_LVT_TIMER, u32::from(super::idt::TIMER_VECTOR) | (1 << 17));
    write(REG_TIMER_INIT, ticks.max(1));
}

/// Acknowledges the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Arms the timer to interrupt once after `ticks` timer ticks: on SVM,
/// which has no preemption timer, this ends a guest's run at its slice end
/// or at its own next timer deadline, whichever comes first.
pub fn arm_oneshot(ticks: u32) {
    write(REG_LVT_TIMER, u32::from(super::idt::TIMER_VECTOR));
    write(REG_TIMER_INIT, ticks.max(1));
}

/// Waits (at most ~1 ms) until the APIC has sent the previous IPI.
fn wait_icr_idle() {
    for _ in 0..100_000 {
        if read(REG_ICR_LOW) & ICR_PENDING == 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

fn send_ipi(apic_id: u32, low: u32) {
    wait_icr_idle();
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, low);
    wait_icr_idle();
}

/// INIT IPI (assert, level-triggered) to one CPU: the first step of
/// starting an application processor.
pub fn send_init(apic_id: u32) {
    send_ipi(apic_id, 0x0000_4500);
}

/// Start-up IPI: the CPU begins in real mode at `vector` × 4 KiB.
pub fn send_startup(apic_id: u32, vector: u8) {
    send_ipi(apic_id, 0x0000_4600 | u32::from(vector));
}
