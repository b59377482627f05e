//! VM lifecycle: a VM is built from its config, runs until it stops, and
//! gives back (zeroed) every frame it held.
//!
//! A VM has two halves. The node's half ([`Vm`]) lives on the boot CPU with
//! the network and the management plane. The vCPU's half ([`VcpuCore`])
//! sits in a [`VcpuSlot`] that the physical CPU the VM is placed on runs;
//! the two share the guest RAM and the devices (each behind its own lock).

pub mod build;
pub mod counters;
pub mod runq;
pub mod scheduler;

use crate::devices::VmDevices;
use crate::mm::guest::GuestMemory;
use crate::virt::{StopReason, Vcpu};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use counters::ExitCounters;
use spin::Mutex;

/// The switch port of VM number `id`'s NIC (port 0 is the uplink).
pub fn nic_port(id: u16) -> vswitch::policy::PortId {
    vswitch::policy::PortId(u32::from(id) + 1)
}

/// What the CPU running a vCPU owns while it runs it.
pub struct VcpuCore {
    /// `None` once the node took it back to free it.
    pub vcpu: Option<Box<dyn Vcpu>>,
    pub mem: Option<Arc<GuestMemory>>,
    pub devices: VmDevices,
    /// MSRs with no hardware behind them.
    pub msrs: cpu_policy::msr::MsrFile,
    /// What CPUID tells the guest about its vCPU.
    pub identity: cpu_policy::cpuid::VcpuIdentity,
    /// HLT with interrupts on: not run until an interrupt is pending.
    pub halted: bool,
    pub counters: ExitCounters,
    pub cpu_tsc: u64,
    pub cpu_limit_ms: Option<u64>,
    pub debug_hypercalls: bool,
    pub name: String,
    pub id: u16,
    /// Which of the VM's vCPUs this is (its local APIC ID; 0 boots).
    pub index: usize,
    /// Physical CPUs the config lets it run on (empty: any).
    pub cpus: alloc::vec::Vec<u32>,
}

/// What the runner tells the node after each slice.
#[derive(Clone, Copy, Default)]
pub struct SliceReport {
    pub counters: ExitCounters,
    pub cpu_tsc: u64,
}

impl SliceReport {
    /// Adds another vCPU's figures (a VM's are the sum of its vCPUs').
    pub fn add(&mut self, other: &SliceReport) {
        self.counters.add(&other.counters);
        self.cpu_tsc += other.cpu_tsc;
    }
}

/// One vCPU as the run queues see it. The core's lock is an ownership
/// token: the CPU running the vCPU holds it for a slice and everyone else
/// only ever `try_lock`s it, except [`Vm::stop`], which first asks the
/// runner to let go (`stop_requested` and a kick) and so waits at most one
/// exit.
pub struct VcpuSlot {
    pub core: Mutex<VcpuCore>,
    /// The node wants the vCPU back (stop, restart).
    pub stop_requested: AtomicBool,
    /// Why the guest stopped itself (set once by the runner).
    pub ended: Mutex<Option<StopReason>>,
    /// Counters as of the last slice, for the node.
    pub report: Mutex<SliceReport>,
    /// The physical CPU (per-CPU index) whose run queue holds it.
    pub home: AtomicUsize,
    /// HLT with interrupts off in a VM of several vCPUs: only INIT and a
    /// start-up IPI from a sibling wake it (Linux stops its CPUs this way
    /// before powering off). When every vCPU is parked the VM stops.
    pub parked: AtomicBool,
}

/// Resources that exist only while the VM can run.
pub struct Running {
    pub mem: Arc<GuestMemory>,
    /// One per vCPU, in vCPU order.
    pub slots: alloc::vec::Vec<Arc<VcpuSlot>>,
}

impl Running {
    /// The physical CPUs its vCPUs are placed on, as a bit mask.
    pub fn homes(&self) -> u64 {
        self.slots.iter().fold(0, |m, s| m | 1u64.checked_shl(s.home.load(Ordering::Relaxed) as u32).unwrap_or(0))
    }
}

/// One tenant VM, as the node keeps it.
pub struct Vm {
    pub id: u16,
    pub name: String,
    pub running: Option<Running>,
    /// Buses, chipset, console, NIC and disk (the node's handles).
    pub devices: VmDevices,
    /// As of the last slice (final once stopped).
    pub counters: ExitCounters,
    pub cpu_tsc: u64,
    pub stopped: Option<StopReason>,
    /// For VMs the consoles created: (management VM id, start generation).
    pub managed: Option<(u32, u64)>,
    /// Guest resets: (TSC when the counting window began, resets in it).
    pub resets: (u64, u32),
}

impl Vm {
    /// Stops the VM: takes its vCPU back from the CPU running it, frees
    /// (and thereby zeroes) its memory and vCPU, and prints the one-line
    /// summary scripts read.
    pub fn stop(&mut self, reason: StopReason) {
        if let Some(run) = self.running.take() {
            for slot in &run.slots {
                slot.stop_requested.store(true, Ordering::SeqCst);
                runq::remove(slot);
                runq::kick(slot.home.load(Ordering::Relaxed));
            }
            let mut total = SliceReport::default();
            for slot in &run.slots {
                let mut core = slot.core.lock();
                total.add(&SliceReport { counters: core.counters, cpu_tsc: core.cpu_tsc });
                core.vcpu = None;
                core.mem = None;
                core.devices.detach_all();
            }
            self.counters = total.counters;
            self.cpu_tsc = total.cpu_tsc;
        }
        self.devices.console.lock().flush();
        if let Some(disk) = self.devices.disk.take() {
            let disk = disk.lock();
            let c = disk.dev.backend().counters();
            crate::log!(
                "vm {} disk: reads={} writes={} flushes={} bytes-read={} bytes-written={} io-errors={} integrity-errors={}",
                self.name,
                c.reads,
                c.writes,
                c.flushes,
                c.bytes_read,
                c.bytes_written,
                c.io_errors,
                c.integrity_errors
            );
        }
        self.devices.detach_all();
        let ms = crate::arch::x86_64::time::tsc_to_ms(self.cpu_tsc);
        crate::log!(
            "vm {} stopped: exit-code={} {} cpu-time={}ms console-bytes={} reason=\"{}\"",
            self.name,
            reason.exit_code(),
            self.counters,
            ms,
            self.devices.console.lock().history_len(),
            reason
        );
        self.stopped = Some(reason);
    }

    /// Whether the VM still runs.
    pub fn is_running(&self) -> bool {
        self.stopped.is_none() && self.running.is_some()
    }

    /// Brings the node's copy of the counters up to date and, when the
    /// guest stopped itself on its CPU, finishes the stop here. Returns
    /// whether it stopped.
    pub fn sync(&mut self) -> bool {
        let Some(run) = self.running.as_ref() else { return false };
        let mut total = SliceReport::default();
        let mut ended = None;
        for slot in &run.slots {
            total.add(&slot.report.lock());
            if ended.is_none() {
                ended = slot.ended.lock().take();
            }
        }
        self.counters = total.counters;
        self.cpu_tsc = total.cpu_tsc;
        if ended.is_none() && run.slots.iter().all(|s| s.parked.load(Ordering::SeqCst)) {
            ended = Some(StopReason::HaltedForever);
        }
        if ended.is_none() {
            // INIT stopped every vCPU that was not parked: nothing can
            // ever send the start-up IPI.
            use pc_devices::vcpu::VcpuRunState;
            let chip = self.devices.chip.lock();
            let dead =
                run.slots.iter().enumerate().all(|(i, s)| {
                    s.parked.load(Ordering::SeqCst) || chip.run_state(i) == Some(VcpuRunState::WaitForSipi)
                });
            if dead {
                ended = Some(StopReason::AwaitingStartup);
            }
        }
        match ended {
            Some(reason) => {
                self.stop(reason);
                true
            }
            None => false,
        }
    }
}
