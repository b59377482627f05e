//! A 64-bit IDT for guests that catch exceptions, and fault probes.
//!
//! [`install`] loads an IDT with interrupt gates for the 32 exception
//! vectors. While a probe (`try_*`) runs, a fault in the probed instruction
//! is recorded and execution resumes right after the instruction: each probe
//! stores its resume address in `PROBE_RESUME` before the instruction, and
//! the handler sets the saved RIP to it. Any other exception prints
//! `PANIC: unexpected exception ...` and exits with code 101.
//!
//! [`install_all`] loads all 256 vectors, for guests that take interrupts:
//! every vector is counted ([`count`]) and vectors 32-255 call the hook set
//! with [`set_hook`] (the guest EOIs there, or not). With
//! [`catch_exceptions`] on, vectors 0-31 are counted and passed to the hook
//! as well instead of stopping the guest, so an external interrupt on an
//! exception vector (an 8259 programmed with base 0 or 8) is survivable; a
//! true fault repeating at one RIP still stops the guest (see
//! [`RUNAWAY_REPEATS`]). The stubs of the vectors that have an error code
//! tell an external interrupt (no error code pushed) from the exception by
//! the saved CS: with an error code pushed, the word above it is the RIP.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::hypercall::Flavor;

/// #UD (invalid opcode).
pub const UD: u8 = 6;
/// #GP (general protection).
pub const GP: u8 = 13;

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
    /* An external interrupt on this vector pushes no error code: then
       the second word is CS (0x08), never a RIP (the image is at 1 MiB). */
    cmp qword ptr [rsp + 8], 0x08
    jne 2f
    push 0
2:
    push \vec
    jmp test_guest_isr_common
    .endr
    .irp vec, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255
test_guest_isr_\vec:
    push 0
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
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255
    .quad test_guest_isr_\vec
    .endr
    .text
"#
);

extern "C" {
    static test_guest_isr_table: [u64; VECTORS];
}

/// Vectors in the full IDT ([`install_all`]).
pub const VECTORS: usize = 256;

/// In [`catch_exceptions`] mode, this many exceptions in a row with the
/// same vector at the same RIP count as a fault that cannot be survived:
/// the guest prints a `PANIC` line and exits with code 101.
pub const RUNAWAY_REPEATS: u64 = 100_000;

/// How often each vector was taken since [`install_all`] (probe faults
/// not included).
static COUNTS: [AtomicU64; VECTORS] = [const { AtomicU64::new(0) }; VECTORS];
/// The hook's address as a `fn(u8)` (0 = none).
static HOOK: AtomicUsize = AtomicUsize::new(0);
/// Whether exceptions are counted and passed to the hook (see module doc).
static CATCH: AtomicBool = AtomicBool::new(false);
static LAST_FAULT: AtomicU64 = AtomicU64::new(u64::MAX);
static LAST_FAULT_RIP: AtomicU64 = AtomicU64::new(0);
static FAULT_REPEATS: AtomicU64 = AtomicU64::new(0);

/// Called by the entry stub with the saved registers.
#[no_mangle]
extern "C" fn test_guest_exception(frame: &mut ExceptionFrame) {
    if frame.vector < 32 {
        let resume = PROBE_RESUME.swap(0, Ordering::SeqCst);
        if resume != 0 {
            PROBE_VECTOR.store(frame.vector, Ordering::SeqCst);
            PROBE_ERROR.store(frame.error_code, Ordering::SeqCst);
            frame.rip = resume;
            return;
        }
        if !CATCH.load(Ordering::SeqCst) {
            crate::println!(
                "PANIC: unexpected exception {} (error code {:#x}) at rip {:#x}",
                frame.vector,
                frame.error_code,
                frame.rip
            );
            crate::exit(crate::PANIC_EXIT_CODE)
        }
        let prev_vector = LAST_FAULT.swap(frame.vector, Ordering::SeqCst);
        let prev_rip = LAST_FAULT_RIP.swap(frame.rip, Ordering::SeqCst);
        let repeats = if prev_vector == frame.vector && prev_rip == frame.rip {
            FAULT_REPEATS.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            FAULT_REPEATS.store(0, Ordering::SeqCst);
            0
        };
        if repeats >= RUNAWAY_REPEATS {
            crate::println!(
                "PANIC: exception {} (error code {:#x}) repeats at rip {:#x}",
                frame.vector,
                frame.error_code,
                frame.rip
            );
            crate::exit(crate::PANIC_EXIT_CODE)
        }
    }
    let vector = frame.vector as u8;
    if let Some(c) = COUNTS.get(usize::from(vector)) {
        c.fetch_add(1, Ordering::SeqCst);
    }
    let hook = HOOK.load(Ordering::SeqCst);
    if hook != 0 {
        // SAFETY: HOOK only ever holds 0 or a `fn(u8)` stored by `set_hook`.
        let f: fn(u8) = unsafe { core::mem::transmute::<usize, fn(u8)>(hook) };
        f(vector);
    }
}

/// The IDT: 256 gates of 16 bytes ([`install`] loads the first 32).
struct Idt(UnsafeCell<[u64; 2 * VECTORS]>);

// SAFETY: the guests are single-threaded; the table is only written by
// `install`/`install_all`, which their callers run with interrupts off
// (the gates they rewrite keep their values, so an exception in between
// still finds a valid gate).
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([0; 2 * VECTORS]));

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

/// Fills the first `entries` gates and loads an IDT of that many.
fn load(entries: usize) {
    // SAFETY: the table is a linker-provided array of 256 handler addresses.
    let handlers: [u64; VECTORS] = unsafe { test_guest_isr_table };
    // SAFETY: single-threaded and called with interrupts off; see `Idt`.
    let table = unsafe { &mut *IDT.0.get() };
    for (slot, handler) in table.chunks_exact_mut(2).zip(handlers).take(entries) {
        slot.copy_from_slice(&gate(handler));
    }
    let ptr = DescriptorPointer { limit: (16 * entries - 1) as u16, base: IDT.0.get() as u64 };
    // SAFETY: the IDT is static and every gate within the limit points at a
    // valid handler.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

/// Loads an IDT with interrupt gates (CS 0x08, DPL 0) for vectors 0..32.
pub fn install() {
    load(32);
}

/// Loads an IDT with interrupt gates for all 256 vectors (call with
/// interrupts off). Vectors 32-255 are counted and passed to the hook;
/// exceptions behave as with [`install`] unless [`catch_exceptions`] is on.
pub fn install_all() {
    load(VECTORS);
}

/// Sets the function every counted vector is passed to (after counting),
/// e.g. to EOI the local APIC. Runs with interrupts off, on the stack of
/// whatever was interrupted.
pub fn set_hook(f: fn(u8)) {
    HOOK.store(f as usize, Ordering::SeqCst);
}

/// With `on`, exceptions (vectors 0-31, no probe armed) are counted and
/// passed to the hook instead of stopping the guest (see module doc).
pub fn catch_exceptions(on: bool) {
    CATCH.store(on, Ordering::SeqCst);
}

/// How often `vector` was taken (interrupts and caught exceptions).
pub fn count(vector: u8) -> u64 {
    COUNTS.get(usize::from(vector)).map_or(0, |c| c.load(Ordering::SeqCst))
}

/// The sum of [`count`] over all vectors.
pub fn total() -> u64 {
    COUNTS.iter().map(|c| c.load(Ordering::SeqCst)).sum()
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
