//! Hypercall ABI v1 (docs/hypercalls.md). Decoding and range checks are in
//! `vmm_config::hypercall`; buffers are then translated through the VM's
//! nested page table, so a bad pointer is an error status, never a host
//! access.

use super::ExitContext;
use crate::virt::{Flow, StopReason};
use vmm_config::hypercall::{decode, status, Hypercall, HypercallRegs, ABI_VERSION, AGENT_IO_PORT, CONSOLE_WRITE_MAX};

pub fn handle(ctx: &mut ExitContext<'_>) -> Flow {
    let r = *ctx.vcpu.regs();
    let regs = HypercallRegs { rax: r.rax, rdi: r.rdi, rsi: r.rsi, rdx: r.rdx };
    let call = match decode(regs, ctx.vcpu.long_mode()) {
        Ok(call) => call,
        Err(e) => return finish(ctx, e.status()),
    };
    // An unprivileged process may not act for the VM (docs/hypercalls.md).
    if call.privileged() && ctx.vcpu.cpl() != 0 && !super::agent::io_permitted(ctx, AGENT_IO_PORT) {
        return finish(ctx, status::DENIED);
    }
    match call {
        Hypercall::AbiVersion => {
            ctx.vcpu.regs().rdi = ABI_VERSION;
            finish(ctx, status::OK)
        }
        Hypercall::VmInfo { buf, len } => {
            let name = ctx.name.as_bytes();
            let n = name.len().min(len as usize);
            let part = name.get(..n).unwrap_or(&[]);
            if ctx.mem.write(buf, part).is_err() {
                return finish(ctx, status::BAD_ADDRESS);
            }
            let size = ctx.mem.size();
            let (id, full) = (u64::from(ctx.id), name.len() as u64);
            let regs = ctx.vcpu.regs();
            regs.rdi = id;
            regs.rsi = size;
            regs.rdx = full;
            finish(ctx, status::OK)
        }
        Hypercall::ConsoleWrite { buf, len } => {
            let mut bytes = [0u8; CONSOLE_WRITE_MAX as usize];
            let Some(dst) = bytes.get_mut(..len as usize) else { return finish(ctx, status::TOO_LARGE) };
            if ctx.mem.read(buf, dst).is_err() {
                return finish(ctx, status::BAD_ADDRESS);
            }
            ctx.devices.console.lock().write_bytes(dst);
            finish(ctx, status::OK)
        }
        Hypercall::Yield => {
            finish(ctx, status::OK);
            Flow::Yield
        }
        Hypercall::Exit { code } => Flow::Stop(StopReason::Exited(code)),
        Hypercall::Clock => {
            use crate::arch::x86_64::time;
            let tsc = time::rdtsc();
            let regs = ctx.vcpu.regs();
            regs.rdi = time::tsc_to_ns(tsc);
            regs.rsi = time::tsc_per_ms();
            regs.rdx = tsc;
            finish(ctx, status::OK)
        }
        Hypercall::AgentAttach { va, data } => {
            let st = super::agent::attach(ctx, va, data);
            finish(ctx, st)
        }
        Hypercall::AgentKick => {
            let (st, taken, given, more) = super::agent::kick(ctx);
            let regs = ctx.vcpu.regs();
            regs.rdi = taken;
            regs.rsi = given;
            regs.rdx = more;
            finish(ctx, st)
        }
        Hypercall::AgentDetach => {
            let st = super::agent::detach(ctx);
            finish(ctx, st)
        }
        Hypercall::DebugCorruptState => {
            if !ctx.debug_hypercalls {
                return finish(ctx, status::DENIED);
            }
            finish(ctx, status::OK);
            ctx.vcpu.corrupt_state();
            Flow::Continue
        }
    }
}

fn finish(ctx: &mut ExitContext<'_>, code: u64) -> Flow {
    ctx.vcpu.regs().rax = code;
    ctx.vcpu.skip_instruction();
    Flow::Continue
}
