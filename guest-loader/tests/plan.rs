//! plan_boot: exact boot-info bytes for PVH and multiboot1, placement and errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use guest_loader::*;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn kernel(protocol: Protocol, segments: Vec<Segment<'static>>) -> KernelImage<'static> {
    KernelImage { protocol, entry: 0x10_0000, segments, linux: None }
}

fn fw() -> Firmware {
    Firmware { vcpus: 1, ioapic_id: 1, virtio: Vec::new() }
}

fn seg(gpa: u64, data: &'static [u8], mem_len: u64) -> Segment<'static> {
    Segment { gpa, data, mem_len }
}

/// Reads guest memory as the hypervisor would after applying `plan`.
fn ram(plan: &BootPlan<'_>, mem: u64) -> Vec<u8> {
    let mut ram = vec![0u8; mem as usize];
    for w in &plan.writes {
        let d = w.data.as_slice();
        let at = w.gpa as usize;
        ram[at..at + d.len()].copy_from_slice(d);
    }
    ram
}

fn cstr(ram: &[u8], at: u64) -> String {
    let s = &ram[at as usize..];
    String::from_utf8(s[..s.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
}

fn check_disjoint_in_ram(plan: &BootPlan<'_>, mem: u64) {
    let mut spans: Vec<(u64, u64)> =
        plan.writes.iter().map(|w| (w.gpa, w.gpa + w.len())).filter(|s| s.1 > s.0).collect();
    spans.sort_unstable();
    for s in &spans {
        assert!(s.1 <= mem, "{s:x?} outside RAM");
    }
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "{w:x?} overlap");
    }
}

#[test]
fn pvh_start_info_bytes() {
    let k = kernel(Protocol::Pvh, vec![seg(0x10_0000, b"code", 0x1800)]);
    let module = ModuleRef { name: "initrd.img", data: b"MODULEDATA" };
    let mem = 64 * MIB;
    let plan = plan_boot(&k, mem, "kernel.elf", "console=ttyS0 root=/dev/x", Some(module), &fw()).unwrap();
    assert_eq!((plan.entry, plan.eax, plan.esi), (0x10_0000, 0, 0));
    let info = plan.ebx as usize;
    assert!((0xE_0000..0x10_0000).contains(&info) && info.is_multiple_of(8), "{info:#x}");
    check_disjoint_in_ram(&plan, mem);

    // Kernel segment with bss, then the module page-aligned after it.
    assert_eq!(plan.writes[0].gpa, 0x10_0000);
    assert_eq!(plan.writes[0].data.as_slice(), b"code");
    assert_eq!(plan.writes[0].zero_len, 0x1800 - 4);
    assert_eq!(plan.writes[1].gpa, 0x10_2000);
    assert_eq!(plan.writes[1].data.as_slice(), b"MODULEDATA");

    let ram = ram(&plan, mem);
    let si = &ram[info..info + 56];
    assert_eq!(get32(si, 0), 0x336E_C578);
    assert_eq!(get32(si, 4), 1); // version
    assert_eq!(get32(si, 8), 0); // flags
    assert_eq!(get32(si, 12), 1); // nr_modules
    let modlist = get64(si, 16);
    let cmdline = get64(si, 24);
    assert_eq!(get64(si, 32), 0xE_0000); // rsdp
    assert_eq!(&ram[0xE_0000..0xE_0008], b"RSD PTR ");
    let memmap = get64(si, 40);
    assert_eq!(get32(si, 48), 3); // memmap_entries
    assert_eq!(get32(si, 52), 0);
    for a in [modlist, cmdline, memmap] {
        assert!((0xE_0000..0x10_0000).contains(&a), "{a:#x}");
    }
    assert_eq!(cstr(&ram, cmdline), "console=ttyS0 root=/dev/x");

    let m = &ram[modlist as usize..modlist as usize + 32];
    assert_eq!(get64(m, 0), 0x10_2000);
    assert_eq!(get64(m, 8), 10);
    assert_eq!(cstr(&ram, get64(m, 16)), "initrd.img");
    assert_eq!(get64(m, 24), 0);

    let map = &ram[memmap as usize..memmap as usize + 72];
    let expect = [(0, 0x9_FC00, 1), (0x9_FC00, 0x6_0400, 2), (0x10_0000, mem - 0x10_0000, 1)];
    for (i, (addr, size, typ)) in expect.iter().enumerate() {
        let e = &map[i * 24..];
        assert_eq!((get64(e, 0), get64(e, 8), get32(e, 16), get32(e, 20)), (*addr, *size, *typ, 0));
    }
}

#[test]
fn pvh_without_module() {
    let k = kernel(Protocol::Pvh, vec![seg(0x10_0000, b"code", 4)]);
    let plan = plan_boot(&k, 2 * MIB, "k", "", None, &fw()).unwrap();
    assert_eq!(plan.writes.len(), 2);
    let ram = ram(&plan, 2 * MIB);
    let info = plan.ebx as usize;
    assert_eq!(get32(&ram, info + 12), 0);
    assert_eq!(get64(&ram, info + 16), 0);
    assert_eq!(cstr(&ram, get64(&ram, info + 24)), "");
}

#[test]
fn multiboot_info_bytes() {
    let k = kernel(Protocol::Multiboot1, vec![seg(0x10_0000, b"code", 0x3000), seg(0x20_0000, b"d", 1)]);
    let module = ModuleRef { name: "mod", data: &[7; 5000] };
    let mem = 32 * MIB;
    let plan = plan_boot(&k, mem, "mbtest", "arg1 arg2", Some(module), &fw()).unwrap();
    assert_eq!((plan.eax, plan.esi), (0x2BAD_B002, 0));
    let info = plan.ebx as usize;
    assert!((0xE_0000..0x10_0000).contains(&info), "{info:#x}");
    check_disjoint_in_ram(&plan, mem);
    let ram = ram(&plan, mem);
    let mi = &ram[info..info + 116];
    assert_eq!(get32(mi, 0), 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9);
    assert_eq!(get32(mi, 4), 639);
    assert_eq!(get32(mi, 8), ((mem - MIB) / 1024) as u32);
    assert_eq!(cstr(&ram, get32(mi, 16).into()), "mbtest arg1 arg2");
    assert_eq!(get32(mi, 20), 1);
    let mods = get32(mi, 24) as usize;
    assert_eq!(get32(&ram, mods), 0x20_1000);
    assert_eq!(get32(&ram, mods + 4), 0x20_1000 + 5000);
    assert_eq!(cstr(&ram, get32(&ram, mods + 8).into()), "mod");
    assert_eq!(get32(&ram, mods + 12), 0);
    assert_eq!(&ram[0x20_1000..0x20_1000 + 5000], &[7; 5000][..]);
    assert_eq!(get32(mi, 44), 72);
    let mmap = get32(mi, 48) as usize;
    let expect = [(0, 0x9_FC00, 1), (0x9_FC00, 0x6_0400, 2), (0x10_0000, mem - 0x10_0000, 1)];
    for (i, (addr, len, typ)) in expect.iter().enumerate() {
        let e = &ram[mmap + i * 24..];
        assert_eq!((get32(e, 0), get64(e, 4), get64(e, 12), get32(e, 20)), (20, *addr, *len, *typ));
    }
    assert_eq!(cstr(&ram, get32(mi, 64).into()), "BMonitor");
}

#[test]
fn multiboot_cmdline_is_kernel_name_alone_when_empty() {
    let k = kernel(Protocol::Multiboot1, vec![seg(0x10_0000, b"code", 4)]);
    let plan = plan_boot(&k, 2 * MIB, "argv0", "", None, &fw()).unwrap();
    let ram = ram(&plan, 2 * MIB);
    let info = plan.ebx as usize;
    assert_eq!(cstr(&ram, get32(&ram, info + 16).into()), "argv0");
    assert_eq!(get32(&ram, info + 20), 0); // mods_count
    assert_eq!(get32(&ram, info) & 1 << 3, 1 << 3); // MODS flag still set
}

#[test]
fn module_avoids_low_memory_hole() {
    // Kernel in low memory: the module goes after it if it fits below
    // 0x9FC00, else at 1 MiB.
    let mut k = kernel(Protocol::Pvh, vec![seg(0x10000, b"low", 0x100)]);
    k.entry = 0x10000;
    let small = ModuleRef { name: "m", data: &[1; 100] };
    let plan = plan_boot(&k, 4 * MIB, "k", "", Some(small), &fw()).unwrap();
    assert_eq!(plan.writes[1].gpa, 0x11000);
    let big = ModuleRef { name: "m", data: &[1; 0x90000] };
    let plan = plan_boot(&k, 4 * MIB, "k", "", Some(big), &fw()).unwrap();
    assert_eq!(plan.writes[1].gpa, 0x10_0000);
    check_disjoint_in_ram(&plan, 4 * MIB);
}

#[test]
fn module_must_fit() {
    let k = kernel(Protocol::Pvh, vec![seg(0x10_0000, b"code", 0x1000)]);
    let m = ModuleRef { name: "m", data: &[0; 0x10_0000] };
    let e = plan_boot(&k, 2 * MIB, "k", "", Some(m), &fw()).unwrap_err();
    assert_eq!(e, LoadError::ModuleDoesNotFit { start: 0x10_1000, size: 0x10_0000 });
    assert!(plan_boot(&k, 2 * MIB + 0x1000, "k", "", Some(m), &fw()).is_ok());
    assert!(e.to_string().contains("does not fit"));
}

#[test]
fn segment_errors() {
    let e = plan_boot(&kernel(Protocol::Pvh, vec![seg(0x1F_F000, b"", 0x2000)]), 2 * MIB, "k", "", None, &fw());
    assert_eq!(e, Err(LoadError::SegmentOutsideRam { index: 0, start: 0x1F_F000, end: 0x20_1000 }));
    let e = plan_boot(&kernel(Protocol::Pvh, vec![seg(u64::MAX - 5, b"", 0x10)]), 2 * MIB, "k", "", None, &fw());
    assert!(matches!(e, Err(LoadError::SegmentOutsideRam { .. })));

    for (gpa, len) in [(0x9_F000, 0xC01), (0xE_0000, 1), (0xF_FFFF, 1), (0x0, 0x20_0000), (0xA_0000, 0x100)] {
        let mut k = kernel(Protocol::Multiboot1, vec![seg(gpa, b"", len)]);
        k.entry = 0;
        let e = plan_boot(&k, 4 * MIB, "k", "", None, &fw()).unwrap_err();
        let end = gpa + len;
        assert_eq!(
            e,
            LoadError::SegmentOverlapsReserved { index: 0, start: gpa, end, ram_end: 4 * MIB },
            "{gpa:#x}+{len:#x}"
        );
        let msg = e.to_string();
        assert!(msg.contains("boot-info"), "{msg}");
        assert!(msg.contains("RAM is free at [0x0, 0x9fc00) and [0x100000, 0x400000)"), "{msg}");
    }
    // A multiboot kernel below 0x10000 (refused when the area was at 0x8000) now loads.
    let mut k = kernel(Protocol::Multiboot1, vec![seg(0x8000, b"low", 0x1000)]);
    k.entry = 0x8000;
    assert!(plan_boot(&k, 2 * MIB, "k", "", None, &fw()).is_ok());
    // Touching but not overlapping is fine.
    let mut k = kernel(Protocol::Pvh, vec![seg(0x9_F000, b"", 0xC00), seg(0x10_0000, b"", 0x10)]);
    k.entry = 0x9_F000;
    assert!(plan_boot(&k, 2 * MIB, "k", "", None, &fw()).is_ok());

    let k = kernel(Protocol::Pvh, vec![seg(0x10_0000, b"", 0x1000), seg(0x20_0000, b"", 0x10), seg(0x10_0FFF, b"", 2)]);
    assert_eq!(plan_boot(&k, 4 * MIB, "k", "", None, &fw()), Err(LoadError::SegmentsOverlap { first: 0, second: 2 }));

    let k = kernel(Protocol::Pvh, vec![seg(0x10_0000, b"abcd", 2)]);
    assert_eq!(plan_boot(&k, 4 * MIB, "k", "", None, &fw()), Err(LoadError::SegmentDataTooLong(0)));
}

#[test]
fn memory_entry_and_string_errors() {
    let k = kernel(Protocol::Pvh, vec![seg(0x10_0000, b"x", 1)]);
    assert_eq!(plan_boot(&k, MIB, "k", "", None, &fw()), Err(LoadError::MemoryTooSmall(MIB)));
    let mut far = k.clone();
    far.entry = 4 * MIB;
    assert_eq!(plan_boot(&far, 4 * MIB, "k", "", None, &fw()), Err(LoadError::EntryOutsideRam(4 * MIB)));
    assert_eq!(plan_boot(&k, 2 * MIB, "k", "a\0b", None, &fw()), Err(LoadError::StringContainsNul("command line")));
    assert_eq!(plan_boot(&k, 2 * MIB, "k\0", "", None, &fw()), Err(LoadError::StringContainsNul("kernel name")));
    let m = ModuleRef { name: "\0", data: b"" };
    assert_eq!(plan_boot(&k, 2 * MIB, "k", "", Some(m), &fw()), Err(LoadError::StringContainsNul("module name")));
}

#[test]
fn boot_info_area_limits() {
    let k = kernel(Protocol::Multiboot1, vec![seg(0x10_0000, b"x", 1)]);
    let max_cmdline = "c".repeat(1024);
    let long_name = "n".repeat(4096);
    let m = ModuleRef { name: &long_name, data: b"m" };
    assert!(plan_boot(&k, 2 * MIB, &long_name, &max_cmdline, Some(m), &fw()).is_ok());
    let huge = "c".repeat(140_000);
    assert!(matches!(plan_boot(&k, 2 * MIB, "k", &huge, None, &fw()), Err(LoadError::BootInfoTooLarge(_))));
    let pvh = kernel(Protocol::Pvh, vec![seg(0x10_0000, b"x", 1)]);
    assert!(matches!(plan_boot(&pvh, 2 * MIB, "k", &huge, None, &fw()), Err(LoadError::BootInfoTooLarge(_))));
}

#[test]
fn multiboot_addresses_below_4g() {
    let k = kernel(Protocol::Multiboot1, vec![seg(0xFFFF_F000, b"x", 0x2000)]);
    let e = plan_boot(&k, 8 << 30, "k", "", None, &fw()).unwrap_err();
    assert!(matches!(e, LoadError::AddressAbove4G(..)));
    let k = kernel(Protocol::Multiboot1, vec![seg(0xFFFF_0000, b"x", 0x1000)]);
    let m = ModuleRef { name: "m", data: &[0; 0x20000] };
    assert!(matches!(plan_boot(&k, 8 << 30, "k", "", Some(m), &fw()), Err(LoadError::AddressAbove4G(..))));
    // PVH has no such limit for segments above 4 GiB.
    let mut k = kernel(Protocol::Pvh, vec![seg(0x1_0000_0000, b"x", 0x1000)]);
    k.entry = 0x10_0000;
    assert!(plan_boot(&k, 8 << 30, "k", "", None, &fw()).is_ok());
}

#[test]
fn parse_then_plan() {
    let img = pvh_elf64(0x10_0000).build();
    let k = parse_kernel(&img, Preference::Auto).unwrap();
    let plan = plan_boot(&k, 16 * MIB, "k", "quiet", None, &fw()).unwrap();
    assert_eq!(plan.writes[0].data.as_slice(), &[0x90; 300][..]);
    assert_eq!(plan.writes[0].zero_len, 0x1000);

    let a = Aout::new(0x10_0000).build();
    let k = parse_kernel(&a, Preference::Auto).unwrap();
    let plan = plan_boot(&k, 16 * MIB, "k", "quiet", None, &fw()).unwrap();
    assert_eq!(plan.eax, MULTIBOOT_BOOTLOADER_MAGIC);
    assert_eq!(plan.entry, 0x10_0040);
}

fn arb_segments() -> impl Strategy<Value = Vec<(u64, usize, u64)>> {
    proptest::collection::vec(
        (
            prop_oneof![0u64..0x40_0000, Just(0x10_0000u64), any::<u64>()],
            0usize..64,
            prop_oneof![0u64..0x10000, any::<u64>()],
        ),
        0..6,
    )
}

proptest! {
    #[test]
    fn successful_plans_stay_in_ram_without_overlap(
        segs in arb_segments(),
        mem in prop_oneof![0u64..0x80_0000, Just(4 * MIB)],
        mb in any::<bool>(),
        entry in 0u64..0x80_0000,
        module_len in proptest::option::of(0usize..0x20_0000),
        cmdline in "[ -~]{0,64}",
    ) {
        static BYTES: [u8; 64] = [0x5A; 64];
        static MODULE: [u8; 0x20_0000] = [0x33; 0x20_0000];
        let segments = segs
            .iter()
            .map(|&(gpa, len, extra)| Segment { gpa, data: &BYTES[..len], mem_len: (len as u64).saturating_add(extra) })
            .collect();
        let k = KernelImage { protocol: if mb { Protocol::Multiboot1 } else { Protocol::Pvh }, entry, segments, linux: None };
        let module = module_len.map(|l| ModuleRef { name: "m", data: &MODULE[..l] });
        if let Ok(plan) = plan_boot(&k, mem, "kernel", &cmdline, module, &fw()) {
            let mut spans: Vec<(u64, u64)> = plan.writes.iter().map(|w| (w.gpa, w.gpa + w.len())).filter(|s| s.1 > s.0).collect();
            spans.sort_unstable();
            for s in &spans {
                prop_assert!(s.1 <= mem);
            }
            for w in spans.windows(2) {
                prop_assert!(w[0].1 <= w[1].0);
            }
            prop_assert!(plan.entry < mem);
            prop_assert!((0xE_0000..0x10_0000).contains(&plan.ebx));
            // The boot-info write is exactly within its area.
            let info = plan.writes.last().unwrap();
            prop_assert!(info.gpa == 0xE_0000 && info.len() <= 0x2_0000);
        }
    }

    #[test]
    fn parse_and_plan_arbitrary_images(bytes in proptest::collection::vec(any::<u8>(), 0..1024), mem in 0u64..0x100_0000) {
        for pref in [Preference::Auto, Preference::Pvh, Preference::Multiboot1] {
            if let Ok(k) = parse_kernel(&bytes, pref) {
                let _ = plan_boot(&k, mem, "k", "", Some(ModuleRef { name: "m", data: &bytes }), &fw());
            }
        }
    }
}
