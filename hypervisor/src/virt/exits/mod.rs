//! Common exit handling: every arch-neutral [`Exit`] is handled here, one
//! file per exit family.

mod cpuid;
mod hypercall;
mod io;
mod mmio;
mod msr;

use super::{Exit, Vcpu};
use crate::devices::mmio::MmioBus;
use crate::devices::ports::PortBus;
use crate::mm::guest::GuestMemory;
use crate::virt::{Flow, StopReason};

/// Exception vectors we inject.
pub const VECTOR_UD: u8 = 6;
/// General protection.
pub const VECTOR_GP: u8 = 13;

/// What a handler may touch: the exiting VM's parts and nothing else.
pub struct ExitContext<'a> {
    pub vcpu: &'a mut dyn Vcpu,
    pub mem: &'a GuestMemory,
    pub ports: &'a mut PortBus,
    pub mmio: &'a mut MmioBus,
    pub name: &'a str,
    pub id: u16,
    pub debug_hypercalls: bool,
}

/// Handles one exit and says what the scheduler does next.
pub fn handle(ctx: &mut ExitContext<'_>, exit: Exit) -> Flow {
    match exit {
        Exit::Io { port, size, write, string } => io::handle(ctx, port, size, write, string),
        Exit::Msr { write } => msr::handle(ctx, write),
        Exit::Cpuid => cpuid::handle(ctx),
        Exit::Hypercall => hypercall::handle(ctx),
        Exit::Halt => {
            if ctx.vcpu.interrupts_enabled() {
                // No virtual interrupt sources yet: HLT is a yield.
                ctx.vcpu.skip_instruction();
                Flow::Yield
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
