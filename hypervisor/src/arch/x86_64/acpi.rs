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
    /// Local APIC IDs of the enabled CPUs, in MADT order (the first
    /// `cpus`, at most `percpu::MAX_CPUS`).
    pub apic_ids: ApicIds,
    pub io_apics: usize,
    pub local_apic_address: u32,
    /// PCI Express memory-mapped configuration space (segment 0), if any.
    pub ecam: Option<Ecam>,
}

/// The enabled CPUs' local APIC IDs.
#[derive(Clone, Copy, Debug)]
pub struct ApicIds {
    ids: [u32; super::percpu::MAX_CPUS],
    len: usize,
}

impl Default for ApicIds {
    fn default() -> Self {
        ApicIds { ids: [0; super::percpu::MAX_CPUS], len: 0 }
    }
}

impl ApicIds {
    fn push(&mut self, id: u32) {
        if let Some(slot) = self.ids.get_mut(self.len) {
            *slot = id;
            self.len += 1;
        }
    }

    /// The IDs, in MADT order.
    pub fn as_slice(&self) -> &[u32] {
        self.ids.get(..self.len).unwrap_or(&[])
    }
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
            MadtEntry::LocalApic(e) if e.flags & 1 != 0 => {
                p.cpus += 1;
                p.apic_ids.push(u32::from(e.apic_id));
            }
            MadtEntry::LocalX2Apic(e) if e.flags & 1 != 0 => {
                p.cpus += 1;
                p.apic_ids.push(e.x2apic_id);
            }
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
