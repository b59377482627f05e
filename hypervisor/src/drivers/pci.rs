//! PCI over ECAM (from the ACPI MCFG): finds the node's virtio devices.
//! Bochs has no ECAM, so there this finds nothing and says so.

use crate::arch::x86_64::acpi::Ecam;
use virtio_drivers::transport::pci::bus::{Cam, Command, DeviceFunction, MmioCam, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;

use super::virtio_hal::BmHal;

/// Transport type the NIC driver is instantiated with.
pub type PciTransportHandle = PciTransport;

/// The identity map covers the first 4 GiB; devices must live there.
const IDENTITY_LIMIT: u64 = 1 << 32;

/// Finds the first virtio device of `kind` on bus 0 and returns its
/// transport, or why there is none.
pub fn find_virtio(ecam: Option<Ecam>, kind: DeviceType) -> Result<PciTransport, &'static str> {
    let ecam = ecam.ok_or("no PCI Express ECAM (no MCFG table)")?;
    let size = (u64::from(ecam.bus_end) - u64::from(ecam.bus_start) + 1) << 20;
    if ecam.base.saturating_add(size) > IDENTITY_LIMIT {
        return Err("ECAM window above 4 GiB is not mapped");
    }
    // SAFETY: the MCFG names this window as the ECAM region of segment 0;
    // it is identity mapped and 4-byte aligned.
    let cam = unsafe { MmioCam::new(ecam.base as *mut u8, Cam::Ecam) };
    let mut root = PciRoot::new(cam);
    let mut found: Option<DeviceFunction> = None;
    for (df, info) in root.enumerate_bus(ecam.bus_start) {
        if virtio_device_type(&info) == Some(kind) {
            found = Some(df);
            break;
        }
    }
    let df = found.ok_or("no such virtio device on PCI bus 0")?;
    check_bars_mapped(&mut root, df)?;
    root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
    PciTransport::new::<BmHal, _>(&mut root, df).map_err(|_| "virtio PCI transport setup failed")
}

fn check_bars_mapped(root: &mut PciRoot<MmioCam<'_>>, df: DeviceFunction) -> Result<(), &'static str> {
    let bars = root.bars(df).map_err(|_| "cannot read PCI BARs")?;
    for bar in bars.iter().flatten() {
        if let Some((addr, size)) = bar.memory_address_size() {
            if addr.saturating_add(size) > IDENTITY_LIMIT {
                return Err("device BAR above 4 GiB is not mapped");
            }
        }
    }
    Ok(())
}
