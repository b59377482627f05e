//! Parses guest kernel images and lays out their boot information, so the
//! hypervisor only copies bytes into guest RAM and sets a few registers.
//!
//! Three boot protocols are understood:
//! - **PVH**: an ELF32/ELF64 kernel with a Xen ELF note of type 18
//!   (`XEN_ELFNOTE_PHYS32_ENTRY`) giving the 32-bit physical entry point.
//! - **Multiboot1**: a kernel with a multiboot1 header in its first 8 KiB,
//!   loaded either from the header's address fields ("a.out kludge") or from
//!   its ELF program headers.
//! - **Linux**: a bzImage (x86 boot protocol 2.06 or later) entered through
//!   the 32-bit boot protocol with a zero page (`boot_params`).
//!
//! Every guest also gets ACPI tables (see [`Firmware`]) in the boot-info
//! area, the PC BIOS area `[0xE0000, 0x100000)`.
//!
//! Everything here treats the image as untrusted bytes: every read is
//! bounds-checked and every address computation is overflow-checked.
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

mod acpi;
mod area;
mod bytes;
mod elf;
mod error;
mod initramfs;
mod linux;
mod multiboot;
mod plan;

use alloc::vec::Vec;

pub use acpi::{
    Firmware, VirtioMmio, CENTURY_CMOS_INDEX, IO_APIC_ADDRESS, LOCAL_APIC_ADDRESS, MAX_VCPUS, MAX_VIRTIO_DEVICES,
    OEM_ID, PM1A_CNT_BLK, PM1A_EVT_BLK, PM1_CNT_LEN, PM1_EVT_LEN, PM_TMR_BLK, PM_TMR_LEN, RESET_PORT, RESET_VALUE,
    SCI_IRQ, SLP_TYP_S5,
};
pub use error::LoadError;
pub use initramfs::{initramfs_format, InitramfsFormat};
pub use linux::{LinuxSetup, LINUX_LOAD_ADDR, MIN_LINUX_PROTOCOL, ZERO_PAGE_LEN};
pub use plan::{
    plan_boot, BootPlan, GuestWrite, GuestWriteData, ModuleRef, BOOT_INFO_END, BOOT_INFO_START, HIGH_RAM_START,
    LOW_RAM_END, MULTIBOOT_BOOTLOADER_MAGIC, PVH_START_INFO_MAGIC, RSDP_ADDR,
};

/// The protocol a parsed kernel will be booted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Xen PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Multiboot1: 32-bit protected mode, EAX = 0x2BADB002, EBX = multiboot info.
    Multiboot1,
    /// Linux bzImage, 32-bit boot protocol: ESI = zero page (`boot_params`).
    Linux,
}

/// Which protocol the VM config asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    /// The PVH note if present, else the multiboot1 header, else a bzImage
    /// setup header.
    Auto,
    /// Only PVH.
    Pvh,
    /// Only multiboot1.
    Multiboot1,
    /// Only the Linux bzImage protocol.
    Linux,
}

impl From<vmm_config::config::BootProtocol> for Preference {
    fn from(p: vmm_config::config::BootProtocol) -> Self {
        use vmm_config::config::BootProtocol;
        match p {
            BootProtocol::Auto => Preference::Auto,
            BootProtocol::Pvh => Preference::Pvh,
            BootProtocol::Multiboot1 => Preference::Multiboot1,
            BootProtocol::Linux => Preference::Linux,
        }
    }
}

/// A piece of the kernel to place at a guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Guest-physical load address.
    pub gpa: u64,
    /// Bytes copied from the image.
    pub data: &'a [u8],
    /// Total size in guest memory; bytes past `data.len()` are zero (bss).
    pub mem_len: u64,
}

/// A parsed kernel: how to enter it and what to load where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImage<'a> {
    /// The protocol chosen.
    pub protocol: Protocol,
    /// Guest-physical entry point.
    pub entry: u64,
    /// Loadable pieces, in image order; empty (`mem_len == 0`) ones are dropped.
    /// For Linux, one segment: the protected-mode kernel, with `mem_len`
    /// covering the memory it uses before reading the memory map.
    pub segments: Vec<Segment<'a>>,
    /// The bzImage setup header the zero page is built from (Linux only).
    pub linux: Option<LinuxSetup<'a>>,
}

/// Parses `image` as a kernel booted with the protocol `pref` selects.
pub fn parse_kernel(image: &[u8], pref: Preference) -> Result<KernelImage<'_>, LoadError> {
    let is_elf = elf::is_elf(image);
    match pref {
        Preference::Pvh => {
            if !is_elf {
                return Err(LoadError::NotElf);
            }
            let elf = elf::Elf::parse(image)?;
            let entry = elf.pvh_entry()?.ok_or(LoadError::NoPvhNote)?;
            pvh_kernel(&elf, entry)
        }
        Preference::Multiboot1 => match multiboot::find_header(image)? {
            Some(header) => multiboot::load(image, &header),
            None => Err(LoadError::NoMultibootHeader),
        },
        Preference::Linux => linux::parse(image),
        Preference::Auto => {
            // A structurally broken ELF may still carry a usable multiboot
            // header with address fields; report the ELF error only if not.
            let mut elf_error = None;
            if is_elf {
                match elf::Elf::parse(image).and_then(|e| Ok((e.pvh_entry()?, e))) {
                    Ok((Some(entry), elf)) => return pvh_kernel(&elf, entry),
                    Ok((None, _)) => {}
                    Err(e @ LoadError::BadPvhNote(_)) => return Err(e),
                    Err(e) => elf_error = Some(e),
                }
            }
            // A bzImage has neither an ELF header nor a multiboot1 header;
            // stray multiboot magic inside one does not hide it.
            match multiboot::find_header(image) {
                Ok(Some(header)) => multiboot::load(image, &header),
                _ if linux::is_bzimage(image) => linux::parse(image),
                Ok(None) => Err(elf_error.unwrap_or(LoadError::NoEntryPoint)),
                Err(e) => Err(e),
            }
        }
    }
}

fn pvh_kernel<'a>(elf: &elf::Elf<'a>, entry: u32) -> Result<KernelImage<'a>, LoadError> {
    Ok(KernelImage { protocol: Protocol::Pvh, entry: u64::from(entry), segments: elf.segments()?, linux: None })
}
