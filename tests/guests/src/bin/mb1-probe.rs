//! `mb1-probe`: a multiboot1 guest (a.out-kludge header, no PVH note) that
//! checks what its loader passed, then exits like a standard test kernel by
//! writing 0 (success) or 1 to the isa-debug-exit port 0xF4. No hypercalls.
#![no_std]
#![no_main]

use test_guests::bootinfo::{MB1_INFO_CMDLINE, MB1_INFO_MEM, MB1_INFO_MMAP, MB1_INFO_MODS, MULTIBOOT1_EAX};
use test_guests::{port, println, BootInfo, Protocol};

test_guests::entry!(main);

/// The kernel's file name, expected as the command line's first word.
const KERNEL_NAME: &str = "mb1-probe";
/// What the module must start with (`tests/guests/data/module.txt`).
const MODULE_PREFIX: &[u8] = b"bmonitor-module";

fn main(info: &BootInfo) -> u32 {
    println!("mb1-probe start");
    let ok = probe(info);
    if ok {
        println!("mb1-probe ok");
    }
    port::debug_exit(if ok { 0 } else { 1 })
}

fn probe(info: &BootInfo) -> bool {
    if info.eax != MULTIBOOT1_EAX || info.protocol != Protocol::Multiboot1 {
        println!("FAIL: eax {:#x} (expected {:#x})", info.eax, MULTIBOOT1_EAX);
        return false;
    }
    let flags = info.version_or_flags;
    println!("flags {:#x}", flags);
    let mut ok = true;
    for (bit, name) in
        [(MB1_INFO_MEM, "MEM"), (MB1_INFO_CMDLINE, "CMDLINE"), (MB1_INFO_MODS, "MODS"), (MB1_INFO_MMAP, "MMAP")]
    {
        if !info.mb1_has(bit) {
            println!("FAIL: info flag {} missing", name);
            ok = false;
        }
    }

    println!("cmdline: {}", info.cmdline);
    // The first word is the kernel's name; QEMU passes the path it loaded.
    let first = info.cmdline.split(' ').next().unwrap_or("");
    let base = first.rsplit('/').next().unwrap_or("");
    if base != KERNEL_NAME {
        println!("FAIL: cmdline first word {:?} (expected {:?})", first, KERNEL_NAME);
        ok = false;
    }

    match info.module {
        Some(m) => {
            println!("module: {} {} bytes", info.module_name, m.len());
            if info.module_count != 1 {
                println!("FAIL: {} modules (expected 1)", info.module_count);
                ok = false;
            }
            if !m.starts_with(MODULE_PREFIX) {
                let shown = m.get(..m.len().min(32)).and_then(|h| core::str::from_utf8(h).ok()).unwrap_or("<binary>");
                println!("FAIL: module starts with {:?} (expected bmonitor-module)", shown);
                ok = false;
            }
        }
        None => {
            println!("FAIL: no module ({} reported)", info.module_count);
            ok = false;
        }
    }

    match info.mem_upper_kib {
        // At least 1 MiB above 1 MiB, at most 64 GiB.
        Some(kib) if (1024..=64 << 20).contains(&kib) => println!("mem_upper {} KiB", kib),
        Some(kib) => {
            println!("FAIL: mem_upper {} KiB implausible", kib);
            ok = false;
        }
        None => {
            println!("FAIL: no mem_upper");
            ok = false;
        }
    }
    match info.memmap {
        Some(m) if m.usable_bytes > 0 => {
            println!("mmap: {} entries, {} KiB usable, top {:#x}", m.entries, m.usable_bytes >> 10, m.usable_top)
        }
        _ => {
            println!("FAIL: memory map empty");
            ok = false;
        }
    }
    ok
}
