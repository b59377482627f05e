//! Model-specific registers that need no hardware: each vCPU keeps its own
//! copy, so a guest can read back what it wrote and a CPUID feature it was
//! shown has the MSRs the SDM/APM give it. MSRs tied to vCPU state (EFER,
//! PAT, the TSC, the local APIC) are the caller's; anything neither handles
//! raises #GP, as on a CPU without it.

/// IA32_MISC_ENABLE.
pub const MISC_ENABLE: u32 = 0x1A0;
/// MISC_ENABLE bit 22: limit CPUID's basic leaves to 2.
pub const MISC_LIMIT_CPUID: u64 = 1 << 22;
/// MISC_ENABLE at reset: fast strings on, branch trace and PEBS
/// unavailable (there is no PMU).
const MISC_RESET: u64 = 1 | (1 << 11) | (1 << 12);
/// MISC_ENABLE bits a guest may change: fast strings, limit CPUID, xTPR
/// disable. The unavailability bits read as set and ignore writes; any
/// other bit is reserved (#GP).
const MISC_WRITABLE: u64 = 1 | MISC_LIMIT_CPUID | (1 << 23);
const MISC_READ_ONLY: u64 = (1 << 7) | (1 << 11) | (1 << 12);

/// IA32_FEATURE_CONTROL: locked with VMX off (no nested virtualization).
pub const FEATURE_CONTROL: u32 = 0x3A;
/// IA32_BIOS_SIGN_ID (Intel microcode revision) / AMD patch level.
pub const BIOS_SIGN_ID: u32 = 0x8B;
/// IA32_MTRRCAP.
pub const MTRR_CAP: u32 = 0xFE;
/// IA32_TSC_AUX, read by RDTSCP and RDPID.
pub const TSC_AUX: u32 = 0xC000_0103;
/// AMD K7 legacy performance counters: 4 event selects then 4 counters,
/// present on every AMD CPU whether or not the PMU is announced.
pub const K7_EVNTSEL0: u32 = 0xC001_0000;
/// Last of the K7 counter MSRs.
pub const K7_PERFCTR3: u32 = 0xC001_0007;
/// AMD hardware configuration.
pub const AMD_HWCR: u32 = 0xC001_0015;
/// AMD decode configuration (Linux sets LFENCE-serializing, bit 1).
pub const AMD_DE_CFG: u32 = 0xC001_1029;
/// AMD VM_CR: reads SVM disabled and locked (SVM is not offered).
pub const AMD_VM_CR: u32 = 0xC001_0114;
/// AMD interrupt-pending message register (C1E on older families).
pub const AMD_INT_PENDING_MSG: u32 = 0xC001_0055;
/// MSRs the kernel pokes on AMD CPUs whose effect is the host's business:
/// they read back what was written and change nothing.
const AMD_SCRATCH: [u32; 4] = [0xC001_1020, 0xC001_1021, 0xC001_1022, AMD_INT_PENDING_MSG];

/// A WRMSR/RDMSR the guest must get #GP for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// The per-vCPU MSRs with no hardware behind them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrFile {
    amd: bool,
    misc_enable: u64,
    tsc_aux: u64,
    k7_perf: [u64; 8],
    hwcr: u64,
    de_cfg: u64,
    amd_scratch: [u64; 4],
    /// The guest's paravirtual clock registrations, as written.
    pv_system_time: u64,
    pv_wall_clock: u64,
}

impl MsrFile {
    /// Reset values for a vCPU of the given vendor (AMD CPUs lack the Intel
    /// MSRs and the reverse).
    pub fn new(amd: bool) -> MsrFile {
        MsrFile {
            amd,
            misc_enable: MISC_RESET,
            tsc_aux: 0,
            k7_perf: [0; 8],
            hwcr: 1 << 24, // TscFreqSel: the TSC runs at the P0 frequency
            de_cfg: 0,
            amd_scratch: [0; 4],
            pv_system_time: 0,
            pv_wall_clock: 0,
        }
    }

    /// Whether CPUID must report at most leaf 2 (MISC_ENABLE bit 22).
    pub fn limit_cpuid(&self) -> bool {
        !self.amd && self.misc_enable & MISC_LIMIT_CPUID != 0
    }

    /// RDPMC of counter `index`: the AMD legacy counters exist (and never
    /// count); Intel guests are shown no PMU, so every index faults.
    pub fn read_pmc(&self, index: u32) -> Result<u64, Gp> {
        if !self.amd || index >= 4 {
            return Err(Gp);
        }
        self.k7_perf.get(4 + index as usize).copied().ok_or(Gp)
    }

    /// Records a paravirtual clock registration (the caller writes the
    /// record into guest memory first).
    pub fn set_pvclock(&mut self, msr: u32, value: u64) {
        if msr == crate::pvclock::MSR_SYSTEM_TIME {
            self.pv_system_time = value;
        } else if msr == crate::pvclock::MSR_WALL_CLOCK {
            self.pv_wall_clock = value;
        }
    }

    /// RDMSR; `Err(Gp)` when the MSR does not exist for this vCPU.
    pub fn read(&self, msr: u32) -> Result<u64, Gp> {
        match msr {
            crate::pvclock::MSR_SYSTEM_TIME => Ok(self.pv_system_time),
            crate::pvclock::MSR_WALL_CLOCK => Ok(self.pv_wall_clock),
            BIOS_SIGN_ID => Ok(0),
            TSC_AUX => Ok(self.tsc_aux),
            // MTRRs are not announced; MTRRCAP reads "none" for kernels
            // that look anyway.
            MTRR_CAP => Ok(0),
            MISC_ENABLE if !self.amd => Ok(self.misc_enable),
            FEATURE_CONTROL if !self.amd => Ok(1),
            K7_EVNTSEL0..=K7_PERFCTR3 if self.amd => self.k7_perf.get((msr - K7_EVNTSEL0) as usize).copied().ok_or(Gp),
            AMD_HWCR if self.amd => Ok(self.hwcr),
            AMD_DE_CFG if self.amd => Ok(self.de_cfg),
            AMD_VM_CR if self.amd => Ok((1 << 3) | (1 << 4)), // LOCK | SVMDIS
            m if self.amd && AMD_SCRATCH.contains(&m) => {
                let i = AMD_SCRATCH.iter().position(|&x| x == m).ok_or(Gp)?;
                self.amd_scratch.get(i).copied().ok_or(Gp)
            }
            _ => Err(Gp),
        }
    }

    /// WRMSR; `Err(Gp)` for a missing MSR or a reserved bit.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<(), Gp> {
        match msr {
            // Writing 0 before CPUID(1) is how microcode revisions are read.
            BIOS_SIGN_ID => Ok(()),
            TSC_AUX if value >> 32 == 0 => {
                self.tsc_aux = value;
                Ok(())
            }
            MISC_ENABLE if !self.amd => {
                if value & !(MISC_WRITABLE | MISC_READ_ONLY) != 0 {
                    return Err(Gp);
                }
                self.misc_enable = (self.misc_enable & !MISC_WRITABLE) | (value & MISC_WRITABLE);
                Ok(())
            }
            K7_EVNTSEL0..=K7_PERFCTR3 if self.amd => {
                let i = (msr - K7_EVNTSEL0) as usize;
                // Counters are 48 bits wide; event selects keep what was
                // written, but nothing ever counts (no PMU is announced).
                let v = if i >= 4 { value & 0xFFFF_FFFF_FFFF } else { value };
                *self.k7_perf.get_mut(i).ok_or(Gp)? = v;
                Ok(())
            }
            AMD_HWCR if self.amd => {
                self.hwcr = value;
                Ok(())
            }
            AMD_DE_CFG if self.amd => {
                self.de_cfg = value;
                Ok(())
            }
            AMD_VM_CR if self.amd => Err(Gp), // locked
            m if self.amd && AMD_SCRATCH.contains(&m) => {
                let i = AMD_SCRATCH.iter().position(|&x| x == m).ok_or(Gp)?;
                *self.amd_scratch.get_mut(i).ok_or(Gp)? = value;
                Ok(())
            }
            _ => Err(Gp),
        }
    }
}

/// Whether `value` is a canonical 48-bit address (bits 63:47 all equal), as
/// WRMSR to FS/GS base and the SYSCALL targets requires.
pub fn is_canonical(value: u64) -> bool {
    let top = value >> 47;
    top == 0 || top == 0x1_FFFF
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn misc_enable_keeps_writable_bits_and_refuses_reserved_ones() {
        let mut m = MsrFile::new(false);
        assert_eq!(m.read(MISC_ENABLE), Ok(MISC_RESET));
        m.write(MISC_ENABLE, MISC_RESET | MISC_LIMIT_CPUID).unwrap();
        assert!(m.limit_cpuid());
        m.write(MISC_ENABLE, 0).unwrap();
        assert_eq!(m.read(MISC_ENABLE), Ok((1 << 11) | (1 << 12)));
        assert_eq!(m.write(MISC_ENABLE, 1 << 40), Err(Gp));
    }

    #[test]
    fn amd_counters_exist_on_amd_only() {
        let mut amd = MsrFile::new(true);
        amd.write(K7_EVNTSEL0, 0x43_0076).unwrap();
        assert_eq!(amd.read(K7_EVNTSEL0), Ok(0x43_0076));
        amd.write(K7_PERFCTR3, u64::MAX).unwrap();
        assert_eq!(amd.read(K7_PERFCTR3), Ok(0xFFFF_FFFF_FFFF));
        let intel = MsrFile::new(false);
        assert_eq!(intel.read(K7_EVNTSEL0), Err(Gp));
        assert_eq!(amd.read(MISC_ENABLE), Err(Gp));
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0x7FFF_FFFF_FFFF));
        assert!(is_canonical(0xFFFF_8000_0000_0000));
        assert!(!is_canonical(0x8000_0000_0000));
        assert!(!is_canonical(0x0001_0000_0000_0000));
    }

    proptest! {
        #[test]
        fn a_successful_write_reads_back_within_the_register_width(amd in any::<bool>(), msr in prop_oneof![Just(MISC_ENABLE), Just(TSC_AUX), K7_EVNTSEL0..=K7_PERFCTR3, Just(AMD_HWCR), Just(AMD_DE_CFG), any::<u32>()], value in any::<u64>()) {
            let mut m = MsrFile::new(amd);
            if m.write(msr, value).is_ok() && msr != BIOS_SIGN_ID {
                let back = m.read(msr);
                prop_assert!(back.is_ok());
                // Whatever is read back is a subset of what was written or fixed bits.
                prop_assert_eq!(back.unwrap() & !value & !MISC_RESET, 0);
            }
        }
    }
}
