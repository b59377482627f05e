//! x86 port I/O, plus the platform ports the guests use.
//!
//! The accessors are safe functions: in a test guest no port can break
//! Rust's memory safety (the hypervisor gives guests no DMA-capable device
//! behind a port), and probing arbitrary ports is the point of some guests.

use core::arch::asm;

/// QEMU's isa-debug-exit device (`-device isa-debug-exit,iobase=0xf4`);
/// BMonitor emulates it as "stop this VM with the written code".
pub const DEBUG_EXIT: u16 = 0xF4;

/// QEMU's ACPI PM1a control register (PIIX4 PM at 0x600); writing
/// [`ACPI_SLEEP_S5`] powers the machine (VM) off.
pub const ACPI_PM1A_CNT: u16 = 0x604;

/// PM1 control value SLP_EN | SLP_TYP=0: enter S5 (soft off) on QEMU.
pub const ACPI_SLEEP_S5: u16 = 0x2000;

/// Reads a byte from `port`.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port input touches no memory of this program (see module doc).
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reads a 16-bit word from `port`.
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: port input touches no memory of this program (see module doc).
    unsafe { asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reads a 32-bit dword from `port`.
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port input touches no memory of this program (see module doc).
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes a byte to `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output touches no memory of this program (see module doc).
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// Writes a 16-bit word to `port`.
pub fn outw(port: u16, value: u16) {
    // SAFETY: port output touches no memory of this program (see module doc).
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) };
}

/// Writes a 32-bit dword to `port`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: port output touches no memory of this program (see module doc).
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) };
}

/// Exits through the isa-debug-exit port (a 32-bit write of `code` to
/// 0xF4; QEMU then exits with status `(code << 1) | 1`). Halts forever if
/// nothing stops the guest.
pub fn debug_exit(code: u32) -> ! {
    crate::serial::flush();
    outl(DEBUG_EXIT, code);
    crate::halt_forever()
}
