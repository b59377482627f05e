//! The vCPU interface. Each backend (VMX, SVM) handles what is its own
//! (VMCS/VMCB fields, event injection, control-register shadowing) and turns
//! every other exit into one arch-neutral [`Exit`] that `exits/` handles.

pub mod exits;
pub mod outcome;
pub mod svm;
pub mod vmx;

use alloc::boxed::Box;
pub use outcome::{Flow, StopReason};

/// General-purpose registers the entry/exit stubs save, in x86 encoding
/// order (so `get(n)` is register number `n`); `rsp` lives in the VMCS/VMCB.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestRegs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rsp_slot: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl GuestRegs {
    /// Register by x86 encoding (0 = RAX ... 15 = R15); RSP reads as 0.
    pub fn get(&self, n: u8) -> u64 {
        match n {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            15 => self.r15,
            _ => 0,
        }
    }
}

/// Why the guest stopped running, in arch-neutral terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// IN/OUT to `port`; `string` for INS/OUTS.
    Io { port: u16, size: u8, write: bool, string: bool },
    /// RDMSR (`write` false) or WRMSR; number in ECX, value in EDX:EAX.
    Msr { write: bool },
    /// CPUID; leaf in EAX, subleaf in ECX.
    Cpuid,
    /// RDPMC; counter index in ECX.
    Rdpmc,
    /// VMCALL / VMMCALL.
    Hypercall,
    /// HLT.
    Halt,
    /// The guest can take an interrupt now (the window we asked for opened).
    InterruptWindow,
    /// Access to a guest-physical address with no mapping.
    NestedFault { gpa: u64, write: bool, fetch: bool },
    /// The time slice ended (preemption timer or host tick).
    Preempted,
    /// The backend handled the exit itself (e.g. a shadowed CR write).
    Handled,
    /// The guest triple-faulted (shutdown).
    TripleFault,
    /// The CPU refused to enter the guest; `detail` is backend-specific.
    EntryFailed { detail: u64 },
    /// The guest used an instruction BMonitor does not offer (VMX/SVM
    /// instructions, MONITOR/MWAIT, XSETBV): it gets #UD.
    InvalidOpcode { what: &'static str },
    /// An exit no handler knows; the VM is stopped.
    Unhandled { code: u64 },
}

/// One virtual CPU, whichever the backend.
pub trait Vcpu: Send {
    /// Enters the guest for at most `slice_tsc` TSC ticks of guest time.
    fn run(&mut self, slice_tsc: u64) -> Exit;
    /// The saved general-purpose registers.
    fn regs(&mut self) -> &mut GuestRegs;
    /// Moves RIP past the instruction that exited.
    fn skip_instruction(&mut self);
    /// Queues a hardware exception for the next entry (the error code is
    /// dropped in real mode, where the CPU pushes none).
    fn inject_exception(&mut self, vector: u8, error: Option<u32>);
    /// Whether an external interrupt would be taken at the next entry:
    /// RFLAGS.IF set, no STI/MOV-SS shadow, and no event already queued
    /// (a new exception or an event re-injected after an exit goes first).
    fn can_inject_interrupt(&self) -> bool;
    /// Queues external interrupt `vector` for the next entry; call only
    /// when [`Vcpu::can_inject_interrupt`] says so.
    fn inject_interrupt(&mut self, vector: u8);
    /// Asks for an [`Exit::InterruptWindow`] as soon as the guest can take
    /// an interrupt (VMX interrupt-window exiting, SVM virtual interrupt),
    /// or stops asking.
    fn request_interrupt_window(&mut self, on: bool);
    /// Whether an NMI can be injected at the next entry: the guest is not
    /// still handling the last one (no IRET since), and no other event is
    /// queued. False on a CPU without virtual NMIs.
    fn nmi_window_open(&mut self) -> bool;
    /// Queues an NMI (vector 2) for the next entry; the guest blocks NMIs
    /// until its handler's IRET.
    fn inject_nmi(&mut self);
    /// Whether the guest is executing 64-bit code (decides register width).
    fn long_mode(&self) -> bool;
    /// Guest RFLAGS.IF.
    fn interrupts_enabled(&self) -> bool;
    /// Guest CR0.PG.
    fn paging_enabled(&self) -> bool;
    /// Guest-visible EFER.
    fn efer(&self) -> u64;
    /// Sets EFER (already validated by the caller against what we offer).
    fn set_efer(&mut self, value: u64);
    /// Guest PAT.
    fn pat(&self) -> u64;
    /// Sets guest PAT (validated by the caller).
    fn set_pat(&mut self, value: u64);
    /// Makes this vCPU the one the CPU runs (load VMCS, syscall MSRs).
    fn switch_in(&mut self);
    /// Saves state the CPU shares between guests before another runs.
    fn switch_out(&mut self);
    /// Test-only: makes the next entry fail (see DEBUG_CORRUPT_STATE).
    fn corrupt_state(&mut self);
    /// A start-up IPI reached this vCPU (an application processor of its
    /// VM, after INIT): it restarts in real mode at `vector` × 4 KiB
    /// (CS = vector << 8, IP = 0) with the rest of its state as INIT leaves
    /// it (Intel SDM 3A 9.1.1; AMD APM 2 14.1.3). Call between `switch_in`
    /// and `run`.
    fn start_at_sipi(&mut self, vector: u8);
    /// Paging and code-segment state, to walk the guest's page tables and
    /// decode the instruction that touched an MMIO window.
    fn cpu_mode(&self) -> insn_decode::CpuMode;
    /// The guest's current privilege level (0-3), which decides who may
    /// make privileged hypercalls.
    fn cpl(&self) -> u8;
    /// Base (linear) and limit of the guest's TSS, for its I/O bitmap.
    fn tss(&self) -> (u64, u32);
    /// Guest RIP.
    fn rip(&self) -> u64;
    /// Moves RIP by `len` bytes past an instruction we emulated.
    fn advance_rip(&mut self, len: u64);
    /// Guest RFLAGS.
    fn rflags(&self) -> u64;
    /// Sets guest RFLAGS (emulated CMP/TEST on MMIO).
    fn set_rflags(&mut self, value: u64);
    /// Guest RSP (kept by the VMCS/VMCB, not in [`GuestRegs`]).
    fn rsp(&self) -> u64;
    /// Sets guest RSP.
    fn set_rsp(&mut self, value: u64);
}

/// Which virtualization extension runs guests on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Vmx,
    Svm,
}

impl Backend {
    /// Name used in the log (`backend: vmx`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vmx => "vmx",
            Backend::Svm => "svm",
        }
    }

    /// Nested page table format this backend needs.
    pub fn table_format(self) -> nested_paging::Format {
        match self {
            Backend::Vmx => nested_paging::Format::Ept,
            Backend::Svm => nested_paging::Format::Npt,
        }
    }
}

/// FXSAVE area: x87/SSE state is switched per VM (the hypervisor itself is
/// soft-float, so only guests use it).
#[repr(C, align(16))]
pub struct FxArea(pub [u8; 512]);

impl FxArea {
    /// Reset state: FCW 0x37F, MXCSR 0x1F80.
    pub fn new_default() -> Box<FxArea> {
        let mut fx = Box::new(FxArea([0; 512]));
        if let Some(b) = fx.0.get_mut(0..2) {
            b.copy_from_slice(&0x37Fu16.to_le_bytes());
        }
        if let Some(b) = fx.0.get_mut(24..28) {
            b.copy_from_slice(&0x1F80u32.to_le_bytes());
        }
        fx
    }
}

/// Debug registers the CPU does not switch on VM entry/exit (DR0-DR3 on
/// both backends, DR6 on VMX): saved and restored when VMs change, so one
/// VM's breakpoints never fire in another.
#[derive(Clone, Copy, Debug, Default)]
pub struct DebugRegs([u64; 5]);

impl DebugRegs {
    /// Reads DR0-DR3 and DR6.
    pub fn save(&mut self) {
        let [d0, d1, d2, d3, d6] = &mut self.0;
        // SAFETY: reading debug registers at CPL 0 has no side effects.
        unsafe {
            core::arch::asm!("mov {}, dr0", out(reg) * d0);
            core::arch::asm!("mov {}, dr1", out(reg) * d1);
            core::arch::asm!("mov {}, dr2", out(reg) * d2);
            core::arch::asm!("mov {}, dr3", out(reg) * d3);
            core::arch::asm!("mov {}, dr6", out(reg) * d6);
        }
    }

    /// Loads DR0-DR3 and DR6; the host keeps DR7 disabled, so nothing fires
    /// in the hypervisor.
    pub fn restore(&self) {
        let [d0, d1, d2, d3, d6] = self.0;
        let d6 = if d6 == 0 { 0xFFFF_0FF0 } else { d6 };
        // SAFETY: writing breakpoint addresses and DR6 at CPL 0; host DR7
        // has every breakpoint disabled.
        unsafe {
            core::arch::asm!("mov dr0, {}", in(reg) d0);
            core::arch::asm!("mov dr1, {}", in(reg) d1);
            core::arch::asm!("mov dr2, {}", in(reg) d2);
            core::arch::asm!("mov dr3, {}", in(reg) d3);
            core::arch::asm!("mov dr6, {}", in(reg) d6);
        }
    }
}

/// Entry state every guest starts with: flat 32-bit protected mode, paging
/// off, as the PVH and multiboot1 specifications require.
#[derive(Clone, Copy, Debug)]
pub struct EntryState {
    pub rip: u64,
    pub rax: u64,
    pub rbx: u64,
    /// The Linux 32-bit boot protocol's boot_params pointer (0 otherwise).
    pub rsi: u64,
}

/// Detects VMX or SVM from CPUID and enables it on this CPU.
pub fn enable_backend() -> Result<Backend, &'static str> {
    let cpuid = raw_cpuid::CpuId::new();
    let has_vmx = cpuid.get_feature_info().is_some_and(|f| f.has_vmx());
    let has_svm = cpuid.get_extended_processor_and_feature_identifiers().is_some_and(|f| f.has_svm());
    if has_vmx {
        vmx::enable()?;
        Ok(Backend::Vmx)
    } else if has_svm {
        svm::enable()?;
        Ok(Backend::Svm)
    } else {
        Err("CPU offers neither VT-x (VMX) nor AMD-V (SVM)")
    }
}

/// Enables the backend the boot CPU uses on an application processor.
pub fn enable_ap(backend: Backend, cpu: &crate::arch::x86_64::percpu::PerCpu) -> Result<(), &'static str> {
    match backend {
        Backend::Vmx => vmx::enable_ap(cpu),
        Backend::Svm => svm::enable_ap(cpu),
    }
}

/// Creates a vCPU for a VM on the enabled backend.
pub fn create_vcpu(
    backend: Backend,
    id: u16,
    root_pointer: u64,
    entry: EntryState,
) -> Result<Box<dyn Vcpu>, &'static str> {
    match backend {
        Backend::Vmx => Ok(Box::new(vmx::VmxVcpu::new(id, root_pointer, entry)?)),
        Backend::Svm => Ok(Box::new(svm::SvmVcpu::new(id, root_pointer, entry)?)),
    }
}
