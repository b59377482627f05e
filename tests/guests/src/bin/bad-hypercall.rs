//! `bad-hypercall`: issues malformed hypercalls and checks each status.
//! Exits 0 (`bad-hypercall ok`) if all are as expected, else 1.
#![no_std]
#![no_main]

use test_guests::hypercall::{self, nr, status, status_name, CONSOLE_WRITE_MAX};
use test_guests::{phys, println, BootInfo};

test_guests::entry!(main);

/// An unassigned call number.
const UNKNOWN_NR: u64 = 0x7777;

fn main(_info: &BootInfo) -> u32 {
    println!("bad-hypercall start");
    if !hypercall::present() {
        println!("FAIL: not under BMonitor");
        return 1;
    }
    let mut name = [0u8; 16];
    let mem = match hypercall::vm_info(&mut name) {
        Ok(vm) => vm.mem_bytes,
        Err(s) => {
            println!("FAIL: vm_info returned {} ({})", s, status_name(s));
            return 1;
        }
    };
    // A buffer well beyond RAM (1 GiB, or RAM + 1 GiB for a big VM) and
    // one that starts inside RAM and ends past it.
    let beyond = if mem < 0x4000_0000 { 0x4000_0000 } else { mem + 0x4000_0000 };
    let straddle = mem - 8;
    // A valid buffer: this program's own image (console_write only reads).
    let inside = phys::image().start;
    println!("ram {:#x}, beyond {:#x}, straddle {:#x}", mem, beyond, straddle);

    let checks: [(&str, u64, u64, u64, u64); 8] = [
        ("unknown call 0x7777", UNKNOWN_NR, 0, 0, status::UNKNOWN_CALL),
        ("console_write beyond RAM", nr::CONSOLE_WRITE, beyond, 16, status::BAD_ADDRESS),
        ("console_write straddling end of RAM", nr::CONSOLE_WRITE, straddle, 16, status::BAD_ADDRESS),
        ("console_write too large", nr::CONSOLE_WRITE, inside, CONSOLE_WRITE_MAX + 1, status::TOO_LARGE),
        ("console_write wrapping buffer", nr::CONSOLE_WRITE, u64::MAX - 4, 16, status::INVALID_ARGUMENT),
        ("debug_corrupt_state", nr::DEBUG_CORRUPT_STATE, 0, 0, status::DENIED),
        ("vm_info beyond RAM", nr::VM_INFO, beyond, 64, status::BAD_ADDRESS),
        ("vm_info too large", nr::VM_INFO, beyond, CONSOLE_WRITE_MAX + 1, status::TOO_LARGE),
    ];
    let mut failures = 0;
    for (what, call, buf, len, expected) in checks {
        match hypercall::raw(call, buf, len, 0) {
            Some(r) if r.status == expected => println!("check {}: ok", what),
            Some(r) => {
                println!(
                    "FAIL: {} returned {} ({}), expected {} ({})",
                    what,
                    r.status,
                    status_name(r.status),
                    expected,
                    status_name(expected)
                );
                failures += 1;
            }
            None => {
                println!("FAIL: {} not issued (buffer inside RAM)", what);
                failures += 1;
            }
        }
    }
    if failures != 0 {
        return 1;
    }
    println!("bad-hypercall ok");
    0
}
