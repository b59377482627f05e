//! Snapshot round trips and the older formats.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use super::legacy::*;
use super::*;
use crate::images::{Extent, MemImageStore};
use crate::sim::SimNode;
use alloc::string::ToString;
use mgmt_proto::crypto::HashDrbg;
use mgmt_proto::msg::*;

#[test]
fn snapshot_round_trips_through_postcard() {
    let console = PublicKey([7; 32]);
    let mut n = NodeState::provision(Box::new(HashDrbg::new([1; 32])), console).unwrap();
    let r = n.handle(
        Role::Landlord,
        &Request::CreateLease { tenant_console_key: PublicKey([9; 32]), cluster: ClusterId(1) },
        &mut SimNode::default(),
    );
    let Ok(Response::LeaseCreated { lease, tenant_node_key }) = r else { panic!("{r:?}") };
    let bytes = postcard::to_allocvec(&n.snapshot()).unwrap();
    let back = NodeState::restore(Box::new(HashDrbg::new([2; 32])), postcard::from_bytes(&bytes).unwrap()).unwrap();
    assert_eq!(back.landlord_key, n.landlord_key);
    assert_eq!(back.leases.get(&lease).unwrap().node_key, tenant_node_key);
    assert_eq!(back.keys.tenants.get(&lease).unwrap().1, PublicKey([9; 32]));
    assert_eq!(back.audit.len(), n.audit.len());
}

fn node_with_vms(names: &[&str]) -> (NodeState, Vec<VmId>) {
    let mut n = NodeState::provision(Box::new(HashDrbg::new([3; 32])), PublicKey([7; 32])).unwrap();
    let r = n.handle(
        Role::Landlord,
        &Request::CreateLease { tenant_console_key: PublicKey([9; 32]), cluster: ClusterId(1) },
        &mut SimNode::default(),
    );
    let Ok(Response::LeaseCreated { lease, .. }) = r else { panic!("{r:?}") };
    n.images.insert(String::from("img"), Image { extent: Extent { start: 0, blocks: 1 }, size: 16, sha256: [0; 32] });
    let mut ids = Vec::new();
    for name in names {
        let spec = VmSpec {
            name: name.to_string(),
            lease,
            cluster: ClusterId(1),
            memory_mib: 16,
            image: String::from("img"),
            cmdline: String::new(),
            disk_mib: 0,
            vcpus: 1,
            ip: None,
            initrd: None,
        };
        let r = n.handle(Role::Landlord, &Request::CreateVm { spec }, &mut SimNode::default());
        let Ok(Response::VmCreated { vm }) = r else { panic!("{r:?}") };
        ids.push(vm);
    }
    (n, ids)
}

#[test]
fn vms_join_their_lease_cluster() {
    let (mut n, ids) = node_with_vms(&["a"]);
    let lease = n.vms[&ids[0]].spec.lease;
    let spec = |name: &str, cluster: u32| VmSpec {
        name: name.into(),
        cluster: ClusterId(cluster),
        ..n.vms[&ids[0]].spec.clone()
    };
    let (default, other) = (spec("b", 0), spec("c", 2));
    let r = n.handle(Role::Landlord, &Request::CreateVm { spec: default }, &mut SimNode::default());
    let Ok(Response::VmCreated { vm }) = r else { panic!("{r:?}") };
    assert_eq!(n.vms[&vm].spec.cluster, n.leases[&lease].cluster);
    let before = n.vms.len();
    let r = n.handle(Role::Landlord, &Request::CreateVm { spec: other }, &mut SimNode::default());
    assert!(matches!(&r, Err(e) if e.code == ErrorCode::Invalid && e.message.contains("cluster")), "{r:?}");
    assert_eq!(n.vms.len(), before);
}

#[test]
fn started_vms_come_back_running_after_a_reboot() {
    let (mut n, ids) = node_with_vms(&["a", "b", "c"]);
    for vm in &ids {
        assert!(n.handle(Role::Landlord, &Request::StartVm { vm: *vm }, &mut SimNode::default()).is_ok());
    }
    assert!(n.handle(Role::Landlord, &Request::StopVm { vm: ids[1] }, &mut SimNode::default()).is_ok());
    // "c" exited on its own: still wanted, as no console stopped it.
    n.vms.get_mut(&ids[2]).unwrap().state = VmState::Stopped;
    let bytes = postcard::to_allocvec(&n.snapshot()).unwrap();
    let back = NodeState::restore(Box::new(HashDrbg::new([4; 32])), Snapshot::decode(&bytes).unwrap()).unwrap();
    let state = |i: usize| (back.vms[&ids[i]].state, back.vms[&ids[i]].starts);
    assert_eq!(state(0), (VmState::Running, 2));
    assert_eq!(state(1), (VmState::Stopped, 1));
    assert_eq!(state(2), (VmState::Running, 2));
}

#[test]
fn version_1_snapshots_still_load_with_vms_stopped() {
    let (mut n, ids) = node_with_vms(&["old"]);
    n.log(None, "first", String::from("ok"));
    n.log(None, "second", String::from("ok"));
    let snap = n.snapshot();
    #[derive(serde::Serialize)]
    struct V1<'a> {
        version: u16,
        landlord_secret: [u8; 32],
        landlord_console: PublicKey,
        leases: &'a [LeaseSnapshot],
        vms: Vec<(VmId, VmSpecV3, u64)>,
        images: &'a [(String, Vec<u8>, [u8; 32])],
        boundaries: &'a [(ClusterId, Vec<BoundaryRule>)],
        sub_rules: &'a [(RuleId, LeaseId, BoundaryRule)],
        audit: Vec<AuditEntryV1>,
        next_id: u32,
        clock: u64,
    }
    let inline = alloc::vec![(String::from("img"), alloc::vec![0x90u8; 16], [0u8; 32])];
    let v1 = V1 {
        version: 1,
        landlord_secret: snap.landlord_secret,
        landlord_console: snap.landlord_console,
        leases: &snap.leases,
        vms: snap.vms.iter().map(|v| (v.id, v3_spec(&v.spec), 5)).collect(),
        images: &inline,
        boundaries: &snap.boundaries,
        sub_rules: &snap.sub_rules,
        audit: snap
            .audit
            .iter()
            .map(|e| AuditEntryV1 {
                index: e.index,
                time_secs: e.time_secs,
                role: e.role,
                action: e.action.clone(),
                outcome: e.outcome.clone(),
            })
            .collect(),
        next_id: snap.next_id,
        clock: snap.clock,
    };
    let bytes = postcard::to_allocvec(&v1).unwrap();
    let back = Snapshot::decode(&bytes).unwrap();
    assert_eq!(back.version, SNAPSHOT_VERSION);
    assert_eq!(back.leases.len(), 1);
    assert_eq!((back.vms[0].id, back.vms[0].starts, back.vms[0].autostart), (ids[0], 5, false));
    assert_eq!(back.audit.len(), n.audit.len());
    // Old entries are chained afresh from a zero anchor.
    assert!(back.audit.first().is_some_and(|e| e.follows(&[0; 32])));
    assert!(back.audit.windows(2).all(|w| w[1].follows(&w[0].chain)));
    assert_eq!(back.legacy_images, inline);
    // Restoring moves the inline bytes into the image store.
    let store = MemImageStore::new(1 << 20, MemImageStore::accept_all);
    let (mut st, dropped) =
        NodeState::restore_with(Box::new(HashDrbg::new([5; 32])), back, Box::new(store), StateLimits::DEFAULT).unwrap();
    assert!(dropped.is_empty());
    assert_eq!(st.images["img"].size, 16);
    assert_eq!(st.image_bytes("img").unwrap_err(), "image \"img\" does not match its SHA-256 (store damaged)");
}

fn v3_spec(s: &VmSpec) -> VmSpecV3 {
    VmSpecV3 {
        lease: s.lease,
        name: s.name.clone(),
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        disk_mib: s.disk_mib,
        image: s.image.clone(),
        cluster: s.cluster,
        cmdline: s.cmdline.clone(),
        ip: s.ip,
    }
}

#[test]
fn version_3_snapshots_still_load_without_initrd() {
    let (mut n, ids) = node_with_vms(&["a", "b"]);
    assert!(n.handle(Role::Landlord, &Request::StartVm { vm: ids[1] }, &mut SimNode::default()).is_ok());
    n.log(None, "entry", String::from("ok"));
    let snap = n.snapshot();
    let v3 = SnapshotV3 {
        version: 3,
        landlord_secret: snap.landlord_secret,
        landlord_console: snap.landlord_console,
        leases: snap.leases.clone(),
        vms: snap
            .vms
            .iter()
            .map(|v| VmSnapshotV3 { id: v.id, spec: v3_spec(&v.spec), starts: v.starts, autostart: v.autostart })
            .collect(),
        images: snap.images.clone(),
        boundaries: snap.boundaries.clone(),
        sub_rules: snap.sub_rules.clone(),
        audit: snap.audit.clone(),
        audit_anchor: snap.audit_anchor,
        next_id: snap.next_id,
        clock: snap.clock,
    };
    let bytes = postcard::to_allocvec(&v3).unwrap();
    let back = Snapshot::decode(&bytes).unwrap();
    assert_eq!(back.version, SNAPSHOT_VERSION);
    assert_eq!(back.vms.len(), 2);
    for (old, new) in snap.vms.iter().zip(&back.vms) {
        assert_eq!(old.spec, new.spec);
        assert_eq!((old.id, old.starts, old.autostart), (new.id, new.starts, new.autostart));
        assert_eq!(new.spec.initrd, None);
    }
    assert_eq!(back.images, snap.images);
    assert_eq!(back.audit.len(), snap.audit.len());
    assert_eq!(back.next_id, snap.next_id);
    // A current snapshot keeps the initrd.
    let mut snap4 = snap.clone();
    snap4.vms[0].spec.initrd = Some(String::from("img"));
    let back4 = Snapshot::decode(&postcard::to_allocvec(&snap4).unwrap()).unwrap();
    assert_eq!(back4.vms[0].spec.initrd.as_deref(), Some("img"));
}

#[test]
fn a_vm_whose_initrd_image_is_missing_is_refused() {
    let (mut n, _) = node_with_vms(&[]);
    let lease = *n.leases.keys().next().unwrap();
    let mut spec = VmSpec {
        name: String::from("withrd"),
        lease,
        cluster: ClusterId(1),
        memory_mib: 16,
        image: String::from("img"),
        cmdline: String::new(),
        disk_mib: 0,
        vcpus: 1,
        ip: None,
        initrd: Some(String::from("nope")),
    };
    let e = n.handle(Role::Landlord, &Request::CreateVm { spec: spec.clone() }, &mut SimNode::default()).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.starts_with("initrd:"), "{}", e.message);
    spec.initrd = Some(String::from("img"));
    assert!(matches!(
        n.handle(Role::Landlord, &Request::CreateVm { spec }, &mut SimNode::default()),
        Ok(Response::VmCreated { .. })
    ));
}

#[test]
fn snapshots_from_a_newer_build_or_garbage_are_refused() {
    let (n, _) = node_with_vms(&["x"]);
    let mut snap = n.snapshot();
    snap.version = SNAPSHOT_VERSION + 1;
    let err = Snapshot::decode(&postcard::to_allocvec(&snap).unwrap()).unwrap_err();
    assert!(err.contains("newer"), "{err}");
    assert!(Snapshot::decode(&[0xff; 40]).is_err());
    assert!(Snapshot::decode(&[]).is_err());
}

#[test]
fn version_5_snapshots_still_load_without_facility_records() {
    let mut n = NodeState::provision(Box::new(HashDrbg::new([1; 32])), PublicKey([7; 32])).unwrap();
    let r = n.handle(
        Role::Landlord,
        &Request::CreateLease { tenant_console_key: PublicKey([9; 32]), cluster: ClusterId(1) },
        &mut SimNode::default(),
    );
    assert!(r.is_ok());
    let v6 = n.snapshot();
    let v5 = super::legacy::SnapshotV5 {
        version: 5,
        landlord_secret: v6.landlord_secret,
        landlord_console: v6.landlord_console,
        leases: v6.leases.clone(),
        vms: v6.vms.clone(),
        images: v6.images.clone(),
        boundaries: v6.boundaries.clone(),
        sub_rules: v6.sub_rules.clone(),
        audit: v6.audit.clone(),
        audit_anchor: v6.audit_anchor,
        next_id: v6.next_id,
        clock: v6.clock,
        policies: v6.policies.clone(),
    };
    let back = Snapshot::decode(&postcard::to_allocvec(&v5).unwrap()).unwrap();
    assert_eq!(back.version, SNAPSHOT_VERSION);
    assert_eq!(back.leases.len(), 1);
    assert!(back.fleet.is_empty());
}
