//! The guest agent's side channel to BMonitor, as pure code shared by the
//! node, the agent (`bm-agent`) and the consoles.
//!
//! - [`ring`]: the shared-memory region the agent registers with the
//!   `agent_attach` hypercall: a control block and two byte rings of
//!   length-prefixed records, every index the guest writes checked;
//! - [`msg`]: what travels in those records (operations the tenant asks
//!   for, their output and results, heartbeats), postcard-encoded;
//! - [`relay`]: the node's per-VM state between a tenant's console and the
//!   agent: streams, bounded queues, flow-control credit, heartbeats and
//!   the agent's event log.
//!
//! See docs/hypercalls.md ("The guest agent") for the ABI.
#![no_std]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

pub mod msg;
pub mod relay;
pub mod ring;

pub use msg::{Event, FromAgent, Input, Op, StreamId, ToAgent};
pub use relay::{AgentStatus, Relay, RelayError, RelayLimits};
pub use ring::{RingFault, RingMem};

/// Version of the agent protocol; the agent sends it in [`FromAgent::Hello`].
pub const AGENT_PROTOCOL: u32 = 1;

/// The largest encoded record either side may put in a ring. A record
/// announcing more is a protocol error that detaches the agent.
pub const MAX_RECORD: usize = 40 * 1024;

/// The most data bytes one `Data`/`Stdout`/`Stderr` message carries, so a
/// record always fits [`MAX_RECORD`].
pub const MAX_DATA: usize = 32 * 1024;

/// The most data one console input (`Input::Data` in an `AgentSend`)
/// carries: the relay splits it into records of [`MAX_DATA`], so a copy
/// into the guest costs fewer console round trips.
pub const MAX_CONSOLE_DATA: usize = 56 * 1024;
