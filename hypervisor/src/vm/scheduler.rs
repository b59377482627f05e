//! Round-robin time slicing on one physical CPU. A slice ends at the
//! preemption timer (VMX) or host tick (SVM), or when the guest yields, so a
//! guest spinning with interrupts off cannot starve the others.

use super::Vm;
use crate::arch::x86_64::time;
use crate::virt::exits::{self, ExitContext};
use crate::virt::Exit;
use crate::virt::{Flow, StopReason};

/// Length of one time slice.
pub const SLICE_MS: u64 = 10;

/// Runs one slice of `vm`: enters it until the slice ends, it yields, it
/// halts or it stops. Before every entry the chipset is brought up to the
/// time, a pending interrupt is injected (or an interrupt window asked
/// for), and the entry is bounded by the vCPU's next timer deadline, so a
/// timer armed in the future costs no exits until it fires. A halted vCPU
/// is not entered at all until an interrupt is pending.
pub fn run_slice(vm: &mut Vm, slice: u64) {
    let Vm { id, name, running, devices, msrs, identity, halted, counters, debug_hypercalls, .. } = vm;
    let Some(run) = running.as_mut() else { return };
    let start = time::rdtsc();
    if *halted {
        devices.sample_lines();
        let mut chip = devices.chip.lock();
        chip.advance(start);
        if !chip.interrupt_pending() {
            return;
        }
        *halted = false;
    }
    run.vcpu.switch_in();
    let flow = loop {
        let now = time::rdtsc();
        let used = now.wrapping_sub(start);
        if used >= slice {
            break Flow::Yield;
        }
        devices.sample_lines();
        let deadline = {
            let mut chip = devices.chip.lock();
            chip.advance(now);
            if chip.interrupt_pending() {
                if run.vcpu.can_inject_interrupt() {
                    if let Some(vector) = chip.acknowledge() {
                        run.vcpu.inject_interrupt(vector);
                        counters.injected += 1;
                    }
                } else {
                    run.vcpu.request_interrupt_window(true);
                }
            }
            chip.next_deadline(now)
        };
        let mut budget = slice - used;
        if let Some(d) = deadline {
            budget = budget.min(d.saturating_sub(now).max(1));
        }
        let exit = run.vcpu.run(budget);
        counters.count(&exit);
        // A timer deadline or the slice end: the top of the loop decides.
        if exit == Exit::Preempted {
            continue;
        }
        let mut ctx = ExitContext {
            vcpu: run.vcpu.as_mut(),
            mem: &run.mem,
            devices,
            msrs,
            identity,
            now: time::rdtsc(),
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
    if let Some(disk) = devices.disk.as_ref() {
        disk.lock().poll(&run.mem);
    }
    vm.cpu_tsc += time::rdtsc().wrapping_sub(start);
    match flow {
        Flow::Stop(reason) => {
            vm.stop(reason);
            return;
        }
        Flow::Halt => vm.halted = true,
        _ => {}
    }
    if let Some(limit) = vm.cpu_limit_ms {
        if time::tsc_to_ms(vm.cpu_tsc) >= limit {
            vm.stop(StopReason::CpuTimeLimit(limit));
        }
    }
}
