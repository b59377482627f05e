//! Monitoring: the health a node pushes to subscribed consoles, the events it
//! records, and the corrective-action policies it keeps and applies.
//!
//! Everything here is pure logic shared by the node and `bmctl watch`:
//!
//! - this module: the wire types ([`HealthReport`], [`MonitorEvent`],
//!   [`Push`], [`Policy`]) and who may see what ([`visible_to`],
//!   [`HealthReport::for_role`]).
//! - [`policy`]: validation of a policy against its owner's powers and the
//!   node's limits.
//! - [`engine`]: the decision engine: facts in, decisions out, with backoff
//!   and repeat limits, deterministic in the time it is given.
//! - [`events`]: the bounded event log consoles resume from by sequence
//!   number.
//!
//! See `docs/monitoring.md` at the repository root.

pub mod engine;
pub mod events;
pub mod policy;

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::msg::{ClusterId, LeaseId, Role, VmId, VmState};

/// Sequence number of node-initiated messages (subscription pushes) on an
/// established session; requests may never use it, so a console tells a
/// push from a reply by this number alone.
pub const PUSH_SEQ: u64 = u64::MAX;

/// Shortest and longest health-push interval a console may ask for.
pub const MIN_INTERVAL_MS: u32 = 200;
/// See [`MIN_INTERVAL_MS`].
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// Most events carried in one push (the rest follow in the next ones).
pub const MAX_EVENTS_PER_PUSH: usize = 64;

/// Who a policy belongs to, which bounds what it may do: the landlord acts
/// on hardware and whole VMs, a tenant on its own VMs and their services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Owner {
    /// The facility operator.
    Landlord,
    /// The tenant holding this lease.
    Tenant(LeaseId),
}

impl Owner {
    /// The role whose powers the owner's actions are checked against.
    pub fn role(self) -> Role {
        match self {
            Owner::Landlord => Role::Landlord,
            Owner::Tenant(l) => Role::Tenant(l),
        }
    }

    /// The owner a session of this role sets and reads policies as.
    pub fn of(role: Role) -> Owner {
        match role {
            Role::Landlord => Owner::Landlord,
            Role::Tenant(l) => Owner::Tenant(l),
        }
    }
}

/// A node-side check that runs on its own schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Probe {
    /// A pattern test of free memory frames.
    Memory,
    /// The NIC reports its link up.
    NicLink,
    /// A frame sent through the switch comes back.
    NicLoopback,
    /// The node disk's check sector reads back and verifies.
    Disk,
    /// The TPM answers a command.
    Tpm,
}

impl Probe {
    /// Every probe, in report order.
    pub const ALL: [Probe; 5] = [Probe::Memory, Probe::NicLink, Probe::NicLoopback, Probe::Disk, Probe::Tpm];

    /// The name used in metrics, docs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Probe::Memory => "memory",
            Probe::NicLink => "nic-link",
            Probe::NicLoopback => "nic-loopback",
            Probe::Disk => "disk",
            Probe::Tpm => "tpm",
        }
    }

    /// The probe with this name.
    pub fn from_name(s: &str) -> Option<Probe> {
        Probe::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// The latest result of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// Which probe.
    pub probe: Probe,
    /// `None` while the node has nothing to check (no disk, no TPM).
    pub ok: Option<bool>,
    /// What was checked or what failed, for people.
    pub detail: String,
    /// Node time of the last run, milliseconds since boot.
    pub at_ms: u64,
    /// Failures in a row.
    pub failures: u32,
}

/// A supervised service in a VM, as the agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// Service name.
    pub name: String,
    /// `running`, `exited`, `failed`, `stopped`, `restarting`.
    pub state: String,
    /// Failures (exits or kills not asked for) seen since the VM started.
    pub failures: u32,
}

/// The software inside a VM, as its agent reports it (tenant-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// An agent is attached.
    pub attached: bool,
    /// Its heartbeats stopped for longer than the VM's bound.
    pub hung: bool,
    /// Milliseconds since the last heartbeat (or the attach).
    pub since_heartbeat_ms: Option<u64>,
    /// Guest load from the last heartbeat.
    pub load: Option<agent_proto::msg::GuestLoad>,
    /// Services seen in this run.
    pub services: Vec<ServiceHealth>,
}

/// One VM's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHealth {
    /// The VM.
    pub vm: VmId,
    /// Its name.
    pub name: String,
    /// Its lease.
    pub lease: LeaseId,
    /// Its cluster.
    pub cluster: ClusterId,
    /// Defined state.
    pub state: VmState,
    /// Times started.
    pub starts: u64,
    /// CPU time of the current run, milliseconds.
    pub cpu_ms: u64,
    /// VM exits of the current run.
    pub exits: u64,
    /// VM exits per second over the last push interval.
    pub exits_per_sec: u64,
    /// The guest's agent; only a VM's tenant sees it.
    pub agent: Option<AgentHealth>,
}

/// What a node pushes on every interval of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Counts up by one per report of this session: the node's heartbeat.
    pub beat: u64,
    /// Node time, milliseconds since boot.
    pub uptime_ms: u64,
    /// Free memory, MiB (landlord only; 0 for tenants).
    pub memory_free_mib: u64,
    /// VM exits per second, whole node, over the last interval (landlord only).
    pub exits_per_sec: u64,
    /// Probe results (landlord only; empty for tenants).
    pub probes: Vec<ProbeStatus>,
    /// The VMs the role may see.
    pub vms: Vec<VmHealth>,
}

impl HealthReport {
    /// The report as `role` may see it: a tenant keeps only its lease's
    /// VMs, with no node hardware facts; the landlord keeps everything but
    /// the guests' software (agents and services are the tenants').
    pub fn for_role(&self, role: Role) -> HealthReport {
        match role {
            Role::Landlord => HealthReport {
                vms: self.vms.iter().map(|v| VmHealth { agent: None, ..v.clone() }).collect(),
                ..self.clone()
            },
            Role::Tenant(lease) => HealthReport {
                beat: self.beat,
                uptime_ms: self.uptime_ms,
                memory_free_mib: 0,
                exits_per_sec: 0,
                probes: Vec::new(),
                vms: self.vms.iter().filter(|v| v.lease == lease).cloned().collect(),
            },
        }
    }
}

/// What a policy action is applied to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    /// The node itself (probes).
    Node,
    /// A VM.
    Vm(VmId),
    /// A supervised service in a VM.
    Service(VmId, String),
}

/// A condition a policy rule watches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The VM's agent, once attached in this run, sent no heartbeat for
    /// `secs` seconds (a hung guest or a dead agent).
    HeartbeatMissed {
        /// Seconds without a heartbeat, 1..=3600.
        secs: u32,
    },
    /// A probe failed `count` times in a row (landlord only).
    ProbeFailing {
        /// Which probe.
        probe: Probe,
        /// Failures in a row, 1..=100.
        count: u32,
    },
    /// A service (or any service: `"*"`) failed `count` times within
    /// `window_secs` (tenant only).
    ServiceFailing {
        /// Service name, or `"*"`.
        service: String,
        /// Failures, 1..=100.
        count: u32,
        /// Window, 1..=86400 seconds.
        window_secs: u32,
    },
    /// The VM stopped without being asked to (a triple fault, a guest
    /// error the hypervisor stopped it for).
    VmStoppedAbnormally,
}

/// What a rule does when its condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyAction {
    /// Only record an event marked for notification: `bmctl watch` runs
    /// its notify command with the event as JSON.
    Notify,
    /// Restart the failing service through the agent (tenant only).
    RestartService,
    /// Restart the VM.
    RestartVm,
    /// Reload the VM's image and restart it (tenant only).
    ReloadImage,
    /// Reboot the node (landlord only).
    RebootNode,
}

impl PolicyAction {
    /// The name used in events, docs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            PolicyAction::Notify => "notify",
            PolicyAction::RestartService => "restart-service",
            PolicyAction::RestartVm => "restart-vm",
            PolicyAction::ReloadImage => "reload-image",
            PolicyAction::RebootNode => "reboot-node",
        }
    }
}

/// One rule: when `when` holds for a VM of the cluster (or the node), do
/// `action`, at most `max_repeats` times per `window_secs` per target, the
/// n-th repeat waiting `backoff_secs * 2^(n-1)` after the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// Unique within the policy; names the rule in events and the audit.
    pub name: String,
    /// Restrict to one VM of the cluster (`None`: all of the owner's VMs in it).
    pub vm: Option<VmId>,
    /// The condition.
    pub when: Condition,
    /// The action.
    pub action: PolicyAction,
    /// Also mark the decision for notification (in addition to `action`).
    pub notify: bool,
    /// Base backoff between repeats, 0..=3600 seconds.
    pub backoff_secs: u32,
    /// Most actions per target in `window_secs`, 1..=100; past it the rule
    /// gives up on that target (and says so, once).
    pub max_repeats: u32,
    /// The repeat window, 1..=86400 seconds.
    pub window_secs: u32,
}

/// A cluster's policy of one owner.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    /// Rules, evaluated independently.
    pub rules: Vec<PolicyRule>,
}

/// A stored policy with its version (1 for the first set, +1 each set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedPolicy {
    /// The version.
    pub version: u32,
    /// The policy.
    pub policy: Policy,
}

/// What kind of thing a [`MonitorEvent`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A probe started failing.
    ProbeFailed(Probe),
    /// A probe passes again.
    ProbeRecovered(Probe),
    /// A VM started (by a console, the node, or a policy).
    VmStarted,
    /// A VM was stopped on request.
    VmStopped,
    /// A VM stopped without being asked to; the text says why.
    VmFaulted,
    /// The VM's agent attached.
    AgentAttached,
    /// The VM's agent is hung (no heartbeat within its bound).
    AgentHung,
    /// The VM's agent sends heartbeats again.
    AgentRecovered,
    /// The VM's agent detached or its ring faulted.
    AgentDetached,
    /// A supervised service changed state; the text is the agent's.
    Service {
        /// Service name.
        name: String,
    },
    /// A policy rule acted.
    Action {
        /// Whose policy.
        owner: Owner,
        /// The rule.
        rule: String,
        /// The action taken.
        action: PolicyAction,
        /// Whether the action succeeded (`false`: the text says why not).
        ok: bool,
    },
    /// A policy rule held back: backoff pending or repeat limit reached.
    Suppressed {
        /// Whose policy.
        owner: Owner,
        /// The rule.
        rule: String,
        /// The action not taken.
        action: PolicyAction,
    },
    /// A policy asks the owner's console to notify (`bmctl watch --notify`).
    Notify {
        /// Whose policy.
        owner: Owner,
        /// The rule.
        rule: String,
    },
    /// A policy was set.
    PolicySet {
        /// Whose policy.
        owner: Owner,
        /// Its cluster.
        cluster: ClusterId,
        /// Its new version.
        version: u32,
    },
}

impl EventKind {
    /// The kind's short name, as the node's log, event lines and metrics
    /// labels show it.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ProbeFailed(_) => "probe-failed",
            EventKind::ProbeRecovered(_) => "probe-recovered",
            EventKind::VmStarted => "vm-started",
            EventKind::VmStopped => "vm-stopped",
            EventKind::VmFaulted => "vm-faulted",
            EventKind::AgentAttached => "agent-attached",
            EventKind::AgentHung => "agent-hung",
            EventKind::AgentRecovered => "agent-recovered",
            EventKind::AgentDetached => "agent-detached",
            EventKind::Service { .. } => "service",
            EventKind::Action { .. } => "action",
            EventKind::Suppressed { .. } => "suppressed",
            EventKind::Notify { .. } => "notify",
            EventKind::PolicySet { .. } => "policy-set",
        }
    }
}

/// Whom an event is about, which decides who may see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// The node's hardware (landlord only).
    Node,
    /// A VM: its lifecycle is seen by the landlord and the VM's tenant.
    Vm {
        /// The VM.
        vm: VmId,
        /// Its lease.
        lease: LeaseId,
    },
    /// Software inside a VM, or a tenant's policy: the tenant only.
    Guest {
        /// The VM.
        vm: VmId,
        /// Its lease.
        lease: LeaseId,
    },
    /// A tenant's own business not tied to one VM (its policy changes).
    Tenant(LeaseId),
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// Position in the node's event log (strictly increasing per boot).
    pub seq: u64,
    /// Node time, milliseconds since boot.
    pub time_ms: u64,
    /// Whom it is about.
    pub scope: Scope,
    /// What happened.
    pub kind: EventKind,
    /// Details for people.
    pub text: String,
}

/// Whether a session of `role` may see an event of `scope`.
pub fn visible_to(scope: &Scope, role: Role) -> bool {
    match (scope, role) {
        (Scope::Node, Role::Landlord) | (Scope::Vm { .. }, Role::Landlord) => true,
        (Scope::Node, Role::Tenant(_)) => false,
        (Scope::Vm { lease, .. }, Role::Tenant(l)) | (Scope::Guest { lease, .. }, Role::Tenant(l)) => *lease == l,
        (Scope::Tenant(lease), Role::Tenant(l)) => *lease == l,
        (Scope::Guest { .. }, Role::Landlord) | (Scope::Tenant(_), Role::Landlord) => false,
    }
}

/// One node-initiated message of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// Health now (every interval; `None` when the push only carries events).
    pub health: Option<HealthReport>,
    /// Events the role may see, oldest first, at most [`MAX_EVENTS_PER_PUSH`].
    pub events: Vec<MonitorEvent>,
    /// Events this subscription will never see because the log dropped
    /// them before they were sent (the console was too slow or away too
    /// long); 0 normally.
    pub lost: u64,
    /// The sequence number to resume from after a reconnect.
    pub next_seq: u64,
}
