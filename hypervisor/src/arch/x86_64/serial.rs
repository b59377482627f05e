//! COM1 (16550) polled output: the hypervisor's log.

use core::fmt::{self, Write};
use spin::Mutex;
use x86::io::{inb, outb};

const COM1: u16 = 0x3F8;

/// The log port; a mutex so SMP can follow without interleaved lines.
static PORT: Mutex<SerialPort> = Mutex::new(SerialPort { base: COM1 });

struct SerialPort {
    base: u16,
}

impl SerialPort {
    fn init(&self) {
        // SAFETY: programming our own COM1 UART; no memory is touched.
        unsafe {
            outb(self.base + 1, 0x00); // no interrupts
            outb(self.base + 3, 0x80); // DLAB
            outb(self.base, 0x01); // 115200 baud
            outb(self.base + 1, 0x00);
            outb(self.base + 3, 0x03); // 8N1
            outb(self.base + 2, 0xC7); // FIFO on, cleared
            outb(self.base + 4, 0x03); // DTR | RTS
        }
    }

    fn write_byte(&self, byte: u8) {
        // SAFETY: polling LSR and writing THR of our own UART.
        unsafe {
            while inb(self.base + 5) & 0x20 == 0 {}
            outb(self.base, byte);
        }
    }

    fn drain(&self) {
        // SAFETY: reading LSR of our own UART.
        unsafe { while inb(self.base + 5) & 0x40 == 0 {} }
    }
}

impl Write for SerialPort {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
        Ok(())
    }
}

/// Sets up COM1 before the first log line.
pub fn init() {
    PORT.lock().init();
}

/// Waits until the last byte has left the UART, so power-off loses nothing.
pub fn drain() {
    // Reads LSR only, so it skips the lock: fault paths may hold it.
    SerialPort { base: COM1 }.drain();
}

/// Backend of the log macros.
pub fn write_fmt(args: fmt::Arguments) {
    let _ = PORT.lock().write_fmt(args);
}

/// Last-resort writer for fault reports: ignores the lock, which the faulting
/// code may hold.
pub fn write_fmt_unlocked(args: fmt::Arguments) {
    let mut port = SerialPort { base: COM1 };
    let _ = port.write_fmt(args);
}

/// Prints one log line on COM1.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::arch::x86_64::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}
