//! Services spread over update domains, their versions, and rolling
//! upgrades that go one domain at a time and yield to healing.
//!
//! The version a VM must boot is a function of its domain alone
//! ([`wanted_version`]): a domain the rollout finished or is upgrading calls
//! for the new version, one it has not reached for the old. Healing asks
//! this function before it defines the VM elsewhere, so a healed VM comes
//! back on the version its domain's position calls for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::driver::{BootImage, VmHealth};
use crate::model::FacilityState;

/// Services per facility.
pub const MAX_SERVICES: usize = 64;
/// Versions per service.
pub const MAX_VERSIONS: usize = 16;
/// Agent services a health check names.
pub const MAX_CHECKS: usize = 16;
/// Update domains per service.
pub const MAX_DOMAINS: u32 = 64;
/// Log lines kept per rollout.
pub const MAX_ROLLOUT_LOG: usize = 512;
/// A heartbeat older than this does not count as live.
pub const HEARTBEAT_FRESH_MS: u64 = 5_000;
/// Default bound on one domain becoming healthy.
pub const DEFAULT_HEALTH_TIMEOUT_S: u32 = 120;

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutState {
    /// Upgrading the domain at `position`.
    Upgrading,
    /// Healing pre-empts it; the reason names the VM.
    Paused(String),
    /// Every domain runs the new version.
    Done,
    /// A domain did not become healthy in time; it stops there.
    Failed(String),
}

/// One rolling upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Version before.
    pub from: String,
    /// Version after.
    pub to: String,
    /// The domains, in upgrade order.
    pub domains: Vec<u32>,
    /// Index into `domains` of the domain being upgraded.
    pub position: usize,
    /// Where it is.
    pub state: RolloutState,
    /// Bound on one domain becoming healthy, seconds.
    pub health_timeout_s: u32,
    /// Unix ms it started.
    pub started_ms: u64,
    /// Unix ms the current domain started.
    pub domain_started_ms: u64,
    /// Unix ms healing paused it (paused time does not count against the health bound).
    #[serde(default)]
    pub paused_ms: Option<u64>,
    /// Unix ms it ended.
    pub finished_ms: Option<u64>,
    /// Milliseconds each finished domain took, in order.
    pub domain_ms: Vec<(u32, u64)>,
    /// What happened, oldest first (at most [`MAX_ROLLOUT_LOG`]).
    pub log: Vec<String>,
}

impl Rollout {
    /// Whether it still has work (upgrading or paused).
    pub fn active(&self) -> bool {
        matches!(self.state, RolloutState::Upgrading | RolloutState::Paused(_))
    }

    /// The domain being upgraded.
    pub fn current(&self) -> Option<u32> {
        self.domains.get(self.position).copied()
    }

    /// Appends a log line within the bound.
    pub fn note(&mut self, line: String) {
        if self.log.len() >= MAX_ROLLOUT_LOG {
            self.log.remove(0);
        }
        self.log.push(line);
    }
}

/// A service: its versions, the version each domain calls for, its health checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Its name.
    pub name: String,
    /// Version name → what it boots.
    pub versions: BTreeMap<String, BootImage>,
    /// The version every domain runs unless `domain_versions` says otherwise.
    pub version: String,
    /// Domains moved to another version (by a rollout or by hand).
    #[serde(default)]
    pub domain_versions: BTreeMap<u32, String>,
    /// Agent services that must be up for a VM to count healthy.
    pub checks: Vec<String>,
    /// The rollout in progress or last run.
    pub rollout: Option<Rollout>,
    /// Members being healed, with why: from the heal being planned until
    /// the VM runs again and is healthy. Rollouts pause and manual domain
    /// upgrades are refused meanwhile.
    #[serde(default)]
    pub healing: BTreeMap<String, String>,
}

impl ServiceRecord {
    /// The version domain `d` calls for.
    pub fn version_of(&self, d: u32) -> &str {
        self.domain_versions.get(&d).map_or(self.version.as_str(), String::as_str)
    }
}

/// The (version, image) VM `vm` must boot, if it belongs to a service.
pub fn wanted_version(st: &FacilityState, vm: &str) -> Option<(String, BootImage)> {
    let rec = st.vms.get(vm)?;
    let svc = st.services.get(rec.spec.service.as_deref()?)?;
    let v = svc.version_of(rec.spec.domain.unwrap_or(0)).to_string();
    let img = svc.versions.get(&v)?.clone();
    Some((v, img))
}

/// The domains of `service`'s VMs, ascending.
pub fn domains_of(st: &FacilityState, service: &str) -> Vec<u32> {
    let mut d: Vec<u32> = st
        .vms
        .values()
        .filter(|v| v.spec.service.as_deref() == Some(service))
        .map(|v| v.spec.domain.unwrap_or(0))
        .collect();
    d.sort_unstable();
    d.dedup();
    d
}

/// The names of `service`'s VMs in domain `d`.
pub fn members(st: &FacilityState, service: &str, d: u32) -> Vec<String> {
    st.vms
        .values()
        .filter(|v| v.spec.service.as_deref() == Some(service) && v.spec.domain.unwrap_or(0) == d)
        .map(|v| v.spec.name.clone())
        .collect()
}

/// A member of `service` being healed (a heal intent, or waiting for a
/// node), with the reason in words.
pub fn healing(st: &FacilityState, service: &str) -> Option<String> {
    if let Some(why) = st.services.get(service).and_then(|s| s.healing.values().next()) {
        return Some(why.clone());
    }
    st.vms.values().filter(|v| v.spec.service.as_deref() == Some(service)).find_map(|v| {
        if let Some(i) = st.intent_for(&v.spec.name).filter(|i| i.kind == crate::intent::IntentKind::Heal) {
            return Some(format!(
                "{} is being healed (intent #{}, {} -> {})",
                v.spec.name,
                i.id,
                i.from.as_deref().unwrap_or("?"),
                i.to
            ));
        }
        match &v.state {
            crate::model::VmState::Waiting(w) => Some(format!("{} is waiting to be healed: {w}", v.spec.name)),
            _ => None,
        }
    })
}

/// Whether `h` shows a live agent and every service in `checks` up:
/// Ok(what was seen) or Err(what is missing). Shared by rollouts and by
/// runbook verify steps.
pub fn healthy(h: &VmHealth, checks: &[String]) -> Result<String, String> {
    if !h.running {
        return Err("not running".into());
    }
    if !h.agent_attached {
        return Err("no agent attached yet".into());
    }
    if h.agent_hung {
        return Err("its agent is hung (heartbeats stopped)".into());
    }
    let beat =
        h.since_heartbeat_ms.filter(|ms| *ms <= HEARTBEAT_FRESH_MS).ok_or_else(|| match h.since_heartbeat_ms {
            Some(ms) => format!("last agent heartbeat {:.1} s ago", ms as f64 / 1000.0),
            None => "no agent heartbeat yet".to_string(),
        })?;
    let mut seen = vec![format!("agent heartbeat {:.1} s ago", beat as f64 / 1000.0)];
    for c in checks {
        match h.service(c) {
            Some(s) if s.up => seen.push(format!("{c} up ({})", s.last_event)),
            Some(s) => return Err(format!("service {c} is not up: {}", s.last_event)),
            None => return Err(format!("service {c} not reported by the agent")),
        }
    }
    Ok(seen.join(", "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::driver::ServiceHealth;

    fn live(services: &[(&str, bool)]) -> VmHealth {
        VmHealth {
            running: true,
            agent_attached: true,
            agent_hung: false,
            since_heartbeat_ms: Some(300),
            heartbeats: 3,
            services: services
                .iter()
                .map(|(n, up)| ServiceHealth { name: n.to_string(), last_event: "started pid 9".into(), up: *up })
                .collect(),
        }
    }

    #[test]
    fn health_needs_a_fresh_heartbeat_and_every_check_up() {
        let checks = vec!["web".to_string()];
        assert!(healthy(&live(&[("web", true)]), &checks).is_ok());
        assert!(healthy(&live(&[("web", false)]), &checks).unwrap_err().contains("not up"));
        assert!(healthy(&live(&[]), &checks).unwrap_err().contains("not reported"));
        let mut stale = live(&[("web", true)]);
        stale.since_heartbeat_ms = Some(HEARTBEAT_FRESH_MS + 1);
        assert!(healthy(&stale, &checks).is_err());
        let mut hung = live(&[("web", true)]);
        hung.agent_hung = true;
        assert!(healthy(&hung, &checks).is_err());
        assert!(healthy(&VmHealth::default(), &[]).is_err());
    }
}
