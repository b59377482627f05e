//! A blocking client: opens TCP or a serial line, runs the handshake, and
//! sends one request at a time.
//!
//! Every TCP wait is bounded (connect, each read, each write) so a dead or
//! silent node ends in an error naming it instead of a hang, and a node with
//! no free console slot ([`ErrorCode::Busy`]) is retried with backoff before
//! giving up with its own exit code.
//!
//! A subscribed session also carries node-initiated pushes; replies are
//! matched to requests as before while pushes wait in a bounded queue
//! ([`MAX_QUEUED_PUSHES`]) for [`Client::next_push`].

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use mgmt_proto::monitor::Push;
use mgmt_proto::session::ConsoleEvent;
use mgmt_proto::{ConsoleSession, ErrorCode, ErrorReply, PublicKey, Request, Response, Role, SecretKey, SessionError};
use vmm_config::text::escape_control;

use crate::profile::{NodeAddr, OsEntropy, Profile};

/// How long bmctl waits for the node by default (connect, and each read or
/// write): long enough for a loaded node, short enough that a script learns
/// about a dead one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pauses between attempts while the node answers Busy: doubling, so a
/// briefly full node is retried quickly and a full one is not hammered. The
/// total is also bounded by the timeout.
pub const BUSY_BACKOFF: [Duration; 7] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
    Duration::from_millis(3200),
];

/// Most subscription pushes kept while the caller waits for a reply or is
/// slow to ask for them; past it the oldest is dropped (and counted, see
/// [`Client::dropped_pushes`]) so a chatty node cannot grow the console's
/// memory.
pub const MAX_QUEUED_PUSHES: usize = 256;

/// What can go wrong talking to a node; each maps to its own exit code.
///
/// Text that came from the node is shown with control characters escaped,
/// so a node (or anything in its path) cannot drive the operator's terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection broke (or a serial line failed).
    #[error("cannot talk to the node: {0}")]
    Io(#[from] std::io::Error),
    /// The node could not be reached at all (refused, unreachable, no such
    /// host).
    #[error("cannot connect to node {node}: {reason}")]
    Connect {
        /// The node address as configured.
        node: String,
        /// Why, in words.
        reason: String,
    },
    /// The node did not connect or answer in time.
    #[error("node {node} did not answer within {} s", secs(*.timeout))]
    Timeout {
        /// The node address as configured.
        node: String,
        /// How long bmctl waited.
        timeout: Duration,
    },
    /// The node has no free console slot (still, after retrying).
    #[error(
        "node {node} is busy (all console slots in use): retry later{}",
        if *.closed { " (it closed the connection before answering the handshake)" } else { "" }
    )]
    Busy {
        /// The node address as configured.
        node: String,
        /// The node closed without a Busy refusal (a reset can eat it).
        closed: bool,
    },
    /// The node closed the connection.
    #[error("the node closed the connection")]
    Closed,
    /// The node refused the session (unknown key, wrong role, ...).
    #[error("session refused: {}", escape_control(&.0.to_string()))]
    Refused(ErrorReply),
    /// The node refused one request.
    #[error("request refused ({:?}): {}", .0.code, escape_control(&.0.message))]
    Node(ErrorReply),
    /// The protocol failed (bad message, wrong node key, replay ...).
    #[error("protocol error: {}", escape_control(&.0.to_string()))]
    Protocol(SessionError),
    /// The node answered with an unexpected response type (Debug-formatted,
    /// which escapes its strings).
    #[error("unexpected response from the node: {0}")]
    Unexpected(String),
    /// Local setup failed (profile, key).
    #[error("{0}")]
    Local(String),
    /// The user interrupted the command (Ctrl-C); says what was cleaned up.
    #[error("{0}")]
    Interrupted(String),
}

/// A duration in seconds as people write it: `10`, or `0.5` below a second.
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.1}", d.as_secs_f64())
    }
}

impl ClientError {
    /// The process exit code: 3 unreachable or silent, 4 session refused, 5
    /// request refused, 6 protocol error, 7 busy, 130 interrupted, 1 local
    /// problems (the table is in `bmctl --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Io(_) | ClientError::Closed | ClientError::Connect { .. } | ClientError::Timeout { .. } => 3,
            ClientError::Refused(_) => 4,
            ClientError::Node(_) => 5,
            ClientError::Protocol(_) | ClientError::Unexpected(_) => 6,
            ClientError::Busy { .. } => 7,
            ClientError::Interrupted(_) => 130,
            ClientError::Local(_) => 1,
        }
    }

    /// Whether reconnecting may help (used by resumable uploads).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Io(_)
                | ClientError::Closed
                | ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Busy { .. }
        )
    }

    /// Whether the message already names the node, so callers need not add
    /// its address again.
    pub fn names_node(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Busy { .. })
    }
}

impl From<SessionError> for ClientError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Refused(r) => ClientError::Refused(r),
            SessionError::Remote(r) if r.code == ErrorCode::Handshake => ClientError::Refused(r),
            SessionError::Handshake => ClientError::Refused(ErrorReply::new(
                ErrorCode::Handshake,
                "handshake failed: the node key in the profile is probably wrong or rotated",
            )),
            other => ClientError::Protocol(other),
        }
    }
}

/// A byte stream to the node.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Which node a stream leads to and how long to wait for it, so that errors
/// name the node and the wait, and a slow handshake is cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The node address as the user configured it (`host:port`, `serial:..`).
    pub node: String,
    /// Bound on each wait (for TCP: connect, each read and write; for the
    /// handshake as a whole).
    pub timeout: Duration,
}

/// An established session.
pub struct Client {
    stream: Box<dyn Stream>,
    session: ConsoleSession,
    buf: Vec<u8>,
    link: Link,
    /// Replies read but not yet asked for (several arrive at once when
    /// requests are pipelined).
    replies: VecDeque<Result<Response, ErrorReply>>,
    /// Pushes read but not yet asked for, at most [`MAX_QUEUED_PUSHES`].
    pushes: VecDeque<Push>,
    /// Pushes dropped from a full queue, and the events they carried.
    dropped: (u64, u64),
    /// The TCP socket again (a clone), so [`Client::next_push`] can shorten
    /// its read timeout; `None` for serial lines and test streams.
    tcp: Option<TcpStream>,
}

/// Resets and broken pipes: what a node that refused us without reading
/// (Busy) looks like when its close overtakes its refusal.
fn is_reset(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
}

/// An OS error in the words the connect message uses.
fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::HostUnreachable => "host unreachable".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        ErrorKind::AddrNotAvailable => "address not available".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

impl Client {
    /// Connects as described by a profile, waiting at most `timeout` for each
    /// step, and retries (see [`BUSY_BACKOFF`]) while the node is busy.
    pub fn connect_profile(profile: &Profile, secret: &SecretKey, timeout: Duration) -> Result<Client, ClientError> {
        let local = |e: anyhow::Error| ClientError::Local(format!("{e:#}"));
        let role = profile.role().map_err(local)?;
        let node_key = profile.node_key().map_err(local)?;
        let addr = profile.addr().map_err(local)?;
        let link = Link { node: profile.node.clone(), timeout };
        retry_busy(timeout, || match &addr {
            NodeAddr::Tcp(a) => Client::handshake_tcp(tcp(a, &link)?, link.clone(), role, secret, &node_key),
            NodeAddr::Serial(p) => {
                let stream = Box::new(std::fs::OpenOptions::new().read(true).write(true).open(p)?);
                Client::handshake(stream, link.clone(), role, secret, &node_key)
            }
        })
    }

    /// Runs the handshake on a TCP connection, keeping a handle on the
    /// socket so [`Self::next_push`] can wait for less than the link's
    /// timeout.
    pub fn handshake_tcp(
        stream: TcpStream,
        link: Link,
        role: Role,
        secret: &SecretKey,
        node_key: &PublicKey,
    ) -> Result<Client, ClientError> {
        let control = stream.try_clone()?;
        let mut c = Client::handshake(Box::new(stream), link, role, secret, node_key)?;
        c.tcp = Some(control);
        Ok(c)
    }

    /// Runs the handshake on an open stream. A Busy refusal, or a connection
    /// closed before any handshake reply, is [`ClientError::Busy`].
    pub fn handshake(
        stream: Box<dyn Stream>,
        link: Link,
        role: Role,
        secret: &SecretKey,
        node_key: &PublicKey,
    ) -> Result<Client, ClientError> {
        let session = ConsoleSession::new(role, secret, node_key, Box::new(OsEntropy))?;
        let deadline = Instant::now() + link.timeout;
        let mut c = Client {
            stream,
            session,
            buf: vec![0u8; 65536],
            link,
            replies: VecDeque::new(),
            pushes: VecDeque::new(),
            dropped: (0, 0),
            tcp: None,
        };
        match c.flush() {
            // A full node writes its Busy refusal and closes without reading
            // our hello: the write may meet a reset while the refusal still
            // waits to be read.
            Err(ClientError::Io(e)) if is_reset(e.kind()) => {}
            r => r?,
        }
        loop {
            let events = match c.read_some() {
                Ok(ev) => ev,
                Err(ClientError::Closed) => return Err(c.busy(true)),
                Err(ClientError::Io(e)) if is_reset(e.kind()) => return Err(c.busy(true)),
                Err(e) => return Err(e),
            };
            if events.iter().any(|e| matches!(e, ConsoleEvent::Established)) {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                return Err(c.timeout());
            }
        }
    }

    fn busy(&self, closed: bool) -> ClientError {
        ClientError::Busy { node: self.link.node.clone(), closed }
    }

    fn timeout(&self) -> ClientError {
        ClientError::Timeout { node: self.link.node.clone(), timeout: self.link.timeout }
    }

    /// An I/O error, with the socket timeouts turned into [`ClientError::Timeout`].
    fn io(&self, e: std::io::Error) -> ClientError {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.timeout(),
            _ => ClientError::Io(e),
        }
    }

    /// A session error, with a Busy refusal (during or after the handshake)
    /// turned into [`ClientError::Busy`] so it is never shown as a protocol
    /// error.
    fn session_error(&self, e: SessionError) -> ClientError {
        match &e {
            SessionError::Refused(r) | SessionError::Remote(r) if r.code == ErrorCode::Busy => self.busy(false),
            _ => e.into(),
        }
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        let out = self.session.take_output();
        if !out.is_empty() {
            if let Err(e) = self.stream.write_all(&out).and_then(|()| self.stream.flush()) {
                return Err(self.io(e));
            }
        }
        Ok(())
    }

    fn read_some(&mut self) -> Result<Vec<ConsoleEvent>, ClientError> {
        let n = loop {
            match self.stream.read(&mut self.buf) {
                Ok(n) => break n,
                // A signal (Ctrl-C for exec) cut the read short; a socket
                // with a read timeout is not restarted by SA_RESTART.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            }
        };
        if n == 0 {
            return Err(ClientError::Closed);
        }
        let got = self.session.receive(self.buf.get(..n).unwrap_or(&[]));
        got.map_err(|e| self.session_error(e))
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, req: Request) -> Result<Response, ClientError> {
        self.session.send(req)?;
        self.wait()
    }

    /// Sends a request under an explicit sequence number (conformance tests).
    pub fn call_with_seq(&mut self, seq: u64, req: Request) -> Result<Response, ClientError> {
        self.session.send_with_seq(seq, req)?;
        self.wait()
    }

    /// Sends a request without waiting for its answer, so several can be
    /// in flight (uploads pipeline their chunks); collect the answers, in
    /// order, with [`Self::reply`].
    pub fn send(&mut self, req: Request) -> Result<(), ClientError> {
        self.session.send(req)?;
        self.flush()
    }

    /// The answer to the oldest request sent and not yet answered.
    pub fn reply(&mut self) -> Result<Response, ClientError> {
        self.wait()
    }

    fn wait(&mut self) -> Result<Response, ClientError> {
        self.flush()?;
        loop {
            if let Some(r) = self.replies.pop_front() {
                return r.map_err(ClientError::Node);
            }
            let events = self.read_some()?;
            self.absorb(events);
        }
    }

    /// Files replies and pushes where [`Self::wait`] and
    /// [`Self::next_push`] look for them.
    fn absorb(&mut self, events: Vec<ConsoleEvent>) {
        for ev in events {
            match ev {
                ConsoleEvent::Reply(r) => self.replies.push_back(r.body),
                ConsoleEvent::Push(p) => self.queue_push(p),
                ConsoleEvent::Established => {}
            }
        }
    }

    fn queue_push(&mut self, p: Push) {
        if self.pushes.len() >= MAX_QUEUED_PUSHES {
            if let Some(old) = self.pushes.pop_front() {
                self.dropped.0 += 1;
                self.dropped.1 += old.events.len() as u64;
            }
        }
        self.pushes.push_back(p);
    }

    /// Pushes dropped because the queue was full, and how many events they
    /// carried: the watch counts those events as lost.
    pub fn dropped_pushes(&self) -> (u64, u64) {
        self.dropped
    }

    /// The next subscription push, waiting at most `timeout` for one.
    /// `Ok(None)` when none came in time: the session stays open. Replies
    /// that arrive meanwhile are kept for [`Self::reply`].
    ///
    /// On TCP each read is cut to the time left; on other streams a read
    /// may block for the stream's own timeout.
    pub fn next_push(&mut self, timeout: Duration) -> Result<Option<Push>, ClientError> {
        self.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.pushes.pop_front() {
                return Ok(Some(p));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if let Some(t) = &self.tcp {
                // Zero would mean "no timeout": at least a millisecond.
                t.set_read_timeout(Some(left.min(self.link.timeout).max(Duration::from_millis(1))))?;
            }
            let got = self.read_some();
            if let Some(t) = &self.tcp {
                t.set_read_timeout(Some(self.link.timeout))?;
            }
            match got {
                Ok(events) => self.absorb(events),
                Err(ClientError::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Runs `attempt` again after each [`ClientError::Busy`], pausing as
/// [`BUSY_BACKOFF`] says, until it gives another answer, the pauses run out,
/// or the next pause would take the total past `timeout`.
pub fn retry_busy<T>(timeout: Duration, mut attempt: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let start = Instant::now();
    let mut pauses = BUSY_BACKOFF.iter();
    loop {
        match attempt() {
            Err(e @ ClientError::Busy { .. }) => match pauses.next() {
                Some(p) if start.elapsed() + *p <= timeout => std::thread::sleep(*p),
                _ => return Err(e),
            },
            r => return r,
        }
    }
}

/// Opens TCP to `addr`, trying each address it resolves to for at most the
/// link's timeout, and sets the read and write timeouts.
fn tcp(addr: &str, link: &Link) -> Result<TcpStream, ClientError> {
    let connect = |reason: String| ClientError::Connect { node: link.node.clone(), reason };
    let addrs: Vec<SocketAddr> =
        addr.to_socket_addrs().map_err(|e| connect(format!("cannot resolve the address: {e}")))?.collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, link.timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(link.timeout))?;
                s.set_write_timeout(Some(link.timeout))?;
                s.set_nodelay(true).ok();
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        None => connect("the address resolves to nothing".into()),
        Some(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            ClientError::Timeout { node: link.node.clone(), timeout: link.timeout }
        }
        Some(e) => connect(describe(&e)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn node_text_is_escaped_in_messages() {
        let e = ClientError::Node(ErrorReply::new(ErrorCode::Invalid, "name\nforged line \x1b[2J"));
        let s = e.to_string();
        assert!(s.contains("name\\nforged line \\u{1b}[2J"), "{s}");
        assert!(!s.chars().any(char::is_control), "{s:?}");
        let e = ClientError::from(SessionError::Refused(ErrorReply::new(ErrorCode::UnknownKey, "a\rb")));
        assert!(e.to_string().contains("a\\rb"), "{e}");
        let e = ClientError::Protocol(SessionError::Remote(ErrorReply::new(ErrorCode::Replay, "x\ty")));
        assert!(e.to_string().contains("x\\ty"), "{e}");
    }

    #[test]
    fn busy_answers_become_busy_not_protocol_errors() {
        let link = Link { node: "10.0.2.15:7700".into(), timeout: DEFAULT_TIMEOUT };
        let kp = mgmt_proto::KeyPair::generate(&mut OsEntropy).unwrap();
        let session = ConsoleSession::new(Role::Landlord, &kp.secret, &kp.public, Box::new(OsEntropy)).unwrap();
        let c = Client {
            stream: Box::new(std::io::Cursor::new(Vec::new())),
            session,
            buf: Vec::new(),
            link,
            replies: VecDeque::new(),
            pushes: VecDeque::new(),
            dropped: (0, 0),
            tcp: None,
        };
        let busy = ErrorReply::new(ErrorCode::Busy, "no free slot");
        for e in [SessionError::Refused(busy.clone()), SessionError::Remote(busy)] {
            let e = c.session_error(e);
            assert!(matches!(&e, ClientError::Busy { closed: false, .. }), "{e}");
            assert_eq!(e.exit_code(), 7);
            assert_eq!(e.to_string(), "node 10.0.2.15:7700 is busy (all console slots in use): retry later");
        }
        let other = c.session_error(SessionError::Remote(ErrorReply::new(ErrorCode::Replay, "replay")));
        assert_eq!(other.exit_code(), 6);
    }

    #[test]
    fn the_push_queue_is_bounded_and_counts_what_it_drops() {
        let kp = mgmt_proto::KeyPair::generate(&mut OsEntropy).unwrap();
        let session = ConsoleSession::new(Role::Landlord, &kp.secret, &kp.public, Box::new(OsEntropy)).unwrap();
        let mut c = Client {
            stream: Box::new(std::io::Cursor::new(Vec::new())),
            session,
            buf: Vec::new(),
            link: Link { node: "n:1".into(), timeout: DEFAULT_TIMEOUT },
            replies: VecDeque::new(),
            pushes: VecDeque::new(),
            dropped: (0, 0),
            tcp: None,
        };
        let ev = mgmt_proto::monitor::MonitorEvent {
            seq: 1,
            time_ms: 0,
            scope: mgmt_proto::monitor::Scope::Node,
            kind: mgmt_proto::monitor::EventKind::VmStarted,
            text: String::new(),
        };
        for i in 0..(MAX_QUEUED_PUSHES as u64 + 10) {
            c.queue_push(Push { health: None, events: vec![ev.clone(); 2], lost: 0, next_seq: i });
        }
        assert_eq!(c.pushes.len(), MAX_QUEUED_PUSHES);
        assert_eq!(c.dropped_pushes(), (10, 20));
        // The oldest went first; the rest come out in order.
        assert_eq!(c.next_push(Duration::from_millis(1)).unwrap().unwrap().next_seq, 10);
    }

    #[test]
    fn timeout_and_connect_messages_name_the_node() {
        let t = ClientError::Timeout { node: "10.0.2.15:7700".into(), timeout: Duration::from_secs(10) };
        assert_eq!(t.to_string(), "node 10.0.2.15:7700 did not answer within 10 s");
        assert_eq!(t.exit_code(), 3);
        let t = ClientError::Timeout { node: "n:1".into(), timeout: Duration::from_millis(500) };
        assert_eq!(t.to_string(), "node n:1 did not answer within 0.5 s");
        let c = ClientError::Connect { node: "10.0.2.15:7700".into(), reason: "connection refused".into() };
        assert_eq!(c.to_string(), "cannot connect to node 10.0.2.15:7700: connection refused");
        assert_eq!(c.exit_code(), 3);
    }

    #[test]
    fn busy_retries_are_bounded_by_the_timeout() {
        let busy = || ClientError::Busy { node: "n:1".into(), closed: false };
        let mut n = 0;
        let start = Instant::now();
        let r: Result<(), _> = retry_busy(Duration::from_millis(700), || {
            n += 1;
            Err(busy())
        });
        assert!(matches!(r, Err(ClientError::Busy { .. })));
        // 0.05 + 0.1 + 0.2 fit in 0.7 s; 0.4 more would not.
        assert_eq!(n, 4);
        assert!(start.elapsed() < Duration::from_millis(1500));
        let mut n = 0;
        let r = retry_busy(DEFAULT_TIMEOUT, || {
            n += 1;
            if n < 3 {
                Err(busy())
            } else {
                Ok(n)
            }
        });
        assert_eq!(r.unwrap(), 3);
        // Other errors are not retried.
        let mut n = 0;
        let r: Result<(), _> = retry_busy(DEFAULT_TIMEOUT, || {
            n += 1;
            Err(ClientError::Closed)
        });
        assert!(matches!(r, Err(ClientError::Closed)));
        assert_eq!(n, 1);
    }
}
