//! The controller's side of runbook runs: recording signed requests,
//! checking their gates (no node command before all four pass), and
//! carrying the steps out with their failure policies, one store save per
//! step boundary so a controller that takes over resumes at a defined step.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::driver::{DriverError, NodeDriver};
use crate::engine::{unix_ms, ControlError, Controller};
use crate::locks::Acquire;
use crate::model::{NodeAddr, VmState};
use crate::replication::{Pair, Replicator};
use crate::rollout;
use crate::run::{self, Run, RunRequest, RunState, StepStatus};
use crate::runbook::{self, Action, RunbookDoc, StepKind};
use crate::store::Store;
use crate::{filters, placement};

/// What one attempt of a step came to.
enum Outcome {
    /// Done; the detail says what happened.
    Done(String),
    /// Not yet (a verify waiting for health): look again next round.
    Wait(String),
    /// Failed; the policy decides.
    Fail(String),
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl<D: NodeDriver, S: Store> Controller<D, S> {
    /// Stores a service's runbooks after validating the document (a
    /// replacement of an older one is allowed while no run uses it).
    pub fn set_runbook(&mut self, text: &str, who: &str) -> Result<String, ControlError> {
        let doc = RunbookDoc::parse(text).map_err(ControlError::Invalid)?;
        let svc = doc.service.clone();
        let vm = self.state.vms.get(&svc).ok_or_else(|| ControlError::Invalid(format!("no VM named {svc}")))?;
        if !vm.spec.protected {
            return Err(ControlError::Invalid(format!("{svc} is not protected: its runbooks would have no replica")));
        }
        if let Some(r) = self.state.run_for(&svc) {
            return Err(ControlError::Invalid(format!("run {} is under way on {svc}; set the runbook after it", r.id)));
        }
        if self.state.runbooks.len() >= rollout::MAX_SERVICES && !self.state.runbooks.contains_key(&svc) {
            return Err(ControlError::Invalid(format!("at most {} services may have runbooks", rollout::MAX_SERVICES)));
        }
        let actions: Vec<&str> = doc.actions.keys().map(|a| a.name()).collect();
        let what = format!("runbook for {svc} stored ({})", actions.join(", "));
        self.state.runbooks.insert(svc, doc);
        run::audit(&mut self.state, unix_ms(), who, what.clone(), "ok".into());
        self.save()?;
        Ok(what)
    }

    /// Records an operator's signed run request; the leading controller
    /// checks its gates at its next round. Returns the run's id.
    pub fn request_run(&mut self, req: RunRequest, signature: String) -> Result<u64, ControlError> {
        let waiting = self.state.runs.iter().filter(|r| r.state == RunState::Requested).count();
        if waiting >= run::MAX_REQUESTED {
            return Err(ControlError::Invalid(format!(
                "{waiting} runs already wait for their gates (limit {}); try again shortly",
                run::MAX_REQUESTED
            )));
        }
        if req.service.len() > runbook::MAX_NAME * 2
            || req.operator.len() > runbook::MAX_NAME * 2
            || req.params.len() > 8
            || signature.len() > 256
        {
            return Err(ControlError::Invalid("run request: field too long".into()));
        }
        let id = self.state.next_run.max(1);
        self.state.next_run = id.saturating_add(1);
        self.state.runs.push(Run::requested(id, req, signature, unix_ms()));
        run::trim_runs(&mut self.state);
        self.save()?;
        Ok(id)
    }

    /// One round of runs: gates for new requests, steps for running ones.
    pub(crate) fn run_runs(&mut self, now: Instant) -> Result<(), ControlError> {
        let ids: Vec<(u64, RunState)> = self.state.runs.iter().map(|r| (r.id, r.state.clone())).collect();
        for (id, state) in ids {
            match state {
                RunState::Requested => self.gate_run(id, now)?,
                RunState::Running => match self.advance_run(id, now) {
                    Ok(()) => {}
                    Err(e @ (ControlError::Store(_) | ControlError::Halted)) => return Err(e),
                    Err(e) => self.log(now, format!("run {id}: {e}; retried next round")),
                },
                _ => {}
            }
        }
        Ok(())
    }

    fn run_mut(&mut self, id: u64) -> Option<&mut Run> {
        self.state.runs.iter_mut().find(|r| r.id == id)
    }

    fn gate_run(&mut self, id: u64, now: Instant) -> Result<(), ControlError> {
        let Some(r) = self.state.runs.iter().find(|r| r.id == id).cloned() else {
            return Ok(());
        };
        let at = unix_ms();
        let verdict = run::check_gates(&self.state, &r, at);
        let nonce_ok = run::remember_nonce(&mut self.state, r.request.nonce, at);
        let req = r.request.clone();
        let what = format!("run {id} {} {} {:?}", req.action.name(), req.service, req.params);
        let verdict = match verdict {
            Ok(_) if !nonce_ok => Err(run::Refusal {
                gate: 4,
                name: "authentication".into(),
                why: format!(
                    "too many signed requests in the last {} s (limit {})",
                    2 * run::FRESH_MS / 1000,
                    run::MAX_NONCES
                ),
            }),
            v => v,
        };
        match verdict {
            Err(refusal) => {
                let line = format!("refused at gate {} ({}): {}", refusal.gate, refusal.name, refusal.why);
                if let Some(x) = self.run_mut(id) {
                    x.state = RunState::Refused(refusal);
                    x.finished_ms = Some(at);
                }
                run::audit(&mut self.state, at, &req.operator, what, line.clone());
                self.save()?;
                self.log(now, format!("run {id}: {line}"));
            }
            Ok(plan) => {
                let steps = run::steps_of(&self.state, &req);
                let source_epoch = self.state.vms.get(&req.service).map_or(0, |v| v.epoch);
                if let Some(x) = self.run_mut(id) {
                    x.state = RunState::Running;
                    x.steps = steps;
                    x.from = Some(plan.from.clone());
                    x.to = Some(plan.to.clone());
                    x.source_epoch = source_epoch;
                    x.started_ms = Some(at);
                }
                if let Some(v) = self.state.vms.get_mut(&req.service) {
                    v.state = VmState::Moving;
                }
                // Background replication stops for the run; a batch it
                // still held would be lost, so the primary resends all.
                if self.repl.holds_retry(&req.service) {
                    if let Ok(a) = self.addr(&plan.from) {
                        let _ = self.driver.replica_resync(&a, &req.service);
                    }
                }
                self.repl.retain(|v| v != req.service);
                run::audit(
                    &mut self.state,
                    at,
                    &req.operator,
                    what,
                    format!("gates passed: {} -> {}", plan.from, plan.to),
                );
                self.save()?;
                self.log(
                    now,
                    format!(
                        "run {id}: gates passed (allow-list, state, schema, authentication): {} {} from {} to {}",
                        req.action.name(),
                        req.service,
                        plan.from,
                        plan.to
                    ),
                );
            }
        }
        Ok(())
    }

    /// Runs the steps of run `id` until one waits, retries later, or the run ends.
    fn advance_run(&mut self, id: u64, now: Instant) -> Result<(), ControlError> {
        loop {
            let Some(r) = self.state.runs.iter().find(|r| r.id == id).cloned() else {
                return Ok(());
            };
            if r.state != RunState::Running {
                return Ok(());
            }
            let i = r.cursor;
            let Some(step) = r.steps.get(i).cloned() else {
                return self.end_run(id, None, now);
            };
            let n = r.steps.len();
            let label = format!("run {id} step {}/{n} {}", i + 1, step.step);
            let at = unix_ms();
            match step.status {
                StepStatus::Pending => {
                    if let Some(s) = self.run_mut(id).and_then(|x| x.steps.get_mut(i)) {
                        s.status = StepStatus::Running;
                        s.attempts = 1;
                        s.started_ms = Some(at);
                        s.attempt_ms = Some(at);
                        s.note(format!("attempt 1 started at {at}"));
                    }
                    self.started_here.insert((id, i));
                    self.save()?;
                    self.log(now, format!("{label}: started"));
                }
                StepStatus::Running if !self.started_here.contains(&(id, i)) => {
                    // A controller died in this step.
                    if !step.step.repeatable() {
                        let why =
                            "interrupted by a controller failover; not repeated (a tenant notice goes at most once)";
                        if let Some(x) = self.run_mut(id) {
                            if let Some(s) = x.steps.get_mut(i) {
                                s.status = StepStatus::Skipped;
                                s.ended_ms = Some(at);
                                s.detail = why.into();
                            }
                            x.cursor = i + 1;
                        }
                        self.save()?;
                        self.log(now, format!("{label}: {why}"));
                        continue;
                    }
                    self.started_here.insert((id, i));
                    if let Some(s) = self.run_mut(id).and_then(|x| x.steps.get_mut(i)) {
                        s.note("resumed by a new controller: run again (it checks the nodes first)".into());
                    }
                    self.log(now, format!("{label}: resumed after a controller failover"));
                }
                StepStatus::Running => {}
                _ => {
                    // Finished steps only move the cursor.
                    if let Some(x) = self.run_mut(id) {
                        x.cursor = i + 1;
                    }
                    continue;
                }
            }
            if self.step_limit.is_some_and(|l| self.steps_done >= l) {
                return Err(ControlError::Halted);
            }
            let outcome = self.exec_run_step(id, i, now);
            self.steps_done = self.steps_done.saturating_add(1);
            let at = unix_ms();
            match outcome {
                Outcome::Done(detail) => {
                    let took = step.started_ms.map_or(0, |s| at.saturating_sub(s));
                    if let Some(x) = self.run_mut(id) {
                        if let Some(s) = x.steps.get_mut(i) {
                            s.status = StepStatus::Done;
                            s.ended_ms = Some(at);
                            s.detail = detail.clone();
                        }
                        x.cursor = i + 1;
                    }
                    self.save()?;
                    self.log(now, format!("{label}: done in {}: {detail}", secs(took)));
                }
                Outcome::Wait(why) => {
                    if let Some(s) = self.run_mut(id).and_then(|x| x.steps.get_mut(i)) {
                        s.detail = format!("waiting: {why}");
                    }
                    return Ok(());
                }
                Outcome::Fail(why) => {
                    let cur = self.state.runs.iter().find(|r| r.id == id).and_then(|r| r.steps.get(i)).cloned();
                    let attempts = cur.as_ref().map_or(1, |s| s.attempts);
                    let policy = step.on_failure;
                    if attempts <= policy.retries() {
                        if let Some(s) = self.run_mut(id).and_then(|x| x.steps.get_mut(i)) {
                            s.attempts = attempts + 1;
                            s.attempt_ms = Some(at);
                            s.note(format!("attempt {attempts} failed: {why}"));
                        }
                        self.save()?;
                        self.log(
                            now,
                            format!(
                                "{label}: attempt {attempts} failed: {why}; retrying ({attempts} of {})",
                                policy.retries()
                            ),
                        );
                        // The next attempt comes next round.
                        return Ok(());
                    }
                    let tries =
                        if policy.retries() > 0 { format!(" after {attempts} attempts") } else { String::new() };
                    if policy.warns() {
                        if let Some(x) = self.run_mut(id) {
                            if let Some(s) = x.steps.get_mut(i) {
                                s.status = StepStatus::Warned;
                                s.ended_ms = Some(at);
                                s.detail = why.clone();
                                s.note(format!("attempt {attempts} failed: {why}"));
                            }
                            x.cursor = i + 1;
                            x.warnings = x.warnings.saturating_add(1);
                        }
                        self.save()?;
                        self.log(now, format!("{label}: failed{tries}: {why}; warn: continuing"));
                    } else {
                        if let Some(s) = self.run_mut(id).and_then(|x| x.steps.get_mut(i)) {
                            s.status = StepStatus::Failed;
                            s.ended_ms = Some(at);
                            s.detail = why.clone();
                            s.note(format!("attempt {attempts} failed: {why}"));
                        }
                        self.log(now, format!("{label}: failed{tries}: {why}; die: run stops"));
                        return self.end_run(id, Some((i, why)), now);
                    }
                }
            }
        }
    }

    /// Ends run `id`: succeeded (`failed` None) or failed at step index.
    fn end_run(&mut self, id: u64, failed: Option<(usize, String)>, now: Instant) -> Result<(), ControlError> {
        let Some(r) = self.state.runs.iter().find(|r| r.id == id).cloned() else {
            return Ok(());
        };
        let at = unix_ms();
        let svc = r.request.service.clone();
        let (from, to) = (r.from.clone().unwrap_or_default(), r.to.clone().unwrap_or_default());
        let owner = if r.switched() { to.clone() } else { from.clone() };
        // Where the service stands: running where the facility places it,
        // or stopped by this run (the operator decides what next).
        let running = self
            .addr(&owner)
            .ok()
            .and_then(|a| self.driver.status(&a).ok())
            .is_some_and(|rep| rep.vm(&svc).is_some_and(|v| v.running));
        if !r.switched() {
            // Copies made for a target that never took over: the old
            // partner missed those blocks, so it gets them all again.
            let partner = self.state.vms.get(&svc).and_then(|v| v.partner.clone());
            if let Ok(a) = self.addr(&from) {
                let _ = self.driver.replica_resync(&a, &svc);
            }
            if partner.as_deref() != Some(to.as_str()) && !to.is_empty() {
                if let Ok(t) = self.addr(&to) {
                    let holds = self.driver.status(&t).is_ok_and(|rep| rep.replica(&svc).is_some());
                    if holds {
                        let _ = self.driver.replica_drop(&t, &svc);
                    }
                }
            }
        }
        let took = r.started_ms.map_or(0, |s| at.saturating_sub(s));
        let (state, line) = match &failed {
            None => {
                let w = if r.warnings > 0 { format!(" with {} warning(s)", r.warnings) } else { String::new() };
                (RunState::Succeeded, format!("run {id} succeeded{w} in {}", secs(took)))
            }
            Some((i, why)) => {
                let name = r.steps.get(*i).map_or("?", |s| s.step.name());
                (
                    RunState::Failed { step: i + 1, why: why.clone() },
                    format!("run {id} failed at step {} ({name}): {why}", i + 1),
                )
            }
        };
        if let Some(x) = self.run_mut(id) {
            x.state = state;
            x.finished_ms = Some(at);
            let cursor = x.cursor;
            for s in x.steps.iter_mut().skip(cursor + 1) {
                if s.status == StepStatus::Pending {
                    s.status = StepStatus::Skipped;
                }
            }
        }
        if let Some(v) = self.state.vms.get_mut(&svc) {
            v.state = if running || failed.is_none() {
                VmState::Running
            } else {
                VmState::Waiting(format!("stopped by run {id}, which failed: run migrate or failback, or start it"))
            };
        }
        if r.switched() {
            self.remove_stale_source(&svc, &from, r.epoch, now);
        }
        if failed.is_none() {
            match r.request.action {
                Action::Takeover => {
                    self.state.failback_to.insert(svc.clone(), from.clone());
                }
                Action::Failback => {
                    self.state.failback_to.remove(&svc);
                }
                Action::Migrate => {}
            }
        }
        let what = format!("run {id} {} {}", r.request.action.name(), svc);
        run::audit(&mut self.state, at, &r.request.operator, what, line.clone());
        run::trim_runs(&mut self.state);
        self.save()?;
        self.log(now, line);
        Ok(())
    }

    /// After a switch, the old primary's fenced copy goes unless it became
    /// the replica's home (then replicate already replaced it).
    fn remove_stale_source(&mut self, svc: &str, from: &str, epoch: u64, now: Instant) {
        let partner = self.state.vms.get(svc).and_then(|v| v.partner.clone());
        if partner.as_deref() == Some(from) || !self.state.is_active(from) {
            return;
        }
        let Ok(a) = self.addr(from) else { return };
        let stale = self.driver.status(&a).is_ok_and(|rep| rep.vm(svc).is_some_and(|v| v.epoch < epoch));
        if stale {
            match self.driver.destroy_vm(&a, svc) {
                Ok(()) => self.log(now, format!("{svc}: removed the fenced copy on {from}")),
                Err(e) => self.log(now, format!("{svc}: the fenced copy on {from} stays ({e}); rejoin cleans it")),
            }
        }
    }

    fn exec_run_step(&mut self, id: u64, i: usize, now: Instant) -> Outcome {
        match self.try_run_step(id, i, now) {
            Ok(o) => o,
            // Another writer (an operator's command) saved first: the state
            // was reloaded; the attempt is made again, not counted.
            Err(ControlError::Store(crate::store::StoreError::Conflict { .. })) => {
                Outcome::Wait("the store changed under the step; trying again".into())
            }
            Err(e) => Outcome::Fail(e.to_string()),
        }
    }

    fn try_run_step(&mut self, id: u64, i: usize, now: Instant) -> Result<Outcome, ControlError> {
        let r = self
            .state
            .runs
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| ControlError::Invalid(format!("run {id} vanished")))?;
        let step = r.steps.get(i).cloned().ok_or_else(|| ControlError::Invalid(format!("run {id} has no step {i}")))?;
        let svc = r.request.service.clone();
        let rec = self
            .state
            .vms
            .get(&svc)
            .cloned()
            .ok_or_else(|| ControlError::Invalid(format!("{svc} is not in the facility")))?;
        let from = self.addr(r.from.as_deref().unwrap_or_default())?;
        let to = self.addr(r.to.as_deref().unwrap_or_default())?;
        let takeover = r.request.action == Action::Takeover;
        let d = &self.driver;
        let cfg = self.cfg;
        let out = match step.step {
            StepKind::Stop => match d.status(&from) {
                Err(DriverError::Unreachable(_)) if takeover => Outcome::Done(format!(
                    "{} does not answer; it stopped {svc} itself when its fencing lease ran out",
                    from.name
                )),
                Err(e) => Outcome::Fail(format!("{}: {e}", from.name)),
                Ok(rep) if rep.vm(&svc).is_some_and(|v| v.running) => {
                    d.stop_vm(&from, &svc).map_err(Self::node_err(&from, &format!("stopping {svc}")))?;
                    Outcome::Done(format!("stopped on {}", from.name))
                }
                Ok(_) => Outcome::Done(format!("not running on {}", from.name)),
            },
            StepKind::Replicate if !r.after_switch(i) => {
                self.make_replica(&from, &to, &rec.spec, rec.instance, r.source_epoch)?;
                let pair = Pair { vm: svc.clone(), primary: from.clone(), partner: to.clone(), epoch: r.source_epoch };
                match Replicator::drain(d, &pair, cfg.replica_blocks, cfg.catch_up_pulls) {
                    Ok(n) => Outcome::Done(format!("replica on {} up to date ({n} blocks copied)", to.name)),
                    // Still busy: the snapshot after the stop finishes it.
                    Err(DriverError::Other(_)) => Outcome::Done(format!(
                        "replica on {} catching up ({} pulls done; the rest goes with the snapshot)",
                        to.name, cfg.catch_up_pulls
                    )),
                    Err(e) => Outcome::Fail(format!("copying to {}: {e}", to.name)),
                }
            }
            StepKind::Replicate => self.replicate_after_switch(&r, &rec.spec, &to, now)?,
            StepKind::Snapshot => {
                let rep = d.status(&from).map_err(Self::node_err(&from, "checking before the snapshot"))?;
                if rep.vm(&svc).is_some_and(|v| v.running) {
                    return Ok(Outcome::Fail(format!(
                        "{svc} still runs on {}: the snapshot needs it stopped",
                        from.name
                    )));
                }
                self.make_replica(&from, &to, &rec.spec, rec.instance, r.source_epoch)?;
                let pair = Pair { vm: svc.clone(), primary: from.clone(), partner: to.clone(), epoch: r.source_epoch };
                let n = Replicator::drain(d, &pair, cfg.replica_blocks, cfg.final_drain_pulls)
                    .map_err(Self::node_err(&from, &format!("final copy of {svc}")))?;
                Outcome::Done(format!("{n} blocks copied with {svc} stopped: the replica on {} is complete", to.name))
            }
            StepKind::SwitchLock => self.switch_lock(id, &r, &from, &to)?,
            StepKind::Start => {
                let epoch = if r.switched() { r.epoch } else { rec.epoch };
                let rep = d.status(&to).map_err(Self::node_err(&to, "checking before start"))?;
                if rep.vm(&svc).is_some_and(|v| v.running && v.epoch == epoch) {
                    Outcome::Done(format!("already running on {} at epoch {epoch}", to.name))
                } else {
                    d.start_vm(&to, &svc, epoch).map_err(Self::node_err(&to, &format!("starting {svc}")))?;
                    Outcome::Done(format!("started on {} at epoch {epoch}", to.name))
                }
            }
            StepKind::Verify => {
                let node = if r.switched() { &to } else { &from };
                let spec = step.spec.clone().unwrap_or(runbook::StepSpec {
                    step: StepKind::Verify,
                    on_failure: step.on_failure,
                    services: Vec::new(),
                    timeout_s: None,
                    text: None,
                });
                let limit = u64::from(spec.timeout_s.unwrap_or(runbook::DEFAULT_VERIFY_TIMEOUT_S)) * 1000;
                let seen = d
                    .vm_health(node, &svc)
                    .map_err(|e| e.to_string())
                    .and_then(|h| rollout::healthy(&h, &spec.services));
                match seen {
                    Ok(what) => Outcome::Done(format!("healthy on {}: {what}", node.name)),
                    Err(why) => {
                        let waited = unix_ms().saturating_sub(step.attempt_ms.unwrap_or(0));
                        if waited < limit {
                            Outcome::Wait(why)
                        } else {
                            Outcome::Fail(format!("not healthy on {} within {} s: {why}", node.name, limit / 1000))
                        }
                    }
                }
            }
            StepKind::Filters => {
                let mut clusters: BTreeSet<u32> = filters::cluster_members(&self.state).into_keys().collect();
                clusters.insert(rec.spec.cluster);
                let rep = filters::blast(d, &self.state, &clusters, std::slice::from_ref(&from.name));
                let owner = if r.switched() { &to.name } else { &from.name };
                match rep.failed.iter().find(|(n, _)| n == owner) {
                    Some((n, e)) => Outcome::Fail(format!("filters not set on {n}: {e}")),
                    None => Outcome::Done(format!(
                        "{} clusters on {} nodes in {}ms{}",
                        clusters.len(),
                        rep.nodes_ok,
                        rep.wall.as_millis(),
                        if rep.failed.is_empty() {
                            String::new()
                        } else {
                            format!(" ({} nodes missed it)", rep.failed.len())
                        }
                    )),
                }
            }
            StepKind::Notify => {
                let node = if r.switched() { &to } else { &from };
                let text = step.spec.as_ref().and_then(|s| s.text.clone()).unwrap_or_else(|| {
                    format!(
                        "{svc}: {} run {id} by operator {} moved it to another node",
                        r.request.action.name(),
                        r.request.operator
                    )
                });
                d.notify_tenant(node, &svc, &text).map_err(Self::node_err(node, "notifying the tenant"))?;
                Outcome::Done(format!("tenant notified through {}", node.name))
            }
        };
        Ok(out)
    }

    /// switch_lock: the lock moves to the target at a new epoch (recorded
    /// before any node hears of it), the old copy is fenced, the target's
    /// replica promoted.
    fn switch_lock(&mut self, id: u64, r: &Run, from: &NodeAddr, to: &NodeAddr) -> Result<Outcome, ControlError> {
        let svc = r.request.service.clone();
        let mut epoch = r.epoch;
        if epoch == 0 {
            let rec = self.state.vms.get(&svc).cloned().ok_or_else(|| ControlError::Invalid(format!("no VM {svc}")))?;
            epoch = match self.state.locks.acquire(&svc, rec.instance, &to.name) {
                Acquire::Granted { epoch } | Acquire::TakenOver { epoch, .. } => epoch,
                Acquire::Refused { holder_instance, holder_node } => {
                    return Ok(Outcome::Fail(format!(
                        "volume {svc} is held by instance {holder_instance} on {holder_node}"
                    )))
                }
            };
            if let Some(x) = self.run_mut(id) {
                x.epoch = epoch;
            }
            let wanted = rollout::wanted_version(&self.state, &svc);
            if let Some(v) = self.state.vms.get_mut(&svc) {
                v.node = to.name.clone();
                v.epoch = epoch;
                if v.partner.as_deref() == Some(to.name.as_str()) {
                    v.partner = None;
                }
                if let Some((ver, img)) = wanted {
                    v.spec.version = Some(ver);
                    v.spec.image = img.image;
                    v.spec.initrd = img.initrd;
                    v.spec.cmdline = img.cmdline;
                }
            }
            self.save()?;
        }
        let rec = self.state.vms.get(&svc).cloned().ok_or_else(|| ControlError::Invalid(format!("no VM {svc}")))?;
        let d = &self.driver;
        let fenced = match d.fence_vm(from, &svc, epoch) {
            Ok(()) => format!("{} fenced", from.name),
            Err(DriverError::Unreachable(_)) if r.request.action == Action::Takeover => {
                format!("{} unreachable (fenced when it returns)", from.name)
            }
            Err(e) => return Ok(Outcome::Fail(format!("fencing {svc} on {}: {e}", from.name))),
        };
        let rep = d.status(to).map_err(Self::node_err(to, "checking before promotion"))?;
        if rep.vm(&svc).is_none_or(|v| v.instance != rec.instance) {
            d.promote_replica(to, &rec.spec, rec.instance, epoch)
                .map_err(Self::node_err(to, &format!("promoting the replica of {svc}")))?;
        }
        d.set_vm_image(to, &svc, &crate::driver::BootImage::of(&rec.spec))
            .map_err(Self::node_err(to, &format!("setting the image of {svc}")))?;
        Ok(Outcome::Done(format!(
            "lock of {svc}: {} -> {} at epoch {epoch}; {fenced}; replica on {} promoted",
            from.name, to.name, to.name
        )))
    }

    /// replicate after the switch: the service gets a replica on a partner
    /// again (the old primary when it is active, so a failback is quick).
    fn replicate_after_switch(
        &mut self,
        r: &Run,
        spec: &crate::model::VmPlacementSpec,
        to: &NodeAddr,
        now: Instant,
    ) -> Result<Outcome, ControlError> {
        let svc = spec.name.clone();
        let rec = self.state.vms.get(&svc).cloned().ok_or_else(|| ControlError::Invalid(format!("no VM {svc}")))?;
        let from = r.from.clone().unwrap_or_default();
        let old = rec.partner.clone();
        let partner = match &old {
            Some(p) if self.state.is_active(p) && *p != to.name => p.clone(),
            _ => {
                let mut hypo = self.state.clone();
                if let Some(v) = hypo.vms.get_mut(&svc) {
                    v.partner = None;
                }
                let prefer_source = r.request.action != Action::Takeover
                    && self.state.is_active(&from)
                    && placement::fits(&hypo, &from, crate::model::Capacity::disk_of(spec.res));
                if prefer_source {
                    from.clone()
                } else {
                    match placement::place_partner(&hypo, spec.res, &to.name) {
                        Ok(p) => p,
                        Err(e) => return Ok(Outcome::Fail(format!("no node can hold a replica of {svc}: {e}"))),
                    }
                }
            }
        };
        let p = self.addr(&partner)?;
        // The old primary still holds the fenced copy: it goes first.
        if partner == from {
            let rep = self.driver.status(&p).map_err(Self::node_err(&p, "checking before the replica"))?;
            if rep.vm(&svc).is_some_and(|v| v.epoch < r.epoch) {
                self.driver
                    .destroy_vm(&p, &svc)
                    .map_err(Self::node_err(&p, &format!("removing the fenced copy of {svc}")))?;
            }
        }
        self.make_replica(to, &p, spec, rec.instance, r.epoch)?;
        if let Some(v) = self.state.vms.get_mut(&svc) {
            v.partner = Some(partner.clone());
        }
        self.save()?;
        self.log(now, format!("{svc}: replica on {partner} (the full copy continues in the background)"));
        Ok(Outcome::Done(format!("new replica on {partner}; the copy continues in the background")))
    }

    /// Run `id` as last saved or loaded (operators' commands follow it).
    pub fn run(&self, id: u64) -> Option<&Run> {
        self.state.runs.iter().find(|r| r.id == id)
    }

    /// Whether node `n` is the target of a run under way (rejoin leaves its copies alone).
    pub(crate) fn run_targets(&self, n: &str, vm: &str) -> bool {
        self.state
            .runs
            .iter()
            .any(|r| r.state == RunState::Running && r.request.service == vm && r.to.as_deref() == Some(n))
    }
}
