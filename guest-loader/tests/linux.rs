//! The Linux bzImage protocol: header parsing, detection, zero page, initrd
//! placement, errors, the Debian kernel (when present) and a proptest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use guest_loader::*;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const DEBIAN_KERNEL: &str = "/tmp/deb/k/boot/vmlinuz-6.1.0-48-cloud-amd64";

fn fw() -> Firmware {
    Firmware { vcpus: 2, ioapic_id: 1, virtio: vec![VirtioMmio { base: 0xD000_0000, len: 0x200, gsi: 5 }] }
}

fn ram(plan: &BootPlan<'_>, mem: u64) -> Vec<u8> {
    let mut ram = vec![0u8; mem as usize];
    for w in &plan.writes {
        let d = w.data.as_slice();
        ram[w.gpa as usize..w.gpa as usize + d.len()].copy_from_slice(d);
    }
    ram
}

fn cstr(ram: &[u8], at: u64) -> String {
    let s = &ram[at as usize..];
    String::from_utf8(s[..s.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
}

fn check_disjoint_in_ram(plan: &BootPlan<'_>, mem: u64) -> Result<(), String> {
    let mut spans: Vec<(u64, u64)> =
        plan.writes.iter().map(|w| (w.gpa, w.gpa + w.len())).filter(|s| s.1 > s.0).collect();
    spans.sort_unstable();
    for s in &spans {
        if s.1 > mem {
            return Err(format!("{s:x?} outside RAM {mem:#x}"));
        }
    }
    for w in spans.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(format!("{w:x?} overlap"));
        }
    }
    Ok(())
}

#[test]
fn auto_detects_bzimage_after_pvh_and_multiboot() {
    let img = BzImage::new().build();
    for pref in [Preference::Auto, Preference::Linux] {
        let k = parse_kernel(&img, pref).unwrap();
        assert_eq!(k.protocol, Protocol::Linux);
        assert_eq!(k.entry, 0x10_0000);
    }
    assert_eq!(parse_kernel(&img, Preference::Pvh), Err(LoadError::NotElf));
    assert_eq!(parse_kernel(&img, Preference::Multiboot1), Err(LoadError::NoMultibootHeader));
    // Not a bzImage.
    let elf = pvh_elf64(0x10_0000).build();
    assert_eq!(parse_kernel(&elf, Preference::Linux), Err(LoadError::NotBzImage));
    assert_eq!(parse_kernel(&elf, Preference::Auto).unwrap().protocol, Protocol::Pvh);
    let mut no_hdrs = img.clone();
    no_hdrs[0x202] = b'X';
    assert_eq!(parse_kernel(&no_hdrs, Preference::Linux), Err(LoadError::NotBzImage));
    assert_eq!(parse_kernel(&no_hdrs, Preference::Auto), Err(LoadError::NoEntryPoint));
    let mut no_55aa = img.clone();
    no_55aa[0x1FE] = 0;
    assert_eq!(parse_kernel(&no_55aa, Preference::Linux), Err(LoadError::NotBzImage));
    // A valid multiboot1 header is preferred over the bzImage signature.
    let mut both = img.clone();
    both[0x1000..0x100C].copy_from_slice(&mb_header(0x3)[..12]);
    assert_eq!(parse_kernel(&both, Preference::Auto), Err(LoadError::MultibootNotElf));
    // Stray multiboot magic with a bad checksum does not hide the bzImage.
    let mut stray = img.clone();
    stray[0x800..0x804].copy_from_slice(&0x1BAD_B002u32.to_le_bytes());
    assert_eq!(parse_kernel(&stray, Preference::Auto).unwrap().protocol, Protocol::Linux);
}

#[test]
fn parses_header_fields() {
    let b = BzImage::new();
    let img = b.build();
    let k = parse_kernel(&img, Preference::Linux).unwrap();
    let s = k.linux.unwrap();
    assert_eq!(s.header, &img[0x1F1..0x202 + 0x6A]);
    assert_eq!((s.version, s.loadflags, s.code32_start), (0x020F, 1, 0x10_0000));
    assert_eq!((s.initrd_addr_max, s.kernel_alignment, s.relocatable), (0x7FFF_FFFF, 0x20_0000, true));
    assert_eq!((s.cmdline_size, s.pref_address, s.init_size, s.xloadflags), (0x7FF, 0x100_0000, 0x80_0000, 0x7F));
    // The decompressor runs at pref_address (16 MiB) and needs init_size from there.
    assert_eq!(s.reserved_end, 0x100_0000 + 0x80_0000);
    assert_eq!(k.segments.len(), 1);
    assert_eq!(k.segments[0].gpa, 0x10_0000);
    assert_eq!(k.segments[0].data, &img[5 * 512..]);
    assert_eq!(k.segments[0].mem_len, 0x170_0000);

    // setup_sects 0 means 4; the protected-mode kernel is at (setup_sects + 1) * 512.
    for (sects, off) in [(0u8, 5 * 512), (1, 2 * 512), (30, 31 * 512)] {
        let img = BzImage { setup_sects: sects, ..BzImage::new() }.build();
        let k = parse_kernel(&img, Preference::Linux).unwrap();
        assert_eq!(k.segments[0].data.len(), img.len() - off, "setup_sects {sects}");
    }

    // A non-relocatable kernel runs at pref_address; a relocatable one
    // preferring less than the aligned load address runs there.
    let fixed = BzImage { relocatable: 0, pref_address: 0x40_0000, ..BzImage::new() }.build();
    assert_eq!(parse_kernel(&fixed, Preference::Linux).unwrap().linux.unwrap().reserved_end, 0xC0_0000);
    let low = BzImage { pref_address: 0x10_0000, ..BzImage::new() }.build();
    assert_eq!(parse_kernel(&low, Preference::Linux).unwrap().linux.unwrap().reserved_end, 0xA0_0000);
    // A huge image is covered even if init_size is small.
    let big = BzImage { init_size: 0x1000, pref_address: 0x10_0000, pm_len: 0x30_0000, ..BzImage::new() }.build();
    assert_eq!(parse_kernel(&big, Preference::Linux).unwrap().linux.unwrap().reserved_end, 0x40_0000);
    // Before 2.10 there is no pref_address/init_size.
    let old = BzImage { version: 0x0206, ..BzImage::new() }.build();
    let s = parse_kernel(&old, Preference::Linux).unwrap().linux.unwrap();
    assert_eq!((s.pref_address, s.init_size, s.xloadflags), (0x10_0000, 0, 0));
    // Relocatable: it runs at the load address aligned up to kernel_alignment.
    assert_eq!(s.reserved_end, 0x20_0000);
}

#[test]
fn header_errors() {
    let e = parse_kernel(&BzImage { version: 0x0205, ..BzImage::new() }.build(), Preference::Linux).unwrap_err();
    assert_eq!(e, LoadError::LinuxProtocolTooOld(0x0205));
    assert!(e.to_string().contains("2.05") && e.to_string().contains("2.06"), "{e}");
    let e = parse_kernel(&BzImage { loadflags: 0x80, ..BzImage::new() }.build(), Preference::Auto).unwrap_err();
    assert_eq!(e, LoadError::LinuxNotLoadedHigh);
    assert!(e.to_string().contains("LOADED_HIGH"));
    let e = parse_kernel(&BzImage { pm_len: 0, ..BzImage::new() }.build(), Preference::Linux).unwrap_err();
    assert_eq!(e, LoadError::LinuxKernelMissing { offset: 0xA00, file_len: 0xA00 });
    assert!(e.to_string().contains("0xa00"), "{e}");
    let img = BzImage { setup_sects: 1, ..BzImage::new() }.build();
    assert!(matches!(parse_kernel(&img[..0x230], Preference::Linux), Err(LoadError::LinuxHeaderTruncated(_))));
    assert!(matches!(parse_kernel(&img[..0x206], Preference::Linux), Err(LoadError::LinuxHeaderTruncated(_))));
    for cut in 0..0x500 {
        let _ = parse_kernel(&img[..cut], Preference::Auto);
    }
}

#[test]
fn zero_page_bytes() {
    let b = BzImage::new();
    let img = b.build();
    let k = parse_kernel(&img, Preference::Auto).unwrap();
    let initrd: Vec<u8> = (0..0x1800).map(|i| (i * 7) as u8).collect();
    let mem = 64 * MIB;
    let m = ModuleRef { name: "initrd.img", data: &initrd };
    let plan = plan_boot(&k, mem, "vmlinuz", "console=ttyS0 root=/dev/vda", Some(m), &fw()).unwrap();
    check_disjoint_in_ram(&plan, mem).unwrap();
    assert_eq!((plan.entry, plan.eax, plan.ebx), (0x10_0000, 0, 0));
    let zp = plan.esi as usize;
    assert!((0xE_0000..0x10_0000 - 4096).contains(&zp) && zp.is_multiple_of(4096), "{zp:#x}");

    // Kernel at 1 MiB, its init_size region as zeros; initrd as high as possible.
    assert_eq!(plan.writes[0].gpa, 0x10_0000);
    assert_eq!(plan.writes[0].data.as_slice(), &img[0xA00..]);
    assert_eq!(plan.writes[0].len(), 0x170_0000);
    assert_eq!(plan.writes[1].gpa, 0x3FF_E000);
    assert_eq!(plan.writes[1].data.as_slice(), &initrd[..]);

    let ram = ram(&plan, mem);
    let bp = &ram[zp..zp + 4096];
    // The header copied from the image except the fields a loader fills in.
    for off in 0x1F1..0x202 + 0x6A {
        if !(0x210..0x211).contains(&off) && !(0x218..0x220).contains(&off) && !(0x228..0x22C).contains(&off) {
            assert_eq!(bp[off], img[off], "header byte {off:#x}");
        }
    }
    assert_eq!(bp[0x210], 0xFF); // type_of_loader
    assert_eq!(bp[0x211], 1); // loadflags: LOADED_HIGH, no heap (the setup code does not run)
    assert_eq!(get32(bp, 0x214), 0x10_0000); // code32_start
    assert_eq!(get32(bp, 0x218), 0x3FF_E000); // ramdisk_image
    assert_eq!(get32(bp, 0x21C), 0x1800); // ramdisk_size
    assert_eq!((get32(bp, 0xC0), get32(bp, 0xC4), get32(bp, 0xC8)), (0, 0, 0)); // ext_*
    assert_eq!(cstr(&ram, get32(bp, 0x228).into()), "console=ttyS0 root=/dev/vda");
    assert!((0xE_0000..0x10_0000).contains(&get32(bp, 0x228)));
    assert_eq!(get64(bp, 0x070), RSDP_ADDR); // acpi_rsdp_addr
    assert_eq!(&ram[RSDP_ADDR as usize..RSDP_ADDR as usize + 8], b"RSD PTR ");
    // Everything before the header that we do not fill is zero (screen_info etc.).
    assert!(bp[..0x70].iter().all(|&b| b == 0));
    assert!(bp[0x78..0xC0].iter().all(|&b| b == 0));
    // The e820 map: PC-like, the boot-info area reserved.
    assert_eq!(bp[0x1E8], 3);
    let expect = [(0, 0x9_FC00, 1), (0x9_FC00, 0x6_0400, 2), (0x10_0000, mem - 0x10_0000, 1)];
    for (i, (addr, size, typ)) in expect.iter().enumerate() {
        let e = &bp[0x2D0 + 20 * i..];
        assert_eq!((get64(e, 0), get64(e, 8), get32(e, 16)), (*addr, *size, *typ));
    }
    assert!(bp[0x2D0 + 60..].iter().all(|&b| b == 0));
}

#[test]
fn zero_page_without_initrd_and_old_protocol() {
    let img = BzImage { version: 0x020D, setup_data: 0xDEAD_BEEF, ..BzImage::new() }.build();
    let k = parse_kernel(&img, Preference::Linux).unwrap();
    let plan = plan_boot(&k, 32 * MIB, "k", "", None, &fw()).unwrap();
    let r = ram(&plan, 32 * MIB);
    let bp = &r[plan.esi as usize..plan.esi as usize + 4096];
    assert_eq!((get32(bp, 0x218), get32(bp, 0x21C)), (0, 0));
    assert_eq!(get64(bp, 0x070), 0, "acpi_rsdp_addr needs protocol 2.14");
    assert_eq!(get64(bp, 0x250), 0, "setup_data is never passed through");
    assert_eq!(cstr(&r, get32(bp, 0x228).into()), "");
    // An empty initrd is not passed either.
    let plan = plan_boot(&k, 32 * MIB, "k", "", Some(ModuleRef { name: "i", data: b"" }), &fw()).unwrap();
    let ram2 = ram(&plan, 32 * MIB);
    assert_eq!(get32(&ram2, plan.esi as usize + 0x21C), 0);
    // A header claiming to run past boot_params' header space is cut at 0x290.
    let img = BzImage { jump_len: 0xFF, ..BzImage::new() }.build();
    let k = parse_kernel(&img, Preference::Linux).unwrap();
    let plan = plan_boot(&k, 32 * MIB, "k", "", None, &fw()).unwrap();
    let r = ram(&plan, 32 * MIB);
    let bp = &r[plan.esi as usize..plan.esi as usize + 4096];
    assert_eq!(bp[0x1E8], 3);
}

#[test]
fn initrd_placement_limits() {
    let initrd = vec![1u8; 0x10_0000];
    let m = ModuleRef { name: "i", data: &initrd };
    // initrd_addr_max bounds the end of the initrd.
    let img = BzImage { initrd_addr_max: 0x1FF_FFFF, ..BzImage::new() }.build();
    let k = parse_kernel(&img, Preference::Linux).unwrap();
    let plan = plan_boot(&k, 64 * MIB, "k", "", Some(m), &fw()).unwrap();
    assert_eq!(plan.writes[1].gpa, 0x200_0000 - 0x10_0000);
    // So does RAM and 4 GiB.
    let default_img = BzImage::new().build();
    let k = parse_kernel(&default_img, Preference::Linux).unwrap();
    let plan = plan_boot(&k, 48 * MIB + 0x800, "k", "", Some(m), &fw()).unwrap();
    assert_eq!(plan.writes[1].gpa, 47 * MIB);
    let img = BzImage { initrd_addr_max: u32::MAX, ..BzImage::new() }.build();
    let k = parse_kernel(&img, Preference::Linux).unwrap();
    let plan = plan_boot(&k, 8 << 30, "k", "", Some(m), &fw()).unwrap();
    assert_eq!(plan.writes[1].gpa, (1 << 32) - 0x10_0000);
    // Never inside the kernel's init_size region.
    let default_img = BzImage::new().build();
    let k = parse_kernel(&default_img, Preference::Linux).unwrap();
    let e = plan_boot(&k, 0x180_0000 + 0x8_0000, "k", "", Some(m), &fw()).unwrap_err();
    assert_eq!(e, LoadError::InitrdDoesNotFit { size: 0x10_0000, low: 0x180_0000, high: 0x188_0000 });
    assert!(e.to_string().contains("0x180000") || e.to_string().contains("0x1800000"), "{e}");
    assert!(plan_boot(&k, 0x190_0000, "k", "", Some(m), &fw()).is_ok());
    let img = BzImage { initrd_addr_max: 0x17F_FFFF, ..BzImage::new() }.build();
    let k = parse_kernel(&img, Preference::Linux).unwrap();
    assert!(matches!(plan_boot(&k, 64 * MIB, "k", "", Some(m), &fw()), Err(LoadError::InitrdDoesNotFit { .. })));
}

#[test]
fn ram_and_cmdline_limits() {
    let default_img = BzImage::new().build();
    let k = parse_kernel(&default_img, Preference::Linux).unwrap();
    let e = plan_boot(&k, 16 * MIB, "k", "", None, &fw()).unwrap_err();
    assert_eq!(e, LoadError::KernelNeedsMoreRam { needed: 0x180_0000, ram: 16 * MIB });
    assert!(e.to_string().contains("0x1800000") && e.to_string().contains("init_size"), "{e}");
    assert!(plan_boot(&k, 0x180_0000, "k", "", None, &fw()).is_ok());

    let img = BzImage { cmdline_size: 16, ..BzImage::new() }.build();
    let k = parse_kernel(&img, Preference::Linux).unwrap();
    assert!(plan_boot(&k, 32 * MIB, "k", &"x".repeat(16), None, &fw()).is_ok());
    let e = plan_boot(&k, 32 * MIB, "k", &"x".repeat(17), None, &fw()).unwrap_err();
    assert_eq!(e, LoadError::CmdlineTooLong { len: 17, max: 16 });
    assert!(e.to_string().contains("cmdline_size of 16"), "{e}");
    // A huge cmdline_size is still bounded by the boot-info area.
    let img = BzImage { cmdline_size: u32::MAX, ..BzImage::new() }.build();
    let k = parse_kernel(&img, Preference::Linux).unwrap();
    let e = plan_boot(&k, 32 * MIB, "k", &"x".repeat(200_000), None, &fw()).unwrap_err();
    assert!(matches!(e, LoadError::BootInfoTooLarge(_)));
    assert!(e.to_string().contains("128 KiB"), "{e}");
    assert_eq!(plan_boot(&k, 32 * MIB, "k", "a\0", None, &fw()), Err(LoadError::StringContainsNul("command line")));
    // A hand-made Linux image without its header.
    let mut bare = k.clone();
    bare.linux = None;
    assert_eq!(plan_boot(&bare, 32 * MIB, "k", "", None, &fw()), Err(LoadError::LinuxSetupMissing));
}

#[test]
fn debian_kernel_boots_with_auto() {
    let Ok(img) = std::fs::read(DEBIAN_KERNEL) else {
        eprintln!("skipped: {DEBIAN_KERNEL} not present");
        return;
    };
    let k = parse_kernel(&img, Preference::from(vmm_config::config::BootProtocol::Auto)).unwrap();
    assert_eq!(k.protocol, Protocol::Linux);
    let s = k.linux.unwrap();
    assert!(s.version >= 0x020E, "{:#x}", s.version);
    assert!(s.relocatable && s.loadflags & 1 == 1);
    assert_eq!(s.code32_start, 0x10_0000);
    assert_eq!(k.segments[0].data.len(), img.len() - (usize::from(img[0x1F1]) + 1) * 512);
    assert_eq!(s.reserved_end, s.pref_address.max(0x20_0000) + u64::from(s.init_size));
    let initrd = vec![0x5Au8; 3 * MIB as usize];
    let mem = 256 * MIB;
    let m = ModuleRef { name: "initrd.img", data: &initrd };
    let plan = plan_boot(&k, mem, "vmlinuz", "console=ttyS0 panic=-1", Some(m), &fw()).unwrap();
    check_disjoint_in_ram(&plan, mem).unwrap();
    assert_eq!(plan.writes[1].gpa, mem - 3 * MIB);
    let ram = ram(&plan, mem);
    let bp = &ram[plan.esi as usize..plan.esi as usize + 4096];
    assert_eq!(get32(bp, 0x202), u32::from_le_bytes(*b"HdrS"));
    assert_eq!(get64(bp, 0x070), RSDP_ADDR);
    assert_eq!(get32(bp, 0x218) as u64, mem - 3 * MIB);
    // The smallest RAM it fits: its init_size region (about 67 MiB for this kernel).
    let e = plan_boot(&k, 64 * MIB, "vmlinuz", "", None, &fw()).unwrap_err();
    assert!(matches!(e, LoadError::KernelNeedsMoreRam { .. }), "{e}");
}

fn arb_bzimage() -> impl Strategy<Value = BzImage> {
    (
        (any::<u8>(), prop_oneof![Just(0x020Fu16), 0x0200u16..0x0210, any::<u16>()], any::<u8>(), any::<u8>()),
        (
            prop_oneof![Just(0x7FFF_FFFFu32), any::<u32>()],
            prop_oneof![Just(0x20_0000u32), any::<u32>()],
            any::<u8>(),
            any::<u16>(),
        ),
        (
            prop_oneof![Just(0x7FFu32), 0u32..64, any::<u32>()],
            prop_oneof![Just(0x100_0000u64), 0u64..0x400_0000, any::<u64>()],
            prop_oneof![0u32..0x200_0000, any::<u32>()],
            any::<u64>(),
            0usize..0x3000,
        ),
    )
        .prop_map(|((sects, version, loadflags, jump), (max, align, reloc, xlf), (cmd, pref, init, sd, pm))| {
            BzImage {
                setup_sects: sects % 40,
                version,
                loadflags,
                jump_len: jump,
                initrd_addr_max: max,
                kernel_alignment: align,
                relocatable: reloc,
                xloadflags: xlf,
                cmdline_size: cmd,
                pref_address: pref,
                init_size: init,
                setup_data: sd,
                pm_len: pm,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn bzimage_plans_never_overlap_or_leave_ram(
        b in arb_bzimage(),
        mem in prop_oneof![0u64..0x400_0000, Just(64 * MIB), any::<u64>().prop_map(|m| m % (16 << 30))],
        initrd_len in proptest::option::of(0usize..0x4_0000),
        cmdline in "[ -~]{0,80}",
        vcpus in 0u32..300,
    ) {
        static INITRD: [u8; 0x4_0000] = [0x33; 0x4_0000];
        let img = b.build();
        let firmware = Firmware {
            vcpus,
            ioapic_id: 1,
            virtio: (0..(vcpus % 5)).map(|i| VirtioMmio { base: 0xD000_0000 + u64::from(i) * 0x1000, len: 0x200, gsi: 5 + i }).collect(),
        };
        let Ok(k) = parse_kernel(&img, Preference::Auto) else { return Ok(()) };
        prop_assert_eq!(k.protocol, Protocol::Linux);
        let m = initrd_len.map(|l| ModuleRef { name: "initrd", data: &INITRD[..l] });
        if let Ok(plan) = plan_boot(&k, mem, "k", &cmdline, m, &firmware) {
            prop_assert!(check_disjoint_in_ram(&plan, mem).is_ok(), "{:?}", check_disjoint_in_ram(&plan, mem));
            prop_assert_eq!(plan.entry, 0x10_0000);
            prop_assert!((0xE_0000..0x10_0000).contains(&plan.esi));
            let info = plan.writes.last().unwrap();
            prop_assert!(info.gpa == 0xE_0000 && info.gpa + info.len() <= 0x10_0000);
            // The initrd (if any) lies above the kernel's region and below every limit.
            if let (Some(m), Some(w)) = (m, plan.writes.get(1).filter(|_| initrd_len.unwrap_or(0) > 0)) {
                let s = k.linux.unwrap();
                prop_assert!(w.gpa >= s.reserved_end && w.gpa.is_multiple_of(4096));
                prop_assert!(w.gpa + m.data.len() as u64 <= (u64::from(s.initrd_addr_max) + 1).min(1 << 32));
            }
        }
    }
}
