//! What the node logic asks the running node for.
//!
//! [`NodeState`] holds what the consoles told the node (leases, VM
//! definitions, images, rules). Some answers are live facts it cannot know
//! itself: the node's hardware and counters, and a VM's serial console and
//! exit counters, which belong to the VM actually running. The hypervisor
//! answers them from its VMs (`hypervisor/src/mgmt/backend.rs`); host tests
//! from an in-memory fake (`sim`, test-only).

use alloc::vec::Vec;

use mgmt_proto::fleet::{ReplicaBlock, VmHealthReport};
use mgmt_proto::msg::{Counter, ErrorCode, ErrorReply, NodeStatus, VmId, VmSpec};

use crate::NodeState;

/// The running node, as the node logic sees it. Object-safe (handed to
/// [`NodeState::handle`] as `&mut dyn NodeBackend`) and `Send`, so the state
/// and its backend can be served from the CPU (or test thread) that runs
/// the consoles while VMs run elsewhere.
///
/// VMs are named by their management id and `run`, the number of times the
/// state has started them ([`crate::Vm::starts`]): a restart is a fresh VM,
/// so only the current run's console and counters are answered.
pub trait NodeBackend: Send {
    /// The node's status for [`mgmt_proto::Request::NodeStatus`]: the
    /// backend's live facts, with what `node` holds (leases, audit log).
    fn status(&mut self, node: &NodeState) -> NodeStatus;

    /// Up to `max` bytes of VM `vm`'s console output from `from_offset` in
    /// its run `run`, and the offset to read from next. A VM with no output
    /// (not started yet) answers no bytes.
    fn console_read(&mut self, vm: VmId, run: u64, from_offset: u64, max: usize) -> (Vec<u8>, u64);

    /// Queues console input for VM `vm`'s run `run`; refused (naming why)
    /// when it is not running or its input queue is full.
    fn console_write(&mut self, vm: VmId, run: u64, bytes: &[u8]) -> Result<(), ErrorReply>;

    /// VM `vm`'s live counters in run `run` (exits, CPU time, console
    /// bytes); the state adds how often it was started.
    fn vm_counters(&mut self, vm: VmId, run: u64) -> Vec<Counter>;

    /// Free space for new volumes on the node disk, in MiB (0 without one).
    fn disk_free_mib(&mut self) -> u64 {
        0
    }

    /// The secret of VM `vm`'s volume (its volume id and key) for a partner
    /// node, and from now on every change to the volume is pending for
    /// [`Self::replica_pull`] (all of it, the first time).
    fn replica_secret(&mut self, vm: VmId, spec: &VmSpec) -> Result<Vec<u8>, ErrorReply> {
        let _ = (vm, spec);
        Err(no_disk())
    }

    /// Creates (or re-creates, for another secret) the replica volume of VM
    /// `vm` that `secret` opens.
    fn replica_open(&mut self, vm: VmId, spec: &VmSpec, secret: &[u8]) -> Result<(), ErrorReply> {
        let _ = (vm, spec, secret);
        Err(no_disk())
    }

    /// Up to `max` pending ciphertext blocks of VM `vm`'s volume (data
    /// before records) and how many stay pending; `resync` first marks
    /// the whole volume pending.
    fn replica_pull(&mut self, vm: VmId, max: u32, resync: bool) -> Result<(Vec<ReplicaBlock>, u64), ErrorReply> {
        let _ = (vm, max, resync);
        Err(no_disk())
    }

    /// Writes ciphertext blocks into VM `vm`'s replica volume, in order.
    fn replica_push(&mut self, vm: VmId, blocks: &[ReplicaBlock]) -> Result<(), ErrorReply> {
        let _ = (vm, blocks);
        Err(no_disk())
    }

    /// VM `vm`'s health through its agent in run `run`, while that run is
    /// live on the node ([`VmHealthReport::of_relay`]); `None` when it is
    /// not (not started yet, or ended), which reports a VM that does not run.
    fn vm_health(&mut self, vm: VmId, run: u64) -> Option<VmHealthReport> {
        let _ = (vm, run);
        None
    }
}

fn no_disk() -> ErrorReply {
    ErrorReply::new(ErrorCode::Unsupported, "this node keeps no replicated volumes (no node disk)")
}

/// The part of a console's kept output `history` that a read from
/// `from_offset` gets (offsets count from the oldest byte kept; one past
/// the end reads nothing): at most `max` bytes, and the offset to read from
/// next. Backends answer [`NodeBackend::console_read`] with it, so every
/// node pages its consoles alike.
pub fn console_page(history: &[u8], from_offset: u64, max: usize) -> (Vec<u8>, u64) {
    let start = usize::try_from(from_offset).unwrap_or(usize::MAX).min(history.len());
    let bytes: Vec<u8> = history.iter().skip(start).take(max).copied().collect();
    let next = (start + bytes.len()) as u64;
    (bytes, next)
}
