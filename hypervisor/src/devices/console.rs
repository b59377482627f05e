//! The VM's COM1: the 16550 model from `pc-devices`, with what it sends
//! line-buffered into the node log (prefixed with the VM name) and kept in
//! a bounded ring for the consoles; console input is queued for the guest.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use pc_devices::bus::{BusDevice, Effect, Env};
use pc_devices::uart::Uart;

/// How much console output each VM keeps for later readers.
pub const CONSOLE_HISTORY: usize = 64 * 1024;
/// A log line is cut here, so a guest cannot make one line unbounded.
const LINE_MAX: usize = 200;
/// Base of the VM's COM1.
pub const COM1_BASE: u16 = 0x3F8;
/// COM1's ISA IRQ (and GSI).
pub const COM1_GSI: u32 = 4;

/// One VM's serial console.
pub struct Console {
    uart: Uart,
    name: String,
    line: String,
    history: VecDeque<u8>,
    scratch: Vec<u8>,
}

impl Console {
    /// A console for the VM called `name`.
    pub fn new(name: &str) -> Console {
        Console {
            uart: Uart::new(),
            name: String::from(name),
            line: String::new(),
            history: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// Queues console input for the guest, all of it or (queue full) none.
    pub fn push_input(&mut self, bytes: &[u8]) -> bool {
        self.uart.push_input(bytes)
    }

    /// Appends bytes from the console_write hypercall.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.output(b);
        }
    }

    /// Moves what the guest transmitted into the log and the history.
    fn pump(&mut self) {
        let mut out = core::mem::take(&mut self.scratch);
        self.uart.drain_output(&mut out);
        for &b in &out {
            self.output(b);
        }
        out.clear();
        self.scratch = out;
    }

    fn output(&mut self, byte: u8) {
        if self.history.len() >= CONSOLE_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(byte);
        match byte {
            b'\n' => self.flush(),
            b'\r' => {}
            0x20..=0x7E | b'\t' => {
                self.line.push(char::from(byte));
                if self.line.len() >= LINE_MAX {
                    self.flush();
                }
            }
            _ => self.line.push('.'),
        }
    }

    /// Prints any partial line (when the VM stops).
    pub fn flush(&mut self) {
        self.pump();
        if !self.line.is_empty() {
            crate::log!("[{}] {}", self.name, self.line);
            self.line.clear();
        }
    }

    /// Output kept for the consoles, oldest first.
    pub fn history_bytes(&self) -> Vec<u8> {
        self.history.iter().copied().collect()
    }

    /// Bytes of output kept for the consoles.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

impl BusDevice for Console {
    fn read(&mut self, offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        // The 16550 is a byte device: wider reads see consecutive registers.
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.uart.read((offset + i as u64) as u16);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], _env: &mut Env<'_>) -> Effect {
        for (i, &b) in data.iter().enumerate() {
            self.uart.write((offset + i as u64) as u16, b);
        }
        self.pump();
        Effect::None
    }

    fn irq_level(&self) -> bool {
        self.uart.irq_level()
    }

    fn name(&self) -> &'static str {
        "com1"
    }
}
