//! Session state machines over byte streams, with no I/O.
//!
//! Wire sequence (each item one frame, see [`crate::frame`]):
//!
//! 1. console → node: [`Hello`] (cleartext postcard); it is the Noise prologue
//!    on both sides and selects the node static key for the role.
//! 2. console → node: Noise IK message 1 (empty payload).
//! 3. node → console: [`HandshakeReply`] (cleartext postcard): `Accept` with
//!    Noise message 2, or `Refused` with the reason.
//! 4. then each way: Noise transport messages whose plaintext is a postcard
//!    [`Envelope`] (console → node) or [`Reply`] (node → console).
//!
//! Any refusal closes the session: the node queues a last message explaining
//! it (cleartext refusal during the handshake, an encrypted [`Reply`] with
//! the error afterwards), returns the error, and accepts nothing more.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use snow::{Builder, HandshakeState, TransportState};

use crate::crypto::{Entropy, PublicKey, Resolver, SecretKey};
use crate::frame::{encode_frame, FrameDecoder, FrameError};
use crate::msg::{
    decode, encode, CodecError, Envelope, ErrorCode, ErrorReply, HandshakeReply, Hello, LeaseId, Reply, Request,
    Response, Role,
};
use crate::{MAX_FRAME, MAX_HANDSHAKE_FRAME, MAX_MESSAGE, NOISE_PARAMS, NOISE_TAG_LEN, PROTOCOL_VERSION};

/// Largest encoded [`Hello`]: a version and a role with a lease id.
const MAX_HELLO: usize = 16;

/// Why a session was refused or closed. Every variant closes the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// A frame had a bad length.
    Frame(FrameError),
    /// A message could not be decoded or was too large.
    Codec(CodecError),
    /// The peer speaks another protocol version.
    Version {
        /// The version it sent.
        got: u16,
    },
    /// The hello names a role with no node key (no such lease, or the node is
    /// not provisioned).
    UnknownRole(Role),
    /// The console's static key is not registered.
    UnknownKey(PublicKey),
    /// The console's key is registered, but not for the role it asked for.
    WrongRole {
        /// The role asked for.
        role: Role,
        /// The key presented.
        key: PublicKey,
    },
    /// The Noise handshake failed (wrong node key, tampered hello, bad
    /// message), or a handshake message carried a payload.
    Handshake,
    /// A transport message failed to decrypt: tampered, replayed or
    /// reordered at the ciphertext level.
    Decrypt,
    /// A request's sequence number was not above the last one.
    Replay {
        /// The sequence number received.
        seq: u64,
        /// The last accepted one.
        last: u64,
    },
    /// (console) A reply did not match the oldest outstanding request.
    UnexpectedReply {
        /// Its sequence number.
        seq: u64,
    },
    /// (console) The node refused the handshake.
    Refused(ErrorReply),
    /// (console) The node reported a protocol error and closed the session.
    Remote(ErrorReply),
    /// The operation needs an established session.
    NotEstablished,
    /// The session is closed.
    Closed,
    /// The entropy source failed.
    Entropy,
    /// The Noise library refused an operation that should not fail.
    Internal,
}

impl SessionError {
    /// The wire form of this refusal, sent to the peer before closing.
    pub fn to_error_reply(&self) -> ErrorReply {
        match self {
            SessionError::Frame(FrameError::Oversize { len, limit }) => {
                ErrorReply::new(ErrorCode::Oversize, format!("frame of {len} bytes exceeds the limit of {limit}"))
            }
            SessionError::Frame(FrameError::Empty) => ErrorReply::new(ErrorCode::Malformed, "empty frame"),
            SessionError::Codec(CodecError::Oversize { len, limit }) => {
                ErrorReply::new(ErrorCode::Oversize, format!("message of {len} bytes exceeds the limit of {limit}"))
            }
            SessionError::Codec(CodecError::Malformed) => ErrorReply::new(ErrorCode::Malformed, "malformed message"),
            SessionError::Version { got } => ErrorReply::new(
                ErrorCode::Version,
                format!("protocol version {got} not supported (node speaks {PROTOCOL_VERSION})"),
            ),
            SessionError::UnknownRole(r) => ErrorReply::new(ErrorCode::UnknownRole, format!("no {r} on this node")),
            SessionError::UnknownKey(_) => ErrorReply::new(ErrorCode::UnknownKey, "console key not registered"),
            SessionError::WrongRole { role, .. } => {
                ErrorReply::new(ErrorCode::WrongRole, format!("console key not registered for {role}"))
            }
            SessionError::Handshake => ErrorReply::new(ErrorCode::Handshake, "handshake failed"),
            SessionError::Decrypt => ErrorReply::new(ErrorCode::Malformed, "message failed to decrypt"),
            SessionError::Replay { seq, last } => ErrorReply::new(
                ErrorCode::Replay,
                format!("sequence number {seq} not above {last}: replayed or reordered"),
            ),
            SessionError::UnexpectedReply { seq } => {
                ErrorReply::new(ErrorCode::Malformed, format!("unexpected reply sequence number {seq}"))
            }
            SessionError::Refused(e) | SessionError::Remote(e) => e.clone(),
            SessionError::NotEstablished => ErrorReply::new(ErrorCode::Malformed, "session not established"),
            SessionError::Closed => ErrorReply::new(ErrorCode::Malformed, "session closed"),
            SessionError::Entropy => ErrorReply::new(ErrorCode::Internal, "entropy source failed"),
            SessionError::Internal => ErrorReply::new(ErrorCode::Internal, "internal error"),
        }
    }
}

impl core::fmt::Display for SessionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SessionError::Refused(e) => write!(f, "node refused the session: {}", e.message),
            SessionError::Remote(e) => write!(f, "node closed the session: {}", e.message),
            SessionError::UnknownKey(k) => write!(f, "console key {k} not registered"),
            other => write!(f, "{}", other.to_error_reply().message),
        }
    }
}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> Self {
        SessionError::Frame(e)
    }
}

impl From<CodecError> for SessionError {
    fn from(e: CodecError) -> Self {
        SessionError::Codec(e)
    }
}

/// The cleartext refusal a node sends on a connection it has no session
/// slot for, before reading anything: the console sees
/// [`SessionError::Refused`] with [`ErrorCode::Busy`] and may retry, instead
/// of a reset it cannot tell from a dead node.
pub fn busy_frame(message: &str) -> Vec<u8> {
    let reply = HandshakeReply::Refused(ErrorReply::new(ErrorCode::Busy, message));
    encode(&reply, MAX_HANDSHAKE_FRAME).ok().and_then(|plain| encode_frame(&plain).ok()).unwrap_or_default()
}

/// The result of checking a console's static key against the registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// Registered for this role.
    Accepted,
    /// Registered, but for another role.
    WrongRole,
    /// Not registered at all.
    Unknown,
}

/// The node's key registrations, answered from its key store during the
/// handshake (so a key rotated mid-way is seen by the next session).
pub trait KeyDirectory {
    /// The node's static private key answering `role` (R_L, or R_T of the
    /// lease), or `None` if there is no such role on this node.
    fn node_secret(&self, role: &Role) -> Option<SecretKey>;
    /// Whether `console` is the registered console key for `role`.
    fn check_console(&self, role: &Role, console: &PublicKey) -> KeyCheck;
}

/// A simple in-memory [`KeyDirectory`]: one landlord entry and one entry per
/// lease, each the node's secret key and the registered console key. The
/// hypervisor may use it as its key table directly.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    /// (R_L, landlord console key).
    pub landlord: Option<(SecretKey, PublicKey)>,
    /// Per lease: (R_T, tenant console key).
    pub tenants: BTreeMap<LeaseId, (SecretKey, PublicKey)>,
}

impl KeyTable {
    fn entry(&self, role: &Role) -> Option<&(SecretKey, PublicKey)> {
        match role {
            Role::Landlord => self.landlord.as_ref(),
            Role::Tenant(l) => self.tenants.get(l),
        }
    }
}

impl KeyDirectory for KeyTable {
    fn node_secret(&self, role: &Role) -> Option<SecretKey> {
        self.entry(role).map(|(s, _)| s.clone())
    }

    fn check_console(&self, role: &Role, console: &PublicKey) -> KeyCheck {
        if self.entry(role).is_some_and(|(_, c)| c.ct_eq(console)) {
            return KeyCheck::Accepted;
        }
        let elsewhere = self.landlord.iter().chain(self.tenants.values()).any(|(_, c)| c.ct_eq(console));
        if elsewhere {
            KeyCheck::WrongRole
        } else {
            KeyCheck::Unknown
        }
    }
}

fn params() -> Result<snow::params::NoiseParams, SessionError> {
    NOISE_PARAMS.parse().map_err(|_| SessionError::Internal)
}

fn encrypt(t: &mut TransportState, plain: &[u8]) -> Result<Vec<u8>, SessionError> {
    let mut buf = vec![0u8; plain.len() + NOISE_TAG_LEN];
    let n = t.write_message(plain, &mut buf).map_err(|_| SessionError::Internal)?;
    buf.truncate(n);
    Ok(encode_frame(&buf)?)
}

fn decrypt(t: &mut TransportState, frame: &[u8]) -> Result<Vec<u8>, SessionError> {
    let mut buf = vec![0u8; frame.len()];
    let n = t.read_message(frame, &mut buf).map_err(|_| SessionError::Decrypt)?;
    buf.truncate(n);
    Ok(buf)
}

/// What the node learned from received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The handshake completed: the console proved the registered key for
    /// `role`. Worth an audit entry.
    Established {
        /// The authenticated role.
        role: Role,
        /// The console's static key.
        console_key: PublicKey,
    },
    /// A request that passed the sequence check. The node must still call
    /// [`crate::authorize`] and then answer with [`NodeSession::reply`].
    Request(Envelope),
}

enum NodeState {
    AwaitHello,
    AwaitHandshake { hello: Hello, prologue: Vec<u8>, secret: SecretKey },
    Established { transport: Box<TransportState>, role: Role, console_key: PublicKey, last_seq: u64 },
    Closed,
}

/// The node (responder) side of one console connection.
///
/// Feed received bytes to [`Self::receive`] with the node's key directory;
/// act on the returned events; answer requests with [`Self::reply`]; send
/// whatever [`Self::take_output`] returns. After an error, send the output
/// (it explains the refusal) and close the connection.
pub struct NodeSession {
    state: NodeState,
    decoder: FrameDecoder,
    out: Vec<u8>,
    rng: Option<Box<dyn Entropy>>,
}

impl NodeSession {
    /// A session for a new connection; `rng` supplies the ephemeral key
    /// (RDRAND on bare metal, a seeded [`crate::HashDrbg`] in tests).
    pub fn new(rng: Box<dyn Entropy>) -> Self {
        NodeSession {
            state: NodeState::AwaitHello,
            decoder: FrameDecoder::new(MAX_HANDSHAKE_FRAME),
            out: Vec::new(),
            rng: Some(rng),
        }
    }

    /// The authenticated role, once established.
    pub fn role(&self) -> Option<Role> {
        match &self.state {
            NodeState::Established { role, .. } => Some(*role),
            _ => None,
        }
    }

    /// The authenticated console key, once established.
    pub fn console_key(&self) -> Option<PublicKey> {
        match &self.state {
            NodeState::Established { console_key, .. } => Some(*console_key),
            _ => None,
        }
    }

    /// Whether the handshake has completed and the session is open.
    pub fn is_established(&self) -> bool {
        matches!(self.state, NodeState::Established { .. })
    }

    /// Whether the session was closed by a refusal; the transport should
    /// flush [`Self::take_output`] and disconnect.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, NodeState::Closed)
    }

    /// Bytes to send to the console (handshake answer, replies, refusals).
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.out)
    }

    /// Processes received bytes. Returns the events of every complete frame,
    /// or the first refusal (after which the session is closed and nothing
    /// from this call has been acted upon).
    pub fn receive(&mut self, bytes: &[u8], keys: &dyn KeyDirectory) -> Result<Vec<NodeEvent>, SessionError> {
        if self.is_closed() {
            return Err(SessionError::Closed);
        }
        self.decoder.push(bytes);
        let mut events = Vec::new();
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(events),
                Err(e) => return Err(self.refuse(seq_none(), e.into())),
            };
            match self.on_frame(&frame, keys) {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => {}
                Err((seq, e)) => return Err(self.refuse(seq, e)),
            }
        }
    }

    fn on_frame(&mut self, frame: &[u8], keys: &dyn KeyDirectory) -> Result<Option<NodeEvent>, (u64, SessionError)> {
        match core::mem::replace(&mut self.state, NodeState::Closed) {
            NodeState::AwaitHello => {
                let hello: Hello = decode(frame, MAX_HELLO).map_err(|e| (0, e.into()))?;
                if hello.version != PROTOCOL_VERSION {
                    return Err((0, SessionError::Version { got: hello.version }));
                }
                let secret = keys.node_secret(&hello.role).ok_or((0, SessionError::UnknownRole(hello.role)))?;
                self.state = NodeState::AwaitHandshake { hello, prologue: frame.to_vec(), secret };
                Ok(None)
            }
            NodeState::AwaitHandshake { hello, prologue, secret } => {
                let ev = self.on_handshake(frame, &hello, &prologue, &secret, keys).map_err(|e| (0, e))?;
                Ok(Some(ev))
            }
            NodeState::Established { mut transport, role, console_key, last_seq } => {
                let plain = decrypt(&mut transport, frame);
                // Keep the transport so the refusal can be sent encrypted.
                let established = |transport| NodeState::Established { transport, role, console_key, last_seq };
                let plain = match plain {
                    Ok(p) => p,
                    Err(e) => {
                        self.state = established(transport);
                        return Err((0, e));
                    }
                };
                let env: Envelope = match decode(&plain, MAX_MESSAGE) {
                    Ok(env) => env,
                    Err(e) => {
                        self.state = established(transport);
                        return Err((0, e.into()));
                    }
                };
                // PUSH_SEQ numbers the node's pushes; a request may not use it.
                if env.seq <= last_seq || env.seq == crate::monitor::PUSH_SEQ {
                    self.state = established(transport);
                    return Err((env.seq, SessionError::Replay { seq: env.seq, last: last_seq }));
                }
                self.state = NodeState::Established { transport, role, console_key, last_seq: env.seq };
                Ok(Some(NodeEvent::Request(env)))
            }
            NodeState::Closed => Err((0, SessionError::Closed)),
        }
    }

    fn on_handshake(
        &mut self,
        frame: &[u8],
        hello: &Hello,
        prologue: &[u8],
        secret: &SecretKey,
        keys: &dyn KeyDirectory,
    ) -> Result<NodeEvent, SessionError> {
        let rng = self.rng.take().ok_or(SessionError::Entropy)?;
        let mut hs: HandshakeState = Builder::with_resolver(params()?, Box::new(Resolver::new(Some(rng))))
            .local_private_key(&secret.0)
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_responder())
            .map_err(|_| SessionError::Internal)?;
        let mut payload = vec![0u8; frame.len()];
        let n = hs.read_message(frame, &mut payload).map_err(|_| SessionError::Handshake)?;
        if n != 0 {
            return Err(SessionError::Handshake);
        }
        let mut console = [0u8; 32];
        let rs = hs.get_remote_static().ok_or(SessionError::Handshake)?;
        if rs.len() != 32 {
            return Err(SessionError::Handshake);
        }
        console.copy_from_slice(rs);
        let console_key = PublicKey(console);
        match keys.check_console(&hello.role, &console_key) {
            KeyCheck::Accepted => {}
            KeyCheck::WrongRole => return Err(SessionError::WrongRole { role: hello.role, key: console_key }),
            KeyCheck::Unknown => return Err(SessionError::UnknownKey(console_key)),
        }
        let mut msg2 = vec![0u8; 128];
        let n = hs.write_message(&[], &mut msg2).map_err(|e| match e {
            snow::Error::Rng => SessionError::Entropy,
            _ => SessionError::Internal,
        })?;
        msg2.truncate(n);
        let reply = encode(&HandshakeReply::Accept(msg2), MAX_HANDSHAKE_FRAME)?;
        let transport = hs.into_transport_mode().map_err(|_| SessionError::Internal)?;
        self.out.extend_from_slice(&encode_frame(&reply)?);
        self.decoder.set_limit(MAX_FRAME);
        self.state =
            NodeState::Established { transport: Box::new(transport), role: hello.role, console_key, last_seq: 0 };
        Ok(NodeEvent::Established { role: hello.role, console_key })
    }

    /// Closes the session, queueing a message telling the console why.
    fn refuse(&mut self, seq: u64, e: SessionError) -> SessionError {
        let err = e.to_error_reply();
        match core::mem::replace(&mut self.state, NodeState::Closed) {
            NodeState::Established { mut transport, .. } => {
                let reply = Reply { seq, body: Err(err) };
                if let Ok(plain) = encode(&reply, MAX_MESSAGE) {
                    if let Ok(f) = encrypt(&mut transport, &plain) {
                        self.out.extend_from_slice(&f);
                    }
                }
            }
            // `on_frame` leaves the state `Closed` on a handshake-phase error
            // (receive refuses an already-closed session before getting here).
            NodeState::Closed | NodeState::AwaitHello | NodeState::AwaitHandshake { .. } => {
                if let Ok(plain) = encode(&HandshakeReply::Refused(err), MAX_HANDSHAKE_FRAME) {
                    if let Ok(f) = encode_frame(&plain) {
                        self.out.extend_from_slice(&f);
                    }
                }
            }
        }
        e
    }

    /// Ends the session with a [`ErrorCode::Busy`] refusal (a session limit
    /// was reached once the console's role became known); the console may
    /// retry. The refusal is in `take_output`.
    pub fn refuse_busy(&mut self, message: &str) {
        let _ = self.refuse(0, SessionError::Refused(ErrorReply::new(ErrorCode::Busy, message)));
    }

    /// Queues the answer to request `seq`. A response too large for one
    /// message is replaced by an `Internal` error naming the problem, so the
    /// console always gets an answer.
    pub fn reply(&mut self, seq: u64, body: Result<Response, ErrorReply>) -> Result<(), SessionError> {
        let NodeState::Established { transport, .. } = &mut self.state else {
            return Err(if self.is_closed() { SessionError::Closed } else { SessionError::NotEstablished });
        };
        let plain = match encode(&Reply { seq, body }, MAX_MESSAGE) {
            Ok(p) => p,
            Err(_) => encode(
                &Reply { seq, body: Err(ErrorReply::new(ErrorCode::Internal, "reply too large for one message")) },
                MAX_MESSAGE,
            )?,
        };
        let f = encrypt(transport, &plain)?;
        self.out.extend_from_slice(&f);
        Ok(())
    }

    /// Queues a subscription push (a reply numbered
    /// [`crate::monitor::PUSH_SEQ`]). A push too large for one message
    /// fails with `Codec`; the caller sends fewer events.
    pub fn push(&mut self, push: crate::monitor::Push) -> Result<(), SessionError> {
        let NodeState::Established { transport, .. } = &mut self.state else {
            return Err(if self.is_closed() { SessionError::Closed } else { SessionError::NotEstablished });
        };
        let plain = encode(&Reply { seq: crate::monitor::PUSH_SEQ, body: Ok(Response::Push(push)) }, MAX_MESSAGE)?;
        let f = encrypt(transport, &plain)?;
        self.out.extend_from_slice(&f);
        Ok(())
    }

    /// Bytes queued for the console and not yet taken: a session whose
    /// console reads slowly stops getting pushes past a limit.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }
}

fn seq_none() -> u64 {
    0
}

/// What the console learned from received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// The node proved it holds the expected static key; requests may flow.
    Established,
    /// The reply to an outstanding request.
    Reply(Reply),
    /// A subscription push from the node (not a reply to any request).
    Push(crate::monitor::Push),
}

enum ConsoleState {
    Handshaking(Box<HandshakeState>),
    Established(Box<TransportState>),
    Closed,
}

/// The console (initiator) side of a session.
///
/// [`Self::new`] queues the hello and the first handshake message; send
/// [`Self::take_output`], feed the node's bytes to [`Self::receive`] until
/// [`ConsoleEvent::Established`], then [`Self::send`] requests and collect
/// [`ConsoleEvent::Reply`]s.
pub struct ConsoleSession {
    state: ConsoleState,
    decoder: FrameDecoder,
    out: Vec<u8>,
    next_seq: u64,
    pending: VecDeque<u64>,
}

impl ConsoleSession {
    /// Starts a session as `role`, authenticating with the console's static
    /// secret and expecting the node to hold the private half of `node_key`
    /// (U_L for the landlord, U_T of the lease for a tenant).
    pub fn new(
        role: Role,
        console_secret: &SecretKey,
        node_key: &PublicKey,
        rng: Box<dyn Entropy>,
    ) -> Result<Self, SessionError> {
        let hello = encode(&Hello { version: PROTOCOL_VERSION, role }, MAX_HELLO)?;
        let mut hs = Builder::with_resolver(params()?, Box::new(Resolver::new(Some(rng))))
            .local_private_key(&console_secret.0)
            .and_then(|b| b.remote_public_key(&node_key.0))
            .and_then(|b| b.prologue(&hello))
            .and_then(|b| b.build_initiator())
            .map_err(|_| SessionError::Internal)?;
        let mut msg1 = vec![0u8; 256];
        let n = hs.write_message(&[], &mut msg1).map_err(|e| match e {
            snow::Error::Rng => SessionError::Entropy,
            _ => SessionError::Internal,
        })?;
        msg1.truncate(n);
        let mut out = encode_frame(&hello)?;
        out.extend_from_slice(&encode_frame(&msg1)?);
        Ok(ConsoleSession {
            state: ConsoleState::Handshaking(Box::new(hs)),
            decoder: FrameDecoder::new(MAX_HANDSHAKE_FRAME),
            out,
            next_seq: 1,
            pending: VecDeque::new(),
        })
    }

    /// Bytes to send to the node.
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.out)
    }

    /// Whether requests may be sent.
    pub fn is_established(&self) -> bool {
        matches!(self.state, ConsoleState::Established(_))
    }

    /// Whether the session ended (refusal or protocol error).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, ConsoleState::Closed)
    }

    /// Requests sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Processes bytes from the node; returns events, or the error that
    /// closed the session (a node refusal arrives as `Refused`/`Remote`).
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Vec<ConsoleEvent>, SessionError> {
        if self.is_closed() {
            return Err(SessionError::Closed);
        }
        self.decoder.push(bytes);
        let mut events = Vec::new();
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(events),
                Err(e) => {
                    self.state = ConsoleState::Closed;
                    return Err(e.into());
                }
            };
            match self.on_frame(&frame) {
                Ok(ev) => events.push(ev),
                Err(e) => {
                    self.state = ConsoleState::Closed;
                    return Err(e);
                }
            }
        }
    }

    fn on_frame(&mut self, frame: &[u8]) -> Result<ConsoleEvent, SessionError> {
        match core::mem::replace(&mut self.state, ConsoleState::Closed) {
            ConsoleState::Handshaking(mut hs) => {
                let msg2 = match decode::<HandshakeReply>(frame, MAX_HANDSHAKE_FRAME)? {
                    HandshakeReply::Refused(e) => return Err(SessionError::Refused(e)),
                    HandshakeReply::Accept(m) => m,
                };
                let mut payload = vec![0u8; msg2.len()];
                let n = hs.read_message(&msg2, &mut payload).map_err(|_| SessionError::Handshake)?;
                if n != 0 {
                    return Err(SessionError::Handshake);
                }
                let t = hs.into_transport_mode().map_err(|_| SessionError::Handshake)?;
                self.state = ConsoleState::Established(Box::new(t));
                self.decoder.set_limit(MAX_FRAME);
                Ok(ConsoleEvent::Established)
            }
            ConsoleState::Established(mut t) => {
                let plain = decrypt(&mut t, frame)?;
                let reply: Reply = decode(&plain, MAX_MESSAGE)?;
                if reply.seq == crate::monitor::PUSH_SEQ {
                    if let Ok(Response::Push(p)) = reply.body {
                        self.state = ConsoleState::Established(t);
                        return Ok(ConsoleEvent::Push(p));
                    }
                }
                // Protocol refusals (the node has closed the session) carry
                // seq 0 or one of the protocol codes; handlers never use them.
                if let Err(e) = &reply.body {
                    if reply.seq == 0 || e.code.closes_session() {
                        return Err(SessionError::Remote(e.clone()));
                    }
                }
                if self.pending.front() != Some(&reply.seq) {
                    // A refusal naming a request (e.g. a replay) also closes.
                    if let Err(e) = reply.body {
                        return Err(SessionError::Remote(e));
                    }
                    return Err(SessionError::UnexpectedReply { seq: reply.seq });
                }
                self.pending.pop_front();
                self.state = ConsoleState::Established(t);
                Ok(ConsoleEvent::Reply(reply))
            }
            ConsoleState::Closed => Err(SessionError::Closed),
        }
    }

    /// Sends a request with the next sequence number; returns that number.
    pub fn send(&mut self, body: Request) -> Result<u64, SessionError> {
        let seq = self.next_seq;
        self.send_with_seq(seq, body)?;
        Ok(seq)
    }

    /// Sends raw plaintext as one encrypted message, bypassing the envelope
    /// encoding: for conformance tests and fuzzing of the node's decoder.
    pub fn send_raw(&mut self, plain: &[u8]) -> Result<(), SessionError> {
        let ConsoleState::Established(t) = &mut self.state else {
            return Err(if self.is_closed() { SessionError::Closed } else { SessionError::NotEstablished });
        };
        let f = encrypt(t, plain)?;
        self.out.extend_from_slice(&f);
        Ok(())
    }

    /// Sends a request with an explicit sequence number. Normal clients use
    /// [`Self::send`]; this exists so conformance tests can check that the
    /// node refuses replayed and reordered numbers.
    pub fn send_with_seq(&mut self, seq: u64, body: Request) -> Result<(), SessionError> {
        let ConsoleState::Established(t) = &mut self.state else {
            return Err(if self.is_closed() { SessionError::Closed } else { SessionError::NotEstablished });
        };
        let plain = encode(&Envelope { seq, body }, MAX_MESSAGE)?;
        let f = encrypt(t, &plain)?;
        self.out.extend_from_slice(&f);
        self.pending.push_back(seq);
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
