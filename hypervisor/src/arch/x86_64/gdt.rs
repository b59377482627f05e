//! The hypervisor's own GDT and TSS. VMX needs a non-null host TR, and the
//! double-fault handler gets its own stack (IST1) so a stack overflow is
//! still reported.

use core::mem::size_of;
use core::ptr::addr_of;

/// Kernel code selector (host CS on VM exit).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// Task state segment selector (host TR on VM exit).
pub const TSS_SEL: u16 = 0x18;

#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct IstStack([u8; 16384]);

static mut DOUBLE_FAULT_STACK: IstStack = IstStack([0; 16384]);

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: size_of::<Tss>() as u16,
};

static mut GDT: [u64; 5] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0, 0];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Base address of the running CPU's GDT (SGDT), for the VMCS host-state
/// area: each CPU has its own.
pub fn gdt_base() -> u64 {
    let mut ptr = DescriptorPointer { limit: 0, base: 0 };
    // SAFETY: SGDT only stores the GDTR into `ptr`.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) core::ptr::addr_of_mut!(ptr)) };
    ptr.base
}

/// Base address of the running CPU's TSS, decoded from its descriptor at
/// [`TSS_SEL`] in its GDT, for the VMCS host-state area.
pub fn tss_base() -> u64 {
    let gdt = gdt_base();
    let at = gdt + u64::from(TSS_SEL);
    // SAFETY: every CPU's GDT (the boot CPU's static or an AP's own frame)
    // holds a 16-byte TSS descriptor at TSS_SEL, loaded before any VM runs.
    let (low, high) =
        unsafe { (core::ptr::read_volatile(at as *const u64), core::ptr::read_volatile((at + 8) as *const u64)) };
    ((low >> 16) & 0xFF_FFFF) | (((low >> 56) & 0xFF) << 24) | ((high & 0xFFFF_FFFF) << 32)
}

/// Loads the GDT and TSS; called once per CPU at boot.
pub fn init() {
    let tss_addr = addr_of!(TSS) as u64;
    let limit = (size_of::<Tss>() - 1) as u64;
    let low = (limit & 0xFFFF)
        | ((tss_addr & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((tss_addr >> 24) & 0xFF) << 56);
    let high = tss_addr >> 32;
    // SAFETY: single-threaded boot; these statics are written once here
    // before any interrupt or VM exit can use them.
    unsafe {
        let stack_top = addr_of!(DOUBLE_FAULT_STACK) as u64 + size_of::<IstStack>() as u64;
        (*core::ptr::addr_of_mut!(TSS)).ist[0] = stack_top;
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        gdt[3] = low;
        gdt[4] = high;
        let ptr = DescriptorPointer { limit: (size_of::<[u64; 5]>() - 1) as u16, base: addr_of!(GDT) as u64 };
        load(&ptr);
    }
}

/// Loads a GDT laid out like the boot CPU's, reloads the segment
/// registers from it and loads its TSS into TR.
///
/// # Safety
/// `ptr` must describe a GDT with [`KERNEL_CS`], [`KERNEL_DS`] and an
/// available TSS at [`TSS_SEL`], which stays in place for good.
unsafe fn load(ptr: &DescriptorPointer) {
    // SAFETY: the caller vouches for the table; the far return reloads CS.
    unsafe {
        core::arch::asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tr:x}",
            ptr = in(reg) ptr,
            cs = in(reg) KERNEL_CS as u64,
            tmp = out(reg) _,
            ds = in(reg) KERNEL_DS as u64,
            tr = in(reg) TSS_SEL as u64,
        );
    }
}

/// Frames an application processor's descriptor area takes: its GDT and
/// TSS in the first, its double-fault (IST1) stack in the other two.
pub const AP_AREA_FRAMES: usize = 3;

/// Builds and loads an application processor's own GDT and TSS in `area`
/// ([`AP_AREA_FRAMES`] zeroed, identity-mapped frames only this CPU uses):
/// the same selectors as the boot CPU's, with a TSS of its own (a TSS is
/// busy on one CPU at a time) whose IST1 is its own double-fault stack.
pub fn init_ap(area: u64) {
    const GDT_OFF: u64 = 0;
    const TSS_OFF: u64 = 64;
    let tss_addr = area + TSS_OFF;
    let limit = (size_of::<Tss>() - 1) as u64;
    let low = (limit & 0xFFFF)
        | ((tss_addr & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((tss_addr >> 24) & 0xFF) << 56);
    let gdt: [u64; 5] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, low, tss_addr >> 32];
    let ptr = DescriptorPointer { limit: (size_of::<[u64; 5]>() - 1) as u16, base: area + GDT_OFF };
    // SAFETY: `area` is this CPU's own zeroed, identity-mapped frames (the
    // caller allocated them for it); the GDT and TSS written there are
    // never moved or freed, and the selectors match the boot CPU's.
    unsafe {
        for (i, d) in gdt.iter().enumerate() {
            core::ptr::write_volatile((area + GDT_OFF + 8 * i as u64) as *mut u64, *d);
        }
        let tss = tss_addr as *mut Tss;
        core::ptr::write_unaligned(
            tss,
            Tss {
                reserved0: 0,
                rsp: [0; 3],
                reserved1: 0,
                ist: [area + AP_AREA_FRAMES as u64 * 4096, 0, 0, 0, 0, 0, 0],
                reserved2: 0,
                reserved3: 0,
                iomap_base: size_of::<Tss>() as u16,
            },
        );
        load(&ptr);
    }
}
