//! The 8254 PIT (ports 0x40-0x43) and the PC's port 0x61 (speaker gate, OUT2).
