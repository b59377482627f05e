#!/usr/bin/env python3
"""Checks the boot headers of the built test guests.

Usage: check-headers.py [DIR]   (default: target/x86_64-unknown-none/release)

PVH guests: a PT_NOTE with a Xen note of type 18 (PHYS32_ENTRY) whose
address is the ELF entry, and no multiboot1 header in the first 8 KiB.
mb1-probe: a valid multiboot1 header (a.out kludge) in the first 8 KiB whose
load/bss/entry fields describe exactly the single PT_LOAD segment, and no
Xen note.
"""
import struct
import sys
from pathlib import Path

GUESTS = ["hello", "spinner", "oob-mem", "triple-fault", "bad-hypercall",
          "bad-entry", "cpu-probe", "poweroff", "mb1-probe"]
MB1 = {"mb1-probe"}
MB1_MAGIC = 0x1BADB002


def phdrs(data):
    e_entry, e_phoff = struct.unpack_from("<QQ", data, 24)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    out = []
    for i in range(e_phnum):
        out.append(struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * e_phentsize))
    return e_entry, out  # (type, flags, offset, vaddr, paddr, filesz, memsz, align)


def xen_entries(data, ph):
    found = []
    for (p_type, _, off, _, _, filesz, _, align) in ph:
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12:pos + 12 + namesz]
            desc_off = pos + 12 + ((namesz + 3) & ~3)
            desc = data[desc_off:desc_off + descsz]
            if name == b"Xen\0" and ntype == 18:
                found.append(int.from_bytes(desc, "little"))
            pos = desc_off + ((descsz + 3) & ~3)
    return found


def mb1_header(data):
    for off in range(0, min(8192, len(data)) - 12 + 1, 4):
        magic, flags, csum = struct.unpack_from("<III", data, off)
        if magic == MB1_MAGIC and (magic + flags + csum) & 0xFFFFFFFF == 0:
            return off, flags, struct.unpack_from("<IIIII", data, off + 12)
    return None


def check(path, is_mb1):
    data = path.read_bytes()
    entry, ph = phdrs(data)
    loads = [p for p in ph if p[0] == 1]
    errs = []
    if len(loads) != 1:
        errs.append(f"{len(loads)} PT_LOAD segments (expected 1)")
    if loads and loads[0][3] != 0x100000:
        errs.append(f"PT_LOAD at {loads[0][3]:#x} (expected 0x100000)")
    notes = xen_entries(data, ph)
    mb = mb1_header(data)
    if not is_mb1:
        if notes != [entry]:
            errs.append(f"Xen PHYS32_ENTRY notes {notes} (expected [{entry:#x}])")
        if mb:
            errs.append(f"unexpected multiboot1 header at offset {mb[0]:#x}")
        return errs, f"PVH entry {entry:#x}"
    if notes:
        errs.append("unexpected Xen PVH note")
    if not mb:
        return errs + ["no multiboot1 header in the first 8 KiB"], ""
    off, flags, (header_addr, load_addr, load_end, bss_end, entry_addr) = mb
    if not flags & (1 << 16):
        errs.append(f"flags {flags:#x} lack bit 16 (a.out kludge)")
    start = off - (header_addr - load_addr)
    _, _, p_off, p_vaddr, _, p_filesz, p_memsz, _ = loads[0]
    if (start, load_addr) != (p_off, p_vaddr):
        errs.append(f"kludge loads file offset {start:#x} to {load_addr:#x}, segment is {p_off:#x} at {p_vaddr:#x}")
    if load_end - load_addr != p_filesz:
        errs.append(f"load size {load_end - load_addr:#x} != segment file size {p_filesz:#x}")
    if bss_end - load_addr != p_memsz:
        errs.append(f"bss_end size {bss_end - load_addr:#x} != segment memory size {p_memsz:#x}")
    if entry_addr != entry:
        errs.append(f"entry_addr {entry_addr:#x} != ELF entry {entry:#x}")
    return errs, (f"multiboot1 header at file offset {off:#x}: flags {flags:#x} header_addr {header_addr:#x} "
                  f"load_addr {load_addr:#x} load_end {load_end:#x} bss_end {bss_end:#x} entry {entry_addr:#x}")


def main():
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "target/x86_64-unknown-none/release")
    bad = 0
    for g in GUESTS:
        errs, desc = check(d / g, g in MB1)
        print(f"{g}: {'ok' if not errs else 'BAD'} {desc}")
        for e in errs:
            print(f"  - {e}")
        bad += bool(errs)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
