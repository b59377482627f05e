//! Tiny ELF and multiboot image builders for the loader tests.
#![allow(dead_code)]

/// One program header to emit; its data is placed in the file after the headers.
#[derive(Clone)]
pub struct Ph {
    pub typ: u32,
    pub vaddr: u64,
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
    pub align: u64,
}

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;

impl Ph {
    /// A PT_LOAD at `paddr` (vaddr = paddr) with `data` and `bss` extra zero bytes.
    pub fn load(paddr: u64, data: &[u8], bss: u64) -> Ph {
        Ph { typ: PT_LOAD, vaddr: paddr, paddr, data: data.to_vec(), memsz: data.len() as u64 + bss, align: 16 }
    }
    /// A PT_NOTE holding `notes`.
    pub fn note(notes: Vec<u8>) -> Ph {
        Ph { typ: PT_NOTE, vaddr: 0, paddr: 0, memsz: 0, data: notes, align: 4 }
    }
}

/// An ELF image under construction.
#[derive(Clone)]
pub struct Elf {
    pub is64: bool,
    pub machine: u16,
    pub entry: u64,
    pub phdrs: Vec<Ph>,
    /// Contents of SHT_NOTE sections (after a null section).
    pub note_sections: Vec<Vec<u8>>,
}

/// Where things ended up in the built file.
pub struct Layout {
    pub phoff: usize,
    pub phentsize: usize,
    pub data_offsets: Vec<usize>,
    pub shoff: usize,
}

impl Elf {
    pub fn new(is64: bool) -> Elf {
        Elf { is64, machine: if is64 { 62 } else { 3 }, entry: 0, phdrs: vec![], note_sections: vec![] }
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_layout().0
    }

    pub fn build_with_layout(&self) -> (Vec<u8>, Layout) {
        let (ehsize, phentsize, shentsize) = if self.is64 { (64, 56, 64) } else { (52, 32, 40) };
        let phoff = ehsize;
        let mut data = vec![0u8; phoff + phentsize * self.phdrs.len()];
        let mut offsets = vec![];
        for ph in &self.phdrs {
            while !data.len().is_multiple_of(16) {
                data.push(0);
            }
            offsets.push(data.len());
            data.extend_from_slice(&ph.data);
        }
        let mut sec_offsets = vec![];
        for s in &self.note_sections {
            while !data.len().is_multiple_of(8) {
                data.push(0);
            }
            sec_offsets.push(data.len());
            data.extend_from_slice(s);
        }
        while !data.len().is_multiple_of(8) {
            data.push(0);
        }
        let shnum = if self.note_sections.is_empty() { 0 } else { self.note_sections.len() + 1 };
        let shoff = if shnum == 0 { 0 } else { data.len() };
        if shnum > 0 {
            data.extend(std::iter::repeat_n(0u8, shentsize)); // null section
            for (s, off) in self.note_sections.iter().zip(&sec_offsets) {
                let mut sh = vec![];
                if self.is64 {
                    put32(&mut sh, 1);
                    put32(&mut sh, 7);
                    put64(&mut sh, 2);
                    put64(&mut sh, 0);
                    put64(&mut sh, *off as u64);
                    put64(&mut sh, s.len() as u64);
                    put32(&mut sh, 0);
                    put32(&mut sh, 0);
                    put64(&mut sh, 4);
                    put64(&mut sh, 0);
                } else {
                    for v in [1, 7, 2, 0, *off as u32, s.len() as u32, 0, 0, 4, 0] {
                        put32(&mut sh, v);
                    }
                }
                data.extend_from_slice(&sh);
            }
        }
        // ELF header.
        let mut h = vec![0x7f, b'E', b'L', b'F', if self.is64 { 2 } else { 1 }, 1, 1, 0];
        h.resize(16, 0);
        put16(&mut h, 2);
        put16(&mut h, self.machine);
        put32(&mut h, 1);
        if self.is64 {
            put64(&mut h, self.entry);
            put64(&mut h, phoff as u64);
            put64(&mut h, shoff as u64);
        } else {
            put32(&mut h, self.entry as u32);
            put32(&mut h, phoff as u32);
            put32(&mut h, shoff as u32);
        }
        put32(&mut h, 0);
        put16(&mut h, ehsize as u16);
        put16(&mut h, phentsize as u16);
        put16(&mut h, self.phdrs.len() as u16);
        put16(&mut h, shentsize as u16);
        put16(&mut h, shnum as u16);
        put16(&mut h, 0);
        assert_eq!(h.len(), ehsize);
        data[..ehsize].copy_from_slice(&h);
        for (i, (ph, off)) in self.phdrs.iter().zip(&offsets).enumerate() {
            let mut p = vec![];
            if self.is64 {
                put32(&mut p, ph.typ);
                put32(&mut p, 7);
                for v in [*off as u64, ph.vaddr, ph.paddr, ph.data.len() as u64, ph.memsz, ph.align] {
                    put64(&mut p, v);
                }
            } else {
                for v in [
                    ph.typ,
                    *off as u32,
                    ph.vaddr as u32,
                    ph.paddr as u32,
                    ph.data.len() as u32,
                    ph.memsz as u32,
                    7,
                    ph.align as u32,
                ] {
                    put32(&mut p, v);
                }
            }
            let at = phoff + i * phentsize;
            data[at..at + phentsize].copy_from_slice(&p);
        }
        (data, Layout { phoff, phentsize, data_offsets: offsets, shoff })
    }
}

pub fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
pub fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
pub fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}
pub fn set32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_le_bytes());
}
pub fn set64(v: &mut [u8], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_le_bytes());
}
pub fn get32(v: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(v[at..at + 4].try_into().unwrap())
}
pub fn get64(v: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(v[at..at + 8].try_into().unwrap())
}

/// An ELF note with `name` (NUL added), `typ` and `desc`, 4-byte padded.
pub fn note(name: &str, typ: u32, desc: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    put32(&mut v, name.len() as u32 + 1);
    put32(&mut v, desc.len() as u32);
    put32(&mut v, typ);
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v.extend_from_slice(desc);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// The Xen PVH entry note with an 8-byte descriptor.
pub fn pvh_note(entry: u64) -> Vec<u8> {
    note("Xen", 18, &entry.to_le_bytes())
}

/// A PVH ELF64 kernel: code at 1 MiB, entry note.
pub fn pvh_elf64(entry: u64) -> Elf {
    let mut e = Elf::new(true);
    e.entry = 0xFFFF_FFFF_8010_0000;
    e.phdrs.push(Ph::load(0x10_0000, &[0x90; 300], 0x1000));
    e.phdrs.push(Ph::note(pvh_note(entry)));
    e
}

pub const MB_MAGIC: u32 = 0x1BAD_B002;

/// A 12-byte multiboot1 header with a valid checksum.
pub fn mb_header(flags: u32) -> Vec<u8> {
    let mut v = vec![];
    put32(&mut v, MB_MAGIC);
    put32(&mut v, flags);
    put32(&mut v, 0u32.wrapping_sub(MB_MAGIC).wrapping_sub(flags));
    v
}

/// An a.out-kludge multiboot1 image: `pad` bytes, then the header with
/// address fields, then code; the file is loaded at `load_addr`.
pub struct Aout {
    pub pad: usize,
    pub flags: u32,
    pub load_addr: u32,
    pub code_len: usize,
    pub load_end: Option<u32>,
    pub bss_end: Option<u32>,
    pub entry: u32,
}

impl Aout {
    pub fn new(load_addr: u32) -> Aout {
        Aout {
            pad: 16,
            flags: 0x1_0003,
            load_addr,
            code_len: 200,
            load_end: None,
            bss_end: None,
            entry: load_addr + 64,
        }
    }
    pub fn total_len(&self) -> usize {
        self.pad + 32 + self.code_len
    }
    pub fn build(&self) -> Vec<u8> {
        let mut v = vec![0xCC; self.pad];
        v.extend_from_slice(&mb_header(self.flags));
        let header_addr = self.load_addr + self.pad as u32;
        let load_end = self.load_end.unwrap_or(self.load_addr + self.total_len() as u32);
        for x in [header_addr, self.load_addr, load_end, self.bss_end.unwrap_or(0), self.entry] {
            put32(&mut v, x);
        }
        v.extend(std::iter::repeat_n(0xAB, self.code_len));
        v
    }
}

pub fn get16(v: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(v[at..at + 2].try_into().unwrap())
}

/// A synthetic bzImage: boot sector + setup header, then the protected-mode kernel.
#[derive(Clone, Debug)]
pub struct BzImage {
    pub setup_sects: u8,
    pub version: u16,
    pub loadflags: u8,
    pub jump_len: u8,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub setup_data: u64,
    pub pm_len: usize,
}

impl BzImage {
    /// Like a modern x86-64 kernel, scaled down: protocol 2.15, relocatable,
    /// 2 MiB aligned, preferring 16 MiB.
    pub fn new() -> BzImage {
        BzImage {
            setup_sects: 4,
            version: 0x020F,
            loadflags: 1,
            jump_len: 0x6A,
            initrd_addr_max: 0x7FFF_FFFF,
            kernel_alignment: 0x20_0000,
            relocatable: 1,
            xloadflags: 0x7F,
            cmdline_size: 0x7FF,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            setup_data: 0,
            pm_len: 0x3000,
        }
    }
    pub fn pm_offset(&self) -> usize {
        (if self.setup_sects == 0 { 4 } else { self.setup_sects as usize } + 1) * 512
    }
    pub fn build(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.pm_offset()];
        v[0x1F1] = self.setup_sects;
        v[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
        v[0x200] = 0xEB;
        v[0x201] = self.jump_len;
        v[0x202..0x206].copy_from_slice(b"HdrS");
        v[0x206..0x208].copy_from_slice(&self.version.to_le_bytes());
        v[0x211] = self.loadflags;
        set32(&mut v, 0x214, 0x10_0000);
        set32(&mut v, 0x22C, self.initrd_addr_max);
        set32(&mut v, 0x230, self.kernel_alignment);
        v[0x234] = self.relocatable;
        v[0x236..0x238].copy_from_slice(&self.xloadflags.to_le_bytes());
        set32(&mut v, 0x238, self.cmdline_size);
        set64(&mut v, 0x250, self.setup_data);
        set64(&mut v, 0x258, self.pref_address);
        set32(&mut v, 0x260, self.init_size);
        v.extend((0..self.pm_len).map(|i| (i % 251) as u8));
        v
    }
}
