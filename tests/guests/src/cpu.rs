//! CPU helpers: CPUID and the time-stamp counter.

/// Result of CPUID (EAX, EBX, ECX, EDX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpuid {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Executes CPUID with `leaf` in EAX and `subleaf` in ECX.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and has no memory effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    Cpuid { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

/// The 12-byte CPU vendor string (leaf 0: EBX, EDX, ECX).
pub fn vendor() -> [u8; 12] {
    let r = cpuid(0, 0);
    regs_to_bytes(r.ebx, r.edx, r.ecx)
}

/// The 12-byte hypervisor signature of leaf 0x4000_0000 (EBX, ECX, EDX).
pub fn hypervisor_signature() -> [u8; 12] {
    let r = cpuid(0x4000_0000, 0);
    regs_to_bytes(r.ebx, r.ecx, r.edx)
}

/// Whether CPUID leaf 1 ECX bit 31 ("hypervisor present") is set.
pub fn hypervisor_bit() -> bool {
    cpuid(1, 0).ecx & (1 << 31) != 0
}

fn regs_to_bytes(a: u32, b: u32, c: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (chunk, reg) in out.chunks_exact_mut(4).zip([a, b, c]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    out
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC reads a counter into EDX:EAX; no memory effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}
