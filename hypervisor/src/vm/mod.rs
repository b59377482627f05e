//! VM lifecycle: a VM is built from its config, runs until it stops, and
//! gives back (zeroed) every frame it held.

pub mod build;
pub mod counters;
pub mod scheduler;

use crate::devices::VmDevices;
use crate::mm::guest::GuestMemory;
use crate::virt::{StopReason, Vcpu};
use alloc::boxed::Box;
use alloc::string::String;
use counters::ExitCounters;

/// The switch port of VM number `id`'s NIC (port 0 is the uplink).
pub fn nic_port(id: u16) -> vswitch::policy::PortId {
    vswitch::policy::PortId(u32::from(id) + 1)
}

/// Resources that exist only while the VM can run.
pub struct Running {
    pub mem: GuestMemory,
    pub vcpu: Box<dyn Vcpu>,
}

/// One tenant VM.
pub struct Vm {
    pub id: u16,
    pub name: String,
    pub running: Option<Running>,
    /// Buses, chipset, console, NIC and disk.
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
    pub stopped: Option<StopReason>,
    /// For VMs the consoles created: (management VM id, start generation).
    pub managed: Option<(u32, u64)>,
    /// Guest resets: (TSC when the counting window began, resets in it).
    pub resets: (u64, u32),
}

impl Vm {
    /// Stops the VM: frees (and thereby zeroes) its memory and vCPU, and
    /// prints the one-line summary scripts read.
    pub fn stop(&mut self, reason: StopReason) {
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
        self.running = None;
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
}
