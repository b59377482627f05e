//! Table-driven decode tests; encodings were produced with GNU `as` and
//! cross-checked with `objdump -d`.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::{decode_mmio, AccessKind, DecodeError, MmioAccess, StoreSource};
use crate::mode::{CpuMode, CR0_PG, CR4_PAE, EFER_LMA};

fn m64() -> CpuMode {
    CpuMode { cr0: CR0_PG | 1, cr4: CR4_PAE, efer: EFER_LMA, cs_long: true, ..CpuMode::default() }
}
fn m32() -> CpuMode {
    CpuMode { cr0: 1, cs_db: true, ..CpuMode::default() }
}
fn m16() -> CpuMode {
    CpuMode::default()
}
/// Compatibility mode: long mode active but a 32-bit code segment.
fn compat() -> CpuMode {
    CpuMode { cs_long: false, cs_db: true, ..m64() }
}

const fn ld(reg: u8, size: u8) -> AccessKind {
    AccessKind::Load { reg, high_byte: false, zero_extend: false, dst_size: size }
}
const fn ldh(reg: u8) -> AccessKind {
    AccessKind::Load { reg, high_byte: true, zero_extend: false, dst_size: 1 }
}
const fn zx(reg: u8, dst: u8) -> AccessKind {
    AccessKind::Load { reg, high_byte: false, zero_extend: true, dst_size: dst }
}
const fn st(reg: u8) -> AccessKind {
    AccessKind::Store { src: StoreSource::Reg { reg, high_byte: false } }
}
const fn sth(reg: u8) -> AccessKind {
    AccessKind::Store { src: StoreSource::Reg { reg, high_byte: true } }
}
const fn imm(v: u64) -> AccessKind {
    AccessKind::Store { src: StoreSource::Imm(v) }
}

/// (bytes, size, kind); len is the whole byte slice.
type Case = (&'static [u8], u8, AccessKind);

const CASES_64: &[Case] = &[
    (&[0x89, 0x08], 4, st(1)),                                  // mov [rax], ecx
    (&[0x48, 0x89, 0x08], 8, st(1)),                            // mov [rax], rcx
    (&[0x66, 0x89, 0x08], 2, st(1)),                            // mov [rax], cx
    (&[0x88, 0x08], 1, st(1)),                                  // mov [rax], cl
    (&[0x88, 0x20], 1, sth(0)),                                 // mov [rax], ah
    (&[0x88, 0x38], 1, sth(3)),                                 // mov [rax], bh
    (&[0x40, 0x88, 0x20], 1, st(4)),                            // mov [rax], spl
    (&[0x40, 0x88, 0x38], 1, st(7)),                            // mov [rax], dil
    (&[0x45, 0x88, 0x38], 1, st(15)),                           // mov [r8], r15b
    (&[0x4d, 0x89, 0x4d, 0x00], 8, st(9)),                      // mov [r13+0], r9
    (&[0x8b, 0x03], 4, ld(0, 4)),                               // mov eax, [rbx]
    (&[0x4d, 0x8b, 0x14, 0x24], 8, ld(10, 8)),                  // mov r10, [r12]
    (&[0x44, 0x8b, 0x5c, 0x24, 0x08], 4, ld(11, 4)),            // mov r11d, [rsp+8]
    (&[0x8a, 0x2a], 1, ldh(1)),                                 // mov ch, [rdx]
    (&[0x40, 0x8a, 0x32], 1, ld(6, 1)),                         // mov sil, [rdx]
    (&[0x66, 0x8b, 0x86, 0x78, 0x56, 0x34, 0x12], 2, ld(0, 2)), // mov ax, [rsi+disp32]
    (&[0x8b, 0x15, 0x00, 0x10, 0x00, 0x00], 4, ld(2, 4)),       // mov edx, [rip+0x1000]
    (&[0x8b, 0x14, 0x98], 4, ld(2, 4)),                         // mov edx, [rax+rbx*4]
    (&[0x8b, 0x54, 0x98, 0x10], 4, ld(2, 4)),                   // + disp8
    (&[0x8b, 0x94, 0x98, 0x00, 0x10, 0x00, 0x00], 4, ld(2, 4)), // + disp32
    (&[0x8b, 0x14, 0xdd, 0x00, 0x20, 0x00, 0x00], 4, ld(2, 4)), // [rbx*8+disp32], no base
    (&[0x8b, 0x55, 0x00], 4, ld(2, 4)),                         // mov edx, [rbp+0]
    (&[0x43, 0x8b, 0x54, 0x75, 0x00], 4, ld(2, 4)),             // mov edx, [r13+r14*2+0]
    (&[0x67, 0x8b, 0x10], 4, ld(2, 4)),                         // mov edx, [eax]
    (&[0x67, 0x8b, 0x54, 0x48, 0x44], 4, ld(2, 4)),             // mov edx, [eax+ecx*2+0x44]
    (&[0xc6, 0x00, 0x5a], 1, imm(0x5a)),                        // mov byte [rax], 0x5a
    (&[0x66, 0xc7, 0x00, 0x34, 0x12], 2, imm(0x1234)),
    (&[0xc7, 0x00, 0xef, 0xcd, 0xab, 0x89], 4, imm(0x89ab_cdef)),
    (&[0x48, 0xc7, 0x00, 0xfe, 0xff, 0xff, 0xff], 8, imm(0xffff_ffff_ffff_fffe)), // sign-extended
    (&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0x7f], 8, imm(0x7fff_ffff)),
    (&[0x48, 0xc7, 0x05, 0x10, 0x00, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12], 8, imm(0x1234_5678)), // rip-rel
    (&[0x41, 0xc7, 0x84, 0xc1, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00], 4, imm(1)),
    (&[0xa0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], 1, ld(0, 1)), // movabs al
    (&[0xa1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], 4, ld(0, 4)), // movabs eax
    (&[0x48, 0xa1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], 8, ld(0, 8)), // movabs rax
    (&[0xa2, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], 1, st(0)),    // movabs [], al
    (&[0x48, 0xa3, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], 8, st(0)), // movabs [], rax
    (&[0x67, 0xa1, 0x44, 0x33, 0x22, 0x11], 4, ld(0, 4)),                   // addr32 mov eax, [moffs32]
    (&[0x0f, 0xb6, 0x07], 1, zx(0, 4)),                                     // movzx eax, byte [rdi]
    (&[0x44, 0x0f, 0xb7, 0x4f, 0x04], 2, zx(9, 4)),                         // movzx r9d, word [rdi+4]
    (&[0x48, 0x0f, 0xb6, 0x07], 1, zx(0, 8)),                               // movzx rax, byte [rdi]
    (&[0x66, 0x0f, 0xb6, 0x07], 1, zx(0, 2)),                               // movzx ax, byte [rdi]
    (&[0x4f, 0x0f, 0xb7, 0x7c, 0x08, 0x7f], 2, zx(15, 8)),                  // movzx r15, word [r8+r9+0x7f]
    // Prefix handling.
    (&[0x65, 0x8b, 0x03], 4, ld(0, 4)),       // gs: mov eax, [rbx]
    (&[0x48, 0x66, 0x8b, 0x03], 2, ld(0, 2)), // REX before 66 is ignored: 16-bit
    (&[0x66, 0x48, 0x8b, 0x03], 8, ld(0, 8)), // REX.W beats 66
    (&[0x44, 0x40, 0x8b, 0x03], 4, ld(0, 4)), // only the last REX counts
    (&[0x40, 0x44, 0x8b, 0x03], 4, ld(8, 4)),
    (&[0x41, 0x8a, 0x20], 1, ld(4, 1)), // REX.B alone still selects SPL, not AH
    (&[0xf3, 0x89, 0x08], 4, st(1)),    // xrelease mov [rax], ecx
    (&[0x66, 0x66, 0x66, 0x2e, 0x89, 0x08], 2, st(1)), // redundant prefixes
];

const CASES_32: &[Case] = &[
    (&[0x89, 0x08], 4, st(1)),
    (&[0x66, 0x89, 0x08], 2, st(1)),
    (&[0x88, 0x30], 1, sth(2)), // mov [eax], dh
    (&[0x8b, 0x43, 0x10], 4, ld(0, 4)),
    (&[0x8b, 0x3c, 0x24], 4, ld(7, 4)),                   // mov edi, [esp]
    (&[0x8b, 0x7d, 0x7f], 4, ld(7, 4)),                   // mov edi, [ebp+0x7f]
    (&[0x8b, 0x3d, 0x78, 0x56, 0x34, 0x12], 4, ld(7, 4)), // mov edi, [disp32]
    (&[0x8b, 0xbc, 0xfe, 0x78, 0x56, 0x34, 0x12], 4, ld(7, 4)),
    (&[0x8a, 0x19], 1, ld(3, 1)), // mov bl, [ecx]
    (&[0xc7, 0x00, 0xef, 0xbe, 0xad, 0xde], 4, imm(0xdead_beef)),
    (&[0x66, 0xc7, 0x40, 0x04, 0xef, 0xbe], 2, imm(0xbeef)),
    (&[0xc6, 0x05, 0x00, 0x10, 0x00, 0x00, 0x07], 1, imm(7)),
    (&[0xa1, 0x78, 0x56, 0x34, 0x12], 4, ld(0, 4)),
    (&[0x66, 0xa1, 0x78, 0x56, 0x34, 0x12], 2, ld(0, 2)),
    (&[0xa2, 0x78, 0x56, 0x34, 0x12], 1, st(0)),
    (&[0x67, 0xa1, 0x34, 0x12], 4, ld(0, 4)), // addr16 moffs16
    (&[0x67, 0x8b, 0x00], 4, ld(0, 4)),       // mov eax, [bx+si]
    (&[0x67, 0x8b, 0x46, 0x12], 4, ld(0, 4)), // mov eax, [bp+0x12]
    (&[0x0f, 0xb7, 0x03], 2, zx(0, 4)),
    (&[0x66, 0x0f, 0xb6, 0x8b, 0x00, 0x01, 0x00, 0x00], 1, zx(1, 2)),
    (&[0x64, 0x8b, 0x03], 4, ld(0, 4)), // fs:
];

const CASES_16: &[Case] = &[
    (&[0x89, 0x07], 2, st(0)),                // mov [bx], ax
    (&[0x66, 0x89, 0x07], 4, st(0)),          // mov [bx], eax
    (&[0x88, 0x24], 1, sth(0)),               // mov [si], ah
    (&[0x8b, 0x00], 2, ld(0, 2)),             // mov ax, [bx+si]
    (&[0x8b, 0x43, 0x12], 2, ld(0, 2)),       // mov ax, [bp+di+0x12]
    (&[0x8b, 0x87, 0x34, 0x12], 2, ld(0, 2)), // mov ax, [bx+0x1234]
    (&[0x8b, 0x06, 0x34, 0x12], 2, ld(0, 2)), // mov ax, [0x1234] (mod 00 rm 110)
    (&[0x8b, 0x46, 0x00], 2, ld(0, 2)),       // mov ax, [bp+0]
    (&[0xc7, 0x05, 0x34, 0x12], 2, imm(0x1234)),
    (&[0x66, 0xc7, 0x05, 0x78, 0x56, 0x34, 0x12], 4, imm(0x1234_5678)),
    (&[0xc6, 0x47, 0x02, 0x99], 1, imm(0x99)),
    (&[0xa1, 0x34, 0x12], 2, ld(0, 2)),
    (&[0xa0, 0x34, 0x12], 1, ld(0, 1)),
    (&[0xa3, 0x34, 0x12], 2, st(0)),
    (&[0x67, 0x8b, 0x44, 0x88, 0x10], 2, ld(0, 2)), // addr32 [eax+ecx*4+0x10]
    (&[0x67, 0x66, 0xa1, 0x78, 0x56, 0x34, 0x12], 4, ld(0, 4)),
    (&[0x0f, 0xb6, 0x07], 1, zx(0, 2)),       // movzx ax, byte [bx]
    (&[0x66, 0x0f, 0xb7, 0x07], 2, zx(0, 4)), // movzx eax, word [bx]
    (&[0x26, 0x8b, 0x07], 2, ld(0, 2)),       // es:
];

fn check(mode: &CpuMode, cases: &[Case]) {
    for (i, &(bytes, size, kind)) in cases.iter().enumerate() {
        let want = MmioAccess { len: bytes.len() as u8, size, kind };
        assert_eq!(decode_mmio(bytes, mode), Ok(want), "case {i}: {bytes:02x?}");
        // Trailing bytes (the next instruction) must not change the result.
        let mut longer = [0x90u8; 15];
        longer[..bytes.len()].copy_from_slice(bytes);
        assert_eq!(decode_mmio(&longer, mode), Ok(want), "case {i} padded");
        // Every strict prefix of the encoding is truncated.
        for cut in 0..bytes.len() {
            assert_eq!(decode_mmio(&bytes[..cut], mode), Err(DecodeError::Truncated), "case {i} cut {cut}");
        }
    }
}

#[test]
fn decodes_64_bit() {
    check(&m64(), CASES_64);
}

#[test]
fn decodes_32_bit() {
    check(&m32(), CASES_32);
    // Compatibility mode decodes exactly like 32-bit protected mode.
    check(&compat(), CASES_32);
}

#[test]
fn decodes_16_bit() {
    check(&m16(), CASES_16);
}

#[test]
fn rex_is_inc_dec_outside_64_bit() {
    assert_eq!(decode_mmio(&[0x48, 0x89, 0x08], &m32()), Err(DecodeError::Unsupported(0x48)));
    assert_eq!(decode_mmio(&[0x40, 0x88, 0x20], &m16()), Err(DecodeError::Unsupported(0x40)));
}

#[test]
fn rejects_register_forms() {
    for mode in [m64(), m32(), m16()] {
        for bytes in [&[0x89, 0xc8][..], &[0x8b, 0xc1], &[0x8a, 0xe0], &[0xc7, 0xc0, 1, 0, 0, 0], &[0x0f, 0xb6, 0xc0]] {
            assert_eq!(decode_mmio(bytes, &mode), Err(DecodeError::NotMemory), "{bytes:02x?}");
        }
    }
}

#[test]
fn rejects_other_instructions() {
    let m = m64();
    assert_eq!(decode_mmio(&[0x01, 0x08], &m), Err(DecodeError::Unsupported(0x01))); // add
    assert_eq!(decode_mmio(&[0xa5], &m), Err(DecodeError::Unsupported(0xa5))); // movs
    assert_eq!(decode_mmio(&[0xc7, 0x08, 0, 0, 0, 0], &m), Err(DecodeError::Unsupported(0xc7))); // C7 /1
    assert_eq!(decode_mmio(&[0xc6, 0xf8, 0], &m), Err(DecodeError::NotMemory)); // xabort: no memory operand
    assert_eq!(decode_mmio(&[0xc6, 0x38, 0], &m), Err(DecodeError::Unsupported(0xc6))); // C6 /7 with memory
    assert_eq!(decode_mmio(&[0x0f, 0xbe, 0x07], &m), Err(DecodeError::Unsupported0F(0xbe))); // movsx
    assert_eq!(decode_mmio(&[0xf0, 0x89, 0x08], &m), Err(DecodeError::Prefix(0xf0))); // lock
    assert_eq!(decode_mmio(&[0xf3, 0x0f, 0xb6, 0x07], &m), Err(DecodeError::Prefix(0xf3)));
    assert_eq!(decode_mmio(&[], &m), Err(DecodeError::Truncated));
}

#[test]
fn enforces_15_byte_limit() {
    // 14 prefixes + 2-byte instruction = 16 bytes.
    let mut b = [0x66u8; 16];
    b[14] = 0x89;
    b[15] = 0x08;
    assert_eq!(decode_mmio(&b, &m64()), Err(DecodeError::TooLong));
    // 13 prefixes + 2-byte instruction = 15 bytes is fine.
    let ok = decode_mmio(&b[1..], &m64()).unwrap();
    assert_eq!((ok.len, ok.size), (15, 2));
    // Displacement running past byte 15.
    let mut c = [0x66u8; 15];
    c[10] = 0x8b;
    c[11] = 0x80; // mod 10: disp32 needs bytes 12..16
    assert_eq!(decode_mmio(&c, &m64()), Err(DecodeError::TooLong));
}

#[test]
fn errors_display() {
    use alloc_free_display::check_display;
    check_display(&DecodeError::Unsupported(0x01), "unsupported opcode 0x01");
    check_display(&DecodeError::Unsupported0F(0xbe), "unsupported opcode 0x0f 0xbe");
}

mod alloc_free_display {
    extern crate std;
    use std::string::ToString;

    pub(super) fn check_display(e: &dyn core::fmt::Display, want: &str) {
        assert_eq!(e.to_string(), want);
    }
}

mod props {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    fn any_mode() -> impl Strategy<Value = CpuMode> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(lma, l, d)| CpuMode {
            efer: if lma { EFER_LMA } else { 0 },
            cs_long: l,
            cs_db: d,
            ..CpuMode::default()
        })
    }

    /// Bytes biased towards the interesting opcodes and prefixes.
    fn insn_bytes() -> impl Strategy<Value = std::vec::Vec<u8>> {
        let byte = prop_oneof![
            any::<u8>(),
            prop::sample::select(
                &[
                    0x66u8, 0x67, 0x2e, 0x65, 0xf2, 0xf3, 0xf0, 0x40, 0x41, 0x44, 0x48, 0x4f, 0x88, 0x89, 0x8a, 0x8b,
                    0xc6, 0xc7, 0xa0, 0xa1, 0xa2, 0xa3, 0x0f, 0xb6, 0xb7, 0x04, 0x05, 0x44, 0x84, 0x06,
                ][..]
            ),
        ];
        prop::collection::vec(byte, 0..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn never_panics_and_len_is_bounded(bytes in insn_bytes(), mode in any_mode()) {
            if let Ok(a) = decode_mmio(&bytes, &mode) {
                prop_assert!(usize::from(a.len) <= 15);
                prop_assert!(usize::from(a.len) <= bytes.len());
                prop_assert!(matches!(a.size, 1 | 2 | 4 | 8));
                // Decoding exactly the reported bytes gives the same answer.
                prop_assert_eq!(decode_mmio(&bytes[..usize::from(a.len)], &mode), Ok(a));
                match a.kind {
                    AccessKind::Load { reg, high_byte, dst_size, .. } => {
                        prop_assert!(reg < 16 && dst_size >= a.size);
                        prop_assert!(!high_byte || (reg < 4 && dst_size == 1));
                    }
                    AccessKind::Store { src: StoreSource::Reg { reg, high_byte } } => {
                        prop_assert!(reg < 16 && (!high_byte || reg < 4));
                    }
                    AccessKind::Store { src: StoreSource::Imm(_) } => {}
                    AccessKind::Compare { with: StoreSource::Reg { reg, high_byte }, .. } => {
                        prop_assert!(reg < 16 && (!high_byte || reg < 4));
                    }
                    AccessKind::Compare { with: StoreSource::Imm(_), .. } => {}
                }
            }
        }
    }
}
