//! VM entry and exit stubs for VMX. `vmx_enter` loads the guest registers
//! and launches/resumes; the VMCS host RIP points at `vmx_exit_entry`, which
//! stores them back and returns 0 from `vmx_enter`. A failed VMLAUNCH or
//! VMRESUME (VMfail) returns 1.

use crate::virt::GuestRegs;

core::arch::global_asm!(
    r#"
    .section .text
    .global vmx_enter
vmx_enter:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    push %rdi
    mov $0x6C14, %rax
    vmwrite %rsp, %rax
    cmp $0, %rsi
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
    mov 0(%rdi), %rax
    mov 56(%rdi), %rdi
    jne 1f
    vmlaunch
    jmp 2f
1:
    vmresume
2:
    pop %rdi
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    mov $1, %eax
    ret

    .global vmx_exit_entry
vmx_exit_entry:
    push %rax
    mov 8(%rsp), %rax
    popq 0(%rax)
    mov %rcx, 8(%rax)
    mov %rdx, 16(%rax)
    mov %rbx, 24(%rax)
    mov %rbp, 40(%rax)
    mov %rsi, 48(%rax)
    mov %rdi, 56(%rax)
    mov %r8, 64(%rax)
    mov %r9, 72(%rax)
    mov %r10, 80(%rax)
    mov %r11, 88(%rax)
    mov %r12, 96(%rax)
    mov %r13, 104(%rax)
    mov %r14, 112(%rax)
    mov %r15, 120(%rax)
    pop %rdi
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    xor %eax, %eax
    ret
"#,
    options(att_syntax)
);

extern "C" {
    fn vmx_enter(regs: *mut GuestRegs, launched: u64) -> u64;
    fn vmx_exit_entry();
}

/// Address the VMCS host RIP field must hold.
pub fn exit_entry_address() -> u64 {
    vmx_exit_entry as *const () as u64
}

/// Enters the current VMCS's guest; `Err(())` on VMfail.
pub fn enter(regs: &mut GuestRegs, launched: bool) -> Result<(), ()> {
    // SAFETY: a VMCS is current (VMPTRLD) with host state pointing at
    // `vmx_exit_entry`; the stub preserves callee-saved registers and `regs`
    // outlives the call.
    let failed = unsafe { vmx_enter(regs, u64::from(launched)) };
    if failed == 0 {
        Ok(())
    } else {
        Err(())
    }
}
