//! An in-memory stand-in for the running node, for tests only (compiled for
//! this crate's tests and with feature `sim`, which console tests enable):
//! a fixed status, a console that echoes its input, a console byte count.
//! The hypervisor's backend answers from real VMs instead.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use mgmt_proto::msg::{Counter, ErrorReply, NodeStatus, VmId, VmState};

use crate::backend::console_page;
use crate::{NodeBackend, NodeState};

/// The simulated node: each VM's console holds what was written to it.
#[derive(Debug, Default)]
pub struct SimNode {
    /// Console bytes by VM (input echoed), across runs.
    pub consoles: BTreeMap<VmId, Vec<u8>>,
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
}
