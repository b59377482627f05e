//! `hello`: the well-behaved guest. Checks it runs under BMonitor, exercises
//! every ordinary hypercall, computes something verifiable, tests RAM near
//! the top of its memory and exits with code 0 (1 on any mismatch).
#![no_std]
#![no_main]

use test_guests::hypercall::{self, status_name, ABI_VERSION, CPUID_SIGNATURE};
use test_guests::phys::{self, RamTest};
use test_guests::{cpu, println, BootInfo};

test_guests::entry!(main);

/// The 10000th prime.
const EXPECTED_PRIME: u64 = 104_729;

fn fail(what: core::fmt::Arguments<'_>) -> u32 {
    println!("FAIL: {}", what);
    1
}

fn main(info: &BootInfo) -> u32 {
    println!("hello start");
    if !info.cmdline.is_empty() {
        println!("cmdline: {}", info.cmdline);
    }

    if !cpu::hypervisor_bit() {
        return fail(format_args!("not under BMonitor (CPUID.1:ECX[31] clear)"));
    }
    let sig = cpu::hypervisor_signature();
    if sig != CPUID_SIGNATURE {
        let shown = core::str::from_utf8(&sig).unwrap_or("<binary>");
        return fail(format_args!("not under BMonitor (signature {:?})", shown));
    }
    println!("signature ok");

    match hypercall::abi_version() {
        Ok(ABI_VERSION) => println!("abi version {}", ABI_VERSION),
        Ok(v) => return fail(format_args!("abi_version is {} (expected {})", v, ABI_VERSION)),
        Err(s) => return fail(format_args!("abi_version returned {} ({})", s, status_name(s))),
    }

    let mut name_buf = [0u8; 64];
    let vm = match hypercall::vm_info(&mut name_buf) {
        Ok(vm) => vm,
        Err(s) => return fail(format_args!("vm_info returned {} ({})", s, status_name(s))),
    };
    let name_len = usize::try_from(vm.name_len).unwrap_or(usize::MAX).min(name_buf.len());
    let name = name_buf.get(..name_len).and_then(|n| core::str::from_utf8(n).ok()).unwrap_or("<bad name>");
    println!("hello from {} (vm {}, {} MiB)", name, vm.id, vm.mem_bytes >> 20);

    if let Err(s) = hypercall::console_write(b"console_write ok\n") {
        return fail(format_args!("console_write returned {} ({})", s, status_name(s)));
    }
    println!("console_write returned ok");

    let prime = nth_prime(10_000);
    if prime != EXPECTED_PRIME {
        return fail(format_args!("compute: 10000th prime is {} (expected {})", prime, EXPECTED_PRIME));
    }
    println!("compute ok {}", prime);

    for i in 1..=3 {
        if let Err(s) = hypercall::yield_now() {
            return fail(format_args!("yield {} returned {} ({})", i, s, status_name(s)));
        }
    }
    println!("yield ok (3 times)");

    if let Some(map) = info.memmap {
        println!("memmap: {} entries, {} KiB usable, top {:#x}", map.entries, map.usable_bytes >> 10, map.usable_top);
        if map.usable_top > vm.mem_bytes {
            return fail(format_args!(
                "memmap usable top {:#x} beyond vm_info memory {:#x}",
                map.usable_top, vm.mem_bytes
            ));
        }
    }
    if let Err(code) = test_top_of_ram(info, vm.mem_bytes) {
        return code;
    }

    println!("hello done");
    0
}

/// Writes and reads back RAM at a few places near the top of `mem` bytes.
fn test_top_of_ram(info: &BootInfo, mem: u64) -> Result<(), u32> {
    if mem < 4 << 20 {
        return Err(fail(format_args!("vm_info memory {:#x} below 4 MiB", mem)));
    }
    let top = mem.min(phys::MAPPED_LIMIT);
    let mut tested = 0;
    let mut highest = 0;
    for target in [top - 8, top - 4096, top - (64 << 10), top - (1 << 20), top / 2] {
        // Step down a page at a time past boot structures / the image.
        let mut addr = target & !7;
        for _ in 0..64 {
            match phys::test_ram(addr, &info.protected) {
                RamTest::Ok => {
                    tested += 1;
                    highest = highest.max(addr);
                    break;
                }
                RamTest::Skipped => addr = addr.saturating_sub(4096),
                RamTest::Mismatch(wrote, read) => {
                    return Err(fail(format_args!("ram at {:#x}: wrote {:#x}, read {:#x}", addr, wrote, read)));
                }
            }
        }
    }
    if tested < 4 || highest + (1 << 20) < top {
        return Err(fail(format_args!("ram test covered only {} places (highest {:#x})", tested, highest)));
    }
    println!("ram ok ({} places, highest {:#x}, top {:#x})", tested, highest, top);
    Ok(())
}

/// The `n`th prime (1-based), by trial division.
fn nth_prime(n: u32) -> u64 {
    let mut count = 0;
    let mut candidate = 1u64;
    while count < n {
        candidate += 1;
        if is_prime(candidate) {
            count += 1;
        }
    }
    candidate
}

fn is_prime(x: u64) -> bool {
    if x < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= x {
        if x.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
