//! parse_kernel: PVH ELF32/64, multiboot1 (ELF and a.out kludge), every error path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use guest_loader::{parse_kernel, LoadError, Preference, Protocol, Segment};
use proptest::prelude::*;

const ALL: [Preference; 3] = [Preference::Auto, Preference::Pvh, Preference::Multiboot1];

#[test]
fn pvh_elf64_kernel() {
    let img = pvh_elf64(0x10_0040).build();
    for pref in [Preference::Auto, Preference::Pvh] {
        let k = parse_kernel(&img, pref).unwrap();
        assert_eq!(k.protocol, Protocol::Pvh);
        assert_eq!(k.entry, 0x10_0040);
        assert_eq!(k.segments, vec![Segment { gpa: 0x10_0000, data: &[0x90; 300], mem_len: 300 + 0x1000 }]);
    }
    assert_eq!(parse_kernel(&img, Preference::Multiboot1), Err(LoadError::NoMultibootHeader));
}

#[test]
fn pvh_entry_takes_low_32_bits() {
    let img = pvh_elf64(0xFFFF_FFFF_0020_0000).build();
    assert_eq!(parse_kernel(&img, Preference::Pvh).unwrap().entry, 0x20_0000);
}

#[test]
fn pvh_elf32_with_4_byte_note() {
    let mut e = Elf::new(false);
    e.phdrs.push(Ph::load(0x20_0000, b"code", 12));
    e.phdrs.push(Ph::note(note("Xen", 18, &0x20_0002u32.to_le_bytes())));
    let img = e.build();
    let k = parse_kernel(&img, Preference::Auto).unwrap();
    assert_eq!((k.protocol, k.entry), (Protocol::Pvh, 0x20_0002));
    assert_eq!(k.segments, vec![Segment { gpa: 0x20_0000, data: b"code", mem_len: 16 }]);
}

#[test]
fn pvh_note_among_other_notes_and_8_byte_alignment() {
    let mut notes = note("GNU", 3, &[1, 2, 3, 4, 5]);
    notes.extend(note("Xen", 5, b"xen-3.0"));
    notes.extend(pvh_note(0x10_0010));
    let mut e = Elf::new(true);
    e.phdrs.push(Ph::load(0x10_0000, b"x", 0));
    e.phdrs.push(Ph::note(notes));
    assert_eq!(parse_kernel(&e.build(), Preference::Pvh).unwrap().entry, 0x10_0010);

    // 8-byte aligned note segment: desc starts at an 8-byte boundary.
    let mut n = vec![];
    put32(&mut n, 4);
    put32(&mut n, 8);
    put32(&mut n, 18);
    n.extend_from_slice(b"Xen\0");
    n.extend_from_slice(&0x10_0020u64.to_le_bytes());
    let mut e = Elf::new(true);
    e.phdrs.push(Ph::load(0x10_0000, b"x", 0));
    let mut ph = Ph::note(n);
    ph.align = 8;
    e.phdrs.push(ph);
    assert_eq!(parse_kernel(&e.build(), Preference::Pvh).unwrap().entry, 0x10_0020);
}

#[test]
fn pvh_note_from_section_when_no_pt_note() {
    for is64 in [true, false] {
        let mut e = Elf::new(is64);
        e.phdrs.push(Ph::load(0x10_0000, b"abc", 0));
        e.phdrs.push(Ph::note(note("GNU", 1, b"abcd")));
        e.note_sections.push(note("GNU", 3, b"xxxx"));
        e.note_sections.push(pvh_note(0x10_0001));
        let img = e.build();
        let k = parse_kernel(&img, Preference::Auto).unwrap();
        assert_eq!((k.protocol, k.entry), (Protocol::Pvh, 0x10_0001), "is64 {is64}");
    }
}

#[test]
fn wrong_owner_or_type_is_not_pvh() {
    let mut e = Elf::new(true);
    e.phdrs.push(Ph::load(0x10_0000, b"abc", 0));
    e.phdrs.push(Ph::note(note("Xenx", 18, &[0; 8])));
    e.phdrs.push(Ph::note(note("Xen", 17, &[0; 8])));
    assert_eq!(parse_kernel(&e.build(), Preference::Pvh), Err(LoadError::NoPvhNote));
    assert_eq!(parse_kernel(&e.build(), Preference::Auto), Err(LoadError::NoEntryPoint));
    assert_eq!(LoadError::NoEntryPoint.to_string(), "no PVH entry note and no multiboot1 header, and not a bzImage");
}

#[test]
fn bad_pvh_note_size() {
    let mut e = Elf::new(true);
    e.phdrs.push(Ph::load(0x10_0000, b"abc", 0));
    e.phdrs.push(Ph::note(note("Xen", 18, &[1, 2])));
    for pref in [Preference::Auto, Preference::Pvh] {
        assert_eq!(parse_kernel(&e.build(), pref), Err(LoadError::BadPvhNote(2)));
    }
}

#[test]
fn pvh_needs_elf() {
    assert_eq!(parse_kernel(b"hello", Preference::Pvh), Err(LoadError::NotElf));
    assert_eq!(parse_kernel(b"", Preference::Auto), Err(LoadError::NoEntryPoint));
    assert_eq!(parse_kernel(b"", Preference::Multiboot1), Err(LoadError::NoMultibootHeader));
}

/// A multiboot1 ELF kernel: header in the first segment, vaddr != paddr.
fn mb_elf(is64: bool, flags: u32) -> Elf {
    let mut e = Elf::new(is64);
    let mut code = mb_header(flags);
    code.extend_from_slice(&[0xF4; 100]);
    let mut ph = Ph::load(0x10_0000, &code, 0x2000);
    ph.vaddr = 0xC010_0000;
    e.phdrs.push(ph);
    e.phdrs.push(Ph::load(0x20_0000, b"data", 0));
    e.entry = 0xC010_000C;
    e
}

#[test]
fn multiboot_elf_translates_entry() {
    for is64 in [false, true] {
        let img = mb_elf(is64, 3).build();
        for pref in [Preference::Auto, Preference::Multiboot1] {
            let k = parse_kernel(&img, pref).unwrap();
            assert_eq!(k.protocol, Protocol::Multiboot1);
            assert_eq!(k.entry, 0x10_000C);
            assert_eq!(k.segments.len(), 2);
            assert_eq!(k.segments[0].gpa, 0x10_0000);
            assert_eq!(k.segments[0].mem_len, 112 + 0x2000);
            assert_eq!(k.segments[1].data, b"data");
        }
        assert_eq!(parse_kernel(&img, Preference::Pvh), Err(LoadError::NoPvhNote));
    }
}

#[test]
fn multiboot_entry_outside_segments_is_kept() {
    let mut e = mb_elf(false, 0);
    e.entry = 0x30_0000;
    assert_eq!(parse_kernel(&e.build(), Preference::Multiboot1).unwrap().entry, 0x30_0000);
}

#[test]
fn auto_prefers_pvh_over_multiboot() {
    let mut e = mb_elf(true, 0);
    e.phdrs.push(Ph::note(pvh_note(0x10_0020)));
    let img = e.build();
    assert_eq!(parse_kernel(&img, Preference::Auto).unwrap().protocol, Protocol::Pvh);
    assert_eq!(parse_kernel(&img, Preference::Multiboot1).unwrap().protocol, Protocol::Multiboot1);
}

#[test]
fn multiboot_flags() {
    let img = mb_elf(false, 1 << 2).build();
    let e = parse_kernel(&img, Preference::Multiboot1).unwrap_err();
    assert_eq!(e, LoadError::MultibootVideoMode);
    assert!(e.to_string().contains("video mode not supported"));
    let e = parse_kernel(&mb_elf(false, 1 << 5 | 1).build(), Preference::Auto).unwrap_err();
    assert_eq!(e, LoadError::MultibootUnsupportedFlag(5));
    assert!(e.to_string().contains("bit 5"));
    let e = parse_kernel(&mb_elf(false, 1 << 15).build(), Preference::Auto).unwrap_err();
    assert_eq!(e, LoadError::MultibootUnsupportedFlag(15));
    // Optional bits above 16 are ignored.
    assert!(parse_kernel(&mb_elf(false, 3 | 1 << 20).build(), Preference::Auto).is_ok());
}

#[test]
fn multiboot_checksum_and_search_window() {
    let mut img = mb_elf(false, 0).build();
    let (_, layout) = mb_elf(false, 0).build_with_layout();
    let off = layout.data_offsets[0];
    set32(&mut img, off + 8, 0x1234);
    assert_eq!(parse_kernel(&img, Preference::Auto), Err(LoadError::MultibootChecksum(off)));
    assert_eq!(parse_kernel(&img, Preference::Multiboot1), Err(LoadError::MultibootChecksum(off)));

    // Unaligned headers are not found.
    let mut v = vec![0u8; 2];
    v.extend(mb_header(0x1_0000));
    assert_eq!(parse_kernel(&v, Preference::Multiboot1), Err(LoadError::NoMultibootHeader));

    // Beyond 8 KiB: not found; last slot that fits: found.
    let mut a = Aout::new(0x10_0000);
    a.pad = 8192 - 12;
    assert!(parse_kernel(&a.build(), Preference::Multiboot1).is_ok());
    a.pad = 8192 - 8;
    assert_eq!(parse_kernel(&a.build(), Preference::Multiboot1), Err(LoadError::NoMultibootHeader));
}

#[test]
fn multiboot_without_addresses_needs_elf() {
    let mut v = mb_header(0);
    v.extend_from_slice(&[0; 64]);
    assert_eq!(parse_kernel(&v, Preference::Auto), Err(LoadError::MultibootNotElf));
}

#[test]
fn aout_kludge() {
    let a = Aout::new(0x10_0000);
    let img = a.build();
    let k = parse_kernel(&img, Preference::Auto).unwrap();
    assert_eq!(k.protocol, Protocol::Multiboot1);
    assert_eq!(k.entry, 0x10_0040);
    assert_eq!(k.segments, vec![Segment { gpa: 0x10_0000, data: &img[..], mem_len: img.len() as u64 }]);

    // Loading starts before the header: load_addr maps to file offset 0
    // even when the header is deeper; load_end 0 = to end of file; bss.
    let mut a = Aout::new(0x20_0000);
    a.pad = 4096;
    a.load_end = Some(0);
    a.bss_end = Some(0x20_0000 + 0x4000);
    let img = a.build();
    let k = parse_kernel(&img, Preference::Multiboot1).unwrap();
    assert_eq!(k.segments, vec![Segment { gpa: 0x20_0000, data: &img[..], mem_len: 0x4000 }]);

    // load_end before end of file: only part of the file is loaded.
    let mut a = Aout::new(0x10_0000);
    a.load_end = Some(0x10_0000 + 100);
    let img = a.build();
    let k = parse_kernel(&img, Preference::Multiboot1).unwrap();
    assert_eq!(k.segments[0].data, &img[..100]);
}

#[test]
fn aout_kludge_inside_elf_uses_addresses() {
    // ELF with a broken program header table but a valid address-field header.
    let mut e = mb_elf(false, 0x1_0000);
    e.phdrs.truncate(1);
    let (mut img, layout) = e.build_with_layout();
    let hdr = layout.data_offsets[0];
    // Append address fields after the 12-byte header (overwriting code bytes).
    let load_addr = 0x10_0000u32;
    for (i, v) in [load_addr + hdr as u32, load_addr, 0, 0, load_addr + 0x40].iter().enumerate() {
        set32(&mut img, hdr + 12 + 4 * i, *v);
    }
    set32(&mut img, 28, 0xFFFF_0000); // e_phoff far past the end
    let k = parse_kernel(&img, Preference::Auto).unwrap();
    assert_eq!((k.protocol, k.entry), (Protocol::Multiboot1, 0x10_0040));
    assert_eq!(k.segments[0].data.len(), img.len());
}

#[test]
fn aout_bad_addresses() {
    let bad = |a: &Aout| parse_kernel(&a.build(), Preference::Multiboot1).unwrap_err();
    let mut a = Aout::new(0x10_0000);
    a.load_addr = 0x10_0000;
    let mut img = a.build();
    set32(&mut img, a.pad + 16, 0x10_0000 + 100); // load_addr above header_addr
    assert!(matches!(parse_kernel(&img, Preference::Multiboot1), Err(LoadError::MultibootBadAddresses(_))));

    let mut img = a.build();
    set32(&mut img, a.pad + 12, 0x10_0000 + 100); // header 100 bytes in, but only 16 bytes precede it
    let e = parse_kernel(&img, Preference::Multiboot1).unwrap_err();
    assert_eq!(e, LoadError::MultibootBadAddresses("load_addr lies before the start of the file"));

    let mut a = Aout::new(0x10_0000);
    a.load_end = Some(0x10_0000 + a.total_len() as u32 + 1);
    assert!(bad(&a).to_string().contains("past the end of the file"));

    let mut a = Aout::new(0x10_0000);
    a.load_end = Some(0xF_0000);
    assert_eq!(bad(&a), LoadError::MultibootBadAddresses("load_end_addr is below load_addr"));

    let mut a = Aout::new(0x10_0000);
    a.bss_end = Some(0x10_0000 + 10);
    assert_eq!(bad(&a), LoadError::MultibootBadAddresses("bss_end_addr is below load_end_addr"));

    // Address fields cut off by the end of the file.
    let img = a.build();
    assert_eq!(parse_kernel(&img[..a.pad + 20], Preference::Multiboot1), Err(LoadError::MultibootAddressesTruncated));
}

#[test]
fn elf_header_errors() {
    let img = pvh_elf64(0x10_0000).build();
    assert_eq!(parse_kernel(&img[..40], Preference::Pvh), Err(LoadError::ElfHeaderTruncated));
    assert_eq!(parse_kernel(&img[..5], Preference::Pvh), Err(LoadError::ElfHeaderTruncated));
    assert_eq!(parse_kernel(&img[..40], Preference::Auto), Err(LoadError::ElfHeaderTruncated));
    assert_eq!(LoadError::ElfHeaderTruncated.to_string(), "ELF header extends past end of file");

    let mut be = img.clone();
    be[5] = 2;
    assert_eq!(parse_kernel(&be, Preference::Pvh), Err(LoadError::UnsupportedElf("not little-endian")));
    let mut class = img.clone();
    class[4] = 3;
    assert!(matches!(parse_kernel(&class, Preference::Pvh), Err(LoadError::UnsupportedElf(_))));
    let mut arm = img.clone();
    arm[18] = 40;
    assert!(parse_kernel(&arm, Preference::Pvh).unwrap_err().to_string().contains("machine"));
    let mut small = img.clone();
    small[54] = 20; // e_phentsize
    assert!(matches!(parse_kernel(&small, Preference::Pvh), Err(LoadError::UnsupportedElf(_))));
}

fn four_loads() -> Elf {
    let mut e = Elf::new(true);
    for i in 0..4 {
        e.phdrs.push(Ph::load(0x10_0000 + i * 0x1000, b"abcd", 0));
    }
    e.phdrs.push(Ph::note(pvh_note(0x10_0000)));
    e
}

#[test]
fn program_header_past_end() {
    let (img, layout) = four_loads().build_with_layout();
    let cut = layout.phoff + 3 * layout.phentsize + 10;
    let e = parse_kernel(&img[..cut], Preference::Auto).unwrap_err();
    assert_eq!(e, LoadError::ProgramHeaderPastEnd(3));
    assert_eq!(e.to_string(), "ELF program header 3 extends past end of file");

    let mut huge = img.clone();
    set64(&mut huge, 32, u64::MAX - 10); // e_phoff: offset arithmetic overflows
    assert_eq!(parse_kernel(&huge, Preference::Pvh), Err(LoadError::ProgramHeaderPastEnd(0)));
}

#[test]
fn segment_errors() {
    let (img, l) = four_loads().build_with_layout();
    let ph = |i: usize| l.phoff + i * l.phentsize;

    let mut v = img.clone();
    set64(&mut v, ph(2) + 8, img.len() as u64 - 2); // p_offset near the end
    assert_eq!(parse_kernel(&v, Preference::Pvh), Err(LoadError::SegmentPastEnd(2)));
    assert!(LoadError::SegmentPastEnd(2).to_string().contains("past end of file"));

    let mut v = img.clone();
    set64(&mut v, ph(1) + 8, u64::MAX - 1); // p_offset + p_filesz overflows
    assert_eq!(parse_kernel(&v, Preference::Pvh), Err(LoadError::SegmentPastEnd(1)));

    let mut v = img.clone();
    set64(&mut v, ph(0) + 40, 2); // p_memsz < p_filesz
    assert_eq!(parse_kernel(&v, Preference::Pvh), Err(LoadError::SegmentFileszExceedsMemsz(0)));

    let mut v = img.clone();
    set64(&mut v, ph(3) + 24, u64::MAX - 1); // p_paddr + p_memsz overflows
    assert_eq!(parse_kernel(&v, Preference::Pvh), Err(LoadError::SegmentAddressOverflow(3)));

    // A PT_NOTE whose data lies past the end.
    let mut v = img.clone();
    set64(&mut v, ph(4) + 8, img.len() as u64);
    assert_eq!(parse_kernel(&v, Preference::Pvh), Err(LoadError::SegmentPastEnd(4)));

    // No PT_LOAD at all.
    let mut e = Elf::new(true);
    e.phdrs.push(Ph::note(pvh_note(0x10_0000)));
    assert_eq!(parse_kernel(&e.build(), Preference::Pvh), Err(LoadError::NoLoadableSegments));
}

#[test]
fn section_errors() {
    let mut e = Elf::new(true);
    e.phdrs.push(Ph::load(0x10_0000, b"abc", 0));
    e.note_sections.push(pvh_note(0x10_0000));
    let (img, l) = e.build_with_layout();
    let cut = l.shoff + 64 + 10;
    assert_eq!(parse_kernel(&img[..cut], Preference::Pvh), Err(LoadError::SectionHeaderPastEnd(1)));
    let mut v = img.clone();
    set64(&mut v, l.shoff + 64 + 24, img.len() as u64); // sh_offset past end
    assert_eq!(parse_kernel(&v, Preference::Pvh), Err(LoadError::SectionPastEnd(1)));
    // In Auto mode a broken ELF with no multiboot header reports the ELF error.
    assert_eq!(parse_kernel(&v, Preference::Auto), Err(LoadError::SectionPastEnd(1)));
}

#[test]
fn truncated_note_ends_scan() {
    let mut n = pvh_note(0x10_0000);
    n.truncate(n.len() - 3);
    let mut e = Elf::new(true);
    e.phdrs.push(Ph::load(0x10_0000, b"abc", 0));
    e.phdrs.push(Ph::note(n));
    assert_eq!(parse_kernel(&e.build(), Preference::Pvh), Err(LoadError::NoPvhNote));
}

#[test]
fn every_prefix_of_valid_images_is_handled() {
    let images = [pvh_elf64(0x10_0000).build(), mb_elf(false, 3).build(), Aout::new(0x10_0000).build()];
    for img in &images {
        for len in 0..img.len() {
            for pref in ALL {
                let _ = parse_kernel(&img[..len], pref);
            }
        }
    }
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for pref in ALL {
            let _ = parse_kernel(&bytes, pref);
        }
    }

    #[test]
    fn never_panics_on_mutated_images(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut img = match which {
            0 => pvh_elf64(0x10_0000).build(),
            1 => mb_elf(false, 3).build(),
            2 => mb_elf(true, 3).build(),
            _ => Aout::new(0x10_0000).build(),
        };
        for (at, byte) in edits {
            let i = at.index(img.len());
            img[i] = byte;
        }
        for pref in ALL {
            if let Ok(k) = parse_kernel(&img, pref) {
                for s in &k.segments {
                    prop_assert!(s.data.len() as u64 <= s.mem_len);
                    prop_assert!(s.gpa.checked_add(s.mem_len).is_some());
                }
            }
        }
    }
}
