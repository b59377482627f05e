//! Round-robin time slicing, one run queue per physical CPU. A slice ends
//! at the preemption timer (VMX) or the host APIC timer (SVM), when the
//! guest yields, or at a kick from another CPU, so a guest spinning with
//! interrupts off cannot starve the others on its CPU, and the node can
//! always take a vCPU back.

use super::{runq, SliceReport, VcpuCore, VcpuSlot};
use crate::arch::x86_64::{apic, percpu, time};
use crate::virt::exits::{self, ExitContext};
use crate::virt::Exit;
use crate::virt::{Flow, StopReason};
use core::sync::atomic::{AtomicBool, Ordering};

/// Length of one time slice.
pub const SLICE_MS: u64 = 10;

/// Longest an idle CPU sleeps before it looks at its halted vCPUs' timers
/// again (a kick wakes it sooner).
const IDLE_MAX_MS: u64 = 5;

/// Every vCPU on every CPU is held (a landlord suspend).
static PAUSED: AtomicBool = AtomicBool::new(false);

/// Pauses or resumes every vCPU; CPUs running one leave it at once.
pub fn set_paused(paused: bool) {
    PAUSED.store(paused, Ordering::SeqCst);
    for cpu in percpu::online() {
        runq::kick(cpu);
    }
}

/// Runs one slice of the vCPU in `slot` on this CPU, unless another CPU
/// holds it, the node wants it back, it already ended, or the node is
/// suspended. Returns whether the guest ran.
pub fn run_slot(slot: &VcpuSlot, slice: u64) -> bool {
    if PAUSED.load(Ordering::SeqCst) || slot.stop_requested.load(Ordering::SeqCst) || slot.ended.lock().is_some() {
        return false;
    }
    let Some(mut core) = slot.core.try_lock() else { return false };
    let ran = run_slice(&mut core, slot, slice);
    *slot.report.lock() = SliceReport { counters: core.counters, cpu_tsc: core.cpu_tsc };
    ran
}

/// The earliest timer deadline (TSC) of a halted vCPU in `slot`.
fn halted_deadline(slot: &VcpuSlot, now: u64) -> Option<u64> {
    let core = slot.core.try_lock()?;
    if !core.halted {
        return Some(now);
    }
    let d = core.devices.chip.lock().next_deadline_on(core.index, now);
    d
}

/// Sends a kick to the physical CPU of every other vCPU of this VM that
/// the chipset says has something new (an IPI, INIT, SIPI, an interrupt).
fn kick_siblings(devices: &crate::devices::VmDevices, me: usize) {
    let mask = devices.chip.lock().take_kicks();
    if mask == 0 {
        return;
    }
    for vcpu in (0..32usize).filter(|v| *v != me && mask & (1 << v) != 0) {
        if let Some(cpu) = devices.homes.get(vcpu) {
            runq::kick(cpu);
        }
    }
}

/// Whether an NMI waits for vCPU `index`.
fn nmi_pending(devices: &crate::devices::VmDevices, index: usize) -> bool {
    devices.chip.lock().lapic(index).is_some_and(|a| a.nmi_pending())
}

/// What the chipset says about an application processor's run state
/// before a slice: `Err(())` when it may not run (waiting for its SIPI),
/// `Ok(Some(vector))` when a SIPI just started it.
fn startup(devices: &crate::devices::VmDevices, index: usize) -> Result<Option<u8>, ()> {
    let mut chip = devices.chip.lock();
    let _ = chip.take_init(index);
    if let Some(vector) = chip.take_startup(index) {
        return Ok(Some(vector));
    }
    match chip.run_state(index) {
        Some(pc_devices::vcpu::VcpuRunState::Running) | None => Ok(None),
        Some(_) => Err(()),
    }
}

/// An application processor's life once virtualization is on: run the
/// vCPUs of its queue in turn; with nothing runnable, sleep in HLT until a
/// kick or the earliest timer of its halted vCPUs.
pub fn ap_loop(cpu: usize) -> ! {
    let slice = SLICE_MS * time::tsc_per_ms();
    let this = percpu::current();
    loop {
        let mut ran = false;
        let mut i = 0;
        while let Some(slot) = runq::get(cpu, i) {
            ran |= run_slot(&slot, slice);
            i += 1;
        }
        if ran || runq::steal(cpu) {
            continue;
        }
        let now = time::rdtsc();
        let mut wake = now + IDLE_MAX_MS * time::tsc_per_ms();
        let mut i = 0;
        while let Some(slot) = runq::get(cpu, i) {
            if let Some(d) = halted_deadline(&slot, now) {
                wake = wake.min(d);
            }
            i += 1;
        }
        if wake <= now {
            continue;
        }
        let ticks =
            u128::from(wake - now) * u128::from(time::apic_ticks_per_ms()) / u128::from(time::tsc_per_ms().max(1));
        this.idle.store(true, Ordering::SeqCst);
        apic::arm_oneshot(u32::try_from(ticks).unwrap_or(u32::MAX).max(1));
        // SAFETY: STI's one-instruction shadow makes STI; HLT atomic, so a
        // kick that arrived since the queue was scanned (pending with
        // interrupts off) ends the HLT at once; its handler only EOIs.
        unsafe { core::arch::asm!("sti", "hlt", "cli") };
        this.idle.store(false, Ordering::SeqCst);
        apic::disarm();
    }
}

/// Runs one slice of the vCPU in `core`: enters it until the slice ends,
/// it yields, it halts or it stops. Before every entry the chipset is
/// brought up to the time, a pending interrupt is injected (or an
/// interrupt window asked for), and the entry is bounded by the vCPU's next
/// timer deadline, so a timer armed in the future costs no exits until it
/// fires. A halted vCPU is not entered at all until an interrupt is
/// pending. A guest that stops itself is recorded in `slot.ended` for the
/// node to finish. Returns whether the guest was entered.
fn run_slice(core: &mut VcpuCore, slot: &VcpuSlot, slice: u64) -> bool {
    let VcpuCore { vcpu, mem, devices, msrs, identity, halted, counters, debug_hypercalls, name, id, index, .. } = core;
    let index = *index;
    let (Some(vcpu), Some(mem)) = (vcpu.as_mut(), mem.as_deref()) else { return false };
    // Where it runs, for the kicks its siblings and devices send.
    devices.homes.set(index, percpu::current_index());
    let Ok(sipi) = startup(devices, index) else { return false };
    if sipi.is_some() {
        *halted = false;
        slot.parked.store(false, Ordering::SeqCst);
    } else if slot.parked.load(Ordering::SeqCst) {
        // Only an NMI (or INIT-SIPI, above) wakes a parked vCPU.
        if !nmi_pending(devices, index) {
            return false;
        }
        slot.parked.store(false, Ordering::SeqCst);
    }
    let start = time::rdtsc();
    if *halted {
        devices.sample_lines();
        let mut chip = devices.chip.lock();
        chip.advance_on(index, start);
        if !chip.interrupt_pending_on(index) && !chip.lapic(index).is_some_and(|a| a.nmi_pending()) {
            return false;
        }
        *halted = false;
    }
    vcpu.switch_in();
    if let Some(vector) = sipi {
        vcpu.start_at_sipi(vector);
    }
    let flow = loop {
        let now = time::rdtsc();
        let used = now.wrapping_sub(start);
        if used >= slice {
            break Flow::Yield;
        }
        if slot.stop_requested.load(Ordering::Relaxed) || PAUSED.load(Ordering::Relaxed) {
            break Flow::Yield;
        }
        devices.sample_lines();
        kick_siblings(devices, index);
        let deadline = {
            let mut chip = devices.chip.lock();
            chip.advance_on(index, now);
            if chip.run_state(index) != Some(pc_devices::vcpu::VcpuRunState::Running) {
                // An INIT (from itself or a sibling) stopped this vCPU: it
                // waits for a start-up IPI.
                break Flow::Yield;
            }
            // An NMI first (one event per entry); it waits while the
            // guest still handles the last one.
            let nmi =
                chip.lapic(index).is_some_and(|a| a.nmi_pending()) && vcpu.nmi_window_open() && chip.take_nmi_on(index);
            if nmi {
                vcpu.inject_nmi();
                counters.injected += 1;
            } else if chip.interrupt_pending_on(index) {
                if vcpu.can_inject_interrupt() {
                    if let Some(vector) = chip.acknowledge_on(index) {
                        vcpu.inject_interrupt(vector);
                        counters.injected += 1;
                    }
                } else {
                    vcpu.request_interrupt_window(true);
                }
            }
            chip.next_deadline_on(index, now)
        };
        let mut budget = slice - used;
        if let Some(d) = deadline {
            budget = budget.min(d.saturating_sub(now).max(1));
        }
        let exit = vcpu.run(budget);
        counters.count(&exit);
        // A timer deadline, the slice end or a kick: the top of the loop decides.
        if exit == Exit::Preempted {
            continue;
        }
        let mut ctx = ExitContext {
            vcpu: vcpu.as_mut(),
            mem,
            devices,
            msrs,
            identity,
            now: time::rdtsc(),
            name,
            id: *id,
            cpu: index,
            debug_hypercalls: *debug_hypercalls,
        };
        match exits::handle(&mut ctx, exit) {
            Flow::Continue => continue,
            other => break other,
        }
    };
    vcpu.switch_out();
    kick_siblings(devices, index);
    if let Some(disk) = devices.disk.as_ref() {
        disk.lock().poll(mem);
    }
    core.cpu_tsc += time::rdtsc().wrapping_sub(start);
    match flow {
        // One vCPU of several stopped itself (Linux parks CPUs it takes
        // offline or stops at power-off this way): a sibling may still
        // INIT and start it again; the VM stops when all are parked.
        Flow::Stop(StopReason::HaltedForever) if core.identity.vcpus > 1 => slot.parked.store(true, Ordering::SeqCst),
        Flow::Stop(reason) => {
            *slot.ended.lock() = Some(reason);
            return true;
        }
        Flow::Halt => core.halted = true,
        _ => {}
    }
    if let Some(limit) = core.cpu_limit_ms {
        if time::tsc_to_ms(core.cpu_tsc) >= limit {
            *slot.ended.lock() = Some(StopReason::CpuTimeLimit(limit));
        }
    }
    true
}
