//! `poweroff`: writes S5 (0x2000) to QEMU's ACPI PM1a control port 0x604;
//! the hypervisor treats that as this VM powering off (exit code 0).
#![no_std]
#![no_main]

use test_guests::{port, println, BootInfo};

test_guests::entry!(main);

fn main(_info: &BootInfo) -> u32 {
    println!("poweroff start");
    test_guests::serial::flush();
    port::outw(port::ACPI_PM1A_CNT, port::ACPI_SLEEP_S5);
    // QEMU handles the request asynchronously: give it time.
    test_guests::spin_delay(20_000_000);
    println!("FAIL: still running after poweroff");
    1
}
