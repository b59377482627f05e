//! IN/OUT exits: the VM's port bus decides; writes that ask to power off,
//! reset or exit stop this VM alone.

use super::ExitContext;
use crate::devices::ports::PortEffect;
use crate::virt::{Flow, StopReason};

pub fn handle(ctx: &mut ExitContext<'_>, port: u16, size: u8, write: bool, string: bool) -> Flow {
    if string {
        return Flow::Stop(StopReason::StringIo(port));
    }
    let mask: u64 = match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    };
    if write {
        let value = (ctx.vcpu.regs().rax & mask) as u32;
        let effect = ctx.ports.write(port, size, value, ctx.name);
        ctx.vcpu.skip_instruction();
        match effect {
            PortEffect::None => Flow::Continue,
            PortEffect::DebugExit(code) => Flow::Stop(StopReason::DebugExit(code)),
            PortEffect::PowerOff => Flow::Stop(StopReason::PowerOff),
            PortEffect::Reset => Flow::Stop(StopReason::Reset),
        }
    } else {
        let value = u64::from(ctx.ports.read(port, size)) & mask;
        let regs = ctx.vcpu.regs();
        // A 32-bit IN zero-extends into RAX; narrower ones merge.
        regs.rax = if size == 4 { value } else { (regs.rax & !mask) | value };
        ctx.vcpu.skip_instruction();
        Flow::Continue
    }
}
