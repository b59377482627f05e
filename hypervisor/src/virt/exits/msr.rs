//! RDMSR/WRMSR exits. Only MSRs BMonitor models are answered; every other
//! one raises #GP in the guest, as a CPU without that MSR would.

use super::{ExitContext, VECTOR_GP};
use crate::virt::Flow;

const TSC: u32 = 0x10;
const APIC_BASE: u32 = 0x1B;
const FEATURE_CONTROL: u32 = 0x3A;
const BIOS_SIGN_ID: u32 = 0x8B;
const MTRR_CAP: u32 = 0xFE;
const MISC_ENABLE: u32 = 0x1A0;
const PAT: u32 = 0x277;
const MTRR_DEF_TYPE: u32 = 0x2FF;
const EFER: u32 = 0xC000_0080;

const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

fn nx_supported() -> bool {
    raw_cpuid::CpuId::new().get_extended_processor_and_feature_identifiers().is_some_and(|f| f.has_execute_disable())
}

fn is_mtrr(msr: u32) -> bool {
    matches!(msr, 0x200..=0x21F | 0x250 | 0x258 | 0x259 | 0x268..=0x26F | MTRR_DEF_TYPE)
}

fn valid_pat(value: u64) -> bool {
    value.to_le_bytes().iter().all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7))
}

fn read(ctx: &mut ExitContext<'_>, msr: u32) -> Option<u64> {
    Some(match msr {
        TSC => crate::arch::x86_64::time::rdtsc(),
        // BSP, xAPIC enabled at the standard base (the APIC is not modelled
        // yet; guests that poke it are stopped on the access).
        APIC_BASE => 0xFEE0_0000 | (1 << 8) | (1 << 11),
        FEATURE_CONTROL => 1, // locked, VMX off
        BIOS_SIGN_ID => 0,
        MTRR_CAP => 0,
        MISC_ENABLE => 1, // fast strings
        PAT => ctx.vcpu.pat(),
        m if is_mtrr(m) => 0,
        EFER => ctx.vcpu.efer(),
        _ => return None,
    })
}

fn write(ctx: &mut ExitContext<'_>, msr: u32, value: u64) -> Result<(), ()> {
    match msr {
        TSC | APIC_BASE | BIOS_SIGN_ID | MISC_ENABLE => Ok(()),
        m if is_mtrr(m) => Ok(()),
        PAT if valid_pat(value) => {
            ctx.vcpu.set_pat(value);
            Ok(())
        }
        EFER => {
            let allowed = EFER_SCE | EFER_LME | EFER_LMA | if nx_supported() { EFER_NXE } else { 0 };
            let old = ctx.vcpu.efer();
            if value & !allowed != 0 {
                return Err(());
            }
            // LME may not change while paging is on.
            if ctx.vcpu.paging_enabled() && (old ^ value) & EFER_LME != 0 {
                return Err(());
            }
            ctx.vcpu.set_efer(value);
            Ok(())
        }
        _ => Err(()),
    }
}

pub fn handle(ctx: &mut ExitContext<'_>, is_write: bool) -> Flow {
    let regs = *ctx.vcpu.regs();
    let msr = regs.rcx as u32;
    let ok = if is_write {
        let value = (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF);
        write(ctx, msr, value).is_ok()
    } else {
        match read(ctx, msr) {
            Some(v) => {
                let r = ctx.vcpu.regs();
                r.rax = v & 0xFFFF_FFFF;
                r.rdx = v >> 32;
                true
            }
            None => false,
        }
    };
    if ok {
        ctx.vcpu.skip_instruction();
    } else {
        ctx.vcpu.inject_exception(VECTOR_GP, Some(0));
    }
    Flow::Continue
}
