//! The 8259A PIC pair of a PC (master at 0x20, slave at 0xA0, ELCR at 0x4D0).
//!
//! The slave's INT output drives the master's IR2: its rising edges latch
//! IR2 in the master's IRR (so a slave request that vanishes before INTA
//! still reaches the master and yields the slave's spurious IRQ 15), and
//! while it is high IR2 stays requested (so a slave output that never
//! drops between requests is not lost). ISA IRQ 2 itself does not exist
//! (`set_irq(2, _)` is ignored while the slave is cascaded). Per-line trigger mode comes from
//! the ELCR (or ICW1 LTIM for a whole chip): edge lines latch rising edges
//! in IRR until acknowledged, level lines follow their input.
//!
//! Implemented: the ICW1-ICW4 sequence (LTIM, SNGL, IC4; ICW2 base; ICW3;
//! ICW4 AEOI), OCW1, every OCW2 command (non-specific, specific and
//! rotating EOIs, set priority, rotate in AEOI), OCW3 (IRR/ISR select,
//! poll, special mask mode). Not implemented: special fully nested mode
//! and buffered mode (ICW4 bits stored only), MCS-80 call sequences.

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xA0;
const SLAVE_DATA: u16 = 0xA1;
const ELCR_MASTER: u16 = 0x4D0;
const ELCR_SLAVE: u16 = 0x4D1;
/// ELCR bits that may be set: IRQs 0, 1 and 2 (master) and 8 and 13
/// (slave) are always edge.
const ELCR_MASTER_WRITABLE: u8 = 0xF8;
const ELCR_SLAVE_WRITABLE: u8 = 0xDE;
/// The master's input the slave is wired to.
const CASCADE_LINE: u8 = 2;

/// One 8259A.
#[derive(Clone, Debug)]
struct Chip {
    /// Latched (edge) or live (level) requests, without the cascade input.
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input line levels, for edge detection.
    lines: u8,
    elcr: u8,
    elcr_writable: u8,
    /// Next data-port write is ICW2/3/4 (0 = none expected).
    init_step: u8,
    ltim: bool,
    single: bool,
    ic4: bool,
    base: u8,
    icw3: u8,
    icw4: u8,
    aeoi: bool,
    rotate_on_aeoi: bool,
    /// The line with the highest priority (lowest priority is `base - 1`).
    priority_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
}

impl Chip {
    fn new(base: u8, icw3: u8, elcr_writable: u8) -> Chip {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0xFF,
            lines: 0,
            elcr: 0,
            elcr_writable,
            init_step: 0,
            ltim: false,
            single: false,
            ic4: true,
            base,
            icw3,
            icw4: 1,
            aeoi: false,
            rotate_on_aeoi: false,
            priority_base: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
        }
    }

    fn level_mask(&self) -> u8 {
        if self.ltim {
            0xFF
        } else {
            self.elcr
        }
    }

    fn set_line(&mut self, line: u8, level: bool) {
        let bit = 1u8 << (line & 7);
        if self.level_mask() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.lines & bit == 0 {
            self.irr |= bit;
        }
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// The highest-priority line set in `bits`, in rotated order.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8u8).map(|i| (i + self.priority_base) & 7).find(|&l| bits & (1 << l) != 0)
    }

    /// Rotated priority rank of `line` (0 = highest).
    fn rank(&self, line: u8) -> u8 {
        line.wrapping_sub(self.priority_base) & 7
    }

    /// The line this chip would present on INT, given the cascade input.
    fn request(&self, cascade: Option<bool>) -> Option<u8> {
        let mut irr = self.irr;
        if let Some(c) = cascade {
            let bit = 1 << CASCADE_LINE;
            irr = if c { irr | bit } else { irr & !bit };
        }
        let req = self.highest(irr & !self.imr)?;
        let isr = if self.special_mask { self.isr & !self.imr } else { self.isr };
        match self.highest(isr) {
            Some(s) if self.rank(s) <= self.rank(req) => None,
            _ => Some(req),
        }
    }

    /// INTA (or poll) for `line`: IRR to ISR (or not, in AEOI).
    fn ack(&mut self, line: u8) {
        let bit = 1u8 << (line & 7);
        if self.level_mask() & bit == 0 {
            self.irr &= !bit;
        }
        if self.aeoi {
            if self.rotate_on_aeoi {
                self.priority_base = (line + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
    }

    fn write_cmd(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1.
            self.ltim = value & 0x08 != 0;
            self.single = value & 0x02 != 0;
            self.ic4 = value & 0x01 != 0;
            if !self.ic4 {
                self.icw4 = 0;
                self.aeoi = false;
            }
            self.init_step = 2;
            self.imr = 0;
            self.isr = 0;
            // Edge sense reset: latched edges are forgotten, live levels stay.
            self.irr &= self.lines & self.level_mask();
            self.priority_base = 0;
            self.special_mask = false;
            self.read_isr = false;
            self.poll = false;
            self.rotate_on_aeoi = false;
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            // OCW2.
            let level = value & 7;
            match value >> 5 {
                0b001 | 0b101 => {
                    if let Some(l) = self.highest(self.isr) {
                        self.isr &= !(1 << l);
                        if value >> 5 == 0b101 {
                            self.priority_base = (l + 1) & 7;
                        }
                    }
                }
                0b011 => self.isr &= !(1 << level),
                0b111 => {
                    self.isr &= !(1 << level);
                    self.priority_base = (level + 1) & 7;
                }
                0b110 => self.priority_base = (level + 1) & 7,
                0b100 => self.rotate_on_aeoi = true,
                0b000 => self.rotate_on_aeoi = false,
                _ => {}
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            2 => {
                self.base = value & 0xF8;
                self.init_step = if !self.single {
                    3
                } else if self.ic4 {
                    4
                } else {
                    0
                };
            }
            3 => {
                self.icw3 = value;
                self.init_step = if self.ic4 { 4 } else { 0 };
            }
            4 => {
                self.icw4 = value & 0x1F;
                self.aeoi = value & 0x02 != 0;
                self.init_step = 0;
            }
            _ => self.imr = value,
        }
    }

    fn write_elcr(&mut self, value: u8) {
        self.elcr = value & self.elcr_writable;
        // Lines now level-triggered show their live level.
        let lm = self.level_mask();
        self.irr = (self.irr & !lm) | (self.lines & lm);
    }
}

/// The master/slave 8259A pair.
#[derive(Clone, Debug)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Pic::new()
    }
}

impl Pic {
    /// The pair as a BIOS leaves it: initialised (master vectors 0x08,
    /// slave 0x70, slave on IR2), every line masked, edge-triggered.
    pub fn new() -> Pic {
        Pic {
            master: Chip::new(0x08, 1 << CASCADE_LINE, ELCR_MASTER_WRITABLE),
            slave: Chip::new(0x70, 2, ELCR_SLAVE_WRITABLE),
        }
    }

    /// Whether the master has the slave on IR2 (cascade mode, ICW3 bit 2).
    fn cascaded(&self) -> bool {
        !self.master.single && self.master.icw3 & (1 << CASCADE_LINE) != 0
    }

    fn cascade_input(&self) -> Option<bool> {
        self.cascaded().then(|| self.slave.request(None).is_some() || self.master.irr & (1 << CASCADE_LINE) != 0)
    }

    /// Latches a rising edge of the slave's INT output into the master's
    /// IR2; called after anything that may change the slave's output.
    fn sync_cascade(&mut self) {
        let out = self.slave.request(None).is_some();
        if self.cascaded() {
            self.master.set_line(CASCADE_LINE, out);
        }
    }

    /// The master's interrupt mask (OCW1), for callers that need to know
    /// whether a line can reach the CPU at all.
    pub fn imr(&self) -> u8 {
        self.master.imr
    }

    /// The master's INTR output: an interrupt the CPU should acknowledge.
    pub fn interrupt_pending(&self) -> bool {
        self.master.request(self.cascade_input()).is_some()
    }

    /// Sets ISA IRQ `irq` (0-15; others ignored) to `level`.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_LINE if self.cascaded() => {}
            0..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => {}
        }
        self.sync_cascade();
    }

    /// The INTA cycle: the vector the CPU receives. A request that vanished
    /// before INTA gives the spurious vector of IR7 (base + 7) with no ISR
    /// bit set; a vanished slave request gives the slave's IR7 (IRQ 15)
    /// vector, with the master's IR2 in service as on real hardware (the
    /// guest EOIs the master only).
    pub fn acknowledge(&mut self) -> u8 {
        let v = self.inta();
        self.sync_cascade();
        v
    }

    fn inta(&mut self) -> u8 {
        let cascade = self.cascade_input();
        let Some(line) = self.master.request(cascade) else {
            return self.master.base | 7;
        };
        self.master.ack(line);
        if line == CASCADE_LINE && self.cascaded() {
            match self.slave.request(None) {
                Some(s) => {
                    self.slave.ack(s);
                    self.slave.base | s
                }
                None => self.slave.base | 7,
            }
        } else {
            self.master.base | line
        }
    }

    fn poll(chip: &mut Chip, cascade: Option<bool>) -> u8 {
        chip.poll = false;
        match chip.request(cascade) {
            Some(l) => {
                chip.ack(l);
                0x80 | l
            }
            None => 0,
        }
    }

    /// Guest read of 0x20/0x21/0xA0/0xA1/0x4D0/0x4D1 (others read 0xFF).
    pub fn port_read(&mut self, port: u16) -> u8 {
        let v = self.read_register(port);
        self.sync_cascade();
        v
    }

    fn read_register(&mut self, port: u16) -> u8 {
        let cascade = self.cascade_input();
        match port {
            MASTER_CMD if self.master.poll => Pic::poll(&mut self.master, cascade),
            SLAVE_CMD if self.slave.poll => Pic::poll(&mut self.slave, None),
            MASTER_CMD => {
                if self.master.read_isr {
                    self.master.isr
                } else {
                    match cascade {
                        Some(true) => self.master.irr | (1 << CASCADE_LINE),
                        Some(false) => self.master.irr & !(1 << CASCADE_LINE),
                        None => self.master.irr,
                    }
                }
            }
            SLAVE_CMD => {
                if self.slave.read_isr {
                    self.slave.isr
                } else {
                    self.slave.irr
                }
            }
            MASTER_DATA => self.master.imr,
            SLAVE_DATA => self.slave.imr,
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => 0xFF,
        }
    }

    /// Guest write of 0x20/0x21/0xA0/0xA1/0x4D0/0x4D1 (others dropped).
    pub fn port_write(&mut self, port: u16, value: u8) {
        match port {
            MASTER_CMD => self.master.write_cmd(value),
            SLAVE_CMD => self.slave.write_cmd(value),
            MASTER_DATA => self.master.write_data(value),
            SLAVE_DATA => self.slave.write_data(value),
            ELCR_MASTER => self.master.write_elcr(value),
            ELCR_SLAVE => self.slave.write_elcr(value),
            _ => {}
        }
        self.sync_cascade();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Linux's init_8259A sequence (vectors 0x30 / 0x38), then all unmasked.
    fn linux_pic(auto_eoi: bool) -> Pic {
        let mut p = Pic::new();
        p.port_write(0x21, 0xFF);
        p.port_write(0xA1, 0xFF);
        p.port_write(0x20, 0x11);
        p.port_write(0x21, 0x30);
        p.port_write(0x21, 0x04);
        p.port_write(0x21, if auto_eoi { 0x03 } else { 0x01 });
        p.port_write(0xA0, 0x11);
        p.port_write(0xA1, 0x38);
        p.port_write(0xA1, 0x02);
        p.port_write(0xA1, 0x01);
        p.port_write(0x21, 0x00);
        p.port_write(0xA1, 0x00);
        p
    }

    #[test]
    fn imr_reads_back_what_was_written() {
        let mut p = Pic::new();
        for v in [0xFF, 0x00, 0xA5, 0xFB] {
            p.port_write(0x21, v);
            p.port_write(0xA1, !v);
            assert_eq!(p.port_read(0x21), v);
            assert_eq!(p.port_read(0xA1), !v);
        }
    }

    #[test]
    fn reset_state_is_masked() {
        let mut p = Pic::new();
        p.set_irq(0, true);
        assert!(!p.interrupt_pending());
        p.port_write(0x21, 0xFE);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x08);
    }

    #[test]
    fn edge_irq_is_latched_acknowledged_and_eoied() {
        let mut p = linux_pic(false);
        p.set_irq(1, true);
        p.set_irq(1, false);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x31);
        assert!(!p.interrupt_pending());
        p.port_write(0x20, 0x0B);
        assert_eq!(p.port_read(0x20), 0x02);
        // IRQ 0 has higher priority and preempts; IRQ 3 waits.
        p.set_irq(3, true);
        assert!(!p.interrupt_pending());
        p.set_irq(0, true);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x30);
        p.port_write(0x20, 0x20);
        assert_eq!(p.port_read(0x20), 0x02);
        p.port_write(0x20, 0x20);
        assert_eq!(p.port_read(0x20), 0x00);
        assert_eq!(p.acknowledge(), 0x33);
    }

    #[test]
    fn slave_irqs_cascade_through_irq2() {
        let mut p = linux_pic(false);
        p.set_irq(8, true);
        p.set_irq(8, false);
        assert!(p.interrupt_pending());
        assert_eq!(p.port_read(0x20) & 0x04, 0x04);
        assert_eq!(p.acknowledge(), 0x38);
        p.port_write(0x20, 0x0B);
        p.port_write(0xA0, 0x0B);
        assert_eq!(p.port_read(0x20), 0x04);
        assert_eq!(p.port_read(0xA0), 0x01);
        // Linux's specific EOIs.
        p.port_write(0xA0, 0x60);
        p.port_write(0x20, 0x62);
        assert_eq!(p.port_read(0x20), 0);
        assert_eq!(p.port_read(0xA0), 0);
    }

    #[test]
    fn vanished_requests_are_spurious_without_isr() {
        let mut p = linux_pic(false);
        p.port_write(0x4D0, 0x20);
        p.set_irq(5, true);
        assert!(p.interrupt_pending());
        p.set_irq(5, false);
        assert_eq!(p.acknowledge(), 0x37);
        p.port_write(0x20, 0x0B);
        assert_eq!(p.port_read(0x20), 0);
        // Slave: vector 0x3F, the master's IR2 in service.
        p.port_write(0x4D1, 0x02);
        p.set_irq(9, true);
        assert!(p.interrupt_pending());
        p.set_irq(9, false);
        assert_eq!(p.acknowledge(), 0x3F);
        p.port_write(0xA0, 0x0B);
        assert_eq!(p.port_read(0xA0), 0);
        assert_eq!(p.port_read(0x20), 0x04);
    }

    #[test]
    fn level_lines_follow_the_input_and_elcr_protects_fixed_bits() {
        let mut p = linux_pic(false);
        p.port_write(0x4D0, 0xFF);
        p.port_write(0x4D1, 0xFF);
        assert_eq!(p.port_read(0x4D0), 0xF8);
        assert_eq!(p.port_read(0x4D1), 0xDE);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), 0x3B);
        p.port_write(0xA0, 0x20);
        p.port_write(0x20, 0x20);
        // Still asserted: again.
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x3B);
        // The handler quiets the device, then EOIs: nothing more.
        p.set_irq(11, false);
        p.port_write(0xA0, 0x20);
        p.port_write(0x20, 0x20);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn a_slave_output_that_stays_high_is_not_lost() {
        let mut p = linux_pic(false);
        // Slave in auto-EOI: after the first INTA its output never drops.
        p.port_write(0xA0, 0x11);
        p.port_write(0xA1, 0x38);
        p.port_write(0xA1, 0x02);
        p.port_write(0xA1, 0x03);
        p.set_irq(8, true);
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), 0x38);
        assert!(!p.interrupt_pending());
        p.port_write(0x20, 0x20);
        assert_eq!(p.acknowledge(), 0x39);
    }

    #[test]
    fn auto_eoi_sets_no_isr_bit() {
        let mut p = linux_pic(true);
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), 0x34);
        p.port_write(0x20, 0x0B);
        assert_eq!(p.port_read(0x20), 0);
        p.set_irq(4, false);
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), 0x34);
    }

    #[test]
    fn poll_command_acknowledges() {
        let mut p = linux_pic(false);
        p.port_write(0x20, 0x0C);
        assert_eq!(p.port_read(0x20), 0);
        p.set_irq(6, true);
        p.port_write(0x20, 0x0C);
        assert_eq!(p.port_read(0x20), 0x86);
        p.port_write(0x20, 0x0B);
        assert_eq!(p.port_read(0x20), 0x40);
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_through() {
        let mut p = linux_pic(false);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x33);
        p.set_irq(5, true);
        assert!(!p.interrupt_pending());
        // Mask IRQ 3 and enter special mask mode.
        p.port_write(0x21, 0x08);
        p.port_write(0x20, 0x68);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x35);
        p.port_write(0x20, 0x48);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn rotation_changes_priority() {
        let mut p = linux_pic(false);
        // Set priority: IRQ 4 lowest, so 5 is highest.
        p.port_write(0x20, 0xC4);
        p.set_irq(1, true);
        p.set_irq(6, true);
        assert_eq!(p.acknowledge(), 0x36);
        // Rotate on non-specific EOI: 6 becomes lowest.
        p.port_write(0x20, 0xA0);
        assert_eq!(p.acknowledge(), 0x31);
    }

    #[test]
    fn icw1_resets_masks_and_latches() {
        let mut p = linux_pic(false);
        p.set_irq(3, true);
        p.port_write(0x21, 0xFF);
        p.port_write(0x20, 0x11);
        p.port_write(0x21, 0x20);
        p.port_write(0x21, 0x04);
        p.port_write(0x21, 0x01);
        assert_eq!(p.port_read(0x21), 0);
        assert!(!p.interrupt_pending());
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x23);
    }

    proptest! {
        #[test]
        fn arbitrary_traffic_keeps_invariants(ops in proptest::collection::vec(
            (0u8..4, 0u8..6, any::<u8>()), 0..300)) {
            let ports = [0x20u16, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1];
            let mut p = Pic::new();
            for (kind, pi, v) in ops {
                let port = ports[usize::from(pi)];
                match kind {
                    0 => p.port_write(port, v),
                    1 => { p.port_read(port); }
                    2 => p.set_irq(v % 18, v & 0x80 != 0),
                    _ => {
                        let pending = p.interrupt_pending();
                        let isr_before = p.master.isr;
                        let vec = p.acknowledge();
                        if !pending {
                            prop_assert_eq!(vec, p.master.base | 7);
                            prop_assert_eq!(p.master.isr, isr_before);
                        }
                    }
                }
                prop_assert_eq!(p.master.elcr & !ELCR_MASTER_WRITABLE, 0);
                prop_assert_eq!(p.slave.elcr & !ELCR_SLAVE_WRITABLE, 0);
                if p.master.init_step == 0 && p.slave.init_step == 0 {
                    p.port_write(0x21, v);
                    prop_assert_eq!(p.port_read(0x21), v);
                }
            }
        }
    }
}
