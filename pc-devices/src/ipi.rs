//! The VM's interrupt router: its vCPUs' local APICs, their run states,
//! and the delivery of every interrupt message between them.
//!
//! An IPI a guest writes into one vCPU's ICR is queued by that
//! [`LocalApic`] (at most [`IPI_QUEUE_MAX`], the rest dropped and counted
//! there); [`IpiRouter::route_ipis`] drains the queues and delivers each
//! message to the APICs its shorthand or destination addresses
//! ([`crate::dest`]). IOAPIC messages take the same path through
//! [`IpiRouter::deliver`]. Delivery never queues anything new, so routing
//! is bounded by the queues' sizes; the router has no queue of its own.
//!
//! Delivery modes (Intel SDM vol. 3A 11.6.1):
//! - Fixed: every addressed APIC that takes fixed interrupts;
//! - LowestPriority: the one addressed APIC of lowest arbitration
//!   priority, ties to the lowest vCPU index ([`crate::dest::lowest_priority`]);
//! - NMI: every addressed vCPU that runs (a vCPU waiting for its SIPI has
//!   NMIs blocked; they are dropped and counted);
//! - INIT (level assert): every addressed vCPU's APIC is reset and the
//!   vCPU waits for a SIPI ([`crate::vcpu`]); INIT level de-assert is
//!   ignored, as on the Pentium 4 and later (SDM 11.6.1, table 11-3 note);
//! - StartUp: every addressed vCPU waiting for a SIPI starts at
//!   `vector << 12`; others ignore it (counted);
//! - SMI and ExtINT: not modelled, counted.
//!
//! IPIs are delivered edge-triggered whatever their trigger bit says (SDM
//! table 11-3, note 2): only the IOAPIC's level pins set a TMR bit.
//!
//! Combinations table 11-3 calls invalid (e.g. INIT with the
//! all-including-self shorthand) are delivered as their fields say, as
//! KVM does; a lowest-priority IPI to all-excluding-self goes to one of
//! the others (note 4 allows either).
//!
//! Whenever something becomes pending on a vCPU other than the sender
//! (interrupt, NMI, INIT, SIPI), its bit is set in the kick mask
//! ([`IpiRouter::take_kicks`]) so the hypervisor can interrupt the
//! physical CPU running it.

use alloc::vec::Vec;

use crate::dest::{lowest_priority, resolve, CpuMask, DestWidth, Destination};
use crate::ioapic::Delivery;
use crate::lapic::{DeliveryMode, Ipi, LocalApic, Shorthand};
use crate::vcpu::{RunState, VcpuRunState};

pub use crate::lapic::IPI_QUEUE_MAX;

/// Most vCPUs one router serves (as `vmm_config::config::MAX_VCPUS`):
/// keeps every mask in a [`CpuMask`] and the per-VM tables small.
pub const MAX_VCPUS: usize = 8;

/// What the router delivered, ignored and dropped, for the VM's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterCounters {
    /// IPIs taken from the APICs' queues and routed.
    pub ipis: u64,
    /// Messages (IPI or IOAPIC) that no vCPU took: no APIC addressed, or
    /// none accepting (software-disabled, NMI to a stopped vCPU).
    pub undelivered: u64,
    /// NMIs made pending.
    pub nmis: u64,
    /// SMIs (not modelled).
    pub smis: u64,
    /// ExtINT messages from the IOAPIC (the 8259 reaches vCPU 0 through
    /// LINT0 instead).
    pub extints: u64,
    /// INIT level de-asserts (ignored, SDM 11.6.1).
    pub init_deasserts: u64,
    /// Start-up IPIs to a vCPU not waiting for one (ignored).
    pub sipis_ignored: u64,
}

/// An interrupt message for the router: an IPI or an IOAPIC message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// Vector (Fixed, LowestPriority; the start page for StartUp).
    pub vector: u8,
    /// How the targets take it.
    pub mode: DeliveryMode,
    /// Destination field, mode and width.
    pub dest: Destination,
    /// Destination shorthand (IOAPIC messages have none).
    pub shorthand: Shorthand,
    /// Level assert (false only for INIT level de-assert).
    pub level_assert: bool,
    /// Level-triggered fixed interrupt: the target reports its EOI back.
    pub level: bool,
}

impl Message {
    /// The message an APIC whose ICR is `width` wide queued as `ipi`.
    pub fn from_ipi(ipi: Ipi, width: DestWidth) -> Message {
        Message {
            vector: ipi.vector,
            mode: ipi.mode,
            dest: Destination { dest: ipi.dest, logical: ipi.logical, width },
            shorthand: ipi.shorthand,
            level_assert: ipi.level_assert,
            level: false,
        }
    }

    /// An IOAPIC message (8-bit destination); `None` for the reserved
    /// delivery modes 3 and 6, which send nothing.
    pub fn from_ioapic(d: Delivery) -> Option<Message> {
        let mode = match d.mode {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            _ => return None,
        };
        Some(Message {
            vector: d.vector,
            mode,
            dest: Destination { dest: u32::from(d.dest), logical: d.logical, width: DestWidth::Xapic },
            shorthand: Shorthand::None,
            level_assert: true,
            level: d.level && matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority),
        })
    }
}

/// One VM's local APICs (vCPU `i` has APIC `i`; vCPU 0 is the BSP) and
/// the routing between them.
#[derive(Clone, Debug)]
pub struct IpiRouter {
    apics: Vec<LocalApic>,
    run: Vec<RunState>,
    kicks: CpuMask,
    /// What was delivered, ignored and dropped.
    pub counters: RouterCounters,
}

impl IpiRouter {
    /// A router over `apics` (at most [`MAX_VCPUS`]; extra ones are not
    /// taken). The first is the BSP and runs; the others wait for a SIPI.
    pub fn new(mut apics: Vec<LocalApic>) -> IpiRouter {
        apics.truncate(MAX_VCPUS);
        let run = (0..apics.len()).map(|i| RunState::power_on(i == 0)).collect();
        IpiRouter { apics, run, kicks: 0, counters: RouterCounters::default() }
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.apics.len()
    }

    /// vCPU `cpu`'s local APIC.
    pub fn apic(&self, cpu: usize) -> Option<&LocalApic> {
        self.apics.get(cpu)
    }

    /// vCPU `cpu`'s local APIC, for register accesses; call
    /// [`IpiRouter::route_ipis`] afterwards so what it queued is delivered.
    pub fn apic_mut(&mut self, cpu: usize) -> Option<&mut LocalApic> {
        self.apics.get_mut(cpu)
    }

    /// Every vCPU's local APIC, by vCPU index.
    pub fn apics(&self) -> &[LocalApic] {
        &self.apics
    }

    /// Every vCPU's local APIC, for advancing their timers.
    pub fn apics_mut(&mut self) -> &mut [LocalApic] {
        &mut self.apics
    }

    /// vCPU `cpu`'s run state.
    pub fn run_state(&self, cpu: usize) -> Option<VcpuRunState> {
        self.run.get(cpu).map(RunState::state)
    }

    /// A SIPI's vector for a vCPU waiting to be started: the hypervisor
    /// resets it to real mode at CS = vector << 8, IP = 0; it runs from now on.
    pub fn take_startup(&mut self, cpu: usize) -> Option<u8> {
        self.run.get_mut(cpu)?.take_startup()
    }

    /// Whether an INIT stopped the running vCPU `cpu` since the last call.
    pub fn take_init(&mut self, cpu: usize) -> bool {
        self.run.get_mut(cpu).is_some_and(RunState::take_init)
    }

    /// The vCPUs that got something pending from another vCPU or a device
    /// since the last call, and forgets them.
    pub fn take_kicks(&mut self) -> CpuMask {
        core::mem::take(&mut self.kicks)
    }

    /// Marks `cpu` as having something new pending, unless it is the
    /// sender (which notices by itself).
    pub fn kick(&mut self, cpu: usize, sender: Option<usize>) {
        if Some(cpu) != sender && cpu < MAX_VCPUS {
            self.kicks |= 1 << cpu;
        }
    }

    /// IPIs dropped at full APIC queues, summed over the vCPUs.
    pub fn ipis_dropped(&self) -> u64 {
        self.apics.iter().map(|a| a.ipis_dropped).fold(0, u64::saturating_add)
    }

    /// A level-triggered vector some vCPU EOI'd, for the IOAPIC.
    pub fn take_eoi(&mut self) -> Option<u8> {
        self.apics.iter_mut().find_map(LocalApic::take_eoi)
    }

    /// Delivers every IPI the APICs queued. Each queue is drained once and
    /// delivery queues nothing, so this does at most
    /// `vcpus * IPI_QUEUE_MAX` deliveries.
    pub fn route_ipis(&mut self) {
        for sender in 0..self.apics.len() {
            while let Some(apic) = self.apics.get_mut(sender) {
                let width = DestWidth::of(apic.mode());
                let Some(ipi) = apic.take_ipi() else { break };
                self.counters.ipis = self.counters.ipis.saturating_add(1);
                self.deliver(Some(sender), Message::from_ipi(ipi, width));
            }
        }
    }

    /// Delivers `m` from vCPU `sender` (`None`: a device) and returns the
    /// vCPUs that took it.
    pub fn deliver(&mut self, sender: Option<usize>, m: Message) -> CpuMask {
        let targets = resolve(&self.apics, sender, m.shorthand, m.dest);
        let took = match m.mode {
            DeliveryMode::Fixed => self.each(targets, |r, cpu| r.fixed(cpu, m)),
            DeliveryMode::LowestPriority => match lowest_priority(&self.apics, targets) {
                Some(cpu) => self.each(1 << cpu, |r, cpu| r.fixed(cpu, m)),
                None => 0,
            },
            DeliveryMode::Nmi => self.each(targets, Self::nmi),
            DeliveryMode::Init if !m.level_assert => {
                self.counters.init_deasserts = self.counters.init_deasserts.saturating_add(1);
                return 0;
            }
            DeliveryMode::Init => self.each(targets, Self::init),
            DeliveryMode::StartUp => self.each(targets, |r, cpu| r.startup(cpu, m.vector)),
            DeliveryMode::Smi => {
                self.counters.smis = self.counters.smis.saturating_add(1);
                return 0;
            }
            DeliveryMode::ExtInt => {
                self.counters.extints = self.counters.extints.saturating_add(1);
                return 0;
            }
        };
        for cpu in 0..self.apics.len().min(MAX_VCPUS) {
            if took >> cpu & 1 == 1 {
                self.kick(cpu, sender);
            }
        }
        if took == 0 {
            self.counters.undelivered = self.counters.undelivered.saturating_add(1);
        }
        took
    }

    /// Applies `f` to every vCPU in `targets`; the mask of those it
    /// returned true for.
    fn each(&mut self, targets: CpuMask, mut f: impl FnMut(&mut Self, usize) -> bool) -> CpuMask {
        (0..self.apics.len().min(MAX_VCPUS))
            .filter(|&cpu| targets >> cpu & 1 == 1 && f(self, cpu))
            .fold(0, |m, c| m | 1 << c)
    }

    /// A fixed interrupt to `cpu`: taken when its APIC accepts fixed
    /// interrupts and the vector is legal (the APIC flags an illegal one
    /// in its ESR).
    fn fixed(&mut self, cpu: usize, m: Message) -> bool {
        let Some(apic) = self.apics.get_mut(cpu) else { return false };
        let took = apic.accepts_fixed() && m.vector >= 16;
        apic.deliver(m.vector, m.level);
        took
    }

    fn nmi(&mut self, cpu: usize) -> bool {
        if !self.run.get(cpu).is_some_and(RunState::is_running) {
            return false;
        }
        let Some(apic) = self.apics.get_mut(cpu) else { return false };
        apic.deliver_nmi();
        self.counters.nmis = self.counters.nmis.saturating_add(1);
        true
    }

    /// SDM 11.4.7.3: INIT resets the APIC (its ID and base kept) and the
    /// vCPU waits for a SIPI.
    fn init(&mut self, cpu: usize) -> bool {
        let (Some(apic), Some(run)) = (self.apics.get_mut(cpu), self.run.get_mut(cpu)) else { return false };
        apic.reset();
        run.init();
        true
    }

    fn startup(&mut self, cpu: usize, vector: u8) -> bool {
        let took = self.run.get_mut(cpu).is_some_and(|r| r.startup(vector));
        if !took {
            self.counters.sipis_ignored = self.counters.sipis_ignored.saturating_add(1);
        }
        took
    }
}

#[cfg(test)]
#[path = "ipi_tests.rs"]
mod tests;
