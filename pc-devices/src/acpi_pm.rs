//! The ACPI fixed-hardware ports: PM1a event and control blocks and the PM timer.
