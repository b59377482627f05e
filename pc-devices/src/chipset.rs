//! The interrupt and timer chips of one VM wired together as on a PC: ISA
//! IRQs reach both the 8259 pair and the IOAPIC (IRQ 0 on IOAPIC pin 2, as
//! the MADT's override says), IOAPIC messages reach the local APICs they
//! address, IPIs travel between the vCPUs' local APICs (both through
//! [`crate::ipi::IpiRouter`]), the local APICs' EOIs of level-triggered
//! vectors reach back to the IOAPIC, and the PIC's INTR reaches vCPU 0
//! (the BSP) through LINT0 when its local APIC passes ExtINT. The
//! hypervisor asks it which vector to inject on which vCPU, which vCPUs to
//! start, stop or kick, and when the next timer fires; it never decides
//! any of these itself.
//!
//! The methods without a vCPU argument are vCPU 0's, so a one-vCPU caller
//! needs no other.

use alloc::vec::Vec;

use crate::acpi_pm::{AcpiPm, PmEffect};
use crate::bus::Effect;
use crate::dest::CpuMask;
use crate::ioapic::IoApic;
use crate::ipi::{IpiRouter, Message, RouterCounters, MAX_VCPUS};
use crate::irq::{IrqLatch, IrqSink};
use crate::lapic::{ApicFault, ApicMode, DeliveryMode, LocalApic};
use crate::pic::Pic;
use crate::pit::Pit;
use crate::rtc::Rtc;
use crate::time::TscRate;

/// The port ranges the chipset answers: PIC master, PIC slave, ELCR, PIT,
/// port 0x61, RTC, ACPI PM blocks.
pub const PORT_RANGES: [(u16, u16); 7] =
    [(0x20, 2), (0xA0, 2), (0x4D0, 2), (0x40, 4), (0x61, 1), (0x70, 2), (0x600, 12)];
/// PIT interrupts kept for a guest that could not take them in time (the
/// VM was descheduled or had interrupts off): delivered one per entry, so
/// a kernel counting ticks does not lose time; beyond this many, dropped.
pub const PIT_BACKLOG_MAX: u64 = 1000;
/// Shortest spacing of the PIT interrupts the chipset delivers, 250 µs
/// (4 kHz; Linux never asks the PIT for more than its HZ, at most 1 kHz): a
/// channel 0 programmed faster (mode 2 count 2 is ~600 kHz) cannot end
/// every VM entry after a tick, which would leave the vCPU no time to run
/// at all. Under emulation one interrupt's round trip (window exit,
/// injection, handler, EOI exit) took ~140 µs of guest time, so a 100 µs
/// gap let a guest that asked for the fastest rate starve itself. Edges in
/// between are counted into the backlog as usual.
pub const PIT_MIN_GAP_NS: u64 = 250_000;
/// IOAPIC pin the PIT (ISA IRQ 0) is wired to.
pub const PIT_IOAPIC_PIN: u32 = 2;
/// GSIs the chipset routes (the IOAPIC's pins).
pub const GSIS: usize = 24;
/// The SCI's GSI, as our FADT says.
pub const SCI_GSI: u32 = 9;
const MASKED: u64 = 1 << 16;

/// Counters for the log and the monitoring plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChipCounters {
    /// PIT ticks dropped because the backlog was full.
    pub pit_dropped: u64,
    /// IOAPIC messages no local APIC took (SMI, ExtINT, a destination
    /// naming no vCPU, or APICs refusing them).
    pub messages_dropped: u64,
    /// IPIs dropped because the sender's queue was full
    /// ([`crate::lapic::IPI_QUEUE_MAX`]); what the router did with the
    /// others is in [`Chipset::router_counters`].
    pub ipis_dropped: u64,
    /// NMIs raised by IOAPIC messages.
    pub nmis: u64,
}

/// One VM's interrupt controllers and timers.
pub struct Chipset {
    /// The vCPUs' local APICs and the routing between them.
    cpus: IpiRouter,
    /// The IOAPIC.
    pub ioapic: IoApic,
    /// The 8259 pair.
    pub pic: Pic,
    /// The 8254.
    pub pit: Pit,
    /// The CMOS RTC.
    pub rtc: Rtc,
    /// The ACPI PM blocks.
    pub pm: AcpiPm,
    /// Line levels last applied, so sampling a level source applies changes only.
    levels: [bool; GSIS],
    /// Level pins whose message no local APIC took (remote IRR released):
    /// the next sample of an asserted line delivers them again even though
    /// the line did not change.
    released: u32,
    pit_backlog: u64,
    /// [`PIT_MIN_GAP_NS`] in TSC ticks.
    pit_gap: u64,
    /// When a PIT tick was last delivered.
    pit_last: Option<u64>,
    /// What was dropped, and why.
    pub counters: ChipCounters,
}

/// ISA IRQ `irq`'s IOAPIC pin.
fn isa_pin(irq: u8) -> u32 {
    if irq == 0 {
        PIT_IOAPIC_PIN
    } else {
        u32::from(irq)
    }
}

impl Chipset {
    /// The chips of a one-vCPU VM at power-on, its local APIC (ID
    /// `apic_id`, IOAPIC ID `apic_id + 1`) in the virtual-wire state
    /// firmware leaves (LINT0 ExtINT, LINT1 NMI), the RTC at `unix_seconds`
    /// and the CMOS reporting `mem_bytes` of RAM.
    pub fn new(rate: TscRate, now: u64, unix_seconds: u64, mem_bytes: u64, apic_id: u32) -> Chipset {
        Chipset::build(rate, now, unix_seconds, mem_bytes, apic_id, 1)
    }

    /// The chips of a VM with `vcpus` vCPUs (clamped to 1..=[`MAX_VCPUS`]):
    /// local APIC IDs `0..vcpus` as the MADT lists them, the IOAPIC's ID
    /// `vcpus`. vCPU 0 is the BSP, running, its APIC in virtual-wire state;
    /// the others wait for INIT-SIPI-SIPI with their APICs at power-on.
    pub fn with_vcpus(rate: TscRate, now: u64, unix_seconds: u64, mem_bytes: u64, vcpus: u32) -> Chipset {
        let n = vcpus.clamp(1, MAX_VCPUS as u32);
        Chipset::build(rate, now, unix_seconds, mem_bytes, 0, n)
    }

    fn build(rate: TscRate, now: u64, unix_seconds: u64, mem_bytes: u64, first_id: u32, vcpus: u32) -> Chipset {
        let apics: Vec<LocalApic> = (0..vcpus)
            .map(|i| {
                let mut lapic = LocalApic::new(first_id.saturating_add(i), i == 0, rate.hz, rate);
                if i == 0 {
                    lapic.enable_virtual_wire();
                }
                lapic
            })
            .collect();
        let mut rtc = Rtc::new(rate, now, unix_seconds);
        rtc.set_memory_size(mem_bytes);
        Chipset {
            cpus: IpiRouter::new(apics),
            ioapic: IoApic::new(u8::try_from(first_id.saturating_add(vcpus)).unwrap_or(1)),
            pic: Pic::new(),
            pit: Pit::new(rate, now),
            rtc,
            pm: AcpiPm::new(rate, now),
            levels: [false; GSIS],
            released: 0,
            pit_backlog: 0,
            pit_gap: rate.from_ns(PIT_MIN_GAP_NS),
            pit_last: None,
            counters: ChipCounters::default(),
        }
    }

    /// Whether `port` is one of the chipset's.
    pub fn claims_port(port: u16) -> bool {
        PORT_RANGES.iter().any(|&(base, len)| port >= base && port - base < len)
    }

    fn read8(&mut self, port: u16, now: u64, latch: &mut IrqLatch) -> u8 {
        match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 => self.pic.port_read(port),
            0x40..=0x43 => self.pit.port_read(port, now),
            0x61 => self.pit.port61_read(now),
            0x70 | 0x71 => self.rtc.port_read(port, now, latch),
            _ => 0xFF,
        }
    }

    fn write8(&mut self, port: u16, value: u8, now: u64, latch: &mut IrqLatch) {
        match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 => self.pic.port_write(port, value),
            0x40..=0x43 => self.pit.port_write(port, value, now),
            0x61 => self.pit.port61_write(value, now),
            0x70 | 0x71 => self.rtc.port_write(port, value, now, latch),
            _ => {}
        }
    }

    /// A guest IN of `size` bytes (wider accesses read consecutive ports).
    pub fn port_read(&mut self, port: u16, size: u8, now: u64) -> u32 {
        if (0x600..0x60C).contains(&port) {
            let v = self.pm.read(port, size, now);
            self.settle(now);
            return v;
        }
        let mut latch = IrqLatch::default();
        let mut v = 0u32;
        for i in 0..u16::from(size.clamp(1, 4)) {
            let b = self.read8(port.wrapping_add(i), now, &mut latch);
            v |= u32::from(b) << (8 * i);
        }
        self.apply(&mut latch);
        self.settle(now);
        v
    }

    /// A guest OUT of `size` bytes of `value`.
    pub fn port_write(&mut self, port: u16, size: u8, value: u32, now: u64) -> Effect {
        if (0x600..0x60C).contains(&port) {
            let effect = self.pm.write(port, size, value, now);
            self.settle(now);
            return match effect {
                PmEffect::PowerOff => Effect::PowerOff,
                PmEffect::None => Effect::None,
            };
        }
        let mut latch = IrqLatch::default();
        for i in 0..u16::from(size.clamp(1, 4)) {
            self.write8(port.wrapping_add(i), (value >> (8 * i)) as u8, now, &mut latch);
        }
        self.apply(&mut latch);
        self.settle(now);
        Effect::None
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.cpus.vcpus()
    }

    /// vCPU `cpu`'s local APIC, for the debug log and tests.
    pub fn lapic(&self, cpu: usize) -> Option<&LocalApic> {
        self.cpus.apic(cpu)
    }

    /// vCPU `cpu`'s local APIC. What a direct access queues (IPIs, EOIs)
    /// is routed at the next chipset call that settles.
    pub fn lapic_mut(&mut self, cpu: usize) -> Option<&mut LocalApic> {
        self.cpus.apic_mut(cpu)
    }

    /// The router's counters (IPIs routed, undelivered, ignored).
    pub fn router_counters(&self) -> RouterCounters {
        self.cpus.counters
    }

    /// vCPU `cpu`'s run state: the hypervisor runs it only while `Running`.
    pub fn run_state(&self, cpu: usize) -> Option<crate::vcpu::VcpuRunState> {
        self.cpus.run_state(cpu)
    }

    /// A start-up IPI's vector for `cpu`, once: reset the vCPU to real mode
    /// at CS = vector << 8, IP = 0 and run it.
    pub fn take_startup(&mut self, cpu: usize) -> Option<u8> {
        self.cpus.take_startup(cpu)
    }

    /// Whether an INIT stopped the running vCPU `cpu` since the last call:
    /// stop executing it until [`Chipset::take_startup`] says otherwise.
    pub fn take_init(&mut self, cpu: usize) -> bool {
        self.cpus.take_init(cpu)
    }

    /// The vCPUs something became pending on (from another vCPU or a
    /// device) since the last call: interrupt the physical CPUs running
    /// them. A caller ignores its own vCPU's bit.
    pub fn take_kicks(&mut self) -> CpuMask {
        self.cpus.take_kicks()
    }

    /// Takes vCPU `cpu`'s pending NMI, for injection.
    pub fn take_nmi_on(&mut self, cpu: usize) -> bool {
        self.cpus.apic_mut(cpu).is_some_and(LocalApic::take_nmi)
    }

    /// Where vCPU `cpu`'s xAPIC page is, while it is in xAPIC mode.
    fn lapic_window(&self, cpu: usize) -> Option<u64> {
        let apic = self.cpus.apic(cpu)?;
        (apic.mode() == ApicMode::XApic).then(|| apic.apic_base() & 0x000F_FFFF_FFFF_F000)
    }

    /// [`Chipset::lapic_claims_on`] for vCPU 0.
    pub fn lapic_claims(&self, gpa: u64) -> bool {
        self.lapic_claims_on(0, gpa)
    }

    /// Whether `gpa` falls in vCPU `cpu`'s local APIC page (where the guest
    /// put it, while in xAPIC mode). The page is the CPU's own, so it is
    /// checked before any bus.
    pub fn lapic_claims_on(&self, cpu: usize, gpa: u64) -> bool {
        self.lapic_window(cpu).is_some_and(|b| gpa >= b && gpa - b < crate::lapic::XAPIC_WINDOW)
    }

    /// A 32-bit read of vCPU `cpu`'s xAPIC page at `offset` (0 for a
    /// missing vCPU, like an unimplemented register).
    pub fn lapic_mmio_read(&mut self, cpu: usize, offset: u64, now: u64) -> u32 {
        let v = self.cpus.apic_mut(cpu).map_or(0, |a| a.mmio_read(offset, now));
        self.settle(now);
        v
    }

    /// A 32-bit write to vCPU `cpu`'s xAPIC page at `offset`; what it
    /// sends (IPIs, EOIs) is routed before this returns.
    pub fn lapic_mmio_write(&mut self, cpu: usize, offset: u64, value: u32, now: u64) {
        if let Some(a) = self.cpus.apic_mut(cpu) {
            a.mmio_write(offset, value, now);
        }
        self.settle(now);
    }

    /// [`Chipset::mmio_read_on`] for vCPU 0.
    pub fn mmio_read(&mut self, gpa: u64, size: u8, now: u64) -> Option<u64> {
        self.mmio_read_on(0, gpa, size, now)
    }

    /// A guest MMIO read of `size` bytes by vCPU `cpu` (its own local APIC
    /// page, then the IOAPIC); `None` when not ours. Registers are 32-bit:
    /// narrower reads see part of the aligned dword, wider ones its
    /// zero-extension.
    pub fn mmio_read_on(&mut self, cpu: usize, gpa: u64, size: u8, now: u64) -> Option<u64> {
        let aligned = gpa & !3;
        let window = self.lapic_window(cpu).filter(|b| gpa >= *b && gpa - b < 0x1000);
        let dword = if let (Some(base), Some(apic)) = (window, self.cpus.apic_mut(cpu)) {
            apic.mmio_read(aligned - base, now)
        } else if gpa >= crate::ioapic::IOAPIC_BASE && gpa - crate::ioapic::IOAPIC_BASE < crate::ioapic::IOAPIC_WINDOW {
            self.ioapic.mmio_read(aligned - crate::ioapic::IOAPIC_BASE)
        } else {
            return None;
        };
        self.settle(now);
        let shift = 8 * (gpa & 3);
        let v = u64::from(dword) >> shift;
        Some(match size {
            1 => v & 0xFF,
            2 => v & 0xFFFF,
            _ => v,
        })
    }

    /// [`Chipset::mmio_write_on`] for vCPU 0.
    pub fn mmio_write(&mut self, gpa: u64, size: u8, value: u64, now: u64) -> bool {
        self.mmio_write_on(0, gpa, size, value, now)
    }

    /// A guest MMIO write by vCPU `cpu`; false when not ours. A write
    /// narrower than a dword or unaligned is dropped, as the chips ignore
    /// such cycles.
    pub fn mmio_write_on(&mut self, cpu: usize, gpa: u64, size: u8, value: u64, now: u64) -> bool {
        let value32 = value as u32;
        let window = self.lapic_window(cpu).filter(|b| gpa >= *b && gpa - b < 0x1000);
        if let (Some(base), Some(apic)) = (window, self.cpus.apic_mut(cpu)) {
            if size >= 4 && gpa & 3 == 0 {
                apic.mmio_write(gpa - base, value32, now);
            }
        } else if gpa >= crate::ioapic::IOAPIC_BASE && gpa - crate::ioapic::IOAPIC_BASE < crate::ioapic::IOAPIC_WINDOW {
            if size >= 4 && gpa & 3 == 0 {
                self.ioapic.mmio_write(gpa - crate::ioapic::IOAPIC_BASE, value32);
            }
        } else {
            return false;
        }
        self.settle(now);
        true
    }

    /// [`Chipset::msr_read_on`] for vCPU 0.
    pub fn msr_read(&mut self, msr: u32, now: u64) -> Option<Result<u64, ApicFault>> {
        self.msr_read_on(0, msr, now)
    }

    /// RDMSR by vCPU `cpu` of an APIC MSR (IA32_APIC_BASE,
    /// IA32_TSC_DEADLINE, x2APIC); `None` when `msr` is not one (or there
    /// is no such vCPU).
    pub fn msr_read_on(&mut self, cpu: usize, msr: u32, now: u64) -> Option<Result<u64, ApicFault>> {
        if !is_apic_msr(msr) {
            return None;
        }
        let apic = self.cpus.apic_mut(cpu)?;
        Some(match msr {
            0x1B => Ok(apic.apic_base()),
            0x6E0 => Ok(apic.tsc_deadline()),
            _ => apic.msr_read(msr, now),
        })
    }

    /// [`Chipset::msr_write_on`] for vCPU 0.
    pub fn msr_write(&mut self, msr: u32, value: u64, now: u64) -> Option<Result<(), ApicFault>> {
        self.msr_write_on(0, msr, value, now)
    }

    /// WRMSR by vCPU `cpu` of an APIC MSR; `None` when `msr` is not one
    /// (or there is no such vCPU). An ICR write is routed before this
    /// returns.
    pub fn msr_write_on(&mut self, cpu: usize, msr: u32, value: u64, now: u64) -> Option<Result<(), ApicFault>> {
        if !is_apic_msr(msr) {
            return None;
        }
        let apic = self.cpus.apic_mut(cpu)?;
        let r = match msr {
            0x1B => apic.set_apic_base(value),
            0x6E0 => {
                apic.set_tsc_deadline(value, now);
                Ok(())
            }
            _ => apic.msr_write(msr, value, now),
        };
        self.settle(now);
        Some(r)
    }

    /// Sets GSI `gsi` (a level source such as a virtio device or the
    /// UART samples its line through here); only changes reach the chips.
    pub fn set_gsi(&mut self, gsi: u32, level: bool) {
        let bit = 1u32.checked_shl(gsi).unwrap_or(0);
        let Some(old) = self.levels.get_mut(gsi as usize) else { return };
        let retry = level && self.released & bit != 0;
        if *old == level && !retry {
            return;
        }
        self.released &= !bit;
        let changed = *old != level;
        *old = level;
        if changed && gsi < 16 {
            // GSI 2 is where ISA IRQ 0 lands; GSI 0 has no ISA source.
            let irq = match gsi {
                2 => 0,
                0 => return,
                g => g as u8,
            };
            self.pic.set_irq(irq, level);
        }
        self.ioapic.set_irq(gsi, level);
        self.route();
    }

    /// An ISA IRQ line (0-15) changed.
    pub fn set_isa_irq(&mut self, irq: u8, level: bool) {
        if irq < 16 {
            self.set_gsi(isa_pin(irq), level);
        }
    }

    fn apply(&mut self, latch: &mut IrqLatch) {
        let changes: alloc::vec::Vec<(u32, bool)> = latch.drain().collect();
        for (irq, level) in changes {
            // Chipset-internal sources (the RTC) speak ISA IRQ numbers.
            if let Ok(irq) = u8::try_from(irq) {
                self.set_isa_irq(irq, level);
            }
        }
    }

    /// Moves messages between the chips: IOAPIC -> local APICs, local APIC
    /// EOIs -> IOAPIC, IPIs between the local APICs (self-IPIs are each
    /// local APIC's own).
    fn route(&mut self) {
        // Each pass can free a pin for another message; a pin holds at
        // most one, so this ends within a few rounds. The message budget
        // bounds the work whatever the guest programmed (a fuzzer found a
        // level pin routed to nobody that re-queued itself for ever).
        let mut budget = ROUTE_BUDGET;
        for _ in 0..4 {
            let mut moved = false;
            while budget > 0 {
                let Some(d) = self.ioapic.take_delivery() else { break };
                budget -= 1;
                moved = true;
                let msg = Message::from_ioapic(d);
                let took = msg.map_or(0, |m| self.cpus.deliver(None, m));
                if took == 0 {
                    self.counters.messages_dropped += 1;
                    // A level message nobody takes would keep remote
                    // IRR set for ever: release it (delivered again at
                    // the next line sample, not in this pass).
                    if d.level {
                        self.ioapic.release(d.vector);
                        self.mark_released(d.vector);
                    }
                } else {
                    if msg.is_some_and(|m| m.mode == DeliveryMode::Nmi) {
                        self.counters.nmis += 1;
                    }
                    if d.level && !msg.is_some_and(|m| m.level) {
                        // Taken, but not as a fixed interrupt (NMI, INIT):
                        // no EOI will come back for it.
                        self.ioapic.release(d.vector);
                    }
                }
            }
            while let Some(v) = self.cpus.take_eoi() {
                moved = true;
                self.ioapic.eoi(v);
            }
            if !moved {
                break;
            }
        }
        self.cpus.route_ipis();
        self.counters.ipis_dropped = self.cpus.ipis_dropped();
    }

    /// Notes the level pins carrying `vector` whose message went nowhere,
    /// so that [`Chipset::set_gsi`] retries them at the next sample: the
    /// device keeps its line asserted until its driver sees an interrupt,
    /// so without a retry the pin would stay silent for good (a NIC whose
    /// message was dropped once while the guest reprogrammed its APIC never
    /// interrupted again).
    fn mark_released(&mut self, vector: u8) {
        for pin in 0..crate::ioapic::PINS {
            let e = self.ioapic.redirection(pin);
            if (e & 0xFF) as u8 == vector && e & (1 << 15) != 0 {
                self.released |= 1 << pin;
            }
        }
    }

    fn settle(&mut self, now: u64) {
        let sci = self.pm.sci_level(now);
        self.set_gsi(SCI_GSI, sci);
        self.route();
    }

    /// [`Chipset::advance_on`] for vCPU 0.
    pub fn advance(&mut self, now: u64) {
        self.advance_on(0, now);
    }

    /// Brings every timer up to `now`, on behalf of vCPU `cpu`: expired
    /// timers raise their interrupts (a local APIC timer firing on
    /// another vCPU kicks it), and one PIT tick of the backlog is delivered
    /// (unless one was less than [`PIT_MIN_GAP_NS`] ago).
    pub fn advance_on(&mut self, cpu: usize, now: u64) {
        let edges = self.pit.advance(now);
        let room = PIT_BACKLOG_MAX - self.pit_backlog.min(PIT_BACKLOG_MAX);
        self.counters.pit_dropped += edges.saturating_sub(room);
        self.pit_backlog += edges.min(room);
        let mut latch = IrqLatch::default();
        self.rtc.advance(now, &mut latch);
        self.apply(&mut latch);
        self.advance_lapics(cpu, now);
        if self.pit_backlog > 0 && now >= self.pit_earliest() {
            self.pit_backlog -= 1;
            self.pit_last = Some(now);
            self.set_isa_irq(0, true);
            self.set_isa_irq(0, false);
        }
        self.settle(now);
    }

    /// Runs every local APIC's timer to `now`; a vCPU other than `caller`
    /// that gains a pending vector is kicked.
    fn advance_lapics(&mut self, caller: usize, now: u64) {
        for cpu in 0..self.cpus.vcpus() {
            let Some(apic) = self.cpus.apic_mut(cpu) else { continue };
            let before = apic.pending_vector();
            apic.advance(now);
            if apic.pending_vector() != before {
                self.cpus.kick(cpu, Some(caller));
            }
        }
    }

    /// Whether the PIT's interrupt can reach the CPU at all (Linux masks it
    /// everywhere once the local APIC timer takes over; then its ticks need
    /// not wake a halted vCPU).
    fn pit_routed(&self) -> bool {
        self.ioapic.redirection(PIT_IOAPIC_PIN) & MASKED == 0 || (self.pic.imr() & 1 == 0 && self.bsp_takes_extint())
    }

    /// The earliest TSC tick the next PIT tick may be delivered at.
    fn pit_earliest(&self) -> u64 {
        self.pit_last.map_or(0, |t| t.saturating_add(self.pit_gap))
    }

    /// The TSC tick at which some timer of the VM (any vCPU's local APIC
    /// or a chipset timer) next raises an interrupt: now, if a PIT tick is
    /// waiting and may be delivered. With one vCPU, it needs to run no
    /// earlier unless a device raises one first.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        let apics = self.cpus.apics().iter().filter_map(LocalApic::next_deadline).min();
        [apics, self.device_deadline(now)].into_iter().flatten().min()
    }

    /// The TSC tick at which vCPU `cpu` must next run [`Chipset::advance_on`]:
    /// its own local APIC timer, and for vCPU 0 also the chipset's timers
    /// (the BSP drives them; what they raise for another vCPU kicks it).
    pub fn next_deadline_on(&self, cpu: usize, now: u64) -> Option<u64> {
        let own = self.cpus.apic(cpu).and_then(LocalApic::next_deadline);
        let devices = if cpu == 0 { self.device_deadline(now) } else { None };
        [own, devices].into_iter().flatten().min()
    }

    /// The chipset timers' next interrupt. PIT ticks that reach no one
    /// (masked everywhere) do not count, and PIT ticks are never due
    /// closer together than [`PIT_MIN_GAP_NS`].
    fn device_deadline(&self, now: u64) -> Option<u64> {
        let pit = if !self.pit_routed() {
            None
        } else if self.pit_backlog > 0 {
            Some(now)
        } else {
            self.pit.next_irq0()
        };
        let pit = pit.map(|t| t.max(self.pit_earliest()));
        [pit, self.rtc.next_deadline(), self.pm.next_sci_deadline(now)].into_iter().flatten().min()
    }

    /// Whether the BSP's LINT0 passes the 8259's INTR (virtual wire). Only
    /// vCPU 0 is wired to the PIC, as on a PC where firmware enables
    /// ExtINT on the BSP alone (MP spec 3.6.2.2).
    fn bsp_takes_extint(&self) -> bool {
        self.cpus.apic(0).is_some_and(LocalApic::accepts_extint)
    }

    /// [`Chipset::interrupt_pending_on`] for vCPU 0.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_pending_on(0)
    }

    /// Whether an interrupt waits for vCPU `cpu` (a vector above its local
    /// APIC's priority, or for vCPU 0 the PIC's INTR passed as ExtINT).
    pub fn interrupt_pending_on(&self, cpu: usize) -> bool {
        self.cpus.apic(cpu).is_some_and(|a| a.pending_vector().is_some())
            || (cpu == 0 && self.bsp_takes_extint() && self.pic.interrupt_pending())
    }

    /// [`Chipset::acknowledge_on`] for vCPU 0.
    pub fn acknowledge(&mut self) -> Option<u8> {
        self.acknowledge_on(0)
    }

    /// vCPU `cpu` takes its pending interrupt: the vector, moved to
    /// in-service (local APIC) or acknowledged (PIC INTA, vCPU 0 only).
    pub fn acknowledge_on(&mut self, cpu: usize) -> Option<u8> {
        if let Some(v) = self.cpus.apic_mut(cpu).and_then(LocalApic::acknowledge) {
            return Some(v);
        }
        if cpu == 0 && self.bsp_takes_extint() && self.pic.interrupt_pending() {
            return Some(self.pic.acknowledge());
        }
        None
    }
}

/// IA32_APIC_BASE, IA32_TSC_DEADLINE and the x2APIC range.
fn is_apic_msr(msr: u32) -> bool {
    matches!(msr, 0x1B | 0x6E0 | 0x800..=0x8FF)
}

impl IrqSink for Chipset {
    fn set_irq(&mut self, gsi: u32, level: bool) {
        self.set_gsi(gsi, level);
    }
}

/// IOAPIC messages routed per call (24 pins, a few passes each).
const ROUTE_BUDGET: usize = 128;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000_000;

    /// A chipset with the local APIC enabled and IRQ 0 routed through
    /// IOAPIC pin 2 to vector 0x30 (the PIC stays masked), and channel 0
    /// in mode 2 with `count`.
    fn chip_with_pit(count: u16) -> Chipset {
        let mut c = Chipset::new(TscRate::new(HZ), 0, 0, 64 << 20, 0);
        c.lapic_mut(0).unwrap().mmio_write(0xF0, 0x1FF, 0);
        c.ioapic.mmio_write(0x00, 0x10 + 2 * PIT_IOAPIC_PIN);
        c.ioapic.mmio_write(0x10, 0x30);
        c.port_write(0x43, 1, 0x34, 0);
        c.port_write(0x40, 1, u32::from(count & 0xFF), 0);
        c.port_write(0x40, 1, u32::from(count >> 8), 0);
        c
    }

    /// Runs the way the scheduler does for `until` TSC ticks: advance, take
    /// and EOI what is pending, sleep until the next deadline. Returns the
    /// deliveries and the number of steps.
    fn run(c: &mut Chipset, until: u64) -> (u64, u64) {
        let (mut now, mut got, mut steps) = (0u64, 0u64, 0u64);
        while now < until && steps < 1_000_000 {
            steps += 1;
            c.advance(now);
            while let Some(v) = c.acknowledge() {
                assert_eq!(v, 0x30);
                got += 1;
                c.lapic_mut(0).unwrap().mmio_write(0xB0, 0, now);
            }
            let d = c.next_deadline(now).unwrap();
            now = d.max(now + 1);
        }
        (got, steps)
    }

    #[test]
    fn a_pit_faster_than_the_gap_does_not_end_every_entry() {
        // Mode 2 count 2: ~597 000 edges per second.
        let mut c = chip_with_pit(2);
        let gap = TscRate::new(HZ).from_ns(PIT_MIN_GAP_NS);
        let mut now = 0;
        for _ in 0..100 {
            c.advance(now);
            while c.acknowledge().is_some() {
                c.lapic_mut(0).unwrap().mmio_write(0xB0, 0, now);
            }
            let d = c.next_deadline(now).unwrap();
            assert!(d >= now + gap || now == 0, "deadline {} only {} ticks after {}", d, d - now, now);
            now = d;
        }
        // 10 ms: at most one delivery per gap, and the backlog is capped.
        let mut c = chip_with_pit(2);
        let (got, steps) = run(&mut c, HZ / 100);
        let most = 10_000_000 / PIT_MIN_GAP_NS;
        assert!((most * 9 / 10..=most + 1).contains(&got), "{got} deliveries in 10 ms");
        assert!(steps <= most + 2, "{steps} wake-ups in 10 ms");
        assert!(c.counters.pit_dropped > 0);
    }

    #[test]
    fn an_ordinary_pit_still_ticks_on_time() {
        // 1 kHz (count 1193): every edge delivered, none late.
        let mut c = chip_with_pit(1193);
        let (got, _) = run(&mut c, HZ / 10);
        assert!((99..=100).contains(&got), "{got} ticks in 100 ms");
        assert_eq!(c.counters.pit_dropped, 0);
    }

    #[test]
    fn a_level_pin_routed_to_nobody_does_not_livelock() {
        // Pin 5: level, vector 0x40, physical destination 7 (not us).
        let mut c = chip_with_pit(1193);
        c.ioapic.mmio_write(0x00, 0x10 + 2 * 5);
        c.ioapic.mmio_write(0x10, 0x40 | (1 << 15));
        c.ioapic.mmio_write(0x00, 0x10 + 2 * 5 + 1);
        c.ioapic.mmio_write(0x10, 7 << 24);
        c.set_gsi(5, true);
        for t in 0..100 {
            c.set_gsi(5, true);
            c.advance(t * 1000);
        }
        assert!(c.counters.messages_dropped >= 1);
        assert!(c.counters.messages_dropped <= 200, "{} dropped", c.counters.messages_dropped);
    }

    /// Writes IOAPIC redirection entry `pin` through IOREGSEL/IOWIN.
    fn set_entry(c: &mut Chipset, pin: u32, entry: u64) {
        let base = crate::ioapic::IOAPIC_BASE;
        for (half, value) in [(0u32, entry as u32), (1, (entry >> 32) as u32)] {
            c.mmio_write(base, 4, u64::from(0x10 + 2 * pin + half), 0);
            c.mmio_write(base + 0x10, 4, u64::from(value), 0);
        }
    }

    #[test]
    fn a_dropped_level_message_is_retried_at_the_next_sample() {
        let mut c = Chipset::new(TscRate::new(HZ), 0, 0, 64 << 20, 0);
        // The local APIC software-disabled; level, vector 0x50, APIC ID 0.
        c.mmio_write(0xFEE0_00F0, 4, 0xFF, 0);
        set_entry(&mut c, 5, (1 << 15) | 0x50);
        c.set_gsi(5, true);
        assert!(!c.interrupt_pending_on(0));
        assert_eq!(c.counters.messages_dropped, 1);
        // The guest enables its local APIC. The device line never went low
        // (its driver saw no interrupt), so only a retry delivers it.
        c.mmio_write(0xFEE0_00F0, 4, 0x1FF, 0);
        c.set_gsi(5, true);
        assert!(c.interrupt_pending_on(0), "the asserted line was never delivered again");
        assert_eq!(c.acknowledge(), Some(0x50));
        // Delivered once: the same sample again changes nothing.
        c.set_gsi(5, true);
        assert!(!c.interrupt_pending_on(0));
    }

    #[test]
    fn an_unrouted_pit_backlog_wakes_no_one() {
        let mut c = chip_with_pit(2);
        c.advance(HZ / 1000);
        // Mask IOAPIC pin 2 (the PIC is masked from power-on).
        c.ioapic.mmio_write(0x00, 0x10 + 2 * PIT_IOAPIC_PIN);
        c.ioapic.mmio_write(0x10, 0x30 | (1 << 16));
        c.advance(2 * HZ / 1000);
        assert!(c.pit_backlog > 0);
        assert_eq!(c.next_deadline(2 * HZ / 1000), None);
    }
}
