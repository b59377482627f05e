//! What `bmctl watch` knows about the nodes it watches, built from their
//! pushes, and its renderings (event lines, Prometheus metrics, JSON for
//! the dashboard). Pure: no I/O, the time is passed in, so all of it is
//! tested on the host without a node.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use mgmt_proto::monitor::{EventKind, HealthReport, MonitorEvent, Owner, Push, Scope};
use mgmt_proto::VmState;
use serde_json::{json, Value};
use vmm_config::text::escape_control;

/// Recent events kept for the dashboard and `/api/state`.
pub const RECENT_EVENTS: usize = 200;

/// Most distinct label sets kept for the action and event counters, so a
/// node inventing rule names cannot grow the console without bound.
pub const MAX_COUNTER_SERIES: usize = 4096;

/// One watched node.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// The node's name in the watch (its profile name).
    pub name: String,
    /// Its address as configured.
    pub addr: String,
    /// `landlord` or `tenant:LEASE`: decides which node-wide facts it gets.
    pub role: String,
    /// A subscription is in place.
    pub connected: bool,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
    /// The last health report received.
    pub health: Option<HealthReport>,
    /// When it came (Unix milliseconds).
    pub health_at_ms: Option<u64>,
    /// The sequence number to resume from (`None` before the first push).
    pub next_seq: Option<u64>,
    /// Events the node says this watch will never see, plus events in
    /// pushes the client had to drop.
    pub lost_total: u64,
    /// Connections after the first.
    pub reconnects_total: u64,
    /// Times the node was seen restarting (another boot id, or its
    /// sequence went back).
    pub restarts_seen: u64,
    /// The node's boot id at the last subscription.
    pub boot: Option<u64>,
    /// Whether any connection was made yet.
    connected_once: bool,
}

/// An event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The watched node's name.
    pub node: String,
    /// When it arrived (Unix milliseconds).
    pub at_ms: u64,
    /// The event.
    pub event: MonitorEvent,
}

/// The whole watch: nodes, recent events and counters. Shared between the
/// subscription threads and the HTTP server behind a mutex.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// The last [`RECENT_EVENTS`] events, oldest first.
    pub recent: VecDeque<Received>,
    /// `(node, rule, action, ok)` → Action events seen.
    pub actions: BTreeMap<(String, String, String, bool), u64>,
    /// `(node, kind)` → events seen.
    pub events: BTreeMap<(String, String), u64>,
}

/// What the watch should do after the node answered a Subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Carry on.
    Continue,
    /// The node restarted (its sequence is behind ours): subscribe again
    /// from its first event.
    Restarted {
        /// The sequence we were at.
        ours: u64,
        /// The node's.
        theirs: u64,
    },
}

fn owner_name(o: &Owner) -> String {
    match o {
        Owner::Landlord => "landlord".into(),
        Owner::Tenant(l) => format!("tenant:{}", l.0),
    }
}

/// The kind with its details, one word: `action:restart-hung:restart-vm:ok`.
pub fn kind_detail(k: &EventKind) -> String {
    let base = k.name();
    match k {
        EventKind::ProbeFailed(p) | EventKind::ProbeRecovered(p) => format!("{base}:{}", p.name()),
        EventKind::Service { name } => format!("{base}:{}", escape_control(name)),
        EventKind::Action { owner, rule, action, ok } => format!(
            "{base}:{}:{}:{}:{}",
            owner_name(owner),
            escape_control(rule),
            action.name(),
            if *ok { "ok" } else { "failed" }
        ),
        EventKind::Suppressed { owner, rule, action } => {
            format!("{base}:{}:{}:{}", owner_name(owner), escape_control(rule), action.name())
        }
        EventKind::Notify { owner, rule } => format!("{base}:{}:{}", owner_name(owner), escape_control(rule)),
        EventKind::PolicySet { owner, cluster, version } => {
            format!("{base}:{}:cluster-{}:v{version}", owner_name(owner), cluster.0)
        }
        _ => base.to_string(),
    }
}

/// The scope in one word: `node`, `vm:3`, `guest:3`, `tenant:2`.
pub fn scope_name(s: &Scope) -> String {
    match s {
        Scope::Node => "node".into(),
        Scope::Vm { vm, .. } => format!("vm:{}", vm.0),
        Scope::Guest { vm, .. } => format!("guest:{}", vm.0),
        Scope::Tenant(l) => format!("tenant:{}", l.0),
    }
}

/// Unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// One event as a line for people: `<time> <node> <scope> <kind> <text>`,
/// control characters escaped.
pub fn event_line(r: &Received) -> String {
    format!(
        "{} {} {} {} {}",
        utc(r.at_ms),
        escape_control(&r.node),
        scope_name(&r.event.scope),
        kind_detail(&r.event.kind),
        escape_control(&r.event.text)
    )
}

/// One event as JSON (`--json` lines, `/api/state`, the notify command's
/// input): flat fields for scripts plus the event as the protocol has it.
pub fn event_json(r: &Received) -> Value {
    let e = &r.event;
    let mut v = json!({
        "time": utc(r.at_ms),
        "unix_ms": r.at_ms,
        "node": r.node,
        "seq": e.seq,
        "node_time_ms": e.time_ms,
        "scope": scope_name(&e.scope),
        "kind": e.kind.name(),
        "detail": kind_detail(&e.kind),
        "text": e.text,
        "event": serde_json::to_value(e).unwrap_or(Value::Null),
    });
    let vm = match e.scope {
        Scope::Vm { vm, .. } | Scope::Guest { vm, .. } => Some(vm.0),
        _ => None,
    };
    if let (Some(vm), Some(o)) = (vm, v.as_object_mut()) {
        o.insert("vm".into(), json!(vm));
    }
    v
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n += 1;
    } else if map.len() < MAX_COUNTER_SERIES {
        map.insert(key, 1);
    }
}

impl View {
    /// Adds a node to watch (before any connection).
    pub fn add_node(&mut self, name: &str, addr: &str, role: &str) {
        self.nodes.insert(
            name.to_string(),
            NodeView { name: name.into(), addr: addr.into(), role: role.into(), ..NodeView::default() },
        );
    }

    fn node(&mut self, name: &str) -> &mut NodeView {
        self.nodes.entry(name.to_string()).or_insert_with(|| NodeView { name: name.into(), ..NodeView::default() })
    }

    /// Where to resume from on the next Subscribe.
    pub fn since(&self, node: &str) -> Option<u64> {
        self.nodes.get(node).and_then(|n| n.next_seq)
    }

    /// A session is up and subscribed; the node says its next event is
    /// `their_next` and its boot is `boot`. Counts reconnects and spots
    /// restarts (another boot id, or the node's sequence behind ours),
    /// after which we start over from its first event.
    pub fn subscribed(&mut self, node: &str, their_next: u64, boot: u64) -> Resume {
        let n = self.node(node);
        if n.connected_once {
            n.reconnects_total += 1;
        }
        n.connected_once = true;
        n.connected = true;
        n.last_error = None;
        let rebooted = n.boot.is_some_and(|b| b != boot);
        n.boot = Some(boot);
        match n.next_seq {
            Some(ours) if their_next < ours || rebooted => {
                n.restarts_seen += 1;
                n.next_seq = Some(1);
                Resume::Restarted { ours, theirs: their_next }
            }
            _ => Resume::Continue,
        }
    }

    /// The connection ended (or could not be made).
    pub fn disconnected(&mut self, node: &str, why: &str) {
        let n = self.node(node);
        n.connected = false;
        n.last_error = Some(why.to_string());
    }

    /// Adds events the client dropped from its full push queue to the
    /// node's lost count.
    pub fn add_lost(&mut self, node: &str, lost: u64) {
        self.node(node).lost_total += lost;
    }

    /// Applies a push at `now_ms`; returns the events not seen before
    /// (a resumed subscription may repeat some), oldest first.
    pub fn apply_push(&mut self, node: &str, push: &Push, now_ms: u64) -> Vec<Received> {
        let n = self.node(node);
        if let Some(h) = &push.health {
            n.health = Some(h.clone());
            n.health_at_ms = Some(now_ms);
        }
        n.lost_total += push.lost;
        let floor = n.next_seq.unwrap_or(0);
        n.next_seq = Some(n.next_seq.map_or(push.next_seq, |s| s.max(push.next_seq)));
        let fresh: Vec<Received> = push
            .events
            .iter()
            .filter(|e| e.seq >= floor)
            .map(|e| Received { node: node.to_string(), at_ms: now_ms, event: e.clone() })
            .collect();
        for r in &fresh {
            bump(&mut self.events, (node.to_string(), r.event.kind.name().to_string()));
            if let EventKind::Action { rule, action, ok, .. } = &r.event.kind {
                bump(&mut self.actions, (node.to_string(), rule.clone(), action.name().to_string(), *ok));
            }
            if self.recent.len() >= RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(r.clone());
        }
        fresh
    }

    /// The view as JSON for `/api/state` and the dashboard.
    pub fn state_json(&self, now_ms: u64) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .values()
            .map(|n| {
                json!({
                    "name": n.name,
                    "addr": n.addr,
                    "role": n.role,
                    "connected": n.connected,
                    "last_error": n.last_error,
                    "next_seq": n.next_seq,
                    "lost_total": n.lost_total,
                    "reconnects_total": n.reconnects_total,
                    "restarts_seen": n.restarts_seen,
                    "health_age_ms": n.health_at_ms.map(|t| now_ms.saturating_sub(t)),
                    "health": n.health.as_ref().map(health_json),
                })
            })
            .collect();
        let events: Vec<Value> = self.recent.iter().map(event_json).collect();
        json!({"time": utc(now_ms), "nodes": nodes, "events": events})
    }

    /// The view in the Prometheus text exposition format 0.0.4. Health
    /// series are given only for connected nodes (a stale value would hide
    /// an outage; `bmonitor_up` says which are down).
    pub fn metrics(&self) -> String {
        let mut m = Metrics::default();
        for n in self.nodes.values() {
            let node = [("node", n.name.as_str())];
            m.sample(
                "bmonitor_up",
                "gauge",
                "1 while the watch holds a subscription to the node.",
                &node,
                b(n.connected),
            );
            m.sample(
                "bmonitor_events_lost_total",
                "counter",
                "Events the watch will never see (dropped by the node's log or the console's queue).",
                &node,
                n.lost_total as f64,
            );
            m.sample(
                "bmonitor_watch_reconnects_total",
                "counter",
                "Times the watch connected to the node again.",
                &node,
                n.reconnects_total as f64,
            );
            let Some(h) = n.health.as_ref().filter(|_| n.connected) else { continue };
            m.sample(
                "bmonitor_node_uptime_seconds",
                "gauge",
                "Node time since boot.",
                &node,
                h.uptime_ms as f64 / 1000.0,
            );
            if n.role == "landlord" {
                m.sample(
                    "bmonitor_node_memory_free_mib",
                    "gauge",
                    "Free node memory.",
                    &node,
                    h.memory_free_mib as f64,
                );
                m.sample(
                    "bmonitor_node_exits_per_second",
                    "gauge",
                    "VM exits per second, whole node.",
                    &node,
                    h.exits_per_sec as f64,
                );
            }
            for p in &h.probes {
                let l = [("node", n.name.as_str()), ("probe", p.probe.name())];
                if let Some(ok) = p.ok {
                    m.sample("bmonitor_probe_ok", "gauge", "1 when the probe's last run passed.", &l, b(ok));
                }
                m.sample("bmonitor_probe_failures", "gauge", "Probe failures in a row.", &l, f64::from(p.failures));
            }
            for v in &h.vms {
                let id = v.vm.0.to_string();
                let l = [("node", n.name.as_str()), ("vm", id.as_str()), ("name", v.name.as_str())];
                m.sample("bmonitor_vm_running", "gauge", "1 while the VM runs.", &l, b(v.state == VmState::Running));
                m.sample(
                    "bmonitor_vm_cpu_ms_total",
                    "counter",
                    "CPU time of the VM's current run.",
                    &l,
                    v.cpu_ms as f64,
                );
                m.sample("bmonitor_vm_exits_total", "counter", "VM exits of the current run.", &l, v.exits as f64);
                m.sample(
                    "bmonitor_vm_exits_per_second",
                    "gauge",
                    "VM exits per second over the last push interval.",
                    &l,
                    v.exits_per_sec as f64,
                );
                m.sample("bmonitor_vm_starts_total", "counter", "Times the VM was started.", &l, v.starts as f64);
                let Some(a) = &v.agent else { continue };
                if a.attached {
                    m.sample(
                        "bmonitor_agent_hung",
                        "gauge",
                        "1 while the VM's agent misses heartbeats.",
                        &l,
                        b(a.hung),
                    );
                }
                if let Some(age) = a.since_heartbeat_ms {
                    m.sample(
                        "bmonitor_agent_heartbeat_age_ms",
                        "gauge",
                        "Milliseconds since the agent's last heartbeat.",
                        &l,
                        age as f64,
                    );
                }
                if let Some(load) = &a.load {
                    let l1 = load.load_milli.first().copied().unwrap_or(0);
                    m.sample(
                        "bmonitor_guest_load1",
                        "gauge",
                        "Guest load average over 1 minute.",
                        &l,
                        f64::from(l1) / 1000.0,
                    );
                }
                for s in &a.services {
                    let sl = [
                        ("node", n.name.as_str()),
                        ("vm", id.as_str()),
                        ("name", v.name.as_str()),
                        ("service", s.name.as_str()),
                    ];
                    m.sample("bmonitor_service_up", "gauge", "1 while the service runs.", &sl, b(s.state == "running"));
                    m.sample(
                        "bmonitor_service_failures_total",
                        "counter",
                        "Service failures since the VM started.",
                        &sl,
                        f64::from(s.failures),
                    );
                }
            }
        }
        for ((node, rule, action, ok), count) in &self.actions {
            let ok = if *ok { "true" } else { "false" };
            let l = [("node", node.as_str()), ("rule", rule.as_str()), ("action", action.as_str()), ("ok", ok)];
            m.sample(
                "bmonitor_actions_total",
                "counter",
                "Policy actions the watch saw, by outcome.",
                &l,
                *count as f64,
            );
        }
        for ((node, kind), count) in &self.events {
            let l = [("node", node.as_str()), ("kind", kind.as_str())];
            m.sample("bmonitor_events_total", "counter", "Events the watch received, by kind.", &l, *count as f64);
        }
        m.render()
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// A health report in the dashboard's terms (names, lowercase states).
fn health_json(h: &HealthReport) -> Value {
    let probes: Vec<Value> = h
        .probes
        .iter()
        .map(|p| json!({"probe": p.probe.name(), "ok": p.ok, "detail": p.detail, "failures": p.failures, "at_ms": p.at_ms}))
        .collect();
    let vms: Vec<Value> = h
        .vms
        .iter()
        .map(|v| {
            let agent = v.agent.as_ref().map(|a| {
                json!({
                    "attached": a.attached,
                    "hung": a.hung,
                    "since_heartbeat_ms": a.since_heartbeat_ms,
                    "load1": a.load.as_ref().and_then(|l| l.load_milli.first()).map(|m| f64::from(*m) / 1000.0),
                    "services": a.services.iter().map(|s| json!({"name": s.name, "state": s.state, "failures": s.failures})).collect::<Vec<_>>(),
                })
            });
            json!({
                "vm": v.vm.0,
                "name": v.name,
                "lease": v.lease.0,
                "cluster": v.cluster.0,
                "state": format!("{:?}", v.state).to_lowercase(),
                "starts": v.starts,
                "cpu_ms": v.cpu_ms,
                "exits": v.exits,
                "exits_per_sec": v.exits_per_sec,
                "agent": agent,
            })
        })
        .collect();
    json!({
        "beat": h.beat,
        "uptime_ms": h.uptime_ms,
        "memory_free_mib": h.memory_free_mib,
        "exits_per_sec": h.exits_per_sec,
        "probes": probes,
        "vms": vms,
    })
}

/// Metric families in first-use order, each sample under its family, so
/// HELP and TYPE appear once per family as the format requires.
#[derive(Default)]
struct Metrics {
    order: Vec<&'static str>,
    families: BTreeMap<&'static str, (&'static str, &'static str, String)>,
}

impl Metrics {
    fn sample(&mut self, name: &'static str, kind: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        let fam = self.families.entry(name).or_insert_with(|| {
            self.order.push(name);
            (kind, help, String::new())
        });
        let body = &mut fam.2;
        body.push_str(name);
        if !labels.is_empty() {
            body.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let _ = write!(body, "{k}=\"{}\"", escape_label(val));
            }
            body.push('}');
        }
        let _ = writeln!(body, " {}", number(v));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            if let Some((kind, help, body)) = self.families.get(name) {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
                let _ = writeln!(out, "# TYPE {name} {kind}");
                out.push_str(body);
            }
        }
        out
    }
}

/// A sample value as the format writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value escaped per the text format: backslash, double quote and
/// line feed.
pub fn escape_label(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use agent_proto::msg::GuestLoad;
    use mgmt_proto::monitor::{AgentHealth, PolicyAction, Probe, ProbeStatus, ServiceHealth, VmHealth};
    use mgmt_proto::{ClusterId, LeaseId, Role, VmId};

    fn ev(seq: u64, scope: Scope, kind: EventKind, text: &str) -> MonitorEvent {
        MonitorEvent { seq, time_ms: seq * 10, scope, kind, text: text.into() }
    }

    fn health(state: VmState) -> HealthReport {
        HealthReport {
            beat: 1,
            uptime_ms: 12_500,
            memory_free_mib: 900,
            exits_per_sec: 40,
            probes: vec![
                ProbeStatus { probe: Probe::Disk, ok: Some(true), detail: "ok".into(), at_ms: 1, failures: 0 },
                ProbeStatus { probe: Probe::Tpm, ok: None, detail: "no tpm".into(), at_ms: 1, failures: 0 },
            ],
            vms: vec![VmHealth {
                vm: VmId(3),
                name: "we\"b".into(),
                lease: LeaseId(1),
                cluster: ClusterId(0),
                state,
                starts: 2,
                cpu_ms: 1500,
                exits: 99,
                exits_per_sec: 7,
                agent: Some(AgentHealth {
                    attached: true,
                    hung: false,
                    since_heartbeat_ms: Some(250),
                    load: Some(GuestLoad {
                        load_milli: [1250, 0, 0],
                        mem_available_kib: 0,
                        processes: 3,
                        services_running: 1,
                        services_failed: 0,
                    }),
                    services: vec![ServiceHealth { name: "api".into(), state: "running".into(), failures: 2 }],
                }),
            }],
        }
    }

    fn push(h: Option<HealthReport>, events: Vec<MonitorEvent>, lost: u64, next_seq: u64) -> Push {
        Push { health: h, events, lost, next_seq }
    }

    #[test]
    fn pushes_build_the_view_and_metrics() {
        let mut v = View::default();
        v.add_node("n1", "127.0.0.1:7700", "landlord");
        assert_eq!(v.since("n1"), None);
        assert_eq!(v.subscribed("n1", 1, 7), Resume::Continue);
        let vm = Scope::Vm { vm: VmId(3), lease: LeaseId(1) };
        let got = v.apply_push(
            "n1",
            &push(Some(health(VmState::Running)), vec![ev(1, vm, EventKind::VmStarted, "")], 0, 2),
            1000,
        );
        assert_eq!(got.len(), 1);
        let action =
            EventKind::Action { owner: Owner::Landlord, rule: "r1".into(), action: PolicyAction::RestartVm, ok: true };
        let got = v.apply_push(
            "n1",
            &push(
                Some(health(VmState::Faulted).for_role(Role::Landlord)),
                vec![ev(2, vm, EventKind::VmFaulted, "triple fault"), ev(3, vm, action, "restarted")],
                4,
                4,
            ),
            2000,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(v.since("n1"), Some(4));
        let m = v.metrics();
        for want in [
            "# HELP bmonitor_up 1 while the watch holds a subscription to the node.\n# TYPE bmonitor_up gauge\nbmonitor_up{node=\"n1\"} 1\n",
            "bmonitor_node_uptime_seconds{node=\"n1\"} 12.5\n",
            "bmonitor_node_memory_free_mib{node=\"n1\"} 900\n",
            "bmonitor_probe_ok{node=\"n1\",probe=\"disk\"} 1\n",
            "bmonitor_vm_running{node=\"n1\",vm=\"3\",name=\"we\\\"b\"} 0\n",
            "bmonitor_vm_cpu_ms_total{node=\"n1\",vm=\"3\",name=\"we\\\"b\"} 1500\n",
            "# TYPE bmonitor_actions_total counter\nbmonitor_actions_total{node=\"n1\",rule=\"r1\",action=\"restart-vm\",ok=\"true\"} 1\n",
            "bmonitor_events_total{node=\"n1\",kind=\"vm-faulted\"} 1\n",
            "bmonitor_events_lost_total{node=\"n1\"} 4\n",
        ] {
            assert!(m.contains(want), "missing {want:?} in\n{m}");
        }
        // The landlord's report has no agents; no Tpm sample (nothing to check).
        assert!(
            !m.contains("bmonitor_agent_hung") && !m.contains("bmonitor_probe_ok{node=\"n1\",probe=\"tpm\"}"),
            "{m}"
        );
        assert!(m.contains("bmonitor_probe_failures{node=\"n1\",probe=\"tpm\"} 0"), "{m}");
        // Each family's HELP and TYPE once.
        for line in m.lines().filter(|l| l.starts_with("# TYPE")) {
            assert_eq!(m.matches(&format!("{line}\n")).count(), 1, "{line}");
        }
        // A disconnected node keeps only up/lost/reconnects.
        v.disconnected("n1", "connection lost");
        let m = v.metrics();
        assert!(m.contains("bmonitor_up{node=\"n1\"} 0") && !m.contains("bmonitor_vm_running"), "{m}");
    }

    #[test]
    fn a_tenant_sees_agents_and_services_but_no_node_facts() {
        let mut v = View::default();
        v.add_node("t", "h:1", "tenant:1");
        v.subscribed("t", 1, 7);
        v.apply_push("t", &push(Some(health(VmState::Running).for_role(Role::Tenant(LeaseId(1)))), vec![], 0, 1), 5);
        let m = v.metrics();
        assert!(!m.contains("memory_free") && !m.contains("bmonitor_probe"), "{m}");
        for want in [
            "bmonitor_agent_hung{node=\"t\",vm=\"3\",name=\"we\\\"b\"} 0",
            "bmonitor_agent_heartbeat_age_ms{node=\"t\",vm=\"3\",name=\"we\\\"b\"} 250",
            "bmonitor_guest_load1{node=\"t\",vm=\"3\",name=\"we\\\"b\"} 1.25",
            "bmonitor_service_up{node=\"t\",vm=\"3\",name=\"we\\\"b\",service=\"api\"} 1",
            "bmonitor_service_failures_total{node=\"t\",vm=\"3\",name=\"we\\\"b\",service=\"api\"} 2",
        ] {
            assert!(m.contains(want), "missing {want:?} in\n{m}");
        }
        let s = v.state_json(10);
        let vm = &s["nodes"][0]["health"]["vms"][0];
        assert_eq!(vm["state"], "running");
        assert_eq!(vm["agent"]["services"][0]["name"], "api");
        assert_eq!(s["nodes"][0]["connected"], true);
    }

    #[test]
    fn resumes_skip_repeats_and_restarts_start_over() {
        let mut v = View::default();
        v.add_node("n", "h:1", "landlord");
        v.subscribed("n", 1, 7);
        let e = |s| ev(s, Scope::Node, EventKind::ProbeFailed(Probe::Disk), "x");
        assert_eq!(v.apply_push("n", &push(None, vec![e(1), e(2)], 0, 3), 1).len(), 2);
        // Reconnected: the node repeats 2 (we asked from 3, but be safe).
        v.disconnected("n", "closed");
        assert_eq!(v.subscribed("n", 3, 7), Resume::Continue);
        assert_eq!(v.nodes["n"].reconnects_total, 1);
        let got = v.apply_push("n", &push(None, vec![e(2), e(3)], 0, 4), 2);
        assert_eq!(got.iter().map(|r| r.event.seq).collect::<Vec<_>>(), vec![3]);
        // The node restarted: its sequence is behind ours.
        v.disconnected("n", "closed");
        assert_eq!(v.subscribed("n", 1, 7), Resume::Restarted { ours: 4, theirs: 1 });
        assert_eq!(v.since("n"), Some(1));
        assert_eq!(v.apply_push("n", &push(None, vec![e(1)], 0, 2), 3).len(), 1);
        assert_eq!(v.nodes["n"].restarts_seen, 1);
        assert_eq!(v.events[&("n".to_string(), "probe-failed".to_string())], 4);
        // Restarted again and already past our number: the boot id tells.
        v.disconnected("n", "closed");
        assert_eq!(v.subscribed("n", 9, 8), Resume::Restarted { ours: 2, theirs: 9 });
        assert_eq!(v.since("n"), Some(1));
        assert_eq!(v.nodes["n"].restarts_seen, 2);
    }

    #[test]
    fn recent_events_are_bounded() {
        let mut v = View::default();
        v.subscribed("n", 1, 7);
        let evs: Vec<MonitorEvent> = (1..=300).map(|s| ev(s, Scope::Node, EventKind::VmStarted, "")).collect();
        for chunk in evs.chunks(50) {
            let next = chunk.last().unwrap().seq + 1;
            v.apply_push("n", &push(None, chunk.to_vec(), 0, next), 1);
        }
        assert_eq!(v.recent.len(), RECENT_EVENTS);
        assert_eq!(v.recent.front().unwrap().event.seq, 101);
        assert_eq!(v.state_json(1)["events"].as_array().unwrap().len(), RECENT_EVENTS);
    }

    #[test]
    fn lines_and_json_escape_node_text() {
        let r = Received {
            node: "n1".into(),
            at_ms: 1_700_000_000_123,
            event: ev(
                7,
                Scope::Guest { vm: VmId(3), lease: LeaseId(1) },
                EventKind::Notify { owner: Owner::Tenant(LeaseId(1)), rule: "page\nme".into() },
                "bad\x1b[2J",
            ),
        };
        let l = event_line(&r);
        assert_eq!(l, "2023-11-14T22:13:20.123Z n1 guest:3 notify:tenant:1:page\\nme bad\\u{1b}[2J");
        let j = event_json(&r);
        assert_eq!(j["kind"], "notify");
        assert_eq!(j["vm"], 3);
        assert_eq!(j["text"], "bad\x1b[2J");
        assert_eq!(j["event"]["seq"], 7);
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
