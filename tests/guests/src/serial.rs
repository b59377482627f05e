//! Polled 16550 UART on COM1 (0x3F8): waits for LSR.THRE (bit 5) before
//! each byte. No interrupts, no divisor programming (the UART is emulated).

use core::fmt;

use crate::port::{inb, outb};

/// COM1 base port.
pub const COM1: u16 = 0x3F8;

const THR: u16 = COM1;
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const LSR: u16 = COM1 + 5;

const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;

/// Upper bound on LSR polls per byte, so a broken UART model cannot hang
/// the guest forever.
const MAX_POLLS: u32 = 1 << 20;

/// Puts the UART in a known state: interrupts off, 8N1, FIFOs on.
pub fn init() {
    outb(IER, 0x00);
    outb(LCR, 0x03);
    outb(FCR, 0x07);
}

fn wait_lsr(bit: u8) {
    let mut polls = 0;
    while inb(LSR) & bit == 0 && polls < MAX_POLLS {
        polls += 1;
    }
}

/// Sends one byte.
pub fn write_byte(b: u8) {
    wait_lsr(LSR_THRE);
    outb(THR, b);
}

/// Sends `bytes` unchanged.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        write_byte(b);
    }
}

/// Waits until the transmitter is empty (LSR.TEMT), so nothing is lost if
/// the machine stops right after.
pub fn flush() {
    wait_lsr(LSR_TEMT);
}

/// A `fmt::Write` sink for the UART.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Backend of [`crate::print!`] and [`crate::println!`].
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}
