//! The agent hypercalls (docs/hypercalls.md, "The guest agent"): register
//! the shared region, move records through it, unregister. The region is
//! addressed by guest-virtual address in the caller's own address space and
//! translated page by page through the guest's page tables at every call,
//! with the caller's privilege (user pages only for a CPL 3 caller,
//! writable pages only), then through EPT/NPT; nothing is kept mapped
//! between calls, so a guest that remaps or frees the region only breaks
//! its own channel.

use alloc::vec::Vec;

use super::ExitContext;
use crate::mm::guest::GuestMemory;
use agent_proto::ring::{Layout, RingFault, RingMem};
use insn_decode::walk::{translate_checked, Access, PAGE_SIZE};
use insn_decode::{CpuMode, GuestPhys};
use vmm_config::hypercall::status;

/// Bits 51:12 of CR3: the page-table root, without PCID or the PTI bit.
const CR3_ROOT: u64 = 0x000F_FFFF_FFFF_E000;

/// Guest RAM as the page walker reads it.
pub(super) struct Phys<'a>(pub &'a GuestMemory);

impl GuestPhys for Phys<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.0.read(gpa, buf).map_err(|_| ())
    }
}

/// The registered region, translated for the duration of one call.
struct Region<'a> {
    mem: &'a GuestMemory,
    pages: Vec<u64>,
}

impl Region<'_> {
    /// Walks each piece of [off, off + len) page by page.
    fn each(
        &self,
        off: u32,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), RingFault>,
    ) -> Result<(), RingFault> {
        let mut done = 0usize;
        while done < len {
            let at = off as usize + done;
            let page = self.pages.get(at / PAGE_SIZE as usize).ok_or(RingFault::Memory)?;
            let in_page = at % PAGE_SIZE as usize;
            let n = (PAGE_SIZE as usize - in_page).min(len - done);
            f(page + in_page as u64, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl RingMem for Region<'_> {
    fn read(&self, off: u32, buf: &mut [u8]) -> Result<(), RingFault> {
        let len = buf.len();
        self.each(off, len, |gpa, at, n| {
            let dst = buf.get_mut(at..at + n).ok_or(RingFault::Memory)?;
            self.mem.read(gpa, dst).map_err(|_| RingFault::Memory)
        })
    }

    fn write(&mut self, off: u32, data: &[u8]) -> Result<(), RingFault> {
        self.each(off, data.len(), |gpa, at, n| {
            let src = data.get(at..at + n).ok_or(RingFault::Memory)?;
            self.mem.write(gpa, src).map_err(|_| RingFault::Memory)
        })
    }
}

/// Translates every page of the region for a caller at `cpl`.
fn translate(mem: &GuestMemory, mode: &CpuMode, cpl: u8, va: u64, len: u32) -> Option<Vec<u64>> {
    let access = Access { user: cpl == 3, write: true };
    let pages = len.div_ceil(PAGE_SIZE as u32) as usize;
    let mut v = Vec::new();
    v.try_reserve_exact(pages).ok()?;
    for i in 0..pages as u64 {
        let gva = va.checked_add(i * PAGE_SIZE)?;
        let gpa = translate_checked(&Phys(mem), mode, gva, access).ok()? & !(PAGE_SIZE - 1);
        // Guest RAM only (never a device window).
        if gpa.checked_add(PAGE_SIZE)? > mem.size() {
            return None;
        }
        v.push(gpa);
    }
    Some(v)
}

fn now_ms() -> u64 {
    use crate::arch::x86_64::time;
    time::tsc_to_ns(time::rdtsc()) / 1_000_000
}

/// `agent_attach`: returns the status for RAX.
pub fn attach(ctx: &mut ExitContext<'_>, va: u64, data: u64) -> u64 {
    let Ok(layout) = Layout::new(data) else { return status::INVALID_ARGUMENT };
    let mode = ctx.vcpu.cpu_mode();
    let Some(pages) = translate(ctx.mem, &mode, ctx.vcpu.cpl(), va, layout.total()) else {
        return status::BAD_ADDRESS;
    };
    let region = Region { mem: ctx.mem, pages };
    match layout.check_magic(&region) {
        Ok(()) => {}
        Err(RingFault::Memory) => return status::BAD_ADDRESS,
        Err(_) => return status::INVALID_ARGUMENT,
    }
    let mut ch = ctx.devices.agent.lock();
    ch.relay.attach(layout, now_ms());
    ch.owner_cr3 = mode.cr3 & CR3_ROOT;
    ch.region_va = va;
    drop(ch);
    crate::log!("[{}] agent attached (region {va:#x}, {} KiB per direction)", ctx.name, layout.data() / 1024);
    status::OK
}

/// `agent_kick`: returns (status, records taken, records given, more).
pub fn kick(ctx: &mut ExitContext<'_>) -> (u64, u64, u64, u64) {
    let agent = ctx.devices.agent.clone();
    let mut ch = agent.lock();
    let Some(layout) = ch.relay.layout() else { return (status::NOT_ATTACHED, 0, 0, 0) };
    let mode = ctx.vcpu.cpu_mode();
    if mode.cr3 & CR3_ROOT != ch.owner_cr3 {
        return (status::DENIED, 0, 0, 0);
    }
    let now = now_ms();
    let va = ch.region_va;
    let Some(pages) = translate(ctx.mem, &mode, ctx.vcpu.cpl(), va, layout.total()) else {
        ch.relay.detach("the agent's region is no longer mapped", now);
        return (status::RING_FAULT, 0, 0, 0);
    };
    let mut region = Region { mem: ctx.mem, pages };
    let result = ch.relay.kick(&mut region, now);
    drop(ch);
    match result {
        Ok(o) => {
            // Whatever was pending went with this kick: the next news rings again.
            (status::OK, o.records_in as u64, o.records_out as u64, u64::from(o.more))
        }
        Err(f) => {
            crate::log!("[{}] agent detached: {f}", ctx.name);
            (status::RING_FAULT, 0, 0, 0)
        }
    }
}

/// `agent_detach`.
pub fn detach(ctx: &mut ExitContext<'_>) -> u64 {
    {
        let mut ch = ctx.devices.agent.lock();
        if !ch.relay.attached() {
            return status::NOT_ATTACHED;
        }
        ch.relay.detach("the agent detached", now_ms());
    }
    crate::log!("[{}] agent detached itself", ctx.name);
    status::OK
}

/// Whether a caller at CPL > IOPL may access `port` under the x86 rules
/// (SDM Vol. 1 19.5.2): the TSS's I/O map base at offset 0x66, the port's
/// bit (and the byte holding it) inside the TSS limit and clear.
pub fn io_permitted(ctx: &mut ExitContext<'_>, port: u16) -> bool {
    let cpl = u64::from(ctx.vcpu.cpl());
    let iopl = (ctx.vcpu.rflags() >> 12) & 3;
    if cpl <= iopl {
        return true;
    }
    let mode = ctx.vcpu.cpu_mode();
    let (base, limit) = ctx.vcpu.tss();
    let supervisor = Access { user: false, write: false };
    let read = |off: u64, buf: &mut [u8]| -> bool {
        if off + buf.len() as u64 - 1 > u64::from(limit) {
            return false;
        }
        let Some(lin) = base.checked_add(off) else { return false };
        // The TSS may cross a page: read byte by byte through the walk.
        for (i, b) in buf.iter_mut().enumerate() {
            let Ok(gpa) = translate_checked(&Phys(ctx.mem), &mode, lin + i as u64, supervisor) else { return false };
            let mut one = [0u8; 1];
            if ctx.mem.read(gpa, &mut one).is_err() {
                return false;
            }
            let [v] = one;
            *b = v;
        }
        true
    };
    let mut map = [0u8; 2];
    if !read(0x66, &mut map) {
        return false;
    }
    let byte_off = u64::from(u16::from_le_bytes(map)) + u64::from(port / 8);
    let mut bits = [0u8; 1];
    if !read(byte_off, &mut bits) {
        return false;
    }
    let [v] = bits;
    v & (1 << (port % 8)) == 0
}
