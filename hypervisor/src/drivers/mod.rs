//! Physical devices BMonitor owns: PCI enumeration over ECAM and the
//! `virtio-drivers` glue (its HAL). The node's NIC is driven from here.

pub mod disk;
pub mod pci;
pub mod tpm;
pub mod virtio_hal;
