//! Dead-node detection from heartbeats and an independent probe, with the
//! timing written out so the docs can quote the bound.
//!
//! A node renews its fencing lease with every heartbeat it answers; when no
//! heartbeat renewed it for `fence_after` it stops its protected VMs on its
//! own. The controller must not declare it dead (and start those VMs
//! elsewhere) before that has happened, with a margin for clock drift.

use std::fmt;
use std::time::{Duration, Instant};

/// The detector's timing knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Heartbeat period (one `status` per node per tick).
    pub interval: Duration,
    /// Consecutive failed heartbeats before the probe decides.
    pub misses: u32,
    /// Bound on the independent probe.
    pub probe_timeout: Duration,
    /// The node's fencing lease: it stops protected VMs this long after the
    /// last heartbeat it answered.
    pub fence_after: Duration,
    /// Safety margin between the node fencing itself and the controller
    /// acting (clock drift, a slow heartbeat).
    pub margin: Duration,
}

impl Default for HealthConfig {
    /// 1 s heartbeats, 5 misses, 1 s probe, 3 s lease, 1 s margin:
    /// dead within 6 s, never before 5 s > 3 s + 1 s.
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(1),
            misses: 5,
            probe_timeout: Duration::from_secs(1),
            fence_after: Duration::from_secs(3),
            margin: Duration::from_secs(1),
        }
    }
}

/// A timing configuration that could declare a node dead while it may still
/// run its VMs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl HealthConfig {
    /// Longest time from a node's last answered heartbeat to the controller
    /// declaring it dead: `interval * misses + probe_timeout`.
    pub fn detection_bound(&self) -> Duration {
        self.interval.saturating_mul(self.misses).saturating_add(self.probe_timeout)
    }

    /// Shortest such time: `interval * misses` (the probe may fail at once).
    pub fn earliest_declaration(&self) -> Duration {
        self.interval.saturating_mul(self.misses)
    }

    /// Refuse timings under which a node could be declared dead before its
    /// lease ran out. The check uses the earliest declaration, which is
    /// stricter than `detection_bound > fence_after + margin`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.misses == 0 || self.interval.is_zero() {
            return Err(ConfigError("heartbeat interval and misses must be non-zero".into()));
        }
        let need = self.fence_after.saturating_add(self.margin);
        if self.earliest_declaration() <= need {
            return Err(ConfigError(format!(
                "interval ({:?}) x misses ({}) = {:?} must exceed the nodes' fencing lease ({:?}) + margin ({:?}) = {:?}: \
                 a node could be declared dead while it still runs its protected VMs",
                self.interval,
                self.misses,
                self.earliest_declaration(),
                self.fence_after,
                self.margin,
                need
            )));
        }
        Ok(())
    }
}

/// What the detector concludes after a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answered (or missed too few).
    Alive,
    /// Missed enough heartbeats for long enough: probe it now.
    ProbeNeeded,
}

/// One node's detector.
#[derive(Clone, Debug)]
pub struct Detector {
    last_ok: Instant,
    failures: u32,
}

impl Detector {
    /// A detector that counts from `now` as if the node just answered.
    pub fn new(now: Instant) -> Self {
        Detector { last_ok: now, failures: 0 }
    }

    /// Record one heartbeat result. A probe is needed once `misses`
    /// heartbeats failed in a row *and* the lease has run out by the clock,
    /// so fast ticks cannot shorten the wait.
    pub fn heartbeat(&mut self, cfg: &HealthConfig, now: Instant, ok: bool) -> Verdict {
        if ok {
            self.last_ok = now;
            self.failures = 0;
            return Verdict::Alive;
        }
        self.failures = self.failures.saturating_add(1);
        let silent = now.saturating_duration_since(self.last_ok);
        if self.failures >= cfg.misses && silent > cfg.fence_after.saturating_add(cfg.margin) {
            Verdict::ProbeNeeded
        } else {
            Verdict::Alive
        }
    }

    /// Consecutive failed heartbeats so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long the node has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_ok)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_is_valid_and_bound_quoted() {
        let c = HealthConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.detection_bound(), Duration::from_secs(6));
    }

    #[test]
    fn too_short_refused() {
        let c = HealthConfig { misses: 3, ..HealthConfig::default() };
        let e = c.validate().err().map(|e| e.0).unwrap_or_default();
        assert!(e.contains("fencing lease"), "{e}");
    }

    proptest! {
        /// With a valid config, whatever the tick pattern, a probe is never
        /// asked for before the lease plus margin has passed since the last
        /// answered heartbeat, and always after `misses` failures spaced
        /// `interval` apart.
        #[test]
        fn never_before_the_lease(interval_ms in 100u64..2000, misses in 1u32..10, fence_ms in 0u64..5000,
                                  margin_ms in 0u64..2000, gaps in proptest::collection::vec(1u64..3000, 1..40)) {
            let cfg = HealthConfig {
                interval: Duration::from_millis(interval_ms),
                misses,
                probe_timeout: Duration::from_millis(500),
                fence_after: Duration::from_millis(fence_ms),
                margin: Duration::from_millis(margin_ms),
            };
            prop_assume!(cfg.validate().is_ok());
            let t0 = Instant::now();
            let mut d = Detector::new(t0);
            let mut t = t0;
            for g in gaps {
                t += Duration::from_millis(g);
                if d.heartbeat(&cfg, t, false) == Verdict::ProbeNeeded {
                    prop_assert!(t - t0 > cfg.fence_after + cfg.margin);
                }
            }
            let mut d = Detector::new(t0);
            let mut v = Verdict::Alive;
            for i in 1..=misses {
                v = d.heartbeat(&cfg, t0 + cfg.interval * i, false);
            }
            prop_assert_eq!(v, Verdict::ProbeNeeded);
        }
    }
}
