//! `triple-fault`: loads an IDT with limit 0 and executes INT3, which
//! triple-faults. The hypervisor must stop it (and only it).
#![no_std]
#![no_main]

use test_guests::{idt, println, BootInfo};

test_guests::entry!(main);

fn main(_info: &BootInfo) -> u32 {
    println!("triple-fault start");
    test_guests::serial::flush();
    idt::triple_fault();
    // An emulator may act on the shutdown asynchronously: give it time.
    test_guests::spin_delay(20_000_000);
    println!("FAIL: still running after triple fault");
    1
}
