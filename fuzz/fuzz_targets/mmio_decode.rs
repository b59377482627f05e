//! Fuzzes MMIO instruction decoding and guest page walks: the input supplies
//! the CPU mode, the instruction bytes, and (reused as guest RAM) the page
//! tables, so both paths see fully hostile data.
#![no_main]

use insn_decode::decode::{decode_mmio, AccessKind, StoreSource};
use insn_decode::walk::{fetch, translate};
use insn_decode::{
    apply_load, store_value, CpuMode, GuestPhys, CR0_PG, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE,
};
use libfuzzer_sys::fuzz_target;

/// Guest RAM at guest-physical 0..len, backed by the fuzz input.
struct Ram<'a>(&'a [u8]);

impl GuestPhys for Ram<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let start = usize::try_from(gpa).map_err(|_| ())?;
        let end = start.checked_add(buf.len()).ok_or(())?;
        buf.copy_from_slice(self.0.get(start..end).ok_or(())?);
        Ok(())
    }
}

fn word(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (j, v) in b.iter_mut().enumerate() {
        *v = data.get(at + j).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (cr0, cr4, lma) = match sel % 6 {
        0 => (0, 0, false),
        1 => (CR0_PG, 0, false),
        2 => (CR0_PG, CR4_PSE, false),
        3 => (CR0_PG, CR4_PAE, false),
        4 => (CR0_PG, CR4_PAE, true),
        _ => (CR0_PG, CR4_PAE | CR4_LA57, true),
    };
    let mode = CpuMode {
        cr0,
        // Keep CR3 inside the input most of the time so walks go deep.
        cr3: word(rest, 0) % (rest.len() as u64 + 1),
        cr4,
        efer: if lma { EFER_LMA } else { 0 } | if sel & 0x40 != 0 { EFER_NXE } else { 0 },
        cs_long: sel & 0x08 != 0,
        cs_db: sel & 0x10 != 0,
        cs_base: if sel & 0x20 != 0 { word(rest, 8) } else { 0 },
    };

    // Decode the raw tail directly.
    let insn = rest.get(16..).unwrap_or(&[]);
    if let Ok(a) = decode_mmio(insn, &mode) {
        assert!(usize::from(a.len) <= 15 && usize::from(a.len) <= insn.len());
        assert!(matches!(a.size, 1 | 2 | 4 | 8));
        match a.kind {
            AccessKind::Load { reg, dst_size, .. } => assert!(reg < 16 && dst_size >= a.size),
            AccessKind::Store { src: StoreSource::Reg { reg, .. } } => assert!(reg < 16),
            AccessKind::Store { src: StoreSource::Imm(_) } => {}
            AccessKind::Compare { .. } => {
                let _ = insn_decode::compare_flags(&[0x5555_5555_5555_5555; 16], &a, u64::MAX, 0x2);
            }
        }
        let mut regs = [word(rest, 0); 16];
        apply_load(&mut regs, &a, word(rest, 8));
        let v = store_value(&regs, &a);
        assert!(a.size == 8 || v >> (8 * u32::from(a.size)) == 0);
    }

    // Walk and fetch through page tables taken from the input.
    let ram = Ram(rest);
    let rip = word(rest, 8);
    let _ = translate(&ram, &mode, rip);
    let mut buf = [0u8; 15];
    if let Ok(n) = fetch(&ram, &mode, rip, &mut buf) {
        assert!((1..=15).contains(&n));
        if let Ok(a) = decode_mmio(buf.get(..n).unwrap_or(&[]), &mode) {
            assert!(usize::from(a.len) <= n);
        }
    }
});
