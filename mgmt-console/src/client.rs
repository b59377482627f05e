//! A blocking client: opens TCP or a serial line, runs the handshake, and
//! sends one request at a time.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use mgmt_proto::session::ConsoleEvent;
use mgmt_proto::{ConsoleSession, ErrorCode, ErrorReply, PublicKey, Request, Response, Role, SecretKey, SessionError};

use crate::profile::{NodeAddr, OsEntropy, Profile};

/// What can go wrong talking to a node; each maps to its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached or the connection broke.
    #[error("cannot talk to the node: {0}")]
    Io(#[from] std::io::Error),
    /// The node closed the connection.
    #[error("the node closed the connection")]
    Closed,
    /// The node refused the session (unknown key, wrong role, ...).
    #[error("session refused: {0}")]
    Refused(ErrorReply),
    /// The node refused one request.
    #[error("request refused ({code:?}): {message}", code = .0.code, message = .0.message)]
    Node(ErrorReply),
    /// The protocol failed (bad message, wrong node key, replay ...).
    #[error("protocol error: {0}")]
    Protocol(SessionError),
    /// The node answered with an unexpected response type.
    #[error("unexpected response from the node: {0}")]
    Unexpected(String),
    /// Local setup failed (profile, key).
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// The process exit code: 3 unreachable, 4 session refused, 5 request
    /// refused, 6 protocol error, 1 local problems.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Io(_) | ClientError::Closed => 3,
            ClientError::Refused(_) => 4,
            ClientError::Node(_) => 5,
            ClientError::Protocol(_) | ClientError::Unexpected(_) => 6,
            ClientError::Local(_) => 1,
        }
    }

    /// Whether reconnecting may help (used by resumable uploads).
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Io(_) | ClientError::Closed)
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

/// An established session.
pub struct Client {
    stream: Box<dyn Stream>,
    session: ConsoleSession,
    buf: Vec<u8>,
}

impl Client {
    /// Connects as described by a profile, loading the key with `load_key`.
    pub fn connect_profile(profile: &Profile, secret: &SecretKey) -> Result<Client, ClientError> {
        let local = |e: anyhow::Error| ClientError::Local(format!("{e:#}"));
        let role = profile.role().map_err(local)?;
        let node_key = profile.node_key().map_err(local)?;
        let stream: Box<dyn Stream> = match profile.addr().map_err(local)? {
            NodeAddr::Tcp(a) => Box::new(tcp(&a)?),
            NodeAddr::Serial(p) => Box::new(std::fs::OpenOptions::new().read(true).write(true).open(&p)?),
        };
        Client::handshake(stream, role, secret, &node_key)
    }

    /// Runs the handshake on an open stream.
    pub fn handshake(
        stream: Box<dyn Stream>,
        role: Role,
        secret: &SecretKey,
        node_key: &PublicKey,
    ) -> Result<Client, ClientError> {
        let session = ConsoleSession::new(role, secret, node_key, Box::new(OsEntropy))?;
        let mut c = Client { stream, session, buf: vec![0u8; 65536] };
        c.flush()?;
        loop {
            let events = c.read_some()?;
            if events.iter().any(|e| matches!(e, ConsoleEvent::Established)) {
                return Ok(c);
            }
        }
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        let out = self.session.take_output();
        if !out.is_empty() {
            self.stream.write_all(&out)?;
            self.stream.flush()?;
        }
        Ok(())
    }

    fn read_some(&mut self) -> Result<Vec<ConsoleEvent>, ClientError> {
        let n = self.stream.read(&mut self.buf)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        Ok(self.session.receive(self.buf.get(..n).unwrap_or(&[]))?)
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

    fn wait(&mut self) -> Result<Response, ClientError> {
        self.flush()?;
        loop {
            for ev in self.read_some()? {
                if let ConsoleEvent::Reply(r) = ev {
                    return r.body.map_err(ClientError::Node);
                }
            }
        }
    }
}

fn tcp(addr: &str) -> Result<TcpStream, ClientError> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(60)))?;
                s.set_nodelay(true).ok();
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ClientError::Io(
        last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr}: no address"))),
    ))
}
