//! Guest-facing device models. For now: the legacy port space of a PC —
//! a 16550 UART per VM, isa-debug-exit, power/reset ports and an empty PCI
//! configuration space.

pub mod mmio;
pub mod ports;
pub mod uart;
