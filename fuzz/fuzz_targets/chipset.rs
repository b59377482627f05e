//! Fuzzes the VM's chipset (local APICs, IPI router, IOAPIC, PIC, PIT,
//! RTC, ACPI PM) with what a hostile guest controls: a vCPU count (first
//! byte, 1 to 8), then a sequence of port, MMIO and MSR accesses and time
//! steps from any of its vCPUs, taken 12 bytes at a time (the vCPU is the
//! op byte's high bits). Nothing may panic, an acknowledged vector must
//! have been pending on that vCPU, a SIPI is handed out at most once per
//! INIT, and kicks name only existing vCPUs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pc_devices::chipset::Chipset;
use pc_devices::time::TscRate;
use pc_devices::vcpu::VcpuRunState;

fuzz_target!(|data: &[u8]| {
    let Some((&n, data)) = data.split_first() else { return };
    let vcpus = u32::from(n % 8) + 1;
    let mut chip = Chipset::with_vcpus(TscRate::new(1_000_000_000), 0, 1_700_000_000, 128 << 20, vcpus);
    let mut now: u64 = 0;
    for op in data.chunks_exact(12) {
        let cpu = usize::from(op[0] >> 4) % vcpus as usize;
        let a = u16::from_le_bytes([op[1], op[2]]);
        let v = u64::from_le_bytes([op[3], op[4], op[5], op[6], op[7], op[8], op[9], op[10]]);
        let size = [1u8, 2, 4, 8][usize::from(op[11] & 3)];
        now = now.saturating_add(u64::from(op[11] >> 2) * 997);
        match op[0] % 11 {
            0 => {
                chip.port_read(a, size.min(4), now);
            }
            1 => {
                chip.port_write(a, size.min(4), v as u32, now);
            }
            2 => {
                chip.mmio_read_on(cpu, 0xFEE0_0000 + u64::from(a & 0xFFF), size, now);
            }
            3 => {
                chip.mmio_write_on(cpu, 0xFEE0_0000 + u64::from(a & 0xFFF), size, v, now);
            }
            4 => {
                chip.mmio_write(0xFEC0_0000 + u64::from(a & 0xFF), size, v, now);
            }
            5 => {
                let _ = chip.msr_write_on(cpu, 0x800 + u32::from(a & 0xFF), v, now);
            }
            6 => {
                let _ = chip.msr_write_on(cpu, [0x1B, 0x6E0][usize::from(a & 1)], v, now);
            }
            7 => chip.set_gsi(u32::from(a % 30), v & 1 == 1),
            8 => {
                // What the hypervisor does between slices of `cpu`.
                let _ = chip.take_init(cpu);
                if chip.take_startup(cpu).is_some() {
                    assert_eq!(chip.run_state(cpu), Some(VcpuRunState::Running), "a started vCPU runs");
                    assert!(chip.take_startup(cpu).is_none(), "one SIPI handed out twice");
                }
            }
            9 => {
                let kicks = chip.take_kicks();
                assert_eq!(kicks >> vcpus, 0, "kick for a vCPU that does not exist: {kicks:#x}");
            }
            _ => {
                chip.advance_on(cpu, now);
                let pending = chip.interrupt_pending_on(cpu);
                if chip.acknowledge_on(cpu).is_some() {
                    assert!(pending, "acknowledged a vector that was not pending");
                }
                let _ = chip.next_deadline_on(cpu, now);
            }
        }
    }
});
