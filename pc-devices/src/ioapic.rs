//! The IOAPIC: 24 pins, each routed by its redirection entry to a local APIC vector.
