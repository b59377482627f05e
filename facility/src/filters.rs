//! Cluster boundaries derived from the placement, and the "update blast" that
//! reprograms them on every affected node at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::driver::{DriverError, NodeDriver};
use crate::model::{FacilityState, NodeAddr, NodeName, NodeState};

/// The filters one node gets: (cluster, members) pairs.
type NodeWork = Vec<(u32, Vec<[u8; 4]>)>;

/// Members (IPs) of each cluster, from every VM that has an address.
pub fn cluster_members(st: &FacilityState) -> BTreeMap<u32, Vec<[u8; 4]>> {
    let mut m: BTreeMap<u32, BTreeSet<[u8; 4]>> = BTreeMap::new();
    for vm in st.vms.values() {
        if let Some(ip) = vm.spec.ip {
            m.entry(vm.spec.cluster).or_default().insert(ip);
        }
    }
    m.into_iter().map(|(c, s)| (c, s.into_iter().collect())).collect()
}

/// The reachable nodes (Active or Draining) hosting a VM of `cluster`.
pub fn nodes_of_cluster(st: &FacilityState, cluster: u32) -> BTreeSet<NodeName> {
    st.vms
        .values()
        .filter(|v| v.spec.cluster == cluster)
        .map(|v| v.node.clone())
        .filter(|n| st.nodes.get(n).is_some_and(|r| matches!(r.state, NodeState::Active | NodeState::Draining)))
        .collect()
}

/// One blast's outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlastReport {
    /// Nodes reprogrammed successfully.
    pub nodes_ok: usize,
    /// Nodes that failed, with the first error each.
    pub failed: Vec<(NodeName, DriverError)>,
    /// Wall time of the whole blast.
    pub wall: Duration,
}

/// Program `clusters` on every node hosting them plus `extra` nodes (ones a
/// VM just left, so they drop its address), one thread per node.
pub fn blast<D: NodeDriver>(
    driver: &D,
    st: &FacilityState,
    clusters: &BTreeSet<u32>,
    extra: &[NodeName],
) -> BlastReport {
    let members = cluster_members(st);
    // node -> [(cluster, members)]
    let mut work: BTreeMap<NodeName, NodeWork> = BTreeMap::new();
    // Every live node learns every named cluster's members: a node that
    // hosts none of a cluster's VMs still has to drop that cluster's
    // traffic to its own VMs of other clusters.
    let live: BTreeSet<NodeName> = st
        .nodes
        .iter()
        .filter(|(_, r)| matches!(r.state, NodeState::Active | NodeState::Draining))
        .map(|(n, _)| n.clone())
        .collect();
    for &c in clusters {
        let m = members.get(&c).cloned().unwrap_or_default();
        let mut targets = live.clone();
        for e in extra {
            if st.nodes.get(e).is_some_and(|r| matches!(r.state, NodeState::Active | NodeState::Draining)) {
                targets.insert(e.clone());
            }
        }
        for n in targets {
            work.entry(n).or_default().push((c, m.clone()));
        }
    }
    let jobs: Vec<(NodeAddr, NodeWork)> =
        work.into_iter().filter_map(|(n, w)| st.addr(&n).cloned().map(|a| (a, w))).collect();
    let start = Instant::now();
    let results: Vec<(NodeName, Result<(), DriverError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(a, w)| {
                s.spawn(move || {
                    let r = w.iter().try_for_each(|(c, m)| driver.set_cluster_filter(a, *c, m));
                    (a.name.clone(), r)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| (String::new(), Err(DriverError::Other("filter thread panicked".into()))))
            })
            .collect()
    });
    let wall = start.elapsed();
    let mut rep = BlastReport { wall, ..BlastReport::default() };
    for (n, r) in results {
        match r {
            Ok(()) => rep.nodes_ok += 1,
            Err(e) => rep.failed.push((n, e)),
        }
    }
    rep
}
