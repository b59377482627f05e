//! Nested page faults: an access inside the VM's MMIO window is emulated
//! (fetch the instruction through the guest's own page tables, decode the
//! MOV, perform it on the device, advance RIP); any other address outside
//! RAM stops the VM.

use super::ExitContext;
use crate::devices::Outcome;
use crate::mm::guest::GuestMemory;
use crate::virt::{Flow, StopReason};
use insn_decode::decode::{decode_mmio, AccessKind};
use insn_decode::{apply_load, compare_flags, store_value, walk, GuestPhys};
use pc_devices::bus::Effect;

/// Guest RAM as the decoder reads it (through EPT/NPT).
struct Phys<'a>(&'a GuestMemory);

impl GuestPhys for Phys<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.0.read(gpa, buf).map_err(|_| ())
    }
}

pub fn handle(ctx: &mut ExitContext<'_>, gpa: u64, write: bool, fetch: bool) -> Flow {
    if fetch || !ctx.devices.claims_mmio(ctx.cpu, gpa) {
        return Flow::Stop(StopReason::MemoryFault { gpa, write, fetch });
    }
    let mode = ctx.vcpu.cpu_mode();
    let mut bytes = [0u8; 15];
    let n = match walk::fetch(&Phys(ctx.mem), &mode, ctx.vcpu.rip(), &mut bytes) {
        Ok(n) => n,
        Err(e) => {
            return Flow::Stop(StopReason::BadMmio { gpa, why: alloc::format!("instruction not readable ({e})") })
        }
    };
    let insn = bytes.get(..n).unwrap_or(&[]);
    let access = match decode_mmio(insn, &mode) {
        Ok(a) => a,
        Err(e) => {
            let shown = insn.get(..insn.len().min(8)).unwrap_or(&[]);
            return Flow::Stop(StopReason::BadMmio { gpa, why: alloc::format!("{e} (bytes {shown:02x?})") });
        }
    };
    let mut regs = reg_array(ctx);
    let size = usize::from(access.size).clamp(1, 8);
    let mut buf = [0u8; 8];
    let data = buf.get_mut(..size).unwrap_or(&mut []);
    let effect = match access.kind {
        AccessKind::Load { .. } | AccessKind::Compare { .. } => {
            if ctx.devices.mmio_read(ctx.cpu, gpa, data, ctx.mem, ctx.now) == Outcome::Unclaimed {
                return Flow::Stop(StopReason::BadMmio {
                    gpa,
                    why: alloc::format!("{size}-byte read straddles a device's range"),
                });
            }
            let value = u64::from_le_bytes(buf);
            if matches!(access.kind, AccessKind::Load { .. }) {
                apply_load(&mut regs, &access, value);
                write_back(ctx, &regs);
            } else {
                let flags = compare_flags(&regs, &access, value, ctx.vcpu.rflags());
                ctx.vcpu.set_rflags(flags);
            }
            Effect::None
        }
        AccessKind::Store { .. } => {
            let value = store_value(&regs, &access).to_le_bytes();
            data.copy_from_slice(value.get(..size).unwrap_or(&[]));
            match ctx.devices.mmio_write(ctx.cpu, gpa, data, ctx.mem, ctx.now) {
                Outcome::Done(e) => e,
                Outcome::Unclaimed => {
                    return Flow::Stop(StopReason::BadMmio {
                        gpa,
                        why: alloc::format!("{size}-byte write straddles a device's range"),
                    })
                }
            }
        }
    };
    ctx.vcpu.advance_rip(u64::from(access.len));
    match effect {
        Effect::None => Flow::Continue,
        Effect::Kick => Flow::Yield,
        Effect::DebugExit(code) => Flow::Stop(StopReason::DebugExit(code)),
        Effect::PowerOff => Flow::Stop(StopReason::PowerOff),
        Effect::Reset => Flow::Stop(StopReason::Reset),
    }
}

fn reg_array(ctx: &mut ExitContext<'_>) -> [u64; 16] {
    let rsp = ctx.vcpu.rsp();
    let r = ctx.vcpu.regs();
    [r.rax, r.rcx, r.rdx, r.rbx, rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15]
}

fn write_back(ctx: &mut ExitContext<'_>, a: &[u64; 16]) {
    let [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15] = *a;
    ctx.vcpu.set_rsp(rsp);
    let r = ctx.vcpu.regs();
    *r =
        crate::virt::GuestRegs { rax, rcx, rdx, rbx, rsp_slot: 0, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15 };
}
