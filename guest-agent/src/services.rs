//! Supervised services: the agent starts them, keeps their last output
//! lines, restarts them by policy with backoff and a restart limit, and
//! reports every state change as a `ServiceEvent`.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agent_proto::msg::{decode, encode, RestartPolicy, ServiceSpec, ServiceStatus};

use crate::{exec, sys};

/// Output lines kept per service.
pub const MAX_LOG_LINES: usize = 1000;
/// Longest kept line (longer output is split).
const MAX_LINE: usize = 1024;
/// Services at most.
pub const MAX_SERVICES: usize = 64;
/// SIGTERM, then SIGKILL after this long.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest restart delay.
const MAX_BACKOFF_MS: u64 = 30_000;
/// A run this long resets the backoff doubling.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// File (in the state directory) with the service definitions.
const STATE_FILE: &str = "services";
/// Largest state file read back.
const MAX_STATE: usize = 1 << 20;

enum Then {
    Stop,
    Start,
    Remove,
}

enum State {
    Running { child: Child, since: Instant },
    Stopping { child: Child, since: Instant, kill_at: Option<Instant>, then: Then },
    Backoff { until: Instant },
    Stopped,
    Failed,
}

/// The last lines of a service's combined stdout/stderr.
#[derive(Default)]
struct LogBuf {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl LogBuf {
    fn push_line(&mut self, b: &[u8]) {
        if self.lines.len() >= MAX_LOG_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(String::from_utf8_lossy(b).into_owned());
    }

    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.push_line(&line);
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    let line = std::mem::take(&mut self.partial);
                    self.push_line(&line);
                }
            }
        }
    }
}

struct Svc {
    spec: ServiceSpec,
    state: State,
    restarts: u32,
    consecutive: u32,
    recent: VecDeque<Instant>,
    last_exit: Option<String>,
    log: LogBuf,
    out: Option<OwnedFd>,
}

/// The supervisor.
pub struct Services {
    list: BTreeMap<String, Svc>,
    state_dir: Option<PathBuf>,
    events: Vec<(String, String)>,
}

/// Whether a service name is acceptable (1-32 of A-Z a-z 0-9 _ . -).
pub fn valid_name(n: &str) -> bool {
    (1..=32).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn describe(st: ExitStatus) -> (String, String) {
    match (st.code(), st.signal()) {
        (Some(c), _) => (format!("exited with status {c}"), format!("exit {c}")),
        (None, Some(s)) => (format!("killed by signal {s}"), format!("signal {s}")),
        _ => ("exited".into(), "exit ?".into()),
    }
}

fn child_pid(c: &Child) -> i32 {
    i32::try_from(c.id()).unwrap_or(0)
}

impl Svc {
    fn new(spec: ServiceSpec) -> Svc {
        Svc {
            spec,
            state: State::Stopped,
            restarts: 0,
            consecutive: 0,
            recent: VecDeque::new(),
            last_exit: None,
            log: LogBuf::default(),
            out: None,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Running { .. } | State::Stopping { .. } => "running",
            State::Backoff { .. } => "backoff",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    fn status(&self) -> ServiceStatus {
        let pid = match &self.state {
            State::Running { child, .. } | State::Stopping { child, .. } => Some(child.id()),
            _ => None,
        };
        ServiceStatus {
            name: self.spec.name.clone(),
            state: self.state_name().to_string(),
            pid,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            restart: self.spec.restart,
        }
    }

    fn spawn(&mut self) -> std::io::Result<Child> {
        let prog = self.spec.argv.first().ok_or_else(|| std::io::Error::other("empty argv"))?;
        let (r, w) = sys::pipe()?;
        sys::set_nonblocking(r.as_raw_fd())?;
        let mut cmd = Command::new(prog);
        crate::hypercall::no_io_permission(&mut cmd);
        cmd.args(self.spec.argv.iter().skip(1))
            .env("PATH", exec::search_path(&self.spec.env))
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(w.try_clone()?))
            .stderr(Stdio::from(w));
        let child = cmd.spawn()?;
        self.out = Some(r);
        Ok(child)
    }

    /// Starts the process now; events say what happened.
    fn start(&mut self, now: Instant, ev: &mut Vec<String>) {
        match self.spawn() {
            Ok(child) => {
                ev.push(format!("started pid {}", child.id()));
                self.state = State::Running { child, since: now };
            }
            Err(e) => {
                ev.push(format!("cannot start: {e}"));
                self.last_exit = Some(format!("cannot start: {e}"));
                self.after_exit(true, Duration::ZERO, now, ev);
            }
        }
    }

    /// A fresh start asked by the tenant: counters reset.
    fn start_fresh(&mut self, now: Instant, ev: &mut Vec<String>) {
        self.consecutive = 0;
        self.recent.clear();
        self.start(now, ev);
    }

    /// Applies the restart policy after the process ended by itself.
    fn after_exit(&mut self, failed: bool, ran: Duration, now: Instant, ev: &mut Vec<String>) {
        let restart = match self.spec.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Always => true,
        };
        if !restart {
            self.state = State::Stopped;
            ev.push("stopped".into());
            return;
        }
        if ran >= STABLE_RUN {
            self.consecutive = 0;
        }
        let window = Duration::from_secs(u64::from(self.spec.window_secs));
        if self.spec.window_secs > 0 {
            while self.recent.front().is_some_and(|t| now.duration_since(*t) > window) {
                self.recent.pop_front();
            }
        }
        let max = self.spec.max_restarts as usize;
        if max > 0 && self.recent.len() >= max {
            self.state = State::Failed;
            ev.push(format!("failed: {} restarts in {} s (max_restarts)", self.recent.len(), self.spec.window_secs));
            return;
        }
        let delay =
            u64::from(self.spec.backoff_ms).saturating_mul(1u64 << self.consecutive.min(20)).min(MAX_BACKOFF_MS);
        self.consecutive = self.consecutive.saturating_add(1);
        self.restarts = self.restarts.saturating_add(1);
        self.recent.push_back(now);
        if self.recent.len() > 10_000 {
            self.recent.pop_front();
        }
        self.state = State::Backoff { until: now + Duration::from_millis(delay) };
        ev.push(format!("restarting in {delay} ms (restart {})", self.restarts));
    }

    /// Asks the process to stop, then does `then`.
    fn stop_then(&mut self, then: Then, now: Instant, ev: &mut Vec<String>) -> bool {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running { child, since } => {
                let _ = sys::kill_group(child_pid(&child), libc::SIGTERM);
                self.state = State::Stopping { child, since, kill_at: Some(now + STOP_GRACE), then };
                false
            }
            State::Stopping { child, since, kill_at, .. } => {
                self.state = State::Stopping { child, since, kill_at, then };
                false
            }
            State::Backoff { .. } => {
                ev.push("stopped".into());
                true
            }
            other => {
                self.state = other;
                true
            }
        }
    }

    fn read_output(&mut self) {
        let Some(fd) = self.out.as_ref().map(|f| f.as_raw_fd()) else { return };
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match sys::read_some(fd, &mut buf) {
                Ok(sys::Read::Data(n)) => self.log.feed(buf.get(..n).unwrap_or_default()),
                Ok(sys::Read::WouldBlock) => return,
                Ok(sys::Read::Eof) | Err(_) => {
                    self.out = None;
                    return;
                }
            }
        }
    }

    /// Reaps, escalates stops, ends backoffs; `true` when to be removed.
    fn tick(&mut self, now: Instant, ev: &mut Vec<String>) -> bool {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running { mut child, since } => match child.try_wait() {
                Ok(Some(st)) => {
                    self.read_output();
                    let (what, last) = describe(st);
                    ev.push(what);
                    self.last_exit = Some(last);
                    self.after_exit(!st.success(), now.duration_since(since), now, ev);
                }
                _ => self.state = State::Running { child, since },
            },
            State::Stopping { mut child, since, mut kill_at, then } => match child.try_wait() {
                Ok(Some(st)) => {
                    self.read_output();
                    let (what, last) = describe(st);
                    ev.push(format!("{what}{}", agent_proto::msg::STOP_REQUESTED));
                    self.last_exit = Some(last);
                    match then {
                        Then::Stop => ev.push("stopped".into()),
                        Then::Start => self.start_fresh(now, ev),
                        Then::Remove => {
                            ev.push("removed".into());
                            return true;
                        }
                    }
                }
                _ => {
                    if kill_at.is_some_and(|t| now >= t) {
                        let _ = sys::kill_group(child_pid(&child), libc::SIGKILL);
                        let _ = child.kill();
                        kill_at = None;
                    }
                    self.state = State::Stopping { child, since, kill_at, then };
                }
            },
            State::Backoff { until } if now >= until => self.start(now, ev),
            other => self.state = other,
        }
        false
    }

    fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Backoff { until } => Some(*until),
            State::Stopping { kill_at, .. } => *kill_at,
            _ => None,
        }
    }

    fn has_child(&self) -> bool {
        matches!(self.state, State::Running { .. } | State::Stopping { .. })
    }
}

impl Services {
    /// The supervisor, with definitions read back from `state_dir` (and
    /// started) when present.
    pub fn new(state_dir: Option<PathBuf>) -> Services {
        let mut s = Services { list: BTreeMap::new(), state_dir, events: Vec::new() };
        if let Some(dir) = &s.state_dir {
            let path = dir.join(STATE_FILE);
            if let Ok(b) = std::fs::read(&path) {
                match decode::<Vec<ServiceSpec>>(&b, MAX_STATE) {
                    Ok(specs) => {
                        for spec in specs {
                            let _ = s.define(spec);
                        }
                    }
                    Err(e) => crate::log(&format!("ignoring {}: unreadable ({e:?})", path.display())),
                }
            }
        }
        s
    }

    fn persist(&self) {
        let Some(dir) = &self.state_dir else { return };
        let specs: Vec<ServiceSpec> = self.list.values().map(|s| s.spec.clone()).collect();
        let res = encode(&specs, MAX_STATE).map_err(|e| format!("{e:?}")).and_then(|b| {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let tmp = dir.join(format!("{STATE_FILE}.tmp"));
            std::fs::write(&tmp, b).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(|e| e.to_string())
        });
        if let Err(e) = res {
            crate::log(&format!("cannot save service definitions in {}: {e}", dir.display()));
        }
    }

    fn note(&mut self, name: &str, ev: Vec<String>) {
        self.events.extend(ev.into_iter().map(|w| (name.to_string(), w)));
    }

    fn get(&mut self, name: &str) -> Result<&mut Svc, String> {
        self.list.get_mut(name).ok_or_else(|| format!("no service named {name}"))
    }

    /// Defines (or redefines) a service and starts it.
    pub fn define(&mut self, spec: ServiceSpec) -> Result<(), String> {
        if !valid_name(&spec.name) {
            return Err(format!("invalid service name {:?}: 1-32 chars of A-Z a-z 0-9 _ . -", spec.name));
        }
        if spec.argv.is_empty() {
            return Err("a service needs a program (argv is empty)".into());
        }
        if !self.list.contains_key(&spec.name) && self.list.len() >= MAX_SERVICES {
            return Err(format!("at most {MAX_SERVICES} services may be defined"));
        }
        let now = Instant::now();
        let name = spec.name.clone();
        let mut ev = Vec::new();
        match self.list.get_mut(&name) {
            Some(svc) => {
                svc.spec = spec;
                if svc.stop_then(Then::Start, now, &mut ev) {
                    svc.start_fresh(now, &mut ev);
                }
            }
            None => {
                let mut svc = Svc::new(spec);
                svc.start_fresh(now, &mut ev);
                self.list.insert(name.clone(), svc);
            }
        }
        self.note(&name, ev);
        self.persist();
        Ok(())
    }

    /// Stops and forgets a service.
    pub fn remove(&mut self, name: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut ev = Vec::new();
        let gone = self.get(name)?.stop_then(Then::Remove, now, &mut ev);
        if gone {
            self.list.remove(name);
            ev.push("removed".into());
        }
        self.note(name, ev);
        self.persist();
        Ok(())
    }

    /// Starts a service that is not running.
    pub fn start(&mut self, name: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut ev = Vec::new();
        let svc = self.get(name)?;
        match &mut svc.state {
            State::Running { .. } => {}
            State::Stopping { then, .. } => *then = Then::Start,
            _ => svc.start_fresh(now, &mut ev),
        }
        self.note(name, ev);
        Ok(())
    }

    /// Stops a service (SIGTERM to its group, SIGKILL after 5 s).
    pub fn stop(&mut self, name: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut ev = Vec::new();
        self.get(name)?.stop_then(Then::Stop, now, &mut ev);
        self.note(name, ev);
        Ok(())
    }

    /// Stops (if running) then starts a service.
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut ev = Vec::new();
        let svc = self.get(name)?;
        if svc.stop_then(Then::Start, now, &mut ev) {
            svc.start_fresh(now, &mut ev);
        }
        self.note(name, ev);
        Ok(())
    }

    /// The state of one service or all.
    pub fn status(&self, name: Option<&str>) -> Result<Vec<ServiceStatus>, String> {
        match name {
            Some(n) => self.list.get(n).map(|s| vec![s.status()]).ok_or_else(|| format!("no service named {n}")),
            None => Ok(self.list.values().map(Svc::status).collect()),
        }
    }

    /// The last `lines` (≤ 1000) output lines of a service.
    pub fn logs(&self, name: &str, lines: u32) -> Result<Vec<String>, String> {
        let s = self.list.get(name).ok_or_else(|| format!("no service named {name}"))?;
        let n = (lines as usize).min(MAX_LOG_LINES);
        let mut v: Vec<String> = s.log.lines.iter().rev().take(n).cloned().collect();
        v.reverse();
        Ok(v)
    }

    /// (running, failed) counts for the heartbeat.
    pub fn counts(&self) -> (u32, u32) {
        let running = self.list.values().filter(|s| s.has_child()).count() as u32;
        let failed = self.list.values().filter(|s| matches!(s.state, State::Failed)).count() as u32;
        (running, failed)
    }

    /// Output pipes to poll, with the service name.
    pub fn poll_fds(&self) -> Vec<(RawFd, String)> {
        self.list.values().filter_map(|s| Some((s.out.as_ref()?.as_raw_fd(), s.spec.name.clone()))).collect()
    }

    /// A service's output is readable.
    pub fn readable(&mut self, name: &str) {
        if let Some(s) = self.list.get_mut(name) {
            s.read_output();
        }
    }

    /// Time-driven work; returns (name, what) events.
    pub fn tick(&mut self, now: Instant) -> Vec<(String, String)> {
        let names: Vec<String> = self.list.keys().cloned().collect();
        let mut removed = false;
        for name in names {
            let mut ev = Vec::new();
            let gone = self.list.get_mut(&name).map(|s| s.tick(now, &mut ev)).unwrap_or(false);
            if gone {
                self.list.remove(&name);
                removed = true;
            }
            self.note(&name, ev);
        }
        if removed {
            self.persist();
        }
        std::mem::take(&mut self.events)
    }

    /// Whether any child needs reaping (the loop then polls briefly).
    pub fn has_children(&self) -> bool {
        self.list.values().any(Svc::has_child)
    }

    /// The nearest backoff or kill deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.list.values().filter_map(Svc::next_deadline).min()
    }
}
