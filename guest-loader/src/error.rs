//! Why a kernel image could not be parsed or laid out.

use core::fmt;

/// Every way loading a kernel can fail; `Display` names what is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// `Auto`: the image has neither a PVH note nor a multiboot1 header.
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
    /// Kernel segment `index` overlaps the boot-info area `[0x8000, 0x10000)`.
    SegmentOverlapsBootInfo {
        /// Index in [`crate::KernelImage::segments`].
        index: usize,
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
    /// The boot-info structures need this many bytes, more than the 32 KiB area.
    BootInfoTooLarge(usize),
    /// A string handed to the guest (what) contains NUL.
    StringContainsNul(&'static str),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LoadError::*;
        match *self {
            NoEntryPoint => write!(f, "no PVH entry note and no multiboot1 header"),
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
            SegmentOverlapsBootInfo { index } => {
                write!(f, "kernel segment {index} overlaps the boot-info area [0x8000, 0x10000)")
            }
            SegmentsOverlap { first, second } => {
                write!(f, "kernel segments {first} and {second} overlap")
            }
            SegmentDataTooLong(n) => {
                write!(f, "kernel segment {n} has more data than memory size")
            }
            EntryOutsideRam(entry) => write!(f, "entry point {entry:#x} lies outside guest RAM"),
            AddressAbove4G(what, addr) => {
                write!(f, "{what} at {addr:#x} is not below 4 GiB (multiboot1 limit)")
            }
            ModuleDoesNotFit { start, size } => {
                write!(f, "module of {size:#x} bytes at {start:#x} does not fit in guest RAM")
            }
            BootInfoTooLarge(needed) => {
                write!(f, "boot information needs {needed} bytes, more than the 32 KiB boot-info area")
            }
            StringContainsNul(what) => write!(f, "{what} contains a NUL byte"),
        }
    }
}

impl core::error::Error for LoadError {}
