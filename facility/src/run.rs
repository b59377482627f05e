//! Runbook runs: the signed request an operator records, the gates it must
//! pass before any node hears of it, and the per-step log everyone sees.
//!
//! The gates are pure functions of the stored state, in the order the
//! operator reads them in a refusal: 1 allow-list, 2 state, 3 schema,
//! 4 authentication. Nothing here talks to a node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{FacilityState, NodeName, NodeState, VmState};
use crate::runbook::{self, Action, OnFailure, StepKind, StepSpec};

/// Runs kept in the store (the oldest finished ones go first).
pub const MAX_RUNS: usize = 64;
/// Runs waiting for the gates at once; more are refused when recorded.
pub const MAX_REQUESTED: usize = 8;
/// How far a request's signing time may be from the controller's clock.
pub const FRESH_MS: u64 = 120_000;
/// Nonces remembered (each for [`FRESH_MS`]); a full table refuses new runs.
pub const MAX_NONCES: usize = 256;
/// Log lines kept per step.
pub const MAX_STEP_LOG: usize = 16;
/// Facility audit records kept.
pub const MAX_AUDIT: usize = 512;

/// What an operator asks for, as signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The service (protected VM).
    pub service: String,
    /// Which runbook.
    pub action: Action,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// Who asks (a name on the runbook's allow-list).
    pub operator: String,
    /// Random, never accepted twice.
    pub nonce: u64,
    /// Unix time (ms) the operator signed it.
    pub issued_ms: u64,
}

impl RunRequest {
    /// The bytes the operator's ed25519 key signs: a fixed context, then
    /// the request as JSON (field order fixed by the type, maps sorted).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut b = b"bmonitor facility runbook run v1\n".to_vec();
        b.extend(serde_json::to_vec(self).unwrap_or_default());
        b
    }
}

/// Which gate refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// 1 to 4.
    pub gate: u8,
    /// allow-list, state, schema, authentication.
    pub name: String,
    /// In words.
    pub why: String,
}

impl Refusal {
    fn new(gate: u8, why: String) -> Self {
        let name = match gate {
            1 => "allow-list",
            2 => "state",
            3 => "schema",
            _ => "authentication",
        };
        Refusal { gate, name: name.into(), why }
    }
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Recorded; the controller has not checked the gates yet.
    Requested,
    /// A gate refused it; no node was told anything.
    Refused(Refusal),
    /// Gates passed; steps under way.
    Running,
    /// Every step done or warned.
    Succeeded,
    /// A step failed with `die` (or could not be resumed).
    Failed {
        /// 1-based step number.
        step: usize,
        /// Why.
        why: String,
    },
}

impl RunState {
    /// Whether the run is over.
    pub fn finished(&self) -> bool {
        !matches!(self, RunState::Requested | RunState::Running)
    }
}

/// Where a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Not reached.
    Pending,
    /// Being attempted.
    Running,
    /// Succeeded.
    Done,
    /// Failed with a warn policy; the run went on.
    Warned,
    /// Failed; the run stopped here.
    Failed,
    /// Not run (interrupted by a failover and not repeatable, or the run stopped before it).
    Skipped,
}

/// One step of a run and its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStep {
    /// What it does.
    pub step: StepKind,
    /// Its policy.
    pub on_failure: OnFailure,
    /// Its options from the runbook.
    #[serde(default)]
    pub spec: Option<StepSpec>,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts started.
    pub attempts: u32,
    /// Unix ms it started, ended.
    pub started_ms: Option<u64>,
    /// Unix ms it ended.
    pub ended_ms: Option<u64>,
    /// Unix ms the current attempt started (verify waits from here).
    #[serde(default)]
    pub attempt_ms: Option<u64>,
    /// The outcome in words.
    pub detail: String,
    /// Attempts and retries, oldest first (at most [`MAX_STEP_LOG`]).
    pub log: Vec<String>,
}

impl RunStep {
    /// Appends a log line, dropping the oldest beyond the bound.
    pub fn note(&mut self, line: String) {
        if self.log.len() >= MAX_STEP_LOG {
            self.log.remove(0);
        }
        self.log.push(line);
    }
}

/// One run of a runbook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Unique per facility, shown to the operator.
    pub id: u64,
    /// The signed request.
    #[serde(flatten)]
    pub request: RunRequest,
    /// ed25519 signature over [`RunRequest::signing_bytes`], 128 hex digits.
    pub signature: String,
    /// Where it is.
    pub state: RunState,
    /// The runbook's steps, copied when the gates passed.
    pub steps: Vec<RunStep>,
    /// Next step to run (index).
    pub cursor: usize,
    /// The node the service ran on when the run started.
    pub from: Option<NodeName>,
    /// The node it ends on.
    pub to: Option<NodeName>,
    /// The epoch switch_lock took (0 until then).
    pub epoch: u64,
    /// The epoch the source ran at when the run started.
    pub source_epoch: u64,
    /// Unix ms recorded, gates passed, finished.
    pub requested_ms: u64,
    /// Unix ms the gates passed.
    pub started_ms: Option<u64>,
    /// Unix ms it finished.
    pub finished_ms: Option<u64>,
    /// Steps that failed with a warn policy.
    pub warnings: u32,
}

impl Run {
    /// A new request as recorded by the operator's command.
    pub fn requested(id: u64, request: RunRequest, signature: String, now_ms: u64) -> Self {
        Run {
            id,
            request,
            signature,
            state: RunState::Requested,
            steps: Vec::new(),
            cursor: 0,
            from: None,
            to: None,
            epoch: 0,
            source_epoch: 0,
            requested_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            warnings: 0,
        }
    }

    /// Whether switch_lock has happened (the service belongs to `to`).
    pub fn switched(&self) -> bool {
        self.epoch > 0
    }

    /// Whether `kind` at `index` comes after the run's switch_lock step.
    pub fn after_switch(&self, index: usize) -> bool {
        self.steps.iter().position(|s| s.step == StepKind::SwitchLock).is_some_and(|sw| index > sw)
    }
}

/// One line of the facility's audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix ms.
    pub at_ms: u64,
    /// The operator (or "controller").
    pub who: String,
    /// What was asked or done.
    pub what: String,
    /// How it ended.
    pub outcome: String,
}

/// Appends to the facility audit log, keeping the newest [`MAX_AUDIT`].
pub fn audit(st: &mut FacilityState, at_ms: u64, who: &str, what: String, outcome: String) {
    if st.audit.len() >= MAX_AUDIT {
        st.audit.remove(0);
    }
    st.audit.push(AuditRecord { at_ms, who: who.to_string(), what, outcome });
}

/// Where a run goes: (source, target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The service's node now.
    pub from: NodeName,
    /// Where it ends.
    pub to: NodeName,
}

/// The target a run names or implies, if any can be known.
fn target(st: &FacilityState, req: &RunRequest) -> Option<NodeName> {
    if let Some(t) = req.params.get("to") {
        return Some(t.clone());
    }
    match req.action {
        Action::Migrate | Action::Takeover => st.vms.get(&req.service).and_then(|v| v.partner.clone()),
        Action::Failback => st.failback_to.get(&req.service).cloned(),
    }
}

fn gate_allow_list(st: &FacilityState, req: &RunRequest) -> Result<(), String> {
    let doc = st
        .runbooks
        .get(&req.service)
        .ok_or_else(|| format!("service {} has no runbooks (no allow-list)", req.service))?;
    if !doc.allow.operators.contains_key(&req.operator) {
        return Err(format!("operator {} is not on {}'s allow-list", req.operator, req.service));
    }
    let hosts = [st.vms.get(&req.service).map(|v| v.node.clone()), target(st, req)];
    for h in hosts.into_iter().flatten() {
        if !doc.allow.hosts.contains(&h) {
            return Err(format!(
                "host {h} is not on {}'s allow-list (hosts: {})",
                req.service,
                doc.allow.hosts.join(", ")
            ));
        }
    }
    Ok(())
}

fn gate_state(st: &FacilityState, req: &RunRequest) -> Result<Plan, String> {
    let svc = &req.service;
    let a = req.action.name();
    let doc = st.runbooks.get(svc).ok_or_else(|| format!("{svc} has no runbooks"))?;
    if !doc.actions.contains_key(&req.action) {
        return Err(format!("{svc}'s runbooks have no {a} action"));
    }
    let vm = st.vms.get(svc).ok_or_else(|| format!("{svc} is not a VM of the facility"))?;
    if !vm.spec.protected {
        return Err(format!("{svc} is not protected: runbooks need its replica"));
    }
    if let Some(i) = st.intent_for(svc) {
        return Err(format!("{svc} is busy: intent #{} ({:?}) is working on it", i.id, i.kind));
    }
    if let Some(r) = st.runs.iter().find(|r| r.request.service == *svc && r.state == RunState::Running) {
        return Err(format!("{svc} is busy: run {} ({}) is under way", r.id, r.request.action.name()));
    }
    let from = vm.node.clone();
    let to = target(st, req);
    let node_state = |n: &str| st.nodes.get(n).map(|r| r.state.clone());
    let ran_here = matches!(vm.state, VmState::Running)
        || matches!(&vm.state, VmState::Waiting(w) if w.starts_with("stopped by run"));
    match req.action {
        Action::Migrate | Action::Failback => {
            if node_state(&from) != Some(NodeState::Active) || !ran_here {
                return Err(format!("{a} needs {svc} running on an active node; it is {:?} on {from}", vm.state));
            }
            let to = to.ok_or_else(|| match req.action {
                Action::Failback => format!("no takeover moved {svc}: there is nowhere to fail back to"),
                _ => format!("{svc} has no replica partner: name a target with to=NODE"),
            })?;
            if to == from {
                return Err(format!("{svc} already runs on {to}"));
            }
            if node_state(&to) != Some(NodeState::Active) {
                return Err(format!("target {to} is not an active node ({:?})", node_state(&to)));
            }
            let need = crate::model::Capacity::of(vm.spec.res);
            let mut hypo = st.clone();
            if let Some(v) = hypo.vms.get_mut(svc) {
                // Its replica on the target becomes its disk.
                if v.partner.as_deref() == Some(to.as_str()) {
                    v.partner = None;
                }
            }
            if !crate::placement::fits(&hypo, &to, need) {
                return Err(format!("target {to} has no room for {svc}"));
            }
            Ok(Plan { from, to })
        }
        Action::Takeover => {
            if node_state(&from) != Some(NodeState::Dead) {
                return Err(format!(
                    "takeover needs {svc}'s node {from} declared dead; it is {:?} (use migrate for a planned move)",
                    node_state(&from)
                ));
            }
            let partner = vm.partner.clone().ok_or_else(|| format!("{svc} has no replica to take over from"))?;
            let to = to.unwrap_or_else(|| partner.clone());
            if to != partner {
                return Err(format!("only {partner} holds {svc}'s replica; takeover must go there, not {to}"));
            }
            if node_state(&to) != Some(NodeState::Active) {
                return Err(format!("the replica's node {to} is not active ({:?})", node_state(&to)));
            }
            Ok(Plan { from, to })
        }
    }
}

fn gate_schema(st: &FacilityState, req: &RunRequest) -> Result<(), String> {
    let doc = st.runbooks.get(&req.service).ok_or_else(|| format!("{} has no runbooks", req.service))?;
    runbook::validate(doc).map_err(|e| format!("runbook: {e}"))?;
    runbook::validate_params(req.action, &req.params).map_err(|e| format!("parameters: {e}"))
}

fn gate_auth(st: &FacilityState, req: &RunRequest, signature: &str, now_ms: u64) -> Result<(), String> {
    use ed25519_dalek::Verifier;
    let doc = st.runbooks.get(&req.service).ok_or_else(|| format!("{} has no runbooks", req.service))?;
    let key = doc
        .allow
        .operators
        .get(&req.operator)
        .ok_or_else(|| format!("operator {} has no key", req.operator))
        .and_then(|k| runbook::parse_public_key(k))?;
    let sig = runbook::decode_hex::<64>(signature).ok_or("the signature is not 128 hex digits")?;
    key.verify(&req.signing_bytes(), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| format!("the signature does not verify with {}'s registered key", req.operator))?;
    if now_ms.abs_diff(req.issued_ms) > FRESH_MS {
        return Err(format!(
            "the request was signed {} s away from the controller's clock (limit {} s): sign it again",
            now_ms.abs_diff(req.issued_ms) / 1000,
            FRESH_MS / 1000
        ));
    }
    if st.nonces.iter().any(|(n, _)| *n == req.nonce) {
        return Err("this signed request was already used (replayed nonce)".into());
    }
    Ok(())
}

/// Checks a recorded run's gates, in order, against the stored state.
pub fn check_gates(st: &FacilityState, run: &Run, now_ms: u64) -> Result<Plan, Refusal> {
    let req = &run.request;
    gate_allow_list(st, req).map_err(|w| Refusal::new(1, w))?;
    let plan = gate_state(st, req).map_err(|w| Refusal::new(2, w))?;
    gate_schema(st, req).map_err(|w| Refusal::new(3, w))?;
    gate_auth(st, req, &run.signature, now_ms).map_err(|w| Refusal::new(4, w))?;
    Ok(plan)
}

/// The steps of a run, copied from the runbook when its gates pass.
pub fn steps_of(st: &FacilityState, req: &RunRequest) -> Vec<RunStep> {
    let specs = st.runbooks.get(&req.service).and_then(|d| d.actions.get(&req.action)).cloned().unwrap_or_default();
    specs
        .into_iter()
        .map(|s| RunStep {
            step: s.step,
            on_failure: s.on_failure,
            spec: Some(s),
            status: StepStatus::Pending,
            attempts: 0,
            started_ms: None,
            ended_ms: None,
            attempt_ms: None,
            detail: String::new(),
            log: Vec::new(),
        })
        .collect()
}

/// Remembers a used nonce, forgetting those past freshness; false when the
/// table is full of fresh ones (then the run is refused).
pub fn remember_nonce(st: &mut FacilityState, nonce: u64, now_ms: u64) -> bool {
    st.nonces.retain(|(_, at)| now_ms.saturating_sub(*at) <= 2 * FRESH_MS);
    if st.nonces.len() >= MAX_NONCES {
        return false;
    }
    st.nonces.push((nonce, now_ms));
    true
}

/// Drops the oldest finished runs beyond [`MAX_RUNS`].
pub fn trim_runs(st: &mut FacilityState) {
    while st.runs.len() > MAX_RUNS {
        match st.runs.iter().position(|r| r.state.finished()) {
            Some(i) => {
                st.runs.remove(i);
            }
            None => break,
        }
    }
}
