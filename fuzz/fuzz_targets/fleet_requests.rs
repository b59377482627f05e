//! Fuzzes the node's facility requests (`node_logic::fleet`, dispatched by
//! `NodeState::handle`) on two nodes served by the in-memory backend
//! (`node_logic::sim::SimNode`): a sequence of creates, starts, fences,
//! console starts and stops, destroys, sealed volume secrets from one node
//! to the other (genuine, tampered or garbage), replica pulls and pushes
//! (genuine batches or hostile block counts and sizes), promotions,
//! heartbeats, fencing-lease ticks, cluster members, tenant notices, guest
//! writes through the write gate, boot image changes, health reads, and
//! snapshot round trips (a reboot).
//!
//! After every step (assertions, so a violation is a crash):
//! - a facility VM's fence never goes down (reboots included);
//! - a VM whose facility record is a replica or has `spec.epoch < fence`
//!   is never running, and `may_write` is false for it;
//! - the backend volume of a replica changes only through an accepted
//!   `ReplicaPush` to it;
//! - after a reboot no protected facility VM (or replica) runs, and the
//!   facility records are those saved;
//! - tenants are refused every facility request and change nothing;
//! - a boot image change never touches a running or fenced VM (unless it
//!   is the same boot) nor any facility record, and what it sets is stored;
//! - a health read changes nothing and answers within its bounds.
//!
//! Input layout: a sequence of steps, each an op byte (bit 7: sent as the
//! node's tenant instead of the landlord; bit 6: on node B instead of A;
//! the rest modulo the number of ops) followed by that op's argument bytes
//! (missing bytes read as 0). At most [`MAX_STEPS`] steps.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mgmt_proto::crypto::{HashDrbg, KeyPair, PublicKey};
use mgmt_proto::fleet::{FleetSpec, ReplicaBlock, REPLICA_BLOCK};
use mgmt_proto::msg::{ClusterId, ErrorCode, ErrorReply, LeaseId, Request, Response, Role, VmId, VmSpec, VmState};
use node_logic::sim::SimNode;
use node_logic::{NodeState, Snapshot};

const MAX_STEPS: usize = 64;
const OPS: u8 = 19;
const NAMES: [&str; 4] = ["web", "db", "app", "web2"];
/// A node key neither node has.
const STRANGER: PublicKey = PublicKey([7; 32]);

struct Node {
    state: NodeState,
    sim: SimNode,
    lease: LeaseId,
    /// Fences last seen, by facility VM.
    fences: BTreeMap<VmId, u64>,
}

/// Both nodes freshly provisioned (a landlord key, the image "k", one lease
/// in cluster 1), as snapshots: restoring is cheaper than provisioning.
fn base() -> &'static [(Vec<u8>, LeaseId); 2] {
    static B: OnceLock<[(Vec<u8>, LeaseId); 2]> = OnceLock::new();
    B.get_or_init(|| {
        [1u8, 2].map(|seed| {
            let console = KeyPair::generate(&mut HashDrbg::new([seed; 32])).expect("a console key");
            let tenant = KeyPair::generate(&mut HashDrbg::new([seed + 100; 32])).expect("a tenant key");
            let mut state = NodeState::provision(Box::new(HashDrbg::new([seed + 50; 32])), console.public)
                .expect("a provisioned node");
            state.preload_image("k", b"kernel bytes").expect("an image");
            state.preload_image("k2", b"kernel version 2").expect("an image");
            let req = Request::CreateLease { tenant_console_key: tenant.public, cluster: ClusterId(1) };
            let Ok(Response::LeaseCreated { lease, .. }) = state.handle(Role::Landlord, &req, &mut SimNode::default())
            else {
                panic!("no lease")
            };
            (postcard::to_allocvec(&state.snapshot()).expect("a snapshot encodes"), lease)
        })
    })
}

fn restore(bytes: &[u8], seed: u8) -> NodeState {
    let snap = Snapshot::decode(bytes).expect("a snapshot decodes");
    NodeState::restore(Box::new(HashDrbg::new([seed; 32])), snap).expect("a snapshot restores")
}

/// The input, read a byte at a time (0 past its end).
struct In<'a>(&'a [u8]);

impl In<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a.to_vec()
    }
}

/// Mostly small epochs (so they collide), sometimes near `u64::MAX`.
fn epoch(b: u8) -> u64 {
    if b >= 0xF0 {
        u64::MAX - u64::from(b & 0xF)
    } else {
        u64::from(b % 8)
    }
}

/// One of the node's VMs, or (for 0xFF or with none) one it does not have.
fn vm(node: &Node, b: u8) -> VmId {
    let ids: Vec<VmId> = node.state.vms.keys().copied().collect();
    if b == 0xFF || ids.is_empty() {
        return VmId(u32::from(b) * 1000 + 7);
    }
    ids[usize::from(b) % ids.len()]
}

fn vm_spec(node: &Node, b: u8) -> VmSpec {
    VmSpec {
        lease: if b & 0x20 != 0 { LeaseId(99) } else { node.lease },
        name: NAMES[usize::from(b & 3)].into(),
        vcpus: 1,
        memory_mib: 16,
        disk_mib: if b & 4 != 0 { 0 } else { 8 },
        image: "k".into(),
        cluster: ClusterId(if b & 0x40 != 0 { 2 } else { 1 }),
        cmdline: String::new(),
        ip: match (b >> 3) & 3 {
            0 => None,
            k => Some([10, 0, 0, k]),
        },
        initrd: None,
    }
}

fn fleet_spec(b1: u8, b2: u8) -> FleetSpec {
    FleetSpec {
        mac: match (b1 >> 3) & 7 {
            6 => [1, 0, 0, 0, 0, 1],
            7 => [0; 6],
            k => [2, 0, 0, 0, 0, k],
        },
        instance: 76 + u64::from(b1 & 3),
        epoch: epoch(b2),
        protected: b1 & 4 == 0,
    }
}

/// What earlier steps left for later ones.
#[derive(Default)]
struct Carry {
    /// The last sealed secret a node gave, and its sender.
    sealed: Option<(PublicKey, Vec<u8>)>,
    /// The last batch a node pulled.
    pulled: Vec<ReplicaBlock>,
}

/// A replica volume's content, to see whether it changed.
type Content = (Vec<u8>, BTreeMap<u64, Vec<u8>>);

fn replica_volumes(n: &Node) -> BTreeMap<VmId, Option<Content>> {
    n.state
        .fleet
        .vms
        .iter()
        .filter(|(_, f)| f.replica)
        .map(|(id, _)| (*id, n.sim.volumes.get(id).map(|v| (v.secret.clone(), v.blocks.clone()))))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let [(a_snap, a_lease), (b_snap, b_lease)] = base();
    let mut nodes = [
        Node { state: restore(a_snap, 51), sim: SimNode::default(), lease: *a_lease, fences: BTreeMap::new() },
        Node { state: restore(b_snap, 52), sim: SimNode::default(), lease: *b_lease, fences: BTreeMap::new() },
    ];
    let keys = [nodes[0].state.landlord_key, nodes[1].state.landlord_key];
    // Each node's tenant approves the other node as its replica partner
    // (the node seals volume secrets for approved partners only).
    for (i, n) in nodes.iter_mut().enumerate() {
        let partners = vec![keys[1 - i]];
        let r = n.state.handle(Role::Tenant(n.lease), &Request::SetReplicaPartners { partners }, &mut n.sim);
        assert_eq!(r, Ok(Response::Done), "the tenant's approval");
    }
    let mut input = In(data);
    let mut carry = Carry::default();
    for step in 0..MAX_STEPS {
        if input.0.is_empty() {
            break;
        }
        let op_byte = input.byte();
        let tenant = op_byte & 0x80 != 0;
        let (me, other) = if op_byte & 0x40 != 0 { (1, 0) } else { (0, 1) };
        let op = (op_byte & 0x3F) % OPS;
        let replicas_before = replica_volumes(&nodes[me]);
        let others_before = replica_volumes(&nodes[other]);
        let fleet_before = nodes[me].state.fleet.vms.clone();
        let n = &mut nodes[me];
        let role = if tenant { Role::Tenant(n.lease) } else { Role::Landlord };
        let mut pushed_to = None;
        let req = match op {
            0 => {
                let (s, b1, b2) = (input.byte(), input.byte(), input.byte());
                Some(Request::FleetCreateVm { spec: vm_spec(n, s), fleet: fleet_spec(b1, b2) })
            }
            1 => Some(Request::FleetStartVm { vm: vm(n, input.byte()), epoch: epoch(input.byte()) }),
            2 => Some(Request::FenceVm { vm: vm(n, input.byte()), epoch: epoch(input.byte()) }),
            3 => Some(Request::StartVm { vm: vm(n, input.byte()) }),
            4 => Some(Request::StopVm { vm: vm(n, input.byte()) }),
            5 => Some(Request::DestroyVm { vm: vm(n, input.byte()) }),
            6 => {
                let v = vm(n, input.byte());
                let partner = match input.byte() % 4 {
                    0 => keys[me],
                    1 => STRANGER,
                    _ => keys[other],
                };
                Some(Request::ReplicaKey { vm: v, partner })
            }
            7 => {
                let (s, b1, b2, how) = (input.byte(), input.byte(), input.byte(), input.byte());
                let (sender, genuine) = carry.sealed.clone().unwrap_or((keys[other], Vec::new()));
                let from = match how & 3 {
                    0 => keys[me],
                    1 => STRANGER,
                    _ => sender,
                };
                let sealed = match (how >> 2) & 3 {
                    0 => {
                        let len = input_len(&mut input);
                        input.bytes(usize::from(len))
                    }
                    1 if !genuine.is_empty() => {
                        let mut bad = genuine;
                        let at = usize::from(input.byte()) % bad.len();
                        bad[at] ^= input.byte() | 1;
                        bad
                    }
                    _ => genuine,
                };
                Some(Request::ReplicaCreate { spec: vm_spec(n, s), fleet: fleet_spec(b1, b2), from, sealed })
            }
            8 => {
                let (v, b) = (vm(n, input.byte()), input.byte());
                Some(Request::ReplicaPull { vm: v, max_blocks: u32::from(b & 0xF), resync: b & 0x10 != 0 })
            }
            9 => {
                let (v, e, how) = (vm(n, input.byte()), epoch(input.byte()), input.byte());
                let blocks = if how & 0x80 == 0 {
                    carry.pulled.clone()
                } else {
                    let size = [REPLICA_BLOCK, REPLICA_BLOCK, 0, REPLICA_BLOCK - 1, REPLICA_BLOCK + 1]
                        [usize::from(how & 7) % 5];
                    let count = usize::from((how >> 3) & 0xF) + usize::from(how & 0x40 != 0);
                    (0..count)
                        .map(|i| {
                            let b = input.byte();
                            ReplicaBlock { index: u64::from(b) + i as u64, bytes: vec![b; size] }
                        })
                        .collect()
                };
                pushed_to = Some(v);
                Some(Request::ReplicaPush { vm: v, epoch: e, blocks })
            }
            10 => {
                let (v, i, e) = (vm(n, input.byte()), input.byte(), epoch(input.byte()));
                Some(Request::PromoteReplica { vm: v, instance: 76 + u64::from(i & 3), epoch: e })
            }
            11 => {
                let fence_after_ms = match input.byte() {
                    0xFF => u32::MAX,
                    b => u32::from(b) * 100,
                };
                Some(Request::FleetHeartbeat { fence_after_ms })
            }
            12 => {
                let now = match input.byte() {
                    0xFF => u64::MAX,
                    0 => 0,
                    b => n.state.fleet.now_ms.saturating_add(u64::from(b) * 100),
                };
                for id in n.state.fleet_tick(now) {
                    let f = n.state.fleet.vms[&id];
                    assert!(f.spec.protected && !f.replica && f.self_fenced);
                    assert_ne!(n.state.vms[&id].state, VmState::Running);
                }
                None
            }
            13 => {
                let (c, count) = (input.byte() % 3, input.byte());
                let count = if count == 0xFF { 257 } else { usize::from(count) };
                let members = (0..count).map(|i| [10, 0, (i >> 8) as u8, (i % 7) as u8]).collect();
                Some(Request::SetClusterMembers { cluster: ClusterId(u32::from(c)), members })
            }
            14 => {
                let v = vm(n, input.byte());
                let len = usize::from(input.byte() % 8);
                let text: String = input.bytes(len).iter().map(|&b| char::from(b)).collect();
                Some(Request::NotifyTenant { vm: v, text })
            }
            15 => {
                // A reboot: the state comes back from its snapshot; the
                // backend (the node disk) survives.
                let bytes = postcard::to_allocvec(&n.state.snapshot()).expect("a snapshot encodes");
                let before = n.state.fleet.vms.clone();
                n.state = restore(&bytes, step as u8);
                assert_eq!(n.state.fleet.vms, before, "facility records survive a reboot");
                for (id, f) in &n.state.fleet.vms {
                    if f.spec.protected || f.replica {
                        let v = n.state.vms.get(id).map(|v| v.state);
                        assert_ne!(v, Some(VmState::Running), "protected {id:?} runs after a reboot");
                    }
                }
                None
            }
            17 => {
                let (v, b) = (vm(n, input.byte()), input.byte());
                let image = ["k", "k2", "missing"][usize::from(b & 3) % 3];
                let initrd = match (b >> 2) & 3 {
                    0 => None,
                    1 => Some(String::from("k")),
                    _ => Some(String::from("missing")),
                };
                let cmdline = if b & 0x10 != 0 { "x".repeat(5000) } else { format!("v={}", b >> 5) };
                Some(Request::FleetSetImage { vm: v, image: image.into(), initrd, cmdline })
            }
            18 => Some(Request::FleetVmHealth { vm: vm(n, input.byte()) }),
            _ => {
                // A guest write, through the hypervisor's write gate.
                let (v, i) = (vm(n, input.byte()), input.byte());
                let running = n.state.vms.get(&v).is_some_and(|x| x.state == VmState::Running);
                if running && n.state.may_write(v) {
                    n.sim.volumes.entry(v).or_default().write(u64::from(i), &[i; REPLICA_BLOCK]);
                }
                None
            }
        };
        let mut accepted_push = None;
        if let Some(req) = req {
            let vm_before = match &req {
                Request::FleetSetImage { vm, .. } => n.state.vms.get(vm).map(|v| (v.spec.clone(), v.state)),
                _ => None,
            };
            let r = n.state.handle(role, &req, &mut n.sim);
            if trace() {
                eprintln!(
                    "step {step} node {me} {role:?} {}: {:?}",
                    req.name(),
                    r.as_ref().map(|_| ()).map_err(|e| &e.message)
                );
            }
            if tenant {
                check_tenant(&req, &r);
            }
            match (&req, &r) {
                (Request::ReplicaKey { .. }, Ok(Response::SealedSecret(s))) => {
                    carry.sealed = Some((keys[me], s.clone()));
                }
                (Request::ReplicaPull { .. }, Ok(Response::ReplicaBatch { blocks, .. })) => {
                    assert!(blocks.len() <= 14);
                    carry.pulled = blocks.clone();
                }
                (Request::ReplicaPush { .. }, Ok(_)) => accepted_push = pushed_to,
                (Request::ReplicaCreate { .. }, Ok(Response::VmCreated { vm })) => {
                    let f = n.state.fleet.vms[vm];
                    assert!(f.replica && f.spec.protected);
                }
                (Request::FleetSetImage { vm, image, initrd, cmdline }, r) => {
                    assert_eq!(n.state.fleet.vms, fleet_before, "a boot image change touched facility records");
                    let after = n.state.vms.get(vm).map(|v| v.spec.clone());
                    let (spec_before, state_before) = vm_before.clone().unzip();
                    if r.is_ok() {
                        let s = after.expect("a VM whose boot was set");
                        assert_eq!((&s.image, &s.initrd, &s.cmdline), (image, initrd, cmdline));
                        let f = n.state.fleet.vms[vm];
                        assert!(f.replica || f.spec.epoch >= f.fence, "a fenced VM's boot changed");
                        if state_before == Some(VmState::Running) {
                            assert_eq!(Some(s), spec_before, "a running VM's boot changed");
                        }
                    } else {
                        assert_eq!(after, spec_before, "a refused boot image change changed the VM");
                    }
                }
                (Request::FleetVmHealth { .. }, r) => {
                    assert_eq!(n.state.fleet.vms, fleet_before, "a health read touched facility records");
                    if let Ok(Response::VmHealth(h)) = r {
                        assert_eq!(h.check(), Ok(()));
                    }
                }
                _ => {}
            }
            if tenant && r.is_err() {
                assert_eq!(n.state.fleet.vms, fleet_before, "a refused tenant request changed facility records");
            }
        }
        for (id, before) in replicas_before {
            let now = nodes[me].sim.volumes.get(&id).map(|v| (v.secret.clone(), v.blocks.clone()));
            if now != before {
                assert_eq!(accepted_push, Some(id), "replica {id:?} volume changed by op {op} without a push");
            }
        }
        for (id, before) in others_before {
            let now = nodes[other].sim.volumes.get(&id).map(|v| (v.secret.clone(), v.blocks.clone()));
            assert!(now == before, "replica {id:?} on the other node changed by op {op}");
        }
        for n in &mut nodes {
            check(n);
        }
    }
});

/// `FLEET_TRACE=1` when replaying: each request and its outcome on stderr.
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FLEET_TRACE").is_some())
}

/// A length for garbage: mostly short, sometimes past the sealed limit.
fn input_len(input: &mut In<'_>) -> u16 {
    match input.byte() {
        0xFF => 1100,
        b => u16::from(b),
    }
}

/// Tenants may ask none of the facility requests; their own VM's start
/// and stop go through the same fence checks as the landlord's.
fn check_tenant(req: &Request, r: &Result<Response, ErrorReply>) {
    match req {
        Request::StartVm { .. } | Request::StopVm { .. } => {}
        _ => assert_eq!(r.as_ref().map_err(|e| e.code), Err(ErrorCode::Denied), "tenant {}", req.name()),
    }
}

/// The invariants every step keeps.
fn check(n: &mut Node) {
    for (id, f) in &n.state.fleet.vms {
        let v = n.state.vms.get(id).expect("a facility record has its VM");
        if let Some(&old) = n.fences.get(id) {
            assert!(f.fence >= old, "{id:?}: fence went down from {old} to {}", f.fence);
        }
        if f.replica || f.spec.epoch < f.fence {
            assert_ne!(v.state, VmState::Running, "{id:?} runs fenced or as a replica: {f:?}");
            assert!(!n.state.may_write(*id), "{id:?} may write fenced or as a replica: {f:?}");
        }
    }
    n.fences = n.state.fleet.vms.iter().map(|(id, f)| (*id, f.fence)).collect();
}
