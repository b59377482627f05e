//! Runtime for BMonitor's test guests: boot stubs (PVH and multiboot1), a
//! polled 16550 UART, the hypercall ABI, boot-information parsing, a small
//! IDT for guests that catch exceptions or take interrupts, the local APIC
//! and IOAPIC ([`apic`]), port I/O, a heap (for guests that
//! call [`heap::init`]), a virtio-net + smoltcp network stack ([`net`]) and
//! a polled virtio-blk disk ([`blk`]).
//!
//! Each guest is a binary in `src/bin/` that names its main function with
//! [`entry!`]. The runtime enters it in 64-bit long mode with the first
//! 4 GiB identity-mapped (2 MiB pages), interrupts off, on a 64 KiB stack in
//! `.bss`, and exits with the code main returns (see [`exit`]).
//!
//! All `unsafe` code of the guests lives in this crate.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod apic;
pub mod blk;
pub mod boot;
pub mod bootinfo;
pub mod clock;
pub mod cpu;
pub mod heap;
pub mod hypercall;
pub mod idt;
pub mod net;
pub mod phys;
pub mod port;
pub mod serial;

pub use bootinfo::{BootInfo, Protocol};

use core::sync::atomic::{AtomicBool, Ordering};

/// Exit code a guest reports when it panics.
pub const PANIC_EXIT_CODE: u32 = 101;

/// Declares the guest's main function: `fn main(info: &BootInfo) -> u32`.
///
/// The runtime calls it after boot and exits with the returned code
/// (through [`exit`]).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// Called by the 64-bit boot stub with the registers the loader set.
        #[no_mangle]
        pub extern "C" fn test_guest_rust_entry(eax: u32, ebx: u32) -> ! {
            let main: fn(&$crate::BootInfo) -> u32 = $main;
            $crate::boot::start(eax, ebx, main)
        }
    };
}

/// Prints to the UART (COM1), like `print!`.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::serial::_print(core::format_args!($($arg)*))
    };
}

/// Prints a line to the UART (COM1), like `println!`. Lines end in `\n`.
#[macro_export]
macro_rules! println {
    () => {
        $crate::serial::_print(core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::serial::_print(core::format_args!("{}\n", core::format_args!($($arg)*)))
    };
}

/// Stops the guest with `code`: the exit hypercall when running under
/// BMonitor, else (or if that returns) a write to the isa-debug-exit port
/// 0xF4, else halts forever.
pub fn exit(code: u32) -> ! {
    serial::flush();
    if hypercall::present() {
        let _ = hypercall::exit(code);
    }
    port::debug_exit(code)
}

/// Disables interrupts and halts forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops this CPU; it touches no memory.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Disables interrupts and spins forever in a one-instruction loop
/// (`jmp` to itself: no PAUSE, no I/O, nothing that causes a VM exit).
pub fn spin_forever() -> ! {
    // SAFETY: `cli` and a self-jump touch no memory; this never returns.
    unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(noreturn, nomem, nostack)) }
}

/// Burns roughly `iterations` loop turns without causing VM exits (no
/// PAUSE), e.g. to give an emulator time to act on an asynchronous request.
pub fn spin_delay(iterations: u64) {
    let mut i = 0u64;
    while i < iterations {
        i = core::hint::black_box(i) + 1;
    }
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::Relaxed) {
        // A panic while printing a panic: do not recurse.
        port::debug_exit(PANIC_EXIT_CODE);
    }
    match info.location() {
        Some(loc) => println!("PANIC: {} at {}:{}", info.message(), loc.file(), loc.line()),
        None => println!("PANIC: {}", info.message()),
    }
    exit(PANIC_EXIT_CODE)
}
