//! `ipi-latency`: the cross-CPU wake-up latency a Linux guest sees. A
//! thread pinned to CPU 1 sleeps (futex: its CPU idles in HLT); the main
//! thread on CPU 0 reads the TSC and wakes it, which makes the kernel send
//! CPU 1 a reschedule IPI. The woken thread reads the TSC again. Under
//! BMonitor the IPI goes through the local APIC model and, when the two
//! vCPUs sit on different physical CPUs, a kick from one to the other.
//! Prints `ipi-latency: N wake-ups, median M, p90 P, max X TSC ticks`.
//!
//! usage: ipi-latency [ROUNDS]   (default 200, at most 10000)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long the sleeper is left alone before each wake-up, so its CPU is
/// idle (in HLT) when the IPI comes.
const IDLE: Duration = Duration::from_millis(3);

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Pins the calling thread to `cpu`; false when the CPU does not exist.
fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is the empty set; the libc calls only read
    // and write it, and sched_setaffinity(0, ..) affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200).clamp(1, 10_000);
    if !pin(0) {
        println!("ipi-latency: cannot pin to CPU 0");
        std::process::exit(1);
    }
    // TSC of the wake-up in flight; 0 when none is.
    let sent = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<u64>();
    let (ready_tx, ready_rx) = mpsc::channel::<bool>();
    let sleeper_sent = sent.clone();
    let sleeper = std::thread::spawn(move || {
        let _ = ready_tx.send(pin(1));
        loop {
            std::thread::park();
            let t0 = sleeper_sent.load(Ordering::Acquire);
            if t0 == u64::MAX {
                return;
            }
            if t0 != 0 {
                let _ = tx.send(rdtsc().saturating_sub(t0));
                sleeper_sent.store(0, Ordering::Release);
            }
        }
    });
    if ready_rx.recv() != Ok(true) {
        println!("ipi-latency: only one CPU (cannot pin to CPU 1)");
        std::process::exit(1);
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        std::thread::sleep(IDLE);
        sent.store(rdtsc(), Ordering::Release);
        sleeper.thread().unpark();
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(ticks) => samples.push(ticks),
            Err(_) => {
                println!("ipi-latency: a wake-up was lost (no answer in 2 s)");
                std::process::exit(1);
            }
        }
        while sent.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
    }
    sent.store(u64::MAX, Ordering::Release);
    sleeper.thread().unpark();
    let _ = sleeper.join();
    samples.sort_unstable();
    let at = |q: usize| samples.get((samples.len() - 1) * q / 100).copied().unwrap_or(0);
    println!(
        "ipi-latency: {} wake-ups, median {}, p90 {}, max {} TSC ticks",
        samples.len(),
        at(50),
        at(90),
        samples.last().copied().unwrap_or(0)
    );
}
