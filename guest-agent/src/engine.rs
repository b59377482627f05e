//! The agent's core, independent of the hypervisor: takes `ToAgent`
//! messages, runs the operations (commands, files, services, queries),
//! enforces each stream's window, and queues `FromAgent` messages for the
//! transport. One thread, one poll(2) loop; host tests drive it directly.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_proto::msg::{encode, GuestLoad, ServiceOp, StreamId, CONTROL_STREAM};
use agent_proto::{Event, FromAgent, Input, Op, RelayLimits, ToAgent, AGENT_PROTOCOL, MAX_DATA, MAX_RECORD};

use crate::exec::{Exec, Pipe};
use crate::files::{ReadOp, ReadStep, WriteOp};
use crate::services::Services;
use crate::{files, inventory, procs, sys};

/// Operations at once (the node allows as many streams).
pub const MAX_OPS: usize = 16;
/// Window weight kept back so a stream's terminal event always fits.
const RESERVE: i64 = 64;
/// Control-stream messages queued at most (service events beyond are dropped).
const MAX_CONTROL_QUEUED: usize = 1000;
/// How often children are reaped while any run.
const REAP_EVERY: Duration = Duration::from_millis(20);
/// How soon to look for the exit status once a command's output has ended.
const REAP_SOON: Duration = Duration::from_millis(1);

fn window() -> i64 {
    RelayLimits::default().stream_window as i64
}

enum Running {
    Exec(Box<Exec>),
    Read(ReadOp),
    Write(WriteOp),
}

struct Stream {
    /// Event weight we may still send (window minus outstanding).
    credit: i64,
    op: Running,
}

impl Stream {
    /// Bytes of data we may read now for this stream.
    fn budget(&self) -> usize {
        (self.credit - RESERVE).clamp(0, MAX_DATA as i64) as usize
    }
}

/// What the engine needs from its surroundings.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where service definitions persist (`None`: not persisted).
    pub state_dir: Option<PathBuf>,
}

/// The operation engine.
pub struct Engine {
    streams: BTreeMap<StreamId, Stream>,
    services: Services,
    out: VecDeque<FromAgent>,
    heartbeat_ms: u32,
    next_heartbeat: Instant,
    seq: u64,
}

/// Whether a message fits one ring record.
fn fits(m: &FromAgent) -> bool {
    encode(m, MAX_RECORD).is_ok()
}

/// Shrinks an oversized result so it fits a record: drops the oldest log
/// lines, trailing processes or packages; else turns it into an error.
fn fit(stream: StreamId, mut event: Event) -> FromAgent {
    loop {
        let m = FromAgent::Event { stream, event };
        if fits(&m) {
            return m;
        }
        let FromAgent::Event { event: e, .. } = m else { return m };
        event = match e {
            Event::Logs(mut v) if v.len() > 1 => {
                v.drain(..v.len().div_ceil(8));
                Event::Logs(v)
            }
            Event::Processes(mut v) if v.len() > 1 => {
                v.truncate(v.len() * 7 / 8);
                Event::Processes(v)
            }
            Event::Inventory(mut inv) if !inv.packages.is_empty() => {
                let keep = inv.packages.len() * 7 / 8;
                inv.packages.truncate(keep);
                Event::Inventory(inv)
            }
            Event::Tree(v) => Event::Error(format!(
                "the listing ({} entries) is larger than one agent record ({MAX_RECORD} bytes); list a subdirectory",
                v.len()
            )),
            _ => Event::Error(format!("the result is larger than one agent record ({MAX_RECORD} bytes)")),
        };
    }
}

impl Engine {
    /// An engine with no operations; services are read back from the state directory.
    pub fn new(cfg: Config) -> Engine {
        let heartbeat_ms = agent_proto::relay::DEFAULT_HEARTBEAT_MS;
        Engine {
            streams: BTreeMap::new(),
            services: Services::new(cfg.state_dir),
            out: VecDeque::new(),
            heartbeat_ms,
            next_heartbeat: Instant::now() + Duration::from_millis(u64::from(heartbeat_ms)),
            seq: 0,
        }
    }

    /// The next message for the node, if any (taken with [`Engine::pop_front`]
    /// once the ring accepted it).
    pub fn front(&self) -> Option<&FromAgent> {
        self.out.front()
    }

    /// Drops the message [`Engine::front`] returned.
    pub fn pop_front(&mut self) -> Option<FromAgent> {
        self.out.pop_front()
    }

    /// The node forgot us (detached): end every operation, drop what was
    /// queued, and start over with a Hello.
    pub fn restart_session(&mut self) {
        self.streams.clear();
        self.out.clear();
        self.out.push_back(hello());
    }

    /// Queues a heartbeat when one is due; `true` when it did.
    pub fn heartbeat(&mut self, now: Instant) -> bool {
        if now < self.next_heartbeat {
            return false;
        }
        self.next_heartbeat = now + Duration::from_millis(u64::from(self.heartbeat_ms));
        self.seq += 1;
        let (_, mem_available_kib) = procs::meminfo();
        let (services_running, services_failed) = self.services.counts();
        let load = GuestLoad {
            load_milli: procs::loadavg(),
            mem_available_kib,
            processes: procs::count(),
            services_running,
            services_failed,
        };
        self.out.push_back(FromAgent::Heartbeat { seq: self.seq, uptime_ms: procs::uptime_ms(), load });
        true
    }

    /// When the next heartbeat is due.
    pub fn next_heartbeat(&self) -> Instant {
        self.next_heartbeat
    }

    fn emit(&mut self, stream: StreamId, event: Event) {
        let m = if event.is_terminal() { fit(stream, event) } else { FromAgent::Event { stream, event } };
        if let (Some(s), FromAgent::Event { event, .. }) = (self.streams.get_mut(&stream), &m) {
            s.credit -= event.weight() as i64;
        }
        self.out.push_back(m);
    }

    fn finish(&mut self, stream: StreamId, event: Event) {
        self.emit(stream, event);
        self.streams.remove(&stream);
    }

    /// Takes one message from the node.
    pub fn handle(&mut self, msg: ToAgent) {
        match msg {
            ToAgent::Open { stream, op } => self.open(stream, op),
            ToAgent::Input { stream, input } => self.input(stream, input),
            ToAgent::Credit { stream, bytes } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.credit = (s.credit + i64::from(bytes)).min(window());
                }
            }
            ToAgent::Configure { heartbeat_ms } => {
                self.heartbeat_ms = heartbeat_ms.clamp(100, 60_000);
                let next = Instant::now() + Duration::from_millis(u64::from(self.heartbeat_ms));
                self.next_heartbeat = self.next_heartbeat.min(next);
            }
        }
    }

    fn start(&mut self, stream: StreamId, op: Running) {
        self.streams.insert(stream, Stream { credit: window(), op });
    }

    fn open(&mut self, stream: StreamId, op: Op) {
        // A reused id replaces (and ends) the old operation.
        self.streams.remove(&stream);
        if stream == CONTROL_STREAM {
            return;
        }
        if self.streams.len() >= MAX_OPS {
            self.out.push_back(FromAgent::Event {
                stream,
                event: Event::Error(format!("at most {MAX_OPS} agent operations may run at once")),
            });
            return;
        }
        let done = match op {
            Op::Exec(spec) => match Exec::spawn(&spec) {
                Ok(e) => {
                    self.start(stream, Running::Exec(Box::new(e)));
                    return;
                }
                Err(why) => Event::Error(why),
            },
            Op::ReadFile { path, offset } => match ReadOp::open(&path, offset) {
                Ok(r) => {
                    self.start(stream, Running::Read(r));
                    return;
                }
                Err(why) => Event::Error(why),
            },
            Op::WriteFile { path, mode, offset, size } => match WriteOp::open(&path, mode, offset, size) {
                Ok(w) => {
                    self.start(stream, Running::Write(w));
                    return;
                }
                Err(why) => Event::Error(why),
            },
            Op::Stat { path } => files::stat(&path),
            Op::ListTree { path } => files::list_tree(&path),
            Op::MakeDir { path, mode } => files::make_dir(&path, mode),
            Op::Processes => Event::Processes(procs::list()),
            Op::Kill { pid, signal } => match sys::kill_pid(pid, signal) {
                Ok(()) => Event::Ok,
                Err(e) => Event::Error(format!("cannot signal pid {pid}: {e}")),
            },
            Op::Service(sop) => self.service(sop),
            Op::Inventory => {
                let services = self.services.status(None).unwrap_or_default();
                Event::Inventory(inventory::collect(services))
            }
        };
        self.out.push_back(fit(stream, done));
    }

    /// Defines the image's services that are not defined yet (a tenant's
    /// run-time definition wins); returns the errors.
    pub fn define_boot_services(&mut self, specs: Vec<agent_proto::msg::ServiceSpec>) -> Vec<String> {
        let mut errors = Vec::new();
        for spec in specs {
            if self.services.status(Some(&spec.name)).is_ok() {
                continue;
            }
            let name = spec.name.clone();
            if let Err(e) = self.services.define(spec) {
                errors.push(format!("service {name}: {e}"));
            }
        }
        self.push_service_events(Instant::now());
        errors
    }

    fn service(&mut self, op: ServiceOp) -> Event {
        let s = &mut self.services;
        let r = match op {
            ServiceOp::Define(spec) => s.define(spec),
            ServiceOp::Remove { name } => s.remove(&name),
            ServiceOp::Start { name } => s.start(&name),
            ServiceOp::Stop { name } => s.stop(&name),
            ServiceOp::Restart { name } => s.restart(&name),
            ServiceOp::Status { name } => return s.status(name.as_deref()).map_or_else(Event::Error, Event::Services),
            ServiceOp::Logs { name, lines } => return s.logs(&name, lines).map_or_else(Event::Error, Event::Logs),
        };
        self.push_service_events(Instant::now());
        r.map_or_else(Event::Error, |()| Event::Ok)
    }

    fn push_service_events(&mut self, now: Instant) {
        for (name, what) in self.services.tick(now) {
            if self.out.len() >= MAX_CONTROL_QUEUED {
                crate::log(&format!("service {name}: {what} (not sent: queue full)"));
                continue;
            }
            self.out.push_back(FromAgent::ServiceEvent { name, what });
        }
    }

    fn input(&mut self, stream: StreamId, input: Input) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        let end = match &mut s.op {
            Running::Exec(e) => {
                e.input(input);
                None
            }
            Running::Read(_) => matches!(input, Input::Cancel).then(|| Event::Error("cancelled".into())),
            Running::Write(w) => match input {
                Input::Data(d) => w.data(&d).err().map(Event::Error),
                Input::End => Some(w.finish()),
                Input::Cancel => Some(w.cancel()),
                Input::Signal(_) | Input::Resize(_) => None,
            },
        };
        if let Some(ev) = end {
            self.finish(stream, ev);
        }
    }

    /// One turn of the loop: waits up to `max_wait` for any descriptor
    /// (`extra`, e.g. the doorbell, included), moves data, reaps children,
    /// runs timers. `true` when `extra` became readable.
    pub fn run_once(&mut self, extra: Option<RawFd>, max_wait: Duration) -> bool {
        #[derive(Clone)]
        enum Tag {
            Extra,
            Exec(StreamId, Pipe),
            Service(String),
        }
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut tags: Vec<Tag> = Vec::new();
        let mut add = |fd: RawFd, events: i16, tag: Tag| {
            pfds.push(libc::pollfd { fd, events, revents: 0 });
            tags.push(tag);
        };
        if let Some(fd) = extra {
            add(fd, libc::POLLIN, Tag::Extra);
        }
        let now = Instant::now();
        let mut deadline = now + max_wait;
        let mut reap = self.services.has_children();
        for (id, s) in &self.streams {
            match &s.op {
                Running::Exec(e) => {
                    for (fd, ev, pipe) in e.poll_fds(s.budget() > 0) {
                        add(fd, ev, Tag::Exec(*id, pipe));
                    }
                    reap = true;
                    if e.output_done() {
                        // Only the exit status is missing: look again soon.
                        deadline = deadline.min(now + REAP_SOON);
                    }
                    if let Some(d) = e.next_deadline() {
                        deadline = deadline.min(d);
                    }
                }
                Running::Read(r) => {
                    if r.hashing() || s.budget() > 0 {
                        deadline = now;
                    }
                }
                Running::Write(_) => {}
            }
        }
        for (fd, name) in self.services.poll_fds() {
            add(fd, libc::POLLIN, Tag::Service(name));
        }
        if let Some(d) = self.services.next_deadline() {
            deadline = deadline.min(d);
        }
        if reap {
            deadline = deadline.min(now + REAP_EVERY);
        }
        let wait_ms = deadline.saturating_duration_since(now).as_millis().min(60_000) as i32;
        let mut rung = false;
        if let Err(e) = sys::poll(&mut pfds, wait_ms) {
            crate::log(&format!("poll failed: {e}"));
            std::thread::sleep(Duration::from_millis(50));
        }
        for (p, tag) in pfds.iter().zip(tags) {
            if p.revents == 0 {
                continue;
            }
            match tag {
                Tag::Extra => rung = true,
                Tag::Service(name) => self.services.readable(&name),
                Tag::Exec(id, pipe) => {
                    let Some(s) = self.streams.get_mut(&id) else { continue };
                    let budget = s.budget();
                    let Running::Exec(e) = &mut s.op else { continue };
                    if pipe == Pipe::In {
                        e.write_stdin();
                    } else if budget > 0 {
                        if let Some(ev) = e.read(pipe, budget) {
                            self.emit(id, ev);
                        }
                    }
                }
            }
        }
        self.step_files();
        self.check_execs();
        self.push_service_events(Instant::now());
        rung
    }

    fn step_files(&mut self) {
        let ids: Vec<StreamId> =
            self.streams.iter().filter(|(_, s)| matches!(s.op, Running::Read(_))).map(|(id, _)| *id).collect();
        for id in ids {
            // Bounded work per turn, so other streams are not starved.
            for _ in 0..8 {
                let Some(s) = self.streams.get_mut(&id) else { break };
                let budget = s.budget();
                let Running::Read(r) = &mut s.op else { break };
                if !r.hashing() && budget == 0 {
                    break;
                }
                match r.step(budget) {
                    ReadStep::Progress => {}
                    ReadStep::Event(ev) => self.emit(id, ev),
                    ReadStep::Finished(ev) => {
                        self.finish(id, ev);
                        break;
                    }
                }
            }
        }
    }

    fn check_execs(&mut self) {
        let now = Instant::now();
        let mut done = Vec::new();
        for (id, s) in self.streams.iter_mut() {
            let may_read = s.budget() > 0;
            if let Running::Exec(e) = &mut s.op {
                if let Some(ev) = e.check(now, may_read) {
                    done.push((*id, ev));
                }
            }
        }
        for (id, ev) in done {
            self.finish(id, ev);
        }
    }

    /// Operations running (for tests).
    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.streams.len()
    }
}

/// The Hello message, first after every attach.
pub fn hello() -> FromAgent {
    let (hostname, kernel) = sys::uname();
    FromAgent::Hello {
        protocol: AGENT_PROTOCOL,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        hostname,
        kernel,
    }
}
