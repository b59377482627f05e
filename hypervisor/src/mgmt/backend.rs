//! The running node as the node logic sees it ([`node_logic::NodeBackend`]):
//! status from the node's facts, its VMs and the monitor; a VM's console
//! and counters from the VM running the definition's current run.

use super::reconcile::volume_name;
use super::{monitor::Monitor, Mgmt, NodeFacts};
use crate::devices::agent::AgentChannel;
use crate::devices::console::Console;
use crate::devices::Shared;
use crate::vm::counters::ExitCounters;
use crate::vm::Vm;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use mgmt_proto::fleet::{ReplicaBlock, VmHealthReport};
use mgmt_proto::msg::{Counter, ErrorCode, ErrorReply, NodeStatus, Request, Response, Role, VmId, VmSpec};
use node_logic::backend::console_page;
use node_logic::{NodeBackend, NodeState};

/// The running node for one request: the node's facts and monitor, what
/// status says of all VMs, and the live parts of the console-created ones.
/// It holds no VM itself (a VM is not `Send`; the backend must be), only
/// shared handles and copies.
struct LiveNode<'a> {
    facts: &'a NodeFacts,
    monitor: &'a Monitor,
    /// The node disk, for replica volumes.
    storage: Option<&'a mut crate::storage::Storage>,
    /// Exits of all VMs.
    exits: u64,
    /// VMs on the node (config and console-created).
    vms_total: u32,
    /// Of those, running.
    vms_running: u32,
    /// Console-created VMs, oldest first.
    managed: Vec<LiveVm>,
}

/// A console-created VM's live parts.
struct LiveVm {
    /// (management VM id, run).
    run: (u32, u64),
    running: bool,
    counters: ExitCounters,
    cpu_tsc: u64,
    console: Shared<Console>,
    /// Its agent channel, for the landlord's health view.
    agent: Shared<AgentChannel>,
}

impl<'a> LiveNode<'a> {
    /// Gathers what the backend answers from `vms`.
    fn new(
        vms: &[Vm],
        facts: &'a NodeFacts,
        monitor: &'a Monitor,
        storage: Option<&'a mut crate::storage::Storage>,
    ) -> LiveNode<'a> {
        LiveNode {
            facts,
            monitor,
            storage,
            exits: vms.iter().map(|v| v.counters.total).sum(),
            vms_total: vms.len() as u32,
            vms_running: vms.iter().filter(|v| v.is_running()).count() as u32,
            managed: vms
                .iter()
                .filter_map(|v| {
                    Some(LiveVm {
                        run: v.managed?,
                        running: v.is_running(),
                        counters: v.counters,
                        cpu_tsc: v.cpu_tsc,
                        console: v.devices.console.clone(),
                        agent: v.devices.agent.clone(),
                    })
                })
                .collect(),
        }
    }

    /// The VM running (or last run of) management VM `vm` in run `run`.
    fn vm(&self, vm: VmId, run: u64) -> Option<&LiveVm> {
        self.managed.iter().rev().find(|v| v.run == (vm.0, run))
    }
}

impl NodeBackend for LiveNode<'_> {
    fn status(&mut self, node: &NodeState) -> NodeStatus {
        let free = (crate::mm::frames::free_count() as u64 * crate::mm::PAGE_SIZE) >> 20;
        let exits = self.exits;
        NodeStatus {
            version: String::from(env!("CARGO_PKG_VERSION")),
            uptime_secs: crate::arch::x86_64::time::tsc_to_ms(crate::arch::x86_64::time::rdtsc()) / 1000,
            cpus: self.facts.cpus,
            memory_total_mib: self.facts.memory_total_mib,
            memory_free_mib: free,
            disks: match self.facts.disk {
                Some((size, free, _)) => vec![
                    Counter { name: String::from("node-disk.size_mib"), value: size },
                    Counter { name: String::from("node-disk.free_mib_at_boot"), value: free },
                ],
                None => Vec::new(),
            },
            // The link as the probe last saw it.
            nic_up: self.facts.nic_up && self.monitor.probe_ok(mgmt_proto::monitor::Probe::NicLink) != Some(false),
            leases: node.leases.len() as u32,
            vms_total: self.vms_total,
            vms_running: self.vms_running,
            counters: vec![
                Counter { name: String::from("vm.exits"), value: exits },
                Counter {
                    name: String::from("node-disk.volumes_at_boot"),
                    value: self.facts.disk.map_or(0, |(_, _, v)| v),
                },
                Counter { name: String::from("audit.entries"), value: node.audit.len() as u64 },
                Counter { name: String::from("monitor.events"), value: self.monitor.events.next_seq() - 1 },
                Counter { name: String::from("monitor.pushes"), value: self.monitor.pushes },
                Counter { name: String::from("monitor.push_bytes"), value: self.monitor.push_bytes },
            ]
            .into_iter()
            .chain(self.monitor.probe_counters())
            .collect(),
        }
    }

    fn console_read(&mut self, vm: VmId, run: u64, from_offset: u64, max: usize) -> (Vec<u8>, u64) {
        let history = self.vm(vm, run).map(|v| v.console.lock().history_bytes()).unwrap_or_default();
        console_page(&history, from_offset, max)
    }

    fn console_write(&mut self, vm: VmId, run: u64, bytes: &[u8]) -> Result<(), ErrorReply> {
        let real = self
            .vm(vm, run)
            .filter(|v| v.running)
            .ok_or_else(|| ErrorReply::new(ErrorCode::Conflict, "VM is not running"))?;
        if !real.console.lock().push_input(bytes) {
            return Err(ErrorReply::new(ErrorCode::Conflict, "console input queue full; retry"));
        }
        Ok(())
    }

    fn disk_free_mib(&mut self) -> u64 {
        self.storage.as_deref().map_or(0, crate::storage::Storage::free_mib)
    }

    fn replica_secret(&mut self, vm: VmId, spec: &VmSpec) -> Result<Vec<u8>, ErrorReply> {
        let st = self.disk()?;
        st.replica_secret(&volume_name(vm.0), spec.cluster.0, spec.disk_mib).map_err(internal)
    }

    fn replica_open(&mut self, vm: VmId, spec: &VmSpec, secret: &[u8]) -> Result<(), ErrorReply> {
        let st = self.disk()?;
        st.replica_open(&volume_name(vm.0), spec.cluster.0, spec.disk_mib, secret)
            .map_err(|e| ErrorReply::new(ErrorCode::Invalid, e))
    }

    fn replica_pull(&mut self, vm: VmId, max: u32, resync: bool) -> Result<(Vec<ReplicaBlock>, u64), ErrorReply> {
        let st = self.disk()?;
        let (blocks, remaining) = st.replica_pull(&volume_name(vm.0), max as usize, resync).map_err(internal)?;
        Ok((blocks.into_iter().map(|(index, bytes)| ReplicaBlock { index, bytes }).collect(), remaining))
    }

    fn replica_push(&mut self, vm: VmId, blocks: &[ReplicaBlock]) -> Result<(), ErrorReply> {
        let st = self.disk()?;
        let list: Vec<(u64, &[u8])> = blocks.iter().map(|b| (b.index, b.bytes.as_slice())).collect();
        st.replica_push(&volume_name(vm.0), &list).map_err(|e| ErrorReply::new(ErrorCode::Invalid, e))
    }

    /// From the agent relay of the run, while it runs.
    fn vm_health(&mut self, vm: VmId, run: u64) -> Option<VmHealthReport> {
        let live = self.vm(vm, run).filter(|v| v.running)?;
        let report = VmHealthReport::of_relay(&live.agent.lock().relay, super::ports::now_ms());
        Some(report)
    }

    /// Its exits by reason and CPU time from the current (latest) run.
    fn vm_counters(&mut self, vm: VmId, run: u64) -> Vec<Counter> {
        let c = |name: &str, value: u64| Counter { name: String::from(name), value };
        let Some(v) = self.vm(vm, run) else { return Vec::new() };
        let e = &v.counters;
        vec![
            c("exits.total", e.total),
            c("exits.io", e.io),
            c("exits.hypercall", e.hypercall),
            c("exits.msr", e.msr),
            c("exits.cpuid", e.cpuid),
            c("exits.halt", e.halt),
            c("exits.npf", e.npf),
            c("exits.preempt", e.preempt),
            c("exits.other", e.other),
            c("cpu_ms", crate::arch::x86_64::time::tsc_to_ms(v.cpu_tsc)),
            c("console.bytes", v.console.lock().history_len() as u64),
            c("running", u64::from(v.running)),
        ]
    }
}

impl LiveNode<'_> {
    fn disk(&mut self) -> Result<&mut crate::storage::Storage, ErrorReply> {
        self.storage
            .as_deref_mut()
            .ok_or_else(|| ErrorReply::new(ErrorCode::Unsupported, "this node has no disk for replica volumes"))
    }
}

fn internal(e: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e)
}

impl Mgmt {
    /// Hands a request to the node logic, with the running node (`vms`,
    /// facts, monitor) as its backend.
    pub(super) fn handle_state(&mut self, role: Role, req: &Request, vms: &[Vm]) -> Result<Response, ErrorReply> {
        let mut live = LiveNode::new(vms, &self.facts, &self.monitor, self.storage.as_mut());
        self.state.handle(role, req, &mut live)
    }
}
