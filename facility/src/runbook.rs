//! Disaster-recovery runbooks: per protected service, the ordered steps of
//! `migrate`, `takeover` and `failback`, each with a failure policy, and who
//! may run them against which nodes.
//!
//! A document is checked against the published schema
//! (`facility/runbook.schema.json`, printed by `bmctl facility runbook
//! schema`): strict serde types mirror it field for field, and [`validate`]
//! adds the bounds and the step order the types cannot say. Tests check the
//! schema file and this code agree on good and bad documents.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The published JSON schema of runbook documents.
pub const SCHEMA: &str = include_str!("../runbook.schema.json");

/// Largest runbook document accepted (bytes of JSON).
pub const MAX_DOC_BYTES: usize = 64 * 1024;
/// Steps in one action.
pub const MAX_STEPS: usize = 32;
/// Operators on one allow-list.
pub const MAX_OPERATORS: usize = 32;
/// Hosts on one allow-list.
pub const MAX_HOSTS: usize = 64;
/// Retries one step may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Longest a verify step may wait for health, seconds.
pub const MAX_VERIFY_TIMEOUT_S: u32 = 900;
/// Default bound of a verify step, seconds.
pub const DEFAULT_VERIFY_TIMEOUT_S: u32 = 120;
/// Services one verify step may name.
pub const MAX_VERIFY_SERVICES: usize = 16;
/// Longest notify text (the node's notice limit).
pub const MAX_NOTIFY_TEXT: usize = 256;
/// Longest name (service, operator, host, agent service).
pub const MAX_NAME: usize = 64;

/// What a runbook is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A planned move to another node while the primary is healthy.
    Migrate,
    /// The primary's node is gone: run from the replica.
    Takeover,
    /// Back to the node the last takeover left, once it has returned.
    Failback,
}

impl Action {
    /// Its name in documents and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Action::Migrate => "migrate",
            Action::Takeover => "takeover",
            Action::Failback => "failback",
        }
    }

    /// Parses a command-line action.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "migrate" => Some(Action::Migrate),
            "takeover" => Some(Action::Takeover),
            "failback" => Some(Action::Failback),
            _ => None,
        }
    }

    /// Run parameters this action takes.
    pub fn params(self) -> &'static [&'static str] {
        match self {
            Action::Migrate | Action::Takeover => &["to"],
            Action::Failback => &[],
        }
    }
}

/// One kind of step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Stop the service on its current node (takeover: make sure the lost
    /// primary does not run it).
    Stop,
    /// With the primary stopped, copy its last changed blocks: the target's
    /// replica becomes a complete point-in-time copy.
    Snapshot,
    /// Before the switch: copy the disk to the target while the service
    /// runs. After it: give the service a replica on a partner again.
    Replicate,
    /// Move the volume lock to the target at a new epoch, fence the old
    /// copy and promote the target's replica.
    SwitchLock,
    /// Start the service on the target at the new epoch.
    Start,
    /// Wait for the agent's heartbeat and the named services through the agent.
    Verify,
    /// Re-program every node's cluster filters.
    Filters,
    /// Tell the tenant.
    Notify,
}

impl StepKind {
    /// Its name in documents and logs.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Stop => "stop",
            StepKind::Snapshot => "snapshot",
            StepKind::Replicate => "replicate",
            StepKind::SwitchLock => "switch_lock",
            StepKind::Start => "start",
            StepKind::Verify => "verify",
            StepKind::Filters => "filters",
            StepKind::Notify => "notify",
        }
    }

    /// Whether a step interrupted by a controller failover is run again
    /// (every step checks the nodes first, so a repeat has no second
    /// effect) or not: a tenant must never get a notice twice.
    pub fn repeatable(self) -> bool {
        self != StepKind::Notify
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a failed step does to its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// The run stops here, failed.
    Die,
    /// The step is marked warned and the run goes on.
    Warn,
    /// Try again up to `times` more, then die or warn.
    Retry {
        /// Extra attempts.
        times: u32,
        /// After the last attempt: warn (true) or die.
        then_warn: bool,
    },
}

impl OnFailure {
    /// Parses `die`, `warn`, `retry N then die|warn`.
    pub fn parse(s: &str) -> Result<OnFailure, String> {
        let words: Vec<&str> = s.split(' ').collect();
        match words.as_slice() {
            ["die"] => Ok(OnFailure::Die),
            ["warn"] => Ok(OnFailure::Warn),
            ["retry", n, "then", end] => {
                let times: u32 = n
                    .parse()
                    .ok()
                    .filter(|t| (1..=MAX_RETRIES).contains(t) && !n.starts_with('0'))
                    .ok_or_else(|| format!("on_failure {s:?}: retry count must be 1 to {MAX_RETRIES}"))?;
                let then_warn = match *end {
                    "die" => false,
                    "warn" => true,
                    _ => return Err(format!("on_failure {s:?}: after retries, die or warn")),
                };
                Ok(OnFailure::Retry { times, then_warn })
            }
            _ => Err(format!("on_failure {s:?}: one of die, warn, \"retry N then die\", \"retry N then warn\"")),
        }
    }

    /// Extra attempts allowed.
    pub fn retries(self) -> u32 {
        match self {
            OnFailure::Retry { times, .. } => times,
            _ => 0,
        }
    }

    /// Whether the run goes on once the attempts are used up.
    pub fn warns(self) -> bool {
        matches!(self, OnFailure::Warn | OnFailure::Retry { then_warn: true, .. })
    }
}

impl fmt::Display for OnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnFailure::Die => f.write_str("die"),
            OnFailure::Warn => f.write_str("warn"),
            OnFailure::Retry { times, then_warn } => {
                write!(f, "retry {times} then {}", if *then_warn { "warn" } else { "die" })
            }
        }
    }
}

impl Serialize for OnFailure {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for OnFailure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OnFailure::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One step of an action, as written in the document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// What it does.
    pub step: StepKind,
    /// What its failure does to the run.
    pub on_failure: OnFailure,
    /// verify: agent services that must be up (none: the agent's heartbeat alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// verify: seconds to wait for health per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// notify: the tenant's notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Who may run a service's runbooks, against which nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// Operator name → ed25519 public key (64 hex digits) that signs their runs.
    pub operators: BTreeMap<String, String>,
    /// Nodes a run may act on (its source and its target).
    pub hosts: Vec<String>,
}

/// A service's runbooks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunbookDoc {
    /// The protected VM the runbooks are for.
    pub service: String,
    /// Who and where.
    pub allow: Allow,
    /// The steps of each action (an action not listed cannot be run).
    pub actions: BTreeMap<Action, Vec<StepSpec>>,
}

impl RunbookDoc {
    /// Parses and validates a document.
    pub fn parse(text: &str) -> Result<RunbookDoc, String> {
        if text.len() > MAX_DOC_BYTES {
            return Err(format!("runbook document is {} bytes; the limit is {MAX_DOC_BYTES}", text.len()));
        }
        let doc: RunbookDoc = serde_json::from_str(text).map_err(|e| format!("runbook document: {e}"))?;
        validate(&doc)?;
        Ok(doc)
    }

    /// Whether a takeover runbook exists: then the facility does not heal
    /// the service by itself when its node dies; an operator runs it.
    pub fn manual_takeover(&self) -> bool {
        self.actions.contains_key(&Action::Takeover)
    }
}

/// The name rule shared by services, operators, hosts and agent services.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Decodes a 64-hex-digit ed25519 public key.
pub fn parse_public_key(hex: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let bytes = decode_hex::<32>(hex).ok_or("an ed25519 public key is 64 hex digits")?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".to_string())
}

/// Fixed-size hex decoding (lower or upper case).
pub fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = char::from(*pair.first()?).to_digit(16)?;
        let lo = char::from(*pair.get(1)?).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Lower-case hex.
pub fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn position(steps: &[StepSpec], k: StepKind) -> Option<usize> {
    steps.iter().position(|s| s.step == k)
}

fn validate_steps(action: Action, steps: &[StepSpec]) -> Result<(), String> {
    let a = action.name();
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Err(format!("{a}: 1 to {MAX_STEPS} steps"));
    }
    for (i, s) in steps.iter().enumerate() {
        let at = format!("{a} step {} ({})", i + 1, s.step);
        if s.step != StepKind::Verify && (!s.services.is_empty() || s.timeout_s.is_some()) {
            return Err(format!("{at}: services and timeout_s belong to verify steps"));
        }
        if s.step != StepKind::Notify && s.text.is_some() {
            return Err(format!("{at}: text belongs to notify steps"));
        }
        if s.services.len() > MAX_VERIFY_SERVICES || !s.services.iter().all(|n| valid_name(n)) {
            return Err(format!(
                "{at}: at most {MAX_VERIFY_SERVICES} services, names of 1-{MAX_NAME} A-Z a-z 0-9 . _ -"
            ));
        }
        if s.timeout_s.is_some_and(|t| t == 0 || t > MAX_VERIFY_TIMEOUT_S) {
            return Err(format!("{at}: timeout_s must be 1 to {MAX_VERIFY_TIMEOUT_S}"));
        }
        if s.text.as_ref().is_some_and(|t| t.is_empty() || t.len() > MAX_NOTIFY_TEXT || t.chars().any(char::is_control))
        {
            return Err(format!("{at}: text must be 1 to {MAX_NOTIFY_TEXT} bytes without control characters"));
        }
    }
    for once in [StepKind::Stop, StepKind::Snapshot, StepKind::SwitchLock, StepKind::Start] {
        if steps.iter().filter(|s| s.step == once).count() > 1 {
            return Err(format!("{a}: {once} may appear only once"));
        }
    }
    let (Some(switch), Some(start)) = (position(steps, StepKind::SwitchLock), position(steps, StepKind::Start)) else {
        return Err(format!("{a}: needs a switch_lock step and a start step"));
    };
    if start < switch {
        return Err(format!("{a}: start must come after switch_lock"));
    }
    if let Some(v) = position(steps, StepKind::Verify) {
        if v < start {
            return Err(format!("{a}: verify must come after start (it checks the started service)"));
        }
    }
    match action {
        Action::Migrate | Action::Failback => {
            let (Some(stop), Some(snap)) = (position(steps, StepKind::Stop), position(steps, StepKind::Snapshot))
            else {
                return Err(format!(
                    "{a}: needs stop and snapshot steps (the copy must be taken with the service stopped)"
                ));
            };
            if !(stop < snap && snap < switch) {
                return Err(format!("{a}: the order must be stop, then snapshot, then switch_lock"));
            }
        }
        Action::Takeover => {
            if position(steps, StepKind::Snapshot).is_some() {
                return Err(format!("{a}: no snapshot step (the primary is gone: the replica is the data)"));
            }
            if position(steps, StepKind::Stop).is_some_and(|s| s > switch) {
                return Err(format!("{a}: stop must come before switch_lock"));
            }
        }
    }
    Ok(())
}

/// The checks the schema states in words: bounds, names, keys, step order.
pub fn validate(doc: &RunbookDoc) -> Result<(), String> {
    if !valid_name(&doc.service) {
        return Err(format!("service {:?}: 1-{MAX_NAME} chars of A-Z a-z 0-9 . _ -", doc.service));
    }
    if doc.allow.operators.is_empty() || doc.allow.operators.len() > MAX_OPERATORS {
        return Err(format!("allow.operators: 1 to {MAX_OPERATORS} operators"));
    }
    for (name, key) in &doc.allow.operators {
        if !valid_name(name) {
            return Err(format!("allow.operators: bad operator name {name:?}"));
        }
        parse_public_key(key).map_err(|e| format!("allow.operators.{name}: {e}"))?;
    }
    if doc.allow.hosts.is_empty() || doc.allow.hosts.len() > MAX_HOSTS || !doc.allow.hosts.iter().all(|h| valid_name(h))
    {
        return Err(format!("allow.hosts: 1 to {MAX_HOSTS} node names"));
    }
    if doc.actions.is_empty() {
        return Err("actions: at least one of migrate, takeover, failback".into());
    }
    for (action, steps) in &doc.actions {
        validate_steps(*action, steps)?;
    }
    Ok(())
}

/// Checks a run's parameters for `action` (the schema's `params` part).
pub fn validate_params(action: Action, params: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in params {
        if !action.params().contains(&k.as_str()) {
            let allowed = action.params();
            return Err(if allowed.is_empty() {
                format!("{} takes no parameters; got {k:?}", action.name())
            } else {
                format!("{} takes only {}; got {k:?}", action.name(), allowed.join(", "))
            });
        }
        if !valid_name(v) {
            return Err(format!("parameter {k}: {v:?} is not a node name"));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn failure_policies_parse_strictly_and_print_back() {
        for s in ["die", "warn", "retry 1 then die", "retry 10 then warn"] {
            assert_eq!(OnFailure::parse(s).unwrap().to_string(), s);
        }
        for s in
            ["", "Die", "retry 0 then die", "retry 11 then die", "retry 2", "retry x then die", "retry 01 then die"]
        {
            assert!(OnFailure::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let b = [0xab_u8; 32];
        assert_eq!(decode_hex::<32>(&encode_hex(&b)), Some(b));
        assert_eq!(decode_hex::<2>("zz00"), None);
        assert_eq!(decode_hex::<2>("abc"), None);
    }
}
