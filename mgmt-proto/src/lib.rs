//! The BMonitor management protocol, shared by the hypervisor and `bmctl`.
//!
//! Everything here is logic, not I/O, so it builds for the bare-metal target
//! (`x86_64-unknown-none`) and is tested on the host:
//!
//! - [`frame`]: the 2-byte big-endian length framing used on TCP and serial.
//! - [`msg`]: the typed, `postcard`-encoded messages (hello, requests,
//!   replies) and their size-checked codec.
//! - [`crypto`]: the injectable entropy source, the snow crypto resolver that
//!   uses it, and static key pairs.
//! - [`session`]: the Noise IK session state machines, [`ConsoleSession`]
//!   (initiator) and [`NodeSession`] (responder), fed with bytes and giving
//!   bytes and decoded messages back.
//! - [`authz`]: which role may send which request ([`authorize`]).
//! - [`monitor`]: health pushes, events and corrective-action policies.
//! - [`sig`]: Ed25519 signatures over VM images ([`verify_image`]).
//!
//! The node's management state that serves these messages (leases, VM
//! definitions, images, audit log, snapshots) is crate `node-logic`.
//!
//! See `docs/protocol.md` and `docs/threat-model.md` at the repository root.
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
// `Response::Agent(AgentStatus)` (the agent contract) made `Reply` and so
// `session::ConsoleEvent` large; a reply is moved once per request, so the
// size does not matter. Boxing it would change the contract's type.
#![allow(clippy::large_enum_variant)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod authz;
pub mod crypto;
pub mod fleet;
pub mod frame;
pub mod monitor;
pub mod msg;
pub mod session;
pub mod sig;

pub use authz::{authorize, Denied, Ownership};
pub use crypto::{Entropy, EntropyError, HashDrbg, KeyPair, PublicKey, SecretKey};
pub use frame::{encode_frame, FrameDecoder, FrameError};
pub use msg::*;
pub use session::{
    busy_frame, ConsoleEvent, ConsoleSession, KeyCheck, KeyDirectory, KeyTable, NodeEvent, NodeSession, SessionError,
};
pub use sig::{
    image_digest, image_verify_key, sign_image, sign_image_digest, verify_image, verify_image_digest, SigError,
};

/// The protocol version this crate speaks; sent in [`Hello`] and bound into
/// the Noise prologue so a version mismatch can never silently pass.
pub const PROTOCOL_VERSION: u16 = 1;

/// The Noise protocol name: IK because the console already knows the node's
/// static key for the role it asks for, and the node must learn (and check)
/// the console's static key in the first message.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Largest frame payload the framing can carry (the 2-byte length's range);
/// also Noise's maximum message length.
pub const MAX_FRAME: usize = 65535;

/// Noise's authentication tag length, the per-message overhead of transport
/// messages.
pub const NOISE_TAG_LEN: usize = 16;

/// Largest plaintext message (postcard-encoded [`Envelope`] or [`Reply`]) that
/// fits one encrypted frame.
pub const MAX_MESSAGE: usize = MAX_FRAME - NOISE_TAG_LEN;

/// Largest frame accepted before the session is established (hello and
/// handshake messages are small; a big one is an attack or a bug).
pub const MAX_HANDSHAKE_FRAME: usize = 1024;

/// Largest image chunk carried in one [`Request::UploadImageChunk`], leaving
/// room for the envelope's other fields inside [`MAX_MESSAGE`].
pub const MAX_CHUNK: usize = 60 * 1024;

/// Largest console write or console read returned in one message.
pub const MAX_CONSOLE_BYTES: usize = 32 * 1024;

/// Entries per [`Request::ReadAudit`] answer at most: a shorter page is the
/// end of the log, so consoles page on it (part of the contract between node
/// and console, hence here rather than with the node's state).
pub const AUDIT_PAGE: usize = 100;
