//! The facility's state: nodes, VMs, volume locks and unfinished intents.
//!
//! This is exactly what a [`crate::store::Store`] holds, so a controller that
//! takes over from another one reloads it and carries on.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::intent::Intent;
use crate::locks::LockTable;
use crate::rollout::ServiceRecord;
use crate::run::{AuditRecord, Run};
use crate::runbook::RunbookDoc;

/// A node's name, unique in the facility (the inventory's key).
pub type NodeName = String;

/// Where and how to reach a node's management port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The node's name in the facility.
    pub name: NodeName,
    /// Its management port.
    pub addr: SocketAddr,
    /// Its landlord node key (hex X25519), to authenticate the channel.
    pub node_key: String,
}

/// What one VM asks of a node, so placement can check it fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs (one physical CPU each: BMonitor does not overcommit).
    pub vcpus: u8,
    /// Guest memory.
    pub memory_mib: u32,
    /// The VM's disk (a replica on its partner takes as much).
    pub disk_mib: u32,
}

/// What a node offers in total (wider than [`Resources`] so sums never overflow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Capacity {
    /// Physical CPUs for guests.
    pub vcpus: u64,
    /// Memory for guests.
    pub memory_mib: u64,
    /// Disk for guest volumes and replicas.
    pub disk_mib: u64,
}

impl Capacity {
    /// The capacity one VM of `res` takes, to add it up.
    pub fn of(res: Resources) -> Self {
        Capacity {
            vcpus: u64::from(res.vcpus),
            memory_mib: u64::from(res.memory_mib),
            disk_mib: u64::from(res.disk_mib),
        }
    }

    /// Only the disk part of `res`: what a replica takes on a partner.
    pub fn disk_of(res: Resources) -> Self {
        Capacity { disk_mib: u64::from(res.disk_mib), ..Capacity::default() }
    }

    /// Sum, saturating (a corrupt store cannot make it wrap).
    pub fn plus(self, o: Capacity) -> Self {
        Capacity {
            vcpus: self.vcpus.saturating_add(o.vcpus),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            disk_mib: self.disk_mib.saturating_add(o.disk_mib),
        }
    }

    /// What is left of `self` after `used`, floored at zero.
    pub fn minus(self, used: Capacity) -> Self {
        Capacity {
            vcpus: self.vcpus.saturating_sub(used.vcpus),
            memory_mib: self.memory_mib.saturating_sub(used.memory_mib),
            disk_mib: self.disk_mib.saturating_sub(used.disk_mib),
        }
    }

    /// Whether `need` fits in `self` on every axis.
    pub fn holds(self, need: Capacity) -> bool {
        need.vcpus <= self.vcpus && need.memory_mib <= self.memory_mib && need.disk_mib <= self.disk_mib
    }
}

/// Everything needed to define one VM on any node of the facility.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlacementSpec {
    /// Unique in the facility; also names the VM's volume (lock key).
    pub name: String,
    /// The tenant (lease owner) it belongs to.
    pub tenant: String,
    /// The tenant's console key, so the new node leases it to the same tenant.
    pub tenant_console_key: String,
    /// Its cluster (network boundary).
    pub cluster: u32,
    /// What it needs.
    pub res: Resources,
    /// The image name on the nodes.
    pub image: String,
    /// Optional initrd image.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
    /// Its cluster address, a member of the cluster's filters.
    pub ip: Option<[u8; 4]>,
    /// NIC MAC, kept across moves.
    pub mac: [u8; 6],
    /// Protected VMs keep a replica of their disk on a partner node.
    pub protected: bool,
    /// The service (update-domain group) it belongs to, if any.
    #[serde(default)]
    pub service: Option<String>,
    /// Its update domain within the service.
    #[serde(default)]
    pub domain: Option<u32>,
    /// The service version its image is.
    #[serde(default)]
    pub version: Option<String>,
}

/// Where a node is in its lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Takes new VMs and replicas.
    Active,
    /// Being emptied: takes nothing new, its VMs move away.
    Draining,
    /// Declared dead: its VMs were healed elsewhere; heard again means rejoin.
    Dead,
    /// Out of the facility (kept so its name and history stay known).
    Removed,
}

/// One node of the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// How to reach it.
    pub addr: NodeAddr,
    /// What it offers in total.
    pub capacity: Capacity,
    /// Lifecycle state.
    pub state: NodeState,
    /// Unix time (ms) it was declared dead, while [`NodeState::Dead`].
    pub dead_since_ms: Option<u64>,
    /// How many times it was declared dead (its "death epoch").
    pub deaths: u64,
}

/// Where a VM is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Being created or moved: an intent is working on it.
    Moving,
    /// Running on its node.
    Running,
    /// Its node died and no node can take it yet; the reason says why.
    Waiting(String),
}

/// One VM of the facility and where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// What it is.
    pub spec: VmPlacementSpec,
    /// The node that runs it (or ran it, while Waiting).
    pub node: NodeName,
    /// The node holding its replica (protected VMs).
    pub partner: Option<NodeName>,
    /// Application-instance ID: the same across moves, the volume lock's holder.
    pub instance: u64,
    /// Fencing epoch its current copy runs with.
    pub epoch: u64,
    /// Life state.
    pub state: VmState,
}

/// The whole facility, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FacilityState {
    /// Inventory by name.
    pub nodes: BTreeMap<NodeName, NodeRecord>,
    /// VMs by name.
    pub vms: BTreeMap<String, VmRecord>,
    /// Volume locks and their epochs.
    pub locks: LockTable,
    /// Unfinished work, recorded before acting.
    pub intents: Vec<Intent>,
    /// Next application-instance ID to hand out.
    pub next_instance: u64,
    /// Next intent ID to hand out.
    pub next_intent: u64,
    /// Disaster-recovery runbooks by service.
    #[serde(default)]
    pub runbooks: BTreeMap<String, RunbookDoc>,
    /// Runbook runs, oldest first (at most [`crate::run::MAX_RUNS`] kept).
    #[serde(default)]
    pub runs: Vec<Run>,
    /// Next run ID to hand out.
    #[serde(default)]
    pub next_run: u64,
    /// Nonces of signed run requests seen recently, with when (unix ms).
    #[serde(default)]
    pub nonces: Vec<(u64, u64)>,
    /// Where each service goes back to on failback: the node its last takeover left.
    #[serde(default)]
    pub failback_to: BTreeMap<String, NodeName>,
    /// Services with update domains and versions, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
    /// The facility's audit log (runs, refusals, forced upgrades), oldest first.
    #[serde(default)]
    pub audit: Vec<AuditRecord>,
}

impl FacilityState {
    /// The node's address if the inventory has it.
    pub fn addr(&self, name: &str) -> Option<&NodeAddr> {
        self.nodes.get(name).map(|n| &n.addr)
    }

    /// Whether `name` is an Active node.
    pub fn is_active(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|n| n.state == NodeState::Active)
    }

    /// The unfinished intent working on `vm`, if any.
    pub fn intent_for(&self, vm: &str) -> Option<&Intent> {
        self.intents.iter().find(|i| i.vm == vm)
    }

    /// The run under way on `vm`, if any.
    pub fn run_for(&self, vm: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.request.service == vm && r.state == crate::run::RunState::Running)
    }

    /// Whether an intent or a run is working on `vm`.
    pub fn busy(&self, vm: &str) -> bool {
        self.intent_for(vm).is_some() || self.run_for(vm).is_some()
    }

    /// Whether `vm` is recovered by an operator's takeover runbook rather
    /// than healed automatically.
    pub fn manual_takeover(&self, vm: &str) -> bool {
        self.runbooks.get(vm).is_some_and(RunbookDoc::manual_takeover)
    }
}
