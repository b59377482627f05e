use super::*;
use crate::sim::SimNode;
use alloc::boxed::Box;
use alloc::vec;
use mgmt_proto::crypto::{HashDrbg, KeyPair, PublicKey};
use mgmt_proto::msg::{ClusterId, LeaseId, Request, Role};
use proptest::prelude::*;

struct Node {
    state: NodeState,
    sim: SimNode,
    lease: LeaseId,
}

impl Node {
    fn new(seed: u8) -> Node {
        let console = KeyPair::generate(&mut HashDrbg::new([seed; 32])).unwrap();
        let tenant = KeyPair::generate(&mut HashDrbg::new([seed.wrapping_add(100); 32])).unwrap();
        let mut state =
            NodeState::provision(Box::new(HashDrbg::new([seed.wrapping_add(50); 32])), console.public).unwrap();
        state.preload_image("k", b"kernel bytes").unwrap();
        let mut sim = SimNode::default();
        let Ok(Response::LeaseCreated { lease, .. }) = state.handle(
            Role::Landlord,
            &Request::CreateLease { tenant_console_key: tenant.public, cluster: ClusterId(1) },
            &mut sim,
        ) else {
            panic!("lease")
        };
        Node { state, sim, lease }
    }

    fn req(&mut self, r: Request) -> Result<Response, ErrorReply> {
        self.state.handle(Role::Landlord, &r, &mut self.sim)
    }

    fn spec(&self, name: &str) -> VmSpec {
        VmSpec {
            lease: self.lease,
            name: name.into(),
            vcpus: 1,
            memory_mib: 16,
            disk_mib: 8,
            image: "k".into(),
            cluster: ClusterId(1),
            cmdline: String::new(),
            ip: Some([10, 0, 0, 5]),
            initrd: None,
        }
    }

    fn create(&mut self, name: &str, fleet: FleetSpec) -> VmId {
        let spec = self.spec(name);
        match self.req(Request::FleetCreateVm { spec, fleet }) {
            Ok(Response::VmCreated { vm }) => vm,
            other => panic!("{other:?}"),
        }
    }

    /// The tenant approves these nodes as its replica partners.
    fn approve(&mut self, partners: &[PublicKey]) {
        let r = self.state.handle(
            Role::Tenant(self.lease),
            &Request::SetReplicaPartners { partners: partners.to_vec() },
            &mut self.sim,
        );
        assert_eq!(r, Ok(Response::Done));
    }

    fn state_of(&self, vm: VmId) -> VmState {
        self.state.vms[&vm].state
    }
}

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 5];

fn fleet(epoch: u64) -> FleetSpec {
    FleetSpec { mac: MAC, instance: 77, epoch, protected: true }
}

/// A protected VM on A with its replica on B, in sync.
fn paired() -> (Node, Node, VmId, VmId) {
    let (mut a, mut b) = (Node::new(1), Node::new(2));
    a.approve(&[b.state.landlord_key]);
    let va = a.create("web", fleet(1));
    a.req(Request::FleetStartVm { vm: va, epoch: 1 }).unwrap();
    let Ok(Response::SealedSecret(sealed)) = a.req(Request::ReplicaKey { vm: va, partner: b.state.landlord_key })
    else {
        panic!("sealed")
    };
    let spec = b.spec("web");
    let from = a.state.landlord_key;
    let Ok(Response::VmCreated { vm: vb }) = b.req(Request::ReplicaCreate { spec, fleet: fleet(1), from, sealed })
    else {
        panic!("replica")
    };
    (a, b, va, vb)
}

/// Pulls everything pending on A and pushes it to B at `epoch`.
fn drain(a: &mut Node, b: &mut Node, va: VmId, vb: VmId, epoch: u64) -> Result<(), ErrorReply> {
    loop {
        let Ok(Response::ReplicaBatch { blocks, remaining }) =
            a.req(Request::ReplicaPull { vm: va, max_blocks: 14, resync: false })
        else {
            panic!("pull")
        };
        b.req(Request::ReplicaPush { vm: vb, epoch, blocks })?;
        if remaining == 0 {
            return Ok(());
        }
    }
}

#[test]
fn a_replica_follows_its_primary_and_takes_over_at_a_higher_epoch() {
    let (mut a, mut b, va, vb) = paired();
    assert_eq!(b.sim.volumes[&vb].secret, a.sim.volumes[&va].secret, "the secret crossed, sealed");
    for i in 0..40u64 {
        a.sim.volumes.get_mut(&va).unwrap().write(i % 17, &[i as u8; 4096]);
    }
    drain(&mut a, &mut b, va, vb, 1).unwrap();
    assert_eq!(a.sim.volumes[&va].blocks, b.sim.volumes[&vb].blocks);
    // A replica neither starts nor is started by a console.
    assert_eq!(b.req(Request::FleetStartVm { vm: vb, epoch: 1 }).unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(b.req(Request::StartVm { vm: vb }).unwrap_err().code, ErrorCode::Conflict);
    // Takeover: promote at epoch 2; the old primary's pushes are refused.
    assert_eq!(
        b.req(Request::PromoteReplica { vm: vb, instance: 78, epoch: 2 }).unwrap_err().code,
        ErrorCode::Conflict
    );
    assert_eq!(
        b.req(Request::PromoteReplica { vm: vb, instance: 77, epoch: 1 }).unwrap_err().code,
        ErrorCode::Conflict
    );
    b.req(Request::PromoteReplica { vm: vb, instance: 77, epoch: 2 }).unwrap();
    b.req(Request::PromoteReplica { vm: vb, instance: 77, epoch: 2 }).unwrap(); // idempotent
    a.sim.volumes.get_mut(&va).unwrap().write(3, &[0xEE; 4096]);
    let before = b.sim.volumes[&vb].blocks.clone();
    assert!(drain(&mut a, &mut b, va, vb, 1).is_err());
    assert_eq!(b.sim.volumes[&vb].blocks, before, "a fenced push changed nothing");
    b.req(Request::FleetStartVm { vm: vb, epoch: 2 }).unwrap();
    assert_eq!(b.state_of(vb), VmState::Running);
    // The old node hears of epoch 2: its copy stops and stays stopped.
    assert_eq!(a.state_of(va), VmState::Running);
    assert!(a.state.may_write(va));
    a.req(Request::FenceVm { vm: va, epoch: 2 }).unwrap();
    assert_eq!(a.state_of(va), VmState::Stopped);
    assert!(!a.state.may_write(va));
    assert_eq!(a.req(Request::StartVm { vm: va }).unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(a.req(Request::FleetStartVm { vm: va, epoch: 1 }).unwrap_err().code, ErrorCode::Conflict);
    // Fences never go down.
    a.req(Request::FenceVm { vm: va, epoch: 1 }).unwrap();
    assert_eq!(a.state.fleet.vms[&va].fence, 2);
}

#[test]
fn a_sealed_secret_from_another_node_or_for_another_vm_is_refused() {
    let (mut a, mut b, va, _) = paired();
    let mut c = Node::new(3);
    let Ok(Response::SealedSecret(sealed)) = a.req(Request::ReplicaKey { vm: va, partner: b.state.landlord_key })
    else {
        panic!()
    };
    // C is not the recipient.
    let spec = c.spec("web2");
    let from = a.state.landlord_key;
    let r = c.req(Request::ReplicaCreate { spec, fleet: fleet(1), from, sealed: sealed.clone() });
    assert_eq!(r.unwrap_err().code, ErrorCode::BadSignature);
    // B is, but the name differs, or the claimed sender does.
    let spec = b.spec("other");
    let r = b.req(Request::ReplicaCreate { spec, fleet: fleet(1), from, sealed: sealed.clone() });
    assert_eq!(r.unwrap_err().code, ErrorCode::BadSignature);
    let spec = b.spec("web");
    let from = c.state.landlord_key;
    let r = b.req(Request::ReplicaCreate { spec, fleet: fleet(1), from, sealed });
    assert_eq!(r.unwrap_err().code, ErrorCode::BadSignature);
    assert_eq!(c.state.vms.len(), 0);
}

#[test]
fn the_fencing_lease_stops_protected_primaries_only() {
    let (mut a, _b, va, _) = paired();
    let mut spec = a.spec("plain");
    spec.ip = Some([10, 0, 0, 6]);
    let plain_fleet = FleetSpec { mac: [2, 0, 0, 0, 0, 6], instance: 5, epoch: 1, protected: false };
    let Ok(Response::VmCreated { vm: plain }) = a.req(Request::FleetCreateVm { spec, fleet: plain_fleet }) else {
        panic!()
    };
    a.req(Request::FleetStartVm { vm: plain, epoch: 1 }).unwrap();
    a.state.fleet_tick(1_000);
    a.req(Request::FleetHeartbeat { fence_after_ms: 3_000 }).unwrap();
    assert!(a.state.fleet_tick(3_999).is_empty());
    assert_eq!(a.state.fleet_tick(4_000), vec![va]);
    assert_eq!(a.state_of(va), VmState::Stopped);
    assert_eq!(a.state_of(plain), VmState::Running);
    assert!(a.state.fleet.vms[&va].self_fenced);
    // A console cannot restart it; the controller can, at its epoch.
    assert_eq!(a.req(Request::StartVm { vm: va }).unwrap_err().code, ErrorCode::Conflict);
    a.req(Request::FleetStartVm { vm: va, epoch: 1 }).unwrap();
    assert_eq!(a.state_of(va), VmState::Running);
    // No lease (0): never stops.
    a.req(Request::FleetHeartbeat { fence_after_ms: 0 }).unwrap();
    assert!(a.state.fleet_tick(u64::MAX).is_empty());
}

#[test]
fn creating_the_same_instance_twice_gives_the_same_vm() {
    let mut a = Node::new(1);
    let v1 = a.create("web", fleet(1));
    let v2 = a.create("web", fleet(1));
    assert_eq!(v1, v2);
    assert_eq!(a.state.vms.len(), 1);
    let other = FleetSpec { instance: 9, ..fleet(1) };
    let spec = a.spec("web");
    assert_eq!(a.req(Request::FleetCreateVm { spec, fleet: other }).unwrap_err().code, ErrorCode::Conflict);
    let spec = a.spec("web3");
    let multicast = FleetSpec { mac: [1, 0, 0, 0, 0, 1], ..fleet(1) };
    assert_eq!(a.req(Request::FleetCreateVm { spec, fleet: multicast }).unwrap_err().code, ErrorCode::Invalid);
    let mut spec = a.spec("web4");
    spec.ip = Some([10, 0, 0, 9]);
    spec.disk_mib = 0;
    assert_eq!(a.req(Request::FleetCreateVm { spec, fleet: fleet(1) }).unwrap_err().code, ErrorCode::Invalid);
}

#[test]
fn hostile_replica_requests_change_nothing() {
    let (mut a, mut b, va, vb) = paired();
    let before = b.sim.volumes[&vb].blocks.clone();
    let short = vec![ReplicaBlock { index: 0, bytes: vec![0; 100] }];
    assert_eq!(b.req(Request::ReplicaPush { vm: vb, epoch: 1, blocks: short }).unwrap_err().code, ErrorCode::Invalid);
    let many = vec![ReplicaBlock { index: 0, bytes: vec![0; 4096] }; 15];
    assert_eq!(b.req(Request::ReplicaPush { vm: vb, epoch: 1, blocks: many }).unwrap_err().code, ErrorCode::Invalid);
    assert_eq!(
        b.req(Request::ReplicaPull { vm: vb, max_blocks: 1, resync: false }).unwrap_err().code,
        ErrorCode::Invalid
    );
    assert_eq!(
        a.req(Request::ReplicaPull { vm: va, max_blocks: 0, resync: false }).unwrap_err().code,
        ErrorCode::Invalid
    );
    assert_eq!(
        a.req(Request::ReplicaPull { vm: va, max_blocks: 15, resync: false }).unwrap_err().code,
        ErrorCode::Invalid
    );
    let pushed = vec![ReplicaBlock { index: 0, bytes: vec![0; 4096] }];
    assert_eq!(a.req(Request::ReplicaPush { vm: va, epoch: 9, blocks: pushed }).unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(b.sim.volumes[&vb].blocks, before);
    let text = String::from("line\nbreak");
    assert_eq!(b.req(Request::NotifyTenant { vm: vb, text }).unwrap_err().code, ErrorCode::Invalid);
    // Tenants may do none of it.
    let r = a.state.handle(Role::Tenant(a.lease), &Request::FenceVm { vm: va, epoch: 99 }, &mut a.sim);
    assert_eq!(r.unwrap_err().code, ErrorCode::Denied);
    assert_eq!(a.state.fleet.vms[&va].fence, 1);
}

#[test]
fn after_a_reboot_protected_vms_wait_for_the_controller() {
    let (a, _b, va, _) = paired();
    let snap = crate::Snapshot::decode(&postcard::to_allocvec(&a.state.snapshot()).unwrap()).unwrap();
    let back = NodeState::restore(Box::new(HashDrbg::new([9; 32])), snap).unwrap();
    assert_eq!(back.vms[&va].state, VmState::Stopped);
    assert_eq!(back.fleet.vms[&va], a.state.fleet.vms[&va]);
}

proptest! {
    // Each case provisions two nodes (key generation): fewer, longer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Whatever order of epochs a node is told (starts, fences, pushes,
    /// promotions), a fence never goes down and a copy below it never runs.
    #[test]
    fn fences_only_rise_and_fenced_copies_never_run(ops in proptest::collection::vec((0u8..4, 0u64..6), 1..40)) {
        let (mut a, mut b, va, vb) = paired();
        let mut last = (a.state.fleet.vms[&va].fence, b.state.fleet.vms[&vb].fence);
        for (op, epoch) in ops {
            let _ = match op {
                0 => a.req(Request::FleetStartVm { vm: va, epoch }),
                1 => a.req(Request::FenceVm { vm: va, epoch }),
                2 => b.req(Request::PromoteReplica { vm: vb, instance: 77, epoch }),
                _ => b.req(Request::ReplicaPush { vm: vb, epoch, blocks: Vec::new() }),
            };
            let (fa, fb) = (a.state.fleet.vms[&va], b.state.fleet.vms[&vb]);
            prop_assert!(fa.fence >= last.0 && fb.fence >= last.1);
            last = (fa.fence, fb.fence);
            for (n, v, f) in [(&a, va, fa), (&b, vb, fb)] {
                if n.state_of(v) == VmState::Running {
                    prop_assert!(f.spec.epoch >= f.fence && !f.replica);
                }
            }
        }
    }
}

#[test]
fn a_deposed_primary_cannot_re_pair_a_replica() {
    let (mut a, mut b, va, vb) = paired();
    // The replica has seen epoch 3 (a newer primary pushed).
    b.req(Request::ReplicaPush { vm: vb, epoch: 3, blocks: Vec::new() }).unwrap();
    let Ok(Response::SealedSecret(sealed)) = a.req(Request::ReplicaKey { vm: va, partner: b.state.landlord_key })
    else {
        panic!()
    };
    let spec = b.spec("web");
    let from = a.state.landlord_key;
    let r = b.req(Request::ReplicaCreate { spec, fleet: fleet(1), from, sealed });
    assert_eq!(r.unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(b.state.fleet.vms[&vb].fence, 3);
}

#[test]
fn the_secret_is_sealed_only_for_a_partner_the_tenant_approved() {
    let (mut a, _b, va, _) = paired();
    let c = Node::new(3);
    // The landlord names another node, or a key of its own: refused.
    for key in [c.state.landlord_key, PublicKey([0x42; 32])] {
        let r = a.req(Request::ReplicaKey { vm: va, partner: key });
        assert_eq!(r.unwrap_err().code, ErrorCode::Denied);
    }
    // The landlord cannot approve for the tenant.
    let r = a.req(Request::SetReplicaPartners { partners: vec![PublicKey([0x42; 32])] });
    assert_eq!(r.unwrap_err().code, ErrorCode::Denied);
    // Bounded.
    let many: Vec<PublicKey> = (0..17u8).map(|i| PublicKey([i; 32])).collect();
    let r = a.state.handle(Role::Tenant(a.lease), &Request::SetReplicaPartners { partners: many }, &mut a.sim);
    assert_eq!(r.unwrap_err().code, ErrorCode::Limit);
    // Kept across a reboot.
    let snap = crate::Snapshot::decode(&postcard::to_allocvec(&a.state.snapshot()).unwrap()).unwrap();
    let back = NodeState::restore(Box::new(HashDrbg::new([9; 32])), snap).unwrap();
    assert_eq!(back.leases[&a.lease].replica_partners, a.state.leases[&a.lease].replica_partners);
}

#[test]
fn cluster_members_are_bounded() {
    let mut a = Node::new(1);
    let many: Vec<[u8; 4]> = (0..257u32).map(|i| [10, 9, (i >> 8) as u8, i as u8]).collect();
    let r = a.req(Request::SetClusterMembers { cluster: ClusterId(1), members: many });
    assert_eq!(r.unwrap_err().code, ErrorCode::Limit);
    for c in 1..=64u32 {
        a.req(Request::SetClusterMembers { cluster: ClusterId(c), members: vec![[10, 9, 0, 1]] }).unwrap();
    }
    let r = a.req(Request::SetClusterMembers { cluster: ClusterId(65), members: vec![[10, 9, 0, 1]] });
    assert_eq!(r.unwrap_err().code, ErrorCode::Limit);
    // Replacing a kept cluster's list, or clearing one, still works.
    a.req(Request::SetClusterMembers { cluster: ClusterId(3), members: vec![[10, 9, 0, 2]] }).unwrap();
    a.req(Request::SetClusterMembers { cluster: ClusterId(3), members: Vec::new() }).unwrap();
    a.req(Request::SetClusterMembers { cluster: ClusterId(65), members: vec![[10, 9, 0, 1]] }).unwrap();
    assert_eq!(a.state.fleet.members.len(), 64);
}

fn set_image(image: &str, initrd: Option<&str>, cmdline: &str, vm: VmId) -> Request {
    Request::FleetSetImage { vm, image: image.into(), initrd: initrd.map(String::from), cmdline: cmdline.into() }
}

/// A node with a second kernel and an initrd stored, and one stopped
/// facility VM (unprotected, so it starts without a partner).
fn upgradable() -> (Node, VmId) {
    let mut n = Node::new(31);
    n.state.preload_image("k2", b"kernel version 2").unwrap();
    n.state.preload_image("rd", b"initrd bytes").unwrap();
    let vm = n.create("web", FleetSpec { protected: false, ..fleet(1) });
    (n, vm)
}

#[test]
fn a_stopped_facility_vm_boots_new_images_and_keeps_the_rest_across_a_reboot() {
    let (mut n, vm) = upgradable();
    let before = n.state.vms[&vm].spec.clone();
    let f_before = n.state.fleet.vms[&vm];
    assert_eq!(n.req(set_image("k2", Some("rd"), "console=ttyS0 v=2", vm)), Ok(Response::Done));
    let after = n.state.vms[&vm].spec.clone();
    assert_eq!((after.image.as_str(), after.initrd.as_deref()), ("k2", Some("rd")));
    assert_eq!(after.cmdline, "console=ttyS0 v=2");
    let kept = VmSpec { image: before.image.clone(), initrd: None, cmdline: String::new(), ..after.clone() };
    assert_eq!(kept, before, "disk, address, lease, name and cluster stay");
    assert_eq!(n.state.fleet.vms[&vm], f_before, "MAC, instance, epoch and fence stay");
    // The same boot again (a retried intent) is done, even once it runs.
    assert_eq!(n.req(set_image("k2", Some("rd"), "console=ttyS0 v=2", vm)), Ok(Response::Done));
    n.req(Request::FleetStartVm { vm, epoch: 1 }).unwrap();
    assert_eq!(n.req(set_image("k2", Some("rd"), "console=ttyS0 v=2", vm)), Ok(Response::Done));
    // A node reboot keeps the new boot.
    let snap = crate::Snapshot::decode(&postcard::to_allocvec(&n.state.snapshot()).unwrap()).unwrap();
    let back = NodeState::restore(Box::new(HashDrbg::new([9; 32])), snap).unwrap();
    assert_eq!(back.vms[&vm].spec, after);
    assert_eq!(back.fleet.vms[&vm], n.state.fleet.vms[&vm]);
}

#[test]
fn a_running_vm_keeps_its_boot_image() {
    let (mut n, vm) = upgradable();
    n.req(Request::FleetStartVm { vm, epoch: 1 }).unwrap();
    let e = n.req(set_image("k2", None, "", vm)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(e.message.contains("stop the VM"), "{e}");
    assert_eq!(n.state.vms[&vm].spec.image, "k");
    n.req(Request::StopVm { vm }).unwrap();
    assert_eq!(n.req(set_image("k2", None, "", vm)), Ok(Response::Done));
}

#[test]
fn a_fenced_vm_keeps_its_boot_image() {
    let (mut n, vm) = upgradable();
    n.req(Request::FenceVm { vm, epoch: 4 }).unwrap();
    let e = n.req(set_image("k2", None, "", vm)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(e.message.starts_with("fenced"), "{e}");
    assert_eq!(n.state.vms[&vm].spec.image, "k");
}

#[test]
fn a_boot_of_images_the_node_lacks_or_too_long_a_cmdline_is_refused() {
    let (mut n, vm) = upgradable();
    let e = n.req(set_image("k3", None, "", vm)).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("\"k3\""), "the image is named: {e}");
    let e = n.req(set_image("k2", Some("rd2"), "", vm)).unwrap_err();
    assert!(e.message.starts_with("initrd") && e.message.contains("\"rd2\""), "{e}");
    let long = "x".repeat(vmm_config::config::MAX_CMDLINE_LEN + 1);
    assert_eq!(n.req(set_image("k2", None, &long, vm)).unwrap_err().code, ErrorCode::Invalid);
    assert_eq!(n.req(set_image("k2", None, "", VmId(999))).unwrap_err().code, ErrorCode::NotFound);
    // A VM the controller did not place is not its to upgrade.
    let spec = VmSpec { ip: None, ..n.spec("plain") };
    let Ok(Response::VmCreated { vm: plain }) = n.req(Request::CreateVm { spec }) else { panic!() };
    assert_eq!(n.req(set_image("k2", None, "", plain)).unwrap_err().code, ErrorCode::Invalid);
    // Tenants may not.
    let r = n.state.handle(Role::Tenant(n.lease), &set_image("k2", None, "", vm), &mut n.sim);
    assert_eq!(r.unwrap_err().code, ErrorCode::Denied);
    assert_eq!(n.state.vms[&vm].spec, n.spec("web"), "nothing changed");
}

#[test]
fn health_is_reported_for_running_facility_vms_only_and_within_bounds() {
    use mgmt_proto::fleet::{ServiceHealthReport, VmHealthReport};
    let (mut n, vm) = upgradable();
    let stopped = Ok(Response::VmHealth(VmHealthReport::default()));
    assert_eq!(n.req(Request::FleetVmHealth { vm }), stopped);
    let live = VmHealthReport {
        running: true,
        agent_attached: true,
        agent_hung: false,
        since_heartbeat_ms: Some(20),
        heartbeats: 3,
        services: vec![ServiceHealthReport { name: "api".into(), last_event: "started pid 4".into(), up: true }],
    };
    n.sim.health.insert(vm, live.clone());
    // Stopped: nothing of what the agent said last run.
    assert_eq!(n.req(Request::FleetVmHealth { vm }), stopped);
    n.req(Request::FleetStartVm { vm, epoch: 1 }).unwrap();
    assert_eq!(n.req(Request::FleetVmHealth { vm }), Ok(Response::VmHealth(live.clone())));
    // A report past its bounds is never sent.
    let mut bad = live;
    bad.services[0].name = "x".repeat(40);
    n.sim.health.insert(vm, bad);
    assert_eq!(n.req(Request::FleetVmHealth { vm }).unwrap_err().code, ErrorCode::Internal);
    // Running in the state but not live on the node yet: not running.
    n.sim.health.clear();
    assert_eq!(n.req(Request::FleetVmHealth { vm }), stopped);
    assert_eq!(n.req(Request::FleetVmHealth { vm: VmId(999) }).unwrap_err().code, ErrorCode::NotFound);
    let r = n.state.handle(Role::Tenant(n.lease), &Request::FleetVmHealth { vm }, &mut n.sim);
    assert_eq!(r.unwrap_err().code, ErrorCode::Denied);
}
