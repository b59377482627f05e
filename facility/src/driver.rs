//! How the controller talks to nodes: one trait, implemented by `bmctl` over
//! the authenticated console channel (and by fakes in tests).
//!
//! The controller never sees plaintext disk data or volume keys: replica keys
//! are sealed node-to-node, and replica blocks are the primary's ciphertext.

use std::fmt;
use std::time::Duration;

use crate::model::{NodeAddr, VmPlacementSpec};

/// One VM as a node reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeVm {
    /// VM name (facility-wide).
    pub name: String,
    /// Application-instance ID it was created with.
    pub instance: u64,
    /// Fencing epoch of this copy.
    pub epoch: u64,
    /// Whether it runs now.
    pub running: bool,
    /// Whether the node fenced it (stopped, refusing writes below a newer epoch).
    pub fenced: bool,
    /// Whether the node stopped it itself because its fencing lease ran
    /// out (no heartbeat in time): the controller restarts it at its epoch
    /// if the facility still places it there.
    pub self_fenced: bool,
}

/// A node's answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    /// Physical CPUs.
    pub cpus: u32,
    /// Free memory.
    pub memory_mib_free: u32,
    /// Free disk.
    pub disk_mib_free: u32,
    /// VMs defined there.
    pub vms: Vec<NodeVm>,
    /// Replicas it holds: (VM, epoch).
    pub replicas: Vec<(String, u64)>,
}

impl NodeReport {
    /// The VM `name` if the node has it.
    pub fn vm(&self, name: &str) -> Option<&NodeVm> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// The epoch of the replica of `vm`, if the node holds one.
    pub fn replica(&self, vm: &str) -> Option<u64> {
        self.replicas.iter().find(|(n, _)| n == vm).map(|(_, e)| *e)
    }
}

/// A supervised service in a guest, as its agent last reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Service name (the tenant's).
    pub name: String,
    /// The agent's last event text for it ("started pid 42", "exited with status 1", ...).
    pub last_event: String,
    /// Whether that event says it runs (started, and no failure since).
    pub up: bool,
}

/// A VM's health through its agent: what runbook `verify` steps and
/// rolling upgrades wait for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmHealth {
    /// The VM runs.
    pub running: bool,
    /// An agent is attached.
    pub agent_attached: bool,
    /// The agent's heartbeats stopped for longer than its bound.
    pub agent_hung: bool,
    /// Milliseconds since the agent's last heartbeat (None: never heard).
    pub since_heartbeat_ms: Option<u64>,
    /// Heartbeats received since the VM started.
    pub heartbeats: u64,
    /// Services the agent reported, by name (at most 32).
    pub services: Vec<ServiceHealth>,
}

impl VmHealth {
    /// The service `name` if the agent reported it.
    pub fn service(&self, name: &str) -> Option<&ServiceHealth> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// What a VM boots: one version of a service's software.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootImage {
    /// Kernel image name on the nodes (a file in the controller's images directory).
    pub image: String,
    /// Initrd image name, if any.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

impl BootImage {
    /// What a VM defined from `spec` boots.
    pub fn of(spec: &VmPlacementSpec) -> Self {
        BootImage { image: spec.image.clone(), initrd: spec.initrd.clone(), cmdline: spec.cmdline.clone() }
    }
}

/// Blocks of a primary's disk not yet on its partner (ciphertext).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaBatch {
    /// (block number, sealed block).
    pub blocks: Vec<(u64, Vec<u8>)>,
    /// Dirty blocks still on the primary after this batch.
    pub remaining: u64,
}

/// Why a node call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// No answer (connection failed, timed out).
    Unreachable(String),
    /// The node answered no (stale epoch, unknown VM, quota).
    Refused(String),
    /// Anything else (protocol error).
    Other(String),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Unreachable(s) => write!(f, "unreachable: {s}"),
            DriverError::Refused(s) => write!(f, "refused: {s}"),
            DriverError::Other(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for DriverError {}

/// The node operations the controller needs. Every call must be bounded in
/// time by the implementation (the console's `--timeout`), and every
/// mutating call must be idempotent: intents are retried after a crash.
pub trait NodeDriver: Send + Sync {
    /// The heartbeat; also renews the node's fencing lease.
    fn status(&self, n: &NodeAddr) -> Result<NodeReport, DriverError>;
    /// Independent probe (TCP connect to the management port) within `timeout`.
    fn probe(&self, n: &NodeAddr, timeout: Duration) -> bool;
    /// Define the VM; Ok if that instance already exists there.
    fn create_vm(&self, n: &NodeAddr, vm: &VmPlacementSpec, instance: u64, epoch: u64) -> Result<(), DriverError>;
    /// Start it; the node refuses a stale epoch.
    fn start_vm(&self, n: &NodeAddr, vm: &str, epoch: u64) -> Result<(), DriverError>;
    /// Stop it (its disk stays).
    fn stop_vm(&self, n: &NodeAddr, vm: &str) -> Result<(), DriverError>;
    /// Remove it and its disk.
    fn destroy_vm(&self, n: &NodeAddr, vm: &str) -> Result<(), DriverError>;
    /// The node stops it and refuses writes/starts below `epoch`.
    fn fence_vm(&self, n: &NodeAddr, vm: &str, epoch: u64) -> Result<(), DriverError>;
    /// The cluster's boundary on that node.
    fn set_cluster_filter(&self, n: &NodeAddr, cluster: u32, members: &[[u8; 4]]) -> Result<(), DriverError>;
    /// The VM's volume key sealed by the primary for the partner (opaque).
    fn replica_key(&self, primary: &NodeAddr, vm: &str, partner: &NodeAddr) -> Result<Vec<u8>, DriverError>;
    /// Make an empty replica on the partner; the primary marks every block
    /// dirty for it, so the next pulls carry the whole disk.
    fn replica_create(
        &self,
        partner: &NodeAddr,
        vm: &VmPlacementSpec,
        sealed_key: &[u8],
        from: &NodeAddr,
        instance: u64,
        epoch: u64,
    ) -> Result<(), DriverError>;
    /// Up to `max_blocks` dirty blocks; the primary counts them clean once handed out.
    fn replica_pull(&self, primary: &NodeAddr, vm: &str, max_blocks: u32) -> Result<ReplicaBatch, DriverError>;
    /// Apply a batch; the partner refuses `epoch` below its own.
    fn replica_push(&self, partner: &NodeAddr, vm: &str, epoch: u64, batch: &ReplicaBatch) -> Result<(), DriverError>;
    /// Mark every block of `vm` dirty again on the primary (a full resync):
    /// needed when a pulled batch may have been lost (a controller died
    /// holding it). Added to the proposed trait: without it a lost batch is
    /// a silent hole in the replica.
    fn replica_resync(&self, primary: &NodeAddr, vm: &str) -> Result<(), DriverError>;
    /// Drop the replica of `vm` held on `partner` (it was re-partnered or
    /// the VM is gone). Added to the proposed trait.
    fn replica_drop(&self, partner: &NodeAddr, vm: &str) -> Result<(), DriverError>;
    /// The replica becomes the VM's disk and the VM is defined (not started).
    fn promote_replica(
        &self,
        partner: &NodeAddr,
        vm: &VmPlacementSpec,
        instance: u64,
        epoch: u64,
    ) -> Result<(), DriverError>;
    /// Tell the VM's tenant something (healed, moved).
    fn notify_tenant(&self, n: &NodeAddr, vm: &str, text: &str) -> Result<(), DriverError>;
    /// The VM's health as its agent reports it (runbook verify, rollouts).
    fn vm_health(&self, n: &NodeAddr, vm: &str) -> Result<VmHealth, DriverError>;
    /// Boot the (stopped) VM from `boot` from its next start on, keeping
    /// its disk: a rolling upgrade's step. Images the node lacks are
    /// uploaded first. Ok if it already boots exactly that.
    fn set_vm_image(&self, n: &NodeAddr, vm: &str, boot: &BootImage) -> Result<(), DriverError>;
}
