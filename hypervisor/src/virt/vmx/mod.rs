//! Intel VT-x backend: VMXON, one VMCS per vCPU, EPT, unrestricted guest,
//! VPID, the preemption timer for time slices, I/O and MSR bitmaps.

mod entry;

use super::{DebugRegs, EntryState, Exit, FxArea, GuestRegs, Vcpu};
use crate::mm::frames;
use core::sync::atomic::{AtomicU64, Ordering};
use x86::msr::{self, rdmsr, wrmsr};
use x86::vmx::vmcs::{control, guest, host, ro};

/// Capabilities read once at enable time.
struct Caps {
    revision: u32,
    pin: u32,
    proc1: u32,
    proc2: u32,
    exit: u32,
    entry: u32,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4_fixed0: u64,
    cr4_fixed1: u64,
    preemption_shift: u32,
    /// IA32_VMX_EPT_VPID_CAP: which INVEPT/INVVPID types exist.
    ept_vpid_cap: u64,
}

static REVISION: AtomicU64 = AtomicU64::new(0);
static CTLS: spin::Once<Caps> = spin::Once::new();
/// I/O bitmaps A and B (all ones: every port exits) and the MSR bitmap are
/// shared by all vCPUs: the policy is the same for every VM.
static BITMAPS: spin::Once<(u64, u64, u64)> = spin::Once::new();

// Control bits (SDM vol. 3, ch. 25).
const PIN_EXT_INT_EXITING: u32 = 1 << 0;
const PIN_NMI_EXITING: u32 = 1 << 3;
const PIN_VIRTUAL_NMIS: u32 = 1 << 5;
const PIN_PREEMPTION_TIMER: u32 = 1 << 6;
const PROC_INT_WINDOW: u32 = 1 << 2;
const PROC_HLT_EXITING: u32 = 1 << 7;
const PROC_RDPMC_EXITING: u32 = 1 << 11;
const PROC_MWAIT_EXITING: u32 = 1 << 10;
const PROC_IO_BITMAPS: u32 = 1 << 25;
const PROC_MSR_BITMAPS: u32 = 1 << 28;
const PROC_MONITOR_EXITING: u32 = 1 << 29;
const PROC_SECONDARY: u32 = 1 << 31;
const PROC2_EPT: u32 = 1 << 1;
const PROC2_RDTSCP: u32 = 1 << 3;
const PROC2_VPID: u32 = 1 << 5;
const PROC2_UNRESTRICTED: u32 = 1 << 7;
const EXIT_HOST_64: u32 = 1 << 9;
const EXIT_ACK_INT: u32 = 1 << 15;
const EXIT_SAVE_PAT: u32 = 1 << 18;
const EXIT_LOAD_PAT: u32 = 1 << 19;
const EXIT_SAVE_EFER: u32 = 1 << 20;
const EXIT_LOAD_EFER: u32 = 1 << 21;
const ENTRY_IA32E: u32 = 1 << 9;
const ENTRY_LOAD_PAT: u32 = 1 << 14;
const ENTRY_LOAD_EFER: u32 = 1 << 15;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_VMXE: u64 = 1 << 13;
/// CR4 bits a guest may set: those of features its CPUID shows (VME
/// through OSXMMEXCPT always; FSGSBASE, PCIDE, SMEP, SMAP when the host has
/// them, as the CPUID policy passes them on). Writes touching any other bit
/// exit, and setting one raises #GP as on a CPU without the feature (VMXE:
/// no nested virtualization; OSXSAVE: XSAVE is hidden).
fn cr4_guest_allowed() -> u64 {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    let mut allowed = 0x7FF;
    for (present, bit) in [
        (leaf7.ebx & 1 != 0, 16),
        (leaf1.ecx & (1 << 17) != 0, 17),
        (leaf7.ebx & (1 << 7) != 0, 20),
        (leaf7.ebx & (1 << 20) != 0, 21),
    ] {
        if present {
            allowed |= 1u64 << bit;
        }
    }
    allowed
}
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// MSRs the guest reads and writes directly: their state is either in the
/// VMCS (FS/GS base, SYSENTER) or switched by `switch_in`/`switch_out`.
const PASSTHROUGH_MSRS: [u32; 10] = [
    0x174,
    0x175,
    0x176, // SYSENTER_CS/ESP/EIP
    0xC000_0081,
    0xC000_0082,
    0xC000_0083,
    0xC000_0084, // STAR, LSTAR, CSTAR, SFMASK
    0xC000_0100,
    0xC000_0101,
    0xC000_0102, // FS/GS base, KERNEL_GS_BASE
];
/// The syscall MSRs the CPU shares between guests under VMX.
const SWITCHED_MSRS: [u32; 5] = [0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0102];

fn vmread(field: u32) -> u64 {
    // SAFETY: a VMCS is current whenever a vCPU method runs; VMREAD of a
    // valid field encoding has no side effects. Failure reads as 0.
    unsafe { x86::bits64::vmx::vmread(field).unwrap_or(0) }
}

fn vmwrite(field: u32, value: u64) {
    // SAFETY: as in `vmread`; the field encodings are the SDM's.
    let _ = unsafe { x86::bits64::vmx::vmwrite(field, value) };
}

/// Fits wanted control bits to what the CPU allows; returns the value and
/// whether every wanted bit could be set.
fn adjust(msr_no: u32, want: u32) -> (u32, bool) {
    // SAFETY: VMX capability MSRs exist once CPUID reports VMX.
    let v = unsafe { rdmsr(msr_no) };
    let (must, may) = (v as u32, (v >> 32) as u32);
    let value = (want | must) & may;
    (value, value & want == want)
}

/// Enters VMX operation on an application processor, with the boot
/// CPU's capabilities (`enable` ran there first): its own VMXON region.
pub fn enable_ap(cpu: &crate::arch::x86_64::percpu::PerCpu) -> Result<(), &'static str> {
    let caps = CTLS.get().ok_or("VMX is not enabled on the boot CPU")?;
    // SAFETY: the boot CPU found VMX; an AP of the same node has the same MSRs.
    unsafe {
        unlock_feature_control()?;
        vmxon(caps, cpu)
    }
}

/// Sets IA32_FEATURE_CONTROL's lock and VMX-outside-SMX bits if firmware
/// left it unlocked; an error if it is locked with VMX off.
///
/// # Safety
/// The CPU must support VMX (the MSR exists).
unsafe fn unlock_feature_control() -> Result<(), &'static str> {
    // SAFETY: the caller checked VMX support.
    unsafe {
        let fc = rdmsr(msr::IA32_FEATURE_CONTROL);
        if fc & 1 == 0 {
            wrmsr(msr::IA32_FEATURE_CONTROL, fc | 1 | 4);
        } else if fc & 4 == 0 {
            return Err("VMX disabled by firmware (IA32_FEATURE_CONTROL locked)");
        }
    }
    Ok(())
}

/// Makes CR0/CR4 satisfy VMX's fixed bits and executes VMXON on this CPU
/// with a fresh region, which stays allocated for the node's lifetime and
/// is recorded in `cpu`.
///
/// # Safety
/// The CPU must support VMX with `caps`' fixed bits and revision, and the
/// feature-control MSR must allow VMXON.
unsafe fn vmxon(caps: &Caps, cpu: &crate::arch::x86_64::percpu::PerCpu) -> Result<(), &'static str> {
    // SAFETY: as the caller vouches; the frame is ours alone.
    unsafe {
        let cr0: u64;
        let cr4: u64;
        core::arch::asm!("mov {}, cr0", out(reg) cr0);
        core::arch::asm!("mov {}, cr4", out(reg) cr4);
        let cr0 = (cr0 | caps.cr0_fixed0) & caps.cr0_fixed1;
        let cr4 = ((cr4 | CR4_VMXE) | caps.cr4_fixed0) & caps.cr4_fixed1;
        core::arch::asm!("mov cr0, {}", in(reg) cr0);
        core::arch::asm!("mov cr4, {}", in(reg) cr4);
        let region = frames::alloc().ok_or("no memory for VMXON region")?;
        core::ptr::write_volatile(region as *mut u32, caps.revision);
        x86::bits64::vmx::vmxon(region).map_err(|_| "VMXON failed")?;
        cpu.vmxon_region.store(region, Ordering::Relaxed);
    }
    Ok(())
}

/// Enters VMX operation on this CPU.
pub fn enable() -> Result<(), &'static str> {
    // SAFETY: CPUID reported VMX; these MSRs and CR4.VMXE exist. VMXON gets a
    // fresh zeroed frame that stays allocated for the node's lifetime.
    unsafe {
        unlock_feature_control()?;
        let basic = rdmsr(msr::IA32_VMX_BASIC);
        let true_ctls = basic & (1 << 55) != 0;
        let (pin_msr, proc_msr, exit_msr, entry_msr) = if true_ctls {
            (
                msr::IA32_VMX_TRUE_PINBASED_CTLS,
                msr::IA32_VMX_TRUE_PROCBASED_CTLS,
                msr::IA32_VMX_TRUE_EXIT_CTLS,
                msr::IA32_VMX_TRUE_ENTRY_CTLS,
            )
        } else {
            (
                msr::IA32_VMX_PINBASED_CTLS,
                msr::IA32_VMX_PROCBASED_CTLS,
                msr::IA32_VMX_EXIT_CTLS,
                msr::IA32_VMX_ENTRY_CTLS,
            )
        };
        let required = PIN_EXT_INT_EXITING | PIN_NMI_EXITING | PIN_PREEMPTION_TIMER;
        // Virtual NMIs when offered: without them an injected NMI would
        // stay blocked for good (IRET does not unblock NMIs when NMI
        // exiting is on, SDM 3C 26.3), so guests get no NMIs at all.
        let (pin, _) = adjust(pin_msr, required | PIN_VIRTUAL_NMIS);
        if pin & required != required {
            return Err("VMX preemption timer not supported");
        }
        let want_proc = PROC_HLT_EXITING | PROC_RDPMC_EXITING | PROC_IO_BITMAPS | PROC_MSR_BITMAPS | PROC_SECONDARY;
        // Interrupt-window exiting is set per entry, so only check it is allowed.
        if (rdmsr(proc_msr) >> 32) as u32 & PROC_INT_WINDOW == 0 {
            return Err("VMX lacks interrupt-window exiting");
        }
        let (proc1, ok) = adjust(proc_msr, want_proc | PROC_MWAIT_EXITING | PROC_MONITOR_EXITING);
        if !ok && (proc1 & want_proc) != want_proc {
            return Err("VMX lacks I/O/MSR bitmaps, HLT exiting or secondary controls");
        }
        // Secondary controls exist only if allowed-1 bit 63 of the primary MSR.
        if rdmsr(proc_msr) >> 63 == 0 {
            return Err("VMX lacks secondary controls (no EPT)");
        }
        let (proc2, ok) =
            adjust(msr::IA32_VMX_PROCBASED_CTLS2, PROC2_EPT | PROC2_UNRESTRICTED | PROC2_VPID | PROC2_RDTSCP);
        if !ok && proc2 & (PROC2_EPT | PROC2_UNRESTRICTED) != (PROC2_EPT | PROC2_UNRESTRICTED) {
            return Err("VMX lacks EPT or unrestricted guest");
        }
        let want_exit = EXIT_HOST_64 | EXIT_ACK_INT | EXIT_SAVE_EFER | EXIT_LOAD_EFER | EXIT_SAVE_PAT | EXIT_LOAD_PAT;
        let (exit, ok) = adjust(exit_msr, want_exit);
        if !ok {
            return Err("VMX lacks EFER/PAT save and load on exit");
        }
        let (entry, ok) = adjust(entry_msr, ENTRY_LOAD_EFER | ENTRY_LOAD_PAT);
        if !ok {
            return Err("VMX lacks EFER/PAT load on entry");
        }
        let caps = Caps {
            revision: (basic & 0x7FFF_FFFF) as u32,
            pin,
            proc1,
            proc2,
            exit,
            entry: entry & !ENTRY_IA32E,
            cr0_fixed0: rdmsr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(msr::IA32_VMX_CR4_FIXED1),
            preemption_shift: (rdmsr(msr::IA32_VMX_MISC) & 0x1F) as u32,
            ept_vpid_cap: rdmsr(msr::IA32_VMX_EPT_VPID_CAP),
        };
        // Host CR0/CR4 must satisfy the fixed bits in VMX operation.
        vmxon(&caps, crate::arch::x86_64::percpu::current())?;
        REVISION.store(u64::from(caps.revision), Ordering::Relaxed);
        CTLS.call_once(|| caps);

        let io_a = frames::alloc().ok_or("no memory for I/O bitmap")?;
        let io_b = frames::alloc().ok_or("no memory for I/O bitmap")?;
        let msr_bitmap = frames::alloc().ok_or("no memory for MSR bitmap")?;
        core::ptr::write_bytes(io_a as *mut u8, 0xFF, 4096);
        core::ptr::write_bytes(io_b as *mut u8, 0xFF, 4096);
        core::ptr::write_bytes(msr_bitmap as *mut u8, 0xFF, 4096);
        let bitmap = core::slice::from_raw_parts_mut(msr_bitmap as *mut u8, 4096);
        for m in PASSTHROUGH_MSRS {
            // Read-low 0x000, read-high 0x400, write-low 0x800, write-high 0xC00.
            let (base, bit) = if m >= 0xC000_0000 { (0x400usize, (m - 0xC000_0000) as usize) } else { (0, m as usize) };
            for off in [base, base + 0x800] {
                if let Some(byte) = bitmap.get_mut(off + bit / 8) {
                    *byte &= !(1 << (bit % 8));
                }
            }
        }
        BITMAPS.call_once(|| (io_a, io_b, msr_bitmap));
    }
    Ok(())
}

/// Access rights for a flat 32-bit code / data segment (VMCS format).
const AR_CODE32: u64 = 0xC09B;
const AR_DATA32: u64 = 0xC093;
const AR_TSS_BUSY: u64 = 0x8B;
const AR_UNUSABLE: u64 = 1 << 16;

/// One VT-x vCPU: its VMCS and the state the CPU does not keep in it.
pub struct VmxVcpu {
    vmcs: u64,
    regs: GuestRegs,
    launched: bool,
    /// The physical CPU it last ran on.
    last_cpu: usize,
    syscall_msrs: [u64; 5],
    fxsave: alloc::boxed::Box<FxArea>,
    debug_regs: DebugRegs,
}

impl VmxVcpu {
    /// Builds a VMCS for a guest entering at `entry` in flat 32-bit mode.
    pub fn new(id: u16, eptp: u64, entry: EntryState) -> Result<VmxVcpu, &'static str> {
        let caps = CTLS.get().ok_or("VMX not enabled")?;
        let &(io_a, io_b, msr_bitmap) = BITMAPS.get().ok_or("VMX not enabled")?;
        let vmcs = frames::alloc().ok_or("no memory for VMCS")?;
        // SAFETY: fresh frame owned by this vCPU; VMCLEAR/VMPTRLD on it.
        unsafe {
            core::ptr::write_volatile(vmcs as *mut u32, caps.revision);
            x86::bits64::vmx::vmclear(vmcs).map_err(|_| "VMCLEAR failed")?;
            x86::bits64::vmx::vmptrld(vmcs).map_err(|_| "VMPTRLD failed")?;
        }
        let vcpu = VmxVcpu {
            vmcs,
            regs: GuestRegs { rax: entry.rax, rbx: entry.rbx, rsi: entry.rsi, ..GuestRegs::default() },
            launched: false,
            last_cpu: usize::MAX,
            syscall_msrs: [0; 5],
            fxsave: FxArea::new_default(),
            debug_regs: Default::default(),
        };
        // Controls.
        vmwrite(control::PINBASED_EXEC_CONTROLS, u64::from(caps.pin));
        vmwrite(control::PRIMARY_PROCBASED_EXEC_CONTROLS, u64::from(caps.proc1));
        vmwrite(control::SECONDARY_PROCBASED_EXEC_CONTROLS, u64::from(caps.proc2));
        vmwrite(control::VMEXIT_CONTROLS, u64::from(caps.exit));
        vmwrite(control::VMENTRY_CONTROLS, u64::from(caps.entry));
        vmwrite(control::EXCEPTION_BITMAP, 0);
        vmwrite(control::IO_BITMAP_A_ADDR_FULL, io_a);
        vmwrite(control::IO_BITMAP_B_ADDR_FULL, io_b);
        vmwrite(control::MSR_BITMAPS_ADDR_FULL, msr_bitmap);
        vmwrite(control::EPTP_FULL, eptp);
        // VPIDs 1..=0xFFFF; a VPID or an EPT root frame may have served an
        // earlier VM, so drop every cached translation before this one runs.
        vmwrite(control::VPID, u64::from(id % 0xFFFF) + 1);
        flush_cached_translations(caps.ept_vpid_cap);
        vmwrite(control::CR3_TARGET_COUNT, 0);
        // CR0/CR4: bits the guest may not own are masked and shadowed. With
        // unrestricted guest, PE and PG are the guest's.
        let cr0_forced = caps.cr0_fixed0 & !(CR0_PE | CR0_PG);
        let cr0_mask = cr0_forced | !caps.cr0_fixed1;
        let cr4_mask = caps.cr4_fixed0 | !caps.cr4_fixed1;
        let guest_cr0 = 0x11u64; // PE | ET
        vmwrite(control::CR0_GUEST_HOST_MASK, cr0_mask & 0xFFFF_FFFF);
        vmwrite(control::CR0_READ_SHADOW, guest_cr0);
        vmwrite(control::CR4_GUEST_HOST_MASK, cr4_mask | !cr4_guest_allowed());
        vmwrite(control::CR4_READ_SHADOW, 0);
        vmwrite(guest::CR0, (guest_cr0 | cr0_forced) & caps.cr0_fixed1);
        vmwrite(guest::CR3, 0);
        vmwrite(guest::CR4, caps.cr4_fixed0);
        // Flat 32-bit segments.
        write_segments(
            Segment { selector: 0x08, base: 0, limit: 0xFFFF_FFFF, ar: AR_CODE32 },
            Segment { selector: 0x10, base: 0, limit: 0xFFFF_FFFF, ar: AR_DATA32 },
        );
        write_system_segments(0, 0xFF);
        write_start(entry.rip);
        vmwrite(guest::IA32_SYSENTER_CS, 0);
        vmwrite(guest::IA32_SYSENTER_ESP, 0);
        vmwrite(guest::IA32_SYSENTER_EIP, 0);
        vmwrite(guest::IA32_DEBUGCTL_FULL, 0);
        vmwrite(guest::IA32_PAT_FULL, 0x0007_0406_0007_0406);
        vmwrite(guest::IA32_EFER_FULL, 0);
        vmwrite(guest::LINK_PTR_FULL, u64::MAX);
        clear_pending_events();
        write_host_state();
        // Not left active on this CPU: whichever CPU runs the vCPU loads it
        // (VMPTRLD) in `switch_in` and clears it again in `switch_out`.
        // SAFETY: the VMCS is this vCPU's own, current on this CPU.
        unsafe { x86::bits64::vmx::vmclear(vmcs).map_err(|_| "VMCLEAR failed")? };
        Ok(vcpu)
    }

    /// An event (interrupt, exception, NMI) whose delivery an exit
    /// interrupted is queued again for the next entry, as SDM 28.2.4 asks:
    /// otherwise an interrupt that hit, say, an EPT violation on the guest's
    /// stack would be lost.
    fn requeue_interrupted_event(&mut self) {
        let info = vmread(ro::IDT_VECTORING_INFO);
        if info & (1 << 31) == 0 {
            return;
        }
        if info & (1 << 11) != 0 {
            vmwrite(control::VMENTRY_EXCEPTION_ERR_CODE, vmread(ro::IDT_VECTORING_ERR_CODE));
        }
        // Software interrupts and exceptions need the instruction length.
        if matches!((info >> 8) & 7, 4..=6) {
            vmwrite(control::VMENTRY_INSTRUCTION_LEN, vmread(ro::VMEXIT_INSTRUCTION_LEN));
        }
        vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, info & !(1 << 12));
    }

    fn handle_cr_access(&mut self) -> Exit {
        let qual = vmread(ro::EXIT_QUALIFICATION);
        let cr = qual & 0xF;
        let access = (qual >> 4) & 3;
        let gpr = ((qual >> 8) & 0xF) as u8;
        if access != 0 {
            return Exit::Unhandled { code: 0x1000 | qual };
        }
        let Some(caps) = CTLS.get() else { return Exit::Unhandled { code: 28 } };
        let value = if gpr == 4 { vmread(guest::RSP) } else { self.regs.get(gpr) };
        let value = if self.long_mode() { value } else { value & 0xFFFF_FFFF };
        match cr {
            0 => {
                if value >> 32 != 0 || (value & CR0_PG != 0 && value & CR0_PE == 0) {
                    self.inject_exception(13, Some(0));
                    return Exit::Handled;
                }
                let forced = caps.cr0_fixed0 & !(CR0_PE | CR0_PG);
                vmwrite(control::CR0_READ_SHADOW, value);
                vmwrite(guest::CR0, (value | forced) & caps.cr0_fixed1);
                // Paging toggled by an intercepted write: keep LMA in step.
                let efer = vmread(guest::IA32_EFER_FULL);
                let entry = vmread(control::VMENTRY_CONTROLS);
                if efer & EFER_LME != 0 && value & CR0_PG != 0 {
                    vmwrite(guest::IA32_EFER_FULL, efer | EFER_LMA);
                    vmwrite(control::VMENTRY_CONTROLS, entry | u64::from(ENTRY_IA32E));
                } else if value & CR0_PG == 0 {
                    vmwrite(guest::IA32_EFER_FULL, efer & !EFER_LMA);
                    vmwrite(control::VMENTRY_CONTROLS, entry & !u64::from(ENTRY_IA32E));
                }
            }
            4 => {
                if value & !cr4_guest_allowed() != 0 || value & !caps.cr4_fixed1 != 0 {
                    self.inject_exception(13, Some(0));
                    return Exit::Handled;
                }
                vmwrite(control::CR4_READ_SHADOW, value);
                vmwrite(guest::CR4, value | caps.cr4_fixed0);
            }
            _ => return Exit::Unhandled { code: 0x1000 | qual },
        }
        self.skip_instruction();
        Exit::Handled
    }

    fn decode_exit(&mut self) -> Exit {
        let reason = vmread(ro::EXIT_REASON);
        if reason & (1 << 31) != 0 {
            return Exit::EntryFailed { detail: reason & 0xFFFF };
        }
        let qual = vmread(ro::EXIT_QUALIFICATION);
        match reason & 0xFFFF {
            0 => Exit::Preempted, // NMI: just a reschedule point
            1 => {
                // A host interrupt (a kick), acknowledged on exit: it ends
                // the run and needs only its EOI.
                crate::arch::x86_64::percpu::note_kick();
                crate::arch::x86_64::apic::eoi();
                Exit::Preempted
            }
            2 => Exit::TripleFault,
            7 => {
                self.request_interrupt_window(false);
                Exit::InterruptWindow
            }
            10 => Exit::Cpuid,
            11 => Exit::InvalidOpcode { what: "GETSEC" },
            12 => Exit::Halt,
            15 => Exit::Rdpmc,
            13 => {
                // INVD: the guest has no cache of its own to drop; do nothing.
                self.skip_instruction();
                Exit::Handled
            }
            18 => Exit::Hypercall,
            19..=27 | 50 | 53 | 59 => Exit::InvalidOpcode { what: "VMX instruction" },
            28 => self.handle_cr_access(),
            30 => Exit::Io {
                port: (qual >> 16) as u16,
                size: ((qual & 7) + 1) as u8,
                write: qual & 8 == 0,
                string: qual & 16 != 0,
            },
            31 => Exit::Msr { write: false },
            32 => Exit::Msr { write: true },
            36 => Exit::InvalidOpcode { what: "MWAIT" },
            39 => Exit::InvalidOpcode { what: "MONITOR" },
            48 => Exit::NestedFault {
                gpa: vmread(ro::GUEST_PHYSICAL_ADDR_FULL),
                write: qual & 2 != 0,
                fetch: qual & 4 != 0,
            },
            52 => Exit::Preempted,
            55 => Exit::InvalidOpcode { what: "XSETBV" },
            other => Exit::Unhandled { code: other },
        }
    }
}

/// A guest segment register's hidden state.
struct Segment {
    selector: u64,
    base: u64,
    limit: u64,
    ar: u64,
}

/// Loads CS with `code` and SS, DS, ES, FS and GS with `data`.
fn write_segments(code: Segment, data: Segment) {
    for (sel, base, limit, ar, seg) in [
        (guest::CS_SELECTOR, guest::CS_BASE, guest::CS_LIMIT, guest::CS_ACCESS_RIGHTS, &code),
        (guest::SS_SELECTOR, guest::SS_BASE, guest::SS_LIMIT, guest::SS_ACCESS_RIGHTS, &data),
        (guest::DS_SELECTOR, guest::DS_BASE, guest::DS_LIMIT, guest::DS_ACCESS_RIGHTS, &data),
        (guest::ES_SELECTOR, guest::ES_BASE, guest::ES_LIMIT, guest::ES_ACCESS_RIGHTS, &data),
        (guest::FS_SELECTOR, guest::FS_BASE, guest::FS_LIMIT, guest::FS_ACCESS_RIGHTS, &data),
        (guest::GS_SELECTOR, guest::GS_BASE, guest::GS_LIMIT, guest::GS_ACCESS_RIGHTS, &data),
    ] {
        vmwrite(sel, seg.selector);
        vmwrite(base, seg.base);
        vmwrite(limit, seg.limit);
        vmwrite(ar, seg.ar);
    }
}

/// An unusable LDTR, a busy TSS of `tr_limit` at 0, and the GDTR and IDTR
/// at 0 with `table_limit` (0xFFFF after INIT, as on a CPU).
fn write_system_segments(table_limit: u64, tr_limit: u64) {
    vmwrite(guest::LDTR_SELECTOR, 0);
    vmwrite(guest::LDTR_BASE, 0);
    vmwrite(guest::LDTR_LIMIT, table_limit);
    vmwrite(guest::LDTR_ACCESS_RIGHTS, AR_UNUSABLE);
    vmwrite(guest::TR_SELECTOR, 0);
    vmwrite(guest::TR_BASE, 0);
    vmwrite(guest::TR_LIMIT, tr_limit);
    vmwrite(guest::TR_ACCESS_RIGHTS, AR_TSS_BUSY);
    vmwrite(guest::GDTR_BASE, 0);
    vmwrite(guest::GDTR_LIMIT, table_limit);
    vmwrite(guest::IDTR_BASE, 0);
    vmwrite(guest::IDTR_LIMIT, table_limit);
}

/// Where the guest starts: `rip`, no stack, RFLAGS and DR7 at reset.
fn write_start(rip: u64) {
    vmwrite(guest::DR7, 0x400);
    vmwrite(guest::RSP, 0);
    vmwrite(guest::RIP, rip);
    vmwrite(guest::RFLAGS, 0x2);
}

/// No STI/MOV-SS shadow, active, no pending debug exception.
fn clear_pending_events() {
    vmwrite(guest::INTERRUPTIBILITY_STATE, 0);
    vmwrite(guest::ACTIVITY_STATE, 0);
    vmwrite(guest::PENDING_DBG_EXCEPTIONS, 0);
}

/// INVEPT and INVVPID, all contexts, where the CPU offers them: a new VM
/// must never see translations cached for an earlier one.
fn flush_cached_translations(cap: u64) {
    let desc = [0u64; 2];
    // SAFETY: the instructions only invalidate TLB entries; each is issued
    // only when IA32_VMX_EPT_VPID_CAP reports it and its all-context type.
    unsafe {
        if cap & (1 << 20) != 0 && cap & (1 << 26) != 0 {
            core::arch::asm!("invept {t}, [{d}]", t = in(reg) 2u64, d = in(reg) desc.as_ptr());
        }
        if cap & (1 << 32) != 0 && cap & (1 << 42) != 0 {
            core::arch::asm!("invvpid {t}, [{d}]", t = in(reg) 2u64, d = in(reg) desc.as_ptr());
        }
    }
}

/// Host state: where a VM exit lands. The same for every VMCS on one CPU,
/// different per CPU (GDT, TSS, GS base), so written at every switch-in.
fn write_host_state() {
    let (cr0, cr3, cr4): (u64, u64, u64);
    // SAFETY: reading control registers and MSRs has no side effects.
    let (efer, pat) = unsafe {
        core::arch::asm!("mov {}, cr0", out(reg) cr0);
        core::arch::asm!("mov {}, cr3", out(reg) cr3);
        core::arch::asm!("mov {}, cr4", out(reg) cr4);
        (rdmsr(msr::IA32_EFER), rdmsr(msr::IA32_PAT))
    };
    use crate::arch::x86_64::{gdt, idt};
    vmwrite(host::CR0, cr0);
    vmwrite(host::CR3, cr3);
    vmwrite(host::CR4, cr4);
    vmwrite(host::CS_SELECTOR, u64::from(gdt::KERNEL_CS));
    for sel in [host::SS_SELECTOR, host::DS_SELECTOR, host::ES_SELECTOR] {
        vmwrite(sel, u64::from(gdt::KERNEL_DS));
    }
    vmwrite(host::FS_SELECTOR, 0);
    vmwrite(host::GS_SELECTOR, 0);
    vmwrite(host::TR_SELECTOR, u64::from(gdt::TSS_SEL));
    vmwrite(host::FS_BASE, 0);
    vmwrite(host::GS_BASE, crate::arch::x86_64::percpu::gs_base());
    vmwrite(host::TR_BASE, gdt::tss_base());
    vmwrite(host::GDTR_BASE, gdt::gdt_base());
    vmwrite(host::IDTR_BASE, idt::idt_base());
    vmwrite(host::IA32_SYSENTER_CS, 0);
    vmwrite(host::IA32_SYSENTER_ESP, 0);
    vmwrite(host::IA32_SYSENTER_EIP, 0);
    vmwrite(host::IA32_EFER_FULL, efer);
    vmwrite(host::IA32_PAT_FULL, pat);
    vmwrite(host::RIP, entry::exit_entry_address());
}

impl Vcpu for VmxVcpu {
    fn run(&mut self, slice_tsc: u64) -> Exit {
        let shift = CTLS.get().map_or(0, |c| c.preemption_shift);
        vmwrite(guest::VMX_PREEMPTION_TIMER_VALUE, (slice_tsc >> shift).clamp(1, u64::from(u32::MAX)));
        match entry::enter(&mut self.regs, self.launched) {
            Ok(()) => {
                self.launched = true;
                self.requeue_interrupted_event();
                self.decode_exit()
            }
            Err(()) => Exit::EntryFailed { detail: 0x1_0000 | vmread(ro::VM_INSTRUCTION_ERROR) },
        }
    }

    fn regs(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn skip_instruction(&mut self) {
        // Stepping over an instruction also ends STI/MOV-SS blocking.
        self.advance_rip(vmread(ro::VMEXIT_INSTRUCTION_LEN));
    }

    fn inject_exception(&mut self, vector: u8, error: Option<u32>) {
        let mut info = u64::from(vector) | (3 << 8) | (1 << 31);
        // Real mode pushes no error code; VM entry refuses one there.
        let protected = vmread(guest::CR0) & CR0_PE != 0;
        if let Some(code) = error.filter(|_| protected) {
            info |= 1 << 11;
            vmwrite(control::VMENTRY_EXCEPTION_ERR_CODE, u64::from(code));
        }
        vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, info);
    }

    fn can_inject_interrupt(&self) -> bool {
        vmread(guest::RFLAGS) & (1 << 9) != 0
            && vmread(guest::INTERRUPTIBILITY_STATE) & 3 == 0
            && vmread(control::VMENTRY_INTERRUPTION_INFO_FIELD) & (1 << 31) == 0
    }

    fn inject_interrupt(&mut self, vector: u8) {
        // Type 0 (external interrupt), valid.
        vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, u64::from(vector) | (1 << 31));
    }

    fn nmi_window_open(&mut self) -> bool {
        let virtual_nmis = CTLS.get().is_some_and(|c| c.pin & PIN_VIRTUAL_NMIS != 0);
        // Interruptibility: STI (0), MOV SS (1), (virtual-)NMI blocking (3).
        virtual_nmis
            && vmread(guest::INTERRUPTIBILITY_STATE) & 0b1011 == 0
            && vmread(control::VMENTRY_INTERRUPTION_INFO_FIELD) & (1 << 31) == 0
    }

    fn inject_nmi(&mut self) {
        // Valid, type 2 (NMI), vector 2.
        vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, (1 << 31) | (2 << 8) | 2);
    }

    fn request_interrupt_window(&mut self, on: bool) {
        let proc1 = vmread(control::PRIMARY_PROCBASED_EXEC_CONTROLS);
        let want = if on { proc1 | u64::from(PROC_INT_WINDOW) } else { proc1 & !u64::from(PROC_INT_WINDOW) };
        if want != proc1 {
            vmwrite(control::PRIMARY_PROCBASED_EXEC_CONTROLS, want);
        }
    }

    fn long_mode(&self) -> bool {
        vmread(control::VMENTRY_CONTROLS) & u64::from(ENTRY_IA32E) != 0
            && vmread(guest::CS_ACCESS_RIGHTS) & (1 << 13) != 0
    }

    fn interrupts_enabled(&self) -> bool {
        vmread(guest::RFLAGS) & (1 << 9) != 0
    }

    fn paging_enabled(&self) -> bool {
        vmread(guest::CR0) & CR0_PG != 0
    }

    fn efer(&self) -> u64 {
        vmread(guest::IA32_EFER_FULL)
    }

    fn set_efer(&mut self, value: u64) {
        let lma = value & EFER_LME != 0 && self.paging_enabled();
        let value = if lma { value | EFER_LMA } else { value & !EFER_LMA };
        vmwrite(guest::IA32_EFER_FULL, value);
        let entry = vmread(control::VMENTRY_CONTROLS);
        let entry = if lma { entry | u64::from(ENTRY_IA32E) } else { entry & !u64::from(ENTRY_IA32E) };
        vmwrite(control::VMENTRY_CONTROLS, entry);
    }

    fn pat(&self) -> u64 {
        vmread(guest::IA32_PAT_FULL)
    }

    fn set_pat(&mut self, value: u64) {
        vmwrite(guest::IA32_PAT_FULL, value);
    }

    fn switch_in(&mut self) {
        // SAFETY: this vCPU's VMCS is clear (at creation and at every
        // switch-out), so it is active on no CPU; loading it makes it current
        // here. The syscall MSRs and FXSAVE area are our own copies.
        unsafe {
            let _ = x86::bits64::vmx::vmptrld(self.vmcs);
            self.launched = false;
            write_host_state();
            let cpu = crate::arch::x86_64::percpu::current_index();
            let flush_all = crate::arch::x86_64::percpu::take_flush_due();
            if flush_all || self.last_cpu != cpu {
                // Guest memory was given back somewhere, or this vCPU's
                // cached translations here may predate guest page-table
                // changes it made on another CPU.
                if let Some(caps) = CTLS.get() {
                    flush_cached_translations(caps.ept_vpid_cap);
                }
            }
            self.last_cpu = cpu;
            for (m, v) in SWITCHED_MSRS.iter().zip(self.syscall_msrs.iter()) {
                wrmsr(*m, *v);
            }
            core::arch::asm!("fxrstor64 [{}]", in(reg) self.fxsave.0.as_ptr());
        }
        self.debug_regs.restore();
    }

    fn switch_out(&mut self) {
        // SAFETY: reading MSRs the guest wrote directly; FXSAVE into our area.
        unsafe {
            for (m, v) in SWITCHED_MSRS.iter().zip(self.syscall_msrs.iter_mut()) {
                *v = rdmsr(*m);
            }
            core::arch::asm!("fxsave64 [{}]", in(reg) self.fxsave.0.as_mut_ptr());
            // Written back to memory and inactive: any CPU may load it next.
            let _ = x86::bits64::vmx::vmclear(self.vmcs);
        }
        self.launched = false;
        self.debug_regs.save();
    }

    fn cpu_mode(&self) -> insn_decode::CpuMode {
        let ar = vmread(guest::CS_ACCESS_RIGHTS);
        insn_decode::CpuMode {
            cr0: vmread(guest::CR0),
            cr3: vmread(guest::CR3),
            cr4: vmread(guest::CR4),
            efer: vmread(guest::IA32_EFER_FULL),
            cs_long: ar & (1 << 13) != 0,
            cs_db: ar & (1 << 14) != 0,
            cs_base: vmread(guest::CS_BASE),
        }
    }

    fn cpl(&self) -> u8 {
        // SDM 3C 27.3.1.5 / 28.3.1.5: CPL is SS.DPL (access rights bits 6:5).
        ((vmread(guest::SS_ACCESS_RIGHTS) >> 5) & 3) as u8
    }

    fn tss(&self) -> (u64, u32) {
        (vmread(guest::TR_BASE), (vmread(guest::TR_LIMIT) & 0xFFFF_FFFF) as u32)
    }

    fn rip(&self) -> u64 {
        vmread(guest::RIP)
    }

    fn advance_rip(&mut self, len: u64) {
        vmwrite(guest::RIP, vmread(guest::RIP).wrapping_add(len));
        let intr = vmread(guest::INTERRUPTIBILITY_STATE);
        if intr & 3 != 0 {
            vmwrite(guest::INTERRUPTIBILITY_STATE, intr & !3);
        }
    }

    fn rflags(&self) -> u64 {
        vmread(guest::RFLAGS)
    }

    fn set_rflags(&mut self, value: u64) {
        vmwrite(guest::RFLAGS, value);
    }

    fn rsp(&self) -> u64 {
        vmread(guest::RSP)
    }

    fn set_rsp(&mut self, value: u64) {
        vmwrite(guest::RSP, value);
    }

    fn start_at_sipi(&mut self, vector: u8) {
        let Some(caps) = CTLS.get() else { return };
        let cs = u64::from(vector) << 8;
        write_segments(
            Segment { selector: cs, base: cs << 4, limit: 0xFFFF, ar: 0x9B },
            Segment { selector: 0, base: 0, limit: 0xFFFF, ar: 0x93 },
        );
        write_system_segments(0xFFFF, 0xFFFF);
        // CR0 after INIT: CD | NW | ET, paging and protection off.
        let guest_cr0 = 0x6000_0010u64;
        let cr0_forced = caps.cr0_fixed0 & !(CR0_PE | CR0_PG);
        vmwrite(control::CR0_READ_SHADOW, guest_cr0);
        vmwrite(guest::CR0, (guest_cr0 | cr0_forced) & caps.cr0_fixed1);
        vmwrite(guest::CR3, 0);
        vmwrite(control::CR4_READ_SHADOW, 0);
        vmwrite(guest::CR4, caps.cr4_fixed0);
        self.set_efer(0);
        write_start(0);
        clear_pending_events();
        vmwrite(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0);
        self.request_interrupt_window(false);
        // EDX holds the processor signature after INIT.
        self.regs = GuestRegs { rdx: 0x600, ..GuestRegs::default() };
        self.syscall_msrs = [0; 5];
    }

    fn corrupt_state(&mut self) {
        // CR0.PG without CR0.PE fails the VM-entry guest-state checks.
        vmwrite(guest::CR0, vmread(guest::CR0) | CR0_PG);
        vmwrite(guest::CR0, vmread(guest::CR0) & !CR0_PE);
    }
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        // SAFETY: VMCLEAR flushes the VMCS before its frame is reused.
        let _ = unsafe { x86::bits64::vmx::vmclear(self.vmcs) };
        frames::free(self.vmcs);
    }
}
