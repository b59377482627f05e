//! `bmctl tenant` commands that go through the VM's guest agent (`bm-agent`):
//! exec, shell, cp, ps, kill, service, inventory, agent status and log.
//!
//! Each command uses one session. An operation is a stream on the node
//! (`AgentOpen`), fed with `AgentSend` and drained with `AgentPoll` until
//! its terminal event; the node bounds what it queues (docs/protocol.md,
//! "The guest agent"), so a full input queue (`Limit ... (input_bytes)`) is
//! backpressure: the input is sent again after a short pause.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use agent_proto::msg::{ExecSpec, Inventory, ProcessInfo, ServiceOp, ServiceStatus, WinSize};
use agent_proto::relay::LogEntry;
use agent_proto::{AgentStatus, Event, Input, Op, MAX_CONSOLE_DATA};
use mgmt_proto::{ErrorCode, ErrorReply, Request, Response, VmId};
use vmm_config::text::escape_control;

use crate::client::{Client, ClientError};

/// Bytes of events asked for per poll: one full data event and change, so
/// an answer always fits a message.
pub const POLL_BYTES: u32 = 60 * 1024;

/// Polling pauses while a stream is idle: 1 ms, doubling up to 32 ms.
const IDLE_FIRST: Duration = Duration::from_millis(1);
const IDLE_MAX: Duration = Duration::from_millis(32);

/// Polls in flight while a stream's events flow.
const POLL_PIPELINE: usize = 3;

/// Pause before resending input the node refused as backpressure.
const BACKPRESSURE_PAUSE: Duration = Duration::from_millis(10);

/// How an agent command failed (beyond the node's own refusals, which are
/// [`ClientError`]s).
#[derive(Debug, thiserror::Error)]
pub enum AgentFailure {
    /// The agent ended the operation with an error (exit 5).
    #[error("the agent refused: {}", escape_control(.0))]
    Agent(String),
    /// The agent did not become ready in time (exit 5).
    #[error("{0}")]
    NotReady(String),
    /// The remote command's exit status, passed on as bmctl's (nothing is
    /// printed).
    #[error("the command exited with status {0}")]
    Status(u8),
}

impl AgentFailure {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentFailure::Agent(_) | AgentFailure::NotReady(_) => 5,
            AgentFailure::Status(s) => *s,
        }
    }
}

/// bmctl's exit status for a remote command that ended: its exit code, 128+N
/// when killed by signal N, 124 when the agent killed it at its timeout (as
/// `timeout(1)` does).
pub fn exit_status(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> u8 {
    if timed_out {
        return 124;
    }
    match (code, signal) {
        (_, Some(s)) => u8::try_from(128 + s.clamp(0, 127)).unwrap_or(255),
        (Some(c), None) => (c & 0xff) as u8,
        (None, None) => 1,
    }
}

/// Whether a node refusal is the agent input queue's backpressure.
pub fn is_backpressure(e: &ClientError) -> bool {
    matches!(e, ClientError::Node(r) if r.code == ErrorCode::Limit && r.message.contains("input_bytes"))
}

/// A side of `bmctl tenant cp`: a local path, or `VM:PATH` in a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpPath {
    /// A local path.
    Local(String),
    /// An absolute path in a VM.
    Remote {
        /// The VM id.
        vm: u32,
        /// The absolute path in the guest.
        path: String,
    },
}

/// Parses a `cp` argument: `VM:PATH` (VM a decimal id, PATH absolute) is
/// remote, anything else local (`./3:x` names a local file).
pub fn parse_cp_path(s: &str) -> Result<CpPath, String> {
    if let Some((vm, path)) = s.split_once(':') {
        if !vm.is_empty() && vm.bytes().all(|b| b.is_ascii_digit()) {
            let vm: u32 = vm.parse().map_err(|_| format!("{s:?}: VM id out of range"))?;
            if !path.starts_with('/') {
                return Err(format!("{s:?}: the path in the VM must be absolute (VM:/path)"));
            }
            return Ok(CpPath::Remote { vm, path: path.to_string() });
        }
    }
    if s.is_empty() {
        return Err("empty path".into());
    }
    Ok(CpPath::Local(s.to_string()))
}

/// One session to one VM's agent.
pub struct Agent {
    client: Client,
    vm: VmId,
    /// Input resent after backpressure, for reports and tests.
    pub backpressure_retries: u64,
}

impl Agent {
    /// Wraps a connected session.
    pub fn new(client: Client, vm: u32) -> Agent {
        Agent { client, vm: VmId(vm), backpressure_retries: 0 }
    }

    /// The session (for pipelining).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The VM.
    pub fn vm(&self) -> VmId {
        self.vm
    }

    /// Starts an operation; its stream id.
    pub fn open(&mut self, op: Op) -> Result<u32, ClientError> {
        match self.client.call(Request::AgentOpen { vm: self.vm, op })? {
            Response::AgentStream { stream } => Ok(stream),
            r => Err(unexpected(r)),
        }
    }

    /// Sends one input once: a backpressure refusal comes back as an error.
    pub fn try_send(&mut self, stream: u32, input: Input) -> Result<(), ClientError> {
        match self.client.call(Request::AgentSend { vm: self.vm, stream, input })? {
            Response::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Sends one input, waiting out backpressure.
    pub fn send(&mut self, stream: u32, input: Input) -> Result<(), ClientError> {
        loop {
            match self.try_send(stream, input.clone()) {
                Err(e) if is_backpressure(&e) => {
                    self.backpressure_retries += 1;
                    std::thread::sleep(BACKPRESSURE_PAUSE);
                }
                r => return r,
            }
        }
    }

    /// Takes the stream's waiting events; `true` when it has ended.
    pub fn poll(&mut self, stream: u32) -> Result<(Vec<Event>, bool), ClientError> {
        match self.client.call(Request::AgentPoll { vm: self.vm, stream, max_bytes: POLL_BYTES })? {
            Response::AgentEvents { events, finished } => Ok((events, finished)),
            r => Err(unexpected(r)),
        }
    }

    /// Polls until the stream ends, handing every event to `each`; returns
    /// the terminal event. An `Error` event fails with exit 5. While events
    /// flow, [`POLL_PIPELINE`] polls are in flight, so a bulk stream (a file
    /// copied out) is not held to one round trip per reply; idle, one.
    pub fn drain(&mut self, stream: u32, mut each: impl FnMut(&Event) -> anyhow::Result<()>) -> anyhow::Result<Event> {
        let mut idle = Idle::new();
        let mut last = None;
        let (mut inflight, mut finished, mut busy) = (0usize, false, true);
        loop {
            let want = if busy { POLL_PIPELINE } else { 1 };
            while !finished && inflight < want {
                self.client.send(Request::AgentPoll { vm: self.vm, stream, max_bytes: POLL_BYTES })?;
                inflight += 1;
            }
            let reply = self.client.reply();
            inflight -= 1;
            let events = match reply {
                Ok(Response::AgentEvents { events, finished: f }) => {
                    finished |= f;
                    events
                }
                // Polls sent before the end was seen find the stream gone.
                Err(ClientError::Node(e)) if finished && e.code == ErrorCode::NotFound => Vec::new(),
                Ok(r) => return Err(unexpected(r).into()),
                Err(e) => return Err(e.into()),
            };
            busy = !events.is_empty();
            for e in events {
                each(&e)?;
                if let Event::Error(m) = &e {
                    return Err(AgentFailure::Agent(m.clone()).into());
                }
                if e.is_terminal() {
                    last = Some(e);
                }
            }
            if finished && inflight == 0 {
                return last
                    .ok_or_else(|| ClientError::Unexpected("the agent stream ended without a result".into()).into());
            }
            if inflight == 0 {
                idle.step(busy);
            }
        }
    }

    /// Runs an operation without input to its result.
    pub fn run(&mut self, op: Op) -> anyhow::Result<Event> {
        let stream = self.open(op)?;
        self.drain(stream, |_| Ok(()))
    }

    /// After a send failed: the agent's own error on the stream, if it
    /// ended with one (a refused offset, a full disk), else `e`.
    pub fn explain(&mut self, stream: u32, e: ClientError) -> anyhow::Error {
        if let Ok((events, _)) = self.poll(stream) {
            if let Some(Event::Error(m)) = events.iter().find(|e| matches!(e, Event::Error(_))) {
                return AgentFailure::Agent(m.clone()).into();
            }
        }
        e.into()
    }
}

/// The adaptive polling pause: none while events come, then 1 ms doubling
/// up to 32 ms.
pub struct Idle {
    next: Duration,
}

impl Idle {
    /// Starts busy.
    pub fn new() -> Idle {
        Idle { next: IDLE_FIRST }
    }

    /// After a poll: sleeps unless it brought something.
    pub fn step(&mut self, busy: bool) {
        if busy {
            self.next = IDLE_FIRST;
        } else {
            std::thread::sleep(self.next);
            self.next = (self.next * 2).min(IDLE_MAX);
        }
    }
}

impl Default for Idle {
    fn default() -> Self {
        Idle::new()
    }
}

pub(crate) fn unexpected(r: Response) -> ClientError {
    ClientError::Unexpected(format!("{r:?}"))
}

// ---- Ctrl-C ----

static CTRL_C: OnceLock<Option<Arc<AtomicUsize>>> = OnceLock::new();

/// Counts Ctrl-C presses for exec (the first sends SIGINT to the command,
/// the second cancels it, a third quits). `None` when another handler
/// already owns Ctrl-C in this process.
pub fn ctrl_c_counter() -> Option<Arc<AtomicUsize>> {
    CTRL_C
        .get_or_init(|| {
            let n = Arc::new(AtomicUsize::new(0));
            let c = n.clone();
            ctrlc::set_handler(move || {
                if c.fetch_add(1, Ordering::SeqCst) >= 2 {
                    std::process::exit(130);
                }
            })
            .ok()
            .map(|_| n)
        })
        .clone()
}

// ---- exec and shell ----

/// What `exec` and `shell` run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The spec sent to the agent.
    pub spec: ExecSpec,
    /// Collect the output for a JSON report instead of passing it through.
    pub json: bool,
}

/// The end of a remote command.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecReport {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if killed.
    pub signal: Option<i32>,
    /// Killed by the agent at the timeout.
    pub timed_out: bool,
    /// bmctl's exit status for it.
    pub exit_status: u8,
    /// Output (JSON mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Error output (JSON mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

/// Input from the local side while a command runs.
pub enum Local {
    /// Bytes typed or piped.
    Data(Vec<u8>),
    /// End of input.
    End,
}

/// Reads `r` in chunks of at most [`MAX_CONSOLE_DATA`] into a channel, then `End`.
pub fn spawn_reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Local> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CONSOLE_DATA];
        loop {
            match r.read(&mut buf) {
                // Ctrl-C interrupted the read: input goes on.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => {
                    let _ = tx.send(Local::End);
                    return;
                }
                Ok(n) => {
                    if tx.send(Local::Data(buf.get(..n).unwrap_or(&[]).to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Runs a command: polls its output to stdout/stderr, feeds `input`,
/// forwards Ctrl-C (`interrupts`) and terminal resizes (`resize`).
pub fn run_exec(
    agent: &mut Agent,
    req: &ExecRequest,
    input: Option<mpsc::Receiver<Local>>,
    interrupts: Option<Arc<AtomicUsize>>,
    mut resize: impl FnMut() -> Option<WinSize>,
) -> anyhow::Result<ExecReport> {
    let stream = agent.open(Op::Exec(req.spec.clone()))?;
    let mut pending: VecDeque<Input> = VecDeque::new();
    let mut input = input;
    let mut handled = 0usize;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut idle = Idle::new();
    let mut ended = None;
    loop {
        if let Some(n) = interrupts.as_ref().map(|c| c.load(Ordering::SeqCst)) {
            while handled < n {
                pending.push_front(if handled == 0 { Input::Signal(2) } else { Input::Cancel });
                handled += 1;
            }
        }
        if let Some(ws) = resize() {
            pending.push_back(Input::Resize(ws));
        }
        if let Some(rx) = &input {
            // Take what is typed, a bounded amount at a time.
            while pending.len() < 8 {
                match rx.try_recv() {
                    Ok(Local::Data(d)) => pending.push_back(Input::Data(d)),
                    Ok(Local::End) | Err(mpsc::TryRecvError::Disconnected) => {
                        pending.push_back(Input::End);
                        input = None;
                        break;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
        }
        let mut busy = false;
        if ended.is_none() {
            busy |= send_pending(agent, stream, &mut pending)?;
        }
        let (events, finished) = agent.poll(stream)?;
        busy |= !events.is_empty();
        for e in events {
            match e {
                Event::Stdout(d) if req.json => out.extend_from_slice(&d),
                Event::Stderr(d) if req.json => err.extend_from_slice(&d),
                Event::Stdout(d) => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&d)?;
                    o.flush()?;
                }
                Event::Stderr(d) => {
                    let mut o = std::io::stderr().lock();
                    o.write_all(&d)?;
                    o.flush()?;
                }
                Event::Exited { code, signal, timed_out } => ended = Some((code, signal, timed_out)),
                Event::Error(m) => return Err(AgentFailure::Agent(m).into()),
                _ => {}
            }
        }
        if finished {
            let (code, signal, timed_out) = ended
                .ok_or_else(|| ClientError::Unexpected("the command's stream ended without an exit status".into()))?;
            let lossy = |v: &[u8]| req.json.then(|| String::from_utf8_lossy(v).into_owned());
            return Ok(ExecReport {
                code,
                signal,
                timed_out,
                exit_status: exit_status(code, signal, timed_out),
                stdout: lossy(&out),
                stderr: lossy(&err),
            });
        }
        idle.step(busy);
    }
}

/// Sends what waits, in order, until the queue is empty or the node pushes
/// back; whether anything went. A closed stream (the command ended before
/// reading its input) drops the rest.
fn send_pending(agent: &mut Agent, stream: u32, pending: &mut VecDeque<Input>) -> anyhow::Result<bool> {
    let mut sent = false;
    while let Some(i) = pending.front().cloned() {
        match agent.try_send(stream, i) {
            Ok(()) => {
                pending.pop_front();
                sent = true;
            }
            Err(e) if is_backpressure(&e) => {
                agent.backpressure_retries += 1;
                break;
            }
            Err(ClientError::Node(_)) => {
                // The stream has ended (its input is closed) or the VM is
                // gone: the next poll says how.
                pending.clear();
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sent)
}

// ---- the local terminal ----

/// The local terminal's size (stdout), or 24x80 when it is not a terminal.
pub fn local_winsize() -> WinSize {
    terminal_size().unwrap_or(WinSize { rows: 24, cols: 80 })
}

#[cfg(unix)]
fn terminal_size() -> Option<WinSize> {
    // SAFETY: TIOCGWINSZ writes a `winsize` into the struct we pass; the
    // fd is stdout, which lives for the whole process.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            Some(WinSize { rows: ws.ws_row, cols: ws.ws_col })
        } else {
            None
        }
    }
}

#[cfg(not(unix))]
fn terminal_size() -> Option<WinSize> {
    None
}

/// The local terminal in raw mode; restored on drop (also when a panic
/// unwinds or an error returns).
pub struct RawMode {
    #[cfg(unix)]
    saved: libc::termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is not a
    /// terminal (pipes are used as they are).
    #[cfg(unix)]
    pub fn enter() -> Option<RawMode> {
        // SAFETY: tcgetattr/tcsetattr on stdin with termios structs we own.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }

    /// No terminal handling off Unix.
    #[cfg(not(unix))]
    pub fn enter() -> Option<RawMode> {
        None
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: restores the settings saved by `enter`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

static WINCH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_winch(_: libc::c_int) {
    WINCH.store(true, Ordering::SeqCst);
}

/// Watches SIGWINCH; the returned closure gives the new size once per change.
pub fn watch_resize() -> impl FnMut() -> Option<WinSize> {
    #[cfg(unix)]
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        let handler: extern "C" fn(libc::c_int) = on_winch;
        libc::signal(libc::SIGWINCH, handler as libc::sighandler_t);
    }
    || WINCH.swap(false, Ordering::SeqCst).then(local_winsize)
}

// ---- tables ----

/// `ps` output.
pub fn process_table(ps: &[ProcessInfo]) -> String {
    let mut s = format!("{:>7} {:>7} {:<5} {:>9} CMD", "PID", "PPID", "STATE", "RSS KiB");
    for p in ps {
        s.push_str(&format!(
            "\n{:>7} {:>7} {:<5} {:>9} {}",
            p.pid,
            p.ppid,
            escape_control(&p.state),
            p.rss_kib,
            escape_control(&p.cmd)
        ));
    }
    s
}

/// `service status` output.
pub fn service_table(svcs: &[ServiceStatus]) -> String {
    if svcs.is_empty() {
        return "no services".into();
    }
    let mut s = format!("{:<24} {:<8} {:>7} {:>8} {:<12} POLICY", "NAME", "STATE", "PID", "RESTARTS", "LAST-EXIT");
    for v in svcs {
        s.push_str(&format!(
            "\n{:<24} {:<8} {:>7} {:>8} {:<12} {}",
            escape_control(&v.name),
            escape_control(&v.state),
            v.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            v.restarts,
            v.last_exit.as_deref().map_or_else(|| "-".to_string(), escape_control),
            policy_name(v.restart)
        ));
    }
    s
}

/// A restart policy as the command line writes it.
pub fn policy_name(p: agent_proto::msg::RestartPolicy) -> &'static str {
    match p {
        agent_proto::msg::RestartPolicy::Never => "never",
        agent_proto::msg::RestartPolicy::OnFailure => "on-failure",
        agent_proto::msg::RestartPolicy::Always => "always",
    }
}

/// `inventory` output.
pub fn inventory_text(i: &Inventory) -> String {
    let mut s = format!(
        "host      {}\nos        {}\nkernel    {}\nagent     bm-agent {}\nuptime    {} s\nmemory    {} MiB available of {} MiB\npackages  {} ({})",
        escape_control(&i.hostname),
        i.os_release.as_deref().map_or_else(|| "-".to_string(), escape_control),
        escape_control(&i.kernel),
        escape_control(&i.agent_version),
        i.uptime_secs,
        i.mem_available_kib >> 10,
        i.mem_total_kib >> 10,
        i.packages.len(),
        escape_control(&i.package_source),
    );
    if !i.services.is_empty() {
        s.push_str("\nservices\n");
        s.push_str(&service_table(&i.services));
    }
    s
}

/// `agent` output.
pub fn status_text(vm: u32, a: &AgentStatus) -> String {
    let mut s = format!("VM {vm} agent: ");
    if !a.attached {
        s.push_str("not attached");
        if let Some(f) = &a.last_fault {
            s.push_str(&format!(" (last detach: {})", escape_control(f)));
        }
        return s;
    }
    s.push_str(if a.hung { "attached, HUNG (heartbeats stopped)" } else { "attached" });
    let opt = |o: &Option<String>| o.as_deref().map_or_else(|| "-".to_string(), escape_control);
    s.push_str(&format!(
        "\nversion   {}\nhost      {}\nkernel    {}",
        opt(&a.agent_version),
        opt(&a.hostname),
        opt(&a.kernel)
    ));
    s.push_str(&format!(
        "\nheartbeat {} received, last {} ago (period {} ms, hung after {} ms)",
        a.heartbeats,
        a.since_heartbeat_ms.map_or_else(|| "-".to_string(), |m| format!("{m} ms")),
        a.heartbeat_ms,
        a.heartbeat_timeout_ms
    ));
    if let Some(l) = &a.load {
        s.push_str(&format!(
            "\nload      {:.2} {:.2} {:.2}, {} MiB available, {} processes, services {} running {} failed",
            f64::from(l.load_milli[0]) / 1000.0,
            f64::from(l.load_milli[1]) / 1000.0,
            f64::from(l.load_milli[2]) / 1000.0,
            l.mem_available_kib >> 10,
            l.processes,
            l.services_running,
            l.services_failed
        ));
    }
    s.push_str(&format!(
        "\nstreams   {} open; kicks {}; bytes from agent {}, to agent {}",
        a.streams, a.kicks, a.bytes_from_agent, a.bytes_to_agent
    ));
    s
}

/// One agent log line: `[time] text`, the node's time in seconds.
pub fn log_line(e: &LogEntry) -> String {
    format!("[{:>10.3}] {}", e.time_ms as f64 / 1000.0, escape_control(&e.text))
}

/// Service ops by name.
pub fn service_op(action: &str, name: String) -> Option<ServiceOp> {
    Some(match action {
        "start" => ServiceOp::Start { name },
        "stop" => ServiceOp::Stop { name },
        "restart" => ServiceOp::Restart { name },
        "remove" => ServiceOp::Remove { name },
        _ => return None,
    })
}

/// Waits (polling `AgentStatus` every 200 ms) until the agent is attached and
/// its hello arrived, for at most `wait`.
pub fn wait_ready(agent: &mut Agent, wait: Duration) -> anyhow::Result<AgentStatus> {
    let start = Instant::now();
    loop {
        let st = status(agent)?;
        if st.attached && st.agent_version.is_some() {
            return Ok(st);
        }
        if start.elapsed() >= wait {
            return Err(AgentFailure::NotReady(format!("agent not ready after {} s", wait.as_secs())).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The VM's agent state.
pub fn status(agent: &mut Agent) -> Result<AgentStatus, ClientError> {
    let vm = agent.vm();
    match agent.client().call(Request::AgentStatus { vm })? {
        Response::Agent(s) => Ok(s),
        r => Err(unexpected(r)),
    }
}

/// A node refusal for a local check (used by tests of the mapping).
pub fn refusal(code: ErrorCode, msg: &str) -> ClientError {
    ClientError::Node(ErrorReply::new(code, msg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cp_paths() {
        assert_eq!(parse_cp_path("3:/root/f"), Ok(CpPath::Remote { vm: 3, path: "/root/f".into() }));
        assert_eq!(parse_cp_path("12:/"), Ok(CpPath::Remote { vm: 12, path: "/".into() }));
        assert_eq!(parse_cp_path("./3:/x"), Ok(CpPath::Local("./3:/x".into())));
        assert_eq!(parse_cp_path("a:/x"), Ok(CpPath::Local("a:/x".into())));
        assert_eq!(parse_cp_path("/tmp/f"), Ok(CpPath::Local("/tmp/f".into())));
        assert_eq!(parse_cp_path("f"), Ok(CpPath::Local("f".into())));
        assert!(parse_cp_path("3:relative").unwrap_err().contains("absolute"));
        assert!(parse_cp_path("3:").is_err());
        assert!(parse_cp_path("99999999999:/x").unwrap_err().contains("out of range"));
        assert!(parse_cp_path("").is_err());
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(Some(0), None, false), 0);
        assert_eq!(exit_status(Some(3), None, false), 3);
        assert_eq!(exit_status(Some(256 + 7), None, false), 7);
        assert_eq!(exit_status(None, Some(9), false), 137);
        assert_eq!(exit_status(None, Some(15), false), 143);
        assert_eq!(exit_status(None, Some(9), true), 124);
        assert_eq!(exit_status(Some(0), None, true), 124);
        assert_eq!(exit_status(None, Some(1000), false), 255);
        assert_eq!(exit_status(None, None, false), 1);
    }

    #[test]
    fn backpressure_is_recognised() {
        let e = refusal(ErrorCode::Limit, "agent input queue full: at most 1 bytes wait (input_bytes); retry");
        assert!(is_backpressure(&e));
        assert!(!is_backpressure(&refusal(ErrorCode::Limit, "at most 16 agent streams (max_streams)")));
        assert!(!is_backpressure(&refusal(ErrorCode::Conflict, "input_bytes")));
        assert_eq!(e.exit_code(), 5);
        assert_eq!(AgentFailure::Agent("x".into()).exit_code(), 5);
        assert_eq!(AgentFailure::Status(124).exit_code(), 124);
    }
}
