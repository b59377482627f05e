//! VM lifecycle: a VM is built from its config, runs until it stops, and
//! gives back (zeroed) every frame it held.

pub mod build;
pub mod counters;
pub mod scheduler;

use crate::devices::mmio::MmioBus;
use crate::devices::ports::PortBus;
use crate::mm::guest::GuestMemory;
use crate::virt::Vcpu;
use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;
use counters::ExitCounters;

/// Why a VM stopped. Every stop names its reason in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The exit hypercall.
    Exited(u32),
    /// A write to isa-debug-exit.
    DebugExit(u32),
    /// ACPI power-off from the guest.
    PowerOff,
    /// Reset request from the guest (restart is not offered yet).
    Reset,
    /// Shutdown after a triple fault.
    TripleFault,
    /// The CPU refused to enter the guest.
    EntryFailed(u64),
    /// Access outside the VM's RAM and devices.
    MemoryFault { gpa: u64, write: bool, fetch: bool },
    /// An exit with no handler.
    UnhandledExit(u64),
    /// HLT with interrupts disabled: nothing can ever wake it.
    HaltedForever,
    /// The configured CPU-time budget ran out.
    CpuTimeLimit(u64),
    /// INS/OUTS, which BMonitor does not emulate yet.
    StringIo(u16),
    /// An access to the device window BMonitor could not emulate.
    BadMmio { gpa: u64, why: String },
    /// A management console stopped it.
    Console(&'static str),
    /// The VM could not be built (bad image, no memory).
    LoadFailed(String),
}

impl StopReason {
    /// Exit code for the stop line: the guest's own, 0 for power-off, -1
    /// for every abnormal stop.
    pub fn exit_code(&self) -> i64 {
        match self {
            StopReason::Exited(c) | StopReason::DebugExit(c) => i64::from(*c),
            StopReason::PowerOff => 0,
            _ => -1,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Exited(c) => write!(f, "exit hypercall ({c})"),
            StopReason::DebugExit(c) => write!(f, "isa-debug-exit ({c})"),
            StopReason::PowerOff => write!(f, "guest power-off"),
            StopReason::Reset => write!(f, "guest reset request"),
            StopReason::TripleFault => write!(f, "triple fault"),
            StopReason::EntryFailed(d) => write!(f, "VM entry failed (detail {d:#x})"),
            StopReason::MemoryFault { gpa, write, fetch } => {
                let kind = if *fetch {
                    "fetch"
                } else if *write {
                    "write"
                } else {
                    "read"
                };
                write!(f, "{kind} outside guest memory at gpa {gpa:#x}")
            }
            StopReason::UnhandledExit(c) => write!(f, "unhandled exit {c:#x}"),
            StopReason::HaltedForever => write!(f, "HLT with interrupts disabled"),
            StopReason::CpuTimeLimit(ms) => write!(f, "CPU time limit of {ms} ms reached"),
            StopReason::StringIo(p) => write!(f, "string I/O (INS/OUTS) on port {p:#x} is not supported"),
            StopReason::BadMmio { gpa, why } => write!(f, "MMIO access at gpa {gpa:#x}: {why}"),
            StopReason::Console(why) => f.write_str(why),
            StopReason::LoadFailed(why) => write!(f, "load failed: {why}"),
        }
    }
}

/// What the exit handler wants the scheduler to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Re-enter the guest.
    Continue,
    /// End this VM's slice.
    Yield,
    /// Stop this VM for good.
    Stop(StopReason),
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
    pub ports: PortBus,
    pub mmio: MmioBus,
    pub counters: ExitCounters,
    pub cpu_tsc: u64,
    pub cpu_limit_ms: Option<u64>,
    pub debug_hypercalls: bool,
    pub stopped: Option<StopReason>,
    /// For VMs the consoles created: (management VM id, start generation).
    pub managed: Option<(u32, u64)>,
}

impl Vm {
    /// Stops the VM: frees (and thereby zeroes) its memory and vCPU, and
    /// prints the one-line summary scripts read.
    pub fn stop(&mut self, reason: StopReason) {
        self.ports.uart.flush(&self.name);
        if let Some(disk) = self.mmio.disk.take() {
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
        self.running = None;
        let ms = crate::arch::x86_64::time::tsc_to_ms(self.cpu_tsc);
        crate::log!(
            "vm {} stopped: exit-code={} {} cpu-time={}ms console-bytes={} reason=\"{}\"",
            self.name,
            reason.exit_code(),
            self.counters,
            ms,
            self.ports.uart.history_len(),
            reason
        );
        self.stopped = Some(reason);
    }

    /// Whether the VM still runs.
    pub fn is_running(&self) -> bool {
        self.stopped.is_none() && self.running.is_some()
    }
}
