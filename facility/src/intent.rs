//! Intents: plans recorded in the store before acting, as lists of
//! idempotent steps with a cursor, so a controller that dies mid-way leaves
//! work another controller finishes without doing any step's effect twice.

use serde::{Deserialize, Serialize};

use crate::model::NodeName;

/// Why the intent exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentKind {
    /// A new VM.
    Create,
    /// Its node died: restart it elsewhere (from its replica if protected).
    Heal,
    /// Its node is draining: move it with its disk.
    Move,
    /// Its partner died or is draining: a new replica elsewhere.
    Repartner,
    /// A rolling upgrade: stop it, boot it from its new version, start it
    /// (same node, same disk, same epoch).
    Upgrade,
}

/// One idempotent step. Each checks the node's report where that tells
/// whether it was already done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Replica of the VM from `from` onto `to` (a move's target).
    ReplicaToTarget,
    /// Pull/push rounds from `from` to `to` while the VM still runs.
    CatchUp,
    /// Stop the VM on `from`.
    StopSource,
    /// Copy the last dirty blocks from `from` to `to` (VM stopped).
    FinalDrain,
    /// Fence `from` at the new epoch.
    FenceSource,
    /// Define the VM on `to` with a fresh disk (no replica to promote).
    Create,
    /// Turn `to`'s replica into the VM's disk.
    Promote,
    /// Start it on `to` at the new epoch.
    Start,
    /// Replica on the VM's (new) partner.
    ReplicaToPartner,
    /// Reprogram the cluster's filters.
    Filters,
    /// Remove the old copy on `from`.
    DestroySource,
    /// Drop the old replica on `from` (re-partnering).
    DropOldReplica,
    /// Tell the tenant.
    Notify,
    /// Boot it from the image its record names (a rolling upgrade).
    SetImage,
}

/// One plan in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Unique per facility.
    pub id: u64,
    /// What for.
    pub kind: IntentKind,
    /// The VM it works on (one intent per VM at a time).
    pub vm: String,
    /// Node the VM (or replica) comes from, if any.
    pub from: Option<NodeName>,
    /// Node it goes to.
    pub to: NodeName,
    /// Epoch the VM runs with once done.
    pub epoch: u64,
    /// For a move: the epoch the source copy still runs at. Its data is
    /// copied under that epoch (a replica refuses pushes below what it has
    /// seen, and promotion must go above it); 0 when not a move.
    #[serde(default)]
    pub source_epoch: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Steps done so far (the cursor, saved after each step).
    pub done: usize,
    /// Unix time (ms) it was planned, to report how long it took.
    pub planned_ms: u64,
}

impl Intent {
    /// The epoch data is copied under while the source still writes (a
    /// move's source epoch; else the intent's own).
    pub fn copy_epoch(&self) -> u64 {
        if self.source_epoch > 0 {
            self.source_epoch
        } else {
            self.epoch
        }
    }

    /// The next step, or None when all are done.
    pub fn next(&self) -> Option<Step> {
        self.steps.get(self.done).copied()
    }

    /// The last step done (None: only planned), for status displays.
    pub fn last_done(&self) -> Option<Step> {
        self.done.checked_sub(1).and_then(|i| self.steps.get(i).copied())
    }
}

/// The steps of each kind of plan.
pub fn steps(kind: IntentKind, protected: bool, has_replica_on_target: bool) -> Vec<Step> {
    use Step::*;
    match kind {
        IntentKind::Create => {
            let mut s = vec![Create, Start];
            if protected {
                s.push(ReplicaToPartner);
            }
            s.push(Filters);
            s
        }
        IntentKind::Heal => {
            if protected && has_replica_on_target {
                vec![Promote, Start, ReplicaToPartner, Filters, Notify]
            } else {
                vec![Create, Start, Filters, Notify]
            }
        }
        IntentKind::Move => {
            let mut s = Vec::new();
            if !has_replica_on_target {
                s.push(ReplicaToTarget);
            }
            s.extend([CatchUp, StopSource, FinalDrain, FenceSource, Promote, Start]);
            if protected {
                s.push(ReplicaToPartner);
            }
            s.extend([Filters, DestroySource, Notify]);
            s
        }
        IntentKind::Repartner => vec![ReplicaToPartner, DropOldReplica],
        IntentKind::Upgrade => vec![StopSource, SetImage, Start],
    }
}
