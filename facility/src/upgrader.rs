//! The controller's side of services and rolling upgrades: defining
//! versions, starting a rollout, stepping it one update domain at a time
//! (upgrade intents, then a health wait through the agents), pausing while
//! any member is healed, and manual domain upgrades (refused during healing
//! unless forced, and a forced one is audited).

use std::time::Instant;

use crate::driver::{BootImage, NodeDriver};
use crate::engine::{unix_ms, ControlError, Controller};
use crate::intent::IntentKind;
use crate::model::VmState;
use crate::rollout::{self, Rollout, RolloutState, ServiceRecord};
use crate::run;
use crate::runbook::valid_name;
use crate::store::Store;

fn check_boot(version: &str, boot: &BootImage) -> Result<(), ControlError> {
    if !valid_name(version) {
        return Err(ControlError::Invalid(format!("version {version:?}: 1-64 chars of A-Z a-z 0-9 . _ -")));
    }
    if boot.image.is_empty()
        || boot.image.len() > 128
        || boot.initrd.as_ref().is_some_and(|i| i.is_empty() || i.len() > 128)
    {
        return Err(ControlError::Invalid("image and initrd names: 1 to 128 characters".into()));
    }
    if boot.cmdline.len() > 1024 {
        return Err(ControlError::Invalid("cmdline: at most 1024 bytes".into()));
    }
    Ok(())
}

impl<D: NodeDriver, S: Store> Controller<D, S> {
    /// Defines a service with its first version and its health checks.
    pub fn define_service(
        &mut self,
        name: &str,
        version: &str,
        boot: BootImage,
        checks: Vec<String>,
    ) -> Result<(), ControlError> {
        if !valid_name(name) {
            return Err(ControlError::Invalid(format!("service {name:?}: 1-64 chars of A-Z a-z 0-9 . _ -")));
        }
        check_boot(version, &boot)?;
        if checks.len() > rollout::MAX_CHECKS || !checks.iter().all(|c| valid_name(c)) {
            return Err(ControlError::Invalid(format!("checks: at most {} agent service names", rollout::MAX_CHECKS)));
        }
        if self.state.services.contains_key(name) {
            return Err(ControlError::Invalid(format!("service {name} exists; add versions with add-version")));
        }
        if self.state.services.len() >= rollout::MAX_SERVICES {
            return Err(ControlError::Invalid(format!("at most {} services", rollout::MAX_SERVICES)));
        }
        let versions = [(version.to_string(), boot)].into_iter().collect();
        self.state.services.insert(
            name.to_string(),
            ServiceRecord {
                name: name.to_string(),
                versions,
                version: version.to_string(),
                domain_versions: Default::default(),
                checks,
                rollout: None,
                healing: Default::default(),
            },
        );
        self.save()
    }

    /// Adds a version a rollout can go to.
    pub fn add_version(&mut self, name: &str, version: &str, boot: BootImage) -> Result<(), ControlError> {
        check_boot(version, &boot)?;
        let svc = self.service_mut(name)?;
        if svc.versions.contains_key(version) {
            return Err(ControlError::Invalid(format!("service {name} already has version {version}")));
        }
        if svc.versions.len() >= rollout::MAX_VERSIONS {
            return Err(ControlError::Invalid(format!("at most {} versions per service", rollout::MAX_VERSIONS)));
        }
        svc.versions.insert(version.to_string(), boot);
        self.save()
    }

    fn service_mut(&mut self, name: &str) -> Result<&mut ServiceRecord, ControlError> {
        self.state.services.get_mut(name).ok_or_else(|| ControlError::Invalid(format!("no service named {name}")))
    }

    /// The boot image of `service` at `version` for a new member VM.
    pub fn service_image(&self, service: &str, domain: u32) -> Result<(String, BootImage), ControlError> {
        let svc = self
            .state
            .services
            .get(service)
            .ok_or_else(|| ControlError::Invalid(format!("no service named {service}")))?;
        if domain >= rollout::MAX_DOMAINS {
            return Err(ControlError::Invalid(format!("update domains are 0 to {}", rollout::MAX_DOMAINS - 1)));
        }
        let v = svc.version_of(domain).to_string();
        let img = svc.versions.get(&v).cloned().ok_or_else(|| ControlError::Invalid(format!("{service} lacks {v}")))?;
        Ok((v, img))
    }

    /// Starts a rolling upgrade of `name` to `to`, domain by domain.
    pub fn start_rollout(
        &mut self,
        name: &str,
        to: &str,
        health_timeout_s: u32,
        who: &str,
    ) -> Result<(), ControlError> {
        let domains = rollout::domains_of(&self.state, name);
        let now = unix_ms();
        let svc = self.service_mut(name)?;
        if !svc.versions.contains_key(to) {
            return Err(ControlError::Invalid(format!("service {name} has no version {to}")));
        }
        if svc.rollout.as_ref().is_some_and(Rollout::active) {
            return Err(ControlError::Invalid(format!("a rollout of {name} is already under way")));
        }
        if domains.is_empty() {
            return Err(ControlError::Invalid(format!("service {name} has no VMs")));
        }
        if svc.version == to && svc.domain_versions.values().all(|v| v == to) {
            return Err(ControlError::Invalid(format!("service {name} already runs {to}")));
        }
        let from = svc.version.clone();
        let mut r = Rollout {
            from: from.clone(),
            to: to.to_string(),
            domains,
            position: 0,
            state: RolloutState::Upgrading,
            health_timeout_s: health_timeout_s.clamp(10, 3600),
            started_ms: now,
            domain_started_ms: now,
            paused_ms: None,
            finished_ms: None,
            domain_ms: Vec::new(),
            log: Vec::new(),
        };
        r.note(format!("started by {who} over domains {:?}", r.domains));
        if let Some(d) = r.current() {
            svc.domain_versions.insert(d, to.to_string());
        }
        svc.rollout = Some(r);
        run::audit(&mut self.state, now, who, format!("rollout {name} {from} -> {to}"), "started".into());
        self.save()
    }

    /// Upgrades one domain by hand. Refused while any VM of the service is
    /// being healed unless `force`; a forced one is audited.
    pub fn upgrade_domain(
        &mut self,
        name: &str,
        domain: u32,
        to: &str,
        force: bool,
        who: &str,
    ) -> Result<usize, ControlError> {
        let now = Instant::now();
        let svc =
            self.state.services.get(name).ok_or_else(|| ControlError::Invalid(format!("no service named {name}")))?;
        if !svc.versions.contains_key(to) {
            return Err(ControlError::Invalid(format!("service {name} has no version {to}")));
        }
        if !rollout::domains_of(&self.state, name).contains(&domain) {
            return Err(ControlError::Invalid(format!("service {name} has no VM in domain {domain}")));
        }
        let what = format!("upgrade of {name} domain {domain} to {to}");
        if let Some(why) = rollout::healing(&self.state, name) {
            if !force {
                run::audit(&mut self.state, unix_ms(), who, what, format!("refused: {why}"));
                self.save()?;
                return Err(ControlError::Invalid(format!(
                    "refused: {why}; healing comes first (--force to upgrade during healing; it is audited)"
                )));
            }
            run::audit(&mut self.state, unix_ms(), who, what.clone(), format!("FORCED during healing: {why}"));
            self.log(now, format!("{what} forced by {who} during healing: {why}"));
        } else {
            run::audit(&mut self.state, unix_ms(), who, what, "ok".into());
        }
        self.service_mut(name)?.domain_versions.insert(domain, to.to_string());
        let n = self.plan_domain_upgrades(name, domain, now);
        self.save()?;
        Ok(n)
    }

    /// Upgrade intents for the VMs of `domain` not on the version it calls
    /// for (VMs busy or not running wait; healing sets their version itself).
    fn plan_domain_upgrades(&mut self, name: &str, domain: u32, now: Instant) -> usize {
        let mut planned = 0;
        for vm in rollout::members(&self.state, name, domain) {
            let Some((ver, img)) = rollout::wanted_version(&self.state, &vm) else { continue };
            let Some(rec) = self.state.vms.get(&vm).cloned() else { continue };
            if rec.spec.version.as_deref() == Some(ver.as_str())
                || rec.state != VmState::Running
                || self.state.busy(&vm)
                || !self.state.is_active(&rec.node)
            {
                continue;
            }
            if let Some(v) = self.state.vms.get_mut(&vm) {
                v.spec.version = Some(ver.clone());
                v.spec.image = img.image;
                v.spec.initrd = img.initrd;
                v.spec.cmdline = img.cmdline;
                v.state = VmState::Moving;
            }
            self.push_intent(IntentKind::Upgrade, &vm, Some(rec.node.clone()), &rec.node, rec.epoch, false, false);
            self.log(now, format!("upgrade planned: {vm} on {} to {ver}", rec.node));
            planned += 1;
        }
        planned
    }

    /// Marks a service member as being healed (its node died).
    pub(crate) fn mark_healing(&mut self, vm: &str, why: String, now: Instant) {
        let Some(svc) = self.state.vms.get(vm).and_then(|v| v.spec.service.clone()) else { return };
        if let Some(s) = self.state.services.get_mut(&svc) {
            if s.healing.len() < 256 && !s.healing.contains_key(vm) {
                s.healing.insert(vm.to_string(), why.clone());
                let mut paused = false;
                if let Some(r) = s.rollout.as_mut().filter(|r| r.state == RolloutState::Upgrading) {
                    r.note(format!("paused: {why}"));
                    r.state = RolloutState::Paused(why.clone());
                    r.paused_ms = Some(unix_ms());
                    paused = true;
                }
                self.log(now, format!("service {svc}: {why}"));
                if paused {
                    self.log(now, format!("rollout {svc}: paused: {why}"));
                }
            }
        }
    }

    /// Members marked healing that run again, healthy, are healed.
    fn finish_healing(&mut self, now: Instant) -> Result<(), ControlError> {
        let marked: Vec<(String, String, Vec<String>)> = self
            .state
            .services
            .values()
            .flat_map(|s| s.healing.keys().map(move |vm| (s.name.clone(), vm.clone(), s.checks.clone())))
            .collect();
        let mut changed = false;
        for (svc, vm, checks) in marked {
            let Some(rec) = self.state.vms.get(&vm).cloned() else {
                if let Some(s) = self.state.services.get_mut(&svc) {
                    s.healing.remove(&vm);
                }
                changed = true;
                continue;
            };
            if rec.state != VmState::Running || self.state.busy(&vm) {
                continue;
            }
            let seen = self
                .addr(&rec.node)
                .map_err(|e| e.to_string())
                .and_then(|a| self.driver.vm_health(&a, &vm).map_err(|e| e.to_string()))
                .and_then(|h| rollout::healthy(&h, &checks));
            if let Ok(what) = seen {
                if let Some(s) = self.state.services.get_mut(&svc) {
                    s.healing.remove(&vm);
                }
                let ver = rec.spec.version.as_deref().unwrap_or("-");
                self.log(now, format!("service {svc}: {vm} healed on {} ({ver}) and healthy: {what}", rec.node));
                changed = true;
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// One round of every active rollout.
    pub(crate) fn run_rollouts(&mut self, now: Instant) -> Result<(), ControlError> {
        self.finish_healing(now)?;
        let names: Vec<String> = self
            .state
            .services
            .iter()
            .filter(|(_, s)| s.rollout.as_ref().is_some_and(Rollout::active))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.rollout_round(&name, now)?;
        }
        Ok(())
    }

    fn rollout_round(&mut self, name: &str, now: Instant) -> Result<(), ControlError> {
        let at = unix_ms();
        let Some(mut r) = self.state.services.get(name).and_then(|s| s.rollout.clone()) else { return Ok(()) };
        let before = r.clone();
        let healing = rollout::healing(&self.state, name);
        match (&r.state, healing) {
            (RolloutState::Upgrading, Some(why)) => {
                r.note(format!("paused: {why}"));
                self.log(now, format!("rollout {name}: paused: {why}"));
                r.state = RolloutState::Paused(why);
                r.paused_ms = Some(at);
            }
            (RolloutState::Paused(_), Some(_)) => {}
            (RolloutState::Paused(_), None) => {
                // Paused time does not count against the health bound.
                let paused = r.paused_ms.map_or(0, |p| at.saturating_sub(p));
                r.domain_started_ms = r.domain_started_ms.saturating_add(paused);
                r.paused_ms = None;
                r.state = RolloutState::Upgrading;
                r.note("resumed: healing finished".into());
                self.log(now, format!("rollout {name}: resumed"));
            }
            _ => {}
        }
        if r.state == RolloutState::Upgrading {
            if let Some(d) = r.current() {
                self.step_domain(name, d, &mut r, now, at)?;
            }
        }
        if r != before {
            if let Some(s) = self.state.services.get_mut(name) {
                s.rollout = Some(r);
            }
            self.save()?;
        }
        Ok(())
    }

    /// Upgrades domain `d` or, once all its VMs run the new version, waits
    /// for their health and moves on.
    fn step_domain(&mut self, name: &str, d: u32, r: &mut Rollout, now: Instant, at: u64) -> Result<(), ControlError> {
        if let Some(s) = self.state.services.get_mut(name) {
            s.domain_versions.insert(d, r.to.clone());
        }
        let members = rollout::members(&self.state, name, d);
        let planned = self.plan_domain_upgrades(name, d, now);
        if planned > 0 {
            r.note(format!("domain {d}: upgrading {}", members.join(", ")));
            self.log(
                now,
                format!("rollout {name} {} -> {}: domain {d}: upgrading {}", r.from, r.to, members.join(", ")),
            );
            self.save()?;
            // The intents run in this same round (run_intents comes next tick).
            return Ok(());
        }
        let mut waiting = None;
        for vm in &members {
            let Some(rec) = self.state.vms.get(vm).cloned() else { continue };
            if rec.spec.version.as_deref() != Some(r.to.as_str())
                || rec.state != VmState::Running
                || self.state.busy(vm)
            {
                waiting = Some(format!("{vm} is not yet on {} and running", r.to));
                break;
            }
            let checks = self.state.services.get(name).map(|s| s.checks.clone()).unwrap_or_default();
            let seen = self
                .addr(&rec.node)
                .map_err(|e| e.to_string())
                .and_then(|a| self.driver.vm_health(&a, vm).map_err(|e| e.to_string()))
                .and_then(|h| rollout::healthy(&h, &checks));
            if let Err(why) = seen {
                waiting = Some(format!("{vm}: {why}"));
                break;
            }
        }
        let spent = at.saturating_sub(r.domain_started_ms);
        match waiting {
            None => {
                r.domain_ms.push((d, spent));
                r.note(format!("domain {d} healthy in {:.1}s", spent as f64 / 1000.0));
                self.log(
                    now,
                    format!(
                        "rollout {name} {} -> {}: domain {d} healthy in {:.1}s",
                        r.from,
                        r.to,
                        spent as f64 / 1000.0
                    ),
                );
                r.position += 1;
                r.domain_started_ms = at;
                match r.current() {
                    Some(next) => {
                        if let Some(s) = self.state.services.get_mut(name) {
                            s.domain_versions.insert(next, r.to.clone());
                        }
                    }
                    None => {
                        r.state = RolloutState::Done;
                        r.finished_ms = Some(at);
                        let total = at.saturating_sub(r.started_ms);
                        r.note(format!("done in {:.1}s", total as f64 / 1000.0));
                        self.log(
                            now,
                            format!("rollout {name} {} -> {} done in {:.1}s", r.from, r.to, total as f64 / 1000.0),
                        );
                        if let Some(s) = self.state.services.get_mut(name) {
                            s.version = r.to.clone();
                            s.domain_versions.clear();
                        }
                        run::audit(
                            &mut self.state,
                            at,
                            "controller",
                            format!("rollout {name} {} -> {}", r.from, r.to),
                            "done".into(),
                        );
                    }
                }
            }
            Some(why) if spent > u64::from(r.health_timeout_s) * 1000 => {
                let text = format!("domain {d} not healthy within {} s: {why}", r.health_timeout_s);
                r.note(format!("failed: {text}"));
                self.log(now, format!("rollout {name} {} -> {} failed: {text}", r.from, r.to));
                r.state = RolloutState::Failed(text.clone());
                r.finished_ms = Some(at);
                run::audit(
                    &mut self.state,
                    at,
                    "controller",
                    format!("rollout {name} {} -> {}", r.from, r.to),
                    format!("failed: {text}"),
                );
            }
            Some(_) => {}
        }
        Ok(())
    }
}
