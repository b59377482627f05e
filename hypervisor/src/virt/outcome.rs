//! What handling an exit decides: go on, end the slice, or stop the VM
//! for a named reason. Lives below `vm` so exit handlers need nothing above
//! them.

use alloc::string::String;
use core::fmt;

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
    /// Every vCPU is parked or waits for a start-up IPI (an INIT reached
    /// them all): no one is left to start them.
    AwaitingStartup,
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
    /// Whether the VM stopped without anyone asking: a fault, a failed
    /// entry, a guest-reported failure (non-zero exit). A power-off, a
    /// guest reset and a console's stop are normal.
    pub fn is_abnormal(&self) -> bool {
        match self {
            StopReason::Exited(c) | StopReason::DebugExit(c) => *c != 0,
            StopReason::PowerOff | StopReason::Reset | StopReason::Console(_) => false,
            _ => true,
        }
    }

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
            StopReason::AwaitingStartup => {
                write!(f, "every vCPU waits for a start-up IPI (INIT) and none can send one")
            }
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
    /// HLT with interrupts enabled: the vCPU runs again once an interrupt
    /// is pending (its next timer deadline, or a device's line).
    Halt,
    /// Stop this VM for good.
    Stop(StopReason),
}
