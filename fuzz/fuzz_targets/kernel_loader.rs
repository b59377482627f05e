//! Fuzzes kernel parsing with every preference and, when a kernel parses,
//! boot planning in a small guest; checks the plan's writes stay in RAM.
#![no_main]

use guest_loader::{parse_kernel, plan_boot, Firmware, ModuleRef, Preference, VirtioMmio};
use libfuzzer_sys::fuzz_target;

const MEM: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let firmware =
        Firmware { vcpus: 2, ioapic_id: 1, virtio: vec![VirtioMmio { base: 0xD000_0000, len: 0x200, gsi: 5 }] };
    for pref in [Preference::Auto, Preference::Pvh, Preference::Multiboot1, Preference::Linux] {
        let Ok(kernel) = parse_kernel(data, pref) else { continue };
        let module = ModuleRef { name: "initrd", data: data.get(..64).unwrap_or(data) };
        for m in [None, Some(module)] {
            if let Ok(plan) = plan_boot(&kernel, MEM, "kernel", "console=ttyS0", m, &firmware) {
                let mut spans: Vec<(u64, u64)> =
                    plan.writes.iter().map(|w| (w.gpa, w.gpa + w.len())).filter(|s| s.1 > s.0).collect();
                spans.sort_unstable();
                for s in &spans {
                    assert!(s.1 <= MEM, "write outside RAM: {s:x?}");
                }
                for w in spans.windows(2) {
                    assert!(w[0].1 <= w[1].0, "overlapping writes: {w:x?}");
                }
                assert!(plan.entry < MEM);
            }
        }
    }
});
