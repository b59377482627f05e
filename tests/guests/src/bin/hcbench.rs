//! `hcbench`: the system benchmark guest. Times N round trips of the
//! cheapest hypercall (abi_version) and of an I/O exit (a read of an
//! unclaimed port) with RDTSC, prints the averages, and exits 0. The
//! hypervisor's own counters in the stop line give exits per operation.
#![no_std]
#![no_main]

use test_guests::{cpu, hypercall, port, println, BootInfo};

test_guests::entry!(main);

/// Round trips per measurement.
const ROUNDS: u64 = 2000;

fn main(_info: &BootInfo) -> u32 {
    println!("hcbench start: {} rounds", ROUNDS);
    let t0 = cpu::rdtsc();
    for _ in 0..ROUNDS {
        if hypercall::abi_version().is_err() {
            println!("FAIL: abi_version failed");
            return 1;
        }
    }
    let t1 = cpu::rdtsc();
    for _ in 0..ROUNDS {
        let _ = port::inb(0x2E8); // COM4: no device
    }
    let t2 = cpu::rdtsc();
    println!("hcbench hypercall: {} tsc/round trip", (t1 - t0) / ROUNDS);
    println!("hcbench port-read: {} tsc/round trip", (t2 - t1) / ROUNDS);
    println!("hcbench done");
    0
}
