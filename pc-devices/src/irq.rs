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
