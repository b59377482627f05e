//! Volume locks keyed by volume (the VM's name), held by an application
//! instance on a node, with fencing epochs.
//!
//! The epoch is what nodes compare: a node refuses starts and writes below
//! the highest epoch it has seen for a volume, so a copy left behind on a
//! partitioned node can never write over the copy that took over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::NodeName;

/// Who holds a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Application-instance ID.
    pub instance: u64,
    /// The node it runs on.
    pub node: NodeName,
}

/// One volume's lock; the entry outlives its holder so epochs are never reused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLock {
    /// The current holder, if any.
    pub holder: Option<Holder>,
    /// The last epoch handed out for this volume (0: none yet).
    pub epoch: u64,
}

/// What [`LockTable::acquire`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The lock was free, or already held by this instance on this node.
    Granted {
        /// Epoch to run with.
        epoch: u64,
    },
    /// The same instance moved to a new node: it has the lock at once, with a
    /// higher epoch that fences the old copy.
    TakenOver {
        /// New epoch.
        epoch: u64,
        /// Where the instance held it before.
        previous_node: NodeName,
    },
    /// Another instance holds it.
    Refused {
        /// The holder's instance.
        holder_instance: u64,
        /// The holder's node.
        holder_node: NodeName,
    },
}

/// All volume locks of the facility.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTable {
    volumes: BTreeMap<String, VolumeLock>,
}

impl LockTable {
    /// Take `volume` for `instance` on `node` (see [`Acquire`] for the rules).
    pub fn acquire(&mut self, volume: &str, instance: u64, node: &str) -> Acquire {
        let lock = self.volumes.entry(volume.to_string()).or_default();
        match &lock.holder {
            None => {
                lock.epoch = lock.epoch.saturating_add(1);
                lock.holder = Some(Holder { instance, node: node.to_string() });
                Acquire::Granted { epoch: lock.epoch }
            }
            Some(h) if h.instance == instance && h.node == node => Acquire::Granted { epoch: lock.epoch },
            Some(h) if h.instance == instance => {
                let previous_node = h.node.clone();
                lock.epoch = lock.epoch.saturating_add(1);
                lock.holder = Some(Holder { instance, node: node.to_string() });
                Acquire::TakenOver { epoch: lock.epoch, previous_node }
            }
            Some(h) => Acquire::Refused { holder_instance: h.instance, holder_node: h.node.clone() },
        }
    }

    /// Let go of `volume` if `instance` holds it; the epoch is kept, so the
    /// next holder gets a higher one. Returns whether it was released.
    pub fn release(&mut self, volume: &str, instance: u64) -> bool {
        match self.volumes.get_mut(volume) {
            Some(l) if l.holder.as_ref().is_some_and(|h| h.instance == instance) => {
                l.holder = None;
                true
            }
            _ => false,
        }
    }

    /// The lock on `volume`, if it was ever taken.
    pub fn get(&self, volume: &str) -> Option<&VolumeLock> {
        self.volumes.get(volume)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn takeover_and_refusal() {
        let mut t = LockTable::default();
        assert_eq!(t.acquire("v", 7, "a"), Acquire::Granted { epoch: 1 });
        assert_eq!(t.acquire("v", 7, "a"), Acquire::Granted { epoch: 1 });
        assert_eq!(t.acquire("v", 7, "b"), Acquire::TakenOver { epoch: 2, previous_node: "a".into() });
        assert_eq!(t.acquire("v", 8, "c"), Acquire::Refused { holder_instance: 7, holder_node: "b".into() });
        assert!(!t.release("v", 8));
        assert!(t.release("v", 7));
        assert_eq!(t.acquire("v", 8, "c"), Acquire::Granted { epoch: 3 });
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire(u8, u64, u8),
        Release(u8, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 1u64..4, 0u8..4).prop_map(|(v, i, n)| Op::Acquire(v, i, n)),
            (0u8..3, 1u64..4).prop_map(|(v, i)| Op::Release(v, i)),
        ]
    }

    proptest! {
        /// Epochs per volume never go down; every change of holder (node or
        /// instance) gets an epoch never handed out before; a different
        /// instance is refused while the lock is held; the same instance
        /// from a new node takes over at once.
        #[test]
        fn lock_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = LockTable::default();
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            let mut issued: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
            for o in ops {
                match o {
                    Op::Acquire(v, inst, n) => {
                        let vol = format!("v{v}");
                        let node = format!("n{n}");
                        let before = t.get(&vol).cloned();
                        let r = t.acquire(&vol, inst, &node);
                        let prev = last.get(&vol).copied().unwrap_or(0);
                        match r {
                            Acquire::Granted { epoch } => {
                                let same = before.as_ref().and_then(|b| b.holder.clone())
                                    == Some(Holder { instance: inst, node: node.clone() });
                                if same { prop_assert_eq!(epoch, prev); } else { prop_assert!(epoch > prev); }
                                let hist = issued.entry(vol.clone()).or_default();
                                if !same {
                                    prop_assert!(hist.iter().all(|(e, _, _)| *e != epoch));
                                    hist.push((epoch, inst, node.clone()));
                                }
                                last.insert(vol, epoch);
                            }
                            Acquire::TakenOver { epoch, previous_node } => {
                                let h = before.and_then(|b| b.holder);
                                prop_assert!(h.as_ref().is_some_and(|h| h.instance == inst && h.node != node));
                                prop_assert_eq!(h.map(|h| h.node), Some(previous_node));
                                prop_assert!(epoch > prev);
                                let hist = issued.entry(vol.clone()).or_default();
                                prop_assert!(hist.iter().all(|(e, _, _)| *e != epoch));
                                hist.push((epoch, inst, node));
                                last.insert(vol, epoch);
                            }
                            Acquire::Refused { holder_instance, .. } => {
                                prop_assert_ne!(holder_instance, inst);
                                let h = before.and_then(|b| b.holder);
                                prop_assert_eq!(h.map(|h| h.instance), Some(holder_instance));
                                prop_assert_eq!(t.get(&vol).map(|l| l.epoch).unwrap_or(0), prev);
                            }
                        }
                    }
                    Op::Release(v, inst) => {
                        let vol = format!("v{v}");
                        let before = t.get(&vol).map(|l| l.epoch);
                        t.release(&vol, inst);
                        prop_assert_eq!(t.get(&vol).map(|l| l.epoch), before);
                    }
                }
            }
        }
    }
}
