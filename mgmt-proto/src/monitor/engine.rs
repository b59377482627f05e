//! The corrective-action decision engine: the node feeds it the facts of
//! each round, it answers which policy actions to take now, holding back
//! repeats by backoff and a repeat limit. Pure and deterministic in the
//! time it is given, so its guarantees are property-tested on the host.

use alloc::string::String;
use alloc::vec::Vec;

use super::policy::Policies;
use super::{Owner, PolicyAction, Probe, Target};
use crate::msg::{ClusterId, LeaseId, VmId};

/// One VM's facts for a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFacts {
    /// The VM.
    pub vm: VmId,
    /// Its lease.
    pub lease: LeaseId,
    /// Its cluster.
    pub cluster: ClusterId,
    /// It is running now.
    pub running: bool,
    /// Milliseconds since its agent's last heartbeat; `None` when no agent
    /// attached in this run (an agentless VM is never "hung").
    pub heartbeat_age_ms: Option<u64>,
    /// Service failures since the previous round, one name per failure.
    pub service_failures: Vec<String>,
    /// It stopped without being asked to since the previous round.
    pub stopped_abnormally: bool,
    /// It was (re)started since the previous round: per-run conditions
    /// (heartbeats) start afresh.
    pub started: bool,
}

/// The facts of one round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// Node time, milliseconds since boot (never decreases).
    pub now_ms: u64,
    /// Every VM the node knows.
    pub vms: Vec<VmFacts>,
    /// Each probe's failures in a row (0: passing), for probes that ran.
    pub probes: Vec<(Probe, u32)>,
}

/// What the engine decided for one rule and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take the action now.
    Act,
    /// The condition holds, but the backoff runs until then; the engine
    /// acts then by itself if the condition still holds.
    Backoff {
        /// Node time the action is due.
        until_ms: u64,
    },
    /// The rule reached its repeat limit on this target; said once per window.
    LimitReached,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whose policy.
    pub owner: Owner,
    /// The policy's cluster.
    pub cluster: ClusterId,
    /// The rule.
    pub rule: String,
    /// The policy version the rule came from.
    pub policy_version: u32,
    /// What it applies to.
    pub target: Target,
    /// The rule's action.
    pub action: PolicyAction,
    /// The rule asks for a notification too.
    pub notify: bool,
    /// Act, wait, or give up.
    pub verdict: Verdict,
    /// Why, for the event log and the audit (e.g. "no heartbeat for 12 s").
    pub reason: String,
}

/// The engine's memory between rounds.
#[derive(Debug, Default)]
pub struct Engine {}

impl Engine {
    /// An engine with nothing remembered.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// One round: the decisions to carry out or report now.
    pub fn step(&mut self, policies: &Policies, facts: &Facts) -> Vec<Decision> {
        let _ = (policies, facts);
        Vec::new()
    }

    /// Forgets a VM that no longer exists.
    pub fn forget_vm(&mut self, vm: VmId) {
        let _ = vm;
    }
}
