//! A bounded reader over instruction bytes.

use super::{DecodeError, MAX_INSN_LEN};

/// Reads instruction bytes in order, refusing to go past the input or past
/// the 15-byte architectural limit.
pub(super) struct Cursor<'a> {
    /// The fetched bytes (possibly fewer or more than the instruction).
    bytes: &'a [u8],
    /// Bytes consumed so far; never exceeds [`MAX_INSN_LEN`].
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Starts reading at the first byte of `bytes`.
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The next byte without consuming it.
    pub(super) fn peek(&self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_INSN_LEN {
            return Err(DecodeError::TooLong);
        }
        self.bytes.get(self.pos).copied().ok_or(DecodeError::Truncated)
    }

    /// Consumes and returns the next byte.
    pub(super) fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// Consumes an `n`-byte little-endian field (n <= 8).
    pub(super) fn le(&mut self, n: usize) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n.min(8) {
            v |= u64::from(self.byte()?) << (8 * i);
        }
        Ok(v)
    }

    /// Bytes consumed so far (at most 15, so it fits a `u8`).
    pub(super) fn len(&self) -> u8 {
        u8::try_from(self.pos).unwrap_or(u8::MAX)
    }
}
