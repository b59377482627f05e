//! The IOAPIC: 24 pins, each routed by its redirection entry to a local APIC vector.
//!
//! Modelled on the 82093AA with version 0x20 (the ICH's), which adds the
//! EOI register at 0x40 so a guest can clear a level pin's remote IRR
//! without the edge/level toggle older parts needed. Pin inputs are
//! logical: `set_irq(pin, true)` means asserted whatever the polarity bit
//! says (the polarity bit is stored for the guest only; our firmware tables
//! and the devices agree on "true = asserted").
//!
//! An interrupt message is not sent anywhere: it is queued (at most one per
//! pin, coalescing like an IRR bit) until the caller takes it with
//! [`IoApic::take_delivery`] and hands it to the local APICs. Callers take
//! deliveries after every `set_irq`, `mmio_write` and `eoi`.

/// Guest-physical base of the IOAPIC (the MADT names it).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Bytes decoded from [`IOAPIC_BASE`]: a 4 KiB page, so the page can be
/// trapped whole; only offsets 0x00, 0x10 and 0x40 are registers, the rest
/// read 0 and ignore writes.
pub const IOAPIC_WINDOW: u64 = 0x1000;
/// Input pins (GSIs 0-23).
pub const PINS: u32 = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

const VERSION: u32 = 0x0017_0020;

const DELIVERY_STATUS: u64 = 1 << 12;
const REMOTE_IRR: u64 = 1 << 14;
const LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
/// Bits the guest may write: vector, mode, dest mode, polarity, trigger,
/// mask, destination.
const WRITABLE: u64 = 0xFF00_0000_0001_AFFF;

/// An interrupt message for the local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The vector. Vectors 0-15 are passed on as written; the local APIC
    /// model rejects them (illegal vector error).
    pub vector: u8,
    /// Delivery mode: 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT,
    /// 7 ExtINT (3 and 6 are reserved and passed on as written).
    pub mode: u8,
    /// Destination: an APIC ID (physical) or a logical mask.
    pub dest: u8,
    /// Logical destination mode.
    pub logical: bool,
    /// Level-triggered: the local APIC must report its EOI back through
    /// [`IoApic::eoi`].
    pub level: bool,
}

/// One IOAPIC.
#[derive(Clone, Debug)]
pub struct IoApic {
    id: u8,
    ioregsel: u8,
    redir: [u64; PINS as usize],
    /// Input levels (bit per pin).
    levels: u32,
    /// Messages waiting to be taken, one per pin at most.
    queued: [Option<Delivery>; PINS as usize],
}

impl IoApic {
    /// An IOAPIC at reset: every pin masked, edge, vector 0. The ID
    /// register holds 4 bits (27:24): pass an `id` below 16, matching the
    /// MADT.
    pub fn new(id: u8) -> IoApic {
        IoApic { id: id & 0x0F, ioregsel: 0, redir: [MASKED; PINS as usize], levels: 0, queued: [None; PINS as usize] }
    }

    fn entry(&self, pin: u32) -> u64 {
        self.redir.get(pin as usize).copied().unwrap_or(MASKED)
    }

    fn set_entry(&mut self, pin: u32, value: u64) {
        if let Some(e) = self.redir.get_mut(pin as usize) {
            *e = value;
        }
    }

    /// Level trigger applies to fixed and lowest-priority delivery only;
    /// the datasheet treats SMI, NMI, INIT and ExtINT as edge.
    fn is_level(entry: u64) -> bool {
        entry & LEVEL != 0 && matches!((entry >> 8) & 7, 0 | 1)
    }

    fn asserted(&self, pin: u32) -> bool {
        pin < PINS && self.levels & (1 << pin) != 0
    }

    fn queue(&mut self, pin: u32) {
        let e = self.entry(pin);
        let level = IoApic::is_level(e);
        let d = Delivery {
            vector: (e & 0xFF) as u8,
            mode: ((e >> 8) & 7) as u8,
            dest: (e >> 56) as u8,
            logical: e & (1 << 11) != 0,
            level,
        };
        if let Some(q) = self.queued.get_mut(pin as usize) {
            *q = Some(d);
        }
        if level {
            self.set_entry(pin, e | REMOTE_IRR);
        }
    }

    /// Delivers a level pin if it is asserted, unmasked and not awaiting
    /// an EOI.
    fn check_level(&mut self, pin: u32) {
        let e = self.entry(pin);
        if IoApic::is_level(e) && e & MASKED == 0 && e & REMOTE_IRR == 0 && self.asserted(pin) {
            self.queue(pin);
        }
    }

    /// Sets input `pin` (a GSI; pins >= 24 are ignored) to `level`.
    pub fn set_irq(&mut self, pin: u32, level: bool) {
        if pin >= PINS {
            return;
        }
        let was = self.asserted(pin);
        if level {
            self.levels |= 1 << pin;
        } else {
            self.levels &= !(1 << pin);
        }
        let e = self.entry(pin);
        if IoApic::is_level(e) {
            self.check_level(pin);
        } else if level && !was && e & MASKED == 0 {
            self.queue(pin);
        }
    }

    /// An EOI for `vector`, from a local APIC (EOI of a level-triggered
    /// vector) or from the EOI register: clears remote IRR of the level
    /// pins with that vector and re-delivers those still asserted.
    pub fn eoi(&mut self, vector: u8) {
        for pin in 0..PINS {
            let e = self.entry(pin);
            if e & REMOTE_IRR != 0 && (e & 0xFF) as u8 == vector {
                self.set_entry(pin, e & !REMOTE_IRR);
                self.check_level(pin);
            }
        }
    }

    /// Clears remote IRR of the level pins with `vector` *without*
    /// re-delivering: for a message no local APIC took. A line still
    /// asserted is delivered again at its next `set_irq` (the next sample
    /// of the device lines), not in the same pass, so a pin routed to
    /// nobody cannot keep the router busy.
    pub fn release(&mut self, vector: u8) {
        for pin in 0..PINS {
            let e = self.entry(pin);
            if e & REMOTE_IRR != 0 && (e & 0xFF) as u8 == vector {
                self.set_entry(pin, e & !REMOTE_IRR);
            }
        }
    }

    /// The next interrupt message, lowest pin first.
    pub fn take_delivery(&mut self) -> Option<Delivery> {
        self.queued.iter_mut().find_map(|q| q.take())
    }

    fn read_register(&self, index: u8) -> u32 {
        match index {
            0x00 => u32::from(self.id) << 24,
            0x01 => VERSION,
            0x02 => u32::from(self.id) << 24,
            0x10..=0x3F => {
                let pin = u32::from(index - 0x10) / 2;
                let mut e = self.entry(pin);
                if self.queued.get(pin as usize).is_some_and(|q| q.is_some()) {
                    e |= DELIVERY_STATUS;
                }
                if index & 1 == 0 {
                    (e & 0xFFFF_FFFF) as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, index: u8, value: u32) {
        match index {
            0x00 => self.id = ((value >> 24) & 0x0F) as u8,
            0x10..=0x3F => {
                let pin = u32::from(index - 0x10) / 2;
                let old = self.entry(pin);
                let v = u64::from(value);
                let merged = if index & 1 == 0 { (old & !0xFFFF_FFFF) | v } else { (old & 0xFFFF_FFFF) | (v << 32) };
                let mut new = (merged & WRITABLE) | (old & REMOTE_IRR);
                // Switching to edge clears remote IRR (the old-IOAPIC way
                // of acknowledging a level pin, which guests still use).
                if !IoApic::is_level(new) {
                    new &= !REMOTE_IRR;
                }
                self.set_entry(pin, new);
                self.check_level(pin);
            }
            _ => {}
        }
    }

    /// Guest read of the 32-bit register at `offset` from [`IOAPIC_BASE`].
    pub fn mmio_read(&mut self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => u32::from(self.ioregsel),
            IOWIN => self.read_register(self.ioregsel),
            _ => 0,
        }
    }

    /// Guest write of the 32-bit register at `offset` from [`IOAPIC_BASE`].
    pub fn mmio_write(&mut self, offset: u64, value: u32) {
        match offset {
            IOREGSEL => self.ioregsel = (value & 0xFF) as u8,
            IOWIN => self.write_register(self.ioregsel, value),
            EOI => self.eoi((value & 0xFF) as u8),
            _ => {}
        }
    }

    /// Pin `pin`'s redirection entry as the guest sees it (for the log and
    /// the router's tests).
    pub fn redirection(&self, pin: u32) -> u64 {
        let lo = u64::from(self.read_register_for(pin, 0));
        let hi = u64::from(self.read_register_for(pin, 1));
        lo | (hi << 32)
    }

    fn read_register_for(&self, pin: u32, half: u32) -> u32 {
        match u8::try_from(0x10 + pin.saturating_mul(2).saturating_add(half)) {
            Ok(i) if pin < PINS => self.read_register(i),
            _ => 0,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write_entry(io: &mut IoApic, pin: u32, value: u64) {
        io.mmio_write(IOREGSEL, 0x10 + pin * 2 + 1);
        io.mmio_write(IOWIN, (value >> 32) as u32);
        io.mmio_write(IOREGSEL, 0x10 + pin * 2);
        io.mmio_write(IOWIN, value as u32);
    }

    fn read_reg(io: &mut IoApic, index: u32) -> u32 {
        io.mmio_write(IOREGSEL, index);
        io.mmio_read(IOWIN)
    }

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new(2);
        assert_eq!(read_reg(&mut io, 0), 2 << 24);
        assert_eq!(read_reg(&mut io, 1), 0x0017_0020);
        assert_eq!(read_reg(&mut io, 2), 2 << 24);
        assert_eq!(read_reg(&mut io, 3), 0);
        assert_eq!(read_reg(&mut io, 0x40), 0);
        io.mmio_write(IOREGSEL, 0x1FF);
        assert_eq!(io.mmio_read(IOREGSEL), 0xFF);
        io.mmio_write(IOREGSEL, 0);
        io.mmio_write(IOWIN, 0x0F00_0000);
        assert_eq!(read_reg(&mut io, 0), 0x0F00_0000);
        assert_eq!(io.mmio_read(0x20), 0);
        // Reset: masked.
        assert_eq!(read_reg(&mut io, 0x10), 1 << 16);
    }

    #[test]
    fn edge_pins_deliver_on_rising_edges_while_unmasked() {
        let mut io = IoApic::new(0);
        write_entry(&mut io, 4, (3u64 << 56) | 0x31);
        io.set_irq(4, true);
        io.set_irq(4, false);
        assert_eq!(io.take_delivery(), Some(Delivery { vector: 0x31, mode: 0, dest: 3, logical: false, level: false }));
        assert_eq!(io.take_delivery(), None);
        // Holding high gives no more.
        io.set_irq(4, true);
        io.set_irq(4, true);
        assert!(io.take_delivery().is_some());
        assert_eq!(io.take_delivery(), None);
        io.set_irq(4, false);
        // Masked edges are lost, even after unmasking.
        write_entry(&mut io, 4, MASKED | 0x31);
        io.set_irq(4, true);
        io.set_irq(4, false);
        write_entry(&mut io, 4, 0x31);
        assert_eq!(io.take_delivery(), None);
    }

    #[test]
    fn edges_coalesce_until_taken_and_show_delivery_status() {
        let mut io = IoApic::new(0);
        write_entry(&mut io, 1, 0x41);
        for _ in 0..5 {
            io.set_irq(1, true);
            io.set_irq(1, false);
        }
        assert_ne!(read_reg(&mut io, 0x12) & (1 << 12), 0);
        assert!(io.take_delivery().is_some());
        assert_eq!(io.take_delivery(), None);
        assert_eq!(read_reg(&mut io, 0x12) & (1 << 12), 0);
    }

    #[test]
    fn level_pins_wait_for_eoi_and_redeliver_if_still_asserted() {
        let mut io = IoApic::new(0);
        write_entry(&mut io, 20, LEVEL | (1 << 11) | (1 << 8) | (0xFFu64 << 56) | 0x50);
        io.set_irq(20, true);
        let d = io.take_delivery().unwrap();
        assert_eq!(d, Delivery { vector: 0x50, mode: 1, dest: 0xFF, logical: true, level: true });
        assert_ne!(read_reg(&mut io, 0x10 + 40) & (1 << 14), 0);
        // Still asserted, but remote IRR holds it.
        io.set_irq(20, true);
        assert_eq!(io.take_delivery(), None);
        // EOI of another vector does nothing.
        io.eoi(0x51);
        assert_eq!(io.take_delivery(), None);
        io.eoi(0x50);
        assert!(io.take_delivery().is_some());
        // Deassert, then EOI via the register: no redelivery.
        io.set_irq(20, false);
        io.mmio_write(EOI, 0x50);
        assert_eq!(io.take_delivery(), None);
        assert_eq!(read_reg(&mut io, 0x10 + 40) & (1 << 14), 0);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut io = IoApic::new(0);
        write_entry(&mut io, 9, MASKED | LEVEL | 0x60);
        io.set_irq(9, true);
        assert_eq!(io.take_delivery(), None);
        write_entry(&mut io, 9, LEVEL | 0x60);
        assert_eq!(io.take_delivery().unwrap().vector, 0x60);
    }

    #[test]
    fn read_only_bits_ignore_writes_and_edge_switch_clears_remote_irr() {
        let mut io = IoApic::new(0);
        write_entry(&mut io, 3, DELIVERY_STATUS | REMOTE_IRR | 0x70);
        assert_eq!(read_reg(&mut io, 0x16), 0x70);
        write_entry(&mut io, 3, LEVEL | 0x70);
        io.set_irq(3, true);
        assert!(io.take_delivery().is_some());
        // Rewriting the low half keeps remote IRR.
        io.mmio_write(IOREGSEL, 0x16);
        io.mmio_write(IOWIN, (LEVEL | 0x70) as u32);
        assert_ne!(io.mmio_read(IOWIN) & (1 << 14), 0);
        // Edge then level: cleared, and the asserted pin is delivered again.
        io.mmio_write(IOWIN, 0x70);
        assert_eq!(io.mmio_read(IOWIN) & (1 << 14), 0);
        io.mmio_write(IOWIN, (LEVEL | 0x70) as u32);
        assert!(io.take_delivery().is_some());
    }

    #[test]
    fn nmi_mode_is_edge_even_if_programmed_level() {
        let mut io = IoApic::new(0);
        write_entry(&mut io, 2, LEVEL | (4 << 8) | 0x02);
        io.set_irq(2, true);
        let d = io.take_delivery().unwrap();
        assert_eq!((d.mode, d.level, d.vector), (4, false, 2));
        assert_eq!(read_reg(&mut io, 0x14) & (1 << 14), 0);
    }

    #[test]
    fn pins_past_24_are_ignored() {
        let mut io = IoApic::new(0);
        io.set_irq(24, true);
        io.set_irq(u32::MAX, true);
        assert_eq!(io.take_delivery(), None);
        assert_eq!(io.redirection(24), 0);
        assert_eq!(io.redirection(0), MASKED);
    }

    proptest! {
        #[test]
        fn arbitrary_traffic_never_panics_and_bounds_the_queue(ops in proptest::collection::vec(
            (0u8..5, any::<u64>(), any::<u32>()), 0..300)) {
            let mut io = IoApic::new(1);
            for (kind, a, b) in ops {
                match kind {
                    0 => io.mmio_write(a % 0x50, b),
                    1 => { io.mmio_read(a % 0x50); }
                    2 => io.set_irq((a % 26) as u32, b & 1 == 1),
                    3 => io.eoi(b as u8),
                    _ => {
                        let mut n = 0;
                        while io.take_delivery().is_some() { n += 1; }
                        prop_assert!(n <= PINS);
                    }
                }
                for pin in 0..PINS {
                    let e = io.redirection(pin);
                    // Remote IRR only on level-mode entries.
                    if e & REMOTE_IRR != 0 {
                        prop_assert!(IoApic::is_level(e));
                    }
                }
            }
        }
    }
}
