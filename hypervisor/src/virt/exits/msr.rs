//! RDMSR/WRMSR exits, answered in order by: the local APIC (APIC base,
//! TSC deadline, x2APIC), the vCPU's own state (TSC, EFER, PAT), and the
//! hardware-less MSRs of `cpu_policy::msr`. Every other MSR raises #GP in
//! the guest, as a CPU without it would.

use super::{ExitContext, VECTOR_GP};
use crate::virt::Flow;
use cpu_policy::pvclock;

const TSC: u32 = 0x10;
const MTRR_DEF_TYPE: u32 = 0x2FF;
const PAT: u32 = 0x277;
const EFER: u32 = 0xC000_0080;

const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

fn nx_supported() -> bool {
    raw_cpuid::CpuId::new().get_extended_processor_and_feature_identifiers().is_some_and(|f| f.has_execute_disable())
}

/// MTRRs are not announced; a kernel that looks anyway reads them as all
/// zero (uncached default, nothing enabled) and its writes change nothing.
fn is_mtrr(msr: u32) -> bool {
    matches!(msr, 0x200..=0x21F | 0x250 | 0x258 | 0x259 | 0x268..=0x26F | MTRR_DEF_TYPE)
}

fn valid_pat(value: u64) -> bool {
    value.to_le_bytes().iter().all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7))
}

fn read(ctx: &mut ExitContext<'_>, msr: u32) -> Option<u64> {
    if let Some(r) = ctx.devices.chip.lock().msr_read_on(ctx.cpu, msr, ctx.now) {
        return r.ok();
    }
    Some(match msr {
        TSC => crate::arch::x86_64::time::rdtsc(),
        PAT => ctx.vcpu.pat(),
        m if is_mtrr(m) => 0,
        EFER => ctx.vcpu.efer(),
        m => return ctx.msrs.read(m).ok(),
    })
}

fn write(ctx: &mut ExitContext<'_>, msr: u32, value: u64) -> Result<(), ()> {
    if let Some(r) = ctx.devices.chip.lock().msr_write_on(ctx.cpu, msr, value, ctx.now) {
        return r.map_err(|_| ());
    }
    if msr == pvclock::MSR_SYSTEM_TIME || msr == pvclock::MSR_WALL_CLOCK {
        return register_pvclock(ctx, msr, value);
    }
    match msr {
        // The TSC is the host's, shared by every VM: writes are ignored.
        TSC => Ok(()),
        m if is_mtrr(m) => Ok(()),
        PAT if valid_pat(value) => {
            ctx.vcpu.set_pat(value);
            Ok(())
        }
        PAT => Err(()),
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
        m => ctx.msrs.write(m, value).map_err(|_| ()),
    }
}

/// The guest names where its paravirtual clock record lives: BMonitor
/// writes it there once (the TSC is never rescaled, so it stays right). A
/// record that does not fit in RAM, or an unaligned one, is a #GP.
fn register_pvclock(ctx: &mut ExitContext<'_>, msr: u32, value: u64) -> Result<(), ()> {
    let gpa = value & !1;
    if msr == pvclock::MSR_SYSTEM_TIME {
        if value & 1 != 0 {
            if !gpa.is_multiple_of(4) {
                return Err(());
            }
            let id = ctx.identity;
            let record = pvclock::time_info(id.tsc_hz, id.boot_tsc, crate::arch::x86_64::time::rdtsc());
            ctx.mem.write(gpa, &record).map_err(|_| ())?;
        }
    } else {
        if !value.is_multiple_of(4) {
            return Err(());
        }
        ctx.mem.write(value, &pvclock::wall_clock(ctx.identity.boot_unix)).map_err(|_| ())?;
    }
    ctx.msrs.set_pvclock(msr, value);
    Ok(())
}

/// RDPMC: the counters `cpu_policy::msr` says exist, or #GP.
pub fn handle_rdpmc(ctx: &mut ExitContext<'_>) -> Flow {
    let index = ctx.vcpu.regs().rcx as u32;
    match ctx.msrs.read_pmc(index) {
        Ok(v) => {
            let r = ctx.vcpu.regs();
            r.rax = v & 0xFFFF_FFFF;
            r.rdx = v >> 32;
            ctx.vcpu.skip_instruction();
        }
        Err(_) => ctx.vcpu.inject_exception(VECTOR_GP, Some(0)),
    }
    Flow::Continue
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
