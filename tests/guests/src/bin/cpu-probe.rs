//! `cpu-probe`: checks what the hypervisor shows the guest CPU and platform:
//! no VMX/SVM, #GP on unmodelled MSRs and reserved EFER bits, #UD on
//! virtualization instructions, all-ones from empty ports and PCI config,
//! a working TSC, long mode in EFER. One line per check; exits 0 if all pass.
#![no_std]
#![no_main]

use test_guests::hypercall;
use test_guests::idt::{self, Fault, GP, UD};
use test_guests::{cpu, port, println, BootInfo};

test_guests::entry!(main);

const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Unmodelled MSRs (an AMD-range and a low one).
const UNMODELLED_MSRS: [u32; 2] = [0xC001_2345, 0x0000_0BAD];
/// An empty I/O port (COM4; COM2 is the agent doorbell).
const EMPTY_PORT: u16 = 0x2E8;

struct Checks {
    failures: u32,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
        if ok {
            println!("check {}: ok", name);
        } else {
            println!("FAIL: {}: {}", name, detail);
            self.failures += 1;
        }
    }
}

fn expect_fault(c: &mut Checks, name: &str, got: Result<impl core::fmt::Debug, Fault>, vector: u8) {
    match got {
        Err(f) => c.check(name, f.vector == vector, format_args!("vector {} (expected {})", f.vector, vector)),
        Ok(v) => c.check(name, false, format_args!("no fault (result {:?}), expected vector {}", v, vector)),
    }
}

fn main(_info: &BootInfo) -> u32 {
    println!("cpu-probe start");
    idt::install();
    let mut c = Checks { failures: 0 };

    let leaf1 = cpu::cpuid(1, 0);
    c.check("no-vmx", leaf1.ecx & (1 << 5) == 0, format_args!("CPUID.1:ECX[5] (VMX) set"));
    let ext_max = cpu::cpuid(0x8000_0000, 0).eax;
    let svm = ext_max >= 0x8000_0001 && cpu::cpuid(0x8000_0001, 0).ecx & (1 << 2) != 0;
    c.check("no-svm", !svm, format_args!("CPUID.80000001:ECX[2] (SVM) set"));

    for msr in UNMODELLED_MSRS {
        let name = if msr == UNMODELLED_MSRS[0] { "rdmsr-unmodelled-c0012345" } else { "rdmsr-unmodelled-bad" };
        expect_fault(&mut c, name, idt::try_rdmsr(msr), GP);
        let name = if msr == UNMODELLED_MSRS[0] { "wrmsr-unmodelled-c0012345" } else { "wrmsr-unmodelled-bad" };
        expect_fault(&mut c, name, idt::try_wrmsr(msr, 0), GP);
    }

    expect_fault(&mut c, "vmxon-ud", idt::try_vmxon(), UD);
    expect_fault(&mut c, "vmrun-ud", idt::try_vmrun(), UD);

    // The other vendor's hypercall instruction: #UD or handled, not checked.
    let foreign = hypercall::foreign_flavor();
    match idt::try_hypercall_insn(foreign, 0x7777) {
        Err(f) => println!("info: {:?} raised vector {}", foreign, f.vector),
        Ok(status) => println!("info: {:?} returned status {}", foreign, status),
    }
    println!("check foreign-hypercall: ok");

    let b = port::inb(EMPTY_PORT);
    c.check("empty-port-byte", b == 0xFF, format_args!("inb({:#x}) = {:#x}", EMPTY_PORT, b));
    let w = port::inw(EMPTY_PORT);
    c.check("empty-port-word", w == 0xFFFF, format_args!("inw({:#x}) = {:#x}", EMPTY_PORT, w));
    let d = port::inl(EMPTY_PORT);
    c.check("empty-port-dword", d == 0xFFFF_FFFF, format_args!("inl({:#x}) = {:#x}", EMPTY_PORT, d));

    port::outb(0x80, 0x42);
    c.check("port-80-write", true, format_args!(""));

    port::outl(0xCF8, 0x8000_0000);
    let pci = port::inl(0xCFC);
    c.check("pci-config-empty", pci == 0xFFFF_FFFF, format_args!("bus 0 dev 0 fn 0 reg 0 = {:#x}", pci));

    let t0 = cpu::rdtsc();
    test_guests::spin_delay(10_000);
    let t1 = cpu::rdtsc();
    // The virtio-mmio window: an empty slot reads zero (no magic, device
    // ID 0) through the hypervisor's MMIO emulation, with several encodings.
    if hypercall::present() {
        let slot = 0xFEB0_0000usize + 31 * 0x200;
        // SAFETY: identity-mapped guest-physical MMIO window; reads of an
        // empty slot have no side effects.
        let (magic, id, byte, word): (u32, u32, u8, u16) = unsafe {
            (
                core::ptr::read_volatile(slot as *const u32),
                core::ptr::read_volatile((slot + 8) as *const u32),
                core::ptr::read_volatile((slot + 1) as *const u8),
                core::ptr::read_volatile((slot + 2) as *const u16),
            )
        };
        c.check(
            "mmio-empty-slot",
            magic == 0 && id == 0 && byte == 0 && word == 0,
            format_args!("magic {:#x} id {:#x} byte {:#x} word {:#x}", magic, id, byte, word),
        );
        // SAFETY: as above; writes to an empty slot are ignored.
        unsafe { core::ptr::write_volatile((slot + 0x70) as *mut u32, 0xFFFF_FFFF) };
        c.check("mmio-empty-slot-write", true, format_args!(""));
    }
    c.check("rdtsc-increases", t1 > t0, format_args!("{:#x} then {:#x}", t0, t1));

    match idt::try_rdmsr(MSR_EFER) {
        Ok(efer) => {
            let want = EFER_LME | EFER_LMA;
            c.check("efer-long-mode", efer & want == want, format_args!("EFER = {:#x}", efer));
            for bit in [20u32, 63] {
                let name = if bit == 20 { "efer-reserved-bit20" } else { "efer-reserved-bit63" };
                let got = idt::try_wrmsr(MSR_EFER, efer | (1 << bit));
                if got.is_ok() {
                    // Accepted: put EFER back before going on.
                    let _ = idt::try_wrmsr(MSR_EFER, efer);
                }
                expect_fault(&mut c, name, got, GP);
            }
        }
        Err(f) => c.check("efer-long-mode", false, format_args!("rdmsr EFER raised vector {}", f.vector)),
    }

    if c.failures != 0 {
        println!("FAIL: cpu-probe: {} checks failed", c.failures);
        return 1;
    }
    println!("cpu-probe ok");
    0
}
