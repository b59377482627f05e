//! Round-robin time slicing on one physical CPU. A slice ends at the
//! preemption timer (VMX) or host tick (SVM), or when the guest yields, so a
//! guest spinning with interrupts off cannot starve the others.

use super::Vm;
use crate::arch::x86_64::time;
use crate::virt::exits::{self, ExitContext};
use crate::virt::{Flow, StopReason};

/// Length of one time slice.
pub const SLICE_MS: u64 = 10;

/// Runs one slice of `vm`: enters it until the slice ends, it yields or
/// it stops.
pub fn run_slice(vm: &mut Vm, slice: u64) {
    let Vm { id, name, running, ports, mmio, counters, debug_hypercalls, .. } = vm;
    let Some(run) = running.as_mut() else { return };
    run.vcpu.switch_in();
    let start = time::rdtsc();
    let flow = loop {
        let used = time::rdtsc().wrapping_sub(start);
        if used >= slice {
            break Flow::Yield;
        }
        let exit = run.vcpu.run(slice - used);
        counters.count(&exit);
        let mut ctx = ExitContext {
            vcpu: run.vcpu.as_mut(),
            mem: &run.mem,
            ports,
            mmio,
            name,
            id: *id,
            debug_hypercalls: *debug_hypercalls,
        };
        match exits::handle(&mut ctx, exit) {
            Flow::Continue => continue,
            other => break other,
        }
    };
    run.vcpu.switch_out();
    mmio.poll_disk(&run.mem);
    vm.cpu_tsc += time::rdtsc().wrapping_sub(start);
    if let Flow::Stop(reason) = flow {
        vm.stop(reason);
        return;
    }
    if let Some(limit) = vm.cpu_limit_ms {
        if time::tsc_to_ms(vm.cpu_tsc) >= limit {
            vm.stop(StopReason::CpuTimeLimit(limit));
        }
    }
}
