//! The 8259A PIC pair of a PC (master at 0x20, slave at 0xA0, ELCR at 0x4D0).
