//! Boot information from either entry protocol, bounds-checked.
//!
//! PVH: EBX = `hvm_start_info` (magic 0x336EC578). Multiboot1: EAX =
//! 0x2BADB002, EBX = multiboot info. Anything that does not fit (unmapped,
//! unterminated, bad UTF-8) is left empty rather than trusted.

use crate::phys::{self, Range};

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336E_C578;
/// EAX a multiboot1 loader passes.
pub const MULTIBOOT1_EAX: u32 = 0x2BAD_B002;

/// Multiboot1 info flag: `mem_lower`/`mem_upper` valid.
pub const MB1_INFO_MEM: u32 = 1 << 0;
/// Multiboot1 info flag: `cmdline` valid.
pub const MB1_INFO_CMDLINE: u32 = 1 << 2;
/// Multiboot1 info flag: `mods_count`/`mods_addr` valid.
pub const MB1_INFO_MODS: u32 = 1 << 3;
/// Multiboot1 info flag: `mmap_length`/`mmap_addr` valid.
pub const MB1_INFO_MMAP: u32 = 1 << 6;

/// Longest command line or module name read.
const MAX_STRING: u64 = 4096;
/// Most memory-map entries or modules looked at.
const MAX_ENTRIES: u64 = 128;
/// Most boot structures remembered in [`BootInfo::protected`].
pub const MAX_PROTECTED: usize = 8;

/// Which protocol the loader used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Xen PVH (`hvm_start_info` in EBX).
    Pvh,
    /// Multiboot1 (magic in EAX, info in EBX).
    Multiboot1,
    /// Neither magic matched.
    Unknown,
}

/// Summary of the loader's memory map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemMap {
    /// Entries read.
    pub entries: u32,
    /// Sum of the usable (type 1) regions' sizes.
    pub usable_bytes: u64,
    /// Highest end of a usable region.
    pub usable_top: u64,
}

/// What the loader told the guest.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// The protocol used.
    pub protocol: Protocol,
    /// EAX at entry.
    pub eax: u32,
    /// EBX at entry.
    pub ebx: u32,
    /// `hvm_start_info.version` (PVH) or the multiboot info flags.
    pub version_or_flags: u32,
    /// The command line ("" if none or unreadable).
    pub cmdline: &'static str,
    /// Number of modules the loader reported.
    pub module_count: u32,
    /// The first module's contents.
    pub module: Option<&'static [u8]>,
    /// The first module's command line / name ("" if none).
    pub module_name: &'static str,
    /// KiB of memory below 1 MiB (multiboot `mem_lower`, or from the map).
    pub mem_lower_kib: Option<u32>,
    /// KiB of memory above 1 MiB (multiboot `mem_upper`, or from the map).
    pub mem_upper_kib: Option<u32>,
    /// The memory map, if one was given.
    pub memmap: Option<MemMap>,
    /// Boot structures this program references (never written by it).
    pub protected: [Range; MAX_PROTECTED],
}

impl BootInfo {
    fn empty(protocol: Protocol, eax: u32, ebx: u32) -> Self {
        BootInfo {
            protocol,
            eax,
            ebx,
            version_or_flags: 0,
            cmdline: "",
            module_count: 0,
            module: None,
            module_name: "",
            mem_lower_kib: None,
            mem_upper_kib: None,
            memmap: None,
            protected: [Range::default(); MAX_PROTECTED],
        }
    }

    fn protect(&mut self, r: Range) {
        if let Some(slot) = self.protected.iter_mut().find(|s| s.start == s.end) {
            *slot = r;
        }
    }

    /// Whether the multiboot info flags have all of `bits` (false for PVH).
    pub fn mb1_has(&self, bits: u32) -> bool {
        self.protocol == Protocol::Multiboot1 && self.version_or_flags & bits == bits
    }
}

/// Parses the boot information the loader left in EAX/EBX.
///
/// The PVH magic at EBX wins over the multiboot EAX value: QEMU's `microvm`
/// firmware (qboot) enters PVH kernels with EAX = 0x2BADB002 left over.
pub fn parse(eax: u32, ebx: u32) -> BootInfo {
    if phys::read_u32(u64::from(ebx)) == Some(PVH_MAGIC) {
        parse_pvh(eax, ebx)
    } else if eax == MULTIBOOT1_EAX {
        parse_mb1(eax, ebx)
    } else {
        BootInfo::empty(Protocol::Unknown, eax, ebx)
    }
}

fn string(addr: u64) -> (&'static str, Range) {
    match phys::c_str(addr, MAX_STRING) {
        Some(b) => {
            let s = match core::str::from_utf8(b) {
                Ok(s) => s,
                Err(e) => b.get(..e.valid_up_to()).and_then(|v| core::str::from_utf8(v).ok()).unwrap_or(""),
            };
            (s, Range::new(addr, b.len() as u64 + 1))
        }
        None => ("", Range::default()),
    }
}

fn field32(base: u64, off: u64) -> u32 {
    phys::read_u32(base + off).unwrap_or(0)
}

fn field64(base: u64, off: u64) -> u64 {
    phys::read_u64(base + off).unwrap_or(0)
}

/// Adds one map entry (`base`, `len`, `kind`) to `m` and `mem_*`.
fn add_region(m: &mut MemMap, lower: &mut Option<u32>, upper: &mut Option<u32>, base: u64, len: u64, kind: u32) {
    m.entries += 1;
    if kind != 1 {
        return;
    }
    let end = base.saturating_add(len);
    m.usable_bytes = m.usable_bytes.saturating_add(len);
    m.usable_top = m.usable_top.max(end);
    if base == 0 {
        *lower = u32::try_from(end.min(0xA_0000) / 1024).ok();
    }
    if base <= 0x10_0000 && end > 0x10_0000 {
        *upper = u32::try_from((end - 0x10_0000) / 1024).ok();
    }
}

fn parse_pvh(eax: u32, ebx: u32) -> BootInfo {
    let base = u64::from(ebx);
    let mut info = BootInfo::empty(Protocol::Pvh, eax, ebx);
    info.protect(Range::new(base, 56));
    info.version_or_flags = field32(base, 4);
    let nr_modules = field32(base, 12);
    let modlist = field64(base, 16);
    let (cmdline, r) = string(field64(base, 24));
    info.cmdline = cmdline;
    info.protect(r);
    info.module_count = nr_modules;
    if nr_modules > 0 && phys::mapped(modlist, 32) {
        info.protect(Range::new(modlist, 32 * u64::from(nr_modules).min(MAX_ENTRIES)));
        let (paddr, size) = (field64(modlist, 0), field64(modlist, 8));
        info.module = phys::bytes(paddr, size);
        if info.module.is_some() {
            info.protect(Range::new(paddr, size));
        }
        let (name, r) = string(field64(modlist, 16));
        info.module_name = name;
        info.protect(r);
    }
    // memmap fields exist from version 1 on.
    if info.version_or_flags >= 1 {
        let (map, entries) = (field64(base, 40), u64::from(field32(base, 48)));
        if entries > 0 && phys::mapped(map, 24 * entries.min(MAX_ENTRIES)) {
            info.protect(Range::new(map, 24 * entries.min(MAX_ENTRIES)));
            let mut m = MemMap::default();
            let (mut lower, mut upper) = (None, None);
            for i in 0..entries.min(MAX_ENTRIES) {
                let e = map + 24 * i;
                add_region(&mut m, &mut lower, &mut upper, field64(e, 0), field64(e, 8), field32(e, 16));
            }
            info.memmap = Some(m);
            info.mem_lower_kib = lower;
            info.mem_upper_kib = upper;
        }
    }
    info
}

fn parse_mb1(eax: u32, ebx: u32) -> BootInfo {
    let base = u64::from(ebx);
    let mut info = BootInfo::empty(Protocol::Multiboot1, eax, ebx);
    if !phys::mapped(base, 52) {
        return info;
    }
    info.protect(Range::new(base, 52));
    let flags = field32(base, 0);
    info.version_or_flags = flags;
    if flags & MB1_INFO_MEM != 0 {
        info.mem_lower_kib = Some(field32(base, 4));
        info.mem_upper_kib = Some(field32(base, 8));
    }
    if flags & MB1_INFO_CMDLINE != 0 {
        let (cmdline, r) = string(u64::from(field32(base, 16)));
        info.cmdline = cmdline;
        info.protect(r);
    }
    if flags & MB1_INFO_MODS != 0 {
        let (count, mods) = (field32(base, 20), u64::from(field32(base, 24)));
        info.module_count = count;
        if count > 0 && phys::mapped(mods, 16) {
            info.protect(Range::new(mods, 16 * u64::from(count).min(MAX_ENTRIES)));
            let (start, end) = (u64::from(field32(mods, 0)), u64::from(field32(mods, 4)));
            if end >= start {
                info.module = phys::bytes(start, end - start);
                if info.module.is_some() {
                    info.protect(Range::new(start, end - start));
                }
            }
            let (name, r) = string(u64::from(field32(mods, 8)));
            info.module_name = name;
            info.protect(r);
        }
    }
    if flags & MB1_INFO_MMAP != 0 {
        let (len, addr) = (u64::from(field32(base, 44)), u64::from(field32(base, 48)));
        if phys::mapped(addr, len) {
            info.protect(Range::new(addr, len));
            let mut m = MemMap::default();
            let (mut lower, mut upper) = (None, None);
            let mut off = 0u64;
            while off + 24 <= len && u64::from(m.entries) < MAX_ENTRIES {
                let e = addr + off;
                let size = u64::from(field32(e, 0));
                if size < 20 {
                    break;
                }
                add_region(&mut m, &mut lower, &mut upper, field64(e, 4), field64(e, 12), field32(e, 20));
                off += size + 4;
            }
            info.memmap = Some(m);
        }
    }
    info
}
