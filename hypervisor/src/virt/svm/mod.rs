//! AMD-V backend: one VMCB per vCPU, nested paging, an ASID per VM,
//! intercepts for I/O, MSRs, CPUID, HLT, shutdown and the SVM instructions.
//! Time slices come from the host APIC timer (SVM has no preemption timer).

mod entry;
mod vmcb;

use super::{EntryState, Exit, GuestRegs, Vcpu};
use crate::arch::x86_64::{apic, percpu, time};
use crate::mm::frames;
use core::sync::atomic::Ordering;
use vmcb::Vmcb;

const EFER_MSR: u32 = 0xC000_0080;
const VM_CR_MSR: u32 = 0xC001_0114;
const HSAVE_PA_MSR: u32 = 0xC001_0117;
const EFER_SVME: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;

struct SvmState {
    /// ASIDs the CPU offers (ASID 0 is the host's).
    asids: u32,
    iopm: u64,
    msrpm: u64,
    nrips: bool,
}

static STATE: spin::Once<SvmState> = spin::Once::new();

/// MSRs the guest owns directly: VMLOAD/VMSAVE switch them per VM.
const PASSTHROUGH_MSRS: [u32; 10] =
    [0x174, 0x175, 0x176, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0100, 0xC000_0101, 0xC000_0102];

/// Turns on SVM on an application processor: EFER.SVME and its own host
/// save areas (the intercept maps are the boot CPU's).
pub fn enable_ap(cpu: &percpu::PerCpu) -> Result<(), &'static str> {
    // SAFETY: the boot CPU found SVM; an AP of the same node has the same
    // MSRs. The frames live as long as the node.
    unsafe {
        if x86::msr::rdmsr(VM_CR_MSR) & (1 << 4) != 0 {
            return Err("SVM disabled by firmware on this CPU (VM_CR.SVMDIS)");
        }
        x86::msr::wrmsr(EFER_MSR, x86::msr::rdmsr(EFER_MSR) | EFER_SVME);
        let hsave = frames::alloc().ok_or("no memory for host save area")?;
        x86::msr::wrmsr(HSAVE_PA_MSR, hsave);
        cpu.svm_hsave.store(hsave, Ordering::Relaxed);
        let host_save = frames::alloc().ok_or("no memory for host VMSAVE area")?;
        cpu.svm_host_save.store(host_save, Ordering::Relaxed);
    }
    Ok(())
}

/// Turns on SVM (EFER.SVME) and allocates the shared intercept maps.
pub fn enable() -> Result<(), &'static str> {
    let cpuid = raw_cpuid::CpuId::new();
    let svm = cpuid.get_svm_info().ok_or("CPUID has no SVM leaf")?;
    if !svm.has_nested_paging() {
        return Err("AMD-V without nested paging (NPT) is not supported");
    }
    if svm.supported_asids() < 2 {
        return Err("AMD-V offers no ASIDs for guests");
    }
    // SAFETY: CPUID reports SVM; VM_CR, EFER and VM_HSAVE_PA exist. The frames
    // allocated here live as long as the node.
    unsafe {
        if x86::msr::rdmsr(VM_CR_MSR) & (1 << 4) != 0 {
            return Err("SVM disabled by firmware (VM_CR.SVMDIS)");
        }
        x86::msr::wrmsr(EFER_MSR, x86::msr::rdmsr(EFER_MSR) | EFER_SVME);
        let cpu = percpu::current();
        let hsave = frames::alloc().ok_or("no memory for host save area")?;
        x86::msr::wrmsr(HSAVE_PA_MSR, hsave);
        cpu.svm_hsave.store(hsave, Ordering::Relaxed);
        let host_save = frames::alloc().ok_or("no memory for host VMSAVE area")?;
        cpu.svm_host_save.store(host_save, Ordering::Relaxed);
        let iopm = frames::alloc_contiguous(3).ok_or("no memory for I/O permission map")?;
        core::ptr::write_bytes(iopm as *mut u8, 0xFF, 3 * 4096);
        let msrpm = frames::alloc_contiguous(2).ok_or("no memory for MSR permission map")?;
        core::ptr::write_bytes(msrpm as *mut u8, 0xFF, 2 * 4096);
        let map = core::slice::from_raw_parts_mut(msrpm as *mut u8, 2 * 4096);
        for m in PASSTHROUGH_MSRS {
            let (base, index) = match m {
                0..=0x1FFF => (0usize, m as usize),
                0xC000_0000..=0xC000_1FFF => (0x800, (m - 0xC000_0000) as usize),
                _ => continue,
            };
            // Two bits per MSR: read then write.
            let bit = index * 2;
            if let Some(byte) = map.get_mut(base + bit / 8) {
                *byte &= !(3 << (bit % 8));
            }
        }
        STATE.call_once(|| SvmState { asids: svm.supported_asids(), iopm, msrpm, nrips: svm.has_nrip() });
    }
    Ok(())
}

/// One AMD-V vCPU.
pub struct SvmVcpu {
    vmcb: Vmcb,
    regs: GuestRegs,
    /// Length of the exiting instruction when the CPU gives no next-RIP.
    insn_len: u64,
    /// The physical CPU it last ran on.
    last_cpu: usize,
    /// An injected NMI's handler has not returned yet.
    nmi_masked: bool,
    /// Where the guest's IRET was intercepted: NMIs unblock once it ran.
    iret_rip: Option<u64>,
    fxsave: alloc::boxed::Box<super::FxArea>,
    debug_regs: super::DebugRegs,
}

impl SvmVcpu {
    /// Builds a VMCB for a guest entering at `entry` in flat 32-bit mode.
    pub fn new(id: u16, ncr3: u64, entry: EntryState) -> Result<SvmVcpu, &'static str> {
        let st = STATE.get().ok_or("SVM not enabled")?;
        let vmcb = Vmcb::new().ok_or("no memory for VMCB")?;
        // ASIDs are reused when VMs outnumber them; the flush-all on each
        // VMCB's first run (TLB_CONTROL) drops a predecessor's entries.
        let asid = u32::from(id) % st.asids.saturating_sub(1).max(1) + 1;
        vmcb.init_guest(asid, ncr3, st.iopm, st.msrpm, entry.rip, entry.rax);
        Ok(SvmVcpu {
            vmcb,
            regs: GuestRegs { rax: entry.rax, rbx: entry.rbx, rsi: entry.rsi, ..GuestRegs::default() },
            insn_len: 0,
            last_cpu: usize::MAX,
            nmi_masked: false,
            iret_rip: None,
            fxsave: super::FxArea::new_default(),
            debug_regs: Default::default(),
        })
    }

    fn decode_exit(&mut self) -> Exit {
        let code = self.vmcb.exit_code();
        let info1 = self.vmcb.exit_info1();
        let info2 = self.vmcb.exit_info2();
        self.insn_len = 0;
        match code {
            0x60 => Exit::Preempted,
            0x64 => {
                self.vmcb.set_interrupt_window(false);
                Exit::InterruptWindow
            }
            0x61 => Exit::Preempted,
            0x6F => {
                self.insn_len = 2;
                Exit::Rdpmc
            }
            0x72 => {
                self.insn_len = 2;
                Exit::Cpuid
            }
            0x76 => {
                self.insn_len = 2;
                self.skip_instruction();
                Exit::Handled
            }
            0x78 => {
                self.insn_len = 1;
                Exit::Halt
            }
            0x74 => {
                // IRET after an injected NMI: it runs when the guest is
                // re-entered; NMIs unblock once RIP has moved past it.
                self.iret_rip = Some(self.vmcb.rip());
                self.vmcb.set_iret_intercept(false);
                Exit::Handled
            }
            0x7A => Exit::InvalidOpcode { what: "INVLPGA" },
            0x7B => {
                self.insn_len = info2.wrapping_sub(self.vmcb.rip());
                let size = match (info1 >> 4) & 7 {
                    1 => 1,
                    2 => 2,
                    _ => 4,
                };
                Exit::Io { port: (info1 >> 16) as u16, size, write: info1 & 1 == 0, string: info1 & 4 != 0 }
            }
            0x7C => {
                self.insn_len = 2;
                Exit::Msr { write: info1 & 1 != 0 }
            }
            0x7D => Exit::Unhandled { code },
            0x7F => Exit::TripleFault,
            0x80 | 0x82..=0x86 => Exit::InvalidOpcode { what: "SVM instruction" },
            0x81 => {
                self.insn_len = 3;
                Exit::Hypercall
            }
            0x8A => Exit::InvalidOpcode { what: "MONITOR" },
            0x8B | 0x8C => Exit::InvalidOpcode { what: "MWAIT" },
            0x8D => Exit::InvalidOpcode { what: "XSETBV" },
            0x400 => Exit::NestedFault { gpa: info2, write: info1 & 2 != 0, fetch: info1 & 0x10 != 0 },
            // VMEXIT_INVALID is -1; some implementations store it 32 bits wide.
            u64::MAX | 0xFFFF_FFFF => Exit::EntryFailed { detail: code },
            other => Exit::Unhandled { code: other },
        }
    }
}

impl Vcpu for SvmVcpu {
    fn run(&mut self, slice_tsc: u64) -> Exit {
        let host_save = percpu::current().svm_host_save.load(Ordering::Relaxed);
        if host_save == 0 {
            return Exit::EntryFailed { detail: 0 };
        }
        let ticks =
            u128::from(slice_tsc) * u128::from(time::apic_ticks_per_ms()) / u128::from(time::tsc_per_ms().max(1));
        apic::arm_oneshot(u32::try_from(ticks).unwrap_or(u32::MAX));
        self.vmcb.set_rax(self.regs.rax);
        entry::run(&mut self.regs, self.vmcb.pa(), host_save);
        self.regs.rax = self.vmcb.rax();
        self.vmcb.stop_tlb_flush();
        self.vmcb.requeue_interrupted_event();
        let exit = self.decode_exit();
        if exit == Exit::Preempted {
            entry::take_pending_interrupt();
        }
        exit
    }

    fn regs(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn skip_instruction(&mut self) {
        let nrip = self.vmcb.next_rip();
        let rip = match STATE.get() {
            Some(st) if st.nrips && nrip != 0 => nrip,
            _ => self.vmcb.rip().wrapping_add(self.insn_len),
        };
        self.vmcb.set_rip(rip);
        self.vmcb.clear_interrupt_shadow();
    }

    fn inject_exception(&mut self, vector: u8, error: Option<u32>) {
        self.vmcb.inject_exception(vector, error);
    }

    fn can_inject_interrupt(&self) -> bool {
        self.vmcb.rflags() & (1 << 9) != 0 && !self.vmcb.interrupt_shadow() && !self.vmcb.event_pending()
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.vmcb.inject_interrupt(vector);
    }

    fn nmi_window_open(&mut self) -> bool {
        if self.nmi_masked && self.iret_rip.is_some_and(|r| r != self.vmcb.rip()) {
            self.nmi_masked = false;
            self.iret_rip = None;
        }
        !self.nmi_masked && !self.vmcb.event_pending() && !self.vmcb.interrupt_shadow()
    }

    fn inject_nmi(&mut self) {
        self.vmcb.inject_nmi();
        self.nmi_masked = true;
        self.iret_rip = None;
        self.vmcb.set_iret_intercept(true);
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.vmcb.set_interrupt_window(on);
    }

    fn long_mode(&self) -> bool {
        self.vmcb.efer() & EFER_LMA != 0 && self.vmcb.cs_long()
    }

    fn interrupts_enabled(&self) -> bool {
        self.vmcb.rflags() & (1 << 9) != 0
    }

    fn paging_enabled(&self) -> bool {
        self.vmcb.cr0() & (1 << 31) != 0
    }

    fn efer(&self) -> u64 {
        self.vmcb.efer() & !EFER_SVME
    }

    fn set_efer(&mut self, value: u64) {
        // LMA follows LME and paging, as the CPU would set it.
        let lma = value & EFER_LME != 0 && self.paging_enabled();
        let value = if lma { value | EFER_LMA } else { value & !EFER_LMA };
        self.vmcb.set_efer(value | EFER_SVME);
    }

    fn pat(&self) -> u64 {
        self.vmcb.g_pat()
    }

    fn set_pat(&mut self, value: u64) {
        self.vmcb.set_g_pat(value);
    }

    fn switch_in(&mut self) {
        let cpu = percpu::current_index();
        if percpu::take_flush_due() || self.last_cpu != cpu {
            self.vmcb.request_tlb_flush();
        }
        self.last_cpu = cpu;
        // SAFETY: restoring this VM's x87/SSE state from its own area.
        unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) self.fxsave.0.as_ptr()) };
        self.debug_regs.restore();
    }

    fn switch_out(&mut self) {
        // SAFETY: saving x87/SSE state into this VM's own area.
        unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) self.fxsave.0.as_mut_ptr()) };
        self.debug_regs.save();
    }

    fn start_at_sipi(&mut self, vector: u8) {
        self.vmcb.start_real_mode(vector);
        self.nmi_masked = false;
        self.iret_rip = None;
        self.vmcb.set_iret_intercept(false);
        // EDX holds the processor signature after INIT.
        self.regs = GuestRegs { rdx: 0x600, ..GuestRegs::default() };
    }

    fn cpu_mode(&self) -> insn_decode::CpuMode {
        self.vmcb.cpu_mode()
    }

    fn cpl(&self) -> u8 {
        self.vmcb.cpl()
    }

    fn tss(&self) -> (u64, u32) {
        self.vmcb.tss()
    }

    fn rip(&self) -> u64 {
        self.vmcb.rip()
    }

    fn advance_rip(&mut self, len: u64) {
        self.vmcb.set_rip(self.vmcb.rip().wrapping_add(len));
        self.vmcb.clear_interrupt_shadow();
    }

    fn rflags(&self) -> u64 {
        self.vmcb.rflags()
    }

    fn set_rflags(&mut self, value: u64) {
        self.vmcb.set_rflags(value);
    }

    fn rsp(&self) -> u64 {
        self.vmcb.rsp()
    }

    fn set_rsp(&mut self, value: u64) {
        self.vmcb.set_rsp(value);
    }

    fn corrupt_state(&mut self) {
        // VMRUN refuses a guest EFER without SVME.
        self.vmcb.set_efer(self.vmcb.efer() & !EFER_SVME);
    }
}
