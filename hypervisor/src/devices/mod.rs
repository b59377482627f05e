//! The devices of one VM. Port I/O and MMIO each go through one
//! [`pc_devices::bus::Bus`] keyed by address range; every device is an
//! object on it, created from the VM's config, so adding a device adds an
//! object. The chipset (local APIC, IOAPIC, PIC, PIT, RTC, ACPI PM) is one
//! shared object whose ports and IOAPIC window sit on the buses; the local
//! APIC page is the vCPU's own and is checked before the MMIO bus, as on a
//! CPU. After every access the line levels of the level-triggered devices
//! are sampled into the chipset.

pub mod agent;
pub mod console;
pub mod legacy;
pub mod virtio;

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use pc_devices::bus::{Access, Bus, BusDevice, BusError, Effect, Env, Memory};
use pc_devices::chipset::{Chipset, PORT_RANGES};
use pc_devices::irq::IrqLatch;
use spin::Mutex;

/// A device the VM's bus and the node both reach.
pub type Shared<T> = Arc<Mutex<T>>;

/// A shared device as a bus entry.
struct Handle<T>(Shared<T>);

impl<T: BusDevice> BusDevice for Handle<T> {
    fn read(&mut self, offset: u64, data: &mut [u8], env: &mut Env<'_>) {
        self.0.lock().read(offset, data, env);
    }

    fn write(&mut self, offset: u64, data: &[u8], env: &mut Env<'_>) -> Effect {
        self.0.lock().write(offset, data, env)
    }

    fn irq_level(&self) -> bool {
        self.0.lock().irq_level()
    }

    fn name(&self) -> &'static str {
        self.0.lock().name()
    }
}

/// One block of the chipset's ports (or its IOAPIC window) on a bus.
struct ChipWindow {
    chip: Shared<Chipset>,
    base: u64,
    mmio: bool,
}

fn le_value(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    for (d, s) in v.iter_mut().zip(data) {
        *d = *s;
    }
    u64::from_le_bytes(v)
}

impl BusDevice for ChipWindow {
    fn read(&mut self, offset: u64, data: &mut [u8], env: &mut Env<'_>) {
        let addr = self.base + offset;
        let size = data.len() as u8;
        let mut chip = self.chip.lock();
        let v = if self.mmio {
            chip.mmio_read(addr, size, env.now).unwrap_or(0)
        } else {
            u64::from(chip.port_read(addr as u16, size, env.now))
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = (v >> (8 * i)) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], env: &mut Env<'_>) -> Effect {
        let addr = self.base + offset;
        let size = data.len() as u8;
        let value = le_value(data);
        let mut chip = self.chip.lock();
        if self.mmio {
            chip.mmio_write(addr, size, value, env.now);
            Effect::None
        } else {
            chip.port_write(addr as u16, size, value as u32, env.now)
        }
    }

    fn name(&self) -> &'static str {
        if self.mmio {
            "ioapic"
        } else {
            "chipset"
        }
    }
}

/// Everything a VM's guest can reach besides its RAM. Cloning gives
/// another handle to the same devices: the CPU running the vCPU and the
/// node (network, management) each hold one; every device sits behind its
/// own lock, held only for one access, never across a VM entry.
#[derive(Clone)]
pub struct VmDevices {
    /// The port space.
    pub pio: Shared<Bus>,
    /// The MMIO space outside RAM.
    pub mmio: Shared<Bus>,
    /// Interrupt controllers and timers.
    pub chip: Shared<Chipset>,
    /// COM1.
    pub console: Shared<console::Console>,
    /// The NIC, when the VM has one.
    pub nic: Option<Shared<virtio::NetSlot>>,
    /// The disk, when the VM has one.
    pub disk: Option<Shared<virtio::DiskSlot>>,
    /// The guest agent's relay and the address space that registered it.
    pub agent: Shared<agent::AgentChannel>,
    /// COM2, the agent's doorbell.
    pub doorbell: Shared<agent::Doorbell>,
    /// Accesses no device claimed.
    pub unclaimed: Arc<Unclaimed>,
    /// The physical CPU each vCPU of the VM is placed on, for kicks.
    pub homes: Arc<VcpuHomes>,
}

/// Where each vCPU of a VM runs (per-CPU index), so an interrupt for one
/// of them can kick the right physical CPU.
#[derive(Default)]
pub struct VcpuHomes([core::sync::atomic::AtomicUsize; pc_devices::ipi::MAX_VCPUS]);

impl VcpuHomes {
    /// vCPU `vcpu` now runs on physical CPU `cpu`.
    pub fn set(&self, vcpu: usize, cpu: usize) {
        if let Some(h) = self.0.get(vcpu) {
            h.store(cpu, Ordering::Relaxed);
        }
    }

    /// The physical CPU of vCPU `vcpu`.
    pub fn get(&self, vcpu: usize) -> Option<usize> {
        self.0.get(vcpu).map(|h| h.load(Ordering::Relaxed))
    }
}

/// Guest accesses no device answered, for the stop report and tests.
#[derive(Default)]
pub struct Unclaimed {
    pub pio: AtomicU64,
    pub mmio: AtomicU64,
}

/// What a bus access came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A device took it, with this effect.
    Done(Effect),
    /// No device is there.
    Unclaimed,
}

impl VmDevices {
    /// The platform every VM has: chipset, COM1 and the legacy ports.
    pub fn new(name: &str, chip: Chipset) -> Result<VmDevices, BusError> {
        let chip = Arc::new(Mutex::new(chip));
        let console = Arc::new(Mutex::new(console::Console::new(name)));
        let mut pio = Bus::default();
        let mut mmio = Bus::default();
        for (base, len) in PORT_RANGES {
            pio.insert(
                u64::from(base),
                u64::from(len),
                None,
                Box::new(ChipWindow { chip: chip.clone(), base: u64::from(base), mmio: false }),
            )?;
        }
        mmio.insert(
            pc_devices::ioapic::IOAPIC_BASE,
            pc_devices::ioapic::IOAPIC_WINDOW,
            None,
            Box::new(ChipWindow { chip: chip.clone(), base: pc_devices::ioapic::IOAPIC_BASE, mmio: true }),
        )?;
        pio.insert(u64::from(console::COM1_BASE), 8, Some(console::COM1_GSI), Box::new(Handle(console.clone())))?;
        let doorbell = Arc::new(Mutex::new(agent::Doorbell::new()));
        pio.insert(u64::from(agent::COM2_BASE), 8, Some(agent::COM2_GSI), Box::new(Handle(doorbell.clone())))?;
        pio.insert(u64::from(legacy::DEBUG_EXIT_PORT), 4, None, Box::new(legacy::DebugExit))?;
        pio.insert(0x80, 1, None, Box::new(legacy::PostPort))?;
        pio.insert(0x92, 1, None, Box::new(legacy::SystemControlA))?;
        pio.insert(0x64, 1, None, Box::new(legacy::KbcCommand))?;
        pio.insert(0xCF8, 8, None, Box::new(legacy::PciConfig::default()))?;
        for port in [0xB004, 0x4004] {
            pio.insert(port, 2, None, Box::new(legacy::FirmwareSleepPort))?;
        }
        Ok(VmDevices {
            pio: Arc::new(Mutex::new(pio)),
            mmio: Arc::new(Mutex::new(mmio)),
            chip,
            console,
            nic: None,
            disk: None,
            agent: Arc::new(Mutex::new(agent::AgentChannel::new())),
            doorbell,
            unclaimed: Arc::new(Unclaimed::default()),
            homes: Arc::new(VcpuHomes::default()),
        })
    }

    /// Devices of a VM that never ran: a console and a chipset, no buses.
    pub fn bare(name: &str, chip: Chipset) -> VmDevices {
        VmDevices {
            pio: Arc::new(Mutex::new(Bus::default())),
            mmio: Arc::new(Mutex::new(Bus::default())),
            chip: Arc::new(Mutex::new(chip)),
            console: Arc::new(Mutex::new(console::Console::new(name))),
            nic: None,
            disk: None,
            agent: Arc::new(Mutex::new(agent::AgentChannel::new())),
            doorbell: Arc::new(Mutex::new(agent::Doorbell::new())),
            unclaimed: Arc::new(Unclaimed::default()),
            homes: Arc::new(VcpuHomes::default()),
        }
    }

    /// Rings the agent's doorbell if the relay has news for it.
    pub fn ring_agent(&self) {
        let mut agent = self.agent.lock();
        let mut bell = self.doorbell.lock();
        agent.ring_if_needed(&mut bell);
    }

    /// Gives the VM a virtio-net NIC; returns its base address.
    pub fn attach_nic(&mut self, mac: [u8; 6], port: vswitch::policy::PortId) -> Result<u64, BusError> {
        let (base, gsi) = virtio::slot(virtio::NIC_SLOT);
        let nic = Arc::new(Mutex::new(virtio::NetSlot::new(mac, port)));
        self.mmio.lock().insert(base, virtio::SLOT_SIZE, Some(gsi), Box::new(Handle(nic.clone())))?;
        self.nic = Some(nic);
        Ok(base)
    }

    /// Gives the VM a virtio-blk disk; returns its base address.
    pub fn attach_disk(&mut self, disk: crate::storage::GuestDisk) -> Result<u64, BusError> {
        let (base, gsi) = virtio::slot(virtio::DISK_SLOT);
        let slot = virtio::DiskSlot { dev: virtio_dev::MmioDevice::new(virtio_dev::VirtioBlk::new(disk)) };
        let slot = Arc::new(Mutex::new(slot));
        self.mmio.lock().insert(base, virtio::SLOT_SIZE, Some(gsi), Box::new(Handle(slot.clone())))?;
        self.disk = Some(slot);
        Ok(base)
    }

    /// The virtio devices as the firmware tables announce them.
    pub fn virtio_devices(&self) -> alloc::vec::Vec<(u64, u64, u32)> {
        self.mmio
            .lock()
            .devices()
            .filter(|d| d.0 >= virtio::WINDOW_BASE)
            .filter_map(|(b, l, g, _)| Some((b, l, g?)))
            .collect()
    }

    /// Takes every device off the buses (the VM stopped) and releases the
    /// disk's volume; the NIC handle stays until the network has logged
    /// its counters (it receives nothing: the VM is not running).
    /// Every handle holding the disk must detach for its volume to close.
    pub fn detach_all(&mut self) {
        *self.pio.lock() = Bus::default();
        *self.mmio.lock() = Bus::default();
        self.disk = None;
    }

    /// Copies the level-triggered devices' lines into the chipset. Lock
    /// order: a bus, then the chipset (never the other way round).
    pub fn sample_lines(&self) {
        let mut levels = [(0u32, false); 16];
        let mut n = 0;
        for bus in [&self.pio, &self.mmio] {
            for (gsi, level) in bus.lock().irq_levels() {
                if let Some(slot) = levels.get_mut(n) {
                    *slot = (gsi, level);
                    n += 1;
                }
            }
        }
        let mut chip = self.chip.lock();
        for &(gsi, level) in levels.iter().take(n) {
            chip.set_gsi(gsi, level);
        }
    }

    fn finish(&self, latch: &mut IrqLatch) {
        if !latch.is_empty() {
            let mut chip = self.chip.lock();
            for (gsi, level) in latch.drain() {
                chip.set_gsi(gsi, level);
            }
        }
        self.sample_lines();
    }

    /// A port read (all ones where nothing answers, as on a PC).
    pub fn port_read(&self, port: u16, data: &mut [u8], mem: &dyn Memory, now: u64) {
        let mut latch = IrqLatch::default();
        let mut env = Env { now, mem, irq: &mut latch };
        let r = self.pio.lock().read(u64::from(port), data, &mut env);
        if r == Access::Unclaimed {
            self.unclaimed.pio.fetch_add(1, Ordering::Relaxed);
            data.fill(0xFF);
        }
        self.finish(&mut latch);
    }

    /// A port write.
    pub fn port_write(&self, port: u16, data: &[u8], mem: &dyn Memory, now: u64) -> Effect {
        let mut latch = IrqLatch::default();
        let mut env = Env { now, mem, irq: &mut latch };
        let r = self.pio.lock().write(u64::from(port), data, &mut env);
        let effect = match r {
            Access::Device(e) => e,
            Access::Unclaimed => {
                self.unclaimed.pio.fetch_add(1, Ordering::Relaxed);
                Effect::None
            }
        };
        self.finish(&mut latch);
        effect
    }

    /// Whether `gpa` is an emulated MMIO address (vCPU `cpu`'s local APIC
    /// page, or a device on the bus).
    pub fn claims_mmio(&self, cpu: usize, gpa: u64) -> bool {
        self.chip.lock().lapic_claims_on(cpu, gpa) || self.mmio.lock().contains(gpa) || virtio::in_window(gpa)
    }

    /// An MMIO read; `Outcome::Unclaimed` where nothing is mapped.
    pub fn mmio_read(&self, cpu: usize, gpa: u64, data: &mut [u8], mem: &dyn Memory, now: u64) -> Outcome {
        {
            let mut chip = self.chip.lock();
            if chip.lapic_claims_on(cpu, gpa) {
                let v = chip.mmio_read_on(cpu, gpa, data.len() as u8, now).unwrap_or(0);
                for (i, b) in data.iter_mut().enumerate() {
                    *b = (v >> (8 * i)) as u8;
                }
                return Outcome::Done(Effect::None);
            }
        }
        let mut latch = IrqLatch::default();
        let mut env = Env { now, mem, irq: &mut latch };
        let r = self.mmio.lock().read(gpa, data, &mut env);
        self.finish(&mut latch);
        match r {
            Access::Device(e) => Outcome::Done(e),
            // An empty virtio slot reads as no device (magic 0).
            Access::Unclaimed if virtio::in_window(gpa) => {
                self.unclaimed.mmio.fetch_add(1, Ordering::Relaxed);
                data.fill(0);
                Outcome::Done(Effect::None)
            }
            Access::Unclaimed => {
                self.unclaimed.mmio.fetch_add(1, Ordering::Relaxed);
                Outcome::Unclaimed
            }
        }
    }

    /// An MMIO write.
    pub fn mmio_write(&self, cpu: usize, gpa: u64, data: &[u8], mem: &dyn Memory, now: u64) -> Outcome {
        {
            let mut chip = self.chip.lock();
            if chip.lapic_claims_on(cpu, gpa) {
                chip.mmio_write_on(cpu, gpa, data.len() as u8, le_value(data), now);
                return Outcome::Done(Effect::None);
            }
        }
        let mut latch = IrqLatch::default();
        let mut env = Env { now, mem, irq: &mut latch };
        let r = self.mmio.lock().write(gpa, data, &mut env);
        self.finish(&mut latch);
        match r {
            Access::Device(e) => Outcome::Done(e),
            Access::Unclaimed if virtio::in_window(gpa) => {
                self.unclaimed.mmio.fetch_add(1, Ordering::Relaxed);
                Outcome::Done(Effect::None)
            }
            Access::Unclaimed => {
                self.unclaimed.mmio.fetch_add(1, Ordering::Relaxed);
                Outcome::Unclaimed
            }
        }
    }
}
