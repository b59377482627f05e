//! x86-64 platform code: boot, descriptor tables, interrupts, timers,
//! serial log, firmware tables and power.

pub mod acpi;
pub mod apic;
pub mod boot;
pub mod bootinfo;
pub mod cmos;
pub mod com2;
pub mod gdt;
pub mod idt;
pub mod percpu;
pub mod power;
pub mod rng;
pub mod serial;
pub mod smp;
pub mod time;
