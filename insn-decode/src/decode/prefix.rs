//! Legacy and REX prefixes and the operand/address sizes they select.

use super::cursor::Cursor;
use super::DecodeError;
use crate::mode::CodeBits;

/// The prefixes that matter for MOV decoding.
#[derive(Default)]
pub(super) struct Prefixes {
    /// 0x66 seen: toggles between 16- and 32-bit operands.
    op_size: bool,
    /// 0x67 seen: toggles the address size.
    addr_size: bool,
    /// The last F2/F3 seen, if any.
    pub(super) rep: Option<u8>,
    /// The REX byte immediately before the opcode (64-bit code only).
    rex: Option<u8>,
}

impl Prefixes {
    /// Consumes all prefixes. A REX byte counts only if it directly precedes
    /// the opcode; one followed by a legacy prefix is ignored, as on hardware.
    pub(super) fn parse(cur: &mut Cursor<'_>, bits: CodeBits) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        loop {
            let b = cur.peek()?;
            match b {
                0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 => {}
                0x66 => p.op_size = true,
                0x67 => p.addr_size = true,
                0xF2 | 0xF3 => p.rep = Some(b),
                0xF0 => return Err(DecodeError::Prefix(b)),
                0x40..=0x4F if bits == CodeBits::Bits64 => {
                    p.rex = Some(b);
                    cur.byte()?;
                    continue;
                }
                _ => return Ok(p),
            }
            p.rex = None;
            cur.byte()?;
        }
    }

    /// REX bit `mask` (W = 8, R = 4, X = 2, B = 1) is set.
    fn rex_bit(&self, mask: u8) -> bool {
        self.rex.is_some_and(|r| r & mask != 0)
    }

    /// Operand size in bytes: REX.W forces 8; otherwise 0x66 flips the
    /// mode's default (32 bits in 32/64-bit code, 16 in 16-bit code).
    pub(super) fn operand_size(&self, bits: CodeBits) -> u8 {
        if bits == CodeBits::Bits64 && self.rex_bit(8) {
            return 8;
        }
        let wide = match bits {
            CodeBits::Bits16 => self.op_size,
            CodeBits::Bits32 | CodeBits::Bits64 => !self.op_size,
        };
        if wide {
            4
        } else {
            2
        }
    }

    /// Address size in bytes: the mode's default, flipped by 0x67
    /// (64 -> 32, 32 -> 16, 16 -> 32).
    pub(super) fn address_size(&self, bits: CodeBits) -> u8 {
        match (bits, self.addr_size) {
            (CodeBits::Bits64, false) => 8,
            (CodeBits::Bits64, true) | (CodeBits::Bits32, false) | (CodeBits::Bits16, true) => 4,
            (CodeBits::Bits32, true) | (CodeBits::Bits16, false) => 2,
        }
    }

    /// Maps ModRM.reg to a register for an operand of `size` bytes: with
    /// REX.R it selects r8..r15; for byte operands without any REX prefix,
    /// encodings 4..7 are AH, CH, DH, BH (returned as 0..3 plus `true`),
    /// while with a REX prefix they are SPL, BPL, SIL, DIL.
    pub(super) fn reg(&self, field: u8, size: u8) -> (u8, bool) {
        let field = field & 7;
        if size == 1 && self.rex.is_none() && field >= 4 {
            (field - 4, true)
        } else {
            (field | if self.rex_bit(4) { 8 } else { 0 }, false)
        }
    }
}
