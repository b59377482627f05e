//! `bmctl`, the BMonitor landlord and tenant console, as a library so the
//! integration tests drive the same client code as the binary.
//!
//! - [`profile`]: named connection profiles and console key files.
//! - [`client`]: a blocking client over TCP or a serial line, speaking
//!   `mgmt-proto`'s [`mgmt_proto::ConsoleSession`].
//! - [`upload`]: chunked, resumable image upload.
//! - [`rules`]: the command-line syntax of boundary rules.
//! - [`agent`], [`cp`] (and the private `agent_cmd`): tenant commands through the VM's
//!   guest agent (exec, shell, cp, ps, kill, services, inventory).
//! - [`view`], [`watch`], [`http`]: `bmctl watch` (subscriptions, the
//!   state pushes build, Prometheus metrics, the dashboard).
//! - [`policy_file`]: the TOML format of corrective-action policies.
//! - [`cli`]: the clap command tree and its execution.

pub mod agent;
mod agent_cmd;
pub mod cli;
pub mod client;
pub mod cp;
pub mod fleet;
pub mod http;
pub mod policy_file;
pub mod profile;
pub mod rules;
pub mod upload;
pub mod view;
pub mod watch;
