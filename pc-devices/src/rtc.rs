//! The MC146818 CMOS RTC and its NVRAM (ports 0x70/0x71, IRQ 8).
