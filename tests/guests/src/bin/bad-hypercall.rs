//! `bad-hypercall`: issues malformed hypercalls and checks each status.
//! Exits 0 (`bad-hypercall ok`) if all are as expected, else 1.
#![no_std]
#![no_main]

use test_guests::hypercall::{self, nr, status, status_name, CONSOLE_WRITE_MAX};
use test_guests::{phys, println, BootInfo};

test_guests::entry!(main);

/// Data bytes per direction of the test region (the smallest allowed).
const DATA: usize = 64 * 1024;
/// The region: control page + two rings, page aligned.
#[repr(C, align(4096))]
struct Region([u8; 4096 + 2 * DATA]);
static mut REGION: Region = Region([0; 4096 + 2 * DATA]);

fn put32(r: &mut Region, off: usize, v: u32) {
    if let Some(d) = r.0.get_mut(off..off + 4) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn get32(r: &Region, off: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = r.0.get(off..off + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// Plays a broken agent: calls out of order, bad regions, garbage records.
/// Each must get its error status; the VM keeps running. Returns failures.
fn hostile_agent(beyond: u64) -> u32 {
    // SAFETY: single-threaded guest; the only reference to REGION.
    let region: &mut Region = unsafe { &mut *core::ptr::addr_of_mut!(REGION) };
    let va = region.0.as_ptr() as u64;
    let mut failures = 0;
    let mut extra = 0;
    let mut check = |what: &str, r: Option<hypercall::Ret>, expected: u64| -> Option<hypercall::Ret> {
        match r {
            Some(r) if r.status == expected => {
                println!("check {}: ok", what);
                Some(r)
            }
            Some(r) => {
                println!(
                    "FAIL: {} returned {} ({}), expected {}",
                    what,
                    r.status,
                    status_name(r.status),
                    status_name(expected)
                );
                failures += 1;
                None
            }
            None => {
                println!("FAIL: {} not issued", what);
                failures += 1;
                None
            }
        }
    };
    check("agent_kick before attach", hypercall::raw(nr::AGENT_KICK, 0, 0, 0), status::NOT_ATTACHED);
    check("agent_attach bad size", hypercall::raw(nr::AGENT_ATTACH, va, 4096, 0), status::INVALID_ARGUMENT);
    check("agent_attach unaligned", hypercall::raw(nr::AGENT_ATTACH, va + 8, DATA as u64, 0), status::INVALID_ARGUMENT);
    check("agent_attach beyond RAM", hypercall::raw(nr::AGENT_ATTACH, beyond, DATA as u64, 0), status::BAD_ADDRESS);
    check("agent_attach without magic", hypercall::raw(nr::AGENT_ATTACH, va, DATA as u64, 0), status::INVALID_ARGUMENT);
    put32(region, 0, u32::from_le_bytes(*b"BMA1"));
    check("agent_attach", hypercall::raw(nr::AGENT_ATTACH, va, DATA as u64, 0), status::OK);
    // The node queued its Configure message: one record comes back.
    if let Some(r) = check("agent_kick (empty)", hypercall::raw(nr::AGENT_KICK, 0, 0, 0), status::OK) {
        let len = get32(region, 4096 + DATA);
        if r.rsi == 1 && get32(region, 24) == len + 4 && len > 0 {
            println!("check host-to-guest record: ok");
        } else {
            println!("FAIL: kick gave {} records, head {}, first length {}", r.rsi, get32(region, 24), len);
            extra += 1;
        }
    }
    // A record claiming 4 GiB.
    put32(region, 4096, u32::MAX);
    put32(region, 16, 8);
    check("agent_kick with a garbage record", hypercall::raw(nr::AGENT_KICK, 0, 0, 0), status::RING_FAULT);
    check("agent_kick after the fault", hypercall::raw(nr::AGENT_KICK, 0, 0, 0), status::NOT_ATTACHED);
    // Re-attach, then a head beyond the ring.
    for off in [16, 20, 24, 28, 32] {
        put32(region, off, 0);
    }
    check("agent_attach again", hypercall::raw(nr::AGENT_ATTACH, va, DATA as u64, 0), status::OK);
    put32(region, 16, (DATA as u32) * 3);
    check("agent_kick with head beyond the ring", hypercall::raw(nr::AGENT_KICK, 0, 0, 0), status::RING_FAULT);
    put32(region, 16, 0);
    check("agent_attach a third time", hypercall::raw(nr::AGENT_ATTACH, va, DATA as u64, 0), status::OK);
    check("agent_detach", hypercall::raw(nr::AGENT_DETACH, 0, 0, 0), status::OK);
    check("agent_detach twice", hypercall::raw(nr::AGENT_DETACH, 0, 0, 0), status::NOT_ATTACHED);
    failures + extra
}

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
    failures += hostile_agent(beyond);
    if failures != 0 {
        return 1;
    }
    println!("bad-hypercall ok");
    0
}
