//! CPUID as the guest sees it: the host's answers with what BMonitor does
//! not virtualize hidden (VMX/SVM, XSAVE/AVX, MONITOR, MTRRs, machine
//! checks, performance monitoring), what it emulates announced (local APIC,
//! x2APIC, TSC-deadline timer, an always-running APIC timer), and the TSC
//! and APIC-timer frequency given in leaves 0x15/0x16 so a kernel need not
//! calibrate them against the PIT.

/// Who the guest vCPU is and how fast its clocks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuIdentity {
    /// Initial APIC ID (also the x2APIC ID).
    pub apic_id: u32,
    /// vCPUs in the VM (logical processors reported in leaf 1).
    pub vcpus: u32,
    /// TSC ticks per second; the local APIC timer's input clock runs at the
    /// same rate (leaf 0x15's crystal).
    pub tsc_hz: u64,
    /// IA32_MISC_ENABLE bit 22: CPUID reports at most leaf 2.
    pub limit_cpuid: bool,
    /// Leaf 0x40000000's EBX, ECX, EDX: who the hypervisor is.
    pub hv_signature: [u32; 3],
    /// Leaf 0x40000001's EAX: the hypercall ABI version.
    pub hv_abi: u32,
    /// TSC when the guest's clock read 0 (its paravirtual clock's origin).
    pub boot_tsc: u64,
    /// Wall-clock seconds at `boot_tsc`.
    pub boot_unix: u64,
}

/// Highest basic leaf offered (0x15/0x16 are synthesized).
pub const MAX_BASIC_LEAF: u32 = 0x16;
/// Highest extended leaf offered.
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;
/// BMonitor's hypervisor leaves start here.
pub const HYPERVISOR_BASE: u32 = 0x4000_0000;

/// Leaf 1 ECX bits never shown: DTES64(2) MONITOR(3) DS-CPL(4) VMX(5)
/// SMX(6) EST(7) TM2(8) xTPR(14) PDCM(15) XSAVE(26) OSXSAVE(27) AVX(28).
pub const LEAF1_ECX_HIDDEN: u32 = (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 14)
    | (1 << 15)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28);
/// Leaf 1 ECX bits always shown: x2APIC(21), TSC-deadline(24), hypervisor(31).
pub const LEAF1_ECX_EMULATED: u32 = (1 << 21) | (1 << 24) | (1 << 31);
/// Leaf 1 EDX bits never shown: MCE(7) MTRR(12) MCA(14) DS(21) ACPI(22)
/// TM(29) PBE(31).
pub const LEAF1_EDX_HIDDEN: u32 = (1 << 7) | (1 << 12) | (1 << 14) | (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
/// Leaf 1 EDX bits always shown: APIC(9).
pub const LEAF1_EDX_EMULATED: u32 = 1 << 9;
/// Leaf 7 EBX bits passed on: FSGSBASE(0) BMI1(3) SMEP(7) BMI2(8) ERMS(9) SMAP(20).
pub const LEAF7_EBX_KEPT: u32 = (1 << 0) | (1 << 3) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 20);
/// Leaf 0x80000001 ECX bits never shown: SVM(2) ExtApicSpace(3) OSVW(9)
/// IBS(10) SKINIT(12) WDT(13) LWP(15) TOPOEXT(22) PerfCtrExtCore(23)
/// PerfCtrExtNB(24) PerfCtrExtL2I(28) MWAITX(29).
pub const EXT1_ECX_HIDDEN: u32 = (1 << 2)
    | (1 << 3)
    | (1 << 9)
    | (1 << 10)
    | (1 << 12)
    | (1 << 13)
    | (1 << 15)
    | (1 << 22)
    | (1 << 23)
    | (1 << 24)
    | (1 << 28)
    | (1 << 29);

/// The guest's view of CPUID `leaf`/`subleaf`; `host` answers the real
/// instruction.
pub fn guest_leaf(host: &dyn Fn(u32, u32) -> [u32; 4], leaf: u32, subleaf: u32, vcpu: &VcpuIdentity) -> [u32; 4] {
    let max_basic = if vcpu.limit_cpuid { 2 } else { MAX_BASIC_LEAF };
    let [mut a, mut b, mut c, mut d] = host(leaf, subleaf);
    match leaf {
        0 => a = max_basic,
        1 => {
            c = (c & !LEAF1_ECX_HIDDEN) | LEAF1_ECX_EMULATED;
            d = (d & !LEAF1_EDX_HIDDEN) | LEAF1_EDX_EMULATED;
            // EBX: initial APIC ID, logical processors, CLFLUSH size, brand.
            let logical = vcpu.vcpus.clamp(1, 255);
            b = (b & 0x0000_FFFF) | (logical << 16) | ((vcpu.apic_id & 0xFF) << 24);
            // HTT tells the kernel leaf 1's logical count is meaningful.
            if logical > 1 {
                d |= 1 << 28;
            } else {
                d &= !(1 << 28);
            }
        }
        _ if leaf > max_basic && leaf < HYPERVISOR_BASE => return [0; 4],
        // Thermal and power: only ARAT (the APIC timer keeps running in
        // every idle state, since it is ours).
        6 => return [1 << 2, 0, 0, 0],
        7 if subleaf == 0 => return [0, b & LEAF7_EBX_KEPT, 0, 0],
        // Cache and topology enumeration, XSAVE, PMU, RDT, SGX, PT: none.
        4 | 5 | 7 | 0xA..=0x14 => return [0; 4],
        // TSC = crystal * EBX / EAX; the APIC timer runs at the crystal.
        0x15 => return [1, 1, u32::try_from(vcpu.tsc_hz).unwrap_or(u32::MAX), 0],
        0x16 => {
            let mhz = u32::try_from(vcpu.tsc_hz / 1_000_000).unwrap_or(u32::MAX) & 0xFFFF;
            return [mhz, mhz, 100, 0];
        }
        HYPERVISOR_BASE => {
            let [sb, sc, sd] = vcpu.hv_signature;
            return [HYPERVISOR_BASE + 1, sb, sc, sd];
        }
        0x4000_0001 => return [vcpu.hv_abi, 0, 0, 0],
        crate::pvclock::CPUID_BASE..=0x4000_0101 => return crate::pvclock::cpuid(leaf).unwrap_or([0; 4]),
        0x4000_0002..=0x7FFF_FFFF => return [0; 4],
        0x8000_0000 => a = a.min(MAX_EXTENDED_LEAF),
        0x8000_0001 => c &= !EXT1_ECX_HIDDEN,
        0x8000_000A => return [0; 4],
        0x8000_0002..=MAX_EXTENDED_LEAF => {}
        _ if leaf >= 0x8000_0000 => return [0; 4],
        _ => {}
    }
    [a, b, c, d]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_ones(_: u32, _: u32) -> [u32; 4] {
        [u32::MAX; 4]
    }

    fn id() -> VcpuIdentity {
        VcpuIdentity {
            apic_id: 3,
            vcpus: 4,
            tsc_hz: 2_500_000_000,
            limit_cpuid: false,
            hv_signature: [1, 2, 3],
            hv_abi: 7,
            boot_tsc: 0,
            boot_unix: 0,
        }
    }

    #[test]
    fn emulated_features_are_shown_and_unvirtualized_ones_hidden() {
        let [_, b, c, d] = guest_leaf(&all_ones, 1, 0, &id());
        assert_eq!(c & LEAF1_ECX_HIDDEN, 0);
        assert_eq!(c & LEAF1_ECX_EMULATED, LEAF1_ECX_EMULATED);
        assert_eq!(d & LEAF1_EDX_HIDDEN, 0);
        assert_ne!(d & (1 << 9), 0);
        assert_eq!(b >> 24, 3);
        assert_eq!((b >> 16) & 0xFF, 4);
        let none = guest_leaf(&|_, _| [0; 4], 1, 0, &id());
        assert_eq!(none[2] & LEAF1_ECX_EMULATED, LEAF1_ECX_EMULATED);
    }

    #[test]
    fn tsc_frequency_leaves_give_the_rate() {
        let [a, b, c, _] = guest_leaf(&all_ones, 0x15, 0, &id());
        assert_eq!(u64::from(c) * u64::from(b) / u64::from(a), 2_500_000_000);
        assert_eq!(guest_leaf(&all_ones, 0x16, 0, &id())[0], 2500);
        assert_eq!(guest_leaf(&all_ones, 0, 0, &id())[0], MAX_BASIC_LEAF);
    }

    #[test]
    fn hypervisor_leaves_name_bmonitor() {
        assert_eq!(guest_leaf(&all_ones, HYPERVISOR_BASE, 0, &id()), [HYPERVISOR_BASE + 1, 1, 2, 3]);
        assert_eq!(guest_leaf(&all_ones, HYPERVISOR_BASE + 1, 0, &id())[0], 7);
        assert_eq!(guest_leaf(&all_ones, HYPERVISOR_BASE + 0x10, 0, &id()), [0; 4]);
        assert_eq!(guest_leaf(&all_ones, crate::pvclock::CPUID_BASE + 1, 0, &id())[0], crate::pvclock::FEATURES);
    }

    #[test]
    fn limit_cpuid_caps_the_basic_leaves_at_two() {
        let v = VcpuIdentity { limit_cpuid: true, ..id() };
        assert_eq!(guest_leaf(&all_ones, 0, 0, &v)[0], 2);
        assert_eq!(guest_leaf(&all_ones, 0x15, 0, &v), [0; 4]);
    }

    proptest! {
        #[test]
        fn leaves_above_the_maxima_are_zero(leaf in any::<u32>(), sub in any::<u32>()) {
            let r = guest_leaf(&all_ones, leaf, sub, &id());
            if (leaf > MAX_BASIC_LEAF && leaf < 0x8000_0000) || leaf > MAX_EXTENDED_LEAF {
                prop_assert_eq!(r, [0; 4]);
            }
        }
    }
}
