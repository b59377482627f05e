//! The PC platform a tenant VM sees, as pure device models.
//!
//! Nothing here touches hardware: every model is driven by the caller with
//! an explicit time (`now`, in TSC ticks of the guest's clock) and raises its
//! interrupts through an [`irq::IrqSink`], so a host test can step time and
//! check which vector fires. The bare-metal hypervisor wires these models to
//! the VMCS/VMCB and to the host timer; it holds no device policy.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi_pm;
pub mod bus;
pub mod chipset;
pub mod dest;
pub mod ioapic;
pub mod ipi;
pub mod irq;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod time;
pub mod uart;
pub mod vcpu;
