//! BMonitor detection and the hypercall instruction (docs/hypercalls.md):
//! the only way the agent talks to the node, besides the shared ring.

use core::arch::asm;
use core::arch::x86_64::{__cpuid, CpuidResult};

use vmm_config::hypercall::CPUID_SIGNATURE;

/// The node's hypercall gate, with the instruction chosen for this CPU.
#[derive(Debug, Clone, Copy)]
pub struct Hypervisor {
    amd: bool,
}

/// A hypercall's registers on return: status (RAX), then RDI, RSI, RDX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    /// Status code (vmm_config::hypercall::status).
    pub status: u64,
    /// First result.
    pub rdi: u64,
    /// Second result.
    pub rsi: u64,
    /// Third result.
    pub rdx: u64,
}

fn cpuid(leaf: u32) -> CpuidResult {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads CPU state.
    unsafe {
        __cpuid(leaf)
    }
}

fn regs_bytes(r: &[u32]) -> Vec<u8> {
    r.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Finds BMonitor through CPUID 0x4000_0000, and picks VMCALL (Intel) or
/// VMMCALL (AMD) from the vendor string; `None` when not under BMonitor.
pub fn detect() -> Option<Hypervisor> {
    let hv = cpuid(0x4000_0000);
    if regs_bytes(&[hv.ebx, hv.ecx, hv.edx]) != CPUID_SIGNATURE {
        return None;
    }
    let v = cpuid(0);
    let vendor = regs_bytes(&[v.ebx, v.edx, v.ecx]);
    Some(Hypervisor { amd: vendor == b"AuthenticAMD" })
}

impl Hypervisor {
    /// Issues hypercall `nr` with three arguments. Not `nomem`: the node
    /// reads and writes the agent's ring memory during the call.
    pub fn call(&self, nr: u64, a: u64, b: u64, c: u64) -> Regs {
        let (mut rax, mut rdi, mut rsi, mut rdx) = (nr, a, b, c);
        if self.amd {
            // SAFETY: under BMonitor (checked by detect) VMMCALL is a
            // hypercall that only changes RAX, RDI, RSI, RDX and memory the
            // agent registered; all four are declared as in/out.
            unsafe {
                asm!("vmmcall", inout("rax") rax, inout("rdi") rdi, inout("rsi") rsi, inout("rdx") rdx, options(nostack));
            }
        } else {
            // SAFETY: as above, with VMCALL on Intel.
            unsafe {
                asm!("vmcall", inout("rax") rax, inout("rdi") rdi, inout("rsi") rsi, inout("rdx") rdx, options(nostack));
            }
        }
        Regs { status: rax, rdi, rsi, rdx }
    }
}

/// Asks for I/O permission on the agent port: BMonitor accepts privileged
/// calls from ring 3 only from a process that has it.
pub fn request_io_permission() -> std::io::Result<()> {
    // SAFETY: ioperm takes no pointers; it changes this process's TSS bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(vmm_config::hypercall::AGENT_IO_PORT), 1, 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s process give up the agent's I/O permission before it
/// runs: Linux passes ioperm permissions on through fork and execve, and
/// a command the tenant runs (possibly as another user) must not be able
/// to make privileged hypercalls or pose as the agent.
pub fn no_io_permission(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and makes
    // one system call (ioperm), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // Failure means the kernel has no ioperm at all (then nothing
            // was inherited either): not a reason to refuse the command.
            let _ = libc::ioperm(libc::c_ulong::from(vmm_config::hypercall::AGENT_IO_PORT), 1, 0);
            Ok(())
        });
    }
}
