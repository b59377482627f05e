//! IN/OUT exits: the VM's port bus decides; writes that ask to power off,
//! reset or exit stop this VM alone.

use super::ExitContext;
use crate::virt::{Flow, StopReason};
use pc_devices::bus::Effect;

pub fn handle(ctx: &mut ExitContext<'_>, port: u16, size: u8, write: bool, string: bool) -> Flow {
    if string {
        return Flow::Stop(StopReason::StringIo(port));
    }
    let size = match size {
        1 | 2 => size,
        _ => 4,
    };
    let mask: u64 = match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    };
    let mut buf = [0u8; 4];
    let data = buf.get_mut(..usize::from(size)).unwrap_or(&mut []);
    if write {
        let value = (ctx.vcpu.regs().rax & mask) as u32;
        data.copy_from_slice(value.to_le_bytes().get(..usize::from(size)).unwrap_or(&[]));
        let effect = ctx.devices.port_write(port, data, ctx.mem, ctx.now);
        ctx.vcpu.skip_instruction();
        match effect {
            Effect::None => Flow::Continue,
            Effect::Kick => Flow::Yield,
            Effect::DebugExit(code) => Flow::Stop(StopReason::DebugExit(code)),
            Effect::PowerOff => Flow::Stop(StopReason::PowerOff),
            Effect::Reset => Flow::Stop(StopReason::Reset),
        }
    } else {
        ctx.devices.port_read(port, data, ctx.mem, ctx.now);
        let mut v = [0u8; 8];
        for (d, s) in v.iter_mut().zip(data.iter()) {
            *d = *s;
        }
        let value = u64::from_le_bytes(v) & mask;
        let regs = ctx.vcpu.regs();
        // A 32-bit IN zero-extends into RAX; narrower ones merge.
        regs.rax = if size == 4 { value } else { (regs.rax & !mask) | value };
        ctx.vcpu.skip_instruction();
        Flow::Continue
    }
}
