//! Starting the application processors (APs) the MADT lists: a real-mode
//! trampoline copied to a free page below 1 MiB takes each AP from the
//! INIT-SIPI-SIPI sequence to long mode on the boot CPU's page tables,
//! with its own stack, GDT and TSS, and calls the entry the caller registered (which
//! enables VMX or SVM on that CPU and parks it until it has work).

use super::bootinfo::BootInfo;
use super::percpu::{self, MAX_CPUS};
use super::{apic, time};
use core::sync::atomic::{AtomicU64, Ordering};

/// Stack each AP gets (frames, identity mapped): as deep as the boot
/// CPU's, since it runs the same exit handlers.
const AP_STACK_FRAMES: usize = 64;
/// Each AP's own GDT, TSS and double-fault stack (`gdt::AP_AREA_FRAMES`),
/// right above its stack in the same allocation.
const AP_FRAMES: usize = AP_STACK_FRAMES + super::gdt::AP_AREA_FRAMES;
/// How long an AP has to report after its SIPIs.
const AP_START_MS: u64 = 200;

// Offsets of the fields the boot CPU fills in, from `ap_tramp_start`.
const D_GDT_PTR: usize = 0x100; // u16 limit, u32 base
const D_PM_FAR: usize = 0x108; // u32 offset, u16 selector
const D_LM_FAR: usize = 0x110; // u32 offset, u16 selector
const D_CR3: usize = 0x118;
const D_STACK: usize = 0x120;
const D_INDEX: usize = 0x128;
const D_ENTRY: usize = 0x130;
const D_AREA: usize = 0x138;
const D_GDT: usize = 0x140; // 4 descriptors

core::arch::global_asm!(
    r#"
    .section .rodata.ap_tramp, "a"
    .global ap_tramp_start
    .global ap_tramp_end
    .global ap_tramp_code_end
    .code16
ap_tramp_start:
    cli
    cld
    mov %cs, %bx
    mov %bx, %ds
    movzwl %bx, %ebx
    shl $4, %ebx
    lgdtl 0x100
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl *0x108

    .code32
ap_tramp_pm:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov 0x118(%ebx), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010023, %eax
    and $0xFFFFFFFB, %eax
    mov %eax, %cr0
    ljmpl *0x110(%ebx)

    .code64
ap_tramp_lm:
    mov %ebx, %ebx
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov 0x120(%rbx), %rsp
    mov 0x128(%rbx), %rdi
    mov 0x138(%rbx), %rsi
    mov 0x130(%rbx), %rax
    call *%rax
1:
    cli
    hlt
    jmp 1b
ap_tramp_code_end:
    .skip 0x180 - (ap_tramp_code_end - ap_tramp_start)
ap_tramp_end:
"#,
    options(att_syntax)
);

extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static ap_tramp_pm: u8;
    static ap_tramp_lm: u8;
    static ap_tramp_code_end: u8;
}

/// What the caller runs on each AP, with the AP's per-CPU index.
static AP_MAIN: AtomicU64 = AtomicU64::new(0);

/// Where the trampoline goes: the highest usable page below 640 KiB that
/// holds nothing of the loader's.
fn trampoline_page(bi: &BootInfo) -> Option<u64> {
    let busy = |p: u64| {
        let end = p + 0x1000;
        let (a, b) = bi.info_range;
        (a < end && p < b) || bi.modules().iter().any(|m| m.start < end && p < m.end)
    };
    (0x10..0x9F).rev().map(|n| n * 0x1000).find(|&p| {
        !busy(p) && bi.regions().iter().any(|r| r.usable && r.base <= p && p + 0x1000 <= r.base.saturating_add(r.len))
    })
}

/// The AP's first Rust code: its own GDT and TSS, the shared IDT, then
/// the caller's entry.
extern "C" fn ap_entry(index: u64, area: u64) -> ! {
    super::gdt::init_ap(area);
    super::idt::load();
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    percpu::claim(index);
    apic::init_ap();
    if let Some(cpu) = percpu::get(index) {
        cpu.state.store(percpu::STATE_RUNNING, Ordering::SeqCst);
    }
    let f = AP_MAIN.load(Ordering::SeqCst);
    if f != 0 {
        // SAFETY: AP_MAIN only ever holds a `fn(usize)` stored by `start_aps`.
        let f: fn(usize) = unsafe { core::mem::transmute::<u64, fn(usize)>(f) };
        f(index);
    }
    loop {
        // SAFETY: parking this CPU with interrupts off; only INIT/NMI wake it.
        unsafe { core::arch::asm!("cli", "hlt") };
    }
}

/// What happened to one AP.
#[derive(Clone, Copy, Debug)]
pub struct ApOutcome {
    /// Its local APIC ID.
    pub apic_id: u32,
    /// Its per-CPU index.
    pub index: usize,
    /// Its final state (`percpu::STATE_*`).
    pub state: u32,
}

/// Starts every AP in `apic_ids` (the boot CPU's own ID is skipped), one at
/// a time, and waits for each to run `main` (or fail, or time out). The
/// outcome per AP, in order; empty when there is nothing to start or no
/// place for the trampoline.
/// `alloc_stack(frames)` gives physically contiguous, zeroed,
/// identity-mapped frames for each AP's stack, GDT and TSS (the frame
/// allocator lives above this layer).
pub fn start_aps(
    bi: &BootInfo,
    apic_ids: &[u32],
    main: fn(usize),
    alloc_stack: fn(usize) -> Option<u64>,
) -> Result<heapless_vec::Outcomes, &'static str> {
    let mut out = heapless_vec::Outcomes::default();
    let me = percpu::current().apic_id.load(Ordering::Relaxed);
    if apic_ids.iter().all(|&id| id == me) {
        return Ok(out);
    }
    let page = trampoline_page(bi).ok_or("no free page below 640 KiB for the AP trampoline")?;
    let (start, end, pm, lm, code_end) = (
        core::ptr::addr_of!(ap_tramp_start) as u64,
        core::ptr::addr_of!(ap_tramp_end) as u64,
        core::ptr::addr_of!(ap_tramp_pm) as u64,
        core::ptr::addr_of!(ap_tramp_lm) as u64,
        core::ptr::addr_of!(ap_tramp_code_end) as u64,
    );
    let len = usize::try_from(end - start).map_err(|_| "trampoline size")?;
    // The code must stay below the data area the boot CPU fills in.
    if !((D_GDT + 32)..=0x1000).contains(&len) || code_end - start > D_GDT_PTR as u64 {
        return Err("AP trampoline layout");
    }
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3) };
    if cr3 >= 1 << 32 {
        return Err("page tables above 4 GiB: an AP cannot load them in 32-bit mode");
    }
    AP_MAIN.store(main as *const () as u64, Ordering::SeqCst);
    // SAFETY: `page` is usable RAM below 1 MiB that the frame allocator
    // never hands out (the first MiB is reserved) and the loader's data
    // is not in it; it is identity mapped. Only the boot CPU writes it,
    // before any AP is sent there.
    unsafe {
        let dst = page as *mut u8;
        core::ptr::copy_nonoverlapping(start as *const u8, dst, len);
        let put = |off: usize, v: &[u8]| core::ptr::copy_nonoverlapping(v.as_ptr(), dst.add(off), v.len());
        let gdt: [u64; 4] = [0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00AF_9A00_0000_FFFF];
        for (i, d) in gdt.iter().enumerate() {
            put(D_GDT + 8 * i, &d.to_le_bytes());
        }
        put(D_GDT_PTR, &31u16.to_le_bytes());
        put(D_GDT_PTR + 2, &((page as u32) + D_GDT as u32).to_le_bytes());
        put(D_PM_FAR, &((page + (pm - start)) as u32).to_le_bytes());
        put(D_PM_FAR + 4, &0x08u16.to_le_bytes());
        put(D_LM_FAR, &((page + (lm - start)) as u32).to_le_bytes());
        put(D_LM_FAR + 4, &0x18u16.to_le_bytes());
        put(D_CR3, &cr3.to_le_bytes());
        put(D_ENTRY, &(ap_entry as *const () as u64).to_le_bytes());
    }
    for (index, &id) in (1..MAX_CPUS).zip(apic_ids.iter().filter(|&&id| id != me)) {
        let Some(cpu) = percpu::get(index) else { break };
        cpu.apic_id.store(id, Ordering::SeqCst);
        cpu.state.store(percpu::STATE_STARTING, Ordering::SeqCst);
        let Some(stack) = alloc_stack(AP_FRAMES) else {
            cpu.state.store(percpu::STATE_FAILED, Ordering::SeqCst);
            out.push(ApOutcome { apic_id: id, index, state: percpu::STATE_FAILED });
            break;
        };
        let top = stack + (AP_STACK_FRAMES as u64) * 4096;
        // SAFETY: as above; the previous AP has left the trampoline (it
        // reported, or it is parked or dead).
        unsafe {
            let dst = page as *mut u8;
            core::ptr::copy_nonoverlapping(top.to_le_bytes().as_ptr(), dst.add(D_STACK), 8);
            core::ptr::copy_nonoverlapping((index as u64).to_le_bytes().as_ptr(), dst.add(D_INDEX), 8);
            core::ptr::copy_nonoverlapping(top.to_le_bytes().as_ptr(), dst.add(D_AREA), 8);
            core::arch::asm!("mfence");
        }
        apic::send_init(id);
        time::delay_us(10_000);
        let vector = (page >> 12) as u8;
        apic::send_startup(id, vector);
        time::delay_us(200);
        if cpu.state.load(Ordering::SeqCst) == percpu::STATE_STARTING {
            apic::send_startup(id, vector);
        }
        let deadline = time::rdtsc() + AP_START_MS * time::tsc_per_ms();
        while time::rdtsc() < deadline {
            let s = cpu.state.load(Ordering::SeqCst);
            if s == percpu::STATE_UP || s == percpu::STATE_FAILED {
                break;
            }
            core::hint::spin_loop();
        }
        let state = cpu.state.load(Ordering::SeqCst);
        out.push(ApOutcome { apic_id: id, index, state });
        if state != percpu::STATE_UP && state != percpu::STATE_FAILED {
            // A CPU that did not get through must not run into the next
            // AP's stack: stop here.
            break;
        }
    }
    Ok(out)
}

/// A fixed-capacity list of outcomes (the heap is up, but keeping this
/// allocation-free lets the boot CPU report even when the heap is short).
pub mod heapless_vec {
    use super::{ApOutcome, MAX_CPUS};

    /// Up to `MAX_CPUS` outcomes.
    pub struct Outcomes {
        items: [Option<ApOutcome>; MAX_CPUS],
        len: usize,
    }

    impl Default for Outcomes {
        fn default() -> Self {
            Outcomes { items: [None; MAX_CPUS], len: 0 }
        }
    }

    impl Outcomes {
        /// Appends (ignored past capacity).
        pub fn push(&mut self, o: ApOutcome) {
            if let Some(slot) = self.items.get_mut(self.len) {
                *slot = Some(o);
                self.len += 1;
            }
        }

        /// The outcomes in order.
        pub fn iter(&self) -> impl Iterator<Item = &ApOutcome> {
            self.items.iter().take(self.len).flatten()
        }
    }
}
