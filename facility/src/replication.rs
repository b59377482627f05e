//! Keeping protected VMs' disks copied to their partner, one bounded round at
//! a time, with lag figures.
//!
//! A pulled batch counts as clean on the primary, so a batch whose push
//! failed is **kept and re-sent** first in the next round (same VM, same
//! partner, same epoch). When that cannot be done (the controller restarted
//! and lost it, or the partner or epoch changed) the primary is asked for a
//! full resync instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::driver::{DriverError, NodeDriver, ReplicaBatch};
use crate::model::{NodeAddr, NodeName};

/// One protected VM's replication pair as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// VM name.
    pub vm: String,
    /// Node running it.
    pub primary: NodeAddr,
    /// Node holding its replica.
    pub partner: NodeAddr,
    /// The VM's epoch (pushes carry it; the partner refuses older).
    pub epoch: u64,
}

/// Lag of one VM's replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Blocks known dirty: the primary's remaining count plus any batch
    /// waiting to be re-sent.
    pub blocks_pending: u64,
    /// Since when writes have been waiting (None: fully replicated at the
    /// end of the last round).
    pub dirty_since: Option<Instant>,
    /// Push or pull failures in a row.
    pub failures: u32,
}

impl Lag {
    /// Age of the oldest unreplicated write round at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        self.dirty_since.map(|t| now.saturating_duration_since(t)).unwrap_or_default()
    }
}

struct Track {
    partner: NodeName,
    epoch: u64,
    retry: Option<ReplicaBatch>,
    lag: Lag,
}

/// What one round did for one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoundOutcome {
    /// Blocks pushed this round (0: nothing to do).
    Pushed(usize),
    /// A push failed; the batch is kept for the next round.
    PushFailed(DriverError),
    /// The pull failed; nothing was lost.
    PullFailed(DriverError),
    /// The pair changed or a batch was lost: a full resync was asked for.
    Resync,
}

/// Retry batches and lag per VM (in memory: a new controller starts empty
/// and asks every primary for a full resync, see [`Replicator::new`]).
#[derive(Default)]
pub struct Replicator {
    tracks: BTreeMap<String, Track>,
    /// Blocks per pull.
    pub max_blocks: u32,
    /// Pulls per round per VM (bounds a round's time).
    pub max_pulls: u32,
}

impl Replicator {
    /// A replicator pulling `max_blocks` per pull, `max_pulls` per round.
    pub fn new(max_blocks: u32, max_pulls: u32) -> Self {
        Replicator { tracks: BTreeMap::new(), max_blocks, max_pulls }
    }

    /// Lag figures by VM.
    pub fn lag(&self) -> BTreeMap<String, Lag> {
        self.tracks.iter().map(|(k, t)| (k.clone(), t.lag.clone())).collect()
    }

    /// Forget VMs no longer protected or gone.
    /// Whether a pulled batch for `vm` waits to be pushed again (it would
    /// be lost if `vm` left replication now).
    pub fn holds_retry(&self, vm: &str) -> bool {
        self.tracks.get(vm).is_some_and(|t| t.retry.is_some())
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.tracks.retain(|k, _| keep(k));
    }

    /// One round for `pair`: re-send a kept batch, then pull and push until
    /// the primary has nothing left or `max_pulls` pulls were made.
    pub fn round<D: NodeDriver>(&mut self, d: &D, pair: &Pair, now: Instant) -> RoundOutcome {
        let fresh = !self.tracks.contains_key(&pair.vm);
        let t = self.tracks.entry(pair.vm.clone()).or_insert_with(|| Track {
            partner: pair.partner.name.clone(),
            epoch: pair.epoch,
            retry: None,
            lag: Lag::default(),
        });
        if fresh || t.partner != pair.partner.name || t.epoch != pair.epoch {
            // Unknown history (a new controller) or a new pair: a batch may
            // have been lost, so have the primary send everything again.
            t.partner = pair.partner.name.clone();
            t.epoch = pair.epoch;
            t.retry = None;
            t.lag.dirty_since.get_or_insert(now);
            if let Err(e) = d.replica_resync(&pair.primary, &pair.vm) {
                t.lag.failures = t.lag.failures.saturating_add(1);
                // Try again next round.
                self.tracks.remove(&pair.vm);
                return RoundOutcome::PullFailed(e);
            }
            return RoundOutcome::Resync;
        }
        let mut pushed = 0usize;
        if let Some(b) = t.retry.take() {
            if let Err(e) = d.replica_push(&pair.partner, &pair.vm, pair.epoch, &b) {
                t.lag.failures = t.lag.failures.saturating_add(1);
                t.retry = Some(b);
                return RoundOutcome::PushFailed(e);
            }
            pushed += b.blocks.len();
        }
        for _ in 0..self.max_pulls.max(1) {
            let b = match d.replica_pull(&pair.primary, &pair.vm, self.max_blocks) {
                Ok(b) => b,
                Err(e) => {
                    t.lag.failures = t.lag.failures.saturating_add(1);
                    return RoundOutcome::PullFailed(e);
                }
            };
            let remaining = b.remaining;
            if !b.blocks.is_empty() {
                t.lag.dirty_since.get_or_insert(now);
                if let Err(e) = d.replica_push(&pair.partner, &pair.vm, pair.epoch, &b) {
                    t.lag.failures = t.lag.failures.saturating_add(1);
                    t.lag.blocks_pending = remaining.saturating_add(b.blocks.len() as u64);
                    t.retry = Some(b);
                    return RoundOutcome::PushFailed(e);
                }
                pushed += b.blocks.len();
            }
            t.lag.blocks_pending = remaining;
            t.lag.failures = 0;
            if remaining == 0 {
                t.lag.dirty_since = None;
                break;
            }
            t.lag.dirty_since.get_or_insert(now);
        }
        RoundOutcome::Pushed(pushed)
    }

    /// Copy everything still dirty (the primary is stopped, so this ends):
    /// at most `max_pulls_total` pulls. Used by a move before promotion.
    pub fn drain<D: NodeDriver>(
        d: &D,
        pair: &Pair,
        max_blocks: u32,
        max_pulls_total: u32,
    ) -> Result<usize, DriverError> {
        let mut pushed = 0usize;
        for _ in 0..max_pulls_total {
            let b = d.replica_pull(&pair.primary, &pair.vm, max_blocks)?;
            if !b.blocks.is_empty() {
                // A failed push here loses the batch: ask for a full resync
                // so a retry of this step still copies everything.
                if let Err(e) = d.replica_push(&pair.partner, &pair.vm, pair.epoch, &b) {
                    let _ = d.replica_resync(&pair.primary, &pair.vm);
                    return Err(e);
                }
                pushed += b.blocks.len();
            }
            if b.remaining == 0 {
                return Ok(pushed);
            }
        }
        Err(DriverError::Other(format!("replica of {} still not drained after {max_pulls_total} pulls", pair.vm)))
    }
}
