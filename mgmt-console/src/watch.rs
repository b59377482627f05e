//! `bmctl watch`: subscribes to one or more nodes, prints their events,
//! keeps a [`View`] for the HTTP server ([`crate::http`]), runs a notify
//! command for policy notifications, and reconnects with backoff.
//!
//! Threads: one subscription loop per node, the HTTP server's own, and a
//! fixed pool of notify workers; they share the view behind a mutex and a
//! stop flag. The main thread waits for a signal or `--for` and stops them.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mgmt_proto::monitor::{EventKind, Push, MAX_INTERVAL_MS, MIN_INTERVAL_MS};
use mgmt_proto::{Request, Response, SecretKey};
use vmm_config::text::escape_control;

use crate::client::{Client, ClientError};
use crate::http::{now_ms, HttpServer};
use crate::profile::Profile;
use crate::view::{event_json, event_line, Received, Resume, View};

/// The first pause before reconnecting; doubled per failure up to
/// [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest pause before reconnecting.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff.
pub const HEALTHY: Duration = Duration::from_secs(60);
/// Notify commands running at once.
pub const NOTIFY_WORKERS: usize = 4;
/// Notifications waiting for a worker; beyond it they are dropped (and
/// said so).
pub const NOTIFY_QUEUE: usize = 64;
/// A notify command still running after this is killed.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the loops look at the stop flag.
const TICK: Duration = Duration::from_millis(200);

/// Reconnection pauses: 0.5 s doubling to 10 s, back to 0.5 s after a
/// healthy connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The pause before the next attempt (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    /// A connection held for [`HEALTHY`]: start again from the shortest pause.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// One node to watch.
pub struct Target {
    /// The name shown and used as the `node` label (the profile name).
    pub name: String,
    /// How to reach it.
    pub profile: Profile,
    /// The console key for the profile.
    pub secret: SecretKey,
}

/// How to watch.
#[derive(Debug, Clone)]
pub struct Options {
    /// Health push period asked for.
    pub interval_ms: u32,
    /// JSON lines instead of text lines on stdout.
    pub json: bool,
    /// `sh -c` command run per Notify event.
    pub notify: Option<String>,
    /// HTTP listen address (`None`: no server).
    pub listen: Option<String>,
    /// Stop after this long.
    pub run_for: Option<Duration>,
    /// Bound on connecting and on each answer.
    pub timeout: Duration,
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived since [`handle_stop_signals`].
pub fn stop_signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Makes SIGINT and SIGTERM stop the watch cleanly (exit 0) instead of
/// killing it mid-line.
pub fn handle_stop_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Everything the threads share.
struct Shared {
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    opts: Options,
    notifier: Option<Notifier>,
    out: Mutex<()>,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn say(&self, node: &str, msg: &str) {
        eprintln!("bmctl watch: node {}: {msg}", escape_control(node));
    }

    /// A console-side event about a node as a whole (`node-down`: it
    /// cannot be reached or stopped pushing; `node-up`: it is back): one
    /// output line, and the notify command, like a policy notification.
    fn node_event(&self, node: &str, kind: &str, text: &str) {
        let at = now_ms();
        let json = serde_json::json!({
            "time": crate::view::utc(at),
            "unix_ms": at,
            "node": node,
            "scope": "node",
            "kind": kind,
            "detail": kind,
            "text": text,
        });
        {
            let _out = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let line = if self.opts.json {
                json.to_string()
            } else {
                format!("{} {} node {kind} {}", crate::view::utc(at), escape_control(node), escape_control(text))
            };
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
        if let Some(n) = &self.notifier {
            n.submit(json.to_string(), 0);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || SIGNALLED.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early when stopping; false if stopping.
    fn pause(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopping() {
                return false;
            }
            std::thread::sleep(TICK.min(end.saturating_duration_since(Instant::now())));
        }
        !self.stopping()
    }
}

/// Runs the watch until a stop signal, `stop` or `--for`. Returns the
/// HTTP address it served on (if any) through `on_listen` before
/// watching, so callers can print or use it.
pub fn watch(
    targets: Vec<Target>,
    opts: Options,
    stop: Arc<AtomicBool>,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let view = Arc::new(Mutex::new(View::default()));
    {
        let mut v = view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for t in &targets {
            v.add_node(&t.name, &t.profile.node, &t.profile.role);
        }
    }
    let server = match &opts.listen {
        Some(a) => {
            let s = HttpServer::start(a, view.clone(), stop.clone())
                .with_context(|| format!("cannot listen on {a} (--listen)"))?;
            on_listen(s.addr);
            Some(s)
        }
        None => None,
    };
    let notifier = opts.notify.clone().map(|cmd| Notifier::start(cmd, stop.clone()));
    let deadline = opts.run_for.map(|d| Instant::now() + d);
    let shared = Arc::new(Shared { view, stop: stop.clone(), opts, notifier, out: Mutex::new(()) });
    let loops: Vec<JoinHandle<()>> = targets
        .into_iter()
        .map(|t| {
            let sh = shared.clone();
            std::thread::spawn(move || node_loop(&t, &sh))
        })
        .collect();
    while !shared.stopping() && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    // Loops see the flag within a tick, or after a connect attempt
    // (bounded by the timeout); do not wait for those.
    let give_up = Instant::now() + Duration::from_secs(2);
    for l in loops {
        while !l.is_finished() && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(20));
        }
        if l.is_finished() {
            let _ = l.join();
        }
    }
    if let Some(s) = server {
        s.join();
    }
    if let Ok(sh) = Arc::try_unwrap(shared) {
        if let Some(n) = sh.notifier {
            n.finish();
        }
    }
    std::io::stdout().flush().ok();
    Ok(())
}

/// Connects, watches, and reconnects with [`Backoff`] until stopped.
fn node_loop(t: &Target, sh: &Shared) {
    let mut backoff = Backoff::default();
    // Since when (and why) the node is unreachable or silent.
    let mut down: Option<(Instant, String)> = None;
    while !sh.stopping() {
        let started = Instant::now();
        let why = match session(t, sh, &mut down) {
            Ok(()) => return,
            Err(e) => e,
        };
        if sh.stopping() {
            return;
        }
        if down.is_none() {
            sh.node_event(&t.name, "node-down", &why);
            down = Some((Instant::now(), why.clone()));
        }
        sh.view().disconnected(&t.name, &why);
        if started.elapsed() >= HEALTHY {
            backoff.reset();
        }
        let d = backoff.next_delay();
        sh.say(&t.name, &format!("{why}; reconnecting in {:.1} s", d.as_secs_f64()));
        if !sh.pause(d) {
            return;
        }
    }
}

fn subscribe(c: &mut Client, since: Option<u64>, interval_ms: u32) -> Result<(u64, u32, u64), String> {
    match c.call(Request::Subscribe { since, interval_ms }) {
        Ok(Response::Subscribed { next_seq, interval_ms, boot }) => Ok((next_seq, interval_ms, boot)),
        Ok(r) => Err(ClientError::Unexpected(format!("{r:?}")).to_string()),
        Err(e) => Err(format!("subscribe failed: {e}")),
    }
}

/// One connection: subscribe, then handle pushes until it breaks (`Err`,
/// with why) or the watch stops (`Ok`).
fn session(t: &Target, sh: &Shared, down: &mut Option<(Instant, String)>) -> Result<(), String> {
    let mut c = Client::connect_profile(&t.profile, &t.secret, sh.opts.timeout).map_err(|e| {
        if e.names_node() {
            e.to_string()
        } else {
            format!("{e} ({})", t.profile.node)
        }
    })?;
    let since = sh.view().since(&t.name);
    let (next, mut granted, boot) = subscribe(&mut c, since, sh.opts.interval_ms)?;
    let resume = sh.view().subscribed(&t.name, next, boot);
    match resume {
        Resume::Restarted { ours, theirs } => {
            sh.say(
                &t.name,
                &format!(
                    "the node restarted (its next event is {theirs}, we were at {ours}): following its events from the first"
                ),
            );
            granted = subscribe(&mut c, Some(1), sh.opts.interval_ms)?.1;
        }
        Resume::Continue => sh.say(
            &t.name,
            &match since {
                Some(s) => format!("subscribed, resuming from event {s} (node's next: {next})"),
                None => format!("subscribed (health every {granted} ms)"),
            },
        ),
    }
    if let Some((since, why)) = down.take() {
        let text = format!("back after {:.1} s (down: {why})", since.elapsed().as_secs_f64());
        sh.node_event(&t.name, "node-up", &text);
    }
    // A node that stops pushing is as good as gone.
    let stale = (Duration::from_millis(u64::from(granted.max(MIN_INTERVAL_MS))) * 3).max(sh.opts.timeout);
    let mut last = Instant::now();
    let mut dropped = c.dropped_pushes().1;
    loop {
        if sh.stopping() {
            return Ok(());
        }
        match c.next_push(TICK) {
            Ok(Some(p)) => {
                last = Instant::now();
                handle_push(t, sh, &p);
            }
            Ok(None) if last.elapsed() > stale => {
                return Err(format!("no push for {:.1} s", last.elapsed().as_secs_f64()));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("connection lost: {e}")),
        }
        let d = c.dropped_pushes().1;
        if d > dropped {
            sh.view().add_lost(&t.name, d - dropped);
            sh.say(&t.name, &format!("{} event(s) lost: the console's push queue was full", d - dropped));
            dropped = d;
        }
    }
}

fn handle_push(t: &Target, sh: &Shared, p: &Push) {
    let fresh: Vec<Received> = sh.view().apply_push(&t.name, p, now_ms());
    if p.lost > 0 {
        sh.say(&t.name, &format!("{} event(s) lost: the node's log dropped them before they were sent", p.lost));
    }
    let _out = sh.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut stdout = std::io::stdout().lock();
    for r in &fresh {
        let line = if sh.opts.json { event_json(r).to_string() } else { event_line(r) };
        // A closed stdout (`| head`) must not stop the watch.
        let _ = writeln!(stdout, "{line}");
        if let (Some(n), EventKind::Notify { .. }) = (&sh.notifier, &r.event.kind) {
            n.submit(event_json(r).to_string(), r.event.seq);
        }
    }
    let _ = stdout.flush();
}

/// Parses `--interval-ms` within the node's accepted range.
pub fn parse_interval(s: &str) -> Result<u32, String> {
    let n: u32 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of milliseconds"))?;
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&n) {
        return Err(format!("the node accepts {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS} ms"));
    }
    Ok(n)
}

/// Runs the `--notify` command for Notify events: at most
/// [`NOTIFY_WORKERS`] at once, [`NOTIFY_QUEUE`] waiting, each killed after
/// [`NOTIFY_TIMEOUT`]. Failures are logged, never fatal.
pub struct Notifier {
    tx: SyncSender<(String, u64)>,
    workers: Vec<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the workers for `cmd` (run as `sh -c CMD`).
    pub fn start(cmd: String, stop: Arc<AtomicBool>) -> Notifier {
        let (tx, rx) = sync_channel::<(String, u64)>(NOTIFY_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..NOTIFY_WORKERS)
            .map(|_| {
                let (rx, cmd, stop) = (rx.clone(), cmd.clone(), stop.clone());
                std::thread::spawn(move || notify_worker(&rx, &cmd, &stop))
            })
            .collect();
        Notifier { tx, workers }
    }

    /// Queues one event (its JSON and sequence number).
    pub fn submit(&self, json: String, seq: u64) {
        match self.tx.try_send((json, seq)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                eprintln!("bmctl watch: notify: {NOTIFY_QUEUE} notifications waiting; event {seq} not notified")
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Lets queued notifications run (the stop flag kills running ones)
    /// and waits a little for the workers.
    pub fn finish(self) {
        drop(self.tx);
        let give_up = Instant::now() + Duration::from_secs(3);
        for w in self.workers {
            while !w.is_finished() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(20));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

fn notify_worker(rx: &Mutex<Receiver<(String, u64)>>, cmd: &str, stop: &AtomicBool) {
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok((json, seq)) = next else { return };
        if stop.load(Ordering::SeqCst) || SIGNALLED.load(Ordering::SeqCst) {
            continue;
        }
        if let Err(e) = run_notify(cmd, &json, stop, NOTIFY_TIMEOUT) {
            eprintln!("bmctl watch: notify command for event {seq}: {e}");
        }
    }
}

/// Runs `sh -c cmd` with the event on stdin and in `BM_EVENT`, its stdout
/// sent to our stderr (stdout carries the event lines); kills it after
/// `limit` or when stopping.
pub fn run_notify(cmd: &str, json: &str, stop: &AtomicBool, limit: Duration) -> Result<(), String> {
    use std::os::fd::AsFd;
    let out = std::io::stderr().as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("BM_EVENT", json)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out))
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let data = format!("{json}\n");
        // Its own thread: a command that does not read must not block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(data.as_bytes());
        });
    }
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("it failed ({st})")),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let stopping = stop.load(Ordering::SeqCst) || SIGNALLED.load(Ordering::SeqCst);
        if Instant::now() >= end || stopping {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if stopping {
                "killed: the watch is stopping".into()
            } else {
                format!("killed after {} s", limit.as_secs())
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let got: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }

    #[test]
    fn interval_bounds() {
        assert_eq!(parse_interval("1000").unwrap(), 1000);
        assert!(parse_interval("10").is_err());
        assert!(parse_interval("x").is_err());
    }

    #[test]
    fn notify_gets_the_event_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("out");
        let stop = AtomicBool::new(false);
        let cmd = format!("cat > {0}; printf '%s' \"$BM_EVENT\" >> {0}", f.display());
        run_notify(&cmd, "{\"seq\":1}", &stop, Duration::from_secs(10)).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "{\"seq\":1}\n{\"seq\":1}");
        let e = run_notify("exit 3", "{}", &stop, Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
        let t = Instant::now();
        let e = run_notify("sleep 20", "{}", &stop, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("killed after"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
