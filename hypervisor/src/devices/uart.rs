//! A 16550 UART at 0x3F8 per VM. Output is line-buffered into the
//! hypervisor log (prefixed with the VM name) and kept in a per-VM ring for
//! the consoles; console input is queued for the guest to read (RBR, LSR
//! data-ready). No interrupts: guests poll LSR.

use alloc::collections::VecDeque;
use alloc::string::String;

/// How much console output each VM keeps for later readers.
pub const CONSOLE_HISTORY: usize = 64 * 1024;
const LINE_MAX: usize = 200;
/// Console input waiting to be read, at most.
const INPUT_MAX: usize = 4096;

/// Register offsets from the base port.
const THR_RBR: u16 = 0;
const IER: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;

/// One emulated 16550.
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    line: String,
    history: VecDeque<u8>,
    /// Bytes a console typed, waiting for the guest to read RBR.
    input: VecDeque<u8>,
}

impl Default for Uart {
    fn default() -> Self {
        Uart {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            line: String::new(),
            history: VecDeque::new(),
            input: VecDeque::new(),
        }
    }
}

impl Uart {
    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    /// Guest read of register `offset` (0..8).
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            THR_RBR if self.dlab() => self.dll,
            THR_RBR => self.input.pop_front().unwrap_or(0),
            IER if self.dlab() => self.dlm,
            IER => self.ier,
            IIR_FCR => 0xC1, // FIFOs enabled, no interrupt pending
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => 0x60 | u8::from(!self.input.is_empty()), // transmitter empty; data ready
            MSR => 0xB0,                                    // DCD, DSR, CTS
            SCR => self.scr,
            _ => 0xFF,
        }
    }

    /// Guest write of register `offset`; bytes to THR go to `sink` a line
    /// at a time.
    pub fn write(&mut self, offset: u16, value: u8, name: &str) {
        match offset {
            THR_RBR if self.dlab() => self.dll = value,
            THR_RBR => self.output(value, name),
            IER if self.dlab() => self.dlm = value,
            IER => self.ier = value & 0x0F,
            LCR => self.lcr = value,
            MCR => self.mcr = value & 0x1F,
            SCR => self.scr = value,
            _ => {}
        }
    }

    /// Queues console input for the guest, all of it or (queue full)
    /// none: the queue is bounded so a console cannot grow it without limit.
    pub fn push_input(&mut self, bytes: &[u8]) -> bool {
        if self.input.len() + bytes.len() > INPUT_MAX {
            return false;
        }
        self.input.extend(bytes.iter().copied());
        true
    }

    /// Appends bytes from the console_write hypercall.
    pub fn write_bytes(&mut self, bytes: &[u8], name: &str) {
        for &b in bytes {
            self.output(b, name);
        }
    }

    fn output(&mut self, byte: u8, name: &str) {
        if self.history.len() >= CONSOLE_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(byte);
        match byte {
            b'\n' => self.flush(name),
            b'\r' => {}
            0x20..=0x7E | b'\t' => {
                self.line.push(char::from(byte));
                if self.line.len() >= LINE_MAX {
                    self.flush(name);
                }
            }
            _ => self.line.push('.'),
        }
    }

    /// Prints any partial line (when the VM stops).
    pub fn flush(&mut self, name: &str) {
        if !self.line.is_empty() {
            crate::log!("[{}] {}", name, self.line);
            self.line.clear();
        }
    }

    /// Output kept for the consoles, oldest first.
    pub fn history_bytes(&self) -> alloc::vec::Vec<u8> {
        self.history.iter().copied().collect()
    }

    /// Bytes of output kept for the consoles (reported when the VM stops).
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}
