//! A 64-bit IDT for guests that catch exceptions, and fault probes.
//!
//! [`install`] loads an IDT with interrupt gates for the 32 exception
//! vectors. While a probe (`try_*`) runs, a fault in the probed instruction
//! is recorded and execution resumes right after the instruction: each probe
//! stores its resume address in `PROBE_RESUME` before the instruction, and
//! the handler sets the saved RIP to it. Any other exception prints
//! `PANIC: unexpected exception ...` and exits with code 101.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::hypercall::Flavor;

/// #UD (invalid opcode).
pub const UD: u8 = 6;
/// #GP (general protection).
pub const GP: u8 = 13;

const ENTRIES: usize = 32;
const NO_FAULT: u64 = u64::MAX;

/// Where execution continues if the armed probe faults (0 = not armed).
static PROBE_RESUME: AtomicU64 = AtomicU64::new(0);
/// Vector of the last probe fault ([`NO_FAULT`] if none).
static PROBE_VECTOR: AtomicU64 = AtomicU64::new(NO_FAULT);
/// Error code of the last probe fault.
static PROBE_ERROR: AtomicU64 = AtomicU64::new(0);

/// An exception a probe raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The exception vector (e.g. [`UD`], [`GP`]).
    pub vector: u8,
    /// The error code the CPU pushed (0 if none).
    pub error_code: u64,
}

/// Registers saved by the exception entry stub, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    /// Saved R15.
    pub r15: u64,
    /// Saved R14.
    pub r14: u64,
    /// Saved R13.
    pub r13: u64,
    /// Saved R12.
    pub r12: u64,
    /// Saved R11.
    pub r11: u64,
    /// Saved R10.
    pub r10: u64,
    /// Saved R9.
    pub r9: u64,
    /// Saved R8.
    pub r8: u64,
    /// Saved RBP.
    pub rbp: u64,
    /// Saved RDI.
    pub rdi: u64,
    /// Saved RSI.
    pub rsi: u64,
    /// Saved RDX.
    pub rdx: u64,
    /// Saved RCX.
    pub rcx: u64,
    /// Saved RBX.
    pub rbx: u64,
    /// Saved RAX.
    pub rax: u64,
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    /// Faulting RIP (where IRETQ resumes).
    pub rip: u64,
    /// CS.
    pub cs: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RSP.
    pub rsp: u64,
    /// SS.
    pub ss: u64,
}

global_asm!(
    r#"
    .section .text.test_guest_isr, "ax"
    .irp vec, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
test_guest_isr_\vec:
    push 0
    push \vec
    jmp test_guest_isr_common
    .endr
    .irp vec, 8,10,11,12,13,14,17,21,29,30
test_guest_isr_\vec:
    push \vec
    jmp test_guest_isr_common
    .endr

test_guest_isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    mov rbp, rsp
    and rsp, -16
    call test_guest_exception
    mov rsp, rbp
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq

    .section .rodata.test_guest_isr_table, "a"
    .balign 8
    .global test_guest_isr_table
test_guest_isr_table:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad test_guest_isr_\vec
    .endr
    .text
"#
);

extern "C" {
    static test_guest_isr_table: [u64; ENTRIES];
}

/// Called by the entry stub with the saved registers.
#[no_mangle]
extern "C" fn test_guest_exception(frame: &mut ExceptionFrame) {
    let resume = PROBE_RESUME.swap(0, Ordering::SeqCst);
    if resume != 0 {
        PROBE_VECTOR.store(frame.vector, Ordering::SeqCst);
        PROBE_ERROR.store(frame.error_code, Ordering::SeqCst);
        frame.rip = resume;
        return;
    }
    crate::println!(
        "PANIC: unexpected exception {} (error code {:#x}) at rip {:#x}",
        frame.vector,
        frame.error_code,
        frame.rip
    );
    crate::exit(crate::PANIC_EXIT_CODE)
}

/// The IDT: 32 gates of 16 bytes.
struct Idt(UnsafeCell<[u64; 2 * ENTRIES]>);

// SAFETY: the guests are single-threaded; the table is only written by
// `install` while no exception can use it (it is loaded afterwards).
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([0; 2 * ENTRIES]));

/// The operand of LIDT.
#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

fn gate(handler: u64) -> [u64; 2] {
    let lo = (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((handler >> 16) & 0xFFFF) << 48);
    [lo, handler >> 32]
}

/// Loads an IDT with interrupt gates (CS 0x08, DPL 0) for vectors 0..32.
pub fn install() {
    // SAFETY: the table is a linker-provided array of 32 handler addresses.
    let handlers: [u64; ENTRIES] = unsafe { test_guest_isr_table };
    // SAFETY: single-threaded and the table is not yet (re)loaded, so this is
    // the only access; see `Idt`.
    let table = unsafe { &mut *IDT.0.get() };
    for (slot, handler) in table.chunks_exact_mut(2).zip(handlers) {
        slot.copy_from_slice(&gate(handler));
    }
    let ptr = DescriptorPointer { limit: (16 * ENTRIES - 1) as u16, base: IDT.0.get() as u64 };
    // SAFETY: the IDT is static and every gate points at a valid handler.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

/// Loads an IDT with limit 0 and executes INT3: #BP cannot be delivered,
/// nor the #GP and #DF that follow, so the CPU triple-faults. Returns only
/// if the machine keeps running.
pub fn triple_fault() {
    let ptr = DescriptorPointer { limit: 0, base: 0 };
    // SAFETY: deliberately makes every exception undeliverable; the next
    // instruction shuts the (virtual) machine down. If it does not, the
    // code after it touches no state the empty IDT affects.
    unsafe { asm!("lidt [{}]", "int3", in(reg) &ptr, options(nostack)) };
}

fn start_probe() {
    PROBE_VECTOR.store(NO_FAULT, Ordering::SeqCst);
    PROBE_ERROR.store(0, Ordering::SeqCst);
}

fn finish_probe() -> Result<(), Fault> {
    PROBE_RESUME.store(0, Ordering::SeqCst);
    match PROBE_VECTOR.load(Ordering::SeqCst) {
        NO_FAULT => Ok(()),
        v => Err(Fault { vector: v as u8, error_code: PROBE_ERROR.load(Ordering::SeqCst) }),
    }
}

/// Runs one instruction as a probe: arms `PROBE_RESUME` with the address
/// right after it. The caller's asm operands follow the template.
macro_rules! probe_asm {
    ($insn:literal, $($operands:tt)*) => {
        asm!(
            "lea {resume_tmp}, [rip + 2f]",
            "mov qword ptr [rip + {resume}], {resume_tmp}",
            $insn,
            "2:",
            resume = sym PROBE_RESUME,
            resume_tmp = out(reg) _,
            $($operands)*
        )
    };
}

/// RDMSR `msr`: the value, or the fault it raised.
pub fn try_rdmsr(msr: u32) -> Result<u64, Fault> {
    start_probe();
    let (mut lo, mut hi) = (0u32, 0u32);
    // SAFETY: RDMSR only reads; a fault resumes after it (see module doc).
    unsafe { probe_asm!("rdmsr", in("ecx") msr, inout("eax") lo, inout("edx") hi, options(nostack)) };
    finish_probe().map(|()| (u64::from(hi) << 32) | u64::from(lo))
}

/// WRMSR `msr` := `value`, or the fault it raised. Only for MSRs whose
/// writing cannot break this program (unmodelled ones, or EFER with the
/// bits it already has plus a reserved one).
pub fn try_wrmsr(msr: u32, value: u64) -> Result<(), Fault> {
    start_probe();
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: callers write only MSRs that do not affect this program's
    // memory (see above); a fault resumes after the instruction.
    unsafe { probe_asm!("wrmsr", in("ecx") msr, in("eax") lo, in("edx") hi, options(nostack)) };
    finish_probe()
}

/// VMXON with a pointer to a zeroed 8-byte operand; expected to #UD (CR4.VMXE
/// is clear and VMX is not offered).
pub fn try_vmxon() -> Result<(), Fault> {
    let operand = 0u64;
    start_probe();
    // SAFETY: with CR4.VMXE clear VMXON raises #UD and does nothing else.
    unsafe { probe_asm!("vmxon qword ptr [{op}]", op = in(reg) &operand, options(nostack)) };
    finish_probe()
}

/// VMRUN (0F 01 D8) with RAX = 0; expected to #UD (EFER.SVME is clear and
/// SVM is not offered).
pub fn try_vmrun() -> Result<(), Fault> {
    start_probe();
    // SAFETY: with EFER.SVME clear VMRUN raises #UD and does nothing else.
    unsafe { probe_asm!(".byte 0x0f, 0x01, 0xd8", inout("rax") 0u64 => _, options(nostack)) };
    finish_probe()
}

/// Issues hypercall number `nr` with `flavor` (any vendor's instruction) and
/// zero arguments. Returns the status in RAX if the instruction completed,
/// or the fault (#UD when the hypervisor does not take that instruction).
pub fn try_hypercall_insn(flavor: Flavor, nr: u64) -> Result<u64, Fault> {
    start_probe();
    let mut rax = nr;
    match flavor {
        // SAFETY: zero arguments name no buffer, so BMonitor writes no guest
        // memory; a #UD resumes after the instruction.
        Flavor::Vmcall => unsafe {
            probe_asm!(".byte 0x0f, 0x01, 0xc1", inout("rax") rax, inout("rdi") 0u64 => _,
                inout("rsi") 0u64 => _, inout("rdx") 0u64 => _, options(nostack))
        },
        // SAFETY: as above.
        Flavor::Vmmcall => unsafe {
            probe_asm!(".byte 0x0f, 0x01, 0xd9", inout("rax") rax, inout("rdi") 0u64 => _,
                inout("rsi") 0u64 => _, inout("rdx") 0u64 => _, options(nostack))
        },
    }
    finish_probe().map(|()| rax)
}
