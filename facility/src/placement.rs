//! Where a VM (or its replica) goes. Incremental: placing one VM never moves
//! another; only free capacity of Active nodes counts.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::{Capacity, FacilityState, NodeName, NodeState, Resources};

/// Why no node could be chosen; the message names the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementError(pub String);

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlacementError {}

/// What each node has taken: its VMs in full (also Waiting ones, whose node
/// may come back) and the disk of the replicas it holds.
pub fn usage(st: &FacilityState) -> BTreeMap<NodeName, Capacity> {
    let mut u: BTreeMap<NodeName, Capacity> = BTreeMap::new();
    for vm in st.vms.values() {
        let e = u.entry(vm.node.clone()).or_default();
        *e = e.plus(Capacity::of(vm.spec.res));
        if let Some(p) = &vm.partner {
            let e = u.entry(p.clone()).or_default();
            *e = e.plus(Capacity::disk_of(vm.spec.res));
        }
    }
    u
}

/// Free capacity of every Active node (not in `exclude`).
pub fn free(st: &FacilityState, exclude: &[&str]) -> BTreeMap<NodeName, Capacity> {
    let used = usage(st);
    st.nodes
        .iter()
        .filter(|(n, r)| r.state == NodeState::Active && !exclude.contains(&n.as_str()))
        .map(|(n, r)| (n.clone(), r.capacity.minus(used.get(n).copied().unwrap_or_default())))
        .collect()
}

/// Pick the node with the most free memory among Active nodes not in
/// `exclude` that hold `need`; ties go to the smallest name.
pub fn pick(st: &FacilityState, need: Capacity, exclude: &[&str]) -> Result<NodeName, PlacementError> {
    let free = free(st, exclude);
    free.iter()
        .filter(|(_, f)| f.holds(need))
        // BTreeMap order is by name, and max_by keeps the last maximum:
        // compare names reversed so the smallest name wins a tie.
        .max_by(|(an, af), (bn, bf)| af.memory_mib.cmp(&bf.memory_mib).then_with(|| bn.cmp(an)))
        .map(|(n, _)| n.clone())
        .ok_or_else(|| refusal(&free, need))
}

/// Where a new or homeless VM runs.
pub fn place_vm(st: &FacilityState, res: Resources, exclude: &[&str]) -> Result<NodeName, PlacementError> {
    pick(st, Capacity::of(res), exclude)
}

/// Where a protected VM's replica goes: a different Active node with room
/// for the disk and, so it can take the VM over, for the VM itself.
pub fn place_partner(st: &FacilityState, res: Resources, primary: &str) -> Result<NodeName, PlacementError> {
    pick(st, Capacity::of(res), &[primary]).map_err(|e| PlacementError(format!("no partner besides {primary}: {e}")))
}

/// Whether `node` is Active and has room for `need` right now.
pub fn fits(st: &FacilityState, node: &str, need: Capacity) -> bool {
    free(st, &[]).get(node).is_some_and(|f| f.holds(need))
}

fn refusal(free: &BTreeMap<NodeName, Capacity>, need: Capacity) -> PlacementError {
    if free.is_empty() {
        return PlacementError("no active node".into());
    }
    let msg = if !free.values().any(|f| f.memory_mib >= need.memory_mib) {
        format!("no node has {} MiB of memory free", need.memory_mib)
    } else if !free.values().any(|f| f.vcpus >= need.vcpus) {
        format!("no node has {} vCPUs free", need.vcpus)
    } else if !free.values().any(|f| f.disk_mib >= need.disk_mib) {
        format!("no node has {} MiB of disk free", need.disk_mib)
    } else {
        format!(
            "no node has {} vCPUs, {} MiB of memory and {} MiB of disk free together",
            need.vcpus, need.memory_mib, need.disk_mib
        )
    };
    PlacementError(msg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::model::{NodeAddr, NodeRecord, VmPlacementSpec, VmRecord, VmState};
    use proptest::prelude::*;

    fn node(st: &mut FacilityState, name: &str, cpus: u64, mem: u64) {
        st.nodes.insert(
            name.into(),
            NodeRecord {
                addr: NodeAddr { name: name.into(), addr: ([127, 0, 0, 1], 7700).into(), node_key: String::new() },
                capacity: Capacity { vcpus: cpus, memory_mib: mem, disk_mib: 100_000 },
                state: NodeState::Active,
                dead_since_ms: None,
                deaths: 0,
            },
        );
    }

    fn vm(st: &mut FacilityState, name: &str, on: &str, res: Resources) {
        st.vms.insert(
            name.into(),
            VmRecord {
                spec: VmPlacementSpec {
                    name: name.into(),
                    tenant: "t".into(),
                    tenant_console_key: String::new(),
                    cluster: 1,
                    res,
                    image: "i".into(),
                    initrd: None,
                    cmdline: String::new(),
                    ip: None,
                    mac: [0; 6],
                    protected: false,
                    service: None,
                    domain: None,
                    version: None,
                },
                node: on.into(),
                partner: None,
                instance: 1,
                epoch: 1,
                state: VmState::Running,
            },
        );
    }

    fn r(v: u8, m: u32) -> Resources {
        Resources { vcpus: v, memory_mib: m, disk_mib: 64 }
    }

    #[test]
    fn most_free_memory_then_name() {
        let mut st = FacilityState::default();
        node(&mut st, "b", 4, 1024);
        node(&mut st, "a", 4, 1024);
        assert_eq!(place_vm(&st, r(1, 100), &[]), Ok("a".to_string()));
        vm(&mut st, "x", "a", r(1, 100));
        assert_eq!(place_vm(&st, r(1, 100), &[]), Ok("b".to_string()));
        assert_eq!(place_partner(&st, r(1, 100), "b"), Ok("a".to_string()));
    }

    #[test]
    fn refusal_names_the_limit() {
        let mut st = FacilityState::default();
        assert_eq!(place_vm(&st, r(1, 1), &[]).map_err(|e| e.0), Err("no active node".into()));
        node(&mut st, "a", 2, 128);
        assert_eq!(place_vm(&st, r(1, 256), &[]).map_err(|e| e.0), Err("no node has 256 MiB of memory free".into()));
        assert_eq!(place_vm(&st, r(3, 64), &[]).map_err(|e| e.0), Err("no node has 3 vCPUs free".into()));
    }

    proptest! {
        /// Placing VMs one by one never overfills a node, and a VM placed
        /// earlier never changes node.
        #[test]
        fn never_overcommits(nodes in proptest::collection::vec((1u64..8, 64u64..4096), 1..6),
                             vms in proptest::collection::vec((1u8..4, 16u32..1024), 1..40)) {
            let mut st = FacilityState::default();
            for (i, (c, m)) in nodes.iter().enumerate() {
                node(&mut st, &format!("n{i}"), *c, *m);
            }
            for (i, (c, m)) in vms.iter().enumerate() {
                let before: Vec<(String, String)> = st.vms.iter().map(|(k, v)| (k.clone(), v.node.clone())).collect();
                if let Ok(n) = place_vm(&st, r(*c, *m), &[]) {
                    vm(&mut st, &format!("v{i}"), &n, r(*c, *m));
                }
                for (k, n) in before {
                    prop_assert_eq!(st.vms.get(&k).map(|v| v.node.clone()), Some(n));
                }
                let used = usage(&st);
                for (n, rec) in &st.nodes {
                    let u = used.get(n).copied().unwrap_or_default();
                    prop_assert!(rec.capacity.holds(u));
                }
            }
        }
    }
}
