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

/// Takes `slot` off its CPU's queue (it is stopping).
pub fn remove(slot: &Arc<VcpuSlot>) {
    if let Some(q) = QUEUES.get(slot.home.load(Ordering::SeqCst)) {
        q.lock().retain(|s| !Arc::ptr_eq(s, slot));
    }
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
