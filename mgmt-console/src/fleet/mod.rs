//! The facility controller in bmctl: the node driver over the console
//! channel and the `bmctl facility` commands (docs/fleet.md).

pub mod cmd;
pub mod dashboard;
pub mod driver;
pub mod ops;
