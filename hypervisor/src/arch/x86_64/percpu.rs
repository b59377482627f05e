//! Per-CPU state: everything that belongs to one physical CPU (its VMXON
//! region, its SVM host save areas, the TLB generation it has flushed to).
//! A CPU finds its own entry through its GS base, which points at it (set
//! once per CPU, restored by the CPU on every VM exit: the VMCS host GS
//! base under VMX, VMLOAD of the host save area under SVM).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Most CPUs BMonitor keeps state for.
pub const MAX_CPUS: usize = 64;

/// [`PerCpu::state`]: never started.
pub const STATE_OFFLINE: u32 = 0;
/// Sent INIT-SIPI-SIPI, not heard from yet.
pub const STATE_STARTING: u32 = 1;
/// Running its first Rust code.
pub const STATE_RUNNING: u32 = 2;
/// Virtualization enabled on it; parked until it has work.
pub const STATE_UP: u32 = 3;
/// It could not enable virtualization (parked, never used).
pub const STATE_FAILED: u32 = 4;

/// State owned by one physical CPU.
#[repr(C)]
pub struct PerCpu {
    /// Its index in the per-CPU table (0: the boot CPU).
    pub index: AtomicU64,
    /// Local APIC ID, from CPUID.
    pub apic_id: AtomicU32,
    /// How far it got (`STATE_*`); the boot CPU is up from the start.
    pub state: AtomicU32,
    /// VMXON region (VMX), physical address; 0 when unused.
    pub vmxon_region: AtomicU64,
    /// VM_HSAVE_PA target (SVM): the CPU's own save area for VMRUN.
    pub svm_hsave: AtomicU64,
    /// VMSAVE/VMLOAD area for host state around VMRUN (SVM).
    pub svm_host_save: AtomicU64,
    /// The [`TLB_GENERATION`] this CPU last flushed every guest
    /// translation for.
    pub flushed_generation: AtomicU64,
    /// Waiting in HLT for a kick or its next deadline.
    pub idle: core::sync::atomic::AtomicBool,
    /// Kick IPIs this CPU received.
    pub kicks: AtomicU64,
    /// TSC when another CPU last sent it a kick (0: none in flight).
    pub kick_sent: AtomicU64,
    /// Kicks whose latency was timed; sum and maximum of their
    /// send-to-receipt latencies, in TSC ticks.
    pub kicks_timed: AtomicU64,
    pub kick_latency_sum: AtomicU64,
    pub kick_latency_max: AtomicU64,
}

impl PerCpu {
    const fn new() -> PerCpu {
        PerCpu {
            index: AtomicU64::new(0),
            apic_id: AtomicU32::new(0),
            state: AtomicU32::new(STATE_OFFLINE),
            vmxon_region: AtomicU64::new(0),
            svm_hsave: AtomicU64::new(0),
            svm_host_save: AtomicU64::new(0),
            flushed_generation: AtomicU64::new(0),
            idle: core::sync::atomic::AtomicBool::new(false),
            kicks: AtomicU64::new(0),
            kick_sent: AtomicU64::new(0),
            kicks_timed: AtomicU64::new(0),
            kick_latency_sum: AtomicU64::new(0),
            kick_latency_max: AtomicU64::new(0),
        }
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// IA32_GS_BASE: points at the running CPU's [`PerCpu`].
const GS_BASE_MSR: u32 = 0xC000_0101;

/// Index of the CPU running this code, from its GS base (0 before the CPU
/// has set it, i.e. on the boot CPU during early boot).
pub fn current_index() -> usize {
    // SAFETY: reading IA32_GS_BASE has no side effects.
    let base = unsafe { x86::msr::rdmsr(GS_BASE_MSR) };
    let first = CPUS.as_ptr() as u64;
    let size = core::mem::size_of::<PerCpu>() as u64;
    match base.checked_sub(first) {
        Some(off) if off % size == 0 && off / size < MAX_CPUS as u64 => (off / size) as usize,
        _ => 0,
    }
}

/// The GS base this CPU keeps (its own entry), for the VMCS host state.
pub fn gs_base() -> u64 {
    // SAFETY: reading IA32_GS_BASE has no side effects.
    unsafe { x86::msr::rdmsr(GS_BASE_MSR) }
}

/// Makes CPU `index`'s entry its own: called once on that CPU.
pub fn claim(index: usize) {
    let Some(cpu) = CPUS.get(index) else { return };
    cpu.index.store(index as u64, Ordering::Relaxed);
    // SAFETY: IA32_GS_BASE only affects GS-relative accesses; BMonitor
    // makes none besides finding this entry.
    unsafe { x86::msr::wrmsr(GS_BASE_MSR, cpu as *const PerCpu as u64) };
}

/// Bumped whenever guest memory is given back: every CPU drops every
/// cached guest translation (INVEPT/INVVPID, or an SVM full TLB flush)
/// before its next VM entry, so frames that served one VM can never be
/// reached through a translation cached for it.
pub static TLB_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Guest frames were (or are about to be) given back.
pub fn guest_memory_released() {
    TLB_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Whether this CPU must flush guest translations before entering a VM;
/// records that it will.
pub fn take_flush_due() -> bool {
    let want = TLB_GENERATION.load(Ordering::SeqCst);
    let cpu = current();
    cpu.flushed_generation.swap(want, Ordering::SeqCst) != want
}

/// CPUs that came up and can run VMs (the boot CPU always can).
pub fn online() -> impl Iterator<Item = usize> {
    CPUS.iter().enumerate().filter(|(_, c)| c.state.load(Ordering::Relaxed) == STATE_UP).map(|(i, _)| i)
}

/// This CPU's state.
pub fn current() -> &'static PerCpu {
    static FALLBACK: PerCpu = PerCpu::new();
    CPUS.get(current_index()).unwrap_or(&FALLBACK)
}

/// Records the boot CPU's identity.
pub fn init_boot_cpu() {
    claim(0);
    let id = raw_cpuid::CpuId::new().get_feature_info().map_or(0, |f| u32::from(f.initial_local_apic_id()));
    current().apic_id.store(id, Ordering::Relaxed);
    current().state.store(STATE_UP, Ordering::Relaxed);
}

/// The state of CPU `index` (0: the boot CPU), for starting APs and for
/// code that runs on an AP before it knows its own index any other way.
pub fn get(index: usize) -> Option<&'static PerCpu> {
    CPUS.get(index)
}

/// A kick arrived on this CPU (its handler, or a VM exit it caused):
/// counts it and, when its send time is known, its latency.
pub fn note_kick() {
    let cpu = current();
    cpu.kicks.fetch_add(1, Ordering::Relaxed);
    let sent = cpu.kick_sent.swap(0, Ordering::Relaxed);
    if sent != 0 {
        let latency = super::time::rdtsc().saturating_sub(sent);
        cpu.kicks_timed.fetch_add(1, Ordering::Relaxed);
        cpu.kick_latency_sum.fetch_add(latency, Ordering::Relaxed);
        cpu.kick_latency_max.fetch_max(latency, Ordering::Relaxed);
    }
}
