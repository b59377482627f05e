//! Applying a decoded access to the guest's general-purpose registers.

use crate::decode::{AccessKind, CompareOp, MmioAccess, StoreSource};

/// The mask covering the low `size` bytes (anything above 4 means 8).
fn mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// Writes `value`, read from the device, into the load's destination
/// register with x86 semantics, so the guest sees exactly what the MOV would
/// have done: `value` is cut to the access size (then zero-extended for
/// MOVZX); 8- and 16-bit writes merge into the register, AH..BH write bits
/// 15:8, 32-bit writes clear bits 63:32, 64-bit writes replace it.
///
/// `regs` is indexed in x86 encoding order (RAX, RCX, RDX, RBX, RSP, RBP,
/// RSI, RDI, R8..R15). Does nothing for a store.
pub fn apply_load(regs: &mut [u64; 16], access: &MmioAccess, value: u64) {
    let AccessKind::Load { reg, high_byte, dst_size, .. } = access.kind else {
        return;
    };
    let v = value & mask(access.size);
    let Some(r) = regs.get_mut(usize::from(reg & 15)) else {
        return;
    };
    *r = match dst_size {
        1 if high_byte => (*r & !0xFF00) | ((v & 0xFF) << 8),
        1 => (*r & !0xFF) | (v & 0xFF),
        2 => (*r & !0xFFFF) | (v & 0xFFFF),
        4 => v & 0xFFFF_FFFF,
        _ => v,
    };
}

/// The value a store writes to the device, masked to the access size, so the
/// device model never sees bits the guest did not write. Returns 0 for a load.
pub fn store_value(regs: &[u64; 16], access: &MmioAccess) -> u64 {
    let AccessKind::Store { src } = access.kind else {
        return 0;
    };
    source_value(regs, access.size, src)
}

/// A register or immediate operand, masked to `size` bytes.
fn source_value(regs: &[u64; 16], size: u8, src: StoreSource) -> u64 {
    let v = match src {
        StoreSource::Reg { reg, high_byte } => {
            let r = regs.get(usize::from(reg & 15)).copied().unwrap_or(0);
            if high_byte {
                r >> 8
            } else {
                r
            }
        }
        StoreSource::Imm(imm) => imm,
    };
    v & mask(size)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::{apply_load, store_value};
    use crate::decode::{decode_mmio, AccessKind, MmioAccess, StoreSource};
    use crate::mode::{CpuMode, CR0_PG, CR4_PAE, EFER_LMA};

    const OLD: u64 = 0x1111_2222_3333_4444;

    fn m64() -> CpuMode {
        CpuMode { cr0: CR0_PG | 1, cr4: CR4_PAE, efer: EFER_LMA, cs_long: true, ..CpuMode::default() }
    }

    /// Decodes `bytes` in 64-bit mode, loads `value`, returns the registers.
    fn load(bytes: &[u8], value: u64) -> [u64; 16] {
        let a = decode_mmio(bytes, &m64()).unwrap();
        let mut regs = [OLD; 16];
        apply_load(&mut regs, &a, value);
        regs
    }

    #[test]
    fn load_semantics() {
        let v = 0x8899_AABB_CCDD_EEFF;
        // mov rax/eax/ax/al/ah, [rbx]
        assert_eq!(load(&[0x48, 0x8b, 0x03], v)[0], v);
        assert_eq!(load(&[0x8b, 0x03], v)[0], 0xCCDD_EEFF); // 32-bit write zeroes bits 63:32
        assert_eq!(load(&[0x66, 0x8b, 0x03], v)[0], 0x1111_2222_3333_EEFF);
        assert_eq!(load(&[0x8a, 0x03], v)[0], 0x1111_2222_3333_44FF);
        assert_eq!(load(&[0x8a, 0x23], v)[0], 0x1111_2222_3333_FF44); // ah
        assert_eq!(load(&[0x40, 0x8a, 0x23], v)[4], 0x1111_2222_3333_44FF); // spl
        assert_eq!(load(&[0x44, 0x8a, 0x3b], v)[15], 0x1111_2222_3333_44FF); // r15b
                                                                             // movzx eax, byte / rax, word / ax, byte
        assert_eq!(load(&[0x0f, 0xb6, 0x03], v)[0], 0xFF);
        assert_eq!(load(&[0x48, 0x0f, 0xb7, 0x03], v)[0], 0xEEFF);
        assert_eq!(load(&[0x66, 0x0f, 0xb6, 0x03], v)[0], 0x1111_2222_3333_00FF);
        // Other registers untouched.
        let regs = load(&[0x8b, 0x0b], v);
        assert_eq!(regs[1], 0xCCDD_EEFF);
        assert!(regs.iter().enumerate().all(|(i, &r)| i == 1 || r == OLD));
    }

    #[test]
    fn store_semantics() {
        let mut regs = [0u64; 16];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = 0x0102_0304_0506_0700 | i as u64;
        }
        let val = |bytes: &[u8]| store_value(&regs, &decode_mmio(bytes, &m64()).unwrap());
        assert_eq!(val(&[0x48, 0x89, 0x08]), 0x0102_0304_0506_0701); // rcx
        assert_eq!(val(&[0x89, 0x08]), 0x0506_0701); // ecx
        assert_eq!(val(&[0x66, 0x89, 0x08]), 0x0701); // cx
        assert_eq!(val(&[0x88, 0x08]), 0x01); // cl
        assert_eq!(val(&[0x88, 0x28]), 0x07); // ch
        assert_eq!(val(&[0x40, 0x88, 0x28]), 0x05); // bpl
        assert_eq!(val(&[0x45, 0x88, 0x38]), 0x0F); // r15b
        assert_eq!(val(&[0x48, 0xc7, 0x00, 0xfe, 0xff, 0xff, 0xff]), u64::MAX - 1);
        assert_eq!(val(&[0x66, 0xc7, 0x00, 0x34, 0x12]), 0x1234);
        assert_eq!(val(&[0x48, 0xa3, 0, 0, 0, 0, 0, 0, 0, 0]), 0x0102_0304_0506_0700); // rax
                                                                                       // A load has no store value; a store does not change registers.
        let a = decode_mmio(&[0x8b, 0x03], &m64()).unwrap();
        assert_eq!(store_value(&regs, &a), 0);
        let s = decode_mmio(&[0x89, 0x08], &m64()).unwrap();
        let before = regs;
        apply_load(&mut regs, &s, 0xFFFF);
        assert_eq!(regs, before);
    }

    #[test]
    fn hand_built_accesses_are_masked() {
        // Out-of-range register numbers and odd sizes never panic.
        let a = MmioAccess {
            len: 1,
            size: 3,
            kind: AccessKind::Load { reg: 200, high_byte: false, zero_extend: false, dst_size: 7 },
        };
        let mut regs = [0u64; 16];
        apply_load(&mut regs, &a, u64::MAX);
        assert_eq!(regs[200 & 15], u64::MAX);
        let s = MmioAccess { len: 1, size: 2, kind: AccessKind::Store { src: StoreSource::Imm(0x12_3456) } };
        assert_eq!(store_value(&regs, &s), 0x3456);
    }
}

/// Arithmetic flags CMP/TEST write: CF, PF, AF, ZF, SF, OF.
pub const ARITH_FLAGS: u64 = 0x8D5;

/// RFLAGS after emulating a [`AccessKind::Compare`] that read `mem` from the
/// device; other access kinds return `rflags` unchanged.
pub fn compare_flags(regs: &[u64; 16], access: &MmioAccess, mem: u64, rflags: u64) -> u64 {
    let AccessKind::Compare { op, with, mem_first } = access.kind else { return rflags };
    let bits = u32::from(access.size) * 8;
    let mask = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let other = match with {
        StoreSource::Imm(v) => v,
        StoreSource::Reg { .. } => source_value(regs, access.size, with),
    } & mask;
    let bits = bits.max(8);
    let mem = mem & mask;
    let sign = 1u64 << (bits - 1);
    let (result, cf, of, af) = match op {
        CompareOp::Test => (mem & other, false, false, false),
        CompareOp::Cmp => {
            let (a, b) = if mem_first { (mem, other) } else { (other, mem) };
            let r = a.wrapping_sub(b) & mask;
            let of = (a ^ b) & (a ^ r) & sign != 0;
            (r, a < b, of, (a ^ b ^ r) & 0x10 != 0)
        }
    };
    let mut f = rflags & !ARITH_FLAGS;
    if cf {
        f |= 1;
    }
    if (result as u8).count_ones().is_multiple_of(2) {
        f |= 1 << 2;
    }
    if af {
        f |= 1 << 4;
    }
    if result == 0 {
        f |= 1 << 6;
    }
    if result & sign != 0 {
        f |= 1 << 7;
    }
    if of {
        f |= 1 << 11;
    }
    f
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod compare_tests {
    use super::*;
    use crate::decode::decode_mmio;
    use crate::CpuMode;

    fn long() -> CpuMode {
        CpuMode { cr0: 0x8000_0011, efer: 0x500, cs_long: true, ..CpuMode::default() }
    }

    #[test]
    fn cmp_mem_imm8_sets_zf_and_cf() {
        // cmp dword [rax+rcx*4+0x40], 0
        let a = decode_mmio(&[0x83, 0x7c, 0x88, 0x40, 0x00], &long()).unwrap();
        assert_eq!((a.len, a.size), (5, 4));
        let regs = [0u64; 16];
        assert_eq!(compare_flags(&regs, &a, 0, 0x2) & ARITH_FLAGS, (1 << 6) | (1 << 2));
        assert_eq!(compare_flags(&regs, &a, 1, 0x2) & (1 << 6), 0);
        // cmp byte [rax], 5 with mem 3: borrow -> CF, SF.
        let b = decode_mmio(&[0x80, 0x38, 0x05], &long()).unwrap();
        let f = compare_flags(&regs, &b, 3, 0);
        assert_eq!(f & 1, 1);
        assert_eq!(f & (1 << 7), 1 << 7);
    }

    #[test]
    fn cmp_reg_mem_order_and_test() {
        // cmp eax, [rbx] (3B /r): eax - mem
        let a = decode_mmio(&[0x3b, 0x03], &long()).unwrap();
        let mut regs = [0u64; 16];
        regs[0] = 1;
        assert_eq!(compare_flags(&regs, &a, 2, 0) & 1, 1, "1 - 2 borrows");
        // cmp [rbx], eax (39 /r): mem - eax
        let b = decode_mmio(&[0x39, 0x03], &long()).unwrap();
        assert_eq!(compare_flags(&regs, &b, 2, 0) & 1, 0);
        // test dword [rbx], 0x10 (F7 /0 id)
        let t = decode_mmio(&[0xf7, 0x03, 0x10, 0, 0, 0], &long()).unwrap();
        assert_eq!(t.len, 6);
        assert_eq!(compare_flags(&regs, &t, 0x10, 0) & (1 << 6), 0);
        assert_eq!(compare_flags(&regs, &t, 0x01, 0) & (1 << 6), 1 << 6);
        // overflow: cmp [rbx], eax with mem=0x80000000, eax=1
        let f = compare_flags(&regs, &b, 0x8000_0000, 0);
        assert_eq!(f & (1 << 11), 1 << 11);
    }

    #[test]
    fn other_group1_ops_are_refused() {
        // add dword [rax], 1 (83 /0)
        assert!(decode_mmio(&[0x83, 0x00, 0x01], &long()).is_err());
        // not dword [rax] (F7 /2)
        assert!(decode_mmio(&[0xf7, 0x10], &long()).is_err());
    }
}
