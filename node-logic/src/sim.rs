//! An in-memory stand-in for the running node, for tests only (compiled for
//! this crate's tests and with feature `sim`, which console tests enable):
//! a fixed status, a console that echoes its input, a console byte count.
//! The hypervisor's backend answers from real VMs instead.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use mgmt_proto::fleet::{ReplicaBlock, VmHealthReport};
use mgmt_proto::msg::{Counter, ErrorCode, ErrorReply, NodeStatus, VmId, VmSpec, VmState};

use crate::backend::console_page;
use crate::{NodeBackend, NodeState};

/// The simulated node: each VM's console holds what was written to it.
#[derive(Debug, Default)]
pub struct SimNode {
    /// Console bytes by VM (input echoed), across runs.
    pub consoles: BTreeMap<VmId, Vec<u8>>,
    /// Volumes by VM: the secret that opens them and their blocks (a
    /// stand-in for the node disk's replica regions).
    pub volumes: BTreeMap<VmId, SimVolume>,
    /// What each running VM's agent reports (none: not live yet).
    pub health: BTreeMap<VmId, VmHealthReport>,
}

/// A simulated volume: its secret, blocks and which are pending.
#[derive(Debug, Default, Clone)]
pub struct SimVolume {
    /// What opens it.
    pub secret: Vec<u8>,
    /// Its blocks by index.
    pub blocks: BTreeMap<u64, Vec<u8>>,
    /// Blocks changed since they were last pulled.
    pub pending: alloc::collections::BTreeSet<u64>,
}

impl SimVolume {
    /// A guest write: the block changes and is pending.
    pub fn write(&mut self, index: u64, bytes: &[u8]) {
        self.blocks.insert(index, bytes.to_vec());
        self.pending.insert(index);
    }
}

impl NodeBackend for SimNode {
    fn status(&mut self, node: &NodeState) -> NodeStatus {
        NodeStatus {
            version: String::from("in-memory"),
            uptime_secs: node.clock(),
            cpus: 2,
            memory_total_mib: 4096,
            memory_free_mib: 4096 - node.vms.values().map(|v| u64::from(v.spec.memory_mib)).sum::<u64>().min(4096),
            disks: Vec::new(),
            nic_up: true,
            leases: node.leases.len() as u32,
            vms_total: node.vms.len() as u32,
            vms_running: node.vms.values().filter(|v| v.state == VmState::Running).count() as u32,
            counters: alloc::vec![Counter { name: String::from("audit.entries"), value: node.audit.len() as u64 }],
        }
    }

    fn console_read(&mut self, vm: VmId, _run: u64, from_offset: u64, max: usize) -> (Vec<u8>, u64) {
        console_page(self.consoles.get(&vm).map(Vec::as_slice).unwrap_or_default(), from_offset, max)
    }

    fn console_write(&mut self, vm: VmId, _run: u64, bytes: &[u8]) -> Result<(), ErrorReply> {
        // The simulated guest echoes its input.
        self.consoles.entry(vm).or_default().extend_from_slice(bytes);
        Ok(())
    }

    fn vm_counters(&mut self, vm: VmId, _run: u64) -> Vec<Counter> {
        let bytes = self.consoles.get(&vm).map_or(0, Vec::len) as u64;
        alloc::vec![Counter { name: String::from("console.bytes"), value: bytes }]
    }

    fn disk_free_mib(&mut self) -> u64 {
        1024
    }

    fn replica_secret(&mut self, vm: VmId, spec: &VmSpec) -> Result<Vec<u8>, ErrorReply> {
        let v = self.volumes.entry(vm).or_default();
        if v.secret.is_empty() {
            v.secret = spec.name.as_bytes().to_vec();
        }
        v.pending = v.blocks.keys().copied().collect();
        Ok(v.secret.clone())
    }

    fn replica_open(&mut self, vm: VmId, _spec: &VmSpec, secret: &[u8]) -> Result<(), ErrorReply> {
        let v = self.volumes.entry(vm).or_default();
        if v.secret != secret {
            *v = SimVolume { secret: secret.to_vec(), ..SimVolume::default() };
        }
        Ok(())
    }

    fn replica_pull(&mut self, vm: VmId, max: u32, resync: bool) -> Result<(Vec<ReplicaBlock>, u64), ErrorReply> {
        let v = self.volumes.get_mut(&vm).ok_or_else(|| ErrorReply::new(ErrorCode::NotFound, "volume"))?;
        if resync {
            v.pending = v.blocks.keys().copied().collect();
        }
        let take: Vec<u64> = v.pending.iter().copied().take(max as usize).collect();
        let mut out = Vec::new();
        for i in take {
            v.pending.remove(&i);
            out.push(ReplicaBlock { index: i, bytes: v.blocks.get(&i).cloned().unwrap_or_default() });
        }
        Ok((out, v.pending.len() as u64))
    }

    fn vm_health(&mut self, vm: VmId, _run: u64) -> Option<VmHealthReport> {
        self.health.get(&vm).cloned()
    }

    fn replica_push(&mut self, vm: VmId, blocks: &[ReplicaBlock]) -> Result<(), ErrorReply> {
        let v = self.volumes.get_mut(&vm).ok_or_else(|| ErrorReply::new(ErrorCode::NotFound, "volume"))?;
        for b in blocks {
            v.blocks.insert(b.index, b.bytes.clone());
        }
        Ok(())
    }
}
