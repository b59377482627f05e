//! `bad-entry`: asks BMonitor (debug hypercalls enabled in its config) to
//! corrupt its saved CPU state, so the next VM entry fails. The hypervisor
//! must stop it (and only it).
#![no_std]
#![no_main]

use test_guests::hypercall::{self, status_name};
use test_guests::{println, BootInfo};

test_guests::entry!(main);

fn main(_info: &BootInfo) -> u32 {
    println!("bad-entry start");
    test_guests::serial::flush();
    match hypercall::debug_corrupt_state() {
        Ok(()) => println!("FAIL: still running after corrupt"),
        Err(s) => println!("FAIL: still running after corrupt (status {} {})", s, status_name(s)),
    }
    1
}
