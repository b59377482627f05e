//! Node power-off. Tries the emulators' exits and ACPI ports, then halts.

use x86::io::{outb, outw};

/// Powers the node off; `success` decides the QEMU isa-debug-exit code.
pub fn off(success: bool) -> ! {
    super::serial::drain();
    // SAFETY: power-off ports: isa-debug-exit (QEMU), ACPI PM1a control with
    // SLP_EN|S5 for QEMU (0x604) and Bochs (0xB004). Writes to absent ports
    // are ignored by the chipset.
    unsafe {
        outb(0xF4, if success { 0 } else { 1 });
        outw(0x604, 0x2000);
        outw(0xB004, 0x2000);
    }
    halt_forever()
}

/// Resets the node (the landlord's reboot): the reset control register,
/// then the keyboard controller, then a triple fault as last resort.
pub fn reboot() -> ! {
    super::serial::drain();
    // SAFETY: PC reset ports; nothing runs after this.
    unsafe {
        outb(0xCF9, 0x06);
        outb(0x64, 0xFE);
        core::arch::asm!("lidt [{}]", "int3", in(reg) &[0u64; 2]);
    }
    halt_forever()
}

/// Ends the run after a hypervisor fault: report already printed.
pub fn fail_stop() -> ! {
    crate::arch::x86_64::serial::write_fmt_unlocked(format_args!("BMonitor halted after a fault; powering off\n"));
    off(false)
}

/// Halts with interrupts off, for when power-off is unavailable.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: halting the CPU with interrupts disabled.
        unsafe { core::arch::asm!("cli; hlt") };
    }
}
