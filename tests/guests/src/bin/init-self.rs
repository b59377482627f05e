//! `init-self`: a hostile guest that sends INIT to itself through the
//! xAPIC ICR (physical destination: its own APIC ID). Its only vCPU then
//! waits for a
//! start-up IPI nobody can send: BMonitor must stop the VM with that
//! reason rather than keep a VM that can never run again, and the other
//! VMs must not notice. Printing after the INIT would be a failure.
#![no_std]
#![no_main]

use test_guests::apic::{self, ICR_ASSERT};
use test_guests::{println, BootInfo};

test_guests::entry!(main);

/// ICR delivery mode INIT (101b in bits 10:8).
const ICR_INIT: u32 = 5 << 8;

fn main(_info: &BootInfo) -> u32 {
    println!("init-self start");
    test_guests::serial::flush();
    apic::enable(0xFF);
    apic::send_ipi(0, ICR_ASSERT | ICR_INIT);
    test_guests::spin_delay(1_000_000);
    println!("FAIL: init-self still running after INIT");
    1
}
