//! A 16550A UART with its interrupt, as a PC's COM1.
//!
//! Transmission is instant: a byte written to THR goes straight to the
//! output queue (or, in loopback, to the receiver), so THRE and TEMT are
//! always set and the THR-empty interrupt re-arms after every write, as a
//! real 16550 does once its shift register drains. The receive side is one
//! bounded queue fed by the console ([`INPUT_MAX`] bytes, larger than the
//! chip's 16-byte FIFO so pasted text is not lost); the received-data
//! interrupt is pending whenever it is non-empty (no trigger levels, no
//! character-timeout id). Baud rate, word length and parity are stored
//! only.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Console input waiting for the guest, at most.
pub const INPUT_MAX: usize = 4096;
/// Transmitted bytes kept until the hypervisor drains them, at most.
pub const OUTPUT_MAX: usize = 4096;

const RBR_THR: u16 = 0;
const IER: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;

const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_RLS: u8 = 1 << 2;
const IER_MS: u8 = 1 << 3;

const LSR_DR: u8 = 1 << 0;
const LSR_OE: u8 = 1 << 1;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;

const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;

const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;
/// The modem inputs outside loopback: carrier, data set ready, clear to send.
const MSR_IDLE: u8 = MSR_DCD | MSR_DSR | MSR_CTS;

/// One emulated 16550A.
#[derive(Clone, Debug)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// FCR bit 0 (FIFOs enabled), reported in IIR bits 7:6.
    fifo_enabled: bool,
    /// Overrun seen and not yet reported by an LSR read.
    overrun: bool,
    /// The THR-empty interrupt is latched (cleared by an IIR read that
    /// reports it, or by a THR write which then re-arms it at once).
    thre_pending: bool,
    /// MSR: top nibble the modem inputs, low nibble the delta bits.
    msr: u8,
    input: VecDeque<u8>,
    output: VecDeque<u8>,
    /// Transmitted bytes discarded because the output queue was full.
    pub dropped_output: u64,
}

impl Default for Uart {
    fn default() -> Self {
        Uart::new()
    }
}

impl Uart {
    /// The chip after reset (divisor 1, i.e. 115200 baud).
    pub fn new() -> Uart {
        Uart {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            fifo_enabled: false,
            overrun: false,
            thre_pending: false,
            msr: MSR_IDLE,
            input: VecDeque::new(),
            output: VecDeque::new(),
            dropped_output: 0,
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & 0x80 != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// The interrupt source IIR reports (bits 3:0), highest priority first.
    fn pending_source(&self) -> Option<u8> {
        if self.ier & IER_RLS != 0 && self.overrun {
            Some(0x06)
        } else if self.ier & IER_RDA != 0 && !self.input.is_empty() {
            Some(0x04)
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            Some(0x02)
        } else if self.ier & IER_MS != 0 && self.msr & 0x0F != 0 {
            Some(0x00)
        } else {
            None
        }
    }

    /// The chip's INTR output (some enabled source pending), before the
    /// PC's OUT2 gate.
    pub fn intr(&self) -> bool {
        self.pending_source().is_some()
    }

    /// The IRQ 4 line: INTR gated by MCR OUT2, as on PC serial boards
    /// (drivers set OUT2 to enable interrupts; in loopback the OUT2 pin is
    /// forced inactive, so the line is low).
    pub fn irq_level(&self) -> bool {
        self.intr() && self.mcr & MCR_OUT2 != 0 && !self.loopback()
    }

    fn lsr(&self) -> u8 {
        let mut v = LSR_THRE | LSR_TEMT;
        if !self.input.is_empty() {
            v |= LSR_DR;
        }
        if self.overrun {
            v |= LSR_OE;
        }
        v
    }

    /// Guest read of register `offset` (0-7; others read 0xFF).
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            RBR_THR if self.dlab() => self.dll,
            RBR_THR => self.input.pop_front().unwrap_or(0),
            IER if self.dlab() => self.dlm,
            IER => self.ier,
            IIR_FCR => {
                let fifo = if self.fifo_enabled { 0xC0 } else { 0 };
                match self.pending_source() {
                    Some(id) => {
                        if id == 0x02 {
                            self.thre_pending = false;
                        }
                        fifo | id
                    }
                    None => fifo | 0x01,
                }
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let v = self.lsr();
                self.overrun = false;
                v
            }
            MSR => {
                let v = self.msr;
                self.msr &= 0xF0;
                v
            }
            SCR => self.scr,
            _ => 0xFF,
        }
    }

    /// Guest write of register `offset` (0-7; others are dropped).
    pub fn write(&mut self, offset: u16, value: u8) {
        match offset {
            RBR_THR if self.dlab() => self.dll = value,
            RBR_THR => {
                self.transmit(value);
                // The byte left THR at once: THR is empty again.
                self.thre_pending = true;
            }
            IER if self.dlab() => self.dlm = value,
            IER => {
                let new = value & 0x0F;
                if new & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre_pending = true;
                }
                self.ier = new;
            }
            IIR_FCR => {
                let enable = value & 1 != 0;
                // Changing the enable bit clears both FIFOs.
                if value & 0x02 != 0 || enable != self.fifo_enabled {
                    self.input.clear();
                }
                self.fifo_enabled = enable;
            }
            LCR => self.lcr = value,
            MCR => {
                self.mcr = value & 0x1F;
                self.update_modem_inputs();
            }
            SCR => self.scr = value,
            // LSR and MSR writes (factory test) are ignored.
            _ => {}
        }
    }

    /// Recomputes MSR's input nibble from MCR and latches the delta bits.
    fn update_modem_inputs(&mut self) {
        let new = if self.loopback() {
            let m = self.mcr;
            let mut v = 0;
            if m & MCR_DTR != 0 {
                v |= MSR_DSR;
            }
            if m & MCR_RTS != 0 {
                v |= MSR_CTS;
            }
            if m & MCR_OUT1 != 0 {
                v |= MSR_RI;
            }
            if m & MCR_OUT2 != 0 {
                v |= MSR_DCD;
            }
            v
        } else {
            MSR_IDLE
        };
        let old = self.msr & 0xF0;
        let changed = old ^ new;
        let mut delta = 0;
        if changed & MSR_CTS != 0 {
            delta |= 0x01;
        }
        if changed & MSR_DSR != 0 {
            delta |= 0x02;
        }
        // Trailing edge of ring indicator only.
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            delta |= 0x04;
        }
        if changed & MSR_DCD != 0 {
            delta |= 0x08;
        }
        self.msr = new | (self.msr & 0x0F) | delta;
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            if self.input.len() >= INPUT_MAX {
                self.overrun = true;
            } else {
                self.input.push_back(byte);
            }
            return;
        }
        if self.output.len() >= OUTPUT_MAX {
            self.output.pop_front();
            self.dropped_output = self.dropped_output.saturating_add(1);
        }
        self.output.push_back(byte);
    }

    /// Queues console input for the guest, all of it or (it would not fit
    /// in [`INPUT_MAX`]) none, so a console cannot grow the queue.
    pub fn push_input(&mut self, bytes: &[u8]) -> bool {
        match self.input.len().checked_add(bytes.len()) {
            Some(n) if n <= INPUT_MAX => {
                self.input.extend(bytes.iter().copied());
                true
            }
            _ => false,
        }
    }

    /// How many input bytes the guest has not read yet.
    pub fn input_len(&self) -> usize {
        self.input.len()
    }

    /// The oldest byte the guest transmitted and nobody took yet.
    pub fn take_output(&mut self) -> Option<u8> {
        self.output.pop_front()
    }

    /// Moves everything the guest transmitted to `out`, oldest first.
    pub fn drain_output(&mut self, out: &mut Vec<u8>) {
        out.extend(self.output.drain(..));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn out(u: &mut Uart) -> Vec<u8> {
        let mut v = Vec::new();
        u.drain_output(&mut v);
        v
    }

    #[test]
    fn transmit_and_receive() {
        let mut u = Uart::new();
        assert_eq!(u.read(LSR), 0x60);
        u.write(RBR_THR, b'h');
        u.write(RBR_THR, b'i');
        assert_eq!(out(&mut u), b"hi");
        assert!(u.push_input(b"ab"));
        assert_eq!(u.read(LSR), 0x61);
        assert_eq!(u.read(RBR_THR), b'a');
        assert_eq!(u.read(RBR_THR), b'b');
        assert_eq!(u.read(LSR), 0x60);
        assert_eq!(u.read(RBR_THR), 0);
    }

    #[test]
    fn divisor_latch_hides_rbr_and_ier() {
        let mut u = Uart::new();
        u.write(IER, 0x05);
        u.write(LCR, 0x83);
        u.write(RBR_THR, 0x0C);
        u.write(IER, 0x00);
        assert_eq!(u.read(RBR_THR), 0x0C);
        assert_eq!(u.read(IER), 0x00);
        u.write(LCR, 0x03);
        assert_eq!(u.read(IER), 0x05);
        assert!(out(&mut u).is_empty());
    }

    #[test]
    fn input_and_output_are_bounded() {
        let mut u = Uart::new();
        assert!(!u.push_input(&[0; INPUT_MAX + 1]));
        assert!(u.push_input(&[0; INPUT_MAX]));
        assert!(!u.push_input(&[0]));
        for i in 0..OUTPUT_MAX + 10 {
            u.write(RBR_THR, i as u8);
        }
        assert_eq!(u.dropped_output, 10);
        assert_eq!(u.take_output(), Some(10));
    }

    #[test]
    fn iir_reports_by_priority_and_fifo_bits() {
        let mut u = Uart::new();
        u.write(MCR, MCR_OUT2);
        assert_eq!(u.read(IIR_FCR), 0x01);
        u.write(IIR_FCR, 0x07);
        assert_eq!(u.read(IIR_FCR), 0xC1);
        u.write(IER, 0x0F);
        // THR empty becomes pending on enabling it.
        assert!(u.irq_level());
        assert!(u.push_input(b"x"));
        assert_eq!(u.read(IIR_FCR), 0xC4);
        assert_eq!(u.read(IIR_FCR), 0xC4);
        u.read(RBR_THR);
        // Now the THRE source; reading IIR that reports it clears it.
        assert_eq!(u.read(IIR_FCR), 0xC2);
        assert_eq!(u.read(IIR_FCR), 0xC1);
        assert!(!u.irq_level());
        // A THR write re-arms it.
        u.write(RBR_THR, b'a');
        assert!(u.irq_level());
        assert_eq!(u.read(IIR_FCR), 0xC2);
        // Disabling FIFOs drops the top bits.
        u.write(IIR_FCR, 0);
        assert_eq!(u.read(IIR_FCR), 0x01);
    }

    #[test]
    fn thre_rearms_only_on_the_enable_edge() {
        let mut u = Uart::new();
        u.write(IER, IER_THRE);
        assert_eq!(u.read(IIR_FCR), 0x02);
        u.write(IER, IER_THRE);
        assert_eq!(u.read(IIR_FCR), 0x01);
        u.write(IER, 0);
        u.write(IER, IER_THRE);
        assert_eq!(u.read(IIR_FCR), 0x02);
    }

    #[test]
    fn loopback_reflects_mcr_in_msr_and_echoes_bytes() {
        let mut u = Uart::new();
        assert_eq!(u.read(MSR), 0xB0);
        // Linux's 8250 probe.
        u.write(MCR, 0x1A);
        assert_eq!(u.read(MSR) & 0xF0, 0x90);
        u.write(MCR, 0x1F);
        assert_eq!(u.read(MSR), 0xF0 | 0x02);
        u.write(MCR, 0x10);
        // RI trailing edge, DCD/DSR/CTS changed.
        assert_eq!(u.read(MSR), 0x0F);
        assert_eq!(u.read(MSR), 0x00);
        u.write(RBR_THR, 0x55);
        assert!(out(&mut u).is_empty());
        assert_eq!(u.read(LSR) & LSR_DR, 1);
        assert_eq!(u.read(RBR_THR), 0x55);
        u.write(MCR, 0x00);
        assert_eq!(u.read(MSR), 0xBB);
    }

    #[test]
    fn overrun_in_loopback_and_line_status_interrupt() {
        let mut u = Uart::new();
        u.write(MCR, MCR_LOOP);
        u.write(IER, IER_RLS);
        for _ in 0..=INPUT_MAX {
            u.write(RBR_THR, 1);
        }
        assert_eq!(u.read(IIR_FCR), 0x06);
        assert!(u.intr());
        assert!(!u.irq_level());
        assert_eq!(u.read(LSR) & LSR_OE, LSR_OE);
        assert_eq!(u.read(LSR) & LSR_OE, 0);
        assert_eq!(u.read(IIR_FCR), 0x01);
    }

    #[test]
    fn fcr_clears_the_receiver() {
        let mut u = Uart::new();
        u.write(IIR_FCR, 0x01);
        u.push_input(b"abc");
        u.write(IIR_FCR, 0x03);
        assert_eq!(u.read(LSR) & LSR_DR, 0);
    }

    #[test]
    fn irq_needs_out2() {
        let mut u = Uart::new();
        u.write(IER, IER_RDA);
        u.push_input(b"a");
        assert!(u.intr());
        assert!(!u.irq_level());
        u.write(MCR, MCR_OUT2);
        assert!(u.irq_level());
    }

    proptest! {
        #[test]
        fn arbitrary_register_traffic_keeps_invariants(ops in proptest::collection::vec(
            (0u8..4, 0u16..10, any::<u8>(), 0usize..40), 0..200)) {
            let mut u = Uart::new();
            for (kind, off, v, n) in ops {
                match kind {
                    0 => { u.read(off); }
                    1 => u.write(off, v),
                    2 => { u.push_input(&alloc::vec![v; n * 120]); }
                    _ => { u.take_output(); }
                }
                prop_assert!(u.input.len() <= INPUT_MAX);
                prop_assert!(u.output.len() <= OUTPUT_MAX);
                let lsr = u.lsr();
                prop_assert_eq!(lsr & 0x60, 0x60);
                prop_assert_eq!(lsr & 1 == 1, u.input_len() > 0);
                let iir = u.read(IIR_FCR);
                prop_assert!(matches!(iir & 0x0F, 0x00 | 0x01 | 0x02 | 0x04 | 0x06));
                prop_assert_eq!(iir & 0x30, 0);
                if u.ier & IER_RDA != 0 && u.input_len() > 0 && !u.overrun {
                    prop_assert_eq!(iir & 0x0F, 0x04);
                }
            }
        }
    }
}
