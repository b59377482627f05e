//! The node's management logic, shared by the hypervisor and host tests.
//!
//! [`NodeState`] is what a BMonitor node keeps and decides about itself:
//! its keys, the leases, VM definitions, images and uploads, cluster
//! boundaries and tenant rules, corrective-action policies and the audit
//! log, with [`Snapshot`]s for sealed storage. It answers the consoles'
//! requests ([`NodeState::handle`], [`NodeState::serve`]). What only the
//! running node knows (its status, a VM's console and counters) it asks a
//! [`NodeBackend`] for: the hypervisor implements it over the real VMs,
//! host tests over an in-memory fake (`sim`, feature `sim`, test-only).
//!
//! Pure logic, no I/O, so it builds for the bare-metal target
//! (`x86_64-unknown-none`) and is tested on the host:
//!
//! - [`backend`]: the [`NodeBackend`] trait.
//! - [`state`]: [`NodeState`] itself, its records and construction.
//! - [`dispatch`]: request handling and session serving.
//! - [`leases`], [`vms`], [`rules`], [`policies`], [`uploads`], [`audit`]:
//!   the requests on each part of the state.
//! - [`snapshot`]: the snapshot format and its older versions.
//! - [`images`]: where image bytes live ([`ImageStore`]) and placement.
//! - [`admission`]: who gets a management connection slot.
//! - [`limits`]: what consoles may make the node keep, and the name rule.
//!
//! The wire protocol (messages, sessions, authorization) is `mgmt-proto`.
#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod admission;
pub mod audit;
pub mod backend;
pub mod dispatch;
pub mod fleet;
pub mod images;
pub mod leases;
pub mod limits;
pub mod policies;
pub mod rules;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod snapshot;
pub mod state;
pub mod uploads;
pub mod vms;

pub use backend::NodeBackend;
pub use fleet::{Fleet, FleetVm};
pub use images::{ImageStore, MemImageStore};
pub use limits::{check_name, StateLimits};
pub use snapshot::{Snapshot, SNAPSHOT_VERSION};
pub use state::{Lease, NodeState, Vm};
pub use uploads::{Image, Upload};
