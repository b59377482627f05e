//! Platform discovery through ACPI (crate `acpi`): CPUs and interrupt
//! controllers from the MADT. Tables are reached through the identity map.

use acpi::madt::{Madt, MadtEntry};
use acpi::mcfg::Mcfg;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;

/// Identity-mapped access to firmware tables below 4 GiB.
#[derive(Clone, Copy)]
struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        // SAFETY: firmware tables lie in the identity-mapped first 4 GiB;
        // the acpi crate only reads through this mapping. A null address
        // cannot come from a valid table pointer, so dangling is never used.
        unsafe {
            let ptr = NonNull::new(physical_address as *mut T).unwrap_or(NonNull::dangling());
            PhysicalMapping::new(physical_address, ptr, size, size, *self)
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// What the node's firmware says about its processors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Platform {
    pub cpus: usize,
    pub io_apics: usize,
    pub local_apic_address: u32,
    /// PCI Express memory-mapped configuration space (segment 0), if any.
    pub ecam: Option<Ecam>,
}

/// One ECAM window from the MCFG.
#[derive(Clone, Copy, Debug)]
pub struct Ecam {
    pub base: u64,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// Reads the MADT; `rsdp` from the boot loader, else a BIOS-area search.
pub fn discover(rsdp: Option<u64>) -> Result<Platform, &'static str> {
    // SAFETY: the RSDP address comes from the loader or the BIOS search; the
    // crate validates signatures and checksums before trusting any table.
    let tables = unsafe {
        match rsdp {
            Some(addr) => AcpiTables::from_rsdp(IdentityHandler, addr as usize),
            None => AcpiTables::search_for_rsdp_bios(IdentityHandler),
        }
    }
    .map_err(|_| "no valid ACPI tables")?;
    let madt = tables.find_table::<Madt>().map_err(|_| "no MADT")?;
    let madt = madt.get();
    let mut p = Platform { local_apic_address: madt.local_apic_address, ..Platform::default() };
    for entry in madt.entries() {
        match entry {
            MadtEntry::LocalApic(e) if e.flags & 1 != 0 => p.cpus += 1,
            MadtEntry::LocalX2Apic(e) if e.flags & 1 != 0 => p.cpus += 1,
            MadtEntry::IoApic(_) => p.io_apics += 1,
            _ => {}
        }
    }
    if let Ok(mcfg) = tables.find_table::<Mcfg>() {
        p.ecam = mcfg.get().entries().iter().find(|e| e.pci_segment_group == 0).map(|e| Ecam {
            base: e.base_address,
            bus_start: e.bus_number_start,
            bus_end: e.bus_number_end,
        });
    }
    Ok(p)
}
