//! The slice of guest CPU state that decides how addresses are translated and
//! how instructions are decoded.

/// CR0.PG: paging enabled.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit (non-PAE) paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: 64-bit page-table entries (PAE, or 4/5-level with EFER.LMA).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging in long mode.
pub const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: bit 63 of PAE/long-mode entries is XD instead of reserved.
pub const EFER_NXE: u64 = 1 << 11;

/// Guest CPU state at the time of the exit, as read from the VMCS/VMCB.
///
/// Only the listed fields matter; the hypervisor fills them from the guest
/// state area, so this crate is the same for VT-x and AMD-V.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuMode {
    /// Guest CR0 (PE, PG are used).
    pub cr0: u64,
    /// Guest CR3 (page-table root; PCID bits are masked off).
    pub cr3: u64,
    /// Guest CR4 (PSE, PAE, LA57 are used).
    pub cr4: u64,
    /// Guest IA32_EFER (LMA, NXE are used).
    pub efer: u64,
    /// CS.L: 64-bit code segment (only meaningful with EFER.LMA).
    pub cs_long: bool,
    /// CS.D: default operand/address size 32 (vs 16) outside 64-bit code.
    pub cs_db: bool,
    /// CS base, added to RIP to form the linear fetch address outside 64-bit code.
    pub cs_base: u64,
}

/// The default operand and address size of the code being executed, which
/// decides how prefixes and ModRM bytes are interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeBits {
    /// Real mode, virtual-8086 mode or a 16-bit protected-mode segment.
    Bits16,
    /// A 32-bit protected-mode or compatibility-mode segment.
    Bits32,
    /// 64-bit mode (EFER.LMA and CS.L).
    Bits64,
}

impl CpuMode {
    /// Whether CR0.PG is set, i.e. linear addresses go through page tables.
    pub fn paging(&self) -> bool {
        self.cr0 & CR0_PG != 0
    }

    /// Whether IA-32e (long) mode is active, which selects 4/5-level paging.
    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// The code size implied by EFER.LMA, CS.L and CS.D. CS.L together with
    /// CS.D is reserved (the CPU refuses to load such a CS); it counts as 64-bit.
    pub fn code_bits(&self) -> CodeBits {
        if self.long_mode() && self.cs_long {
            CodeBits::Bits64
        } else if self.cs_db {
            CodeBits::Bits32
        } else {
            CodeBits::Bits16
        }
    }

    /// Reduces a linear address to the width the current mode can form: 64
    /// bits in 64-bit code, 32 bits otherwise (addresses wrap at 4 GiB).
    pub fn wrap_linear(&self, linear: u64) -> u64 {
        match self.code_bits() {
            CodeBits::Bits64 => linear,
            CodeBits::Bits16 | CodeBits::Bits32 => linear & 0xFFFF_FFFF,
        }
    }

    /// The linear address of the instruction at `rip`: CS base is ignored in
    /// 64-bit code and added (with 32-bit wrap-around) otherwise.
    pub fn linear_rip(&self, rip: u64) -> u64 {
        match self.code_bits() {
            CodeBits::Bits64 => rip,
            CodeBits::Bits16 | CodeBits::Bits32 => self.wrap_linear(self.cs_base.wrapping_add(rip)),
        }
    }
}
