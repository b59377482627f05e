//! The facility controller's brain (`bmctl facility serve`): a landlord-side
//! program that keeps the inventory of BMonitor nodes and the placement of
//! every VM, places new VMs, detects dead nodes and heals their VMs
//! elsewhere, keeps protected VMs' disks replicated to a partner node, takes
//! volume locks over with fencing epochs, and runs node lifecycle (enrol,
//! drain, remove, rejoin).
//!
//! It talks to nodes only through [`driver::NodeDriver`] and keeps its state
//! in a [`store::Store`] (a file, or etcd with an [`etcd::Election`]).

pub mod driver;
pub mod engine;
pub mod etcd;
pub mod filters;
pub mod health;
pub mod intent;
pub mod locks;
pub mod model;
pub mod placement;
pub mod replication;
pub mod rollout;
pub mod run;
pub mod runbook;
mod runner;
pub mod store;
mod upgrader;

pub use driver::{DriverError, NodeDriver, NodeReport, NodeVm, ReplicaBatch};
pub use engine::{ControlError, Controller, ControllerConfig, Event, TickSummary};
pub use health::HealthConfig;
pub use model::{
    Capacity, FacilityState, NodeAddr, NodeName, NodeState, Resources, VmPlacementSpec, VmRecord, VmState,
};
pub use store::{FileStore, Rev, Store, StoreError};
