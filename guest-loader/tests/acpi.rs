//! ACPI tables: parsed back with the `acpi` crate, every checksum, the DSDT
//! decoded by a small AML reader here, and (when installed) by `iasl`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::rc::Rc;

use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};
use common::*;
use guest_loader::*;

const MIB: u64 = 1 << 20;

fn firmware() -> Firmware {
    Firmware {
        vcpus: 4,
        ioapic_id: 2,
        virtio: vec![
            VirtioMmio { base: 0xD000_0000, len: 0x200, gsi: 5 },
            VirtioMmio { base: 0xD000_1000, len: 0x1000, gsi: 16 },
        ],
    }
}

/// Guest RAM after a PVH kernel's plan with `fw`.
fn guest_ram(fw: &Firmware) -> (Rc<Vec<u8>>, BootPlan<'static>) {
    let k = KernelImage {
        protocol: Protocol::Pvh,
        entry: 0x10_0000,
        segments: vec![Segment { gpa: 0x10_0000, data: b"code", mem_len: 4 }],
        linux: None,
    };
    let plan = plan_boot(&k, 2 * MIB, "k", "", None, fw).unwrap();
    let mut ram = vec![0u8; 2 * MIB as usize];
    for w in &plan.writes {
        let d = w.data.as_slice();
        ram[w.gpa as usize..w.gpa as usize + d.len()].copy_from_slice(d);
    }
    (Rc::new(ram), plan)
}

/// Maps "physical" addresses straight into the RAM image.
#[derive(Clone)]
struct Ram(Rc<Vec<u8>>);

impl AcpiHandler for Ram {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        assert!(pa + size <= self.0.len(), "map {pa:#x}+{size:#x} outside RAM");
        let ptr = NonNull::new(self.0.as_ptr().wrapping_add(pa) as *mut T).unwrap();
        unsafe { PhysicalMapping::new(pa, ptr, size, size, self.clone()) }
    }
    fn unmap_physical_region<T>(_: &PhysicalMapping<Self, T>) {}
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

/// (signature, address, bytes) of every table reachable from the RSDP.
fn tables(ram: &[u8]) -> Vec<([u8; 4], usize, Vec<u8>)> {
    let r = RSDP_ADDR as usize;
    let table = |at: usize| {
        let len = get32(ram, at + 4) as usize;
        (ram[at..at + 4].try_into().unwrap(), at, ram[at..at + len].to_vec())
    };
    let rsdt = table(get32(ram, r + 16) as usize);
    let xsdt = table(get64(ram, r + 24) as usize);
    let mut out = vec![rsdt.clone(), xsdt.clone()];
    let xsdt_entries: Vec<usize> = xsdt.2[36..].chunks(8).map(|c| get64(c, 0) as usize).collect();
    let rsdt_entries: Vec<usize> = rsdt.2[36..].chunks(4).map(|c| get32(c, 0) as usize).collect();
    assert_eq!(xsdt_entries, rsdt_entries, "RSDT and XSDT list the same tables");
    for at in xsdt_entries {
        let t = table(at);
        if &t.0 == b"FACP" {
            out.push(table(get64(&t.2, 140) as usize));
        }
        out.push(t);
    }
    out
}

#[test]
fn rsdp_and_checksums() {
    let (ram, plan) = guest_ram(&firmware());
    assert_eq!(RSDP_ADDR, 0xE_0000);
    let r = &ram[0xE_0000..0xE_0000 + 36];
    assert_eq!(&r[..8], b"RSD PTR ");
    assert_eq!(&r[9..15], b"BMONTR");
    assert_eq!(r[15], 2, "revision 2");
    assert_eq!(get32(r, 20), 36);
    assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
    assert_eq!(sum(r), 0, "RSDP extended checksum");
    // PVH start_info.rsdp_paddr.
    assert_eq!(get64(&ram, plan.ebx as usize + 32), RSDP_ADDR);

    let ts = tables(&ram);
    let sigs: Vec<&[u8]> = ts.iter().map(|t| &t.0[..]).collect();
    assert_eq!(sigs, [&b"RSDT"[..], b"XSDT", b"DSDT", b"FACP", b"APIC"]);
    for (sig, at, t) in &ts {
        let name = String::from_utf8_lossy(sig);
        assert_eq!(sum(t), 0, "{name} checksum");
        assert_eq!(&t[10..16], b"BMONTR", "{name} OEM id");
        assert!((0xE_0000..0x10_0000).contains(at) && at.is_multiple_of(16), "{name} at {at:#x}");
        assert!(at + t.len() <= 0x10_0000);
    }
    let fadt = &ts[3].2;
    assert_eq!((fadt.len(), fadt[8]), (276, 6));
    // FACS: 64 bytes, 64-byte aligned, pointed at by both FACS fields.
    let facs = get32(fadt, 36) as usize;
    assert_eq!(get64(fadt, 132), facs as u64);
    assert!(facs.is_multiple_of(64));
    assert_eq!(&ram[facs..facs + 4], b"FACS");
    assert_eq!(get32(&ram, facs + 4), 64);
}

#[test]
fn acpi_crate_reads_fadt_and_madt() {
    let fw = firmware();
    let (ram, _) = guest_ram(&fw);
    let h = Ram(ram.clone());
    let tables = unsafe { AcpiTables::from_rsdp(h.clone(), RSDP_ADDR as usize) }.unwrap();
    assert_eq!(tables.revision(), 2);
    // A kernel scanning the BIOS area finds the same RSDP.
    let scanned = unsafe { AcpiTables::search_for_rsdp_bios(h) }.unwrap();
    assert_eq!(scanned.headers().count(), tables.headers().count());

    let fadt = tables.find_table::<Fadt>().unwrap();
    fadt.validate().unwrap();
    assert_eq!({ fadt.sci_interrupt }, 9);
    assert_eq!({ fadt.smi_cmd_port }, 0);
    assert_eq!(fadt.pm1a_event_block().unwrap().address, 0x600);
    assert_eq!(fadt.pm1a_event_block().unwrap().bit_width, 32);
    assert_eq!(fadt.pm1a_control_block().unwrap().address, 0x604);
    assert_eq!(fadt.pm1a_control_block().unwrap().bit_width, 16);
    assert!(fadt.pm1b_event_block().unwrap().is_none());
    let tmr = fadt.pm_timer_block().unwrap().unwrap();
    assert_eq!((tmr.address, tmr.bit_width), (0x608, 32));
    assert!(fadt.gpe0_block().unwrap().is_none());
    let reset = fadt.reset_register().unwrap();
    assert_eq!((reset.address, reset.bit_width, { fadt.reset_value }), (0xCF9, 8, 6));
    let flags = fadt.flags;
    assert!(flags.supports_equivalent_to_wbinvd());
    assert!(flags.all_procs_support_c1_power_state());
    assert!(flags.power_button_is_control_method());
    assert!(flags.sleep_button_is_control_method());
    assert!(flags.pm_timer_is_32_bit());
    assert!(flags.supports_system_reset_via_fadt());
    assert!(!flags.system_is_hw_reduced_acpi());
    let arch = fadt.iapc_boot_arch;
    assert!(arch.legacy_devices_are_accessible());
    assert!(!arch.motherboard_implements_8042());
    assert!(arch.dont_probe_vga());
    assert_eq!({ fadt.century }, 0x32);
    assert_eq!({ fadt.header().revision }, 6);
    let dsdt_addr = fadt.dsdt_address().unwrap();
    assert_eq!(tables.dsdt().unwrap().address, dsdt_addr + 36);
    assert_eq!(&ram[dsdt_addr..dsdt_addr + 4], b"DSDT");
    assert_eq!(get32(&ram, dsdt_addr + 4) as usize, tables.dsdt().unwrap().length as usize + 36);
    let facs = fadt.facs_address().unwrap();
    assert_eq!(&ram[facs..facs + 4], b"FACS");

    let madt = tables.find_table::<Madt>().unwrap();
    let m = madt.get();
    assert_eq!({ m.local_apic_address }, 0xFEE0_0000);
    assert_eq!({ m.flags }, 1);
    assert!(m.supports_8259());
    let mut lapics = vec![];
    let mut ioapics = vec![];
    let mut isos = vec![];
    let mut nmis = vec![];
    for e in madt.get().entries() {
        match e {
            MadtEntry::LocalApic(l) => lapics.push((l.processor_id, l.apic_id, { l.flags })),
            MadtEntry::IoApic(i) => {
                ioapics.push((i.io_apic_id, { i.io_apic_address }, { i.global_system_interrupt_base }))
            }
            MadtEntry::InterruptSourceOverride(o) => {
                isos.push((o.bus, o.irq, { o.global_system_interrupt }, { o.flags }))
            }
            MadtEntry::LocalApicNmi(n) => nmis.push((n.processor_id, { n.flags }, n.nmi_line)),
            other => panic!("unexpected MADT entry {other:?}"),
        }
    }
    assert_eq!(lapics, [(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]);
    assert_eq!(ioapics, [(2, 0xFEC0_0000, 0)]);
    assert_eq!(isos, [(0, 0, 2, 0), (0, 9, 9, 0x000D)]);
    assert_eq!(nmis, [(0xFF, 0, 1)]);
}

#[test]
fn madt_scales_with_vcpus_and_firmware_errors() {
    for vcpus in [1, 2, 64, 255] {
        let (ram, _) = guest_ram(&Firmware { vcpus, ioapic_id: 0, virtio: vec![] });
        let h = Ram(ram);
        let t = unsafe { AcpiTables::from_rsdp(h, RSDP_ADDR as usize) }.unwrap();
        let madt = t.find_table::<Madt>().unwrap();
        let n = madt.get().entries().filter(|e| matches!(e, MadtEntry::LocalApic(_))).count();
        assert_eq!(n, vcpus as usize);
    }
    let k = KernelImage {
        protocol: Protocol::Multiboot1,
        entry: 0x10_0000,
        segments: vec![Segment { gpa: 0x10_0000, data: b"x", mem_len: 1 }],
        linux: None,
    };
    let plan = |fw: &Firmware| plan_boot(&k, 2 * MIB, "k", "", None, fw);
    for vcpus in [0, 256, u32::MAX] {
        let e = plan(&Firmware { vcpus, ioapic_id: 0, virtio: vec![] }).unwrap_err();
        assert_eq!(e, LoadError::VcpuCount(vcpus));
        assert!(e.to_string().contains("1 to 255"), "{e}");
    }
    for (base, len) in [(0xFFFF_F000u64, 0x2000u64), (1 << 32, 0x200), (0xD000_0000, 0), (u64::MAX, 2)] {
        let fw = Firmware {
            vcpus: 1,
            ioapic_id: 0,
            virtio: vec![VirtioMmio { base: 0xD000_0000, len: 0x200, gsi: 5 }, VirtioMmio { base, len, gsi: 6 }],
        };
        let e = plan(&fw).unwrap_err();
        assert_eq!(e, LoadError::VirtioWindow { index: 1, base, len });
        assert!(e.to_string().contains("4 GiB"), "{e}");
    }
    let many = Firmware { vcpus: 1, ioapic_id: 0, virtio: vec![VirtioMmio { base: 0x1000, len: 0x200, gsi: 5 }; 4097] };
    assert_eq!(plan(&many), Err(LoadError::TooManyVirtioDevices(4097)));
    // 4096 devices do not fit the 128 KiB area either way, but fail cleanly.
    let lots =
        Firmware { vcpus: 255, ioapic_id: 0, virtio: vec![VirtioMmio { base: 0x1000, len: 0x200, gsi: 5 }; 4096] };
    assert!(matches!(plan(&lots), Err(LoadError::BootInfoTooLarge(_))));
    let fits =
        Firmware { vcpus: 255, ioapic_id: 0, virtio: vec![VirtioMmio { base: 0x1000, len: 0x200, gsi: 5 }; 256] };
    assert!(plan(&fits).is_ok());
}

// --- A small AML reader: just what our DSDT uses. ---

#[derive(Clone, Debug, PartialEq)]
enum Obj {
    Int(u64),
    Str(String),
    Buf(Vec<u8>),
    Pkg(Vec<Obj>),
}

fn pkg_length(b: &[u8]) -> (usize, usize) {
    let lead = b[0] as usize;
    let extra = lead >> 6;
    if extra == 0 {
        return (lead & 0x3F, 1);
    }
    let mut len = lead & 0xF;
    for i in 0..extra {
        len |= (b[1 + i] as usize) << (4 + 8 * i);
    }
    (len, 1 + extra)
}

fn name_seg(b: &[u8]) -> String {
    let s = std::str::from_utf8(&b[..4]).unwrap();
    assert!(s.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_'), "bad NameSeg {s:?}");
    assert!(!s.as_bytes()[0].is_ascii_digit());
    s.to_string()
}

/// (path, bytes consumed); only `\SEG` and `SEG`.
fn name_string(b: &[u8], scope: &str) -> (String, usize) {
    if b[0] == b'\\' {
        (format!("\\{}", name_seg(&b[1..])), 5)
    } else if scope == "\\" {
        (format!("\\{}", name_seg(b)), 4)
    } else {
        (format!("{scope}.{}", name_seg(b)), 4)
    }
}

fn data(b: &[u8]) -> (Obj, usize) {
    match b[0] {
        0x00 => (Obj::Int(0), 1),
        0x01 => (Obj::Int(1), 1),
        0xFF => (Obj::Int(u64::MAX), 1),
        0x0A => (Obj::Int(b[1].into()), 2),
        0x0B => (Obj::Int(get16(b, 1).into()), 3),
        0x0C => (Obj::Int(get32(b, 1).into()), 5),
        0x0E => (Obj::Int(get64(b, 1)), 9),
        0x0D => {
            let end = b.iter().position(|&c| c == 0).unwrap();
            (Obj::Str(String::from_utf8(b[1..end].to_vec()).unwrap()), end + 1)
        }
        0x11 => {
            let (len, n) = pkg_length(&b[1..]);
            let (Obj::Int(size), m) = data(&b[1 + n..]) else { panic!("buffer size") };
            let bytes = b[1 + n + m..1 + len].to_vec();
            assert_eq!(bytes.len() as u64, size);
            (Obj::Buf(bytes), 1 + len)
        }
        0x12 => {
            let (len, n) = pkg_length(&b[1..]);
            let count = b[1 + n];
            let mut at = 2 + n;
            let mut elems = vec![];
            while at < 1 + len {
                let (o, m) = data(&b[at..]);
                elems.push(o);
                at += m;
            }
            assert_eq!(at, 1 + len);
            assert_eq!(elems.len(), count as usize);
            (Obj::Pkg(elems), 1 + len)
        }
        op => panic!("unexpected data opcode {op:#x}"),
    }
}

#[derive(Default, Debug)]
struct Namespace {
    names: BTreeMap<String, Obj>,
    devices: Vec<String>,
}

fn term_list(b: &[u8], scope: &str, ns: &mut Namespace) {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            0x08 => {
                let (path, n) = name_string(&b[i + 1..], scope);
                let (obj, m) = data(&b[i + 1 + n..]);
                assert!(ns.names.insert(path.clone(), obj).is_none(), "{path} defined twice");
                i += 1 + n + m;
            }
            0x10 => {
                let (len, n) = pkg_length(&b[i + 1..]);
                let (path, m) = name_string(&b[i + 1 + n..], scope);
                term_list(&b[i + 1 + n + m..i + 1 + len], &path, ns);
                i += 1 + len;
            }
            0x5B if b[i + 1] == 0x82 => {
                let (len, n) = pkg_length(&b[i + 2..]);
                let (path, m) = name_string(&b[i + 2 + n..], scope);
                ns.devices.push(path.clone());
                term_list(&b[i + 2 + n + m..i + 2 + len], &path, ns);
                i += 2 + len;
            }
            op => panic!("unexpected opcode {op:#x} at {i:#x} in {scope}"),
        }
    }
    assert_eq!(i, b.len(), "term list overruns its package in {scope}");
}

fn dsdt_bytes(ram: &[u8]) -> Vec<u8> {
    let fadt = tables(ram).into_iter().find(|t| &t.0 == b"FACP").unwrap().2;
    let at = get64(&fadt, 140) as usize;
    assert_eq!(get32(&fadt, 40) as usize, at, "DSDT and X_DSDT agree");
    let len = get32(ram, at + 4) as usize;
    ram[at..at + len].to_vec()
}

#[test]
fn dsdt_devices() {
    let fw = firmware();
    let (ram, _) = guest_ram(&fw);
    let dsdt = dsdt_bytes(&ram);
    assert_eq!(dsdt[8], 2, "DSDT revision 2: 64-bit integers");
    let mut ns = Namespace::default();
    term_list(&dsdt[36..], "\\", &mut ns);
    assert_eq!(ns.devices, ["\\_SB_.COM1", "\\_SB_.COM2", "\\_SB_.V000", "\\_SB_.V001"]);
    let get = |p: &str| ns.names.get(p).unwrap_or_else(|| panic!("{p} missing: {:?}", ns.names.keys()));
    assert_eq!(get("\\_S5_"), &Obj::Pkg(vec![Obj::Int(5), Obj::Int(5), Obj::Int(0), Obj::Int(0)]));
    // EISAID("PNP0501") = 0x0105D041.
    assert_eq!(get("\\_SB_.COM1._HID"), &Obj::Int(0x0105_D041));
    assert_eq!(get("\\_SB_.COM1._UID"), &Obj::Int(0));
    assert_eq!(
        get("\\_SB_.COM1._CRS"),
        &Obj::Buf(vec![0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00])
    );
    // COM2, the agent's doorbell: 0x2F8, IRQ 3.
    assert_eq!(get("\\_SB_.COM2._UID"), &Obj::Int(1));
    assert_eq!(
        get("\\_SB_.COM2._CRS"),
        &Obj::Buf(vec![0x47, 0x01, 0xF8, 0x02, 0xF8, 0x02, 0x00, 0x08, 0x22, 0x08, 0x00, 0x79, 0x00])
    );
    for (n, v) in fw.virtio.iter().enumerate() {
        let dev = format!("\\_SB_.V{n:03X}");
        assert_eq!(get(&format!("{dev}._HID")), &Obj::Str("LNRO0005".into()));
        assert_eq!(get(&format!("{dev}._UID")), &Obj::Int(n as u64));
        let mut crs = vec![0x86, 9, 0, 1];
        crs.extend((v.base as u32).to_le_bytes());
        crs.extend((v.len as u32).to_le_bytes());
        crs.extend([0x89, 6, 0, 0x01, 1]);
        crs.extend(v.gsi.to_le_bytes());
        crs.extend([0x79, 0]);
        assert_eq!(get(&format!("{dev}._CRS")), &Obj::Buf(crs), "{dev}");
    }
    assert_eq!(ns.names.len(), 1 + 3 + 3 + 3 * fw.virtio.len());
}

#[test]
fn dsdt_with_many_devices_uses_long_pkg_lengths() {
    let fw = Firmware {
        vcpus: 1,
        ioapic_id: 0,
        virtio: (0..300)
            .map(|i| VirtioMmio { base: 0xC000_0000 + i * 0x1000, len: 0x200, gsi: 5 + i as u32 })
            .collect(),
    };
    let (ram, _) = guest_ram(&fw);
    let dsdt = dsdt_bytes(&ram);
    let mut ns = Namespace::default();
    term_list(&dsdt[36..], "\\", &mut ns);
    assert_eq!(ns.devices.len(), 302);
    assert_eq!(ns.devices[301], "\\_SB_.V12B");
    assert_eq!(ns.names.get("\\_SB_.V12B._UID"), Some(&Obj::Int(299)));
}

/// Disassembles and recompiles the tables with ACPICA's `iasl`, if installed.
#[test]
fn iasl_accepts_the_tables() {
    if std::process::Command::new("iasl").arg("-v").output().is_err() {
        eprintln!("skipped: iasl not installed (apt-get install acpica-tools)");
        return;
    }
    let (ram, _) = guest_ram(&firmware());
    let dir = std::env::temp_dir().join(format!("guest-loader-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (sig, _, bytes) in tables(&ram) {
        let name = String::from_utf8_lossy(&sig).to_lowercase();
        std::fs::write(dir.join(format!("{name}.dat")), &bytes).unwrap();
        let out =
            std::process::Command::new("iasl").current_dir(&dir).args(["-d", &format!("{name}.dat")]).output().unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "iasl -d {name}: {log}");
        assert!(!log.to_lowercase().contains("checksum"), "iasl -d {name}: {log}");
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        if name == "dsdt" {
            for want in [
                "Name (\\_S5, Package (0x04)",
                "Device (COM1)",
                "EisaId (\"PNP0501\")",
                "IO (Decode16,",
                "IRQNoFlags ()",
                "Device (V001)",
                "\"LNRO0005\"",
                "Memory32Fixed (ReadWrite,",
                "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )",
            ] {
                assert!(dsl.contains(want), "{want:?} not in:\n{dsl}");
            }
            // Recompile: the AML must be valid ASL round-trip.
            let out =
                std::process::Command::new("iasl").current_dir(&dir).args(["-p", "re", "dsdt.dsl"]).output().unwrap();
            let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && log.contains("0 Errors"), "iasl dsdt.dsl: {log}");
        }
        if name == "facp" {
            let flat = dsl.split_whitespace().collect::<Vec<_>>().join(" ");
            for want in [
                "Revision : 06",
                "SCI Interrupt : 0009",
                "PM1A Event Block Address : 00000600",
                "PM1A Control Block Address : 00000604",
                "PM Timer Block Address : 00000608",
                "RTC Century Index : 32",
                "8042 Present on ports 60/64 (V2) : 0",
                "VGA Not Present (V4) : 1",
                "Hardware Reduced (V5) : 0",
                "Address : 0000000000000CF9",
                "Value to cause reset : 06",
            ] {
                assert!(flat.contains(want), "{want:?} not in:\n{dsl}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
