//! The local APIC (xAPIC page at 0xFEE0_0000 or x2APIC MSRs), the IOAPIC
//! at 0xFEC0_0000, the interrupt flag and TSC time, for guests that take
//! interrupts (with [`crate::idt::install_all`]).
//!
//! Register numbers are xAPIC offsets ([`reg`]); after [`enable_x2apic`]
//! the same calls go to MSR `0x800 + offset / 16`. Time is TSC ticks: the
//! rate comes from BMonitor's `clock` hypercall (else [`crate::clock`]'s
//! measurement), the APIC timer's input clock from CPUID 0x15 ECX (the
//! crystal, which BMonitor sets to the TSC rate), else the TSC rate.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{clock, cpu, hypercall};

/// Guest-physical base of the xAPIC page.
pub const XAPIC_BASE: u64 = 0xFEE0_0000;
/// Guest-physical base of the IOAPIC.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// The x2APIC SELF IPI MSR.
pub const MSR_SELF_IPI: u32 = 0x83F;

/// xAPIC register offsets.
pub mod reg {
    /// Local APIC ID.
    pub const ID: u32 = 0x20;
    /// Version.
    pub const VERSION: u32 = 0x30;
    /// Task priority.
    pub const TPR: u32 = 0x80;
    /// Processor priority.
    pub const PPR: u32 = 0xA0;
    /// End of interrupt.
    pub const EOI: u32 = 0xB0;
    /// Spurious-interrupt vector (bit 8: software enable).
    pub const SVR: u32 = 0xF0;
    /// In-service register, 8 words of 32 vectors, 0x10 apart.
    pub const ISR: u32 = 0x100;
    /// Request register, like [`ISR`].
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command, low half.
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command, high half (xAPIC destination in bits 31:24).
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const INIT_COUNT: u32 = 0x380;
    /// Timer current count.
    pub const CUR_COUNT: u32 = 0x390;
    /// Timer divide configuration.
    pub const DIVIDE: u32 = 0x3E0;
}

/// LVT mask bit.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode: periodic.
pub const TIMER_PERIODIC: u32 = 1 << 17;
/// LVT timer mode: TSC-deadline.
pub const TIMER_TSC_DEADLINE: u32 = 2 << 17;
/// ICR destination shorthand "self".
pub const ICR_SELF: u32 = 1 << 18;
/// ICR level bit (assert).
pub const ICR_ASSERT: u32 = 1 << 14;

static X2APIC: AtomicBool = AtomicBool::new(false);

/// Whether the APIC is in x2APIC mode (after [`enable_x2apic`]).
pub fn x2apic_enabled() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

/// RDMSR. Only used for APIC MSRs, which touch no memory of this program.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR of an MSR the hypervisor implements only reads it;
    // callers pass APIC MSRs (a wrong one #GPs into the IDT).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// WRMSR. Only for APIC MSRs (interrupt controller state, no memory).
pub fn wrmsr(msr: u32, value: u64) {
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: callers write APIC MSRs only, which change interrupt delivery
    // but no memory this program uses.
    unsafe { asm!("wrmsr", in("ecx") msr, in("eax") lo, in("edx") hi, options(nomem, nostack, preserves_flags)) };
}

/// A 32-bit MMIO read at `addr` (an APIC or IOAPIC register).
pub fn mmio_read32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: `addr` is in the identity-mapped APIC/IOAPIC windows, which
    // hold no memory of this program; the access only reads a register.
    unsafe { asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags)) };
    v
}

/// A 32-bit MMIO write at `addr` (an APIC or IOAPIC register).
pub fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: as for `mmio_read32`; the write changes a device register only.
    unsafe {
        asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags))
    };
}

/// An 8-bit MMIO write (for guests that try narrow accesses).
pub fn mmio_write8(addr: u64, value: u8) {
    // SAFETY: as for `mmio_write32`.
    unsafe {
        asm!("mov byte ptr [{a}], {v}", a = in(reg) addr, v = in(reg_byte) value, options(nostack, preserves_flags))
    };
}

/// Reads local APIC register `offset` (xAPIC offset; MSR in x2APIC mode).
pub fn read(offset: u32) -> u32 {
    if x2apic_enabled() {
        rdmsr(0x800 + (offset >> 4)) as u32
    } else {
        mmio_read32(XAPIC_BASE + u64::from(offset))
    }
}

/// Writes local APIC register `offset` (xAPIC offset; MSR in x2APIC mode).
pub fn write(offset: u32, value: u32) {
    if x2apic_enabled() {
        wrmsr(0x800 + (offset >> 4), u64::from(value));
    } else {
        mmio_write32(XAPIC_BASE + u64::from(offset), value);
    }
}

/// Writes the ICR: `dest` (an APIC ID) and the low half `low`.
pub fn send_ipi(dest: u32, low: u32) {
    if x2apic_enabled() {
        wrmsr(0x830, (u64::from(dest) << 32) | u64::from(low));
    } else {
        write(reg::ICR_HIGH, dest << 24);
        write(reg::ICR_LOW, low);
    }
}

/// A fixed IPI with vector `vector` to this CPU (ICR, shorthand self).
pub fn self_ipi(vector: u8) {
    send_ipi(0, ICR_SELF | ICR_ASSERT | u32::from(vector));
}

/// EOI.
pub fn eoi() {
    write(reg::EOI, 0);
}

/// Software-enables the APIC with spurious vector `spurious`, TPR 0.
pub fn enable(spurious: u8) {
    write(reg::SVR, 0x100 | u32::from(spurious));
    write(reg::TPR, 0);
}

/// Masks every 8259 input (firmware such as SeaBIOS leaves IRQ 0 unmasked
/// at vector 8, which would look like a #DF).
pub fn mask_pic() {
    crate::port::outb(0x21, 0xFF);
    crate::port::outb(0xA1, 0xFF);
}

/// Whether CPUID.1:ECX[21] offers x2APIC mode.
pub fn x2apic_supported() -> bool {
    cpu::cpuid(1, 0).ecx & (1 << 21) != 0
}

/// Whether CPUID.1:ECX[24] offers the TSC-deadline timer.
pub fn tsc_deadline_supported() -> bool {
    cpu::cpuid(1, 0).ecx & (1 << 24) != 0
}

/// Switches to x2APIC mode (IA32_APIC_BASE EN | EXTD); later calls use MSRs.
pub fn enable_x2apic() {
    let base = rdmsr(MSR_APIC_BASE);
    wrmsr(MSR_APIC_BASE, base | (1 << 11) | (1 << 10));
    X2APIC.store(true, Ordering::Relaxed);
}

/// Whether `vector`'s bit is set in the register array at `base` (ISR/IRR).
fn bit(base: u32, vector: u8) -> bool {
    let word = read(base + 0x10 * u32::from(vector >> 5));
    word & (1 << (vector & 31)) != 0
}

/// Whether `vector` is in service.
pub fn in_service(vector: u8) -> bool {
    bit(reg::ISR, vector)
}

/// Whether `vector` is requested (IRR).
pub fn requested(vector: u8) -> bool {
    bit(reg::IRR, vector)
}

/// The highest vector in service, if any.
pub fn highest_in_service() -> Option<u8> {
    (0..8u32).rev().find_map(|i| {
        let w = read(reg::ISR + 0x10 * i);
        (w != 0).then(|| (i * 32 + 31 - w.leading_zeros()) as u8)
    })
}

/// LVT timer one-shot: `vector`, divide by 1, `count` timer clocks.
pub fn timer_one_shot(vector: u8, count: u32) {
    write(reg::LVT_TIMER, u32::from(vector));
    write(reg::DIVIDE, 0xB);
    write(reg::INIT_COUNT, count);
}

/// LVT timer periodic: `vector`, divide by 1, `count` timer clocks.
pub fn timer_periodic(vector: u8, count: u32) {
    write(reg::LVT_TIMER, TIMER_PERIODIC | u32::from(vector));
    write(reg::DIVIDE, 0xB);
    write(reg::INIT_COUNT, count);
}

/// Stops the APIC timer (count 0, LVT masked).
pub fn timer_stop() {
    write(reg::INIT_COUNT, 0);
    write(reg::LVT_TIMER, LVT_MASKED);
    wrmsr(MSR_TSC_DEADLINE, 0);
}

/// LVT timer in TSC-deadline mode with `vector` (arm with [`set_deadline`]).
pub fn timer_deadline_mode(vector: u8) {
    write(reg::LVT_TIMER, TIMER_TSC_DEADLINE | u32::from(vector));
}

/// IA32_TSC_DEADLINE := `tsc` (0 disarms).
pub fn set_deadline(tsc: u64) {
    wrmsr(MSR_TSC_DEADLINE, tsc);
}

/// One IOAPIC register by index (IOREGSEL, then IOWIN).
pub fn ioapic_read(index: u32) -> u32 {
    mmio_write32(IOAPIC_BASE, index);
    mmio_read32(IOAPIC_BASE + 0x10)
}

/// Writes IOAPIC register `index`.
pub fn ioapic_write(index: u32, value: u32) {
    mmio_write32(IOAPIC_BASE, index);
    mmio_write32(IOAPIC_BASE + 0x10, value);
}

/// Sets redirection entry `pin` (high half first, as Linux does).
pub fn ioapic_set_entry(pin: u32, value: u64) {
    ioapic_write(0x10 + 2 * pin + 1, (value >> 32) as u32);
    ioapic_write(0x10 + 2 * pin, value as u32);
}

/// STI.
pub fn sti() {
    // SAFETY: enables interrupts; the IDT handles every vector (guests call
    // this after `idt::install_all`).
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// CLI.
pub fn cli() {
    // SAFETY: disables interrupts; no memory effects.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// `sti; hlt`: sleeps until an interrupt is delivered (the STI shadow keeps
/// one from arriving between the two). Returns with interrupts on.
pub fn sti_hlt() {
    // SAFETY: as for `sti`; HLT only waits.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

/// Whether RFLAGS.IF is set.
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack (push/pop balanced).
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

static TSC_PER_MS: AtomicU64 = AtomicU64::new(0);

/// TSC ticks per millisecond (BMonitor's `clock` hypercall, else measured).
pub fn tsc_per_ms() -> u64 {
    match TSC_PER_MS.load(Ordering::Relaxed) {
        0 => {
            let v = match hypercall::clock_sample() {
                Ok(c) if c.tsc_per_ms > 0 => c.tsc_per_ms,
                _ => (clock::tsc_hz() / 1000).max(1),
            };
            TSC_PER_MS.store(v, Ordering::Relaxed);
            v
        }
        v => v,
    }
}

/// The APIC timer's input clock in Hz: CPUID 0x15 ECX (the crystal) when
/// the leaf exists and names one, else the TSC rate.
pub fn timer_hz() -> u64 {
    if cpu::cpuid(0, 0).eax >= 0x15 {
        let l = cpu::cpuid(0x15, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return u64::from(l.ecx);
        }
    }
    tsc_per_ms().saturating_mul(1000)
}

/// The TSC value `ms` milliseconds from now.
pub fn tsc_after_ms(ms: u64) -> u64 {
    cpu::rdtsc().saturating_add(ms.saturating_mul(tsc_per_ms()))
}

/// The TSC value `us` microseconds from now.
pub fn tsc_after_us(us: u64) -> u64 {
    cpu::rdtsc().saturating_add(us.saturating_mul(tsc_per_ms()) / 1000)
}

/// Milliseconds of TSC time since `start_tsc`.
pub fn ms_since(start_tsc: u64) -> u64 {
    cpu::rdtsc().saturating_sub(start_tsc) / tsc_per_ms()
}

/// Spins (interrupts as they are) until `cond` holds or the TSC passes
/// `deadline`; whether `cond` held.
pub fn wait_until(deadline: u64, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if cpu::rdtsc() >= deadline {
            return cond();
        }
        core::hint::spin_loop();
    }
}
