//! `oob-mem`: reads a guest-physical address far beyond its RAM (1 GiB,
//! inside the boot identity map). The hypervisor must stop it.
#![no_std]
#![no_main]

use test_guests::{phys, println, BootInfo};

test_guests::entry!(main);

/// Guest-physical address read: 1 GiB, beyond any test VM's RAM.
const TARGET: u64 = 0x4000_0000;

fn main(_info: &BootInfo) -> u32 {
    println!("oob-mem reading {:#x}", TARGET);
    test_guests::serial::flush();
    match phys::probe_read(TARGET) {
        Some(v) => println!("read {:#x} from {:#x}", v, TARGET),
        None => println!("address {:#x} not mapped", TARGET),
    }
    println!("FAIL: still running");
    1
}
