//! The node's side of facility membership (docs/fleet.md): the fencing
//! lease that stops protected VMs when the controller goes silent, the
//! write gates that refuse a fenced copy's disk writes at once, replica
//! promotion on the disk, and notices for tenants.

use super::ports::now_ms;
use super::Mgmt;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use mgmt_proto::msg::{ErrorCode, ErrorReply, Request, Response, Role, VmId};

/// The write gate of a facility VM: its fence, shared with its disk.
pub(super) type Gate = Arc<AtomicU64>;

impl Mgmt {
    /// Once per node round: a fencing lease that ran out stops the
    /// protected VMs (reconcile stops them; their gates close now).
    pub fn fleet_round(&mut self) {
        for vm in self.state.fleet_tick(now_ms()) {
            if let Some(g) = self.gates.get(&vm.0) {
                g.store(u64::MAX, Ordering::Release);
            }
            let name = self.state.vms.get(&vm).map(|v| v.spec.name.clone()).unwrap_or_default();
            crate::log!(
                "fleet: no heartbeat from the facility controller within the fencing lease: protected VM {} stopped",
                super::escape(&name)
            );
        }
    }

    /// The gate for VM `vm`'s disk at this start, opened at its fence.
    pub(super) fn gate_for(&mut self, vm: u32) -> Option<(Gate, u64)> {
        let f = self.state.fleet.vms.get(&VmId(vm))?;
        let gate = Arc::new(AtomicU64::new(f.fence));
        self.gates.insert(vm, gate.clone());
        Some((gate, f.spec.epoch))
    }

    /// The NIC MAC the facility gave VM `vm`, if it is a facility VM.
    pub(super) fn fleet_mac(&self, vm: u32) -> Option<[u8; 6]> {
        self.state.fleet.vms.get(&VmId(vm)).map(|f| f.spec.mac)
    }

    /// Facility requests whose effect reaches past the state: the gate of
    /// a fenced VM, the replica volume of a promoted one, a tenant notice.
    pub(super) fn handle_fleet(
        &mut self,
        role: Role,
        req: &Request,
        vms: &mut [crate::vm::Vm],
    ) -> Result<Response, ErrorReply> {
        match req {
            Request::FenceVm { vm, .. } => {
                let reply = self.handle_state(role, req, vms)?;
                if let (Some(g), Some(f)) = (self.gates.get(&vm.0), self.state.fleet.vms.get(vm)) {
                    g.store(f.fence, Ordering::Release);
                }
                Ok(reply)
            }
            Request::PromoteReplica { vm, .. } => {
                let before = self.state.fleet.vms.get(vm).copied();
                let reply = self.handle_state(role, req, vms)?;
                let promoted =
                    before.is_some_and(|b| b.replica) && self.state.fleet.vms.get(vm).is_some_and(|f| !f.replica);
                if promoted {
                    let name = super::reconcile::volume_name(vm.0);
                    let r = match self.storage.as_mut() {
                        Some(s) => s.replica_promote(&name),
                        None => Err(String::from("no node disk")),
                    };
                    if let Err(why) = r {
                        if let (Some(b), Some(f)) = (before, self.state.fleet.vms.get_mut(vm)) {
                            *f = b;
                        }
                        return Err(ErrorReply::new(ErrorCode::Internal, why));
                    }
                    crate::log!("fleet: replica {name} promoted (a volume key of its own)");
                }
                Ok(reply)
            }
            Request::NotifyTenant { vm, text } => {
                let reply = self.handle_state(role, req, vms)?;
                if let Some(lease) = self.state.vms.get(vm).map(|v| v.spec.lease) {
                    self.monitor.record(
                        mgmt_proto::monitor::Scope::Vm { vm: *vm, lease },
                        mgmt_proto::monitor::EventKind::Notify {
                            owner: mgmt_proto::monitor::Owner::Landlord,
                            rule: String::from("facility"),
                        },
                        text,
                    );
                }
                Ok(reply)
            }
            Request::DestroyVm { vm } => {
                let ran = vms.iter().any(|v| v.managed.is_some_and(|(id, _)| id == vm.0));
                let reply = self.handle_state(role, req, vms)?;
                // A VM that ran gives its volume back when reconcile sees it
                // stopped; one that never ran here (a replica) does it now.
                if !ran {
                    if let Some(s) = self.storage.as_mut() {
                        s.delete_volume(&super::reconcile::volume_name(vm.0));
                    }
                }
                self.gates.remove(&vm.0);
                Ok(reply)
            }
            _ => self.handle_state(role, req, vms),
        }
    }
}
