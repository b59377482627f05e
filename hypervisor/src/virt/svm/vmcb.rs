//! The VMCB: a 4 KiB frame with the control area at 0 and the state-save
//! area at 0x400 (AMD APM vol. 2, appendix B). Accessed by offset.

use crate::mm::frames;

// Control area.
const INTERCEPT_MISC1: usize = 0x00C;
const INTERCEPT_MISC2: usize = 0x010;
const IOPM_BASE: usize = 0x040;
const MSRPM_BASE: usize = 0x048;
const GUEST_ASID: usize = 0x058;
const TLB_CONTROL: usize = 0x05C;
const VINTR: usize = 0x060;
const INTERRUPT_SHADOW: usize = 0x068;
const EXIT_CODE: usize = 0x070;
const EXIT_INFO1: usize = 0x078;
const EXIT_INFO2: usize = 0x080;
const EXIT_INT_INFO: usize = 0x088;
const NP_ENABLE: usize = 0x090;
const EVENT_INJ: usize = 0x0A8;
const N_CR3: usize = 0x0B0;
const CLEAN_BITS: usize = 0x0C0;
const NEXT_RIP: usize = 0x0C8;
// State-save area.
const SEG_ES: usize = 0x400;
const SEG_CS: usize = 0x410;
const SEG_SS: usize = 0x420;
const SEG_DS: usize = 0x430;
const SEG_FS: usize = 0x440;
const SEG_GS: usize = 0x450;
const SEG_GDTR: usize = 0x460;
const SEG_IDTR: usize = 0x480;
const SEG_TR: usize = 0x490;
const CPL: usize = 0x4CB;
const EFER: usize = 0x4D0;
const CR4: usize = 0x548;
const CR3: usize = 0x550;
const CR0: usize = 0x558;
const DR7: usize = 0x560;
const DR6: usize = 0x568;
const RFLAGS: usize = 0x570;
const RIP: usize = 0x578;
const RSP: usize = 0x5D8;
const RAX: usize = 0x5F8;
const G_PAT: usize = 0x668;

// Intercept bits, vector 3 (0x00C) and vector 4 (0x010).
const I_INTR: u32 = 1 << 0;
const I_NMI: u32 = 1 << 1;
const I_VINTR: u32 = 1 << 4;
const I_RDPMC: u32 = 1 << 15;
const I_CPUID: u32 = 1 << 18;
const I_INVD: u32 = 1 << 22;
const I_HLT: u32 = 1 << 24;
const I_INVLPGA: u32 = 1 << 26;
const I_IOIO: u32 = 1 << 27;
const I_MSR: u32 = 1 << 28;
const I_TASK_SWITCH: u32 = 1 << 29;
const I_IRET: u32 = 1 << 20;
const I_SHUTDOWN: u32 = 1 << 31;
const I_VMRUN: u32 = 1 << 0;
const I_VMMCALL: u32 = 1 << 1;
const I_VMLOAD: u32 = 1 << 2;
const I_VMSAVE: u32 = 1 << 3;
const I_STGI: u32 = 1 << 4;
const I_CLGI: u32 = 1 << 5;
const I_SKINIT: u32 = 1 << 6;
const I_MONITOR: u32 = 1 << 10;
const I_MWAIT: u32 = 1 << 11;
const I_XSETBV: u32 = 1 << 13;

/// Owner of one VMCB frame.
pub struct Vmcb {
    pa: u64,
}

impl Vmcb {
    /// Allocates a zeroed VMCB.
    pub fn new() -> Option<Vmcb> {
        Some(Vmcb { pa: frames::alloc()? })
    }

    /// Physical address for VMRUN.
    pub fn pa(&self) -> u64 {
        self.pa
    }

    fn ptr(&self, off: usize) -> *mut u8 {
        (self.pa as usize + off) as *mut u8
    }

    fn r64(&self, off: usize) -> u64 {
        // SAFETY: `off` is one of the fixed offsets above (< 4096 - 8) in our
        // own identity-mapped VMCB frame.
        unsafe { core::ptr::read_volatile(self.ptr(off) as *const u64) }
    }

    fn w64(&self, off: usize, v: u64) {
        // SAFETY: as in `r64`.
        unsafe { core::ptr::write_volatile(self.ptr(off) as *mut u64, v) }
    }

    fn w32(&self, off: usize, v: u32) {
        // SAFETY: as in `r64`.
        unsafe { core::ptr::write_volatile(self.ptr(off) as *mut u32, v) }
    }

    fn r32(&self, off: usize) -> u32 {
        // SAFETY: as in `r64`.
        unsafe { core::ptr::read_volatile(self.ptr(off) as *const u32) }
    }

    fn r16(&self, off: usize) -> u16 {
        // SAFETY: as in `r64`.
        unsafe { core::ptr::read_volatile(self.ptr(off) as *const u16) }
    }

    fn r8(&self, off: usize) -> u8 {
        // SAFETY: as in `r64`.
        unsafe { core::ptr::read_volatile(self.ptr(off)) }
    }

    fn w8(&self, off: usize, v: u8) {
        // SAFETY: as in `r64`.
        unsafe { core::ptr::write_volatile(self.ptr(off), v) }
    }

    fn set_segment(&self, off: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
        // SAFETY: a segment record is 16 bytes at a fixed offset in our frame.
        unsafe {
            core::ptr::write_volatile(self.ptr(off) as *mut u16, selector);
            core::ptr::write_volatile(self.ptr(off + 2) as *mut u16, attrib);
            core::ptr::write_volatile(self.ptr(off + 4) as *mut u32, limit);
            core::ptr::write_volatile(self.ptr(off + 8) as *mut u64, base);
        }
    }

    /// Sets intercepts and the flat 32-bit entry state.
    pub fn init_guest(&self, asid: u32, ncr3: u64, iopm: u64, msrpm: u64, rip: u64, rax: u64) {
        self.w32(
            INTERCEPT_MISC1,
            I_INTR
                | I_NMI
                | I_RDPMC
                | I_CPUID
                | I_INVD
                | I_HLT
                | I_INVLPGA
                | I_IOIO
                | I_MSR
                | I_TASK_SWITCH
                | I_SHUTDOWN,
        );
        self.w32(
            INTERCEPT_MISC2,
            I_VMRUN | I_VMMCALL | I_VMLOAD | I_VMSAVE | I_STGI | I_CLGI | I_SKINIT | I_MONITOR | I_MWAIT | I_XSETBV,
        );
        self.w64(IOPM_BASE, iopm);
        self.w64(MSRPM_BASE, msrpm);
        self.w32(GUEST_ASID, asid);
        self.w8(TLB_CONTROL, 1); // flush on first entry
        self.w64(VINTR, 1 << 24); // V_INTR_MASKING: host IF governs physical interrupts
        self.w64(NP_ENABLE, 1);
        self.w64(N_CR3, ncr3);
        self.w32(CLEAN_BITS, 0);
        let code = 0x0C9B; // present, S, code exec/read accessed, D/B, G
        let data = 0x0C93;
        self.set_segment(SEG_CS, 0x08, code, 0xFFFF_FFFF, 0);
        for seg in [SEG_DS, SEG_ES, SEG_SS, SEG_FS, SEG_GS] {
            self.set_segment(seg, 0x10, data, 0xFFFF_FFFF, 0);
        }
        self.set_segment(SEG_GDTR, 0, 0, 0, 0);
        self.set_segment(SEG_IDTR, 0, 0, 0, 0);
        self.set_segment(SEG_TR, 0, 0x8B, 0xFF, 0);
        self.w8(CPL, 0);
        self.w64(EFER, 1 << 12);
        self.w64(CR0, 0x11);
        self.w64(CR3, 0);
        self.w64(CR4, 0);
        self.w64(DR6, 0xFFFF_0FF0);
        self.w64(DR7, 0x400);
        self.w64(RFLAGS, 0x2);
        self.w64(RIP, rip);
        self.w64(RSP, 0);
        self.w64(RAX, rax);
        self.w64(G_PAT, 0x0007_0406_0007_0406);
    }

    /// The state INIT then a start-up IPI leave (AMD APM 2 14.1.3, 16.3):
    /// real mode at CS = `vector` << 8, IP = 0, caches' CR0 bits set,
    /// paging off, nothing pending.
    pub fn start_real_mode(&self, vector: u8) {
        let cs = u16::from(vector) << 8;
        self.set_segment(SEG_CS, cs, 0x009B, 0xFFFF, u64::from(cs) << 4);
        for seg in [SEG_DS, SEG_ES, SEG_SS, SEG_FS, SEG_GS] {
            self.set_segment(seg, 0, 0x0093, 0xFFFF, 0);
        }
        self.set_segment(SEG_GDTR, 0, 0, 0xFFFF, 0);
        self.set_segment(SEG_IDTR, 0, 0, 0xFFFF, 0);
        self.set_segment(SEG_TR, 0, 0x8B, 0xFFFF, 0);
        self.w8(CPL, 0);
        self.w64(EFER, 1 << 12);
        self.w64(CR0, 0x6000_0010);
        self.w64(CR3, 0);
        self.w64(CR4, 0);
        self.w64(DR6, 0xFFFF_0FF0);
        self.w64(DR7, 0x400);
        self.w64(RFLAGS, 0x2);
        self.w64(RIP, 0);
        self.w64(RSP, 0);
        self.w64(RAX, 0);
        self.w64(EVENT_INJ, 0);
        self.w64(INTERRUPT_SHADOW, 0);
        self.set_interrupt_window(false);
        self.w32(CLEAN_BITS, 0);
    }

    /// #VMEXIT code.
    pub fn exit_code(&self) -> u64 {
        self.r64(EXIT_CODE)
    }

    /// EXITINFO1.
    pub fn exit_info1(&self) -> u64 {
        self.r64(EXIT_INFO1)
    }

    /// EXITINFO2.
    pub fn exit_info2(&self) -> u64 {
        self.r64(EXIT_INFO2)
    }

    /// Next sequential RIP (when the CPU has NRIP save).
    pub fn next_rip(&self) -> u64 {
        self.r64(NEXT_RIP)
    }

    /// Guest RIP.
    pub fn rip(&self) -> u64 {
        self.r64(RIP)
    }

    /// Sets guest RIP.
    pub fn set_rip(&self, v: u64) {
        self.w64(RIP, v);
    }

    /// Guest RAX (the VMCB holds it, not the stub).
    pub fn rax(&self) -> u64 {
        self.r64(RAX)
    }

    /// Sets guest RAX.
    pub fn set_rax(&self, v: u64) {
        self.w64(RAX, v);
    }

    /// The next VMRUN flushes the whole TLB (TLB_CONTROL 1, which every
    /// SVM CPU has): at a VMCB's first run, after guest memory was given
    /// back anywhere, and when the vCPU moved to another CPU.
    pub fn request_tlb_flush(&self) {
        self.w8(TLB_CONTROL, 1);
    }

    /// After a run no further flush is needed: the ASID tags this guest's
    /// translations.
    pub fn stop_tlb_flush(&self) {
        self.w8(TLB_CONTROL, 0);
    }

    /// Guest RFLAGS.
    pub fn rflags(&self) -> u64 {
        self.r64(RFLAGS)
    }

    /// Sets guest RFLAGS.
    pub fn set_rflags(&self, v: u64) {
        self.w64(RFLAGS, v);
    }

    /// Guest CR0.
    pub fn cr0(&self) -> u64 {
        self.r64(CR0)
    }

    /// Guest EFER as stored (SVME included).
    pub fn efer(&self) -> u64 {
        self.r64(EFER)
    }

    /// Sets guest EFER as stored.
    pub fn set_efer(&self, v: u64) {
        self.w64(EFER, v);
    }

    /// Guest PAT under nested paging.
    pub fn g_pat(&self) -> u64 {
        self.r64(G_PAT)
    }

    /// Sets guest PAT.
    pub fn set_g_pat(&self, v: u64) {
        self.w64(G_PAT, v);
    }

    /// Guest RSP.
    pub fn rsp(&self) -> u64 {
        self.r64(RSP)
    }

    /// Sets guest RSP.
    pub fn set_rsp(&self, v: u64) {
        self.w64(RSP, v);
    }

    /// Paging and code-segment state for the MMIO instruction decoder.
    /// The guest's current privilege level (the VMCB's CPL byte).
    pub fn cpl(&self) -> u8 {
        self.r8(CPL) & 3
    }

    /// The guest's task register: base and limit of its TSS.
    pub fn tss(&self) -> (u64, u32) {
        let limit = (self.r64(SEG_TR + 4) & 0xFFFF_FFFF) as u32;
        (self.r64(SEG_TR + 8), limit)
    }

    pub fn cpu_mode(&self) -> insn_decode::CpuMode {
        let attrib = self.r16(SEG_CS + 2);
        insn_decode::CpuMode {
            cr0: self.r64(CR0),
            cr3: self.r64(CR3),
            cr4: self.r64(CR4),
            efer: self.r64(EFER),
            cs_long: attrib & (1 << 9) != 0,
            cs_db: attrib & (1 << 10) != 0,
            cs_base: self.r64(SEG_CS + 8),
        }
    }

    /// Whether CS is a 64-bit code segment (attribute bit L).
    pub fn cs_long(&self) -> bool {
        self.r16(SEG_CS + 2) & (1 << 9) != 0
    }

    /// Ends STI/MOV-SS blocking after we skip an instruction.
    pub fn clear_interrupt_shadow(&self) {
        self.w64(INTERRUPT_SHADOW, self.r64(INTERRUPT_SHADOW) & !1);
    }

    /// Queues a hardware exception for the next VMRUN.
    pub fn inject_exception(&self, vector: u8, error: Option<u32>) {
        let mut ev = u64::from(vector) | (3 << 8) | (1 << 31);
        // Real mode pushes no error code.
        if let Some(code) = error.filter(|_| self.r64(CR0) & 1 != 0) {
            ev |= (1 << 11) | (u64::from(code) << 32);
        }
        self.w64(EVENT_INJ, ev);
    }

    /// After an exit: EVENTINJ was consumed by the entry; an event whose
    /// delivery the exit interrupted (EXITINTINFO, APM 15.7.2) is queued
    /// again so it is not lost.
    pub fn requeue_interrupted_event(&self) {
        let info = self.r64(EXIT_INT_INFO);
        self.w64(EVENT_INJ, if info & (1 << 31) != 0 { info } else { 0 });
    }

    /// Whether an event is queued for the next VMRUN.
    pub fn event_pending(&self) -> bool {
        self.r64(EVENT_INJ) & (1 << 31) != 0
    }

    /// Whether the guest is in an STI/MOV-SS interrupt shadow.
    pub fn interrupt_shadow(&self) -> bool {
        self.r64(INTERRUPT_SHADOW) & 1 != 0
    }

    /// Queues an NMI (EVENTINJ type 2, vector 2).
    pub fn inject_nmi(&self) {
        self.w64(EVENT_INJ, 2 | (2 << 8) | (1 << 31));
    }

    /// Intercepts IRET (or stops): how BMonitor learns that the guest's
    /// NMI handler returned, since the CPU keeps NMI blocking to itself.
    pub fn set_iret_intercept(&self, on: bool) {
        let v = self.r32(INTERCEPT_MISC1);
        self.w32(INTERCEPT_MISC1, if on { v | I_IRET } else { v & !I_IRET });
        self.w32(CLEAN_BITS, 0);
    }

    /// Queues external interrupt `vector` (EVENTINJ type 0).
    pub fn inject_interrupt(&self, vector: u8) {
        self.w64(EVENT_INJ, u64::from(vector) | (1 << 31));
    }

    /// With `on`, a virtual interrupt (V_IRQ, highest priority, TPR ignored)
    /// is posted and VINTR intercepted, so the CPU exits as soon as the
    /// guest could take it; BMonitor then injects the real vector.
    pub fn set_interrupt_window(&self, on: bool) {
        const V_IRQ: u64 = 1 << 8;
        const V_PRIO_IGN_TPR: u64 = (0xF << 16) | (1 << 20);
        let vintr = self.r64(VINTR);
        let misc1 = self.r64(INTERCEPT_MISC1) as u32;
        if on {
            self.w64(VINTR, vintr | V_IRQ | V_PRIO_IGN_TPR);
            self.w32(INTERCEPT_MISC1, misc1 | I_VINTR);
        } else {
            self.w64(VINTR, vintr & !(V_IRQ | V_PRIO_IGN_TPR));
            self.w32(INTERCEPT_MISC1, misc1 & !I_VINTR);
        }
    }
}

impl Drop for Vmcb {
    fn drop(&mut self) {
        frames::free(self.pa);
    }
}
