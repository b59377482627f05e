//! `bmctl`, the BMonitor landlord and tenant console, as a library so the
//! integration tests drive the same client code as the binary.
//!
//! - [`profile`]: named connection profiles and console key files.
//! - [`client`]: a blocking client over TCP or a serial line, speaking
//!   `mgmt-proto`'s [`mgmt_proto::ConsoleSession`].
//! - [`upload`]: chunked, resumable image upload.
//! - [`rules`]: the command-line syntax of boundary rules.
//! - [`cli`]: the clap command tree and its execution.

pub mod cli;
pub mod client;
pub mod profile;
pub mod rules;
pub mod upload;
