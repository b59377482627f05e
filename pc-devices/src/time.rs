//! Guest time. Every model takes `now` as TSC ticks (the guest's TSC is the
//! host's, unscaled) and converts with the rate it was built with.

/// A tick rate, for converting between TSC ticks and a device's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscRate {
    /// TSC ticks per second.
    pub hz: u64,
}

impl TscRate {
    /// A rate; `hz` of 0 is taken as 1 so conversions never divide by zero.
    pub fn new(hz: u64) -> TscRate {
        TscRate { hz: hz.max(1) }
    }

    /// How many ticks of a clock running at `dev_hz` fit in `tsc` TSC ticks.
    pub fn to_device(self, tsc: u64, dev_hz: u64) -> u64 {
        let v = u128::from(tsc) * u128::from(dev_hz) / u128::from(self.hz);
        u64::try_from(v).unwrap_or(u64::MAX)
    }

    /// TSC ticks taken by `ticks` of a clock running at `dev_hz` (rounded up,
    /// so a deadline computed from it is never early).
    pub fn from_device(self, ticks: u64, dev_hz: u64) -> u64 {
        let dev = u128::from(dev_hz.max(1));
        let v = (u128::from(ticks) * u128::from(self.hz)).div_ceil(dev);
        u64::try_from(v).unwrap_or(u64::MAX)
    }

    /// TSC ticks in `ns` nanoseconds (rounded up).
    pub fn from_ns(self, ns: u64) -> u64 {
        self.from_device(ns, 1_000_000_000)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_without_going_early() {
        let r = TscRate::new(2_500_000_000);
        assert_eq!(r.to_device(2_500_000_000, 1_193_182), 1_193_182);
        let t = r.from_device(1, 1_193_182);
        assert!(r.to_device(t, 1_193_182) >= 1);
        assert_eq!(r.from_ns(1_000), 2_500);
        assert_eq!(TscRate::new(0).hz, 1);
    }
}
