//! Minimal little-endian ELF32/ELF64 reader: program headers, PT_LOAD
//! segments and the PVH entry note.

use alloc::vec::Vec;

use crate::bytes::{align_up, range, u16_at, u32_at, u64_at};
use crate::{LoadError, Segment};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Whether `image` starts with the ELF magic.
pub(crate) fn is_elf(image: &[u8]) -> bool {
    image.get(0..4) == Some(b"\x7fELF".as_slice())
}

/// The header fields we use, widened to 64 bits.
pub(crate) struct Elf<'a> {
    image: &'a [u8],
    is64: bool,
    pub(crate) entry: u64,
    phoff: u64,
    phentsize: u64,
    phnum: usize,
    shoff: u64,
    shentsize: u64,
    shnum: usize,
}

/// One program header, widened to 64 bits.
pub(crate) struct Phdr {
    typ: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

impl<'a> Elf<'a> {
    /// Checks identity, class, byte order and machine; reads the header.
    pub(crate) fn parse(image: &'a [u8]) -> Result<Self, LoadError> {
        if !is_elf(image) {
            return Err(LoadError::NotElf);
        }
        let ident = |i: u64| image.get(i as usize).copied().ok_or(LoadError::ElfHeaderTruncated);
        let is64 = match ident(4)? {
            1 => false,
            2 => true,
            _ => return Err(LoadError::UnsupportedElf("unknown class (not ELF32 or ELF64)")),
        };
        if ident(5)? != 1 {
            return Err(LoadError::UnsupportedElf("not little-endian"));
        }
        let t = LoadError::ElfHeaderTruncated;
        let machine = u16_at(image, 18).ok_or(t)?;
        if machine != EM_386 && machine != EM_X86_64 {
            return Err(LoadError::UnsupportedElf("machine is not x86 or x86-64"));
        }
        let (elf, min_ph, min_sh) = if is64 {
            let elf = Elf {
                image,
                is64,
                entry: u64_at(image, 24).ok_or(t)?,
                phoff: u64_at(image, 32).ok_or(t)?,
                shoff: u64_at(image, 40).ok_or(t)?,
                phentsize: u16_at(image, 54).ok_or(t)?.into(),
                phnum: u16_at(image, 56).ok_or(t)?.into(),
                shentsize: u16_at(image, 58).ok_or(t)?.into(),
                shnum: u16_at(image, 60).ok_or(t)?.into(),
            };
            (elf, 56, 64)
        } else {
            let elf = Elf {
                image,
                is64,
                entry: u32_at(image, 24).ok_or(t)?.into(),
                phoff: u32_at(image, 28).ok_or(t)?.into(),
                shoff: u32_at(image, 32).ok_or(t)?.into(),
                phentsize: u16_at(image, 42).ok_or(t)?.into(),
                phnum: u16_at(image, 44).ok_or(t)?.into(),
                shentsize: u16_at(image, 46).ok_or(t)?.into(),
                shnum: u16_at(image, 48).ok_or(t)?.into(),
            };
            (elf, 32, 40)
        };
        if elf.phnum > 0 && elf.phentsize < min_ph {
            return Err(LoadError::UnsupportedElf("program header entries are too small"));
        }
        if elf.shoff != 0 && elf.shnum > 0 && elf.shentsize < min_sh {
            return Err(LoadError::UnsupportedElf("section header entries are too small"));
        }
        Ok(elf)
    }

    /// Reads program header `i`.
    fn phdr(&self, i: usize) -> Result<Phdr, LoadError> {
        let past_end = LoadError::ProgramHeaderPastEnd(i);
        let at = (i as u64).checked_mul(self.phentsize).and_then(|o| o.checked_add(self.phoff)).ok_or(past_end)?;
        let b = range(self.image, at, if self.is64 { 56 } else { 32 }).ok_or(past_end)?;
        let r32 = |o| u32_at(b, o).ok_or(past_end);
        let r64 = |o| u64_at(b, o).ok_or(past_end);
        if self.is64 {
            Ok(Phdr {
                typ: r32(0)?,
                offset: r64(8)?,
                vaddr: r64(16)?,
                paddr: r64(24)?,
                filesz: r64(32)?,
                memsz: r64(40)?,
                align: r64(48)?,
            })
        } else {
            Ok(Phdr {
                typ: r32(0)?,
                offset: r32(4)?.into(),
                vaddr: r32(8)?.into(),
                paddr: r32(12)?.into(),
                filesz: r32(16)?.into(),
                memsz: r32(20)?.into(),
                align: r32(28)?.into(),
            })
        }
    }

    /// The PT_LOAD segments at their physical addresses, checked against the file.
    pub(crate) fn segments(&self) -> Result<Vec<Segment<'a>>, LoadError> {
        let mut out = Vec::new();
        for i in 0..self.phnum {
            let ph = self.phdr(i)?;
            if ph.typ != PT_LOAD {
                continue;
            }
            if ph.filesz > ph.memsz {
                return Err(LoadError::SegmentFileszExceedsMemsz(i));
            }
            let data = range(self.image, ph.offset, ph.filesz).ok_or(LoadError::SegmentPastEnd(i))?;
            ph.paddr.checked_add(ph.memsz).ok_or(LoadError::SegmentAddressOverflow(i))?;
            if ph.memsz > 0 {
                out.push(Segment { gpa: ph.paddr, data, mem_len: ph.memsz });
            }
        }
        if out.is_empty() {
            return Err(LoadError::NoLoadableSegments);
        }
        Ok(out)
    }

    /// `e_entry` translated from virtual to physical through the PT_LOAD
    /// segment that contains it (as GRUB does), else unchanged.
    pub(crate) fn physical_entry(&self) -> Result<u64, LoadError> {
        for i in 0..self.phnum {
            let ph = self.phdr(i)?;
            let end = ph.vaddr.checked_add(ph.memsz);
            if ph.typ == PT_LOAD && ph.vaddr <= self.entry && end.is_some_and(|e| self.entry < e) {
                return ph.paddr.checked_add(self.entry - ph.vaddr).ok_or(LoadError::SegmentAddressOverflow(i));
            }
        }
        Ok(self.entry)
    }

    /// The PVH entry from a PT_NOTE segment, else from an SHT_NOTE section.
    pub(crate) fn pvh_entry(&self) -> Result<Option<u32>, LoadError> {
        for i in 0..self.phnum {
            let ph = self.phdr(i)?;
            if ph.typ != PT_NOTE {
                continue;
            }
            let notes = range(self.image, ph.offset, ph.filesz).ok_or(LoadError::SegmentPastEnd(i))?;
            if let Some(entry) = find_pvh_note(notes, ph.align)? {
                return Ok(Some(entry));
            }
        }
        if self.shoff == 0 {
            return Ok(None);
        }
        let shsize = if self.is64 { 64 } else { 40 };
        for i in 0..self.shnum {
            let past_end = LoadError::SectionHeaderPastEnd(i);
            let at = (i as u64).checked_mul(self.shentsize).and_then(|o| o.checked_add(self.shoff)).ok_or(past_end)?;
            let sh = range(self.image, at, shsize).ok_or(past_end)?;
            if u32_at(sh, 4).ok_or(past_end)? != SHT_NOTE {
                continue;
            }
            let (offset, size, align) = if self.is64 {
                (u64_at(sh, 24).ok_or(past_end)?, u64_at(sh, 32).ok_or(past_end)?, u64_at(sh, 48).ok_or(past_end)?)
            } else {
                (
                    u32_at(sh, 16).ok_or(past_end)?.into(),
                    u32_at(sh, 20).ok_or(past_end)?.into(),
                    u32_at(sh, 32).ok_or(past_end)?.into(),
                )
            };
            let notes = range(self.image, offset, size).ok_or(LoadError::SectionPastEnd(i))?;
            if let Some(entry) = find_pvh_note(notes, align)? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }
}

/// Scans a note area for owner "Xen", type 18. Notes are 4-byte aligned
/// unless the segment/section says 8. A truncated trailing note ends the scan.
fn find_pvh_note(notes: &[u8], align: u64) -> Result<Option<u32>, LoadError> {
    let align = if align == 8 { 8 } else { 4 };
    let mut pos: u64 = 0;
    while let (Some(namesz), Some(descsz), Some(typ)) =
        (u32_at(notes, pos), u32_at(notes, pos + 4), u32_at(notes, pos + 8))
    {
        let name_at = pos + 12;
        let Some(name) = range(notes, name_at, namesz.into()) else { break };
        let Some(desc_at) = align_up(name_at + u64::from(namesz), align) else { break };
        let Some(desc) = range(notes, desc_at, descsz.into()) else { break };
        let owner = name.strip_suffix(b"\0").unwrap_or(name);
        if owner == b"Xen" && typ == XEN_ELFNOTE_PHYS32_ENTRY {
            return match descsz {
                4 | 8 => Ok(u32_at(desc, 0)),
                other => Err(LoadError::BadPvhNote(other)),
            };
        }
        let Some(next) = align_up(desc_at + u64::from(descsz), align) else { break };
        pos = next;
    }
    Ok(None)
}
