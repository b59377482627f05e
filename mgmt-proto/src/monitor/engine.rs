//! The corrective-action decision engine: the node feeds it the facts of
//! each round, it answers which policy actions to take now, holding back
//! repeats by backoff and a repeat limit. Pure and deterministic in the
//! time it is given, so its guarantees are property-tested on the host.
//!
//! # Which rules apply
//!
//! A VM of lease `L` in cluster `C` is watched by the rules of the
//! landlord's policy for `C` and of lease `L`'s policy for `C`, never by
//! another lease's policy; a rule naming a VM (`rule.vm`) watches that VM
//! only. Probe-failing rules of a landlord policy watch the node
//! ([`Target::Node`]), once per policy. Rules beyond an owner's powers
//! ([`powers_refusal`]), rules past [`MAX_RULES`] in a policy,
//! policies past [`MAX_POLICIES`] and second rules of the same name are
//! skipped, so an unvalidated policy can neither act beyond its owner's
//! powers nor make the engine remember more. Numeric fields are clamped to
//! the ranges validation enforces.
//!
//! # Conditions
//!
//! - heartbeat-missed `{secs}` holds while the VM runs and its agent's
//!   last heartbeat is at least `secs` old (an agentless VM never holds).
//!   It is level-triggered: it triggers once when it starts to hold (an
//!   *episode*); the episode ends when it stops holding or when the VM was
//!   (re)started, so a restarted VM that hangs again triggers again.
//!   Target: the VM.
//! - probe-failing `{probe, count}` holds while the probe has failed at
//!   least `count` times in a row, with episodes as above (a probe missing
//!   from the facts does not hold). Target: the node.
//! - service-failing `{service, count, window_secs}` records each failure
//!   of a matching service (`"*"` matches any) with the round's time, per
//!   rule, VM and service; when `count` of them fall within `window_secs`
//!   the rule triggers and forgets them (the next trigger needs `count` new
//!   failures). At most `count` times are kept per service. Failures of
//!   invalid service names ([`valid_service_name`]) are ignored,
//!   and at most [`MAX_SERVICES_PER_VM`] service names are tracked per VM
//!   (failures of further names are ignored until one is forgotten).
//!   Target: the service.
//! - vm-stopped-abnormally triggers in every round the VM is reported
//!   stopped abnormally. Target: the VM.
//!
//! A rule triggers at most once per target per round.
//!
//! # Backoff and repeat limit
//!
//! A rule's memory is per *key*: owner, cluster, rule name and target. On
//! a trigger, with `n` the actions taken for the key within the last
//! `window_secs`:
//!
//! - `n >= max_repeats`: [`Verdict::LimitReached`], said once until the
//!   window has room again; no action, and the trigger is dropped.
//! - `n > 0` and now is before the last action plus [`backoff_ms`]`(backoff_secs, n)`
//!   (`backoff_secs * 2^(n-1)` seconds, the exponent capped at
//!   [`MAX_BACKOFF_DOUBLINGS`]): [`Verdict::Backoff`] once, and the trigger
//!   waits. In the first round at or after the due time the engine acts on
//!   it by itself if it is still relevant: a level condition's episode has
//!   not ended, an edge condition (service-failing, vm-stopped-abnormally)
//!   always. Triggers of the key while one waits join it.
//! - otherwise: [`Verdict::Act`] now.
//!
//! Hence at most `max_repeats` actions per key in any `window_secs`, and
//! consecutive actions at least the backoff apart.
//!
//! # Memory
//!
//! The engine forgets a policy's state when its version changes or the
//! policy disappears, a rule's when the rule disappears, a VM's when
//! [`Engine::forget_vm`] is called (the node calls it when it destroys a
//! VM: a VM merely missing from one round's facts keeps its state, so its
//! repeat limit cannot be reset by a gap in the facts), and a key's once
//! nothing about it is left within its windows. It keeps at most, per policy and rule, one
//! key per VM (per service of a VM: at most [`MAX_SERVICES_PER_VM`]) or
//! one for the node, and per key at most `max_repeats` action times,
//! `count` failure times and one waiting trigger: [`Engine::size`].
//!
//! Time: `now_ms` never goes back; a round with an earlier time is taken
//! as happening at the latest time seen. Decisions come out in policy
//! order (cluster, owner), then rule order, then the facts' VM order, then
//! service name order: the same inputs give the same outputs.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::policy::{
    powers_refusal, valid_service_name, Policies, BACKOFF_SECS, FAILURE_COUNT, HEARTBEAT_SECS, MAX_POLICIES,
    MAX_REPEATS, MAX_RULES, WINDOW_SECS,
};
use super::{Condition, Owner, PolicyAction, PolicyRule, Probe, Target};
use crate::msg::{ClusterId, LeaseId, VmId};

/// Most service names the engine tracks per VM: a guest reporting ever new
/// names cannot grow the node's memory.
pub const MAX_SERVICES_PER_VM: usize = 64;

/// Largest exponent of the backoff's doubling: past it, repeats wait
/// `backoff_secs * 2^MAX_BACKOFF_DOUBLINGS` seconds.
pub const MAX_BACKOFF_DOUBLINGS: u32 = 16;

/// The wait, in milliseconds, after the last of `n` actions in the window
/// before the next one: 0 for `n == 0`, else `backoff_secs * 2^(n-1)`
/// seconds (exponent capped, saturating). Public so consoles and tests
/// show the same schedule the engine keeps.
pub fn backoff_ms(backoff_secs: u32, n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    let doublings = u32::try_from(n - 1).unwrap_or(u32::MAX).min(MAX_BACKOFF_DOUBLINGS);
    (u64::from(backoff_secs) * 1000).saturating_mul(1u64 << doublings)
}

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

/// How much the engine remembers, so the node and tests can check that its
/// memory stays within the bounds the module documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineSize {
    /// Policies with state.
    pub policies: usize,
    /// Rules with state, all policies.
    pub rules: usize,
    /// Most rules with state in one policy.
    pub max_rules_per_policy: usize,
    /// Keys (rule and target) with state.
    pub keys: usize,
    /// Most keys of one rule.
    pub max_keys_per_rule: usize,
    /// Most action times kept for one key.
    pub max_acts_per_key: usize,
    /// Most failure times kept for one key.
    pub max_failures_per_key: usize,
    /// Triggers waiting for their backoff.
    pub pending: usize,
    /// Most service names tracked for one VM.
    pub max_services_per_vm: usize,
    /// VMs with tracked service names.
    pub vms_with_services: usize,
}

/// A trigger waiting for its backoff.
#[derive(Debug)]
struct Pending {
    until_ms: u64,
    reason: String,
}

/// What the engine remembers about one key (owner, cluster, rule, target).
#[derive(Debug, Default)]
struct KeyState {
    /// Times of the actions taken within the window, oldest first (at most
    /// `max_repeats`).
    acts: VecDeque<u64>,
    /// `LimitReached` was said and the window has had no room since.
    limit_said: bool,
    /// A level condition's episode runs.
    holding: bool,
    /// Service failure times within the condition's window, oldest first
    /// (at most `count`).
    failures: VecDeque<u64>,
    /// A trigger waiting for its backoff.
    pending: Option<Pending>,
}

impl KeyState {
    fn is_empty(&self) -> bool {
        self.acts.is_empty() && self.failures.is_empty() && !self.holding && self.pending.is_none()
    }
}

/// One rule's keys, by target.
type RuleState = BTreeMap<Target, KeyState>;

/// One policy's state: the version it belongs to and its rules' keys.
#[derive(Debug)]
struct PolicyState {
    version: u32,
    /// The policy itself: a stored policy whose version did not move but
    /// whose rules differ (a restored or re-provisioned node numbering
    /// versions again) is a new policy too, not a licence to keep state
    /// made under other rules.
    policy: super::Policy,
    rules: BTreeMap<String, RuleState>,
}

/// The engine's memory between rounds.
#[derive(Debug, Default)]
pub struct Engine {
    /// The latest time seen.
    now_ms: u64,
    /// Per policy (cluster, owner).
    policies: BTreeMap<(ClusterId, Owner), PolicyState>,
    /// Service names tracked per VM (at most [`MAX_SERVICES_PER_VM`]).
    services: BTreeMap<VmId, BTreeSet<String>>,
}

/// A rule's repeat parameters, clamped to the validated ranges.
struct Params {
    window_ms: u64,
    max_repeats: usize,
    backoff_secs: u32,
}

impl Params {
    fn of(rule: &PolicyRule) -> Params {
        Params {
            window_ms: u64::from(clamp(rule.window_secs, WINDOW_SECS)) * 1000,
            max_repeats: clamp(rule.max_repeats, MAX_REPEATS) as usize,
            backoff_secs: clamp(rule.backoff_secs, BACKOFF_SECS),
        }
    }
}

fn clamp(v: u32, (lo, hi): (u32, u32)) -> u32 {
    v.clamp(lo, hi)
}

/// What a condition says about a key this round.
#[derive(Clone, Copy)]
enum Observation {
    /// A level condition: whether it holds, and whether the VM was
    /// (re)started (which ends an episode).
    Level { holds: bool, restart: bool },
    /// An edge condition: whether it triggered.
    Edge(bool),
}

impl Observation {
    /// Whether a key without state needs one.
    fn needs_state(self) -> bool {
        match self {
            Observation::Level { holds, .. } => holds,
            Observation::Edge(t) => t,
        }
    }
}

/// The rule a key belongs to, for decisions.
struct RuleRef<'a> {
    owner: Owner,
    cluster: ClusterId,
    version: u32,
    rule: &'a PolicyRule,
    params: Params,
}

impl RuleRef<'_> {
    fn decision(&self, target: &Target, verdict: Verdict, reason: String) -> Decision {
        Decision {
            owner: self.owner,
            cluster: self.cluster,
            rule: self.rule.name.clone(),
            policy_version: self.version,
            target: target.clone(),
            action: self.rule.action,
            notify: self.rule.notify,
            verdict,
            reason,
        }
    }
}

/// The VM a target is about.
fn target_vm(t: &Target) -> Option<VmId> {
    match t {
        Target::Node => None,
        Target::Vm(vm) | Target::Service(vm, _) => Some(*vm),
    }
}

/// The usable rules of a policy: the first [`MAX_RULES`], first of each
/// name, within the owner's powers.
fn usable_rules(owner: Owner, rules: &[PolicyRule]) -> Vec<&PolicyRule> {
    let mut out: Vec<&PolicyRule> = Vec::new();
    for r in rules.iter().take(MAX_RULES) {
        if powers_refusal(owner, r).is_none() && !out.iter().any(|o| o.name == r.name) {
            out.push(r);
        }
    }
    out
}

/// The key's state, created if `create` (else `None` when it has none).
fn key_state<'a>(
    rules: &'a mut BTreeMap<String, RuleState>,
    rule: &str,
    target: &Target,
    create: bool,
) -> Option<&'a mut KeyState> {
    if !rules.contains_key(rule) {
        if !create {
            return None;
        }
        rules.insert(String::from(rule), RuleState::new());
    }
    let keys = rules.get_mut(rule)?;
    if !keys.contains_key(target) {
        if !create {
            return None;
        }
        keys.insert(target.clone(), KeyState::default());
    }
    keys.get_mut(target)
}

/// One key's round: episode bookkeeping, a due waiting trigger, then this
/// round's trigger through the repeat limit and the backoff.
fn advance(
    ks: &mut KeyState,
    r: &RuleRef<'_>,
    target: &Target,
    now: u64,
    obs: Observation,
    why: &dyn Fn() -> String,
    out: &mut Vec<Decision>,
) {
    let p = &r.params;
    while ks.acts.front().is_some_and(|&t| now.saturating_sub(t) >= p.window_ms) {
        ks.acts.pop_front();
    }
    // A rule replaced with a lower max_repeats keeps only its newest action
    // times: what it allows, and what the engine keeps, is its own bound.
    while ks.acts.len() > p.max_repeats {
        ks.acts.pop_front();
    }
    if ks.acts.len() < p.max_repeats {
        ks.limit_said = false;
    }
    let trigger = match obs {
        Observation::Level { holds, restart } => {
            if restart || !holds {
                // The episode ended: a waiting trigger is no longer relevant.
                ks.holding = false;
                ks.pending = None;
            }
            let starts = holds && !ks.holding;
            ks.holding |= holds;
            starts
        }
        Observation::Edge(t) => t,
    };
    if ks.pending.as_ref().is_some_and(|pd| now >= pd.until_ms) {
        if let Some(pd) = ks.pending.take() {
            act(ks, p, now);
            out.push(r.decision(target, Verdict::Act, pd.reason));
        }
    }
    if !trigger || ks.pending.is_some() {
        return;
    }
    let n = ks.acts.len();
    if n >= p.max_repeats {
        if !ks.limit_said {
            ks.limit_said = true;
            let secs = p.window_ms / 1000;
            let reason = format!("{}; repeat limit {} in {secs} s reached", why(), p.max_repeats);
            out.push(r.decision(target, Verdict::LimitReached, reason));
        }
        return;
    }
    let until_ms = ks.acts.back().map_or(0, |last| last.saturating_add(backoff_ms(p.backoff_secs, n)));
    if n > 0 && now < until_ms {
        let reason = why();
        ks.pending = Some(Pending { until_ms, reason: reason.clone() });
        out.push(r.decision(target, Verdict::Backoff { until_ms }, reason));
    } else {
        act(ks, p, now);
        out.push(r.decision(target, Verdict::Act, why()));
    }
}

fn act(ks: &mut KeyState, p: &Params, now: u64) {
    ks.acts.push_back(now);
    while ks.acts.len() > p.max_repeats {
        ks.acts.pop_front();
    }
}

impl Engine {
    /// An engine with nothing remembered.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// One round: the decisions to carry out or report now.
    pub fn step(&mut self, policies: &Policies, facts: &Facts) -> Vec<Decision> {
        let now = facts.now_ms.max(self.now_ms);
        self.now_ms = now;
        let live: Vec<_> = policies.iter().take(MAX_POLICIES).collect();
        // Forget policies that changed or went away.
        self.policies.retain(|key, st| {
            let found = live.binary_search_by(|(k, _)| (*k).cmp(key)).ok().and_then(|i| live.get(i));
            found.is_some_and(|(_, p)| p.version == st.version && p.policy == st.policy)
        });
        // Each VM once, grouped by cluster in the facts' order.
        let mut known = BTreeSet::new();
        let mut by_cluster: BTreeMap<ClusterId, Vec<&VmFacts>> = BTreeMap::new();
        for v in &facts.vms {
            if known.insert(v.vm) {
                by_cluster.entry(v.cluster).or_default().push(v);
            }
        }
        let failed = self.admit_failures(facts);
        let mut out = Vec::new();
        for (&(cluster, owner), vp) in live {
            let st = self.policies.entry((cluster, owner)).or_insert_with(|| PolicyState {
                version: vp.version,
                policy: vp.policy.clone(),
                rules: BTreeMap::new(),
            });
            let rules = usable_rules(owner, &vp.policy.rules);
            st.rules.retain(|name, _| rules.iter().any(|r| r.name == *name));
            let vms = by_cluster.get(&cluster).map(Vec::as_slice).unwrap_or_default();
            for rule in rules {
                let r = RuleRef { owner, cluster, version: vp.version, rule, params: Params::of(rule) };
                eval_rule(&mut st.rules, &r, vms, facts, &failed, now, &mut out);
            }
        }
        self.prune();
        out
    }

    /// Forgets a VM that no longer exists.
    pub fn forget_vm(&mut self, vm: VmId) {
        for st in self.policies.values_mut() {
            for keys in st.rules.values_mut() {
                keys.retain(|t, _| target_vm(t) != Some(vm));
            }
            st.rules.retain(|_, keys| !keys.is_empty());
        }
        self.services.remove(&vm);
    }

    /// How much the engine remembers now.
    pub fn size(&self) -> EngineSize {
        let mut s = EngineSize { policies: self.policies.len(), ..EngineSize::default() };
        for st in self.policies.values() {
            s.rules += st.rules.len();
            s.max_rules_per_policy = s.max_rules_per_policy.max(st.rules.len());
            for keys in st.rules.values() {
                s.keys += keys.len();
                s.max_keys_per_rule = s.max_keys_per_rule.max(keys.len());
                for ks in keys.values() {
                    s.max_acts_per_key = s.max_acts_per_key.max(ks.acts.len());
                    s.max_failures_per_key = s.max_failures_per_key.max(ks.failures.len());
                    s.pending += usize::from(ks.pending.is_some());
                }
            }
        }
        s.max_services_per_vm = self.services.values().map(BTreeSet::len).max().unwrap_or(0);
        s.vms_with_services = self.services.len();
        s
    }

    /// This round's service failures per VM and name, of names that are
    /// valid and tracked (a VM's first [`MAX_SERVICES_PER_VM`] names).
    fn admit_failures<'f>(&mut self, facts: &'f Facts) -> BTreeMap<VmId, BTreeMap<&'f str, usize>> {
        let mut failed: BTreeMap<VmId, BTreeMap<&'f str, usize>> = BTreeMap::new();
        let mut done = BTreeSet::new();
        for v in &facts.vms {
            if !done.insert(v.vm) || v.service_failures.is_empty() {
                continue;
            }
            let tracked = self.services.entry(v.vm).or_default();
            let per_vm = failed.entry(v.vm).or_default();
            for name in &v.service_failures {
                if !valid_service_name(name) {
                    continue;
                }
                if !tracked.contains(name.as_str()) {
                    if tracked.len() >= MAX_SERVICES_PER_VM {
                        continue;
                    }
                    tracked.insert(name.clone());
                }
                let n = per_vm.entry(name.as_str()).or_default();
                *n = n.saturating_add(1);
            }
        }
        failed
    }

    /// Drops keys that hold nothing, rules without keys, and service names
    /// no key tracks.
    fn prune(&mut self) {
        for st in self.policies.values_mut() {
            for keys in st.rules.values_mut() {
                keys.retain(|_, ks| !ks.is_empty());
            }
            st.rules.retain(|_, keys| !keys.is_empty());
        }
        let mut present: BTreeSet<(VmId, &str)> = BTreeSet::new();
        for keys in self.policies.values().flat_map(|p| p.rules.values()) {
            for t in keys.keys() {
                if let Target::Service(vm, name) = t {
                    present.insert((*vm, name.as_str()));
                }
            }
        }
        for (vm, names) in self.services.iter_mut() {
            names.retain(|n| present.contains(&(*vm, n.as_str())));
        }
        self.services.retain(|_, names| !names.is_empty());
    }
}

/// Visits one key: advances it if it has state or needs one.
fn visit(
    rules: &mut BTreeMap<String, RuleState>,
    r: &RuleRef<'_>,
    target: &Target,
    now: u64,
    obs: Observation,
    why: &dyn Fn() -> String,
    out: &mut Vec<Decision>,
) {
    if let Some(ks) = key_state(rules, &r.rule.name, target, obs.needs_state()) {
        advance(ks, r, target, now, obs, why, out);
    }
}

/// One rule's round over the node or the VMs it watches.
fn eval_rule(
    rules: &mut BTreeMap<String, RuleState>,
    r: &RuleRef<'_>,
    vms: &[&VmFacts],
    facts: &Facts,
    failed: &BTreeMap<VmId, BTreeMap<&str, usize>>,
    now: u64,
    out: &mut Vec<Decision>,
) {
    let rule = r.rule;
    if let Condition::ProbeFailing { probe, count } = &rule.when {
        if r.owner != Owner::Landlord {
            return;
        }
        let failures = facts.probes.iter().find(|(p, _)| p == probe).map_or(0, |(_, f)| *f);
        let holds = failures >= clamp(*count, FAILURE_COUNT);
        let why = || format!("probe {} failed {failures} times in a row", probe.name());
        visit(rules, r, &Target::Node, now, Observation::Level { holds, restart: false }, &why, out);
        return;
    }
    for vm in vms {
        if matches!(r.owner, Owner::Tenant(l) if l != vm.lease) || rule.vm.is_some_and(|v| v != vm.vm) {
            continue;
        }
        match &rule.when {
            Condition::HeartbeatMissed { secs } => {
                let bound_ms = u64::from(clamp(*secs, HEARTBEAT_SECS)) * 1000;
                let age = vm.heartbeat_age_ms;
                let holds = vm.running && age.is_some_and(|a| a >= bound_ms);
                let why = || format!("no heartbeat for {} s (bound {} s)", age.unwrap_or(0) / 1000, bound_ms / 1000);
                let obs = Observation::Level { holds, restart: vm.started };
                visit(rules, r, &Target::Vm(vm.vm), now, obs, &why, out);
            }
            Condition::VmStoppedAbnormally => {
                let why = || String::from("VM stopped abnormally");
                visit(rules, r, &Target::Vm(vm.vm), now, Observation::Edge(vm.stopped_abnormally), &why, out);
            }
            Condition::ServiceFailing { service, count, window_secs } => {
                let spec = ServiceSpec {
                    pattern: service,
                    count: clamp(*count, FAILURE_COUNT) as usize,
                    window_ms: u64::from(clamp(*window_secs, WINDOW_SECS)) * 1000,
                };
                service_failing(rules, r, vm.vm, &spec, failed.get(&vm.vm), now, out);
            }
            Condition::ProbeFailing { .. } => {}
        }
    }
}

/// A service-failing condition, clamped.
struct ServiceSpec<'a> {
    pattern: &'a str,
    count: usize,
    window_ms: u64,
}

/// A service-failing rule's round on one VM: every service it has keys
/// for, and every service that failed this round and matches.
fn service_failing(
    rules: &mut BTreeMap<String, RuleState>,
    r: &RuleRef<'_>,
    vm: VmId,
    spec: &ServiceSpec<'_>,
    failed: Option<&BTreeMap<&str, usize>>,
    now: u64,
    out: &mut Vec<Decision>,
) {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(keys) = rules.get(r.rule.name.as_str()) {
        let mine = keys.range(Target::Service(vm, String::new())..).map(|(t, _)| t);
        for t in mine {
            match t {
                Target::Service(v, name) if *v == vm => names.insert(name.clone(), 0),
                _ => break,
            };
        }
    }
    for (&name, &k) in failed.into_iter().flatten() {
        if spec.pattern == "*" || spec.pattern == name {
            names.insert(String::from(name), k);
        }
    }
    for (name, k) in names {
        let target = Target::Service(vm, name);
        let Some(ks) = key_state(rules, &r.rule.name, &target, k > 0) else { continue };
        while ks.failures.front().is_some_and(|&t| now.saturating_sub(t) >= spec.window_ms) {
            ks.failures.pop_front();
        }
        for _ in 0..k.min(spec.count) {
            ks.failures.push_back(now);
        }
        while ks.failures.len() > spec.count {
            ks.failures.pop_front();
        }
        let trigger = k > 0 && ks.failures.len() >= spec.count;
        if trigger {
            ks.failures.clear();
        }
        let Target::Service(_, name) = &target else { continue };
        let why = || format!("service {name} failed {} times in {} s", spec.count, spec.window_ms / 1000);
        advance(ks, r, &target, now, Observation::Edge(trigger), &why, out);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::monitor::{Policy, VersionedPolicy};
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    const C: ClusterId = ClusterId(1);
    const T1: Owner = Owner::Tenant(LeaseId(1));

    fn vmf(vm: u32, lease: u32, cluster: u32) -> VmFacts {
        VmFacts {
            vm: VmId(vm),
            lease: LeaseId(lease),
            cluster: ClusterId(cluster),
            running: true,
            heartbeat_age_ms: None,
            service_failures: Vec::new(),
            stopped_abnormally: false,
            started: false,
        }
    }

    fn rule(name: &str, when: Condition, action: PolicyAction) -> PolicyRule {
        PolicyRule {
            name: name.to_string(),
            vm: None,
            when,
            action,
            notify: false,
            backoff_secs: 0,
            max_repeats: 100,
            window_secs: 3600,
        }
    }

    fn policies(entries: Vec<((ClusterId, Owner), u32, Vec<PolicyRule>)>) -> Policies {
        entries
            .into_iter()
            .map(|(k, version, rules)| (k, VersionedPolicy { version, policy: Policy { rules } }))
            .collect()
    }

    fn one(owner: Owner, r: PolicyRule) -> Policies {
        policies(vec![((C, owner), 1, vec![r])])
    }

    fn at(now_ms: u64, vms: Vec<VmFacts>) -> Facts {
        Facts { now_ms, vms, probes: Vec::new() }
    }

    fn verdicts(d: &[Decision]) -> Vec<Verdict> {
        d.iter().map(|d| d.verdict.clone()).collect()
    }

    fn hung(vm: u32, age_ms: u64) -> VmFacts {
        VmFacts { heartbeat_age_ms: Some(age_ms), ..vmf(vm, 1, 1) }
    }

    #[test]
    fn heartbeat_missed_fires_once_per_episode() {
        let p = one(T1, rule("hb", Condition::HeartbeatMissed { secs: 10 }, PolicyAction::RestartVm));
        let mut e = Engine::new();
        assert!(e.step(&p, &at(0, vec![hung(5, 9_999)])).is_empty());
        let d = e.step(&p, &at(1000, vec![hung(5, 12_345)]));
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0],
            Decision {
                owner: T1,
                cluster: C,
                rule: "hb".into(),
                policy_version: 1,
                target: Target::Vm(VmId(5)),
                action: PolicyAction::RestartVm,
                notify: false,
                verdict: Verdict::Act,
                reason: "no heartbeat for 12 s (bound 10 s)".into(),
            }
        );
        // Same episode: quiet.
        assert!(e.step(&p, &at(2000, vec![hung(5, 13_345)])).is_empty());
        // A heartbeat ends it; the next hang is a new episode.
        assert!(e.step(&p, &at(3000, vec![hung(5, 10)])).is_empty());
        assert_eq!(verdicts(&e.step(&p, &at(14_000, vec![hung(5, 11_000)]))), [Verdict::Act]);
        // A restart ends the episode even if the age still holds.
        let restarted = VmFacts { started: true, ..hung(5, 11_000) };
        assert_eq!(verdicts(&e.step(&p, &at(15_000, vec![restarted]))), [Verdict::Act]);
        // Stopped or agentless VMs are never hung.
        let stopped = VmFacts { running: false, ..hung(6, 60_000) };
        let agentless = VmFacts { heartbeat_age_ms: None, ..vmf(7, 1, 1) };
        assert!(e.step(&p, &at(16_000, vec![stopped, agentless])).is_empty());
    }

    #[test]
    fn probe_failing_targets_the_node_for_landlord_policies_only() {
        let r = rule("disk", Condition::ProbeFailing { probe: Probe::Disk, count: 3 }, PolicyAction::RebootNode);
        let p = one(Owner::Landlord, r.clone());
        let mut e = Engine::new();
        let f = |now, n| Facts { now_ms: now, vms: Vec::new(), probes: vec![(Probe::Tpm, 9), (Probe::Disk, n)] };
        assert!(e.step(&p, &f(0, 2)).is_empty());
        let d = e.step(&p, &f(1, 3));
        assert_eq!(d.len(), 1);
        assert_eq!(
            (&d[0].target, d[0].action, &d[0].reason),
            (&Target::Node, PolicyAction::RebootNode, &"probe disk failed 3 times in a row".to_string())
        );
        assert!(e.step(&p, &f(2, 4)).is_empty());
        assert!(e.step(&p, &f(3, 0)).is_empty());
        assert_eq!(verdicts(&e.step(&p, &f(4, 5))), [Verdict::Act]);
        // A missing probe does not hold.
        assert!(e.step(&p, &Facts { now_ms: 5, ..Facts::default() }).is_empty());
        // An (unvalidated) tenant policy with a probe rule never acts.
        let mut e = Engine::new();
        assert!(e.step(&one(T1, r), &f(0, 50)).is_empty());
    }

    fn failing(vm: u32, names: &[&str]) -> VmFacts {
        VmFacts { service_failures: names.iter().map(|n| n.to_string()).collect(), ..vmf(vm, 1, 1) }
    }

    #[test]
    fn service_failing_counts_within_the_window() {
        let when = Condition::ServiceFailing { service: "web".into(), count: 2, window_secs: 60 };
        let p = one(T1, rule("web", when, PolicyAction::RestartService));
        let mut e = Engine::new();
        assert!(e.step(&p, &at(0, vec![failing(5, &["web"])])).is_empty());
        // The first failure left the window.
        assert!(e.step(&p, &at(70_000, vec![failing(5, &["web", "db"])])).is_empty());
        let d = e.step(&p, &at(80_000, vec![failing(5, &["web"])]));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].target, Target::Service(VmId(5), "web".into()));
        assert_eq!(d[0].reason, "service web failed 2 times in 60 s");
        // Counted failures are cleared: one more is not enough.
        assert!(e.step(&p, &at(81_000, vec![failing(5, &["web"])])).is_empty());
        // Two in one round are.
        assert_eq!(verdicts(&e.step(&p, &at(82_000, vec![failing(5, &["web", "web"])]))), [Verdict::Act]);
        // "*" matches every service, each on its own key.
        let any = Condition::ServiceFailing { service: "*".into(), count: 1, window_secs: 60 };
        let p = one(T1, rule("any", any, PolicyAction::Notify));
        let mut e = Engine::new();
        let d = e.step(&p, &at(0, vec![failing(5, &["web", "db", "bad name"])]));
        let targets: Vec<_> = d.iter().map(|d| d.target.clone()).collect();
        assert_eq!(targets, [Target::Service(VmId(5), "db".into()), Target::Service(VmId(5), "web".into())]);
    }

    #[test]
    fn tracked_service_names_per_vm_are_capped() {
        let any = Condition::ServiceFailing { service: "*".into(), count: 2, window_secs: 600 };
        let p = one(T1, rule("any", any, PolicyAction::Notify));
        let mut e = Engine::new();
        let names: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(e.step(&p, &at(0, vec![failing(5, &refs)])).is_empty());
        let s = e.size();
        assert_eq!((s.max_services_per_vm, s.keys), (MAX_SERVICES_PER_VM, MAX_SERVICES_PER_VM));
        // Names past the cap are ignored; tracked ones still count.
        let d = e.step(&p, &at(1, vec![failing(5, &["s0", "s99"])]));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].target, Target::Service(VmId(5), "s0".into()));
        // Once a tracked name is forgotten (its failures left the window), room frees up.
        assert!(e.step(&p, &at(700_000, vec![failing(5, &["s99"])])).is_empty());
        assert_eq!(e.size().max_services_per_vm, 1);
    }

    #[test]
    fn stopped_abnormally_triggers_every_round_up_to_the_limit() {
        let r = PolicyRule {
            max_repeats: 2,
            window_secs: 300,
            ..rule("crash", Condition::VmStoppedAbnormally, PolicyAction::RestartVm)
        };
        let p = one(T1, r);
        let crashed = || vec![VmFacts { stopped_abnormally: true, running: false, ..vmf(5, 1, 1) }];
        let mut e = Engine::new();
        assert_eq!(verdicts(&e.step(&p, &at(0, crashed()))), [Verdict::Act]);
        assert!(e.step(&p, &at(1000, vec![vmf(5, 1, 1)])).is_empty());
        assert_eq!(verdicts(&e.step(&p, &at(2000, crashed()))), [Verdict::Act]);
        let d = e.step(&p, &at(3000, crashed()));
        assert_eq!(verdicts(&d), [Verdict::LimitReached]);
        assert_eq!(d[0].reason, "VM stopped abnormally; repeat limit 2 in 300 s reached");
        // Said once per window.
        assert!(e.step(&p, &at(4000, crashed())).is_empty());
        // The first action leaves the window: room again.
        assert_eq!(verdicts(&e.step(&p, &at(300_000, crashed()))), [Verdict::Act]);
        assert_eq!(verdicts(&e.step(&p, &at(300_001, crashed()))), [Verdict::LimitReached]);
    }

    #[test]
    fn backoff_doubles_and_waiting_triggers_act_when_due() {
        let r = PolicyRule {
            backoff_secs: 10,
            max_repeats: 5,
            window_secs: 1000,
            ..rule("crash", Condition::VmStoppedAbnormally, PolicyAction::RestartVm)
        };
        let p = one(T1, r);
        let crash = |now| at(now, vec![VmFacts { stopped_abnormally: true, ..vmf(5, 1, 1) }]);
        let calm = |now| at(now, vec![vmf(5, 1, 1)]);
        let mut e = Engine::new();
        assert_eq!(verdicts(&e.step(&p, &crash(0))), [Verdict::Act]);
        assert_eq!(verdicts(&e.step(&p, &crash(1000))), [Verdict::Backoff { until_ms: 10_000 }]);
        // Joins the waiting trigger.
        assert!(e.step(&p, &crash(5000)).is_empty());
        assert!(e.step(&p, &calm(9999)).is_empty());
        let d = e.step(&p, &calm(10_000));
        assert_eq!(verdicts(&d), [Verdict::Act]);
        assert_eq!(d[0].reason, "VM stopped abnormally");
        // Second repeat: 2 actions in the window, 20 s after the last.
        assert_eq!(verdicts(&e.step(&p, &crash(11_000))), [Verdict::Backoff { until_ms: 30_000 }]);
        assert_eq!(verdicts(&e.step(&p, &calm(30_000))), [Verdict::Act]);
        assert_eq!(verdicts(&e.step(&p, &crash(30_001))), [Verdict::Backoff { until_ms: 70_000 }]);
        assert_eq!(backoff_ms(10, 4), 80_000);
        assert_eq!(backoff_ms(3600, 100), 3_600_000 << MAX_BACKOFF_DOUBLINGS);
        assert_eq!(backoff_ms(7, 0), 0);
    }

    #[test]
    fn a_waiting_level_trigger_is_dropped_when_its_episode_ends() {
        let r = PolicyRule {
            backoff_secs: 60,
            ..rule("hb", Condition::HeartbeatMissed { secs: 10 }, PolicyAction::RestartVm)
        };
        let p = one(T1, r);
        let mut e = Engine::new();
        assert_eq!(verdicts(&e.step(&p, &at(0, vec![hung(5, 10_000)]))), [Verdict::Act]);
        let restarted = VmFacts { started: true, ..hung(5, 10_000) };
        assert_eq!(verdicts(&e.step(&p, &at(1000, vec![restarted]))), [Verdict::Backoff { until_ms: 60_000 }]);
        // It recovers before the backoff ends: nothing to do then.
        assert!(e.step(&p, &at(2000, vec![hung(5, 0)])).is_empty());
        assert!(e.step(&p, &at(60_000, vec![hung(5, 0)])).is_empty());
        // The backoff is over: acts at once; the next repeat waits twice as
        // long, and acts when due if the episode still runs.
        let restarted = || VmFacts { started: true, ..hung(5, 10_000) };
        assert_eq!(verdicts(&e.step(&p, &at(61_000, vec![restarted()]))), [Verdict::Act]);
        assert_eq!(verdicts(&e.step(&p, &at(62_000, vec![restarted()]))), [Verdict::Backoff { until_ms: 181_000 }]);
        assert!(e.step(&p, &at(180_999, vec![hung(5, 70_000)])).is_empty());
        assert_eq!(verdicts(&e.step(&p, &at(181_000, vec![hung(5, 71_000)]))), [Verdict::Act]);
    }

    #[test]
    fn policies_apply_to_their_owners_vms_only() {
        let crash = || Condition::VmStoppedAbnormally;
        let p = policies(vec![
            ((C, Owner::Landlord), 3, vec![PolicyRule { notify: true, ..rule("l", crash(), PolicyAction::Notify) }]),
            ((C, T1), 7, vec![rule("t", crash(), PolicyAction::RestartVm)]),
            ((ClusterId(2), Owner::Tenant(LeaseId(2))), 1, vec![rule("x", crash(), PolicyAction::RestartVm)]),
        ]);
        let vms = vec![
            VmFacts { stopped_abnormally: true, ..vmf(1, 1, 1) },
            VmFacts { stopped_abnormally: true, ..vmf(2, 2, 1) },
        ];
        let d = Engine::new().step(&p, &at(0, vms));
        let got: Vec<_> =
            d.iter().map(|d| (d.owner, d.rule.as_str(), d.policy_version, d.target.clone(), d.notify)).collect();
        assert_eq!(
            got,
            [
                (Owner::Landlord, "l", 3, Target::Vm(VmId(1)), true),
                (Owner::Landlord, "l", 3, Target::Vm(VmId(2)), true),
                (T1, "t", 7, Target::Vm(VmId(1)), false),
            ]
        );
        // A rule naming a VM watches that VM only.
        let p = one(Owner::Landlord, PolicyRule { vm: Some(VmId(2)), ..rule("l", crash(), PolicyAction::RestartVm) });
        let vms = vec![
            VmFacts { stopped_abnormally: true, ..vmf(1, 1, 1) },
            VmFacts { stopped_abnormally: true, ..vmf(2, 2, 1) },
        ];
        let d = Engine::new().step(&p, &at(0, vms));
        assert_eq!(d.iter().map(|d| d.target.clone()).collect::<Vec<_>>(), [Target::Vm(VmId(2))]);
    }

    #[test]
    fn new_policy_versions_vms_and_time_start_afresh() {
        let r =
            PolicyRule { backoff_secs: 100, ..rule("crash", Condition::VmStoppedAbnormally, PolicyAction::RestartVm) };
        let crash = |now| at(now, vec![VmFacts { stopped_abnormally: true, ..vmf(5, 1, 1) }]);
        let mut e = Engine::new();
        let v1 = one(T1, r.clone());
        assert_eq!(verdicts(&e.step(&v1, &crash(0))), [Verdict::Act]);
        assert!(matches!(verdicts(&e.step(&v1, &crash(1))).as_slice(), [Verdict::Backoff { .. }]));
        // A new version: no memory of the old one's actions or waiting triggers.
        let v2 = policies(vec![((C, T1), 2, vec![r.clone()])]);
        assert_eq!(verdicts(&e.step(&v2, &crash(2))), [Verdict::Act]);
        // Removing the policy forgets it.
        assert!(e.step(&Policies::new(), &crash(3)).is_empty());
        assert_eq!(e.size(), EngineSize::default());
        assert_eq!(verdicts(&e.step(&v2, &crash(4))), [Verdict::Act]);
        // A round without the VM keeps its keys (its backoff still runs);
        // forgetting the VM drops them.
        assert!(e.step(&v2, &at(5, Vec::new())).is_empty());
        assert_eq!(e.size().keys, 1);
        assert!(matches!(verdicts(&e.step(&v2, &crash(6))).as_slice(), [Verdict::Backoff { .. }]));
        e.forget_vm(VmId(5));
        assert_eq!(e.size().keys, 0);
        assert_eq!(verdicts(&e.step(&v2, &crash(7))), [Verdict::Act]);
        // Time going back is taken as the latest time: still within the backoff.
        assert_eq!(verdicts(&e.step(&v2, &crash(100_007))), [Verdict::Act]);
        assert_eq!(verdicts(&e.step(&v2, &crash(0))), [Verdict::Backoff { until_ms: 300_007 }]);
    }

    // ---- properties ----

    /// VM `i` (0..6) belongs to lease `i % 3 + 1`, in cluster 1 for leases
    /// 1 and 2 and cluster 2 for lease 3.
    fn lease_of(vm: u32) -> u32 {
        vm % 3 + 1
    }

    fn cluster_of(vm: u32) -> u32 {
        if lease_of(vm) == 3 {
            2
        } else {
            1
        }
    }

    const SERVICES: [&str; 3] = ["web", "db", "x"];

    fn any_condition() -> impl Strategy<Value = Condition> {
        prop_oneof![
            (1u32..20).prop_map(|secs| Condition::HeartbeatMissed { secs }),
            (0usize..5, 1u32..4).prop_map(|(p, count)| Condition::ProbeFailing { probe: Probe::ALL[p], count }),
            (0usize..4, 1u32..4, 1u32..30).prop_map(|(s, count, window_secs)| Condition::ServiceFailing {
                service: SERVICES.get(s).map_or("*", |s| s).to_string(),
                count,
                window_secs
            }),
            Just(Condition::VmStoppedAbnormally),
        ]
    }

    fn any_action() -> impl Strategy<Value = PolicyAction> {
        prop_oneof![
            Just(PolicyAction::Notify),
            Just(PolicyAction::RestartService),
            Just(PolicyAction::RestartVm),
            Just(PolicyAction::ReloadImage),
            Just(PolicyAction::RebootNode),
        ]
    }

    /// Rules within the validated ranges, but not necessarily within their
    /// owner's powers (the engine must hold those on its own).
    fn any_rules() -> impl Strategy<Value = Vec<PolicyRule>> {
        prop::collection::vec(
            (prop::option::of(0u32..6), any_condition(), any_action(), any::<bool>(), 0u32..5, 1u32..4, 1u32..30),
            0..4,
        )
        .prop_map(|rs| {
            rs.into_iter()
                .enumerate()
                .map(|(i, (vm, when, action, notify, backoff_secs, max_repeats, window_secs))| PolicyRule {
                    name: format!("r{i}"),
                    vm: vm.map(VmId),
                    when,
                    action,
                    notify,
                    backoff_secs,
                    max_repeats,
                    window_secs,
                })
                .collect()
        })
    }

    fn any_policies() -> impl Strategy<Value = Policies> {
        prop::collection::vec((1u32..3, 0u32..4, 1u32..3, any_rules()), 0..5).prop_map(|ps| {
            ps.into_iter()
                .map(|(c, o, version, rules)| {
                    let owner = if o == 0 { Owner::Landlord } else { Owner::Tenant(LeaseId(o)) };
                    ((ClusterId(c), owner), VersionedPolicy { version, policy: Policy { rules } })
                })
                .collect()
        })
    }

    fn any_vm_facts() -> impl Strategy<Value = VmFacts> {
        (
            0u32..6,
            any::<bool>(),
            prop::option::of(0u64..25_000),
            prop::collection::vec(0usize..3, 0..4),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(vm, running, age, fails, stopped, started)| VmFacts {
                vm: VmId(vm),
                lease: LeaseId(lease_of(vm)),
                cluster: ClusterId(cluster_of(vm)),
                running,
                heartbeat_age_ms: age,
                service_failures: fails.into_iter().map(|i| SERVICES[i].to_string()).collect(),
                stopped_abnormally: stopped,
                started,
            })
    }

    /// A round: time step (sometimes backwards), VMs, probe failures.
    type Round = (i64, Vec<VmFacts>, Vec<(Probe, u32)>);

    fn any_rounds() -> impl Strategy<Value = Vec<Round>> {
        prop::collection::vec(
            (
                -500i64..4000,
                prop::collection::vec(any_vm_facts(), 0..6),
                prop::collection::vec((0usize..5, 0u32..5).prop_map(|(p, n)| (Probe::ALL[p], n)), 0..5),
            ),
            1..60,
        )
    }

    type Key = (Owner, ClusterId, String, Target);

    /// Runs the rounds; returns every decision with the time it was made.
    fn run(e: &mut Engine, p: &Policies, rounds: &[Round]) -> Vec<(u64, Decision)> {
        let mut now: u64 = 0;
        let mut out = Vec::new();
        for (dt, vms, probes) in rounds {
            let asked = now.saturating_add_signed(*dt);
            now = now.max(asked);
            let facts = Facts { now_ms: asked, vms: vms.clone(), probes: probes.clone() };
            out.extend(e.step(p, &facts).into_iter().map(|d| (now, d)));
        }
        out
    }

    fn rule_of<'a>(p: &'a Policies, d: &Decision) -> &'a PolicyRule {
        p[&(d.cluster, d.owner)].policy.rules.iter().find(|r| r.name == d.rule).unwrap()
    }

    fn acts_by_key(decisions: &[(u64, Decision)]) -> BTreeMap<Key, Vec<u64>> {
        let mut acts: BTreeMap<Key, Vec<u64>> = BTreeMap::new();
        for (t, d) in decisions {
            if d.verdict == Verdict::Act {
                acts.entry((d.owner, d.cluster, d.rule.clone(), d.target.clone())).or_default().push(*t);
            }
        }
        acts
    }

    proptest! {
        /// (a) At most max_repeats actions per key in any window, and (b)
        /// consecutive actions at least the backoff apart, n being the
        /// actions within the window before the later one.
        #[test]
        fn repeats_are_limited_and_backed_off(p in any_policies(), rounds in any_rounds()) {
            let decisions = run(&mut Engine::new(), &p, &rounds);
            for (key, times) in acts_by_key(&decisions) {
                let d = decisions.iter().find(|(_, d)| (d.owner, d.cluster, &d.rule, &d.target) == (key.0, key.1, &key.2, &key.3)).unwrap();
                let r = rule_of(&p, &d.1);
                let w = u64::from(r.window_secs) * 1000;
                for (i, &t) in times.iter().enumerate() {
                    let before: Vec<u64> = times[..i].iter().copied().filter(|&s| t - s < w).collect();
                    prop_assert!(before.len() < r.max_repeats as usize, "{key:?}: {times:?}");
                    if let Some(&last) = times[..i].last() {
                        prop_assert!(t - last >= backoff_ms(r.backoff_secs, before.len()), "{key:?}: {times:?} backoff {}", r.backoff_secs);
                    }
                }
            }
        }

        /// (c) A tenant's policy only ever targets its own lease's VMs, and
        /// nobody acts beyond their powers, whatever the policy says.
        #[test]
        fn owners_stay_within_their_powers(p in any_policies(), rounds in any_rounds()) {
            for (_, d) in run(&mut Engine::new(), &p, &rounds) {
                match d.owner {
                    Owner::Tenant(l) => {
                        let vm = target_vm(&d.target);
                        prop_assert!(vm.is_some_and(|v| lease_of(v.0) == l.0), "{d:?}");
                        prop_assert!(d.action != PolicyAction::RebootNode);
                    }
                    Owner::Landlord => {
                        prop_assert!(!matches!(d.action, PolicyAction::RestartService | PolicyAction::ReloadImage), "{d:?}");
                        prop_assert!(!matches!(d.target, Target::Service(..)));
                    }
                }
                if let Some(v) = target_vm(&d.target) {
                    prop_assert_eq!(ClusterId(cluster_of(v.0)), d.cluster);
                }
                prop_assert!(powers_refusal(d.owner, rule_of(&p, &d)).is_none());
            }
        }

        /// (d) No policies, no decisions.
        #[test]
        fn no_policies_no_decisions(rounds in any_rounds()) {
            prop_assert!(run(&mut Engine::new(), &Policies::new(), &rounds).is_empty());
        }

        /// (e) The engine's memory stays within the documented bounds, also
        /// when policies change between rounds; and it is deterministic.
        #[test]
        fn memory_is_bounded(ps in prop::collection::vec(any_policies(), 1..4), rounds in any_rounds()) {
            let mut e = Engine::new();
            let mut again = Engine::new();
            let chunk = rounds.len().div_ceil(ps.len()).max(1);
            for (p, rs) in ps.iter().zip(rounds.chunks(chunk)) {
                let d1 = run(&mut e, p, rs);
                let d2 = run(&mut again, p, rs);
                prop_assert_eq!(d1, d2);
                let s = e.size();
                let rules: Vec<&PolicyRule> = p.values().flat_map(|v| v.policy.rules.iter()).collect();
                prop_assert!(s.policies <= p.len().min(MAX_POLICIES));
                prop_assert!(s.max_rules_per_policy <= MAX_RULES);
                prop_assert!(s.rules <= rules.len());
                // Per rule: the node, or a key per VM (6), or per VM and service (3 names).
                prop_assert!(s.max_keys_per_rule <= 6 * SERVICES.len());
                prop_assert!(s.max_acts_per_key <= rules.iter().map(|r| r.max_repeats as usize).max().unwrap_or(0));
                prop_assert!(s.max_failures_per_key <= 3);
                prop_assert!(s.max_services_per_vm <= SERVICES.len().min(MAX_SERVICES_PER_VM));
                prop_assert!(s.pending <= s.keys);
                prop_assert!(s.vms_with_services <= 6);
            }
        }
    }
}
