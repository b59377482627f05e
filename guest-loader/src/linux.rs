//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst): a bzImage's
//! setup header, and the zero page (`struct boot_params`) for the 32-bit
//! entry, which skips the kernel's real-mode setup code entirely.

use alloc::vec;
use alloc::vec::Vec;

use crate::area::Le;
use crate::bytes::{range, u16_at, u32_at, u64_at};
use crate::{KernelImage, LoadError, Protocol, Segment};

/// Where the protected-mode kernel is loaded and entered: the protocol's
/// default `code32_start` for a kernel "loaded high".
pub const LINUX_LOAD_ADDR: u64 = 0x10_0000;
/// Oldest boot protocol accepted (2.06: `cmdline_size`, 32-bit entry documented).
pub const MIN_LINUX_PROTOCOL: u16 = 0x0206;
/// Size of `struct boot_params`.
pub const ZERO_PAGE_LEN: usize = 4096;

const HEADER_START: usize = 0x1F1;
/// `boot_params` offset after the last byte the setup header may occupy.
const HEADER_LIMIT: usize = 0x290;
const BOOT_FLAG: u16 = 0xAA55;
const HDRS: u32 = u32::from_le_bytes(*b"HdrS");
const LOADED_HIGH: u8 = 1 << 0;
/// `relocatable_kernel` etc. appeared in 2.05; `pref_address`/`init_size` in 2.10.
const PROTOCOL_2_10: u16 = 0x020A;
/// `acpi_rsdp_addr` in `boot_params` is honoured from 2.14.
const PROTOCOL_2_14: u16 = 0x020E;

// Offsets in the image and in boot_params (the header sits at the same place in both).
const OFF_SETUP_SECTS: u64 = 0x1F1;
const OFF_BOOT_FLAG: u64 = 0x1FE;
const OFF_JUMP: u64 = 0x200;
const OFF_HEADER: u64 = 0x202;
const OFF_VERSION: u64 = 0x206;
const OFF_TYPE_OF_LOADER: usize = 0x210;
const OFF_LOADFLAGS: u64 = 0x211;
const OFF_CODE32_START: u64 = 0x214;
const OFF_RAMDISK_IMAGE: usize = 0x218;
const OFF_RAMDISK_SIZE: usize = 0x21C;
const OFF_CMD_LINE_PTR: usize = 0x228;
const OFF_INITRD_ADDR_MAX: u64 = 0x22C;
const OFF_KERNEL_ALIGNMENT: u64 = 0x230;
const OFF_RELOCATABLE: u64 = 0x234;
const OFF_XLOADFLAGS: u64 = 0x236;
const OFF_CMDLINE_SIZE: u64 = 0x238;
const OFF_HARDWARE_SUBARCH: usize = 0x23C;
const OFF_SETUP_DATA: usize = 0x250;
const OFF_PREF_ADDRESS: u64 = 0x258;
const OFF_INIT_SIZE: u64 = 0x260;
// boot_params only.
const BP_ACPI_RSDP_ADDR: usize = 0x070;
const BP_EXT_RAMDISK_IMAGE: usize = 0x0C0;
const BP_EXT_RAMDISK_SIZE: usize = 0x0C4;
const BP_EXT_CMD_LINE_PTR: usize = 0x0C8;
const BP_E820_ENTRIES: usize = 0x1E8;
const BP_E820_TABLE: usize = 0x2D0;
/// `E820_MAX_ENTRIES_ZEROPAGE`.
const E820_MAX: usize = 128;

/// What the boot plan needs from a bzImage's setup header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxSetup<'a> {
    /// The header's bytes `[0x1F1, 0x202 + image[0x201])`, copied into the zero page.
    pub header: &'a [u8],
    /// Boot protocol version, e.g. 0x020F for 2.15.
    pub version: u16,
    /// `loadflags` (LOADED_HIGH is always set).
    pub loadflags: u8,
    /// The kernel's `code32_start` (informational: it is entered at [`LINUX_LOAD_ADDR`]).
    pub code32_start: u32,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// Alignment a relocatable kernel runs at.
    pub kernel_alignment: u32,
    /// Whether the kernel may run at an address other than `pref_address`.
    pub relocatable: bool,
    /// Longest command line the kernel takes, without the NUL.
    pub cmdline_size: u32,
    /// Address the kernel prefers to run at (0x100000 before protocol 2.10).
    pub pref_address: u64,
    /// Memory the kernel needs from its runtime start before it reads the
    /// memory map (0 before protocol 2.10).
    pub init_size: u32,
    /// `xloadflags` (0 before protocol 2.12).
    pub xloadflags: u16,
    /// End (exclusive) of the memory the kernel uses before reading the
    /// memory map: the loaded image, and `init_size` bytes from its runtime
    /// start, which the decompressor uses (it relocates itself there).
    pub reserved_end: u64,
}

/// Whether `image` carries a bzImage boot sector and setup header signature.
pub(crate) fn is_bzimage(image: &[u8]) -> bool {
    u16_at(image, OFF_BOOT_FLAG) == Some(BOOT_FLAG) && u32_at(image, OFF_HEADER) == Some(HDRS)
}

/// Parses the setup header and finds the protected-mode kernel.
pub(crate) fn parse(image: &[u8]) -> Result<KernelImage<'_>, LoadError> {
    if !is_bzimage(image) {
        return Err(LoadError::NotBzImage);
    }
    let field = |off: u64, what: &'static str| u32_at(image, off).ok_or(LoadError::LinuxHeaderTruncated(what));
    let version = u16_at(image, OFF_VERSION).ok_or(LoadError::LinuxHeaderTruncated("version"))?;
    if version < MIN_LINUX_PROTOCOL {
        return Err(LoadError::LinuxProtocolTooOld(version));
    }
    let byte = |off: u64, what| image.get(off as usize).copied().ok_or(LoadError::LinuxHeaderTruncated(what));
    let loadflags = byte(OFF_LOADFLAGS, "loadflags")?;
    if loadflags & LOADED_HIGH == 0 {
        return Err(LoadError::LinuxNotLoadedHigh);
    }
    let header_end = 0x202 + usize::from(byte(OFF_JUMP + 1, "jump")?);
    let header = image.get(HEADER_START..header_end).ok_or(LoadError::LinuxHeaderTruncated("setup header"))?;
    let setup_sects = match byte(OFF_SETUP_SECTS, "setup_sects")? {
        0 => 4,
        n => u64::from(n),
    };
    let pm_offset = (setup_sects + 1) * 512;
    let pm_len = (image.len() as u64).saturating_sub(pm_offset);
    let data = range(image, pm_offset, pm_len)
        .filter(|d| !d.is_empty())
        .ok_or(LoadError::LinuxKernelMissing { offset: pm_offset, file_len: image.len() as u64 })?;

    let code32_start = field(OFF_CODE32_START, "code32_start")?;
    let initrd_addr_max = field(OFF_INITRD_ADDR_MAX, "initrd_addr_max")?;
    let kernel_alignment = field(OFF_KERNEL_ALIGNMENT, "kernel_alignment")?;
    let relocatable = byte(OFF_RELOCATABLE, "relocatable_kernel")? != 0;
    let cmdline_size = field(OFF_CMDLINE_SIZE, "cmdline_size")?;
    let (pref_address, init_size) = if version >= PROTOCOL_2_10 {
        (
            u64_at(image, OFF_PREF_ADDRESS).ok_or(LoadError::LinuxHeaderTruncated("pref_address"))?,
            field(OFF_INIT_SIZE, "init_size")?,
        )
    } else {
        (LINUX_LOAD_ADDR, 0)
    };
    let xloadflags = if version >= 0x020C { u16_at(image, OFF_XLOADFLAGS).unwrap_or(0) } else { 0 };

    // The runtime start (boot.rst, "init_size"): the load address aligned up
    // for a relocatable kernel, else pref_address; Linux's decompressor also
    // never runs below pref_address (LOAD_PHYSICAL_ADDR), so take the max.
    let aligned = match u64::from(kernel_alignment) {
        a if a.is_power_of_two() => crate::bytes::align_up(LINUX_LOAD_ADDR, a),
        _ => Some(LINUX_LOAD_ADDR),
    };
    let runtime_start = if relocatable { aligned.unwrap_or(u64::MAX).max(pref_address) } else { pref_address };
    let runtime_start = runtime_start.max(LINUX_LOAD_ADDR);
    let loaded_end = LINUX_LOAD_ADDR + data.len() as u64;
    let reserved_end = runtime_start.saturating_add(init_size.into()).max(loaded_end);

    let setup = LinuxSetup {
        header,
        version,
        loadflags,
        code32_start,
        initrd_addr_max,
        kernel_alignment,
        relocatable,
        cmdline_size,
        pref_address,
        init_size,
        xloadflags,
        reserved_end,
    };
    Ok(KernelImage {
        protocol: Protocol::Linux,
        entry: LINUX_LOAD_ADDR,
        segments: vec![Segment { gpa: LINUX_LOAD_ADDR, data, mem_len: reserved_end - LINUX_LOAD_ADDR }],
        linux: Some(setup),
    })
}

/// Where the plan put the pieces the zero page points to.
pub(crate) struct ZeroPageInputs<'m> {
    pub(crate) cmdline: u32,
    pub(crate) initrd: Option<(u64, u64)>,
    pub(crate) rsdp: u32,
    pub(crate) memory_map: &'m [(u64, u64, u32)],
}

/// Builds `struct boot_params`: zero, the image's setup header, then the
/// fields a boot loader fills in.
pub(crate) fn zero_page(setup: &LinuxSetup<'_>, inputs: &ZeroPageInputs<'_>) -> Vec<u8> {
    let mut zp = vec![0u8; ZERO_PAGE_LEN];
    let header = setup.header.get(..HEADER_LIMIT - HEADER_START).unwrap_or(setup.header);
    put(&mut zp, HEADER_START, header);
    // "Undefined" loader: we have no assigned id.
    put(&mut zp, OFF_TYPE_OF_LOADER, &[0xFF]);
    // Entered at LINUX_LOAD_ADDR; CAN_USE_HEAP/heap_end_ptr only matter to the
    // real-mode setup code, which the 32-bit entry skips, so they stay as built.
    put(&mut zp, OFF_CODE32_START as usize, &(LINUX_LOAD_ADDR as u32).to_le_bytes());
    let (image, size) = inputs.initrd.unwrap_or((0, 0));
    put(&mut zp, OFF_RAMDISK_IMAGE, &(image as u32).to_le_bytes());
    put(&mut zp, OFF_RAMDISK_SIZE, &(size as u32).to_le_bytes());
    put(&mut zp, BP_EXT_RAMDISK_IMAGE, &((image >> 32) as u32).to_le_bytes());
    put(&mut zp, BP_EXT_RAMDISK_SIZE, &((size >> 32) as u32).to_le_bytes());
    put(&mut zp, OFF_CMD_LINE_PTR, &inputs.cmdline.to_le_bytes());
    put(&mut zp, BP_EXT_CMD_LINE_PTR, &0u32.to_le_bytes());
    // A PC, and no setup_data list whatever the image's bytes say.
    if header.len() >= OFF_HARDWARE_SUBARCH + 4 - HEADER_START {
        put(&mut zp, OFF_HARDWARE_SUBARCH, &0u32.to_le_bytes());
    }
    if header.len() >= OFF_SETUP_DATA + 8 - HEADER_START {
        put(&mut zp, OFF_SETUP_DATA, &0u64.to_le_bytes());
    }
    if setup.version >= PROTOCOL_2_14 {
        put(&mut zp, BP_ACPI_RSDP_ADDR, &u64::from(inputs.rsdp).to_le_bytes());
    }
    let entries = inputs.memory_map.iter().take(E820_MAX);
    put(&mut zp, BP_E820_ENTRIES, &[entries.len() as u8]);
    for (i, &(base, len, typ)) in entries.enumerate() {
        let mut e = Le::default();
        e.u64(base).u64(len).u32(typ);
        put(&mut zp, BP_E820_TABLE + 20 * i, &e.0);
    }
    zp
}

/// Copies `bytes` into `zp` at `off` (all offsets here are inside the page).
fn put(zp: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = zp.get_mut(off..off.saturating_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}
