//! Randomness for keys: RDSEED, else RDRAND. There is no fallback: a node
//! without a hardware random source does not generate keys (and says so),
//! rather than generating guessable ones.

use core::arch::x86_64::{_rdrand64_step, _rdseed64_step};

fn has(feature_leaf7_rdseed: bool) -> bool {
    let cpuid = raw_cpuid::CpuId::new();
    if feature_leaf7_rdseed {
        cpuid.get_extended_feature_info().is_some_and(|f| f.has_rdseed())
    } else {
        cpuid.get_feature_info().is_some_and(|f| f.has_rdrand())
    }
}

/// Whether the CPU offers a hardware random source.
pub fn available() -> bool {
    has(true) || has(false)
}

/// Fills `out` with hardware randomness; `Err` when the CPU has none or it
/// keeps failing (RDRAND may transiently run dry; we retry a bounded number
/// of times).
pub fn fill(out: &mut [u8]) -> Result<(), &'static str> {
    let seed = has(true);
    let rand = has(false);
    if !seed && !rand {
        return Err("no hardware random source (RDSEED/RDRAND)");
    }
    for chunk in out.chunks_mut(8) {
        let mut v = 0u64;
        let mut ok = false;
        for _ in 0..1000 {
            // SAFETY: CPUID reported the instruction; it only writes `v`.
            let got = unsafe {
                if seed {
                    _rdseed64_step(&mut v) == 1
                } else {
                    _rdrand64_step(&mut v) == 1
                }
            };
            if got {
                ok = true;
                break;
            }
        }
        if !ok {
            return Err("hardware random source keeps failing");
        }
        let bytes = v.to_le_bytes();
        chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or(&[]));
    }
    Ok(())
}
