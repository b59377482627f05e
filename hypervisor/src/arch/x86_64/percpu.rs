//! Per-CPU state. Today only the boot CPU runs VMs, but everything that
//! belongs to one physical CPU (its VMXON region, its SVM host save areas)
//! lives here, so starting the other CPUs later changes no backend code.

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
pub struct PerCpu {
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
}

impl PerCpu {
    const fn new() -> PerCpu {
        PerCpu {
            apic_id: AtomicU32::new(0),
            state: AtomicU32::new(STATE_OFFLINE),
            vmxon_region: AtomicU64::new(0),
            svm_hsave: AtomicU64::new(0),
            svm_host_save: AtomicU64::new(0),
        }
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// Index of the CPU running this code. Only the boot CPU (0) runs for now;
/// when application processors start, each will find its index from its
/// APIC ID here.
pub fn current_index() -> usize {
    0
}

/// This CPU's state.
pub fn current() -> &'static PerCpu {
    static FALLBACK: PerCpu = PerCpu::new();
    CPUS.get(current_index()).unwrap_or(&FALLBACK)
}

/// Records the boot CPU's identity.
pub fn init_boot_cpu() {
    let id = raw_cpuid::CpuId::new().get_feature_info().map_or(0, |f| u32::from(f.initial_local_apic_id()));
    current().apic_id.store(id, Ordering::Relaxed);
    current().state.store(STATE_UP, Ordering::Relaxed);
}

/// The state of CPU `index` (0: the boot CPU), for starting APs and for
/// code that runs on an AP before it knows its own index any other way.
pub fn get(index: usize) -> Option<&'static PerCpu> {
    CPUS.get(index)
}
