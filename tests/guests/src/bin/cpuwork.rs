//! `cpuwork`: a CPU-bound tenant. Counts loop turns for `ms=` milliseconds
//! of node time (default 2000), checking the clock every 2^16 turns (one
//! hypercall each), then prints how much work it got done and exits 0.
//! Two of these on one physical CPU share it; on two they should each get
//! a whole one: the SMP scaling benchmark and the `smp-pair-*` scenarios
//! compare the totals.
#![no_std]
#![no_main]

use test_guests::{clock, println, BootInfo};

test_guests::entry!(main);

/// Node time the work runs for when the command line does not say.
const DEFAULT_MS: u64 = 2000;

fn arg(cmdline: &str, key: &str) -> Option<u64> {
    cmdline.split_ascii_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?.parse().ok()
}

fn main(info: &BootInfo) -> u32 {
    let ms = arg(info.cmdline, "ms").unwrap_or(DEFAULT_MS).clamp(1, 600_000);
    let start = clock::now_ms();
    println!("cpuwork start at {start} ms, for {ms} ms");
    let end = start + ms;
    let mut work: u64 = 0;
    let mut acc: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        for _ in 0..(1u32 << 16) {
            // A little real arithmetic per turn, so the loop is not folded.
            acc = core::hint::black_box(acc.rotate_left(7) ^ work);
            work += 1;
        }
        if clock::now_ms() >= end {
            break;
        }
    }
    let took = clock::now_ms() - start;
    println!("cpuwork done: work={} Mturns in {took} ms (check {:x})", work >> 20, acc & 0xFFFF);
    0
}
