//! The KVM paravirtual clock (Linux Documentation/virt/kvm/msr.rst,
//! MSR_KVM_SYSTEM_TIME_NEW and MSR_KVM_WALL_CLOCK_NEW), offered at CPUID
//! 0x40000100 beside BMonitor's own leaves. It tells a guest the TSC rate
//! exactly, on Intel and AMD alike, so the kernel neither calibrates
//! against the PIT (whose emulated ports are too slow to time under nested
//! emulation) nor falls back to a port-read clocksource. The guest's TSC
//! is the host's and never scaled, so one record written when the guest
//! registers it stays right: the stable bit is set.

/// MSR_KVM_WALL_CLOCK_NEW: the guest names a [`WALL_CLOCK_LEN`]-byte record.
pub const MSR_WALL_CLOCK: u32 = 0x4B56_4D00;
/// MSR_KVM_SYSTEM_TIME_NEW: the guest names a [`TIME_INFO_LEN`]-byte record
/// (bit 0 enables).
pub const MSR_SYSTEM_TIME: u32 = 0x4B56_4D01;
/// CPUID leaf with the "KVMKVMKVM" signature.
pub const CPUID_BASE: u32 = 0x4000_0100;
/// KVM_FEATURE_CLOCKSOURCE2 | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT.
pub const FEATURES: u32 = (1 << 3) | (1 << 24);
/// Size of pvclock_vcpu_time_info.
pub const TIME_INFO_LEN: usize = 32;
/// Size of pvclock_wall_clock.
pub const WALL_CLOCK_LEN: usize = 12;
/// PVCLOCK_TSC_STABLE_BIT.
const FLAG_TSC_STABLE: u8 = 1;

/// The scale the guest applies: ns = ((tsc delta shifted by `shift`) *
/// `mul`) >> 32.
pub fn scale(tsc_hz: u64) -> (u32, i8) {
    let hz = u128::from(tsc_hz.max(1));
    let mut shift: i8 = 0;
    // ns per tick * 2^32 must fit in 32 bits: shift the ticks up (slow
    // TSCs) or down (never needed below 4 GHz * 2^k, but kept exact).
    let mut mul = (1_000_000_000u128 << 32) / hz;
    while mul > u128::from(u32::MAX) && shift < 31 {
        shift += 1;
        mul >>= 1;
    }
    (u32::try_from(mul).unwrap_or(u32::MAX), shift)
}

/// pvclock_vcpu_time_info for a guest whose clock read 0 ns at TSC
/// `boot_tsc`, sampled at TSC `now`.
pub fn time_info(tsc_hz: u64, boot_tsc: u64, now: u64) -> [u8; TIME_INFO_LEN] {
    let (mul, shift) = scale(tsc_hz);
    let elapsed = now.saturating_sub(boot_tsc);
    let system_ns = u64::try_from(u128::from(elapsed) * 1_000_000_000 / u128::from(tsc_hz.max(1))).unwrap_or(u64::MAX);
    let mut r = [0u8; TIME_INFO_LEN];
    let fields: [(&mut [u8], &[u8]); 6] = {
        let (version, rest) = r.split_at_mut(4);
        let (_pad, rest) = rest.split_at_mut(4);
        let (tsc, rest) = rest.split_at_mut(8);
        let (sys, rest) = rest.split_at_mut(8);
        let (m, rest) = rest.split_at_mut(4);
        let (sh, rest) = rest.split_at_mut(1);
        let (fl, _) = rest.split_at_mut(1);
        [
            (version, &2u32.to_le_bytes()[..]),
            (tsc, &now.to_le_bytes()[..]),
            (sys, &system_ns.to_le_bytes()[..]),
            (m, &mul.to_le_bytes()[..]),
            (sh, &shift.to_le_bytes()[..]),
            (fl, &[FLAG_TSC_STABLE][..]),
        ]
    };
    for (dst, src) in fields {
        dst.copy_from_slice(src);
    }
    r
}

/// pvclock_wall_clock: the wall time at which the guest's clock read 0.
pub fn wall_clock(boot_unix_seconds: u64) -> [u8; WALL_CLOCK_LEN] {
    let mut r = [0u8; WALL_CLOCK_LEN];
    let (version, rest) = r.split_at_mut(4);
    version.copy_from_slice(&2u32.to_le_bytes());
    let (sec, _nsec) = rest.split_at_mut(4);
    sec.copy_from_slice(&u32::try_from(boot_unix_seconds).unwrap_or(u32::MAX).to_le_bytes());
    r
}

/// CPUID 0x40000100 and 0x40000101 as the KVM ABI defines them.
pub fn cpuid(leaf: u32) -> Option<[u32; 4]> {
    let sig = |s: &[u8; 4]| u32::from_le_bytes(*s);
    match leaf {
        CPUID_BASE => Some([CPUID_BASE + 1, sig(b"KVMK"), sig(b"VMKV"), sig(b"M\0\0\0")]),
        l if l == CPUID_BASE + 1 => Some([FEATURES, 0, 0, 0]),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What Linux's pvclock_tsc_khz computes from a record.
    fn linux_tsc_khz(mul: u32, shift: i8) -> u64 {
        let khz = (1_000_000u64 << 32) / u64::from(mul);
        if shift < 0 {
            khz << -shift
        } else {
            khz >> shift
        }
    }

    /// What the guest computes as ns since boot.
    fn guest_ns(info: &[u8; TIME_INFO_LEN], tsc: u64) -> u64 {
        let ts = u64::from_le_bytes(info[8..16].try_into().unwrap());
        let sys = u64::from_le_bytes(info[16..24].try_into().unwrap());
        let mul = u32::from_le_bytes(info[24..28].try_into().unwrap());
        let shift = info[28] as i8;
        let mut d = tsc - ts;
        d = if shift < 0 { d >> -shift } else { d << shift };
        sys + ((u128::from(d) * u128::from(mul)) >> 32) as u64
    }

    #[test]
    fn the_guest_recovers_the_rate_and_the_time() {
        for hz in [2_317_000_000u64, 1_000_000_000, 50_000_000, 3_999_999_999] {
            let (mul, shift) = scale(hz);
            let khz = linux_tsc_khz(mul, shift);
            assert!(khz.abs_diff(hz / 1000) <= hz / 1000 / 100_000 + 1, "hz {hz}: khz {khz}");
            let info = time_info(hz, 1000, 1000 + hz);
            assert_eq!(guest_ns(&info, 1000 + hz), 1_000_000_000);
            let later = guest_ns(&info, 1000 + 3 * hz);
            assert!(later.abs_diff(3_000_000_000) < 1_000_000, "{later}");
        }
        assert_eq!(u32::from_le_bytes(wall_clock(1_800_000_000)[4..8].try_into().unwrap()), 1_800_000_000);
        assert_eq!(cpuid(CPUID_BASE).unwrap()[1], u32::from_le_bytes(*b"KVMK"));
    }

    proptest! {
        #[test]
        fn scale_never_overflows(hz in any::<u64>()) {
            let (mul, shift) = scale(hz);
            prop_assert!(mul > 0 || hz > 1_000_000_000u64 << 32);
            prop_assert!((0..32).contains(&shift));
        }
    }
}
