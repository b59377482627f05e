//! Fuzzes the decoder of the management state snapshot the node reads back
//! from its disk (current and version 1 layouts): nothing may panic, and a
//! snapshot that decodes and restores must survive another save and load
//! with the same leases, VMs and autostart marks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgmt_proto::crypto::HashDrbg;
use mgmt_proto::msg::VmState;
use node_logic::{NodeState, Snapshot, SNAPSHOT_VERSION};

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = Snapshot::decode(data) else { return };
    assert_eq!(snap.version, SNAPSHOT_VERSION);
    let wanted = snap.vms.iter().filter(|v| v.autostart).count();
    let Some(node) = NodeState::restore(Box::new(HashDrbg::new([5; 32])), snap) else { return };
    // Duplicate ids in hostile input collapse; what remains is consistent.
    assert!(node.vms.values().filter(|v| v.state == VmState::Running).count() <= wanted);
    assert!(node.vms.values().all(|v| v.autostart == (v.state == VmState::Running)));
    let again = postcard::to_allocvec(&node.snapshot()).expect("a snapshot encodes");
    let back = Snapshot::decode(&again).expect("a fresh snapshot decodes");
    assert_eq!(back.leases.len(), node.leases.len());
    assert_eq!(back.vms.len(), node.vms.len());
    assert!(back.vms.iter().all(|v| node.vms.get(&v.id).is_some_and(|n| n.autostart == v.autostart)));
});
