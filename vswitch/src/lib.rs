//! BMonitor's virtual switch, as pure logic: everything between "a frame's bytes arrived on
//! port P" and "deliver these bytes to ports Q, R" or "drop it, for this reason".
//!
//! - [`frame`] parses untrusted Ethernet frames into a typed [`FrameInfo`].
//! - [`policy`] holds the typed policy: the landlord's [`ClusterBoundary`] and the tenants'
//!   deny [`Rule`]s, validated so that a tenant rule can only narrow its own cluster.
//! - [`engine`] compiles a policy into hash indexes and decides per frame, with counters and
//!   an atomic policy swap.
//! - [`switch`] is the learning L2 switch with anti-spoofing, built on the engine.
//! - [`refuse`] builds the refusal replies (ICMP administratively prohibited, TCP RST).
//!
//! No hardware here: the hypervisor's net glue feeds frames in and carries deliveries out, so
//! all of this is tested on the host (unit tests, property tests, a fuzz target, benchmarks).
//! Every read of frame bytes is bounds-checked; nothing panics on input.
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

mod bytes;
pub mod checksum;
pub mod config;
pub mod engine;
pub mod frame;
mod hash;
pub mod policy;
pub mod refuse;
pub mod switch;

pub use engine::{CompiledPolicy, Engine, PortCounters, RuleCounters, RuleRef, Verdict};
pub use frame::{parse, ArpInfo, FrameError, FrameInfo, Ipv4Info, MacAddr, Network, TcpInfo, Transport};
pub use policy::{
    Action, Address, ClusterBoundary, ClusterId, Direction, Endpoint, Field, Match, Policy, PortId, PortRange,
    Protocol, Rule, RuleError, RuleId, Side,
};
pub use switch::{Delivery, DropReason, Outcome, PortError, Switch, SwitchConfig, SwitchCounters};

/// IPv4 addresses, re-exported so callers need not name `core::net`.
pub use core::net::Ipv4Addr;
