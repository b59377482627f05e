//! Why an instruction could not be decoded as an MMIO access.

use core::fmt;

/// Every way decoding can fail; the hypervisor treats all of them as an
/// unemulatable access (typically injecting #GP/#UD or stopping the VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ended before the instruction did (e.g. the fetch stopped
    /// at an unmapped page).
    Truncated,
    /// The encoding exceeds the 15-byte architectural limit.
    TooLong,
    /// A one-byte opcode (or `C6`/`C7` with a non-zero ModRM.reg) that is
    /// not a supported MOV.
    Unsupported(u8),
    /// A two-byte opcode `0F xx` other than MOVZX; holds `xx`.
    Unsupported0F(u8),
    /// A prefix that changes the meaning of this instruction (LOCK, or
    /// F2/F3 on a two-byte opcode).
    Prefix(u8),
    /// The operand is a register (ModRM.mod == 3), so no memory was accessed.
    NotMemory,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("instruction bytes end before the instruction does"),
            Self::TooLong => f.write_str("instruction longer than 15 bytes"),
            Self::Unsupported(op) => write!(f, "unsupported opcode {op:#04x}"),
            Self::Unsupported0F(op) => write!(f, "unsupported opcode 0x0f {op:#04x}"),
            Self::Prefix(p) => write!(f, "prefix {p:#04x} not allowed on this instruction"),
            Self::NotMemory => f.write_str("register operand, not a memory access"),
        }
    }
}
