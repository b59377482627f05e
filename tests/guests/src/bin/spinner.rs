//! `spinner`: disables interrupts and spins forever without a VM exit; the
//! hypervisor must preempt it (its config gives it a CPU time limit).
#![no_std]
#![no_main]

use test_guests::{println, BootInfo};

test_guests::entry!(main);

fn main(_info: &BootInfo) -> u32 {
    println!("spinner start");
    test_guests::serial::flush();
    test_guests::spin_forever()
}
