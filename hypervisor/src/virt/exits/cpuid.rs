//! CPUID exits: the policy is `cpu_policy::cpuid`; this file only feeds it
//! the host's answers and the vCPU's identity.

use super::ExitContext;
use crate::virt::Flow;
use core::arch::x86_64::__cpuid_count;

fn host(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = __cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn handle(ctx: &mut ExitContext<'_>) -> Flow {
    let identity = cpu_policy::cpuid::VcpuIdentity { limit_cpuid: ctx.msrs.limit_cpuid(), ..*ctx.identity };
    let regs = ctx.vcpu.regs();
    let [a, b, c, d] = cpu_policy::cpuid::guest_leaf(&host, regs.rax as u32, regs.rcx as u32, &identity);
    regs.rax = u64::from(a);
    regs.rbx = u64::from(b);
    regs.rcx = u64::from(c);
    regs.rdx = u64::from(d);
    ctx.vcpu.skip_instruction();
    Flow::Continue
}
