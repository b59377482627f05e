//! The controller: one `tick` is one round of heartbeats, detection,
//! healing, rejoin handling, replication and intents; node lifecycle and VM
//! creation are operations on it. Every decision is saved (as state and
//! intents) before it is acted on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::driver::{DriverError, NodeDriver, NodeReport};
use crate::filters;
use crate::health::{ConfigError, Detector, HealthConfig, Verdict};
use crate::intent::{steps, Intent, IntentKind, Step};
use crate::locks::Acquire;
use crate::model::{
    Capacity, FacilityState, NodeAddr, NodeName, NodeRecord, NodeState, VmPlacementSpec, VmRecord, VmState,
};
use crate::placement::{self, PlacementError};
use crate::replication::{Lag, Pair, Replicator, RoundOutcome};
use crate::store::{Rev, Store, StoreError};

/// The controller's knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Detection timing (validated at construction).
    pub health: HealthConfig,
    /// Blocks per replica pull.
    pub replica_blocks: u32,
    /// Pulls per protected VM per tick.
    pub replica_pulls_per_round: u32,
    /// Pulls while a moving VM still runs, before it is stopped.
    pub catch_up_pulls: u32,
    /// Most pulls for the final copy of a stopped VM.
    pub final_drain_pulls: u32,
}

impl Default for ControllerConfig {
    /// Default health timing; 256-block pulls, 4 per tick, 64 to catch up,
    /// up to 4096 for a final drain.
    fn default() -> Self {
        ControllerConfig {
            health: HealthConfig::default(),
            replica_blocks: 256,
            replica_pulls_per_round: 4,
            catch_up_pulls: 64,
            final_drain_pulls: 4096,
        }
    }
}

/// Why an operation or a round failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// Bad timing configuration.
    Config(ConfigError),
    /// The store failed or another controller wrote (state was reloaded).
    Store(StoreError),
    /// No node can take it.
    Placement(PlacementError),
    /// A node call failed.
    Node {
        /// Which node.
        node: NodeName,
        /// What was being done.
        what: String,
        /// The driver's error.
        err: DriverError,
    },
    /// The request does not make sense (unknown name, wrong state).
    Invalid(String),
    /// The step limit was reached (tests; staged hand-over).
    Halted,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Config(e) => write!(f, "configuration: {e}"),
            ControlError::Store(e) => write!(f, "{e}"),
            ControlError::Placement(e) => write!(f, "placement: {e}"),
            ControlError::Node { node, what, err } => write!(f, "node {node}: {what}: {err}"),
            ControlError::Invalid(s) => f.write_str(s),
            ControlError::Halted => f.write_str("controller halted (step limit reached)"),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        ControlError::Store(e)
    }
}

impl From<PlacementError> for ControlError {
    fn from(e: PlacementError) -> Self {
        ControlError::Placement(e)
    }
}

/// One line of the controller's event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Time since the controller started.
    pub at: Duration,
    /// What happened.
    pub text: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>9.3}s] {}", self.at.as_secs_f64(), self.text)
    }
}

/// What one tick did, in numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickSummary {
    /// Nodes that answered the heartbeat.
    pub answered: usize,
    /// Nodes declared dead this tick.
    pub declared_dead: Vec<NodeName>,
    /// Nodes that came back this tick.
    pub rejoined: Vec<NodeName>,
    /// Intents finished this tick.
    pub intents_done: usize,
    /// Intents that failed a step (retried next tick).
    pub intents_failed: usize,
    /// Replication rounds with a push or pull failure.
    pub replication_failures: usize,
}

/// Unix time in milliseconds (0 before 1970): what the store records.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The facility controller over a node driver and a store.
pub struct Controller<D: NodeDriver, S: Store> {
    pub(crate) driver: D,
    pub(crate) store: S,
    pub(crate) cfg: ControllerConfig,
    pub(crate) state: FacilityState,
    pub(crate) rev: Rev,
    pub(crate) detectors: BTreeMap<NodeName, Detector>,
    pub(crate) suspects: BTreeSet<NodeName>,
    pub(crate) dead_at: BTreeMap<NodeName, Instant>,
    pub(crate) answered: BTreeSet<NodeName>,
    pub(crate) unprotected: BTreeSet<String>,
    pub(crate) repl: Replicator,
    pub(crate) events: Vec<Event>,
    pub(crate) origin: Instant,
    pub(crate) step_limit: Option<u64>,
    pub(crate) steps_done: u64,
    pub(crate) heal_step_limit: Option<u64>,
    pub(crate) heal_steps_done: u64,
    /// Run steps this controller started (a Running step it did not start
    /// was interrupted by a failover).
    pub(crate) started_here: BTreeSet<(u64, usize)>,
}

impl<D: NodeDriver, S: Store> Controller<D, S> {
    /// Validate `cfg` and load the facility from `store`.
    pub fn new(driver: D, store: S, cfg: ControllerConfig) -> Result<Self, ControlError> {
        cfg.health.validate().map_err(ControlError::Config)?;
        let (state, rev) = store.load()?;
        let mut c = Controller {
            driver,
            store,
            cfg,
            state,
            rev,
            detectors: BTreeMap::new(),
            suspects: BTreeSet::new(),
            dead_at: BTreeMap::new(),
            answered: BTreeSet::new(),
            unprotected: BTreeSet::new(),
            repl: Replicator::new(cfg.replica_blocks, cfg.replica_pulls_per_round),
            events: Vec::new(),
            origin: Instant::now(),
            step_limit: None,
            steps_done: 0,
            heal_step_limit: None,
            heal_steps_done: 0,
            started_here: BTreeSet::new(),
        };
        let n = c.state.intents.len();
        c.log(
            Instant::now(),
            format!(
                "controller loaded revision {}: {} nodes, {} VMs, {} unfinished intents",
                c.rev.0,
                c.state.nodes.len(),
                c.state.vms.len(),
                n
            ),
        );
        Ok(c)
    }

    /// Reload the state (a new leader does this before acting); replication
    /// restarts with full resyncs since batches may have been lost.
    pub fn reload(&mut self) -> Result<(), ControlError> {
        let (st, rev) = self.store.load()?;
        self.state = st;
        self.rev = rev;
        self.repl = Replicator::new(self.cfg.replica_blocks, self.cfg.replica_pulls_per_round);
        self.detectors.clear();
        Ok(())
    }

    /// Picks up what others wrote to the store since this controller last
    /// read or wrote it (an operator's `node add` or `vm create` while it
    /// serves), keeping detectors and replication where they are. Whether
    /// anything changed.
    pub fn refresh(&mut self) -> Result<bool, ControlError> {
        let (st, rev) = self.store.load()?;
        if rev == self.rev {
            return Ok(false);
        }
        self.state = st;
        self.rev = rev;
        Ok(true)
    }

    /// The facility as last saved or loaded.
    pub fn state(&self) -> &FacilityState {
        &self.state
    }

    /// The event log, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The node driver (the CLI and tests look at it).
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Replication lag by VM.
    pub fn lag(&self) -> BTreeMap<String, Lag> {
        self.repl.lag()
    }

    /// Stop acting after `n` more intent steps (None: no limit): for tests of
    /// a controller dying mid-way, and for handing over at a step boundary.
    pub fn set_step_limit(&mut self, n: Option<u64>) {
        self.step_limit = n.map(|n| self.steps_done.saturating_add(n));
    }

    /// Stop acting after `n` more steps of healing (None: no limit): for
    /// tests of a controller dying in the middle of healing a dead node.
    pub fn set_heal_step_limit(&mut self, n: Option<u64>) {
        self.heal_step_limit = n.map(|n| self.heal_steps_done.saturating_add(n));
    }

    pub(crate) fn log(&mut self, now: Instant, text: String) {
        let at = now.saturating_duration_since(self.origin);
        self.events.push(Event { at, text });
    }

    pub(crate) fn save(&mut self) -> Result<(), ControlError> {
        match self.store.save(&self.state, self.rev) {
            Ok(r) => {
                self.rev = r;
                Ok(())
            }
            Err(e) => {
                if matches!(e, StoreError::Conflict { .. }) {
                    // Someone else wrote: their state wins, redo from it.
                    self.reload()?;
                }
                Err(e.into())
            }
        }
    }

    pub(crate) fn addr(&self, n: &str) -> Result<NodeAddr, ControlError> {
        self.state.addr(n).cloned().ok_or_else(|| ControlError::Invalid(format!("unknown node {n}")))
    }

    pub(crate) fn node_err(node: &NodeAddr, what: &str) -> impl FnOnce(DriverError) -> ControlError {
        let node = node.name.clone();
        let what = what.to_string();
        move |err| ControlError::Node { node, what, err }
    }

    // ---------------------------------------------------------------- ticks

    /// One round: heartbeats (in parallel), detection, rejoin, healing,
    /// intents, replication.
    pub fn tick(&mut self, now: Instant) -> Result<TickSummary, ControlError> {
        let mut sum = TickSummary::default();
        let targets: Vec<NodeAddr> =
            self.state.nodes.values().filter(|r| r.state != NodeState::Removed).map(|r| r.addr.clone()).collect();
        let driver = &self.driver;
        let results: Vec<(NodeAddr, Result<NodeReport, DriverError>)> = std::thread::scope(|s| {
            let hs: Vec<_> = targets.iter().map(|a| s.spawn(move || (a.clone(), driver.status(a)))).collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        self.answered = results.iter().filter(|(_, r)| r.is_ok()).map(|(a, _)| a.name.clone()).collect();
        for (addr, res) in results {
            let cfg = self.cfg.health;
            let det = self.detectors.entry(addr.name.clone()).or_insert_with(|| Detector::new(now));
            let state = self.state.nodes.get(&addr.name).map(|r| r.state.clone());
            match res {
                Ok(rep) => {
                    sum.answered += 1;
                    det.heartbeat(&cfg, now, true);
                    self.suspects.remove(&addr.name);
                    if state == Some(NodeState::Dead) {
                        match self.rejoin(&addr, &rep, now) {
                            Ok(()) => sum.rejoined.push(addr.name.clone()),
                            Err(e) => self.log(now, format!("rejoin of {} failed, retrying: {e}", addr.name)),
                        }
                    } else if state == Some(NodeState::Active) {
                        self.restart_self_fenced(&addr, &rep, now);
                    }
                }
                Err(e) => {
                    if !matches!(state, Some(NodeState::Active | NodeState::Draining)) {
                        continue;
                    }
                    if det.heartbeat(&cfg, now, false) == Verdict::ProbeNeeded {
                        let (fails, silent) = (det.failures(), det.silent_for(now));
                        if self.driver.probe(&addr, cfg.probe_timeout) {
                            if self.suspects.insert(addr.name.clone()) {
                                self.log(
                                    now,
                                    format!(
                                        "{}: {fails} heartbeats failed ({e}) but its port answers the probe: not declared dead",
                                        addr.name
                                    ),
                                );
                            }
                        } else {
                            self.declare_dead(&addr.name, fails, silent, now)?;
                            sum.declared_dead.push(addr.name.clone());
                        }
                    }
                }
            }
        }
        self.plan_waiting(now)?;
        self.plan_repartners(now)?;
        let (done, failed) = self.run_intents(now)?;
        sum.intents_done = done;
        sum.intents_failed = failed;
        self.run_runs(now)?;
        self.run_rollouts(now)?;
        sum.replication_failures = self.replicate(now);
        self.finish_drains(now)?;
        Ok(sum)
    }

    /// One round under an election: keep the lease (stepping down at once
    /// if it is lost), or campaign; a controller that just won reloads the
    /// state and so finishes the intents its predecessor left. Returns
    /// Ok(None) when another controller leads.
    pub fn tick_as_leader(
        &mut self,
        election: &mut crate::etcd::Election,
        now: Instant,
    ) -> Result<Option<TickSummary>, ControlError> {
        if election.is_leader() {
            if !election.keepalive() {
                self.log(now, "lost the leader lease: stepped down".into());
                return Ok(None);
            }
        } else {
            if !election.campaign()? {
                return Ok(None);
            }
            self.reload()?;
            let n = self.state.intents.len();
            self.log(now, format!("became leader at revision {}: {n} unfinished intents", self.rev.0));
        }
        self.tick(now).map(Some)
    }

    /// A node that went without heartbeats for its fencing lease stopped
    /// its protected VMs; where the facility still places them at that
    /// epoch (nobody took over), they are started again.
    fn restart_self_fenced(&mut self, addr: &NodeAddr, rep: &NodeReport, now: Instant) {
        for nv in rep.vms.iter().filter(|v| v.self_fenced && !v.running && !v.fenced) {
            let ours = self
                .state
                .vms
                .get(&nv.name)
                .is_some_and(|r| r.node == addr.name && r.epoch == nv.epoch && r.state == VmState::Running);
            if !ours || self.state.busy(&nv.name) {
                continue;
            }
            let text = match self.driver.start_vm(addr, &nv.name, nv.epoch) {
                Ok(()) => format!(
                    "restarted {} on {} at epoch {} (it had stopped itself: fencing lease ran out)",
                    nv.name, addr.name, nv.epoch
                ),
                Err(e) => format!("restarting self-fenced {} on {} failed, retrying: {e}", nv.name, addr.name),
            };
            self.log(now, text);
        }
    }

    fn declare_dead(&mut self, name: &str, fails: u32, silent: Duration, now: Instant) -> Result<(), ControlError> {
        if let Some(r) = self.state.nodes.get_mut(name) {
            r.state = NodeState::Dead;
            r.dead_since_ms = Some(unix_ms());
            r.deaths = r.deaths.saturating_add(1);
        }
        self.dead_at.insert(name.to_string(), now);
        self.log(
            now,
            format!(
                "node {name} declared dead: {fails} heartbeats missed, silent {:.1}s, probe failed",
                silent.as_secs_f64()
            ),
        );
        // An upgrade under way there is abandoned: healing comes first.
        let upgrading: Vec<(u64, String)> = self
            .state
            .intents
            .iter()
            .filter(|i| i.kind == IntentKind::Upgrade && i.to == name)
            .map(|i| (i.id, i.vm.clone()))
            .collect();
        for (id, vm) in upgrading {
            self.state.intents.retain(|i| i.id != id);
            self.log(
                now,
                format!("upgrade of {vm} (intent #{id}) abandoned: its node {name} died; healing comes first"),
            );
        }
        let on_it: Vec<String> = self
            .state
            .vms
            .values()
            .filter(|v| v.node == name && !self.state.busy(&v.spec.name))
            .map(|v| v.spec.name.clone())
            .collect();
        for vm in on_it {
            self.plan_heal(&vm, now);
        }
        for v in self.state.vms.values_mut() {
            if v.partner.as_deref() == Some(name) && v.node != name {
                // Its replica is gone with the node; a new one is planned.
                v.partner = None;
            }
        }
        self.save()
    }

    /// Plan the heal of `vm` (its node is dead) or mark it Waiting.
    fn plan_heal(&mut self, vm: &str, now: Instant) {
        let Some(rec) = self.state.vms.get(vm).cloned() else {
            return;
        };
        let from = rec.node.clone();
        self.mark_healing(vm, format!("{vm} is being healed: its node {from} failed"), now);
        if self.state.manual_takeover(vm) {
            let why = format!("node {from} is dead: awaiting an operator's takeover run (its runbook)");
            if rec.state != VmState::Waiting(why.clone()) {
                self.log(now, format!("{vm} is not healed automatically: {why}"));
            }
            if let Some(v) = self.state.vms.get_mut(vm) {
                v.state = VmState::Waiting(why);
            }
            return;
        }
        let mut via_replica = false;
        let target = if rec.spec.protected {
            match &rec.partner {
                Some(p) if self.partner_can_host(&rec, p) => {
                    via_replica = true;
                    Ok(p.clone())
                }
                Some(p) => {
                    Err(PlacementError(format!("its replica's node {p} is not active or has no room to run it")))
                }
                None => Err(PlacementError("it has no replica to heal from".into())),
            }
        } else {
            placement::place_vm(&self.state, rec.spec.res, &[from.as_str()])
        };
        let to = match target {
            Ok(t) => t,
            Err(e) => {
                let why = e.0;
                if rec.state != VmState::Waiting(why.clone()) {
                    self.log(now, format!("cannot heal {vm} (was on {from}): {why}; waiting"));
                }
                if let Some(v) = self.state.vms.get_mut(vm) {
                    v.state = VmState::Waiting(why);
                }
                return;
            }
        };
        let epoch = match self.state.locks.acquire(vm, rec.instance, &to) {
            Acquire::Granted { epoch } | Acquire::TakenOver { epoch, .. } => epoch,
            Acquire::Refused { holder_instance, holder_node } => {
                let why = format!("volume held by instance {holder_instance} on {holder_node}");
                self.log(now, format!("cannot heal {vm}: {why}"));
                if let Some(v) = self.state.vms.get_mut(vm) {
                    v.state = VmState::Waiting(why);
                }
                return;
            }
        };
        let partner = if rec.spec.protected { self.new_partner(vm, &to, now) } else { None };
        // A service member comes back on the version its domain calls for.
        let wanted = crate::rollout::wanted_version(&self.state, vm);
        let mut version_note = String::new();
        if let Some(v) = self.state.vms.get_mut(vm) {
            v.node = to.clone();
            v.epoch = epoch;
            v.partner = partner;
            v.state = VmState::Moving;
            if let Some((ver, img)) = wanted {
                version_note = format!(", version {ver}");
                v.spec.version = Some(ver);
                v.spec.image = img.image;
                v.spec.initrd = img.initrd;
                v.spec.cmdline = img.cmdline;
            }
        }
        self.push_intent(IntentKind::Heal, vm, Some(from.clone()), &to, epoch, rec.spec.protected, via_replica);
        self.log(
            now,
            format!(
                "heal planned: {vm} from {from} to {to} at epoch {epoch}{}{version_note}",
                if via_replica { " (from its replica)" } else { " (fresh disk)" }
            ),
        );
    }

    /// A partner for `vm` once it runs on `primary` (None, logged, if none fits).
    pub(crate) fn new_partner(&mut self, vm: &str, primary: &str, now: Instant) -> Option<NodeName> {
        let rec = self.state.vms.get(vm)?.clone();
        // Count the VM on its new node and no old replica while choosing.
        let mut hypo = self.state.clone();
        if let Some(v) = hypo.vms.get_mut(vm) {
            v.node = primary.to_string();
            v.partner = None;
        }
        match placement::place_partner(&hypo, rec.spec.res, primary) {
            Ok(p) => Some(p),
            Err(e) => {
                self.log(now, format!("{vm} runs unprotected for now: {e}"));
                None
            }
        }
    }

    /// Whether `p` (holding the VM's replica) can run the VM: the replica's
    /// disk becomes the VM's, so only its CPUs and memory are new.
    pub(crate) fn partner_can_host(&self, rec: &VmRecord, p: &str) -> bool {
        if !self.state.is_active(p) {
            return false;
        }
        let free = placement::free(&self.state, &[]);
        free.get(p).is_some_and(|f| f.plus(Capacity::disk_of(rec.spec.res)).holds(Capacity::of(rec.spec.res)))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_intent(
        &mut self,
        kind: IntentKind,
        vm: &str,
        from: Option<NodeName>,
        to: &str,
        epoch: u64,
        protected: bool,
        replica_on_target: bool,
    ) {
        let id = self.state.next_intent;
        self.state.next_intent = id.saturating_add(1);
        self.state.intents.push(Intent {
            id,
            kind,
            vm: vm.to_string(),
            from,
            to: to.to_string(),
            epoch,
            source_epoch: 0,
            steps: steps(kind, protected, replica_on_target),
            done: 0,
            planned_ms: unix_ms(),
        });
    }

    fn plan_waiting(&mut self, now: Instant) -> Result<(), ControlError> {
        let waiting: Vec<String> = self
            .state
            .vms
            .values()
            .filter(|v| matches!(v.state, VmState::Waiting(_)) && self.state.intent_for(&v.spec.name).is_none())
            .filter(|v| !self.state.is_active(&v.node))
            .map(|v| v.spec.name.clone())
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let before = self.state.intents.len();
        for vm in waiting {
            self.plan_heal(&vm, now);
        }
        if self.state.intents.len() != before {
            self.save()?;
        }
        Ok(())
    }

    fn plan_repartners(&mut self, now: Instant) -> Result<(), ControlError> {
        let need: Vec<(String, Option<NodeName>)> = self
            .state
            .vms
            .values()
            .filter(|v| v.spec.protected && v.state == VmState::Running)
            .filter(|v| self.state.intent_for(&v.spec.name).is_none())
            .filter(|v| !v.partner.as_deref().is_some_and(|p| self.state.is_active(p)))
            .map(|v| (v.spec.name.clone(), v.partner.clone()))
            .collect();
        let mut changed = false;
        for (vm, old) in need {
            let Some(rec) = self.state.vms.get(&vm).cloned() else {
                continue;
            };
            let mut hypo = self.state.clone();
            if let Some(v) = hypo.vms.get_mut(&vm) {
                v.partner = None;
            }
            match placement::place_partner(&hypo, rec.spec.res, &rec.node) {
                Ok(p) => {
                    self.unprotected.remove(&vm);
                    if let Some(v) = self.state.vms.get_mut(&vm) {
                        v.partner = Some(p.clone());
                        v.state = VmState::Moving;
                    }
                    self.push_intent(IntentKind::Repartner, &vm, old.clone(), &p, rec.epoch, true, false);
                    self.log(now, format!("new partner for {vm}: {p} (was {})", old.as_deref().unwrap_or("none")));
                    changed = true;
                }
                Err(e) => {
                    if self.unprotected.insert(vm.clone()) {
                        self.log(now, format!("{vm} has no replica: {e}"));
                    }
                }
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    fn finish_drains(&mut self, now: Instant) -> Result<(), ControlError> {
        let draining: Vec<NodeName> =
            self.state.nodes.iter().filter(|(_, r)| r.state == NodeState::Draining).map(|(n, _)| n.clone()).collect();
        for n in draining {
            if self.holds_anything(&n) {
                continue;
            }
            if !self.events.iter().any(|e| e.text == format!("node {n} drained")) {
                self.log(now, format!("node {n} drained"));
            }
        }
        Ok(())
    }

    fn holds_anything(&self, n: &str) -> bool {
        self.state.vms.values().any(|v| v.node == n || v.partner.as_deref() == Some(n))
            || self.state.intents.iter().any(|i| i.to == n || i.from.as_deref() == Some(n))
    }

    // --------------------------------------------------------------- rejoin

    /// A Dead node answered: fence and destroy every copy it has that the
    /// facility moved on from, drop stale replicas, and make it Active.
    fn rejoin(&mut self, addr: &NodeAddr, rep: &NodeReport, now: Instant) -> Result<(), ControlError> {
        let fenced = self.clean_node(addr, rep, now)?;
        let silent = self.state.nodes.get(&addr.name).and_then(|r| r.dead_since_ms);
        if let Some(r) = self.state.nodes.get_mut(&addr.name) {
            r.state = NodeState::Active;
            r.dead_since_ms = None;
        }
        // VMs that waited for this very node run again here.
        let kept: Vec<(String, u64)> = self
            .state
            .vms
            .values()
            .filter(|v| v.node == addr.name && matches!(v.state, VmState::Waiting(_)))
            .filter(|v| rep.vm(&v.spec.name).is_some_and(|x| x.epoch == v.epoch && x.instance == v.instance))
            .map(|v| (v.spec.name.clone(), v.epoch))
            .collect();
        for (vm, epoch) in &kept {
            self.driver.start_vm(addr, vm, *epoch).map_err(Self::node_err(addr, &format!("restarting {vm}")))?;
            if let Some(v) = self.state.vms.get_mut(vm) {
                v.state = VmState::Running;
            }
        }
        self.save()?;
        let dead_for = match self.dead_at.remove(&addr.name) {
            Some(t) => u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX),
            None => silent.map(|t| unix_ms().saturating_sub(t)).unwrap_or(0),
        };
        self.log(
            now,
            format!(
                "node {} rejoined after {:.1}s dead: fenced {fenced} stale copies, restarted {} waiting VMs",
                addr.name,
                dead_for as f64 / 1000.0,
                kept.len()
            ),
        );
        Ok(())
    }

    /// Fence/destroy what `addr` must not run and drop replicas it must not
    /// hold; returns how many copies were fenced.
    fn clean_node(&mut self, addr: &NodeAddr, rep: &NodeReport, now: Instant) -> Result<usize, ControlError> {
        let mut fenced = 0;
        for nv in &rep.vms {
            let Some(rec) = self.state.vms.get(&nv.name) else {
                self.log(now, format!("{}: VM {} is not the facility's; left alone", addr.name, nv.name));
                continue;
            };
            let ours = rec.node == addr.name && rec.instance == nv.instance && rec.epoch == nv.epoch;
            let in_flight = self.state.intent_for(&nv.name).is_some_and(|i| i.to == addr.name)
                || self.run_targets(&addr.name, &nv.name);
            if ours || in_flight {
                continue;
            }
            let epoch = rec.epoch;
            self.driver
                .fence_vm(addr, &nv.name, epoch)
                .map_err(Self::node_err(addr, &format!("fencing {}", nv.name)))?;
            self.driver.destroy_vm(addr, &nv.name).map_err(Self::node_err(addr, &format!("destroying {}", nv.name)))?;
            self.log(
                now,
                format!(
                    "fenced stale copy of {} on {} (epoch {} < {epoch}, running: {})",
                    nv.name, addr.name, nv.epoch, nv.running
                ),
            );
            fenced += 1;
        }
        for (vm, _) in &rep.replicas {
            let keep = self.state.vms.get(vm).is_some_and(|r| r.partner.as_deref() == Some(&addr.name))
                || self.state.intent_for(vm).is_some_and(|i| i.to == addr.name)
                || self.run_targets(&addr.name, vm);
            if !keep {
                self.driver
                    .replica_drop(addr, vm)
                    .map_err(Self::node_err(addr, &format!("dropping replica of {vm}")))?;
            }
        }
        Ok(fenced)
    }

    // -------------------------------------------------------------- intents

    /// Run every unfinished intent as far as it goes; returns (finished, failed).
    pub fn run_intents(&mut self, now: Instant) -> Result<(usize, usize), ControlError> {
        // Healing first: it pre-empts moves and upgrades.
        let mut ids: Vec<(bool, u64)> = self.state.intents.iter().map(|i| (i.kind != IntentKind::Heal, i.id)).collect();
        ids.sort_unstable();
        let ids: Vec<u64> = ids.into_iter().map(|(_, id)| id).collect();
        let (mut done, mut failed) = (0, 0);
        for id in ids {
            match self.run_intent(id, now) {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(ControlError::Halted) => return Err(ControlError::Halted),
                Err(e @ ControlError::Store(_)) => return Err(e),
                Err(e) => {
                    failed += 1;
                    self.log(now, format!("intent #{id}: {e}; retried next tick"));
                }
            }
        }
        Ok((done, failed))
    }

    /// Run one intent to its end; Ok(true) when it finished now.
    fn run_intent(&mut self, id: u64, now: Instant) -> Result<bool, ControlError> {
        loop {
            let Some(it) = self.state.intents.iter().find(|i| i.id == id).cloned() else {
                return Ok(false);
            };
            let Some(step) = it.next() else {
                self.finish_intent(&it, now)?;
                return Ok(true);
            };
            if self.step_limit.is_some_and(|l| self.steps_done >= l) {
                return Err(ControlError::Halted);
            }
            let healing = it.kind == IntentKind::Heal;
            if healing && self.heal_step_limit.is_some_and(|l| self.heal_steps_done >= l) {
                return Err(ControlError::Halted);
            }
            self.exec(&it, step, now)?;
            self.steps_done = self.steps_done.saturating_add(1);
            if healing {
                self.heal_steps_done = self.heal_steps_done.saturating_add(1);
            }
            if let Some(i) = self.state.intents.iter_mut().find(|i| i.id == id) {
                i.done = i.done.saturating_add(1);
            }
            self.save()?;
        }
    }

    fn finish_intent(&mut self, it: &Intent, now: Instant) -> Result<(), ControlError> {
        self.state.intents.retain(|i| i.id != it.id);
        if let Some(v) = self.state.vms.get_mut(&it.vm) {
            v.state = VmState::Running;
        }
        self.save()?;
        let ms = unix_ms().saturating_sub(it.planned_ms);
        let what = match it.kind {
            IntentKind::Create => "created",
            IntentKind::Heal => "healed",
            IntentKind::Move => "moved",
            IntentKind::Repartner => "replica set up for",
            IntentKind::Upgrade => "upgraded",
        };
        let from = it.from.as_deref().map(|f| format!(" from {f}")).unwrap_or_default();
        self.log(now, format!("{what} {} on {}{from} in {ms}ms (epoch {})", it.vm, it.to, it.epoch));
        Ok(())
    }

    fn exec(&mut self, it: &Intent, step: Step, now: Instant) -> Result<(), ControlError> {
        let rec = self
            .state
            .vms
            .get(&it.vm)
            .cloned()
            .ok_or_else(|| ControlError::Invalid(format!("intent #{} names unknown VM {}", it.id, it.vm)))?;
        let to = self.addr(&it.to)?;
        let from = it.from.as_deref().map(|f| self.addr(f)).transpose()?;
        let d = &self.driver;
        let vm = it.vm.as_str();
        let need_from =
            || from.clone().ok_or_else(|| ControlError::Invalid(format!("intent #{} has no source", it.id)));
        match step {
            Step::Create => {
                let rep = d.status(&to).map_err(Self::node_err(&to, "checking before create"))?;
                if rep.vm(vm).is_some_and(|v| v.instance == rec.instance) {
                    return Ok(());
                }
                d.create_vm(&to, &rec.spec, rec.instance, it.epoch)
                    .map_err(Self::node_err(&to, &format!("creating {vm}")))
            }
            Step::Promote => {
                let rep = d.status(&to).map_err(Self::node_err(&to, "checking before promote"))?;
                if rep.vm(vm).is_none_or(|v| v.instance != rec.instance) {
                    d.promote_replica(&to, &rec.spec, rec.instance, it.epoch)
                        .map_err(Self::node_err(&to, &format!("promoting the replica of {vm}")))?;
                }
                // The replica was defined with the image of its time; the
                // VM boots what its record says now (a rollout's version).
                d.set_vm_image(&to, vm, &crate::driver::BootImage::of(&rec.spec))
                    .map_err(Self::node_err(&to, &format!("setting the image of {vm}")))
            }
            Step::Start => {
                let rep = d.status(&to).map_err(Self::node_err(&to, "checking before start"))?;
                if rep.vm(vm).is_some_and(|v| v.running && v.epoch == it.epoch) {
                    return Ok(());
                }
                d.start_vm(&to, vm, it.epoch).map_err(Self::node_err(&to, &format!("starting {vm}")))
            }
            Step::ReplicaToTarget => {
                let from = need_from()?;
                self.make_replica(&from, &to, &rec.spec, rec.instance, it.copy_epoch())
            }
            Step::ReplicaToPartner => {
                // For a Repartner intent the partner is `to` and the primary
                // the VM's node; otherwise the VM runs on `to`.
                let (primary, partner) = if it.kind == IntentKind::Repartner {
                    (self.addr(&rec.node)?, Some(to.clone()))
                } else {
                    (to.clone(), rec.partner.as_deref().map(|p| self.addr(p)).transpose()?)
                };
                match partner {
                    Some(p) => self.make_replica(&primary, &p, &rec.spec, rec.instance, rec.epoch),
                    None => Ok(()),
                }
            }
            Step::CatchUp => {
                let pair =
                    Pair { vm: vm.to_string(), primary: need_from()?, partner: to.clone(), epoch: it.copy_epoch() };
                // Bounded: a busy VM stays dirty; the final drain ends it.
                match Replicator::drain(d, &pair, self.cfg.replica_blocks, self.cfg.catch_up_pulls) {
                    Ok(_) => Ok(()),
                    Err(DriverError::Other(_)) => Ok(()),
                    Err(e) => Err(ControlError::Node {
                        node: pair.primary.name.clone(),
                        what: format!("catching up the replica of {vm}"),
                        err: e,
                    }),
                }
            }
            Step::StopSource => {
                let from = need_from()?;
                let rep = d.status(&from).map_err(Self::node_err(&from, "checking before stop"))?;
                if !rep.vm(vm).is_some_and(|v| v.running) {
                    return Ok(());
                }
                d.stop_vm(&from, vm).map_err(Self::node_err(&from, &format!("stopping {vm}")))
            }
            Step::FinalDrain => {
                let pair =
                    Pair { vm: vm.to_string(), primary: need_from()?, partner: to.clone(), epoch: it.copy_epoch() };
                Replicator::drain(d, &pair, self.cfg.replica_blocks, self.cfg.final_drain_pulls)
                    .map(|_| ())
                    .map_err(Self::node_err(&pair.primary, &format!("final copy of {vm}")))
            }
            Step::FenceSource => {
                let from = need_from()?;
                d.fence_vm(&from, vm, it.epoch).map_err(Self::node_err(&from, &format!("fencing {vm}")))
            }
            Step::Filters => {
                let mut clusters: BTreeSet<u32> = filters::cluster_members(&self.state).into_keys().collect();
                clusters.insert(rec.spec.cluster);
                let extra: Vec<NodeName> = it.from.iter().cloned().collect();
                let rep = filters::blast(d, &self.state, &clusters, &extra);
                let text = format!(
                    "filters ({} clusters) reprogrammed on {} nodes in {}ms{}",
                    clusters.len(),
                    rep.nodes_ok,
                    rep.wall.as_millis(),
                    if rep.failed.is_empty() { String::new() } else { format!(", {} failed", rep.failed.len()) }
                );
                self.log(now, text);
                // Only the VM's own node must take them now; another that
                // did not answer gets them again when it is next heard
                // (rejoin) or at the next blast.
                let mut fatal = None;
                for (node, err) in rep.failed {
                    if node == it.to {
                        fatal = Some(ControlError::Node { node, what: "setting cluster filters".into(), err });
                    } else {
                        self.log(now, format!("filters not set on {node} ({err}); it gets them at the next blast"));
                    }
                }
                fatal.map_or(Ok(()), Err)
            }
            Step::DestroySource => {
                let from = need_from()?;
                d.destroy_vm(&from, vm).map_err(Self::node_err(&from, &format!("destroying the old copy of {vm}")))
            }
            Step::DropOldReplica => match &from {
                Some(f)
                    if self
                        .state
                        .nodes
                        .get(&f.name)
                        .is_some_and(|r| matches!(r.state, NodeState::Active | NodeState::Draining)) =>
                {
                    d.replica_drop(f, vm).map_err(Self::node_err(f, &format!("dropping the old replica of {vm}")))
                }
                _ => Ok(()),
            },
            Step::SetImage => d
                .set_vm_image(&to, vm, &crate::driver::BootImage::of(&rec.spec))
                .map_err(Self::node_err(&to, &format!("re-imaging {vm}"))),
            Step::Notify => {
                let text = match it.kind {
                    IntentKind::Heal => format!("{vm} was restarted on another node after its node failed"),
                    _ => format!("{vm} was moved to another node"),
                };
                if let Err(e) = d.notify_tenant(&to, vm, &text) {
                    self.log(now, format!("could not notify the tenant of {vm}: {e}"));
                }
                Ok(())
            }
        }
    }

    /// A replica of `spec` on `partner` fed from `primary` at `epoch`,
    /// unless the partner already holds one at that epoch.
    pub(crate) fn make_replica(
        &self,
        primary: &NodeAddr,
        partner: &NodeAddr,
        spec: &VmPlacementSpec,
        instance: u64,
        epoch: u64,
    ) -> Result<(), ControlError> {
        let d = &self.driver;
        let rep = d.status(partner).map_err(Self::node_err(partner, "checking before replica"))?;
        if rep.replica(&spec.name) == Some(epoch) {
            return Ok(());
        }
        // A stopped copy the facility moved on from (a primary deposed by
        // a move or a run) is in the way of the replica: it goes first.
        if let Some(old) = rep.vm(&spec.name).filter(|v| v.epoch < epoch && !v.running) {
            d.destroy_vm(partner, &spec.name).map_err(Self::node_err(
                partner,
                &format!("removing the stale copy of {} (epoch {} < {epoch})", spec.name, old.epoch),
            ))?;
        }
        let key = d
            .replica_key(primary, &spec.name, partner)
            .map_err(Self::node_err(primary, &format!("sealing the key of {}", spec.name)))?;
        d.replica_create(partner, spec, &key, primary, instance, epoch)
            .map_err(Self::node_err(partner, &format!("creating the replica of {}", spec.name)))
    }

    // ---------------------------------------------------------- replication

    fn replicate(&mut self, now: Instant) -> usize {
        let mut pairs = Vec::new();
        for v in self.state.vms.values() {
            if !v.spec.protected || v.state != VmState::Running {
                continue;
            }
            let Some(p) = &v.partner else { continue };
            // A node that missed this heartbeat is the detector's business;
            // its rounds wait (no log line per tick while it is down).
            if !self.answered.contains(p) || !self.answered.contains(&v.node) {
                continue;
            }
            if !self.state.is_active(p)
                || !matches!(
                    self.state.nodes.get(&v.node).map(|r| &r.state),
                    Some(NodeState::Active | NodeState::Draining)
                )
            {
                continue;
            }
            if let (Some(primary), Some(partner)) = (self.state.addr(&v.node), self.state.addr(p)) {
                pairs.push(Pair {
                    vm: v.spec.name.clone(),
                    primary: primary.clone(),
                    partner: partner.clone(),
                    epoch: v.epoch,
                });
            }
        }
        let names: BTreeSet<String> = pairs.iter().map(|p| p.vm.clone()).collect();
        self.repl.retain(|v| names.contains(v));
        let mut failures = 0;
        for p in pairs {
            match self.repl.round(&self.driver, &p, now) {
                RoundOutcome::Pushed(_) | RoundOutcome::Resync => {}
                RoundOutcome::PushFailed(e) => {
                    failures += 1;
                    self.log(
                        now,
                        format!("replica push of {} to {} failed ({e}); batch kept for retry", p.vm, p.partner.name),
                    );
                }
                RoundOutcome::PullFailed(e) => {
                    failures += 1;
                    self.log(now, format!("replica pull of {} from {} failed: {e}", p.vm, p.primary.name));
                }
            }
        }
        failures
    }

    // ----------------------------------------------------------- operations

    /// Enrol a node (or re-enrol a Removed one): it must answer a heartbeat;
    /// its capacity is `capacity` or what it reports free. Copies of
    /// facility VMs it still holds are fenced.
    pub fn add_node(&mut self, addr: NodeAddr, capacity: Option<Capacity>) -> Result<(), ControlError> {
        let now = Instant::now();
        if self.state.nodes.get(&addr.name).is_some_and(|r| r.state != NodeState::Removed) {
            return Err(ControlError::Invalid(format!("node {} is already in the facility", addr.name)));
        }
        let rep = self.driver.status(&addr).map_err(Self::node_err(&addr, "enrolment heartbeat"))?;
        let capacity = capacity.unwrap_or(Capacity {
            vcpus: u64::from(rep.cpus),
            memory_mib: u64::from(rep.memory_mib_free),
            disk_mib: u64::from(rep.disk_mib_free),
        });
        let deaths = self.state.nodes.get(&addr.name).map(|r| r.deaths).unwrap_or(0);
        self.state.nodes.insert(
            addr.name.clone(),
            NodeRecord { addr: addr.clone(), capacity, state: NodeState::Dead, dead_since_ms: None, deaths },
        );
        self.clean_node(&addr, &rep, now)?;
        if let Some(r) = self.state.nodes.get_mut(&addr.name) {
            r.state = NodeState::Active;
        }
        self.detectors.insert(addr.name.clone(), Detector::new(now));
        self.save()?;
        self.log(
            now,
            format!(
                "node {} added: {} vCPUs, {} MiB memory, {} MiB disk",
                addr.name, capacity.vcpus, capacity.memory_mib, capacity.disk_mib
            ),
        );
        Ok(())
    }

    /// Start draining `name`: it takes nothing new and every VM on it is
    /// moved with its disk (planned all at once or not at all); replicas it
    /// holds get new partners. Returns how many moves were planned; they run
    /// now and in later ticks.
    pub fn drain_node(&mut self, name: &str) -> Result<usize, ControlError> {
        let now = Instant::now();
        match self.state.nodes.get(name).map(|r| &r.state) {
            Some(NodeState::Active) => {}
            Some(s) => return Err(ControlError::Invalid(format!("node {name} is {s:?}, not Active"))),
            None => return Err(ControlError::Invalid(format!("unknown node {name}"))),
        }
        let saved = self.state.clone();
        if let Some(r) = self.state.nodes.get_mut(name) {
            r.state = NodeState::Draining;
        }
        let vms: Vec<String> =
            self.state.vms.values().filter(|v| v.node == name).map(|v| v.spec.name.clone()).collect();
        for vm in &vms {
            if let Err(e) = self.plan_move(vm, name, now) {
                self.state = saved;
                return Err(e);
            }
        }
        self.save()?;
        self.log(now, format!("draining {name}: {} moves planned", vms.len()));
        self.plan_repartners(now)?;
        match self.run_intents(now) {
            Ok(_) | Err(ControlError::Halted) => Ok(vms.len()),
            Err(e) => Err(e),
        }
    }

    fn plan_move(&mut self, vm: &str, from: &str, now: Instant) -> Result<(), ControlError> {
        let rec = self.state.vms.get(vm).cloned().ok_or_else(|| ControlError::Invalid(format!("unknown VM {vm}")))?;
        if let Some(i) = self.state.intent_for(vm) {
            return Err(ControlError::Invalid(format!("{vm} is busy (intent #{})", i.id)));
        }
        let via_partner =
            rec.partner.as_deref().filter(|p| rec.spec.protected && self.partner_can_host(&rec, p)).map(str::to_string);
        let to = match &via_partner {
            Some(p) => p.clone(),
            None => placement::place_vm(&self.state, rec.spec.res, &[from])
                .map_err(|e| PlacementError(format!("cannot move {vm}: {e}")))?,
        };
        let epoch = match self.state.locks.acquire(vm, rec.instance, &to) {
            Acquire::Granted { epoch } | Acquire::TakenOver { epoch, .. } => epoch,
            Acquire::Refused { holder_instance, holder_node } => {
                return Err(ControlError::Invalid(format!(
                    "volume {vm} held by instance {holder_instance} on {holder_node}"
                )))
            }
        };
        let partner = if !rec.spec.protected {
            None
        } else if via_partner.is_some() {
            self.new_partner(vm, &to, now)
        } else {
            rec.partner.clone().filter(|p| self.state.is_active(p))
        };
        if let Some(v) = self.state.vms.get_mut(vm) {
            v.node = to.clone();
            v.epoch = epoch;
            v.partner = partner;
            v.state = VmState::Moving;
        }
        self.push_intent(
            IntentKind::Move,
            vm,
            Some(from.to_string()),
            &to,
            epoch,
            rec.spec.protected,
            via_partner.is_some(),
        );
        if let Some(i) = self.state.intents.last_mut() {
            i.source_epoch = rec.epoch;
        }
        Ok(())
    }

    /// Take a drained (or dead) node out of the facility; refused while it
    /// still holds a VM, a replica or pending work.
    pub fn remove_node(&mut self, name: &str) -> Result<(), ControlError> {
        let now = Instant::now();
        match self.state.nodes.get(name).map(|r| &r.state) {
            Some(NodeState::Draining | NodeState::Dead) => {}
            Some(s) => return Err(ControlError::Invalid(format!("node {name} is {s:?}: drain it first"))),
            None => return Err(ControlError::Invalid(format!("unknown node {name}"))),
        }
        if let Some(v) = self.state.vms.values().find(|v| v.node == name) {
            return Err(ControlError::Invalid(format!("node {name} still holds VM {} ({:?})", v.spec.name, v.state)));
        }
        if self.holds_anything(name) {
            return Err(ControlError::Invalid(format!("node {name} still holds a replica or unfinished work")));
        }
        if let Some(r) = self.state.nodes.get_mut(name) {
            r.state = NodeState::Removed;
        }
        self.save()?;
        self.detectors.remove(name);
        self.log(now, format!("node {name} removed"));
        Ok(())
    }

    /// Place, lock and create a VM, start it, set up its replica (protected)
    /// and its cluster's filters. The plan is saved first; if a step fails
    /// the error says which, and later ticks finish it.
    pub fn create_vm(&mut self, spec: VmPlacementSpec) -> Result<NodeName, ControlError> {
        self.create_vm_on(spec, None)
    }

    /// [`Self::create_vm`] on node `on` when given (an operator's choice,
    /// still checked for room and state), else where placement puts it.
    pub fn create_vm_on(&mut self, spec: VmPlacementSpec, on: Option<&str>) -> Result<NodeName, ControlError> {
        let now = Instant::now();
        if spec.name.is_empty() {
            return Err(ControlError::Invalid("a VM needs a name".into()));
        }
        if self.state.vms.contains_key(&spec.name) {
            return Err(ControlError::Invalid(format!("VM {} already exists", spec.name)));
        }
        if spec.res.vcpus == 0 || spec.res.memory_mib == 0 {
            return Err(ControlError::Invalid(format!("VM {} needs vCPUs and memory", spec.name)));
        }
        if let Some(ip) = spec.ip {
            if let Some(o) = self.state.vms.values().find(|v| v.spec.cluster == spec.cluster && v.spec.ip == Some(ip)) {
                return Err(ControlError::Invalid(format!(
                    "address {}.{}.{}.{} is already {}'s in cluster {}",
                    ip[0], ip[1], ip[2], ip[3], o.spec.name, spec.cluster
                )));
            }
        }
        let node = match on {
            None => placement::place_vm(&self.state, spec.res, &[])?,
            Some(n) => {
                let active = self.state.nodes.get(n).is_some_and(|r| r.state == NodeState::Active);
                if !active {
                    return Err(ControlError::Invalid(format!("node {n} is not an active node of the facility")));
                }
                if !placement::fits(&self.state, n, Capacity::of(spec.res)) {
                    return Err(ControlError::Placement(PlacementError(format!(
                        "node {n} has no room for {} ({} vCPUs, {} MiB memory, {} MiB disk)",
                        spec.name, spec.res.vcpus, spec.res.memory_mib, spec.res.disk_mib
                    ))));
                }
                n.to_string()
            }
        };
        let instance = self.state.next_instance.max(1);
        let mut next = self.state.clone();
        next.next_instance = instance.saturating_add(1);
        let epoch = match next.locks.acquire(&spec.name, instance, &node) {
            Acquire::Granted { epoch } => epoch,
            Acquire::TakenOver { epoch, .. } => epoch,
            Acquire::Refused { holder_instance, holder_node } => {
                return Err(ControlError::Invalid(format!(
                    "volume {} is held by instance {holder_instance} on {holder_node}",
                    spec.name
                )))
            }
        };
        let name = spec.name.clone();
        let protected = spec.protected;
        next.vms.insert(
            name.clone(),
            VmRecord { spec, node: node.clone(), partner: None, instance, epoch, state: VmState::Moving },
        );
        if protected {
            let p = placement::place_partner(&next, next.vms.get(&name).map(|v| v.spec.res).unwrap_or_default(), &node)
                .map_err(|e| PlacementError(format!("protected VM {name} needs a partner: {e}")))?;
            if let Some(v) = next.vms.get_mut(&name) {
                v.partner = Some(p);
            }
        }
        self.state = next;
        self.push_intent(IntentKind::Create, &name, None, &node, epoch, protected, false);
        self.save()?;
        let id = self.state.intent_for(&name).map(|i| i.id).unwrap_or_default();
        self.run_intent(id, now)?;
        Ok(node)
    }
}
