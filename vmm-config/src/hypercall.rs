//! Hypercall ABI v1 (see docs/hypercalls.md).
//!
//! A guest issues VMCALL (Intel) or VMMCALL (AMD) with the call number in RAX
//! and arguments in RDI, RSI, RDX. The status comes back in RAX; results in
//! RDI, RSI, RDX. Pointers are guest-physical addresses. In a guest that is
//! not in 64-bit mode only the low 32 bits of each register are used.

/// The ABI version this crate describes; returned by [`Hypercall::AbiVersion`].
pub const ABI_VERSION: u64 = 1;

/// Largest buffer one `console_write` may pass, so a single call is bounded work.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// CPUID leaf 0x4000_0000 signature (EBX, ECX, EDX) a guest sees under BMonitor.
pub const CPUID_SIGNATURE: [u8; 12] = *b"BMonitorBMon";

/// Call numbers, as the guest puts them in RAX.
pub mod nr {
    /// Returns the ABI version in RDI.
    pub const ABI_VERSION: u64 = 0;
    /// Writes the VM name to (RDI=buf, RSI=len); returns RDI=vm id,
    /// RSI=memory bytes, RDX=full name length.
    pub const VM_INFO: u64 = 1;
    /// Appends (RDI=buf, RSI=len) bytes to the VM's console.
    pub const CONSOLE_WRITE: u64 = 2;
    /// Gives up the rest of the time slice.
    pub const YIELD: u64 = 3;
    /// Stops the VM with exit code RDI (low 32 bits).
    pub const EXIT: u64 = 4;
    /// Returns RDI = nanoseconds since the node booted (monotonic), RSI =
    /// TSC ticks per millisecond and RDX = the TSC value RDI corresponds to,
    /// so guests can keep time with RDTSC (no exit) after one call.
    pub const CLOCK: u64 = 5;
    /// Test-only: corrupts this VM's saved CPU state so the next VM entry
    /// fails. Refused with `DENIED` unless the VM config enables debug calls.
    pub const DEBUG_CORRUPT_STATE: u64 = 0xDEB0;
    /// Registers the agent's shared region: RDI = its guest-virtual
    /// address (4 KiB aligned) in the caller's address space, RSI = data
    /// bytes per direction (agent_proto::ring::Layout). Ends the streams of
    /// an earlier attachment.
    pub const AGENT_ATTACH: u64 = 0x10;
    /// Moves records both ways through the registered region; must come
    /// from the address space that attached. Returns RDI = records taken,
    /// RSI = records given, RDX = 1 when more waits for the agent.
    pub const AGENT_KICK: u64 = 0x11;
    /// Unregisters the region (the agent is exiting).
    pub const AGENT_DETACH: u64 = 0x12;
}

/// A caller at CPL 3 is accepted for privileged calls only when it may
/// access this I/O port under the x86 rules (CPL <= IOPL, or the port's bit
/// clear in the TSS I/O bitmap): on Linux that takes `ioperm`/`iopl`,
/// which need CAP_SYS_RAWIO, so an unprivileged process cannot pose as the
/// agent or stop the VM. No device answers at this port.
pub const AGENT_IO_PORT: u16 = 0x0B4D;

/// The guest's COM2 (0x2F8, IRQ 3) is the agent's doorbell: BMonitor puts a
/// byte in its receive buffer when something waits for the agent, so the
/// agent can sleep in poll(2) on /dev/ttyS1 with a stock kernel driver.
pub const AGENT_DOORBELL_PORT: u16 = 0x2F8;

/// Status codes returned in RAX.
pub mod status {
    /// The call succeeded.
    pub const OK: u64 = 0;
    /// RAX named no known call.
    pub const UNKNOWN_CALL: u64 = 1;
    /// An argument was out of range.
    pub const INVALID_ARGUMENT: u64 = 2;
    /// A buffer was not entirely inside the VM's RAM.
    pub const BAD_ADDRESS: u64 = 3;
    /// A buffer was longer than the call allows.
    pub const TOO_LARGE: u64 = 4;
    /// The call exists but this VM may not use it, or the caller lacks
    /// the privilege (see [`super::AGENT_IO_PORT`]).
    pub const DENIED: u64 = 5;
    /// An agent call before `agent_attach` (or after a detach).
    pub const NOT_ATTACHED: u64 = 6;
    /// The agent's region broke the ring rules; the agent was detached.
    pub const RING_FAULT: u64 = 7;
}

/// A decoded, range-checked hypercall. Buffers still need translating
/// through the VM's guest-physical map before use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Report [`ABI_VERSION`].
    AbiVersion,
    /// Report id, memory size and name into `buf`.
    VmInfo { buf: u64, len: u64 },
    /// Append `len` bytes at `buf` to the console.
    ConsoleWrite { buf: u64, len: u64 },
    /// Yield the CPU.
    Yield,
    /// Stop with this exit code.
    Exit { code: u32 },
    /// Report monotonic time.
    Clock,
    /// Test-only state corruption (see [`nr::DEBUG_CORRUPT_STATE`]).
    DebugCorruptState,
    /// Register the agent's region at guest-virtual `va` with `data` bytes per direction.
    AgentAttach { va: u64, data: u64 },
    /// Move agent records.
    AgentKick,
    /// Unregister the agent's region.
    AgentDetach,
}

impl Hypercall {
    /// Whether a CPL 3 caller needs I/O privilege ([`AGENT_IO_PORT`]) for
    /// this call. Only the version and the clock (which RDTSC gives anyway)
    /// are open to every process.
    pub fn privileged(&self) -> bool {
        !matches!(self, Hypercall::AbiVersion | Hypercall::Clock)
    }
}

/// Why a hypercall could not be decoded; maps to a status code for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No call has this number.
    UnknownCall(u64),
    /// A buffer is longer than the call allows.
    TooLarge,
    /// A buffer wraps around the address space.
    InvalidArgument,
}

impl DecodeError {
    /// The status code the guest sees in RAX.
    pub fn status(self) -> u64 {
        match self {
            DecodeError::UnknownCall(_) => status::UNKNOWN_CALL,
            DecodeError::TooLarge => status::TOO_LARGE,
            DecodeError::InvalidArgument => status::INVALID_ARGUMENT,
        }
    }
}

/// Guest registers a hypercall reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallRegs {
    pub rax: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
}

/// Decodes the guest's registers into a call. `long_mode` says whether the
/// guest runs 64-bit code; otherwise the upper register halves are ignored.
pub fn decode(regs: HypercallRegs, long_mode: bool) -> Result<Hypercall, DecodeError> {
    let width = |v: u64| if long_mode { v } else { v & 0xFFFF_FFFF };
    let (rax, rdi, rsi) = (width(regs.rax), width(regs.rdi), width(regs.rsi));
    let buffer = |buf: u64, len: u64, max: u64| -> Result<(u64, u64), DecodeError> {
        if len > max {
            return Err(DecodeError::TooLarge);
        }
        buf.checked_add(len).ok_or(DecodeError::InvalidArgument)?;
        Ok((buf, len))
    };
    match rax {
        nr::ABI_VERSION => Ok(Hypercall::AbiVersion),
        nr::VM_INFO => {
            let (buf, len) = buffer(rdi, rsi, CONSOLE_WRITE_MAX)?;
            Ok(Hypercall::VmInfo { buf, len })
        }
        nr::CONSOLE_WRITE => {
            let (buf, len) = buffer(rdi, rsi, CONSOLE_WRITE_MAX)?;
            Ok(Hypercall::ConsoleWrite { buf, len })
        }
        nr::YIELD => Ok(Hypercall::Yield),
        nr::EXIT => Ok(Hypercall::Exit { code: (rdi & 0xFFFF_FFFF) as u32 }),
        nr::CLOCK => Ok(Hypercall::Clock),
        nr::DEBUG_CORRUPT_STATE => Ok(Hypercall::DebugCorruptState),
        nr::AGENT_ATTACH => {
            if rdi & 0xFFF != 0 {
                return Err(DecodeError::InvalidArgument);
            }
            Ok(Hypercall::AgentAttach { va: rdi, data: rsi })
        }
        nr::AGENT_KICK => Ok(Hypercall::AgentKick),
        nr::AGENT_DETACH => Ok(Hypercall::AgentDetach),
        other => Err(DecodeError::UnknownCall(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rax: u64, rdi: u64, rsi: u64) -> HypercallRegs {
        HypercallRegs { rax, rdi, rsi, rdx: 0 }
    }

    #[test]
    fn decodes_known_calls() {
        assert_eq!(decode(regs(nr::ABI_VERSION, 0, 0), true), Ok(Hypercall::AbiVersion));
        assert_eq!(
            decode(regs(nr::CONSOLE_WRITE, 0x1000, 12), true),
            Ok(Hypercall::ConsoleWrite { buf: 0x1000, len: 12 })
        );
        assert_eq!(decode(regs(nr::EXIT, 7, 0), false), Ok(Hypercall::Exit { code: 7 }));
    }

    #[test]
    fn rejects_bad_calls() {
        assert_eq!(decode(regs(99, 0, 0), true), Err(DecodeError::UnknownCall(99)));
        assert_eq!(decode(regs(nr::CONSOLE_WRITE, 0, CONSOLE_WRITE_MAX + 1), true), Err(DecodeError::TooLarge));
        assert_eq!(decode(regs(nr::CONSOLE_WRITE, u64::MAX - 2, 16), true), Err(DecodeError::InvalidArgument));
    }

    #[test]
    fn legacy_mode_ignores_upper_halves() {
        let r = regs((1 << 40) | nr::YIELD, 0, 0);
        assert_eq!(decode(r, false), Ok(Hypercall::Yield));
        assert_eq!(decode(r, true), Err(DecodeError::UnknownCall((1 << 40) | nr::YIELD)));
    }

    proptest::proptest! {
        #[test]
        fn decoded_buffers_never_wrap_or_exceed_limit(rax in 0u64..8, rdi: u64, rsi: u64, lm: bool) {
            if let Ok(Hypercall::ConsoleWrite { buf, len } | Hypercall::VmInfo { buf, len }) =
                decode(regs(rax, rdi, rsi), lm)
            {
                proptest::prop_assert!(len <= CONSOLE_WRITE_MAX);
                proptest::prop_assert!(buf.checked_add(len).is_some());
            }
        }
    }
}
