//! Boot entry: multiboot2 header, Xen PVH note, and the 32-bit stub that
//! switches to long mode with the first 4 GiB identity mapped, then calls
//! `kmain(magic, info)`.
//!
//! Both loaders enter in flat 32-bit protected mode with paging off.
//! GRUB (multiboot2) leaves the magic in EAX and the info pointer in EBX; a
//! PVH loader (QEMU `-kernel`) leaves the `hvm_start_info` pointer in EBX.

/// Magic `kmain` receives when booted through multiboot2.
pub const MULTIBOOT2_MAGIC: u32 = 0x36D7_6289;
/// Magic `kmain` receives when booted through PVH (the start_info magic).
pub const PVH_MAGIC: u32 = 0x336E_C578;

core::arch::global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
mb2_header_start:
    .long 0xE85250D6
    .long 0
    .long mb2_header_end - mb2_header_start
    .long -(0xE85250D6 + (mb2_header_end - mb2_header_start))
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad _start_pvh
    .balign 4

    .section .text.boot32, "ax"
    .code32
    .global _start_mb2
_start_mb2:
    mov %eax, %ebp
    jmp boot32_common

    .global _start_pvh
_start_pvh:
    mov $0x336EC578, %ebp

boot32_common:
    cli
    cld
    mov %ebx, %esi
    mov $boot_stack_top, %esp

    /* zero the PML4 and PDPT pages */
    mov $boot_pml4, %edi
    xor %eax, %eax
    mov $2048, %ecx
    rep stosl

    /* PML4[0] -> PDPT */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4

    /* PDPT[0..4] -> the four page directories */
    mov $boot_pd, %eax
    or $3, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
1:
    mov %eax, (%edi)
    movl $0, 4(%edi)
    add $4096, %eax
    add $8, %edi
    loop 1b

    /* 2048 x 2 MiB pages: identity map of 0..4 GiB */
    mov $boot_pd, %edi
    mov $0x83, %eax
    mov $2048, %ecx
1:
    mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 1b

    /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3

    /* EFER.LME */
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr

    /* CR0: PG | WP | NE | MP | PE, clear EM */
    mov %cr0, %eax
    or $0x80010023, %eax
    and $0xFFFFFFFB, %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $boot64

    .code64
boot64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %ebp, %edi
    mov %esi, %esi
    xor %ebp, %ebp
    call kmain
2:
    cli
    hlt
    jmp 2b

    .section .rodata
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_ptr:
    .short boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

    .section .bss
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    // A spare page between the page tables and the stack's end, so a deep
    // stack runs into it before it reaches boot_pd.
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 262144
    .global boot_stack_top
boot_stack_top:
"#,
    options(att_syntax)
);
