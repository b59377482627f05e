//! `bm-agent --probe-unprivileged`: makes privileged hypercalls *without*
//! asking for I/O permission, as any unprivileged process could, and checks
//! that BMonitor refuses each with DENIED. The last one is `exit`: if the
//! check were missing, the VM would stop, which the tests would see.

use vmm_config::hypercall::{nr, status};

use crate::hypercall::Hypervisor;

/// Runs the probe; the process exit code (0 = every call refused).
pub fn unprivileged(hv: &Hypervisor) -> i32 {
    let buf = [0u8; 64];
    let addr = buf.as_ptr() as u64;
    let calls: [(&str, u64, u64, u64); 6] = [
        ("vm_info", nr::VM_INFO, addr, 64),
        ("console_write", nr::CONSOLE_WRITE, addr, 8),
        ("yield", nr::YIELD, 0, 0),
        ("agent_attach", nr::AGENT_ATTACH, addr & !0xFFF, 64 * 1024),
        ("agent_kick", nr::AGENT_KICK, 0, 0),
        ("exit", nr::EXIT, 77, 0),
    ];
    let mut bad = 0;
    for (name, call, a, b) in calls {
        let r = hv.call(call, a, b, 0);
        if r.status == status::DENIED {
            println!("probe {name}: denied");
        } else {
            println!("probe {name}: NOT denied (status {})", r.status);
            bad += 1;
        }
    }
    // Open to everyone.
    let v = hv.call(nr::ABI_VERSION, 0, 0, 0);
    println!("probe abi_version: status {} version {}", v.status, v.rdi);
    if bad == 0 && v.status == status::OK {
        println!("probe: unprivileged calls refused");
        0
    } else {
        1
    }
}
