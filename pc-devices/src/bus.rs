//! One bus per address space of a VM (port I/O, MMIO): devices are objects
//! behind [`BusDevice`], found by the address range they were inserted at,
//! so adding a device is adding an object, never a new slot in a dispatcher.

use crate::irq::IrqLatch;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

/// What an access asks of the VM beyond the device's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// The device has work for the node (e.g. frames queued to send): end
    /// the vCPU's slice soon so the node services it.
    Kick,
    /// isa-debug-exit: stop the VM with this code.
    DebugExit(u32),
    /// ACPI sleep (S5) request: power the VM off.
    PowerOff,
    /// Reset request.
    Reset,
}

/// Guest RAM as a device may touch it (virtio rings, DMA): every access is
/// checked against the VM's RAM by the implementor and refused whole.
pub trait Memory {
    /// Fills `buf` from guest-physical `gpa`; false if any byte is outside RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Copies `data` to guest-physical `gpa`; false if any byte is outside RAM.
    fn write(&self, gpa: u64, data: &[u8]) -> bool;
}

/// What an access may use besides the device itself: the time, the VM's
/// RAM, and a latch for interrupt lines (applied to the interrupt
/// controllers after the access, so a device never holds them).
pub struct Env<'a> {
    /// Guest TSC now.
    pub now: u64,
    /// The VM's RAM.
    pub mem: &'a dyn Memory,
    /// Line changes the access made.
    pub irq: &'a mut IrqLatch,
}

/// A device on a bus; `Send` because the CPU running a vCPU reaches its
/// VM's buses while the node (another CPU) holds them too.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8], env: &mut Env<'_>);
    /// A write of `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8], env: &mut Env<'_>) -> Effect;
    /// The level of the device's interrupt line now (for level-triggered
    /// devices such as virtio-mmio); edge-triggered devices raise theirs
    /// through the context and keep the default.
    fn irq_level(&self) -> bool {
        false
    }
    /// A short name for the log and errors.
    fn name(&self) -> &'static str;
}

/// Why a device could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    BadRange { base: u64, len: u64 },
    /// The range overlaps a device already on the bus.
    Overlap { base: u64, len: u64, existing: &'static str },
    /// The bus holds its maximum number of devices.
    Full { max: usize },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::BadRange { base, len } => write!(f, "device range {base:#x}+{len:#x} is empty or wraps"),
            BusError::Overlap { base, len, existing } => {
                write!(f, "device range {base:#x}+{len:#x} overlaps the {existing} device")
            }
            BusError::Full { max } => write!(f, "bus already holds its limit of {max} devices"),
        }
    }
}

/// Devices a bus holds at most (a VM's config cannot ask for more).
pub const MAX_DEVICES: usize = 64;

struct Entry {
    base: u64,
    len: u64,
    /// The line the device's `irq_level` drives, if any.
    gsi: Option<u32>,
    dev: Box<dyn BusDevice>,
}

/// Where an access landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A device took it.
    Device(Effect),
    /// No device covers the whole access: reads see all-ones (ports) or
    /// zeros (MMIO), as the caller decides, and writes are dropped.
    Unclaimed,
}

/// An address space of one VM.
#[derive(Default)]
pub struct Bus {
    /// Sorted by base, never overlapping.
    entries: Vec<Entry>,
}

impl Bus {
    /// Adds `dev` at `[base, base + len)`, driving line `gsi` if given.
    pub fn insert(&mut self, base: u64, len: u64, gsi: Option<u32>, dev: Box<dyn BusDevice>) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base, len })?;
        if self.entries.len() >= MAX_DEVICES {
            return Err(BusError::Full { max: MAX_DEVICES });
        }
        if let Some(e) = self.entries.iter().find(|e| base < e.base + e.len && e.base < end) {
            return Err(BusError::Overlap { base, len, existing: e.dev.name() });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, gsi, dev });
        Ok(())
    }

    fn find(&mut self, addr: u64, size: usize) -> Option<(&mut Entry, u64)> {
        let i = self.entries.partition_point(|e| e.base <= addr).checked_sub(1)?;
        let e = self.entries.get_mut(i)?;
        let off = addr - e.base;
        let size = u64::try_from(size).ok()?;
        (off.checked_add(size)? <= e.len).then_some((e, off))
    }

    /// Reads `data.len()` bytes at `addr`.
    pub fn read(&mut self, addr: u64, data: &mut [u8], env: &mut Env<'_>) -> Access {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                e.dev.read(off, data, env);
                Access::Device(Effect::None)
            }
            None => Access::Unclaimed,
        }
    }

    /// Writes `data` at `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8], env: &mut Env<'_>) -> Access {
        match self.find(addr, data.len()) {
            Some((e, off)) => Access::Device(e.dev.write(off, data, env)),
            None => Access::Unclaimed,
        }
    }

    /// Whether some device covers `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.entries.iter().any(|e| (e.base..e.base + e.len).contains(&addr))
    }

    /// The level-triggered lines and their levels now, for the router.
    pub fn irq_levels(&self) -> impl Iterator<Item = (u32, bool)> + '_ {
        self.entries.iter().filter_map(|e| e.gsi.map(|g| (g, e.dev.irq_level())))
    }

    /// The devices with their ranges, for the log and the firmware tables.
    pub fn devices(&self) -> impl Iterator<Item = (u64, u64, Option<u32>, &'static str)> + '_ {
        self.entries.iter().map(|e| (e.base, e.len, e.gsi, e.dev.name()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    struct NoRam;

    impl Memory for NoRam {
        fn read(&self, _gpa: u64, _buf: &mut [u8]) -> bool {
            false
        }
        fn write(&self, _gpa: u64, _data: &[u8]) -> bool {
            false
        }
    }

    struct Reg {
        value: u8,
        level: bool,
    }

    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8], env: &mut Env<'_>) {
            env.irq.set(3, true);
            data.fill(self.value.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8], _env: &mut Env<'_>) -> Effect {
            self.value = data.first().copied().unwrap_or(0);
            self.level = true;
            Effect::Kick
        }
        fn irq_level(&self) -> bool {
            self.level
        }
        fn name(&self) -> &'static str {
            "reg"
        }
    }

    fn reg() -> Box<dyn BusDevice> {
        Box::new(Reg { value: 0x10, level: false })
    }

    #[test]
    fn accesses_reach_the_device_covering_them_whole() {
        let mut bus = Bus::default();
        bus.insert(0x100, 8, Some(5), reg()).unwrap();
        bus.insert(0x10, 4, None, reg()).unwrap();
        let mut latch = IrqLatch::default();
        let mut env = Env { now: 0, mem: &NoRam, irq: &mut latch };
        let mut b = [0u8; 2];
        assert_eq!(bus.read(0x102, &mut b, &mut env), Access::Device(Effect::None));
        assert_eq!(b, [0x12, 0x12]);
        // Straddling the end of a device, or before the first: unclaimed.
        assert_eq!(bus.read(0x107, &mut b, &mut env), Access::Unclaimed);
        assert_eq!(bus.read(0x0, &mut b, &mut env), Access::Unclaimed);
        assert_eq!(bus.write(0x100, &[7], &mut env), Access::Device(Effect::Kick));
        assert_eq!(bus.irq_levels().collect::<Vec<_>>(), vec![(5, true)]);
        assert_eq!(latch.drain().collect::<Vec<_>>(), vec![(3, true)]);
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused_by_name() {
        let mut bus = Bus::default();
        bus.insert(0x100, 8, None, reg()).unwrap();
        assert_eq!(bus.insert(0x104, 8, None, reg()), Err(BusError::Overlap { base: 0x104, len: 8, existing: "reg" }));
        assert!(bus.insert(0xFC, 8, None, reg()).unwrap_err().to_string().contains("overlaps the reg"));
        assert!(matches!(bus.insert(5, 0, None, reg()), Err(BusError::BadRange { .. })));
        assert!(matches!(bus.insert(u64::MAX, 2, None, reg()), Err(BusError::BadRange { .. })));
        bus.insert(0x108, 8, None, reg()).unwrap();
    }

    #[test]
    fn the_bus_refuses_devices_past_its_limit() {
        let mut bus = Bus::default();
        for i in 0..MAX_DEVICES as u64 {
            bus.insert(i * 16, 16, None, reg()).unwrap();
        }
        assert_eq!(bus.insert(0x10_0000, 1, None, reg()), Err(BusError::Full { max: MAX_DEVICES }));
    }
}
