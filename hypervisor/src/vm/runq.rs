//! Per-CPU run queues: which vCPUs each physical CPU time-slices, where a
//! new vCPU goes (the config's allowed CPUs, then the least loaded online
//! one), and the kick that makes another CPU look at its queue now.

use super::VcpuSlot;
use crate::arch::x86_64::{apic, percpu};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use spin::Mutex;

/// Most vCPUs one physical CPU's queue holds; a VM placed beyond it is
/// refused with this limit named.
pub const MAX_PER_CPU: usize = 64;

/// vCPU moves between CPUs that are logged, node-wide.
const MAX_LOGGED_MOVES: u64 = 32;
/// vCPU moves so far.
static MOVES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

static QUEUES: [Mutex<Vec<Arc<VcpuSlot>>>; percpu::MAX_CPUS] = [const { Mutex::new(Vec::new()) }; percpu::MAX_CPUS];

/// Where a vCPU was placed, and whether its pinning could be honoured.
pub struct Placement {
    pub cpu: usize,
    /// The config named CPUs, none of which is online.
    pub pin_unmet: bool,
}

/// Queues `slot` on a CPU: among the online CPUs the config allows (all
/// when `allowed` is empty or names none that is online), the one with the
/// fewest vCPUs, lowest index first.
pub fn place(slot: &Arc<VcpuSlot>, allowed: &[u32]) -> Result<Placement, alloc::string::String> {
    let online: Vec<usize> = percpu::online().collect();
    let pinned: Vec<usize> = online.iter().copied().filter(|c| allowed.iter().any(|&a| a as usize == *c)).collect();
    let pin_unmet = !allowed.is_empty() && pinned.is_empty();
    let candidates = if pinned.is_empty() { online } else { pinned };
    let cpu =
        candidates.iter().copied().min_by_key(|&c| QUEUES.get(c).map_or(usize::MAX, |q| q.lock().len())).unwrap_or(0);
    let queue = QUEUES.get(cpu).ok_or("no run queue")?;
    let mut q = queue.lock();
    if q.len() >= MAX_PER_CPU {
        return Err(alloc::format!("CPU {cpu} already runs {MAX_PER_CPU} vCPUs (the per-CPU limit)"));
    }
    slot.home.store(cpu, Ordering::SeqCst);
    q.push(slot.clone());
    drop(q);
    kick(cpu);
    Ok(Placement { cpu, pin_unmet })
}

/// Takes `slot` off the run queues (it is stopping). Every queue is
/// searched, since another CPU may be moving it at this moment.
pub fn remove(slot: &Arc<VcpuSlot>) {
    for q in QUEUES.iter() {
        q.lock().retain(|s| !Arc::ptr_eq(s, slot));
    }
}

/// An idle CPU takes a runnable vCPU from the CPU with the most vCPUs
/// queued (at least two), so a CPU that ran dry does not stay idle while
/// another time-slices several guests. A vCPU whose config pins it
/// elsewhere is left alone. Returns whether one moved.
///
/// Locks: the victim's queue, and within it only `try_lock` on cores (no
/// CPU ever waits on a core while holding a queue). The core's lock keeps
/// any two CPUs from running the vCPU at once; its VMCS was cleared at its
/// last switch-out and its cached translations are flushed at its first
/// switch-in here.
pub fn steal(me: usize) -> bool {
    let Some(victim) =
        percpu::online().filter(|&c| c != me).max_by_key(|&c| QUEUES.get(c).map_or(0, |q| q.lock().len()))
    else {
        return false;
    };
    let Some(queue) = QUEUES.get(victim) else { return false };
    let mut q = queue.lock();
    if q.len() < 2 {
        return false;
    }
    let pick = q.iter().rposition(|slot| {
        if slot.stop_requested.load(Ordering::SeqCst) || slot.parked.load(Ordering::SeqCst) {
            return false;
        }
        let Some(core) = slot.core.try_lock() else { return false };
        let allowed = core.cpus.is_empty() || core.cpus.iter().any(|&c| c as usize == me);
        !core.halted && core.vcpu.is_some() && allowed
    });
    let Some(i) = pick else { return false };
    if i >= q.len() {
        return false;
    }
    let slot = q.remove(i);
    drop(q);
    slot.home.store(me, Ordering::SeqCst);
    if let Some(mine) = QUEUES.get(me) {
        mine.lock().push(slot.clone());
    }
    // Whichever CPU holds the core runs one slice at a time, so a last
    // slice on the old CPU is harmless; the runner records where the vCPU
    // runs (for kicks) at every slice.
    // Guests that halt and wake can make vCPUs move often: only the
    // first moves are logged, so no guest can grow the log this way.
    let moves = MOVES.fetch_add(1, Ordering::Relaxed);
    if moves < MAX_LOGGED_MOVES {
        if let Some(core) = slot.core.try_lock() {
            crate::log!("vm {}: vCPU {} moved from CPU {victim} to idle CPU {me}", core.name, core.index);
        }
    } else if moves == MAX_LOGGED_MOVES {
        crate::log!("smp: {MAX_LOGGED_MOVES} vCPU moves logged (the limit); later moves are not");
    }
    // The node may have asked for it back during the move.
    if slot.stop_requested.load(Ordering::SeqCst) {
        remove(&slot);
    }
    true
}

/// The `i`-th vCPU on `cpu`'s queue.
pub fn get(cpu: usize, i: usize) -> Option<Arc<VcpuSlot>> {
    QUEUES.get(cpu)?.lock().get(i).cloned()
}

/// Makes `cpu` leave its guest (or its idle HLT) and look at its queue:
/// an interrupt for one of its vCPUs is pending, or the node wants one
/// back. Nothing to do for the calling CPU itself.
pub fn kick(cpu: usize) {
    if cpu == percpu::current_index() {
        return;
    }
    let Some(target) = percpu::get(cpu) else { return };
    if target.state.load(Ordering::SeqCst) != percpu::STATE_UP {
        return;
    }
    // Only the first kick in flight is timed (a later one merges with it).
    let _ =
        target.kick_sent.compare_exchange(0, crate::arch::x86_64::time::rdtsc(), Ordering::Relaxed, Ordering::Relaxed);
    apic::send_kick(target.apic_id.load(Ordering::Relaxed));
}

/// Logs, per CPU that took kicks, how many and how long they took from
/// the sender's TSC to the receiver's (CPUs share one TSC).
pub fn report_kicks() {
    for cpu in percpu::online() {
        let Some(c) = percpu::get(cpu) else { continue };
        let n = c.kicks.load(Ordering::Relaxed);
        if n == 0 {
            continue;
        }
        crate::log!(
            "smp: CPU {cpu}: kicks={n} latency-avg={} latency-max={} TSC ticks",
            c.kick_latency_sum.load(Ordering::Relaxed) / c.kicks_timed.load(Ordering::Relaxed).max(1),
            c.kick_latency_max.load(Ordering::Relaxed)
        );
    }
}
