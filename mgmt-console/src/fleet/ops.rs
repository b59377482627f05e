//! `bmctl facility` commands for runbooks, runs, services and rolling
//! upgrades. Each records what the operator asks in the store and then
//! follows the running controller's progress there, printing one line per
//! change; `cmd` parses and dispatches.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use facility::driver::NodeDriver;
use facility::engine::Controller;
use facility::rollout::RolloutState;
use facility::run::{Run, RunRequest, RunState, StepStatus};
use facility::runbook::{decode_hex, encode_hex, Action};
use facility::store::Store;
use serde_json::json;

/// How often a following command re-reads the store.
const FOLLOW: Duration = Duration::from_millis(250);

/// Exit status of a run a gate refused (and of a refused manual upgrade).
pub const EXIT_REFUSED: u8 = 2;
/// Exit status of a run that failed (a step died) or a failed rollout.
pub const EXIT_FAILED: u8 = 1;
/// Exit status when the run did not end within --wait.
pub const EXIT_TIMEOUT: u8 = 3;

fn emit(json_out: bool, line: &str) {
    let mut out = std::io::stdout().lock();
    if json_out {
        let _ = writeln!(out, "{}", json!({ "event": line }));
    } else {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// `bmctl facility operator-key`: a new ed25519 key in a file only its
/// owner reads; prints the public half for the runbook's allow-list.
pub fn operator_key(name: &str, out: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if !facility::runbook::valid_name(name) {
        bail!("operator name: 1-64 chars of A-Z a-z 0-9 . _ -");
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("no entropy: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", out.display()))?;
    writeln!(f, "{}", encode_hex(&seed))?;
    f.sync_all()?;
    println!("operator {name} public-key {}", encode_hex(key.verifying_key().as_bytes()));
    Ok(())
}

fn load_operator_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading operator key {}", path.display()))?;
    let seed = decode_hex::<32>(text.trim())
        .ok_or_else(|| anyhow!("{}: an operator key is 64 hex digits (bmctl facility operator-key)", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses `KEY=VALUE` run parameters.
fn parse_params(params: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in params {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("--param {p:?}: write KEY=VALUE"))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            bail!("--param {k} given twice");
        }
    }
    Ok(out)
}

/// What the operator asks for in `bmctl facility run`.
pub struct RunArgs<'a> {
    /// The service.
    pub service: &'a str,
    /// migrate, takeover, failback.
    pub action: &'a str,
    /// KEY=VALUE.
    pub params: &'a [String],
    /// The operator's name.
    pub operator: &'a str,
    /// The operator's key file.
    pub key: &'a Path,
    /// How long to follow.
    pub wait: Duration,
}

/// `bmctl facility run`: signs and records the request, then follows the
/// run; the exit status says how it ended.
pub fn run<D: NodeDriver, S: Store>(
    c: &mut Controller<D, S>,
    a: &RunArgs<'_>,
    json_out: bool,
    retry: impl Fn(&mut Controller<D, S>, &RunRequest, &str) -> Result<u64>,
) -> Result<u8> {
    let action =
        Action::parse(a.action).ok_or_else(|| anyhow!("action {:?}: one of migrate, takeover, failback", a.action))?;
    let key = load_operator_key(a.key)?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow!("no entropy: {e}"))?;
    let req = RunRequest {
        service: a.service.to_string(),
        action,
        params: parse_params(a.params)?,
        operator: a.operator.to_string(),
        nonce: u64::from_le_bytes(nonce),
        issued_ms: crate::http::now_ms(),
    };
    let sig = encode_hex(&key.sign(&req.signing_bytes()).to_bytes());
    let id = retry(c, &req, &sig)?;
    emit(json_out, &format!("run {id}: recorded; waiting for the controller to check its gates"));
    follow_run(c, id, a.wait, json_out)
}

/// Lines for what changed in a run since `seen`.
fn run_lines(r: &Run, seen: Option<&Run>) -> Vec<String> {
    let id = r.id;
    let mut out = Vec::new();
    let was = seen.map(|s| &s.state);
    if r.state != RunState::Requested && was == Some(&RunState::Requested) {
        match &r.state {
            RunState::Refused(f) => out.push(format!("run {id}: refused at gate {} ({}): {}", f.gate, f.name, f.why)),
            _ => out.push(format!(
                "run {id}: gates passed (allow-list, state, schema, authentication): {} {} from {} to {}",
                r.request.action.name(),
                r.request.service,
                r.from.as_deref().unwrap_or("?"),
                r.to.as_deref().unwrap_or("?")
            )),
        }
    }
    let n = r.steps.len();
    for (i, s) in r.steps.iter().enumerate() {
        let old = seen.and_then(|x| x.steps.get(i));
        if old.is_some_and(|o| o.status == s.status && o.attempts == s.attempts) {
            continue;
        }
        let label = format!("run {id} step {}/{n} {}", i + 1, s.step);
        let old_attempts = old.map_or(0, |o| o.attempts);
        // Retries seen since the last look.
        for k in old_attempts.max(1)..s.attempts {
            let why = s.log.iter().rev().find(|l| l.starts_with(&format!("attempt {k} failed"))).cloned();
            let why = why.unwrap_or_else(|| format!("attempt {k} failed"));
            out.push(format!("{label}: {why}; retrying ({k} of {})", s.on_failure.retries()));
        }
        let took = match (s.started_ms, s.ended_ms) {
            (Some(a), Some(b)) => format!("{:.1}s", b.saturating_sub(a) as f64 / 1000.0),
            _ => String::new(),
        };
        match s.status {
            StepStatus::Running if old_attempts == 0 => out.push(format!("{label}: started")),
            StepStatus::Done => {
                if old_attempts == 0 {
                    out.push(format!("{label}: started"));
                }
                out.push(format!("{label}: done in {took}: {}", s.detail));
            }
            StepStatus::Warned => {
                out.push(format!("{label}: failed after {} attempt(s): {}; warn: continuing", s.attempts, s.detail))
            }
            StepStatus::Failed => {
                out.push(format!("{label}: failed after {} attempt(s): {}; die: run stops", s.attempts, s.detail))
            }
            StepStatus::Skipped if !s.detail.is_empty() => out.push(format!("{label}: skipped: {}", s.detail)),
            _ => {}
        }
    }
    if r.state.finished() && !seen.is_some_and(|x| x.state.finished()) {
        let took = r.finished_ms.unwrap_or(0).saturating_sub(r.started_ms.unwrap_or(r.requested_ms));
        let secs = took as f64 / 1000.0;
        match &r.state {
            RunState::Succeeded if r.warnings > 0 => {
                out.push(format!("run {id} succeeded with {} warning(s) in {secs:.1}s", r.warnings))
            }
            RunState::Succeeded => out.push(format!("run {id} succeeded in {secs:.1}s")),
            RunState::Failed { step, why } => {
                let name = r.steps.get(step.saturating_sub(1)).map_or("?", |s| s.step.name());
                out.push(format!("run {id} failed at step {step} ({name}): {why}"));
            }
            _ => {}
        }
    }
    out
}

fn follow_run<D: NodeDriver, S: Store>(
    c: &mut Controller<D, S>,
    id: u64,
    wait: Duration,
    json_out: bool,
) -> Result<u8> {
    let deadline = Instant::now() + wait;
    let mut seen: Option<Run> = None;
    loop {
        c.refresh().map_err(|e| anyhow!("{e}"))?;
        let r = c.run(id).cloned().ok_or_else(|| anyhow!("run {id} is no longer in the store"))?;
        let base = seen.clone().unwrap_or_else(|| Run { state: RunState::Requested, steps: Vec::new(), ..r.clone() });
        for line in run_lines(&r, Some(&base)) {
            emit(json_out, &line);
        }
        if r.state.finished() {
            if json_out {
                println!("{}", serde_json::to_string(&r)?);
            }
            return Ok(match r.state {
                RunState::Succeeded => 0,
                RunState::Refused(_) => EXIT_REFUSED,
                _ => EXIT_FAILED,
            });
        }
        seen = Some(r);
        if Instant::now() > deadline {
            emit(
                json_out,
                &format!(
                    "run {id} has not finished within {} s (is `bmctl facility serve` running? `bmctl facility runs {id}`)",
                    wait.as_secs()
                ),
            );
            return Ok(EXIT_TIMEOUT);
        }
        std::thread::sleep(FOLLOW);
    }
}

/// `bmctl facility runs [ID]`.
pub fn runs(st: &facility::model::FacilityState, id: Option<u64>, json_out: bool) -> Result<()> {
    if let Some(id) = id {
        let r = st.runs.iter().find(|r| r.id == id).ok_or_else(|| anyhow!("no run {id} in the store"))?;
        if json_out {
            println!("{}", serde_json::to_string_pretty(r)?);
            return Ok(());
        }
        for line in run_lines(r, Some(&Run { state: RunState::Requested, steps: Vec::new(), ..r.clone() })) {
            println!("{line}");
        }
        for (i, s) in r.steps.iter().enumerate() {
            println!(
                "  {:>2} {:<12} {:<18} {:<8} attempts {} {}",
                i + 1,
                s.step.name(),
                s.on_failure.to_string(),
                format!("{:?}", s.status),
                s.attempts,
                s.detail
            );
        }
        return Ok(());
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&st.runs)?);
        return Ok(());
    }
    for r in &st.runs {
        let state = match &r.state {
            RunState::Refused(f) => format!("Refused at gate {} ({})", f.gate, f.name),
            RunState::Failed { step, .. } => format!("Failed at step {step}"),
            s => format!("{s:?}"),
        };
        println!(
            "run {} {} {} by {} {state} step {}/{} warnings {}",
            r.id,
            r.request.action.name(),
            r.request.service,
            r.request.operator,
            r.cursor.min(r.steps.len()),
            r.steps.len(),
            r.warnings
        );
    }
    Ok(())
}

/// `bmctl facility audit`.
pub fn audit(st: &facility::model::FacilityState, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&st.audit)?);
        return Ok(());
    }
    for a in &st.audit {
        println!("{} {} {}: {}", crate::view::utc(a.at_ms), a.who, a.what, a.outcome);
    }
    Ok(())
}

/// `bmctl facility service status`.
pub fn service_status(st: &facility::model::FacilityState, name: &str, json_out: bool) -> Result<()> {
    let svc = st.services.get(name).ok_or_else(|| anyhow!("no service named {name}"))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(svc)?);
        return Ok(());
    }
    println!(
        "service {name} version {} versions {}",
        svc.version,
        svc.versions.keys().cloned().collect::<Vec<_>>().join(",")
    );
    for v in st.vms.values().filter(|v| v.spec.service.as_deref() == Some(name)) {
        println!(
            "vm {} domain {} version {} on {} {:?}",
            v.spec.name,
            v.spec.domain.unwrap_or(0),
            v.spec.version.as_deref().unwrap_or("-"),
            v.node,
            v.state
        );
    }
    if let Some(r) = &svc.rollout {
        println!("rollout {} -> {} {:?} domain position {}/{}", r.from, r.to, r.state, r.position, r.domains.len());
    }
    for (vm, why) in &svc.healing {
        println!("healing {vm}: {why}");
    }
    Ok(())
}

/// Follows `name`'s rollout until it ends or `wait` passes.
pub fn follow_rollout<D: NodeDriver, S: Store>(
    c: &mut Controller<D, S>,
    name: &str,
    wait: Duration,
    json_out: bool,
) -> Result<u8> {
    let deadline = Instant::now() + wait;
    let mut printed = 0usize;
    loop {
        c.refresh().map_err(|e| anyhow!("{e}"))?;
        let r = c
            .state()
            .services
            .get(name)
            .and_then(|s| s.rollout.clone())
            .ok_or_else(|| anyhow!("service {name} has no rollout"))?;
        // The log holds every line a rollout of MAX_DOMAINS domains writes.
        for line in r.log.iter().skip(printed) {
            emit(json_out, &format!("rollout {name} {} -> {}: {line}", r.from, r.to));
        }
        printed = r.log.len();
        match &r.state {
            RolloutState::Done => {
                let per: Vec<String> =
                    r.domain_ms.iter().map(|(d, ms)| format!("domain {d} {:.1}s", *ms as f64 / 1000.0)).collect();
                emit(json_out, &format!("rollout {name} {} -> {} done ({})", r.from, r.to, per.join(", ")));
                return Ok(0);
            }
            RolloutState::Failed(why) => {
                emit(json_out, &format!("rollout {name} {} -> {} failed: {why}", r.from, r.to));
                return Ok(EXIT_FAILED);
            }
            _ => {}
        }
        if Instant::now() > deadline {
            emit(
                json_out,
                &format!(
                    "rollout {name} still under way after {} s (`bmctl facility service status {name}`)",
                    wait.as_secs()
                ),
            );
            return Ok(EXIT_TIMEOUT);
        }
        std::thread::sleep(FOLLOW);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_as_key_value_pairs_once_each() {
        let p = parse_params(&["to=n2".to_string()]).unwrap();
        assert_eq!(p.get("to").map(String::as_str), Some("n2"));
        assert!(parse_params(&["to".to_string()]).is_err());
        assert!(parse_params(&["to=a".to_string(), "to=b".to_string()]).is_err());
    }

    #[test]
    fn operator_keys_are_new_files_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("alice.key");
        operator_key("alice", &f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(load_operator_key(&f).is_ok());
        assert!(operator_key("alice", &f).is_err(), "never overwritten");
        std::fs::write(dir.path().join("bad"), "xyz").unwrap();
        assert!(load_operator_key(&dir.path().join("bad")).is_err());
    }
}
