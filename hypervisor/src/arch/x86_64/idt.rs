//! Interrupt descriptor table: every CPU exception prints a full report and
//! powers the node off (never a silent hang); vector 0x20 is the scheduler
//! tick used under SVM.

use super::gdt::KERNEL_CS;
use core::mem::size_of;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicU64, Ordering};

/// Vector of the local APIC timer tick.
pub const TIMER_VECTOR: u8 = 0x20;
/// Vector of the cross-CPU kick (an IPI from another physical CPU).
pub const KICK_VECTOR: u8 = 0x21;
/// Vector of APIC spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// Ticks seen; the scheduler under SVM reads it for statistics.
pub static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    .section .text
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exc_stub_\v:
    .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    push $0
    .endif
    push $\v
    jmp exc_common
    .endr

exc_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    call exception_report
1:
    cli
    hlt
    jmp 1b

    .global timer_stub
timer_stub:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    call timer_interrupt
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    .global kick_stub
kick_stub:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    call kick_interrupt
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    .global spurious_stub
spurious_stub:
    iretq

    .section .rodata
    .balign 8
    .global exc_stub_table
exc_stub_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\v
    .endr
"#,
    options(att_syntax)
);

extern "C" {
    static exc_stub_table: [u64; 32];
    fn timer_stub();
    fn kick_stub();
    fn spurious_stub();
}

/// Registers as the exception stub leaves them on the stack.
#[repr(C)]
pub struct ExceptionFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    flags: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const EMPTY: Gate =
        Gate { offset_low: 0, selector: 0, ist: 0, flags: 0, offset_mid: 0, offset_high: 0, reserved: 0 };

    fn interrupt(handler: u64, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist,
            flags: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

static mut IDT: [Gate; 256] = [Gate::EMPTY; 256];

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Base of the IDT, for the VMCS host-state area.
pub fn idt_base() -> u64 {
    addr_of!(IDT) as u64
}

/// Fills and loads the IDT; called once per CPU at boot.
pub fn init() {
    // SAFETY: single-threaded boot, before interrupts are enabled; the stub
    // table is defined in the assembly above.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        let stubs = &*addr_of!(exc_stub_table);
        for (vector, (gate, stub)) in idt.iter_mut().zip(stubs.iter()).enumerate() {
            let ist = if vector == 8 { 1 } else { 0 };
            *gate = Gate::interrupt(*stub, ist);
        }
        if let Some(g) = idt.get_mut(TIMER_VECTOR as usize) {
            *g = Gate::interrupt(timer_stub as *const () as u64, 0);
        }
        if let Some(g) = idt.get_mut(KICK_VECTOR as usize) {
            *g = Gate::interrupt(kick_stub as *const () as u64, 0);
        }
        if let Some(g) = idt.get_mut(SPURIOUS_VECTOR as usize) {
            *g = Gate::interrupt(spurious_stub as *const () as u64, 0);
        }
    }
    load();
}

/// Loads the (already filled) IDT on this CPU: application processors
/// share the boot CPU's.
pub fn load() {
    let ptr = IdtPointer { limit: (size_of::<[Gate; 256]>() - 1) as u16, base: idt_base() };
    // SAFETY: the IDT is a static filled by `init` before any AP starts.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr) };
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 FP",
    "alignment check",
    "machine check",
    "SIMD FP",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

#[no_mangle]
extern "C" fn exception_report(frame: &ExceptionFrame) -> ! {
    let name = EXCEPTION_NAMES.get(frame.vector as usize).copied().unwrap_or("unknown");
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2) };
    let w = crate::arch::x86_64::serial::write_fmt_unlocked;
    w(format_args!(
        "\nHYPERVISOR FAULT: vector {} ({}) error={:#x} rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} cr2={:#x}\n",
        frame.vector, name, frame.error, frame.rip, frame.cs, frame.rflags, frame.rsp, cr2
    ));
    w(format_args!(
        "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}\n",
        frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rsi, frame.rdi, frame.rbp, frame.r8
    ));
    w(format_args!(
        "  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}\n  r13={:#018x} r14={:#018x} r15={:#018x}\n",
        frame.r9, frame.r10, frame.r11, frame.r12, frame.r13, frame.r14, frame.r15
    ));
    super::power::fail_stop()
}

#[no_mangle]
extern "C" fn timer_interrupt() {
    TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
    super::apic::eoi();
}

/// A kick: only its arrival matters (it ended a guest's run or an idle
/// HLT); counted and acknowledged.
#[no_mangle]
extern "C" fn kick_interrupt() {
    super::percpu::note_kick();
    super::apic::eoi();
}
