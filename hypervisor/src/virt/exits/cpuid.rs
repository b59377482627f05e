//! CPUID exits: the host's answers filtered through BMonitor's policy —
//! hypervisor bit and signature set, VMX/SVM and features we do not
//! virtualize (XSAVE/AVX, MONITOR, x2APIC, TSC deadline, MTRRs) hidden.

use super::ExitContext;
use crate::virt::Flow;
use core::arch::x86_64::__cpuid_count;
use vmm_config::hypercall::{ABI_VERSION, CPUID_SIGNATURE};

const MAX_BASIC_LEAF: u32 = 0xD;
const HYPERVISOR_BASE: u32 = 0x4000_0000;

fn sig(i: usize) -> u32 {
    let b = |n: usize| CPUID_SIGNATURE.get(n).copied().unwrap_or(0);
    u32::from_le_bytes([b(i), b(i + 1), b(i + 2), b(i + 3)])
}

/// The guest's view of one CPUID leaf.
pub fn policy(leaf: u32, subleaf: u32) -> [u32; 4] {
    let host = __cpuid_count(leaf, subleaf);
    let (mut a, mut b, mut c, mut d) = (host.eax, host.ebx, host.ecx, host.edx);
    match leaf {
        0 => a = a.min(MAX_BASIC_LEAF),
        1 => {
            // ECX: clear MONITOR(3) VMX(5) SMX(6) x2APIC(21) TSC-deadline(24)
            // XSAVE(26) OSXSAVE(27) AVX(28); set hypervisor(31).
            c &= !((1 << 3) | (1 << 5) | (1 << 6) | (1 << 21) | (1 << 24) | (1 << 26) | (1 << 27) | (1 << 28));
            c |= 1 << 31;
            // EDX: clear MTRR(12) and ACPI thermal(22).
            d &= !((1 << 12) | (1 << 22));
            // EBX: one logical CPU, APIC ID 0.
            b = (b & 0x0000_FFFF) | (1 << 16);
        }
        7 if subleaf == 0 => {
            // Keep FSGSBASE, BMI1, SMEP, BMI2, ERMS, SMAP only.
            a = 0;
            b &= (1 << 0) | (1 << 3) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 20);
            c = 0;
            d = 0;
        }
        4 | 0xB | 0xD | 7 | 6 | 5 | 0xA => (a, b, c, d) = (0, 0, 0, 0),
        HYPERVISOR_BASE => (a, b, c, d) = (HYPERVISOR_BASE + 1, sig(0), sig(4), sig(8)),
        0x4000_0001 => (a, b, c, d) = (ABI_VERSION as u32, 0, 0, 0),
        0x4000_0002..=0x4FFF_FFFF => (a, b, c, d) = (0, 0, 0, 0),
        0x8000_0001 => {
            // ECX: clear SVM(2), MWAITX(29).
            c &= !((1 << 2) | (1 << 29));
        }
        0x8000_000A => (a, b, c, d) = (0, 0, 0, 0),
        0x8000_0000..=0x8000_0008 => {}
        _ if leaf >= 0x8000_0000 => (a, b, c, d) = (0, 0, 0, 0),
        _ if leaf > MAX_BASIC_LEAF && leaf < HYPERVISOR_BASE => (a, b, c, d) = (0, 0, 0, 0),
        _ => {}
    }
    [a, b, c, d]
}

pub fn handle(ctx: &mut ExitContext<'_>) -> Flow {
    let regs = ctx.vcpu.regs();
    let [a, b, c, d] = policy(regs.rax as u32, regs.rcx as u32);
    regs.rax = u64::from(a);
    regs.rbx = u64::from(b);
    regs.rcx = u64::from(c);
    regs.rdx = u64::from(d);
    ctx.vcpu.skip_instruction();
    Flow::Continue
}
