//! Per-VM exit counters: what the consoles and tests read to reason about
//! cost ("counted, not guessed").

use crate::virt::Exit;
use core::fmt;

/// VM exits by reason, plus hypercalls and CPU time.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitCounters {
    pub total: u64,
    pub io: u64,
    pub hypercall: u64,
    pub msr: u64,
    pub cpuid: u64,
    pub halt: u64,
    pub npf: u64,
    pub preempt: u64,
    pub control: u64,
    pub invalid_opcode: u64,
    pub other: u64,
    /// Interrupt-window exits (the guest became able to take an interrupt).
    pub window: u64,
    /// Interrupts injected (not exits: a count of deliveries).
    pub injected: u64,
}

impl ExitCounters {
    /// Adds another vCPU's counts.
    pub fn add(&mut self, o: &ExitCounters) {
        self.total += o.total;
        self.io += o.io;
        self.hypercall += o.hypercall;
        self.msr += o.msr;
        self.cpuid += o.cpuid;
        self.halt += o.halt;
        self.npf += o.npf;
        self.preempt += o.preempt;
        self.control += o.control;
        self.invalid_opcode += o.invalid_opcode;
        self.other += o.other;
        self.window += o.window;
        self.injected += o.injected;
    }

    /// Counts one exit.
    pub fn count(&mut self, exit: &Exit) {
        self.total += 1;
        let slot = match exit {
            Exit::Io { .. } => &mut self.io,
            Exit::Hypercall => &mut self.hypercall,
            Exit::Msr { .. } | Exit::Rdpmc => &mut self.msr,
            Exit::Cpuid => &mut self.cpuid,
            Exit::Halt => &mut self.halt,
            Exit::InterruptWindow => &mut self.window,
            Exit::NestedFault { .. } => &mut self.npf,
            Exit::Preempted => &mut self.preempt,
            Exit::Handled => &mut self.control,
            Exit::InvalidOpcode { .. } => &mut self.invalid_opcode,
            Exit::TripleFault | Exit::EntryFailed { .. } | Exit::Unhandled { .. } => &mut self.other,
        };
        *slot += 1;
    }
}

impl fmt::Display for ExitCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exits={} (io={} hypercall={} msr={} cpuid={} halt={} npf={} preempt={} ctl={} ud={} other={} window={} irqs={})",
            self.total,
            self.io,
            self.hypercall,
            self.msr,
            self.cpuid,
            self.halt,
            self.npf,
            self.preempt,
            self.control,
            self.invalid_opcode,
            self.other,
            self.window,
            self.injected
        )
    }
}
