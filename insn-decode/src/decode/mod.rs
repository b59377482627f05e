//! Decodes the x86 MOV forms compilers and drivers use for MMIO, so the
//! hypervisor learns the size, direction, register or immediate, and length
//! of a faulting access.
//!
//! Supported opcodes: `88`/`89` (store register), `8A`/`8B` (load register),
//! `C6 /0`/`C7 /0` (store immediate), `A0`-`A3` (accumulator to/from a
//! direct offset), `0F B6`/`0F B7` (MOVZX). Prefixes: operand size (`66`),
//! address size (`67`), segment overrides (ignored), REX in 64-bit code, and
//! `F2`/`F3` on the one-byte opcodes (where they are at most an
//! XACQUIRE/XRELEASE hint). `LOCK` is refused (it makes MOV undefined).
//!
//! The effective address is never computed: the exit already reported the
//! guest-physical address. ModRM, SIB, displacement and immediate bytes are
//! parsed only to find the exact instruction length and the immediate value.

mod cursor;
mod error;
mod modrm;
mod prefix;

use cursor::Cursor;
pub use error::DecodeError;
use prefix::Prefixes;

use crate::mode::CpuMode;

/// The architectural maximum instruction length; longer encodings fault.
pub const MAX_INSN_LEN: usize = 15;

/// One decoded MMIO access: what the instruction does to memory and how far
/// to advance RIP after emulating it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Instruction length in bytes (1..=15), to add to RIP.
    pub len: u8,
    /// Bytes read or written in the MMIO window: 1, 2, 4 or 8.
    pub size: u8,
    /// Direction and register/immediate operand.
    pub kind: AccessKind,
}

/// Whether the access reads the device into a register or writes to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// Memory is read into a general-purpose register.
    Load {
        /// Destination register, x86 numbering (0 = RAX .. 15 = R15). For a
        /// high-byte register this is its containing register (AH -> 0).
        reg: u8,
        /// The destination is AH/CH/DH/BH (bits 15:8 of `reg`).
        high_byte: bool,
        /// MOVZX: the `size`-byte value is zero-extended to `dst_size`.
        zero_extend: bool,
        /// Width of the register write: 1, 2, 4 or 8 bytes.
        dst_size: u8,
    },
    /// A register or immediate is written to memory.
    Store {
        /// Where the stored value comes from.
        src: StoreSource,
    },
    /// Memory is read and compared (CMP) or ANDed (TEST) with a register or
    /// immediate; only RFLAGS changes. Compilers fold volatile MMIO reads
    /// into these (e.g. `cmp dword [rax+0x44], 0`).
    Compare {
        /// CMP or TEST.
        op: CompareOp,
        /// The other operand.
        with: StoreSource,
        /// For CMP: memory is the left operand (`mem - other`), else the
        /// register is (`reg - mem`). TEST ignores it.
        mem_first: bool,
    },
}

/// The flag-setting operation of a [`AccessKind::Compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// Subtract, discard the result (CMP).
    Cmp,
    /// AND, discard the result (TEST).
    Test,
}

/// The source operand of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreSource {
    /// A general-purpose register (low `size` bytes, or AH..BH).
    Reg {
        /// Source register, x86 numbering; for AH..BH the containing register.
        reg: u8,
        /// The source is AH/CH/DH/BH (bits 15:8 of `reg`).
        high_byte: bool,
    },
    /// An immediate, already sign-extended to 64 bits for `REX.W C7` and
    /// masked to the access size otherwise.
    Imm(u64),
}

/// Decodes the instruction at the start of `bytes` (as fetched at the
/// guest's RIP) for the code size given by `mode`.
///
/// `bytes` may be shorter or longer than the instruction; only the first
/// [`MAX_INSN_LEN`] bytes are ever looked at. On success `len <= bytes.len()`.
pub fn decode_mmio(bytes: &[u8], mode: &CpuMode) -> Result<MmioAccess, DecodeError> {
    let bits = mode.code_bits();
    let mut cur = Cursor::new(bytes);
    let p = Prefixes::parse(&mut cur, bits)?;
    let op_size = p.operand_size(bits);
    let addr_size = p.address_size(bits);
    let opcode = cur.byte()?;
    let (size, kind) = match opcode {
        0x88..=0x8B => {
            let m = modrm::parse(&mut cur, addr_size)?;
            let size = if opcode & 1 == 0 { 1 } else { op_size };
            let (reg, high_byte) = p.reg(m.reg, size);
            let kind = if opcode <= 0x89 {
                AccessKind::Store { src: StoreSource::Reg { reg, high_byte } }
            } else {
                AccessKind::Load { reg, high_byte, zero_extend: false, dst_size: size }
            };
            (size, kind)
        }
        0xC6 | 0xC7 => {
            let m = modrm::parse(&mut cur, addr_size)?;
            if m.reg != 0 {
                // C6 /7 and C7 /7 are XABORT/XBEGIN (register forms only); the rest are undefined.
                return Err(DecodeError::Unsupported(opcode));
            }
            let size = if opcode == 0xC6 { 1 } else { op_size };
            let imm_len = size.min(4);
            let raw = cur.le(usize::from(imm_len))?;
            let imm = if size == 8 { i64::from(raw as u32 as i32) as u64 } else { raw };
            (size, AccessKind::Store { src: StoreSource::Imm(imm) })
        }
        0xA0..=0xA3 => {
            // The memory operand is a direct offset of the address size.
            cur.le(usize::from(addr_size))?;
            let size = if opcode & 1 == 0 { 1 } else { op_size };
            let kind = if opcode <= 0xA1 {
                AccessKind::Load { reg: 0, high_byte: false, zero_extend: false, dst_size: size }
            } else {
                AccessKind::Store { src: StoreSource::Reg { reg: 0, high_byte: false } }
            };
            (size, kind)
        }
        0x38..=0x3B | 0x84 | 0x85 => {
            let m = modrm::parse(&mut cur, addr_size)?;
            let size = if opcode & 1 == 0 { 1 } else { op_size };
            let (reg, high_byte) = p.reg(m.reg, size);
            let op = if opcode >= 0x84 { CompareOp::Test } else { CompareOp::Cmp };
            let mem_first = opcode <= 0x39 || opcode >= 0x84;
            (size, AccessKind::Compare { op, with: StoreSource::Reg { reg, high_byte }, mem_first })
        }
        0x80 | 0x81 | 0x83 | 0xF6 | 0xF7 => {
            let m = modrm::parse(&mut cur, addr_size)?;
            let op = match (opcode, m.reg) {
                (0x80 | 0x81 | 0x83, 7) => CompareOp::Cmp,
                (0xF6 | 0xF7, 0) => CompareOp::Test,
                // ADD/OR/.../NOT/NEG/MUL/DIV on MMIO: not emulated.
                _ => return Err(DecodeError::Unsupported(opcode)),
            };
            let size = if matches!(opcode, 0x80 | 0xF6) { 1 } else { op_size };
            let imm = if opcode == 0x83 {
                i64::from(cur.le(1)? as u8 as i8) as u64
            } else {
                let imm_len = size.min(4);
                let raw = cur.le(usize::from(imm_len))?;
                match imm_len {
                    1 => i64::from(raw as u8 as i8) as u64,
                    2 => i64::from(raw as u16 as i16) as u64,
                    _ => i64::from(raw as u32 as i32) as u64,
                }
            };
            let mask = if size == 8 { u64::MAX } else { (1u64 << (u32::from(size) * 8)) - 1 };
            (size, AccessKind::Compare { op, with: StoreSource::Imm(imm & mask), mem_first: true })
        }
        0x0F => {
            let second = cur.byte()?;
            if !matches!(second, 0xB6 | 0xB7) {
                return Err(DecodeError::Unsupported0F(second));
            }
            if let Some(rep) = p.rep {
                // F2/F3 select different instructions in the 0F map.
                return Err(DecodeError::Prefix(rep));
            }
            let m = modrm::parse(&mut cur, addr_size)?;
            let size = if second == 0xB6 { 1 } else { 2 };
            // The destination is at least 16 bits wide, so never AH..BH.
            let (reg, _) = p.reg(m.reg, op_size);
            (size, AccessKind::Load { reg, high_byte: false, zero_extend: true, dst_size: op_size })
        }
        _ => return Err(DecodeError::Unsupported(opcode)),
    };
    Ok(MmioAccess { len: cur.len(), size, kind })
}

#[cfg(test)]
mod tests;
