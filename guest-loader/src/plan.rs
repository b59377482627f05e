//! Boot layout: where the kernel, its module and the boot information go in
//! guest RAM, and the registers the guest starts with.
//!
//! Guest RAM is `[0, mem_bytes)`. Like a PC, the guest's memory map is
//! `[0, 0x9FC00)` usable, `[0x9FC00, 0x100000)` reserved (EBDA, VGA/ROM hole,
//! BIOS area), `[0x100000, mem_bytes)` usable. All boot information (ACPI
//! tables first, then start_info / multiboot info / zero page, tables and
//! strings) lives in the BIOS area `[0xE0000, 0x100000)`, which no PC kernel
//! loads into because it is not RAM on a PC.

use alloc::vec::Vec;

use crate::acpi::{self, Firmware};
use crate::area::{Area, Le};
use crate::bytes::align_up;
use crate::linux::{self, LinuxSetup, ZeroPageInputs, ZERO_PAGE_LEN};
use crate::{KernelImage, LoadError, Protocol, Segment};

/// Start of the boot-info area (ACPI tables, start_info / multiboot info /
/// zero page, their tables and strings).
pub const BOOT_INFO_START: u64 = 0xE_0000;
/// End (exclusive) of the boot-info area.
pub const BOOT_INFO_END: u64 = 0x10_0000;
/// End of usable low memory; `[LOW_RAM_END, HIGH_RAM_START)` is reported reserved.
pub const LOW_RAM_END: u64 = 0x9_FC00;
/// Start of usable high memory (1 MiB).
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// The ACPI RSDP's address: the first bytes of the boot-info area, so a
/// kernel scanning `[0xE0000, 0x100000)` for it finds ours first.
pub const RSDP_ADDR: u64 = BOOT_INFO_START;
/// `hvm_start_info.magic`.
pub const PVH_START_INFO_MAGIC: u32 = 0x336E_C578;
/// EAX value a multiboot1 kernel receives.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

const PAGE: u64 = 4096;
const FOUR_GIB: u64 = 1 << 32;
/// Modules after a kernel loaded low never go below this (IVT, BDA, the
/// area real-mode code uses).
const MODULE_FLOOR: u64 = 0x1_0000;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const MB_INFO_MEMORY: u32 = 1 << 0;
const MB_INFO_CMDLINE: u32 = 1 << 2;
const MB_INFO_MODS: u32 = 1 << 3;
const MB_INFO_MMAP: u32 = 1 << 6;
const MB_INFO_BOOT_LOADER_NAME: u32 = 1 << 9;
/// Size of the multiboot1 info struct including the framebuffer fields.
const MB_INFO_LEN: usize = 116;
const START_INFO_LEN: usize = 56;

/// A module (initrd) to hand to the guest, with the name it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleRef<'a> {
    /// Name given to the guest (module command line / string).
    pub name: &'a str,
    /// Module contents.
    pub data: &'a [u8],
}

/// Bytes to copy into guest RAM: borrowed from the image or built here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestWriteData<'a> {
    /// Straight from the kernel image or module.
    Borrowed(&'a [u8]),
    /// Boot information built by [`plan_boot`].
    Owned(Vec<u8>),
}

impl GuestWriteData<'_> {
    /// The bytes, whichever way they are held.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            GuestWriteData::Borrowed(b) => b,
            GuestWriteData::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for GuestWriteData<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// One copy into guest RAM: `data` at `gpa`, then `zero_len` zero bytes (bss).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestWrite<'a> {
    /// Guest-physical start.
    pub gpa: u64,
    /// Bytes to copy.
    pub data: GuestWriteData<'a>,
    /// Zero bytes following `data` (RAM is zeroed anyway; kept for clarity).
    pub zero_len: u64,
}

impl GuestWrite<'_> {
    /// Total bytes covered, data plus zeros.
    pub fn len(&self) -> u64 {
        (self.data.as_slice().len() as u64).saturating_add(self.zero_len)
    }

    /// Whether this write covers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything needed to start a guest: RAM contents and entry registers.
///
/// Every protocol enters in flat 32-bit protected mode with paging and
/// interrupts off; the caller sets RIP = `entry`, RAX = `eax`, RBX = `ebx`,
/// RSI = `esi` and every other general register (notably EBP, EDI) to 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan<'a> {
    /// Copies into guest RAM; they lie inside RAM and do not overlap.
    pub writes: Vec<GuestWrite<'a>>,
    /// Guest-physical entry point (32-bit protected mode, paging off).
    pub entry: u64,
    /// EAX at entry (0 for PVH and Linux, 0x2BADB002 for multiboot1).
    pub eax: u32,
    /// EBX at entry: the start_info / multiboot info address (0 for Linux).
    pub ebx: u32,
    /// ESI at entry: the Linux zero page (`boot_params`) address, 0 for the
    /// other protocols. The caller must load it into RSI.
    pub esi: u32,
}

/// Lays out `kernel`, its optional `module` (the initrd for Linux), the ACPI
/// tables describing `firmware` and the boot information in a guest with
/// `mem_bytes` of RAM, checking that everything fits and nothing overlaps.
/// `kernel_name` becomes multiboot argv[0]; `cmdline` is the VM's.
pub fn plan_boot<'a>(
    kernel: &KernelImage<'a>,
    mem_bytes: u64,
    kernel_name: &str,
    cmdline: &str,
    module: Option<ModuleRef<'a>>,
    firmware: &Firmware,
) -> Result<BootPlan<'a>, LoadError> {
    if mem_bytes <= HIGH_RAM_START {
        return Err(LoadError::MemoryTooSmall(mem_bytes));
    }
    for (s, what) in [(kernel_name, "kernel name"), (cmdline, "command line")] {
        if s.contains('\0') {
            return Err(LoadError::StringContainsNul(what));
        }
    }
    if module.is_some_and(|m| m.name.contains('\0')) {
        return Err(LoadError::StringContainsNul("module name"));
    }
    let setup = match kernel.protocol {
        Protocol::Linux => Some(check_linux(kernel, mem_bytes, cmdline)?),
        Protocol::Pvh | Protocol::Multiboot1 => None,
    };
    // Only PVH kernels may be loaded above 4 GiB: the others get 32-bit pointers.
    let below_4g = kernel.protocol != Protocol::Pvh;

    let kernel_end = check_segments(&kernel.segments, mem_bytes, below_4g)?;
    if kernel.entry >= mem_bytes {
        return Err(LoadError::EntryOutsideRam(kernel.entry));
    }

    let mut writes = Vec::with_capacity(kernel.segments.len() + 2);
    for seg in &kernel.segments {
        if seg.mem_len > 0 {
            writes.push(GuestWrite {
                gpa: seg.gpa,
                data: GuestWriteData::Borrowed(seg.data),
                zero_len: seg.mem_len - seg.data.len() as u64,
            });
        }
    }

    let placed = match module {
        Some(m) => {
            let size = m.data.len() as u64;
            let gpa = match &setup {
                Some(setup) => place_initrd(setup, kernel_end, size, mem_bytes)?,
                None => place_module(kernel_end, size, mem_bytes, below_4g)?,
            };
            if !m.data.is_empty() {
                writes.push(GuestWrite { gpa, data: GuestWriteData::Borrowed(m.data), zero_len: 0 });
            }
            Some((gpa, m))
        }
        None => None,
    };

    let mut area = Area::default();
    let rsdp = acpi::build(&mut area, firmware)?;
    let (eax, ebx, esi) = match (&setup, kernel.protocol) {
        (Some(setup), _) => (0, 0, linux_info(&mut area, setup, mem_bytes, cmdline, placed, rsdp)?),
        (None, Protocol::Multiboot1) => {
            (MULTIBOOT_BOOTLOADER_MAGIC, multiboot_info(&mut area, mem_bytes, kernel_name, cmdline, placed)?, 0)
        }
        (None, _) => (0, start_info(&mut area, mem_bytes, cmdline, placed, rsdp)?, 0),
    };
    writes.push(GuestWrite { gpa: BOOT_INFO_START, data: GuestWriteData::Owned(area.buf), zero_len: 0 });
    Ok(BootPlan { writes, entry: kernel.entry, eax, ebx, esi })
}

/// The Linux checks that need the header: RAM for the kernel's init_size
/// region and the command line's length.
fn check_linux<'k>(kernel: &KernelImage<'k>, mem_bytes: u64, cmdline: &str) -> Result<LinuxSetup<'k>, LoadError> {
    let setup = kernel.linux.ok_or(LoadError::LinuxSetupMissing)?;
    let needed = kernel.segments.iter().map(|s| s.gpa.saturating_add(s.mem_len)).max().unwrap_or(0);
    if needed > mem_bytes {
        return Err(LoadError::KernelNeedsMoreRam { needed, ram: mem_bytes });
    }
    if cmdline.len() as u64 > u64::from(setup.cmdline_size) {
        return Err(LoadError::CmdlineTooLong { len: cmdline.len(), max: setup.cmdline_size });
    }
    Ok(setup)
}

/// Checks every segment against RAM, the reserved hole below 1 MiB, 4 GiB
/// (`below_4g`) and each other; returns the highest segment end.
fn check_segments(segs: &[Segment<'_>], mem_bytes: u64, below_4g: bool) -> Result<u64, LoadError> {
    let mut spans = Vec::with_capacity(segs.len());
    for (index, seg) in segs.iter().enumerate() {
        if seg.data.len() as u64 > seg.mem_len {
            return Err(LoadError::SegmentDataTooLong(index));
        }
        if seg.mem_len == 0 {
            continue;
        }
        let outside = LoadError::SegmentOutsideRam { index, start: seg.gpa, end: seg.gpa.saturating_add(seg.mem_len) };
        let end = seg.gpa.checked_add(seg.mem_len).ok_or(outside)?;
        if end > mem_bytes {
            return Err(outside);
        }
        if below_4g && end > FOUR_GIB {
            return Err(LoadError::AddressAbove4G("kernel segment end", end));
        }
        if seg.gpa < HIGH_RAM_START && end > LOW_RAM_END {
            return Err(LoadError::SegmentOverlapsReserved { index, start: seg.gpa, end, ram_end: mem_bytes });
        }
        spans.push((seg.gpa, end, index));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if let [a, b] = pair {
            if a.1 > b.0 {
                return Err(LoadError::SegmentsOverlap { first: a.2, second: b.2 });
            }
        }
    }
    Ok(spans.iter().map(|s| s.1).max().unwrap_or(0))
}

/// Page-aligned address after the kernel, moved to 1 MiB if it would run
/// into the reserved hole below it.
fn place_module(kernel_end: u64, size: u64, mem_bytes: u64, below_4g: bool) -> Result<u64, LoadError> {
    let too_big = |start| LoadError::ModuleDoesNotFit { start, size };
    let mut start = align_up(kernel_end.max(MODULE_FLOOR), PAGE).ok_or(too_big(kernel_end))?;
    if start < HIGH_RAM_START && start.saturating_add(size) > LOW_RAM_END {
        start = HIGH_RAM_START;
    }
    let end = start.checked_add(size).ok_or(too_big(start))?;
    if end > mem_bytes {
        return Err(too_big(start));
    }
    if below_4g && end > FOUR_GIB {
        return Err(LoadError::AddressAbove4G("module end", end));
    }
    Ok(start)
}

/// The initrd goes page-aligned as high as possible below
/// min(initrd_addr_max + 1, RAM top, 4 GiB), above the kernel's region.
fn place_initrd(setup: &LinuxSetup<'_>, kernel_end: u64, size: u64, mem_bytes: u64) -> Result<u64, LoadError> {
    let high = (u64::from(setup.initrd_addr_max) + 1).min(mem_bytes).min(FOUR_GIB);
    let low = align_up(kernel_end, PAGE).unwrap_or(u64::MAX);
    high.checked_sub(size).map(|s| s & !(PAGE - 1)).filter(|&s| s >= low).ok_or(LoadError::InitrdDoesNotFit {
        size,
        low: kernel_end,
        high,
    })
}

/// The memory map every guest gets: (base, length, E820 type).
fn memory_map(mem_bytes: u64) -> [(u64, u64, u32); 3] {
    [
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
        (HIGH_RAM_START, mem_bytes - HIGH_RAM_START, E820_RAM),
    ]
}

/// Builds the Linux zero page and command line; returns the zero page's address.
fn linux_info(
    area: &mut Area,
    setup: &LinuxSetup<'_>,
    mem_bytes: u64,
    cmdline: &str,
    initrd: Option<(u64, ModuleRef<'_>)>,
    rsdp: u32,
) -> Result<u32, LoadError> {
    let zp = area.push(&[0; ZERO_PAGE_LEN], PAGE as usize)?;
    let cmdline = area.push_str(cmdline)?;
    let initrd = initrd.map(|(gpa, m)| (gpa, m.data.len() as u64)).filter(|&(_, len)| len > 0);
    let map = memory_map(mem_bytes);
    area.patch(zp, &linux::zero_page(setup, &ZeroPageInputs { cmdline, initrd, rsdp, memory_map: &map }));
    Ok(zp)
}

/// Builds `hvm_start_info` and its tables; returns its address.
fn start_info(
    area: &mut Area,
    mem_bytes: u64,
    cmdline: &str,
    module: Option<(u64, ModuleRef<'_>)>,
    rsdp: u32,
) -> Result<u32, LoadError> {
    let info = area.push(&[0; START_INFO_LEN], 8)?;
    let mut map = Le::default();
    for (base, len, typ) in memory_map(mem_bytes) {
        map.u64(base).u64(len).u32(typ).u32(0);
    }
    let memmap = area.push(&map.0, 8)?;
    let cmdline_paddr = area.push_str(cmdline)?;
    let (nr_modules, modlist) = match module {
        Some((gpa, m)) => {
            let name = area.push_str(m.name)?;
            let mut entry = Le::default();
            entry.u64(gpa).u64(m.data.len() as u64).u64(name.into()).u64(0);
            (1, area.push(&entry.0, 8)?)
        }
        None => (0, 0),
    };
    let mut si = Le::default();
    si.u32(PVH_START_INFO_MAGIC).u32(1).u32(0).u32(nr_modules);
    si.u64(modlist.into()).u64(cmdline_paddr.into()).u64(rsdp.into()).u64(memmap.into());
    si.u32(3).u32(0);
    area.patch(info, &si.0);
    Ok(info)
}

/// Builds the multiboot1 info struct and its tables; returns its address.
fn multiboot_info(
    area: &mut Area,
    mem_bytes: u64,
    kernel_name: &str,
    cmdline: &str,
    module: Option<(u64, ModuleRef<'_>)>,
) -> Result<u32, LoadError> {
    let info = area.push(&[0; MB_INFO_LEN], 8)?;
    let mut map = Le::default();
    for (base, len, typ) in memory_map(mem_bytes) {
        map.u32(20).u64(base).u64(len).u32(typ);
    }
    let mmap_len = map.0.len() as u32;
    let mmap = area.push(&map.0, 8)?;
    let mut full_cmdline = alloc::string::String::from(kernel_name);
    if !cmdline.is_empty() {
        full_cmdline.push(' ');
        full_cmdline.push_str(cmdline);
    }
    let cmdline_addr = area.push_str(&full_cmdline)?;
    let loader_name = area.push_str("BMonitor")?;
    let (mods_count, mods_addr) = match module {
        Some((gpa, m)) => {
            let name = area.push_str(m.name)?;
            // Both bounded below 4 GiB by place_module.
            let start = gpa as u32;
            let end = gpa.saturating_add(m.data.len() as u64) as u32;
            let mut entry = Le::default();
            entry.u32(start).u32(end).u32(name).u32(0);
            (1, area.push(&entry.0, 4)?)
        }
        None => (0, 0),
    };
    let mem_upper = u32::try_from((mem_bytes - HIGH_RAM_START) / 1024).unwrap_or(u32::MAX);
    let mut mi = Le::default();
    mi.u32(MB_INFO_MEMORY | MB_INFO_CMDLINE | MB_INFO_MODS | MB_INFO_MMAP | MB_INFO_BOOT_LOADER_NAME);
    mi.u32((LOW_RAM_END / 1024) as u32).u32(mem_upper);
    mi.u32(0); // boot_device
    mi.u32(cmdline_addr).u32(mods_count).u32(mods_addr);
    mi.u32(0).u32(0).u32(0).u32(0); // syms
    mi.u32(mmap_len).u32(mmap);
    // drives, config_table, boot_loader_name, apm, vbe..., framebuffer: zero except the name.
    mi.u32(0).u32(0).u32(0).u32(loader_name);
    mi.0.resize(MB_INFO_LEN, 0);
    area.patch(info, &mi.0);
    Ok(info)
}
