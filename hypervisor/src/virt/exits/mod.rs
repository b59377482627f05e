//! Common exit handling: every arch-neutral [`Exit`] is handled here, one
//! file per exit family.

mod agent;
mod cpuid;
mod hypercall;
mod io;
mod mmio;
mod msr;

use super::{Exit, Vcpu};
use crate::devices::VmDevices;
use crate::mm::guest::GuestMemory;
use crate::virt::{Flow, StopReason};
use cpu_policy::cpuid::VcpuIdentity;
use cpu_policy::msr::MsrFile;

/// Exception vectors we inject.
pub const VECTOR_UD: u8 = 6;
/// General protection.
pub const VECTOR_GP: u8 = 13;

/// What a handler may touch: the exiting VM's parts and nothing else.
pub struct ExitContext<'a> {
    pub vcpu: &'a mut dyn Vcpu,
    pub mem: &'a GuestMemory,
    pub devices: &'a mut VmDevices,
    pub msrs: &'a mut MsrFile,
    pub identity: &'a VcpuIdentity,
    /// Guest TSC at the exit.
    pub now: u64,
    pub name: &'a str,
    pub id: u16,
    /// Which of the VM's vCPUs exited (its local APIC).
    pub cpu: usize,
    pub debug_hypercalls: bool,
}

/// Handles one exit and says what the scheduler does next.
pub fn handle(ctx: &mut ExitContext<'_>, exit: Exit) -> Flow {
    match exit {
        Exit::Io { port, size, write, string } => io::handle(ctx, port, size, write, string),
        Exit::Msr { write } => msr::handle(ctx, write),
        Exit::Cpuid => cpuid::handle(ctx),
        Exit::Rdpmc => msr::handle_rdpmc(ctx),
        Exit::Hypercall => hypercall::handle(ctx),
        Exit::Halt => {
            ctx.vcpu.skip_instruction();
            if ctx.vcpu.interrupts_enabled() {
                // The vCPU sleeps until an interrupt is pending.
                Flow::Halt
            } else {
                Flow::Stop(StopReason::HaltedForever)
            }
        }
        Exit::NestedFault { gpa, write, fetch } => mmio::handle(ctx, gpa, write, fetch),
        Exit::Preempted => Flow::Yield,
        Exit::InterruptWindow => Flow::Continue,
        Exit::Handled => Flow::Continue,
        Exit::TripleFault => Flow::Stop(StopReason::TripleFault),
        Exit::EntryFailed { detail } => Flow::Stop(StopReason::EntryFailed(detail)),
        Exit::InvalidOpcode { .. } => {
            ctx.vcpu.inject_exception(VECTOR_UD, None);
            Flow::Continue
        }
        Exit::Unhandled { code } => Flow::Stop(StopReason::UnhandledExit(code)),
    }
}
