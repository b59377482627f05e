//! Why a kernel image could not be parsed or laid out.

use core::fmt;

/// Every way loading a kernel can fail; `Display` names what is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// `Auto`: the image has no PVH note, no multiboot1 header and is no bzImage.
    NoEntryPoint,
    /// `Pvh`: the ELF has no Xen note of type 18.
    NoPvhNote,
    /// `Multiboot1`: no multiboot1 header in the first 8192 bytes.
    NoMultibootHeader,
    /// A multiboot1 magic was found at this offset but its checksum is wrong.
    MultibootChecksum(usize),
    /// The multiboot1 header asks for a video mode (flag bit 2).
    MultibootVideoMode,
    /// The multiboot1 header sets a required flag bit (0..16) we do not support.
    MultibootUnsupportedFlag(u32),
    /// The multiboot1 address fields (flag bit 16) extend past end of file.
    MultibootAddressesTruncated,
    /// The multiboot1 address fields are inconsistent; the text says how.
    MultibootBadAddresses(&'static str),
    /// The multiboot1 header has no address fields and the image is not ELF.
    MultibootNotElf,
    /// PVH needs an ELF image and this is not one.
    NotElf,
    /// The ELF header is shorter than its class requires.
    ElfHeaderTruncated,
    /// The ELF is of a kind we do not load; the text says which.
    UnsupportedElf(&'static str),
    /// Program header `n` lies (partly) outside the file.
    ProgramHeaderPastEnd(usize),
    /// Section header `n` lies (partly) outside the file.
    SectionHeaderPastEnd(usize),
    /// The file data of the segment of program header `n` lies outside the file.
    SegmentPastEnd(usize),
    /// Program header `n` has `p_filesz > p_memsz`.
    SegmentFileszExceedsMemsz(usize),
    /// Program header `n`'s `p_paddr + p_memsz` overflows.
    SegmentAddressOverflow(usize),
    /// The data of note section `n` lies outside the file.
    SectionPastEnd(usize),
    /// The PVH entry note's descriptor has this size instead of 4 or 8.
    BadPvhNote(u32),
    /// The kernel has nothing to load.
    NoLoadableSegments,
    /// Guest RAM of this many bytes cannot hold low memory plus a kernel above 1 MiB.
    MemoryTooSmall(u64),
    /// Kernel segment `index` covers `[start, end)`, which is not inside guest RAM.
    SegmentOutsideRam {
        /// Index in [`crate::KernelImage::segments`].
        index: usize,
        /// First guest-physical byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Kernel segment `index` overlaps the reserved `[0x9FC00, 0x100000)`
    /// (EBDA, VGA/ROM hole and the boot-info area).
    SegmentOverlapsReserved {
        /// Index in [`crate::KernelImage::segments`].
        index: usize,
        /// First guest-physical byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// End of guest RAM, for naming the free ranges.
        ram_end: u64,
    },
    /// Kernel segments `first` and `second` overlap in guest memory.
    SegmentsOverlap {
        /// Index of the lower segment.
        first: usize,
        /// Index of the segment that starts inside it.
        second: usize,
    },
    /// Kernel segment `n` has more file data than memory size.
    SegmentDataTooLong(usize),
    /// The entry point lies outside guest RAM.
    EntryOutsideRam(u64),
    /// A multiboot1 address (what, address) is not below 4 GiB.
    AddressAbove4G(&'static str, u64),
    /// The module of `size` bytes at `start` does not fit in guest RAM.
    ModuleDoesNotFit {
        /// Page-aligned start after the kernel.
        start: u64,
        /// Module size.
        size: u64,
    },
    /// The boot-info structures need this many bytes, more than the 128 KiB area.
    BootInfoTooLarge(usize),
    /// A string handed to the guest (what) contains NUL.
    StringContainsNul(&'static str),
    /// `Linux`: no boot sector signature 0xAA55 at 0x1FE and "HdrS" at 0x202.
    NotBzImage,
    /// The bzImage ends before this setup header field.
    LinuxHeaderTruncated(&'static str),
    /// The bzImage's boot protocol version (e.g. 0x0204) is below 2.06.
    LinuxProtocolTooOld(u16),
    /// The bzImage's loadflags lack LOADED_HIGH: an old zImage loaded at 0x10000.
    LinuxNotLoadedHigh,
    /// The protected-mode kernel at `offset` ((setup_sects + 1) * 512) is not in the file.
    LinuxKernelMissing {
        /// File offset the setup header puts it at.
        offset: u64,
        /// Size of the image.
        file_len: u64,
    },
    /// A `Protocol::Linux` kernel without its setup header.
    LinuxSetupMissing,
    /// The Linux kernel needs RAM up to `needed` (its init_size region); RAM is `ram` bytes.
    KernelNeedsMoreRam {
        /// End of the region the kernel uses before reading the memory map.
        needed: u64,
        /// Guest RAM size.
        ram: u64,
    },
    /// The command line of `len` bytes is longer than the kernel's `cmdline_size`.
    CmdlineTooLong {
        /// Command line length without the NUL.
        len: usize,
        /// The kernel's limit.
        max: u32,
    },
    /// The initrd of `size` bytes does not fit between the kernel's end and the limit.
    InitrdDoesNotFit {
        /// Initrd size.
        size: u64,
        /// End of the kernel's region: the initrd must start at or above it.
        low: u64,
        /// min(initrd_addr_max + 1, RAM top, 4 GiB): the initrd must end below it.
        high: u64,
    },
    /// The MADT describes 1 to [`crate::MAX_VCPUS`] vCPUs; this many were asked for.
    VcpuCount(u32),
    /// More virtio-mmio devices than the DSDT can name ([`crate::MAX_VIRTIO_DEVICES`]).
    TooManyVirtioDevices(usize),
    /// Virtio-mmio device `index`'s window is empty or not below 4 GiB.
    VirtioWindow {
        /// Index in [`crate::Firmware::virtio`].
        index: usize,
        /// Window base.
        base: u64,
        /// Window length.
        len: u64,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LoadError::*;
        match *self {
            NoEntryPoint => write!(f, "no PVH entry note and no multiboot1 header, and not a bzImage"),
            NoPvhNote => write!(f, "no PVH entry note (ELF note \"Xen\" type 18)"),
            NoMultibootHeader => write!(f, "no multiboot1 header in the first 8192 bytes"),
            MultibootChecksum(off) => {
                write!(f, "multiboot1 header at offset {off:#x} has a wrong checksum")
            }
            MultibootVideoMode => {
                write!(f, "multiboot1 header sets flag bit 2: video mode not supported")
            }
            MultibootUnsupportedFlag(bit) => {
                write!(f, "multiboot1 header sets flag bit {bit}, which is not supported")
            }
            MultibootAddressesTruncated => {
                write!(f, "multiboot1 header address fields extend past end of file")
            }
            MultibootBadAddresses(why) => write!(f, "multiboot1 header addresses: {why}"),
            MultibootNotElf => {
                write!(f, "multiboot1 header has no address fields (flag bit 16) and the image is not ELF")
            }
            NotElf => write!(f, "not an ELF file (PVH needs an ELF kernel)"),
            ElfHeaderTruncated => write!(f, "ELF header extends past end of file"),
            UnsupportedElf(why) => write!(f, "unsupported ELF: {why}"),
            ProgramHeaderPastEnd(n) => {
                write!(f, "ELF program header {n} extends past end of file")
            }
            SectionHeaderPastEnd(n) => {
                write!(f, "ELF section header {n} extends past end of file")
            }
            SegmentPastEnd(n) => {
                write!(f, "ELF program header {n}: segment data extends past end of file")
            }
            SegmentFileszExceedsMemsz(n) => {
                write!(f, "ELF program header {n}: p_filesz is larger than p_memsz")
            }
            SegmentAddressOverflow(n) => {
                write!(f, "ELF program header {n}: p_paddr + p_memsz overflows")
            }
            SectionPastEnd(n) => write!(f, "ELF note section {n} extends past end of file"),
            BadPvhNote(size) => {
                write!(f, "PVH entry note has a {size}-byte descriptor (expected 4 or 8)")
            }
            NoLoadableSegments => write!(f, "kernel has no loadable segments"),
            MemoryTooSmall(bytes) => {
                write!(f, "guest RAM of {bytes:#x} bytes is too small (must exceed 1 MiB)")
            }
            SegmentOutsideRam { index, start, end } => {
                write!(f, "kernel segment {index} [{start:#x}, {end:#x}) lies outside guest RAM")
            }
            SegmentOverlapsReserved { index, start, end, ram_end } => write!(
                f,
                "kernel segment {index} [{start:#x}, {end:#x}) overlaps the reserved [{:#x}, {:#x}) \
                 (EBDA, VGA/ROM hole, boot-info area); RAM is free at [0x0, {:#x}) and [{:#x}, {ram_end:#x})",
                crate::LOW_RAM_END,
                crate::HIGH_RAM_START,
                crate::LOW_RAM_END,
                crate::HIGH_RAM_START,
            ),
            SegmentsOverlap { first, second } => {
                write!(f, "kernel segments {first} and {second} overlap")
            }
            SegmentDataTooLong(n) => {
                write!(f, "kernel segment {n} has more data than memory size")
            }
            EntryOutsideRam(entry) => write!(f, "entry point {entry:#x} lies outside guest RAM"),
            AddressAbove4G(what, addr) => {
                write!(f, "{what} at {addr:#x} is not below 4 GiB (32-bit boot protocol limit)")
            }
            ModuleDoesNotFit { start, size } => {
                write!(f, "module of {size:#x} bytes at {start:#x} does not fit in guest RAM")
            }
            BootInfoTooLarge(needed) => {
                write!(
                    f,
                    "boot information needs {needed} bytes, more than the {} KiB boot-info area [{:#x}, {:#x})",
                    (crate::BOOT_INFO_END - crate::BOOT_INFO_START) / 1024,
                    crate::BOOT_INFO_START,
                    crate::BOOT_INFO_END
                )
            }
            StringContainsNul(what) => write!(f, "{what} contains a NUL byte"),
            NotBzImage => write!(f, "not a bzImage (no 0xAA55 at 0x1fe and \"HdrS\" at 0x202)"),
            LinuxHeaderTruncated(what) => write!(f, "bzImage ends before its setup header field {what}"),
            LinuxProtocolTooOld(v) => write!(
                f,
                "bzImage uses Linux boot protocol {}.{:02} ({v:#06x}); 2.06 or later is needed",
                v >> 8,
                v & 0xFF
            ),
            LinuxNotLoadedHigh => {
                write!(f, "bzImage loadflags lack LOADED_HIGH (a zImage loaded at 0x10000 is not supported)")
            }
            LinuxKernelMissing { offset, file_len } => write!(
                f,
                "bzImage protected-mode kernel at offset {offset:#x} ((setup_sects + 1) * 512) \
                 is not inside the {file_len:#x}-byte file"
            ),
            LinuxSetupMissing => write!(f, "Linux kernel image without its setup header"),
            KernelNeedsMoreRam { needed, ram } => write!(
                f,
                "the Linux kernel needs RAM up to {needed:#x} (loaded at 0x100000, plus init_size from its \
                 runtime start), but guest RAM is {ram:#x} bytes"
            ),
            CmdlineTooLong { len, max } => {
                write!(f, "command line of {len} bytes is longer than the kernel's cmdline_size of {max} bytes")
            }
            InitrdDoesNotFit { size, low, high } => write!(
                f,
                "initrd of {size:#x} bytes does not fit between the kernel's end {low:#x} and {high:#x} \
                 (min of initrd_addr_max + 1, RAM top, 4 GiB)"
            ),
            VcpuCount(n) => write!(f, "{n} vCPUs: the MADT describes 1 to {} (xAPIC ids)", crate::MAX_VCPUS),
            TooManyVirtioDevices(n) => {
                write!(f, "{n} virtio-mmio devices: the DSDT names at most {}", crate::MAX_VIRTIO_DEVICES)
            }
            VirtioWindow { index, base, len } => {
                write!(f, "virtio-mmio device {index} window [{base:#x}, +{len:#x}) is empty or not below 4 GiB")
            }
        }
    }
}

impl core::error::Error for LoadError {}
