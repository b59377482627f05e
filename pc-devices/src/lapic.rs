//! The per-vCPU local APIC (xAPIC MMIO and x2APIC MSRs, timer, priorities).
