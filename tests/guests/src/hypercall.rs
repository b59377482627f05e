//! BMonitor hypercall ABI v1 (numbers and statuses from `vmm-config`).
//!
//! VMCALL on Intel, VMMCALL on AMD (chosen from the CPUID vendor string);
//! number in RAX, arguments in RDI, RSI, RDX; status back in RAX, results in
//! RDI, RSI, RDX. Pointers are guest-physical, which equals virtual here
//! (identity map).
//!
//! When the guest does not run under BMonitor (CPUID hypervisor bit clear or
//! leaf 0x4000_0000 signature not [`CPUID_SIGNATURE`]) no instruction is
//! issued and every call returns [`NOT_PRESENT`], so a guest can be smoke
//! tested under plain QEMU.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::cpu::{hypervisor_bit, hypervisor_signature, vendor};

pub use vmm_config::hypercall::{nr, status, ABI_VERSION, CONSOLE_WRITE_MAX, CPUID_SIGNATURE};

/// Pseudo-status returned when no BMonitor is present (no call was made).
pub const NOT_PRESENT: u64 = u64::MAX;

/// Registers a hypercall returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ret {
    /// Status (RAX).
    pub status: u64,
    /// First result (RDI).
    pub rdi: u64,
    /// Second result (RSI).
    pub rsi: u64,
    /// Third result (RDX).
    pub rdx: u64,
}

/// Result of [`vm_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmInfo {
    /// The VM's id.
    pub id: u64,
    /// The VM's RAM in bytes.
    pub mem_bytes: u64,
    /// Full length of the VM's name (may exceed the buffer).
    pub name_len: u64,
}

/// Which instruction issues a hypercall on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Intel: VMCALL (0F 01 C1).
    Vmcall,
    /// AMD/Hygon: VMMCALL (0F 01 D9).
    Vmmcall,
}

/// The native hypercall instruction, from the CPU vendor.
pub fn native_flavor() -> Flavor {
    match &vendor() {
        b"AuthenticAMD" | b"HygonGenuine" => Flavor::Vmmcall,
        _ => Flavor::Vmcall,
    }
}

// 0 = not probed, 1 = absent, 2 = present (VMCALL), 3 = present (VMMCALL).
static STATE: AtomicU8 = AtomicU8::new(0);

fn state() -> u8 {
    let s = STATE.load(Ordering::Relaxed);
    if s != 0 {
        return s;
    }
    let s = if hypervisor_bit() && hypervisor_signature() == CPUID_SIGNATURE {
        match native_flavor() {
            Flavor::Vmcall => 2,
            Flavor::Vmmcall => 3,
        }
    } else {
        1
    };
    STATE.store(s, Ordering::Relaxed);
    s
}

/// Whether the guest runs under BMonitor (hypervisor bit and signature).
pub fn present() -> bool {
    state() >= 2
}

/// Issues hypercall `nr` with `flavor`, whether or not BMonitor is
/// present. Private: the instruction #UDs without a hypervisor.
fn issue(flavor: Flavor, nr: u64, a0: u64, a1: u64, a2: u64) -> Ret {
    let (mut rax, mut rdi, mut rsi, mut rdx) = (nr, a0, a1, a2);
    match flavor {
        // SAFETY: callers only pass buffers BMonitor may write (see the
        // public wrappers); all other registers are preserved by the ABI.
        Flavor::Vmcall => unsafe {
            asm!("vmcall", inout("rax") rax, inout("rdi") rdi, inout("rsi") rsi, inout("rdx") rdx, options(nostack))
        },
        // SAFETY: as above.
        Flavor::Vmmcall => unsafe {
            asm!("vmmcall", inout("rax") rax, inout("rdi") rdi, inout("rsi") rsi, inout("rdx") rdx, options(nostack))
        },
    }
    Ret { status: rax, rdi, rsi, rdx }
}

fn call(nr: u64, a0: u64, a1: u64, a2: u64) -> Ret {
    match state() {
        2 => issue(Flavor::Vmcall, nr, a0, a1, a2),
        3 => issue(Flavor::Vmmcall, nr, a0, a1, a2),
        _ => Ret { status: NOT_PRESENT, ..Ret::default() },
    }
}

fn check(r: Ret) -> Result<Ret, u64> {
    if r.status == status::OK {
        Ok(r)
    } else {
        Err(r.status)
    }
}

/// `abi_version`: the ABI version BMonitor speaks.
pub fn abi_version() -> Result<u64, u64> {
    check(call(nr::ABI_VERSION, 0, 0, 0)).map(|r| r.rdi)
}

/// `vm_info`: writes the VM name into `buf` (truncated to its length).
pub fn vm_info(buf: &mut [u8]) -> Result<VmInfo, u64> {
    let r = check(call(nr::VM_INFO, buf.as_mut_ptr() as u64, buf.len() as u64, 0))?;
    let info = VmInfo { id: r.rdi, mem_bytes: r.rsi, name_len: r.rdx };
    RAM_BYTES.store(info.mem_bytes, Ordering::Relaxed);
    Ok(info)
}

/// `console_write`: appends `bytes` to the VM console (in chunks of at most
/// [`CONSOLE_WRITE_MAX`]).
pub fn console_write(bytes: &[u8]) -> Result<(), u64> {
    for chunk in bytes.chunks(CONSOLE_WRITE_MAX as usize) {
        check(call(nr::CONSOLE_WRITE, chunk.as_ptr() as u64, chunk.len() as u64, 0))?;
    }
    Ok(())
}

/// `yield`: gives up the rest of the time slice.
pub fn yield_now() -> Result<(), u64> {
    check(call(nr::YIELD, 0, 0, 0)).map(|_| ())
}

/// `clock`: nanoseconds since the node booted (monotonic).
pub fn clock() -> Result<u64, u64> {
    clock_sample().map(|c| c.ns)
}

/// One `clock` reading with the TSC rate, so time can be extrapolated with
/// RDTSC instead of further hypercalls.
#[derive(Clone, Copy, Debug)]
pub struct ClockSample {
    /// Nanoseconds since node boot.
    pub ns: u64,
    /// TSC ticks per millisecond.
    pub tsc_per_ms: u64,
    /// The TSC value `ns` corresponds to.
    pub tsc: u64,
}

/// `clock` with all its results.
pub fn clock_sample() -> Result<ClockSample, u64> {
    check(call(nr::CLOCK, 0, 0, 0)).map(|r| ClockSample { ns: r.rdi, tsc_per_ms: r.rsi, tsc: r.rdx })
}

/// `exit`: stops the VM with `code`. Returns only if the call failed.
pub fn exit(code: u32) -> Result<(), u64> {
    check(call(nr::EXIT, u64::from(code), 0, 0)).map(|_| ())
}

/// `debug_corrupt_state` (test-only): asks BMonitor to corrupt this VM's
/// saved state so the next VM entry fails. Returns only if refused.
pub fn debug_corrupt_state() -> Result<(), u64> {
    check(call(nr::DEBUG_CORRUPT_STATE, 0, 0, 0)).map(|_| ())
}

/// RAM size BMonitor reported in the last successful [`vm_info`] (0 until then).
static RAM_BYTES: AtomicU64 = AtomicU64::new(0);

/// Issues any call with raw arguments and returns all result registers, for
/// guests that test BMonitor's argument checking.
///
/// BMonitor writes guest memory only for `vm_info`; to keep that from
/// touching memory this program uses, a raw `vm_info` is only issued when
/// `a0` (the buffer) lies at or above the RAM size reported by an earlier
/// successful [`vm_info`] (i.e. outside the VM's RAM); otherwise this returns
/// `None` without calling. Other calls only read guest memory.
pub fn raw(nr: u64, a0: u64, a1: u64, a2: u64) -> Option<Ret> {
    if nr == nr::VM_INFO {
        let ram = RAM_BYTES.load(Ordering::Relaxed);
        if ram == 0 || a0 < ram {
            return None;
        }
    }
    Some(call(nr, a0, a1, a2))
}

/// The other vendor's hypercall instruction (VMMCALL on Intel, VMCALL on
/// AMD), which should raise #UD.
pub fn foreign_flavor() -> Flavor {
    match native_flavor() {
        Flavor::Vmcall => Flavor::Vmmcall,
        Flavor::Vmmcall => Flavor::Vmcall,
    }
}

/// Human-readable name of a status code.
pub fn status_name(s: u64) -> &'static str {
    match s {
        status::OK => "OK",
        status::UNKNOWN_CALL => "UNKNOWN_CALL",
        status::INVALID_ARGUMENT => "INVALID_ARGUMENT",
        status::BAD_ADDRESS => "BAD_ADDRESS",
        status::TOO_LARGE => "TOO_LARGE",
        status::DENIED => "DENIED",
        status::NOT_ATTACHED => "NOT_ATTACHED",
        status::RING_FAULT => "RING_FAULT",
        NOT_PRESENT => "NOT_PRESENT",
        _ => "?",
    }
}
