//! Entry stubs: boot headers (Xen PVH note and multiboot1 header), the
//! 32-bit entry that switches to long mode, and the 64-bit trampoline into
//! Rust.
//!
//! Both protocols enter `_start32` in flat 32-bit protected mode with paging
//! and interrupts off (PVH: EBX = `hvm_start_info`; multiboot1: EAX =
//! 0x2BADB002, EBX = multiboot info). ESP is not trusted. The stub:
//! saves EAX/EBX, zeroes `.bss`, builds identity page tables for the first
//! 4 GiB with 2 MiB pages (tables in `.bss`), enables PAE, sets EFER.LME,
//! loads CR3, enables paging, loads a 64-bit GDT, far-jumps to 64-bit code,
//! sets RSP to the top of a 64 KiB `.bss` stack and calls
//! `test_guest_rust_entry(eax, ebx)` (defined by [`crate::entry!`]).
//!
//! Both headers are emitted here; each linker script keeps one and discards
//! the other (`link-pvh.ld` / `link-mb1.ld`, chosen per binary in build.rs).

use crate::bootinfo::{self, BootInfo};

/// Size of the boot stack in `.bss`.
pub const STACK_SIZE: usize = 64 * 1024;

/// Multiboot1 header flags: page-align modules (0), memory info (1),
/// a.out-kludge address fields valid (16).
pub const MULTIBOOT1_HEADER_FLAGS: u32 = (1 << 0) | (1 << 1) | (1 << 16);

core::arch::global_asm!(
    r#"
    /* ---- Xen PVH ELF note (kept only by link-pvh.ld) ---- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz: entry address, 8 bytes like Linux */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _start32

    /* ---- Multiboot1 header (kept only by link-mb1.ld) ---- */
    .section .multiboot_header, "a"
    .balign 4
multiboot1_header:
    .long 0x1BADB002                            /* magic */
    .long {mb_flags}                            /* flags */
    .long -(0x1BADB002 + {mb_flags})            /* checksum */
    .long multiboot1_header                     /* header_addr */
    .long __image_start                         /* load_addr */
    .long __load_end                            /* load_end_addr */
    .long __bss_end                             /* bss_end_addr */
    .long _start32                              /* entry_addr */

    /* ---- 32-bit entry ---- */
    .section .text.boot32, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    movl %eax, boot_saved_eax
    movl %ebx, boot_saved_ebx

    /* Zero .bss (page tables and stack live there). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    movl $boot_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..4] -> 4 page directories. */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $0x3, %eax
    movl $boot_pdpt, %edi
    movl $4, %ecx
2:
    movl %eax, (%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 2b

    /* 2048 PDEs: 2 MiB pages, present + writable + PS, covering 4 GiB. */
    movl $boot_pd, %edi
    movl $0x83, %eax
    movl $2048, %ecx
3:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 3b

    /* CR4.PAE */
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4

    movl $boot_pml4, %eax
    movl %eax, %cr3

    /* EFER.LME */
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr

    /* CR0: set PG | NE | PE, clear CD | NW (caches on). */
    movl %cr0, %eax
    andl $0x9FFFFFFF, %eax
    orl $0x80000021, %eax
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $_start64

    /* ---- 64-bit trampoline ---- */
    .section .text.boot64, "ax"
    .code64
_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl boot_saved_eax(%rip), %edi
    movl boot_saved_ebx(%rip), %esi
    call test_guest_rust_entry
4:
    cli
    hlt
    jmp 4b

    /* ---- data ---- */
    .section .data.boot, "aw"
    .balign 16
boot_gdt:
    .quad 0                         /* null */
    .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF        /* 0x10: flat data */
boot_gdt_end:
    .balign 4
    .word 0
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .long 0
boot_saved_eax:
    .long 0
boot_saved_ebx:
    .long 0

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
    .balign 16
boot_stack:
    .skip {stack_size}
boot_stack_top:

    .code64
    .text
"#,
    mb_flags = const MULTIBOOT1_HEADER_FLAGS,
    stack_size = const STACK_SIZE,
    options(att_syntax)
);

/// Called by the [`crate::entry!`] trampoline: initialises the UART, parses
/// the boot information from the loader's EAX/EBX, runs `main` and exits
/// with the code it returns.
pub fn start(eax: u32, ebx: u32, main: fn(&BootInfo) -> u32) -> ! {
    crate::serial::init();
    let info = bootinfo::parse(eax, ebx);
    let code = main(&info);
    crate::exit(code)
}
