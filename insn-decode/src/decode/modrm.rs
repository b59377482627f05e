//! ModRM, SIB and displacement parsing, only as far as needed to find the
//! instruction length and the ModRM.reg field.

use super::cursor::Cursor;
use super::DecodeError;

/// The parts of a memory ModRM operand the decoder uses.
pub(super) struct ModRm {
    /// ModRM bits 5:3 (register operand or opcode extension), before REX.R.
    pub(super) reg: u8,
}

/// Consumes a ModRM byte and any SIB and displacement bytes for an
/// `addr_size`-byte address size (2, 4 or 8). Register operands (mod == 3)
/// are rejected because they do not touch memory.
pub(super) fn parse(cur: &mut Cursor<'_>, addr_size: u8) -> Result<ModRm, DecodeError> {
    let b = cur.byte()?;
    let md = b >> 6;
    let reg = (b >> 3) & 7;
    let rm = b & 7;
    if md == 3 {
        return Err(DecodeError::NotMemory);
    }
    let disp = if addr_size == 2 {
        // 16-bit addressing: no SIB; mod 00 rm 110 is a bare disp16.
        match (md, rm) {
            (0, 6) => 2,
            (0, _) => 0,
            (1, _) => 1,
            _ => 2,
        }
    } else {
        // 32/64-bit addressing: rm 100 means a SIB byte follows; base 101
        // with mod 00 means disp32 with no base (RIP-relative without SIB in
        // 64-bit mode). REX.B does not change these special cases.
        let base = if rm == 4 { cur.byte()? & 7 } else { rm };
        match md {
            0 if base == 5 => 4,
            0 => 0,
            1 => 1,
            _ => 4,
        }
    };
    cur.le(disp)?;
    Ok(ModRm { reg })
}
