//! VMRUN stub for SVM. Host state the CPU does not switch (FS/GS/TR/LDTR
//! hidden parts, syscall MSRs) is kept with VMSAVE/VMLOAD around VMRUN.

use crate::virt::GuestRegs;

core::arch::global_asm!(
    r#"
    .section .text
    .global svm_enter
    /* rdi = regs, rsi = guest VMCB pa, rdx = host save area pa */
svm_enter:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    push %rdi
    push %rdx
    push %rsi
    mov %rdx, %rax
    vmsave %rax
    mov (%rsp), %rax
    mov 8(%rdi), %rcx
    mov 16(%rdi), %rdx
    mov 24(%rdi), %rbx
    mov 40(%rdi), %rbp
    mov 48(%rdi), %rsi
    mov 64(%rdi), %r8
    mov 72(%rdi), %r9
    mov 80(%rdi), %r10
    mov 88(%rdi), %r11
    mov 96(%rdi), %r12
    mov 104(%rdi), %r13
    mov 112(%rdi), %r14
    mov 120(%rdi), %r15
    mov 56(%rdi), %rdi
    vmload %rax
    vmrun %rax
    vmsave %rax
    push %rdi
    mov 24(%rsp), %rdi
    mov %rcx, 8(%rdi)
    mov %rdx, 16(%rdi)
    mov %rbx, 24(%rdi)
    mov %rbp, 40(%rdi)
    mov %rsi, 48(%rdi)
    mov %r8, 64(%rdi)
    mov %r9, 72(%rdi)
    mov %r10, 80(%rdi)
    mov %r11, 88(%rdi)
    mov %r12, 96(%rdi)
    mov %r13, 104(%rdi)
    mov %r14, 112(%rdi)
    mov %r15, 120(%rdi)
    popq 56(%rdi)
    pop %rax
    pop %rax
    vmload %rax
    pop %rdi
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    ret
"#,
    options(att_syntax)
);

extern "C" {
    fn svm_enter(regs: *mut GuestRegs, vmcb: u64, host_save: u64);
}

/// Runs the guest of `vmcb` until the next #VMEXIT, with the global
/// interrupt flag handled so a host timer tick ends the run.
pub fn run(regs: &mut GuestRegs, vmcb: u64, host_save: u64) {
    // SAFETY: `vmcb` and `host_save` are frames owned by the caller's vCPU /
    // CPU; interrupts are held by CLGI until VMRUN and again after #VMEXIT
    // until STGI with IF clear. The stub preserves callee-saved registers.
    unsafe {
        core::arch::asm!("clgi", "sti");
        svm_enter(regs, vmcb, host_save);
        core::arch::asm!("cli", "stgi");
    }
}

/// Lets a pending host interrupt (the scheduler tick) be taken now.
pub fn take_pending_interrupt() {
    // SAFETY: one instruction window with interrupts enabled; the handlers
    // only acknowledge the APIC.
    unsafe { core::arch::asm!("sti", "nop", "cli") };
}
