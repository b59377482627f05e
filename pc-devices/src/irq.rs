//! Interrupt lines. Devices raise and lower numbered lines (ISA IRQs 0-15,
//! which are also GSIs 0-15, and PCI-style GSIs 16-23) on a sink; the sink
//! is the VM's interrupt router (PIC pair plus IOAPIC), or a recorder in
//! tests.

use alloc::vec::Vec;

/// Where a device's interrupt output goes.
pub trait IrqSink {
    /// Sets line `gsi` to `level` (true = asserted). An edge-triggered
    /// device pulses: `set_irq(n, true)` then `set_irq(n, false)`.
    fn set_irq(&mut self, gsi: u32, level: bool);
}

/// A sink that records every change, for tests of the device models.
#[derive(Default, Debug)]
pub struct IrqLog {
    /// Every `(gsi, level)` the devices set, in order.
    pub events: Vec<(u32, bool)>,
}

impl IrqLog {
    /// How many times line `gsi` went from low to high.
    pub fn rising_edges(&self, gsi: u32) -> usize {
        let mut level = false;
        let mut n = 0;
        for &(g, l) in &self.events {
            if g == gsi {
                if l && !level {
                    n += 1;
                }
                level = l;
            }
        }
        n
    }
}

impl IrqSink for IrqLog {
    fn set_irq(&mut self, gsi: u32, level: bool) {
        self.events.push((gsi, level));
    }
}

/// Line changes a device access made, kept in order so a pulse (raise then
/// lower) still reads as an edge; bounded, since one access makes a few.
#[derive(Default, Debug)]
pub struct IrqLatch {
    events: Vec<(u32, bool)>,
    /// Changes dropped because the latch was full.
    pub overflow: u64,
}

/// Changes one latch holds before dropping.
pub const LATCH_MAX: usize = 32;

impl IrqLatch {
    /// Records a change (dropped and counted past [`LATCH_MAX`]).
    pub fn set(&mut self, gsi: u32, level: bool) {
        if self.events.len() >= LATCH_MAX {
            self.overflow += 1;
            return;
        }
        self.events.push((gsi, level));
    }

    /// The changes in order, emptying the latch.
    pub fn drain(&mut self) -> impl Iterator<Item = (u32, bool)> + '_ {
        self.events.drain(..)
    }

    /// Whether no change is waiting.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl IrqSink for IrqLatch {
    fn set_irq(&mut self, gsi: u32, level: bool) {
        self.set(gsi, level);
    }
}
