//! Monitoring on the node: active probes of the hardware, the VMs' and
//! their agents' state turned into events, the corrective-action policies
//! applied through the decision engine (`mgmt_proto::monitor::engine`),
//! and the health report subscribed consoles receive.
//!
//! Everything is driven from the node loop ([`super::Mgmt::monitor_round`]);
//! the time-critical parts are cheap (one MMIO read for the link, a few
//! compares per VM), the probes that touch memory, disk or TPM run on
//! their own, slower schedule.

use super::Mgmt;
use crate::arch::x86_64::time;
use crate::net::node::Network;
use crate::storage::Storage;
use crate::vm::Vm;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use mgmt_proto::monitor::engine::{Decision, Engine, Facts, Verdict, VmFacts};
use mgmt_proto::monitor::events::EventLog;
use mgmt_proto::monitor::{
    AgentHealth, EventKind, HealthReport, Owner, PolicyAction, Probe, ProbeStatus, Scope, ServiceHealth, Target,
    VmHealth,
};
use mgmt_proto::msg::{LeaseId, Request, Role, VmId, VmState};

/// How often the VMs and agents are looked at and the engine runs.
const OBSERVE_MS: u64 = 250;
/// How often each probe runs.
const LINK_PROBE_MS: u64 = 1_000;
const MEMORY_PROBE_MS: u64 = 5_000;
const DISK_PROBE_MS: u64 = 10_000;
const TPM_PROBE_MS: u64 = 10_000;
/// Free frames pattern-tested per memory probe (64 KiB).
const MEMORY_PROBE_FRAMES: usize = 16;
/// Services tracked per VM; further names are not tracked.
const MAX_SERVICES_PER_VM: usize = 64;
/// Restart-service operations the policies may have in flight at once.
const MAX_POLICY_STREAMS: usize = 32;
/// A policy's restart-service stream is given up after this long.
const POLICY_STREAM_MS: u64 = 30_000;
/// Events a guest's software (its agent, its services) may put in the
/// node's event log: a burst of this many, then one per
/// [`GUEST_EVENT_REFILL_MS`]; the rest are counted and summarized, so one
/// guest cannot flush other tenants' events out of the log or flood the
/// serial line.
const GUEST_EVENT_BURST: u32 = 30;
const GUEST_EVENT_REFILL_MS: u64 = 500;

fn now_ms() -> u64 {
    time::tsc_to_ms(time::rdtsc())
}

/// What the monitor remembers about one console VM.
#[derive(Default)]
struct VmWatch {
    /// The start generation last seen.
    generation: u64,
    running: bool,
    attached: bool,
    hung: bool,
    /// An agent attached in this run: heartbeats are expected.
    seen_agent: bool,
    /// Node time of the last heartbeat seen (or attach).
    last_beat_ms: u64,
    services: BTreeMap<String, ServiceHealth>,
    /// Since the last engine step.
    failures: Vec<String>,
    stopped_abnormally: bool,
    started: bool,
    /// Exits at the last rate sample, and the rate.
    exits_sampled: u64,
    exits_per_sec: u64,
    /// Guest-event budget: tokens left, when they were last refilled, and
    /// events not recorded since the last summary.
    tokens: u32,
    refilled_ms: u64,
    unrecorded: u64,
}

impl VmWatch {
    /// Whether one more guest-caused event may be recorded now.
    fn take_token(&mut self, now: u64) -> bool {
        let refill = now.saturating_sub(self.refilled_ms) / GUEST_EVENT_REFILL_MS;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(u32::try_from(refill).unwrap_or(u32::MAX)).min(GUEST_EVENT_BURST);
            self.refilled_ms = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// A restart-service operation a policy started, drained until it ends.
struct PolicyStream {
    vm: u32,
    generation: u64,
    stream: u32,
    opened_ms: u64,
    owner: Owner,
    rule: String,
    service: String,
    lease: LeaseId,
}

/// When each probe runs next.
#[derive(Default)]
struct Schedule {
    link: u64,
    memory: u64,
    disk: u64,
    tpm: u64,
}

/// The node's monitor.
pub struct Monitor {
    /// The events consoles subscribe to.
    pub events: EventLog,
    engine: Engine,
    probes: BTreeMap<Probe, ProbeStatus>,
    schedule: Schedule,
    vms: BTreeMap<u32, VmWatch>,
    streams: Vec<PolicyStream>,
    next_observe_ms: u64,
    /// Node-wide exit rate sampling.
    sample_ms: u64,
    exits_sampled: u64,
    exits_per_sec: u64,
    /// Subscription pushes sent and their bytes on the wire (the cost of
    /// monitoring on the management channel).
    pub pushes: u64,
    pub push_bytes: u64,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            events: EventLog::default(),
            engine: Engine::new(),
            probes: BTreeMap::new(),
            schedule: Schedule::default(),
            vms: BTreeMap::new(),
            streams: Vec::new(),
            next_observe_ms: 0,
            sample_ms: 0,
            exits_sampled: 0,
            exits_per_sec: 0,
            pushes: 0,
            push_bytes: 0,
        }
    }
}

/// The scope of events about a VM: its lifecycle (landlord and tenant) or
/// its software (tenant only).
fn vm_scope(vm: u32, lease: LeaseId, software: bool) -> Scope {
    if software {
        Scope::Guest { vm: VmId(vm), lease }
    } else {
        Scope::Vm { vm: VmId(vm), lease }
    }
}

impl Monitor {
    /// Records an event and logs it on the serial line.
    pub fn record(&mut self, scope: Scope, kind: EventKind, text: &str) {
        crate::log!("monitor: {} {}", kind.name(), super::escape(text));
        self.events.record(now_ms(), scope, kind, text);
    }

    /// The probes' latest results as status counters: `probe.NAME` is 1
    /// when passing, 0 when failing (absent with nothing to check), and
    /// `probe.NAME.failures` the failures in a row.
    pub fn probe_counters(&self) -> Vec<mgmt_proto::msg::Counter> {
        let mut out = Vec::new();
        for p in self.probes.values() {
            let Some(ok) = p.ok else { continue };
            let name = p.probe.name();
            out.push(mgmt_proto::msg::Counter { name: format!("probe.{name}"), value: u64::from(ok) });
            out.push(mgmt_proto::msg::Counter { name: format!("probe.{name}.failures"), value: u64::from(p.failures) });
        }
        out
    }

    /// A probe's latest result (`None`: not run, or nothing to check).
    pub fn probe_ok(&self, probe: Probe) -> Option<bool> {
        self.probes.get(&probe).and_then(|p| p.ok)
    }

    /// Runs the probes that are due.
    fn probe(&mut self, now: u64, network: &Network, storage: Option<&mut Storage>) {
        if now >= self.schedule.link {
            self.schedule.link = now + LINK_PROBE_MS;
            match network.link_up() {
                Some(up) => {
                    let detail = if up { "uplink link up" } else { "uplink link down" };
                    self.set_probe(now, Probe::NicLink, Some(up), detail);
                }
                None if network.uplink.is_some() => {
                    self.set_probe(now, Probe::NicLink, None, "the uplink does not report link status")
                }
                None => self.set_probe(now, Probe::NicLink, None, "no uplink"),
            }
        }
        if now >= self.schedule.memory {
            self.schedule.memory = now + MEMORY_PROBE_MS;
            match crate::mm::frames::test_free(MEMORY_PROBE_FRAMES) {
                Ok(n) => self.set_probe(now, Probe::Memory, Some(true), &format!("{n} free frames pattern-tested")),
                Err(pa) => self.set_probe(now, Probe::Memory, Some(false), &format!("frame {pa:#x} did not read back")),
            }
        }
        if now >= self.schedule.disk {
            self.schedule.disk = now + DISK_PROBE_MS;
            match storage {
                Some(s) => match s.check_header() {
                    Ok(d) => self.set_probe(now, Probe::Disk, Some(true), &d),
                    Err(e) => self.set_probe(now, Probe::Disk, Some(false), &e),
                },
                None => self.set_probe(now, Probe::Disk, None, "no node disk"),
            }
        }
        if now >= self.schedule.tpm {
            self.schedule.tpm = now + TPM_PROBE_MS;
            match crate::drivers::tpm::health() {
                Ok(Some(d)) => self.set_probe(now, Probe::Tpm, Some(true), &d),
                Ok(None) => self.set_probe(now, Probe::Tpm, None, "no TPM"),
                Err(e) => self.set_probe(now, Probe::Tpm, Some(false), &e),
            }
        }
    }

    /// Stores a probe result; a change between passing and failing is an event.
    fn set_probe(&mut self, now: u64, probe: Probe, ok: Option<bool>, detail: &str) {
        let before = self.probes.get(&probe).and_then(|p| p.ok);
        let failures = match (ok, self.probes.get(&probe)) {
            (Some(false), Some(p)) => p.failures.saturating_add(1),
            (Some(false), None) => 1,
            _ => 0,
        };
        self.probes.insert(probe, ProbeStatus { probe, ok, detail: String::from(detail), at_ms: now, failures });
        match (before, ok) {
            (Some(true) | None, Some(false)) => self.record(Scope::Node, EventKind::ProbeFailed(probe), detail),
            (Some(false), Some(true)) => self.record(Scope::Node, EventKind::ProbeRecovered(probe), detail),
            _ => {}
        }
    }

    /// Looks at every console VM: lifecycle, agent, services.
    fn observe(&mut self, now: u64, vms: &mut [Vm], state: &node_logic::NodeState) {
        let gone: Vec<u32> = self.vms.keys().copied().filter(|id| !state.vms.contains_key(&VmId(*id))).collect();
        for id in gone {
            self.vms.remove(&id);
            self.engine.forget_vm(VmId(id));
        }
        let rate_due = now.saturating_sub(self.sample_ms) >= 1000;
        for (id, w) in &state.vms {
            let lease = w.spec.lease;
            let Some(inst) = vms.iter_mut().rev().find(|v| v.managed.is_some_and(|(i, _)| i == id.0)) else {
                continue;
            };
            let Some((_, generation)) = inst.managed else { continue };
            let running = inst.is_running();
            let mut notes: Vec<(Scope, EventKind, String)> = Vec::new();
            let watch = self.vms.entry(id.0).or_default();
            // A new run, even one that already ended between two looks.
            if generation != watch.generation {
                *watch = VmWatch {
                    generation,
                    running: true,
                    started: true,
                    tokens: GUEST_EVENT_BURST,
                    refilled_ms: now,
                    ..VmWatch::default()
                };
                notes.push((
                    vm_scope(id.0, lease, false),
                    EventKind::VmStarted,
                    format!("{} started (start {generation})", w.spec.name),
                ));
            }
            if watch.running && !running && generation == watch.generation {
                watch.running = false;
                let (abnormal, why) = match &inst.stopped {
                    Some(r) => (r.is_abnormal(), format!("{r}")),
                    None => (false, String::from("stopped")),
                };
                watch.stopped_abnormally |= abnormal;
                let kind = if abnormal { EventKind::VmFaulted } else { EventKind::VmStopped };
                notes.push((vm_scope(id.0, lease, false), kind, format!("{} stopped: {why}", w.spec.name)));
            }
            if running {
                let st = inst.devices.agent.lock().relay.status(now);
                if st.attached && !watch.attached {
                    watch.seen_agent = true;
                    let text = match &st.agent_version {
                        Some(v) => format!("bm-agent {v} attached"),
                        None => String::from("agent attached"),
                    };
                    notes.push((vm_scope(id.0, lease, true), EventKind::AgentAttached, text));
                } else if !st.attached && watch.attached {
                    let why = st.last_fault.clone().unwrap_or_else(|| String::from("detached"));
                    notes.push((vm_scope(id.0, lease, true), EventKind::AgentDetached, why));
                }
                watch.attached = st.attached;
                if st.attached {
                    watch.last_beat_ms = now.saturating_sub(st.since_heartbeat_ms.unwrap_or(0));
                }
                if st.hung != watch.hung {
                    let (kind, text) = if st.hung {
                        (
                            EventKind::AgentHung,
                            format!(
                                "no heartbeat for {} ms (bound {} ms)",
                                now.saturating_sub(watch.last_beat_ms),
                                st.heartbeat_timeout_ms
                            ),
                        )
                    } else {
                        (EventKind::AgentRecovered, String::from("heartbeats resumed"))
                    };
                    notes.push((vm_scope(id.0, lease, true), kind, text));
                    watch.hung = st.hung;
                }
                let (service_notes, dropped) = inst.devices.agent.lock().relay.take_service_events();
                if dropped > 0 {
                    notes.push((
                        vm_scope(id.0, lease, true),
                        EventKind::Service { name: String::from("*") },
                        format!(
                            "{dropped} service events dropped (more than {} between looks)",
                            agent_proto::relay::MAX_SERVICE_NOTES
                        ),
                    ));
                }
                for n in service_notes {
                    let failure = agent_proto::msg::is_service_failure(&n.what);
                    if n.what == "removed" {
                        watch.services.remove(&n.name);
                    } else if watch.services.contains_key(&n.name) || watch.services.len() < MAX_SERVICES_PER_VM {
                        let s = watch.services.entry(n.name.clone()).or_insert_with(|| ServiceHealth {
                            name: n.name.clone(),
                            state: String::from("running"),
                            failures: 0,
                        });
                        if let Some(state) = agent_proto::msg::service_state_after(&n.what) {
                            s.state = String::from(state);
                        }
                        if failure {
                            s.failures = s.failures.saturating_add(1);
                        }
                    }
                    if failure {
                        watch.failures.push(n.name.clone());
                    }
                    notes.push((
                        vm_scope(id.0, lease, true),
                        EventKind::Service { name: n.name.clone() },
                        format!("{}: {}", n.name, n.what),
                    ));
                }
                if rate_due {
                    let exits = inst.counters.total;
                    let dt = now.saturating_sub(self.sample_ms).max(1);
                    watch.exits_per_sec = exits.saturating_sub(watch.exits_sampled).saturating_mul(1000) / dt;
                    watch.exits_sampled = exits;
                }
            }
            // Guest-caused events spend the VM's budget; lifecycle ones do not.
            let mut kept = Vec::new();
            for (scope, kind, text) in notes {
                if matches!(scope, Scope::Guest { .. }) && !watch.take_token(now) {
                    watch.unrecorded += 1;
                    continue;
                }
                kept.push((scope, kind, text));
            }
            if watch.unrecorded > 0 && watch.take_token(now) {
                let n = core::mem::take(&mut watch.unrecorded);
                kept.push((
                    vm_scope(id.0, lease, true),
                    EventKind::Service { name: String::from("*") },
                    format!("{n} agent/service events not recorded (more than {GUEST_EVENT_BURST} at once, then one per {GUEST_EVENT_REFILL_MS} ms)"),
                ));
            }
            for (scope, kind, text) in kept {
                self.record(scope, kind, &text);
            }
        }
        if rate_due {
            let exits: u64 = vms.iter().map(|v| v.counters.total).sum();
            let dt = now.saturating_sub(self.sample_ms).max(1);
            self.exits_per_sec = exits.saturating_sub(self.exits_sampled).saturating_mul(1000) / dt;
            self.exits_sampled = exits;
            self.sample_ms = now;
        }
    }

    /// This round's facts for the engine; per-round flags are consumed.
    fn facts(&mut self, now: u64, state: &node_logic::NodeState) -> Facts {
        let mut vms = Vec::new();
        for (id, w) in &state.vms {
            let Some(watch) = self.vms.get_mut(&id.0) else { continue };
            vms.push(VmFacts {
                vm: *id,
                lease: w.spec.lease,
                cluster: w.spec.cluster,
                running: watch.running,
                heartbeat_age_ms: watch.seen_agent.then(|| now.saturating_sub(watch.last_beat_ms)),
                service_failures: core::mem::take(&mut watch.failures),
                stopped_abnormally: core::mem::take(&mut watch.stopped_abnormally),
                started: core::mem::take(&mut watch.started),
            });
        }
        let probes = self.probes.values().filter(|p| p.ok.is_some()).map(|p| (p.probe, p.failures)).collect();
        Facts { now_ms: now, vms, probes }
    }

    /// The full health report; consoles get [`HealthReport::for_role`] of it.
    pub fn health(&self, beat: u64, vms: &[Vm], state: &node_logic::NodeState) -> HealthReport {
        let now = now_ms();
        let mut out = Vec::new();
        for (id, w) in &state.vms {
            let inst = vms.iter().rev().find(|v| v.managed == Some((id.0, w.starts)));
            let watch = self.vms.get(&id.0);
            let agent = inst.filter(|v| v.is_running()).map(|v| {
                let st = v.devices.agent.lock().relay.status(now);
                AgentHealth {
                    attached: st.attached,
                    hung: st.hung,
                    since_heartbeat_ms: st.since_heartbeat_ms,
                    load: st.load,
                    services: watch.map(|w| w.services.values().cloned().collect()).unwrap_or_default(),
                }
            });
            out.push(VmHealth {
                vm: *id,
                name: w.spec.name.clone(),
                lease: w.spec.lease,
                cluster: w.spec.cluster,
                state: w.state,
                starts: w.starts,
                cpu_ms: inst.map_or(0, |v| time::tsc_to_ms(v.cpu_tsc)),
                exits: inst.map_or(0, |v| v.counters.total),
                exits_per_sec: if w.state == VmState::Running { watch.map_or(0, |w| w.exits_per_sec) } else { 0 },
                agent,
            });
        }
        HealthReport {
            beat,
            uptime_ms: now,
            memory_free_mib: (crate::mm::frames::free_count() as u64 * crate::mm::PAGE_SIZE) >> 20,
            exits_per_sec: self.exits_per_sec,
            probes: self.probes.values().cloned().collect(),
            vms: out,
        }
    }
}

impl Mgmt {
    /// One monitoring round (called by the node loop after reconcile):
    /// probes, observations, policy decisions and their actions.
    pub fn monitor_round(&mut self, vms: &mut [Vm], network: &Network, storage: Option<&mut Storage>) {
        let now = now_ms();
        self.monitor.probe(now, network, storage);
        self.drain_policy_streams(now, vms);
        if now < self.monitor.next_observe_ms {
            return;
        }
        self.monitor.next_observe_ms = now + OBSERVE_MS;
        self.monitor.observe(now, vms, &self.state);
        let facts = self.monitor.facts(now, &self.state);
        let decisions = self.monitor.engine.step(&self.state.policies, &facts);
        for d in decisions {
            self.carry_out(d, vms, now);
        }
    }

    /// Carries out (or reports holding back) one policy decision, audited.
    fn carry_out(&mut self, d: Decision, vms: &mut [Vm], now: u64) {
        let role = d.owner.role();
        let (vm, service) = match &d.target {
            Target::Node => (None, None),
            Target::Vm(v) => (Some(*v), None),
            Target::Service(v, s) => (Some(*v), Some(s.clone())),
        };
        let lease = vm.and_then(|v| self.state.vms.get(&v)).map(|w| w.spec.lease);
        let scope = match (vm, lease, d.owner) {
            (Some(v), Some(l), Owner::Tenant(_)) => vm_scope(v.0, l, true),
            (Some(v), Some(l), Owner::Landlord) => vm_scope(v.0, l, false),
            _ => Scope::Node,
        };
        let target = match (&d.target, vm.and_then(|v| self.state.vms.get(&v))) {
            (Target::Node, _) => String::from("the node"),
            (Target::Vm(_), Some(w)) => format!("VM {}", w.spec.name),
            (Target::Service(_, s), Some(w)) => format!("service {s} of VM {}", w.spec.name),
            _ => String::from("a VM that no longer exists"),
        };
        let owner = match d.owner {
            Owner::Landlord => String::from("landlord"),
            Owner::Tenant(l) => format!("tenant {}", l.0),
        };
        match d.verdict {
            Verdict::Act => {
                let result: Result<String, String> = match (d.action, vm) {
                    (PolicyAction::Notify, _) => Ok(String::from("notification requested")),
                    (PolicyAction::RestartVm, Some(v)) => self
                        .handle(role, &Request::RestartVm { vm: v }, vms)
                        .map(|_| String::from("VM restarted"))
                        .map_err(|e| e.message),
                    (PolicyAction::ReloadImage, Some(v)) => self
                        .handle(role, &Request::ReloadImage { vm: v }, vms)
                        .map(|_| String::from("image reloaded, VM restarted"))
                        .map_err(|e| e.message),
                    (PolicyAction::RestartService, Some(v)) => {
                        self.restart_service(d.owner, &d.rule, v, service.clone(), vms, now)
                    }
                    (PolicyAction::RebootNode, None) if d.owner == Owner::Landlord => {
                        self.pending.reboot = true;
                        Ok(String::from("node reboot requested"))
                    }
                    _ => Err(String::from("action does not apply to this target")),
                };
                let ok = result.is_ok();
                let outcome = result.unwrap_or_else(|e| format!("failed: {e}"));
                let text =
                    format!("{owner} rule {}: {} on {target} ({}): {outcome}", d.rule, d.action.name(), d.reason);
                self.state.log(Some(role), "policy-action", text.clone());
                self.changed(false);
                self.monitor.record(
                    scope,
                    EventKind::Action { owner: d.owner, rule: d.rule.clone(), action: d.action, ok },
                    &text,
                );
                if d.notify || d.action == PolicyAction::Notify {
                    self.monitor.record(
                        scope,
                        EventKind::Notify { owner: d.owner, rule: d.rule },
                        &format!("{target}: {}", d.reason),
                    );
                }
            }
            Verdict::Backoff { until_ms } => {
                let text = format!(
                    "{owner} rule {}: {} on {target} held back {} ms by backoff ({})",
                    d.rule,
                    d.action.name(),
                    until_ms.saturating_sub(now),
                    d.reason
                );
                self.monitor.record(
                    scope,
                    EventKind::Suppressed { owner: d.owner, rule: d.rule, action: d.action },
                    &text,
                );
            }
            Verdict::LimitReached => {
                let text = format!("{owner} rule {}: {} on {target} given up: {}", d.rule, d.action.name(), d.reason);
                self.state.log(Some(role), "policy-action", text.clone());
                self.changed(false);
                self.monitor.record(
                    scope,
                    EventKind::Suppressed { owner: d.owner, rule: d.rule.clone(), action: d.action },
                    &text,
                );
                // Giving up is always worth telling the owner.
                self.monitor.record(scope, EventKind::Notify { owner: d.owner, rule: d.rule }, &text);
            }
        }
    }

    /// Asks the VM's agent to restart a service; the stream is drained by
    /// [`Self::drain_policy_streams`], which records how it ended.
    fn restart_service(
        &mut self,
        owner: Owner,
        rule: &str,
        vm: VmId,
        service: Option<String>,
        vms: &mut [Vm],
        now: u64,
    ) -> Result<String, String> {
        let name = service.ok_or_else(|| String::from("no service named"))?;
        if self.monitor.streams.len() >= MAX_POLICY_STREAMS {
            return Err(format!("{MAX_POLICY_STREAMS} policy operations already in flight (MAX_POLICY_STREAMS)"));
        }
        let w = self.state.vms.get(&vm).ok_or_else(|| String::from("no such VM"))?;
        let (generation, lease) = (w.starts, w.spec.lease);
        let inst = vms
            .iter_mut()
            .rev()
            .find(|v| v.managed == Some((vm.0, generation)) && v.is_running())
            .ok_or_else(|| String::from("VM is not running"))?;
        let op = agent_proto::Op::Service(agent_proto::msg::ServiceOp::Restart { name: name.clone() });
        let stream = inst.devices.agent.lock().relay.open(op, now).map_err(|e| format!("{e}"))?;
        inst.devices.ring_agent();
        self.monitor.streams.push(PolicyStream {
            vm: vm.0,
            generation,
            stream,
            opened_ms: now,
            owner,
            rule: String::from(rule),
            service: name.clone(),
            lease,
        });
        Ok(format!("restart of service {name} asked of the agent"))
    }

    /// Takes the events of the policies' agent operations; records how each ended.
    fn drain_policy_streams(&mut self, now: u64, vms: &mut [Vm]) {
        let mut ended: Vec<(usize, Result<(), String>)> = Vec::new();
        for (i, s) in self.monitor.streams.iter().enumerate() {
            let inst = vms.iter_mut().rev().find(|v| v.managed == Some((s.vm, s.generation)) && v.is_running());
            let Some(inst) = inst else {
                ended.push((i, Err(String::from("the VM stopped"))));
                continue;
            };
            match inst.devices.agent.lock().relay.poll(s.stream, 16 * 1024, now) {
                Ok((events, finished)) => {
                    let error = events.iter().find_map(|e| match e {
                        agent_proto::Event::Error(m) => Some(m.clone()),
                        _ => None,
                    });
                    if let Some(m) = error {
                        ended.push((i, Err(m)));
                    } else if finished || events.iter().any(agent_proto::Event::is_terminal) {
                        ended.push((i, Ok(())));
                    } else if now.saturating_sub(s.opened_ms) > POLICY_STREAM_MS {
                        ended.push((i, Err(format!("no answer from the agent in {} s", POLICY_STREAM_MS / 1000))));
                    }
                }
                Err(e) => ended.push((i, Err(format!("{e}")))),
            }
        }
        for (i, result) in ended.into_iter().rev() {
            let s = self.monitor.streams.remove(i);
            let ok = result.is_ok();
            let text = match result {
                Ok(()) => format!("service {} restarted by the agent (rule {})", s.service, s.rule),
                Err(e) => format!("service {} not restarted (rule {}): {e}", s.service, s.rule),
            };
            self.state.log(Some(s.owner.role()), "policy-action", text.clone());
            self.monitor.record(
                vm_scope(s.vm, s.lease, true),
                EventKind::Action { owner: s.owner, rule: s.rule, action: PolicyAction::RestartService, ok },
                &text,
            );
        }
    }
}

/// Who a policy change event is for.
pub fn policy_scope(role: Role) -> Scope {
    match role {
        Role::Landlord => Scope::Node,
        Role::Tenant(l) => Scope::Tenant(l),
    }
}
