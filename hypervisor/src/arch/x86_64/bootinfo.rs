//! What the boot loader tells us: memory map, boot modules, ACPI RSDP.
//! Multiboot2 (GRUB) and PVH (QEMU `-kernel`) both end up in [`BootInfo`].

use super::boot::{MULTIBOOT2_MAGIC, PVH_MAGIC};

/// Most memory-map entries we keep.
pub const MAX_REGIONS: usize = 64;
/// Most boot modules we keep.
pub const MAX_MODULES: usize = 8;
const IDENTITY_LIMIT: u64 = 1 << 32;

/// One memory-map entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemRegion {
    pub base: u64,
    pub len: u64,
    pub usable: bool,
}

/// One boot module (physical range).
#[derive(Clone, Copy, Debug, Default)]
pub struct Module {
    pub start: u64,
    pub end: u64,
}

/// Parsed boot information; fixed-size because it is read before the heap.
pub struct BootInfo {
    pub loader: &'static str,
    pub regions: [MemRegion; MAX_REGIONS],
    pub region_count: usize,
    pub modules: [Module; MAX_MODULES],
    pub module_count: usize,
    pub rsdp: Option<u64>,
    /// Physical range of the loader's info structure, kept out of the allocator.
    pub info_range: (u64, u64),
}

/// Reads `len` bytes of identity-mapped physical memory below 4 GiB.
fn phys(addr: u64, len: u64) -> Option<&'static [u8]> {
    let end = addr.checked_add(len)?;
    if addr == 0 || end > IDENTITY_LIMIT {
        return None;
    }
    // SAFETY: the first 4 GiB are identity mapped; the loader's structures
    // are not modified while we read them.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) })
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

impl BootInfo {
    fn empty(loader: &'static str) -> BootInfo {
        BootInfo {
            loader,
            regions: [MemRegion::default(); MAX_REGIONS],
            region_count: 0,
            modules: [Module::default(); MAX_MODULES],
            module_count: 0,
            rsdp: None,
            info_range: (0, 0),
        }
    }

    fn push_region(&mut self, base: u64, len: u64, usable: bool) {
        if let Some(r) = self.regions.get_mut(self.region_count) {
            *r = MemRegion { base, len, usable };
            self.region_count += 1;
        }
    }

    fn push_module(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        if let Some(m) = self.modules.get_mut(self.module_count) {
            *m = Module { start, end };
            self.module_count += 1;
        }
    }

    /// The memory map entries.
    pub fn regions(&self) -> &[MemRegion] {
        self.regions.get(..self.region_count).unwrap_or(&[])
    }

    /// The boot modules.
    pub fn modules(&self) -> &[Module] {
        self.modules.get(..self.module_count).unwrap_or(&[])
    }

    /// Parses the loader's structure named by the boot magic.
    pub fn parse(magic: u32, info: u32) -> Result<BootInfo, &'static str> {
        match magic {
            MULTIBOOT2_MAGIC => Self::parse_multiboot2(u64::from(info)),
            PVH_MAGIC => Self::parse_pvh(u64::from(info)),
            _ => Err("unknown boot protocol (not multiboot2 nor PVH)"),
        }
    }

    fn parse_multiboot2(addr: u64) -> Result<BootInfo, &'static str> {
        let head = phys(addr, 8).ok_or("multiboot2 info out of range")?;
        let total = u64::from(u32_at(head, 0).ok_or("multiboot2 header")?);
        let info = phys(addr, total).ok_or("multiboot2 info out of range")?;
        let mut bi = BootInfo::empty("multiboot2");
        bi.info_range = (addr, addr + total);
        let mut off = 8usize;
        while off + 8 <= info.len() {
            let ty = u32_at(info, off).ok_or("tag")?;
            let size = u32_at(info, off + 4).ok_or("tag")? as usize;
            if ty == 0 || size < 8 {
                break;
            }
            let tag = info.get(off..off + size).ok_or("multiboot2 tag past end")?;
            match ty {
                3 => {
                    let start = u64::from(u32_at(tag, 8).ok_or("module tag")?);
                    let end = u64::from(u32_at(tag, 12).ok_or("module tag")?);
                    bi.push_module(start, end);
                }
                6 => {
                    let entry_size = u32_at(tag, 8).ok_or("mmap tag")? as usize;
                    if entry_size < 24 {
                        return Err("multiboot2 mmap entry too small");
                    }
                    let mut e = 16;
                    while e + entry_size <= tag.len() {
                        let base = u64_at(tag, e).ok_or("mmap")?;
                        let len = u64_at(tag, e + 8).ok_or("mmap")?;
                        let kind = u32_at(tag, e + 16).ok_or("mmap")?;
                        bi.push_region(base, len, kind == 1);
                        e += entry_size;
                    }
                }
                14 | 15 => {
                    // The tag holds a copy of the RSDP at offset 8.
                    bi.rsdp = Some(addr + off as u64 + 8);
                }
                _ => {}
            }
            off += (size + 7) & !7;
        }
        Ok(bi)
    }

    fn parse_pvh(addr: u64) -> Result<BootInfo, &'static str> {
        let si = phys(addr, 56).ok_or("PVH start_info out of range")?;
        let mut bi = BootInfo::empty("pvh");
        bi.info_range = (addr, addr + 56);
        let version = u32_at(si, 4).ok_or("start_info")?;
        let nr_modules = u32_at(si, 12).ok_or("start_info")?;
        let modlist = u64_at(si, 16).ok_or("start_info")?;
        let rsdp = u64_at(si, 32).ok_or("start_info")?;
        if rsdp != 0 {
            bi.rsdp = Some(rsdp);
        }
        if nr_modules > 0 {
            let n = u64::from(nr_modules.min(MAX_MODULES as u32));
            let list = phys(modlist, n * 32).ok_or("PVH module list out of range")?;
            for i in 0..n as usize {
                let paddr = u64_at(list, i * 32).ok_or("modlist")?;
                let size = u64_at(list, i * 32 + 8).ok_or("modlist")?;
                bi.push_module(paddr, paddr.saturating_add(size));
            }
        }
        if version >= 1 {
            let memmap = u64_at(si, 40).ok_or("start_info")?;
            let entries = u32_at(si, 48).ok_or("start_info")?;
            let n = u64::from(entries.min(MAX_REGIONS as u32));
            let map = phys(memmap, n * 24).ok_or("PVH memory map out of range")?;
            for i in 0..n as usize {
                let base = u64_at(map, i * 24).ok_or("memmap")?;
                let len = u64_at(map, i * 24 + 8).ok_or("memmap")?;
                let kind = u32_at(map, i * 24 + 16).ok_or("memmap")?;
                bi.push_region(base, len, kind == 1);
            }
        }
        if bi.region_count == 0 {
            return Err("PVH start_info has no memory map (version 0 loader)");
        }
        Ok(bi)
    }
}

/// Borrows a module's bytes (they stay where the loader put them).
pub fn module_bytes(m: &Module) -> Option<&'static [u8]> {
    phys(m.start, m.end.checked_sub(m.start)?)
}
