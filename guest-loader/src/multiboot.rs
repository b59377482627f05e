//! Multiboot1 header search and loading (address fields or ELF).

use alloc::vec;

use crate::bytes::{range, u32_at};
use crate::elf::{self, Elf};
use crate::{KernelImage, LoadError, Protocol, Segment};

/// Multiboot1 header magic.
const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The header must lie entirely within this many bytes of the file start.
const SEARCH_LEN: usize = 8192;
/// Flag bit: use the header's address fields instead of the ELF headers.
const FLAG_ADDRESSES: u32 = 1 << 16;
/// Flag bit: the kernel wants a video mode.
const FLAG_VIDEO: u32 = 1 << 2;
/// Required-feature bits (0..16) we honour: page-aligned modules, memory info.
const FLAGS_SUPPORTED: u32 = 0b11;

/// A located, checksum-valid multiboot1 header.
pub(crate) struct Header {
    offset: usize,
    flags: u32,
}

/// Finds the first checksum-valid header at a 4-byte aligned offset in the
/// first 8 KiB. A magic with a bad checksum is an error only if no valid one follows.
pub(crate) fn find_header(image: &[u8]) -> Result<Option<Header>, LoadError> {
    let mut bad_checksum = None;
    let mut offset = 0usize;
    while offset + 12 <= SEARCH_LEN {
        let at = offset as u64;
        let (Some(magic), Some(flags), Some(sum)) = (u32_at(image, at), u32_at(image, at + 4), u32_at(image, at + 8))
        else {
            break;
        };
        if magic == HEADER_MAGIC {
            if magic.wrapping_add(flags).wrapping_add(sum) == 0 {
                return Ok(Some(Header { offset, flags }));
            }
            bad_checksum.get_or_insert(offset);
        }
        offset += 4;
    }
    match bad_checksum {
        Some(off) => Err(LoadError::MultibootChecksum(off)),
        None => Ok(None),
    }
}

/// Loads the kernel the header describes.
pub(crate) fn load<'a>(image: &'a [u8], h: &Header) -> Result<KernelImage<'a>, LoadError> {
    if h.flags & FLAG_VIDEO != 0 {
        return Err(LoadError::MultibootVideoMode);
    }
    let unsupported = h.flags & 0xFFFF & !FLAGS_SUPPORTED;
    if unsupported != 0 {
        return Err(LoadError::MultibootUnsupportedFlag(unsupported.trailing_zeros()));
    }
    if h.flags & FLAG_ADDRESSES != 0 {
        return load_addresses(image, h);
    }
    if !elf::is_elf(image) {
        return Err(LoadError::MultibootNotElf);
    }
    let elf = Elf::parse(image)?;
    Ok(KernelImage {
        protocol: Protocol::Multiboot1,
        entry: elf.physical_entry()?,
        segments: elf.segments()?,
        linux: None,
    })
}

/// The "a.out kludge": one segment described by the header's address fields.
fn load_addresses<'a>(image: &'a [u8], h: &Header) -> Result<KernelImage<'a>, LoadError> {
    let field = |i: u64| {
        u32_at(image, h.offset as u64 + 12 + 4 * i).map(u64::from).ok_or(LoadError::MultibootAddressesTruncated)
    };
    let (header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    let bad = LoadError::MultibootBadAddresses;
    let before_header = header_addr.checked_sub(load_addr).ok_or(bad("header_addr is below load_addr"))?;
    let file_offset =
        (h.offset as u64).checked_sub(before_header).ok_or(bad("load_addr lies before the start of the file"))?;
    let load_len = if load_end_addr == 0 {
        (image.len() as u64).saturating_sub(file_offset)
    } else {
        load_end_addr.checked_sub(load_addr).ok_or(bad("load_end_addr is below load_addr"))?
    };
    let data = range(image, file_offset, load_len).ok_or(bad("load_end_addr lies past the end of the file"))?;
    let mem_len = if bss_end_addr == 0 {
        load_len
    } else {
        bss_end_addr
            .checked_sub(load_addr)
            .filter(|&m| m >= load_len)
            .ok_or(bad("bss_end_addr is below load_end_addr"))?
    };
    let segments = if mem_len > 0 {
        vec![Segment { gpa: load_addr, data, mem_len }]
    } else {
        return Err(LoadError::NoLoadableSegments);
    };
    Ok(KernelImage { protocol: Protocol::Multiboot1, entry: entry_addr, segments, linux: None })
}
