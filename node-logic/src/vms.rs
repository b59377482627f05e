//! VM definitions: create, destroy, list, start and stop them, and the
//! requests on a VM that the running node answers through the
//! [`NodeBackend`] (console output and input, counters).

use alloc::format;
use alloc::string::String;

use mgmt_proto::msg::{Counter, ErrorCode, ErrorReply, Response, Role, VmId, VmInfo, VmSpec, VmState};
use mgmt_proto::MAX_CONSOLE_BYTES;

use crate::limits::{check_name, limit, not_found};
use crate::{NodeBackend, NodeState, Vm};

/// A kernel command line within the config's bound, so every VM that is
/// defined (or re-pointed at other images) can be built.
pub(crate) fn check_cmdline(cmdline: &str) -> Result<(), ErrorReply> {
    if cmdline.len() > vmm_config::config::MAX_CMDLINE_LEN {
        return Err(ErrorReply::new(
            ErrorCode::Invalid,
            format!("cmdline: at most {} bytes", vmm_config::config::MAX_CMDLINE_LEN),
        ));
    }
    Ok(())
}

impl NodeState {
    /// The images a VM boots must be stored here: refused naming the field
    /// and the image otherwise.
    pub(crate) fn check_boot_images(&self, image: &str, initrd: Option<&str>) -> Result<(), ErrorReply> {
        if !self.images.contains_key(image) {
            return Err(ErrorReply::new(ErrorCode::NotFound, format!("image: no image named {image:?}")));
        }
        if let Some(initrd) = initrd {
            if !self.images.contains_key(initrd) {
                return Err(ErrorReply::new(ErrorCode::NotFound, format!("initrd: no image named {initrd:?}")));
            }
        }
        Ok(())
    }

    /// [`mgmt_proto::Request::CreateVm`]: a checked definition, stopped,
    /// in its lease's cluster.
    pub(crate) fn create_vm(&mut self, spec: &VmSpec) -> Result<Response, ErrorReply> {
        let Some(lease_cluster) = self.leases.get(&spec.lease).map(|l| l.cluster) else {
            return Err(not_found("lease"));
        };
        // A lease's VMs join its cluster (0: "the lease's").
        let mut spec = spec.clone();
        if spec.cluster.0 == 0 {
            spec.cluster = lease_cluster;
        } else if spec.cluster != lease_cluster {
            return Err(ErrorReply::new(
                ErrorCode::Invalid,
                format!(
                    "cluster: lease {}'s VMs join its cluster {}, not {}",
                    spec.lease.0, lease_cluster.0, spec.cluster.0
                ),
            ));
        }
        check_name(&spec.name)?;
        if !(2..=vmm_config::config::MAX_VM_MEMORY_MIB).contains(&spec.memory_mib) {
            return Err(ErrorReply::new(
                ErrorCode::Invalid,
                format!("memory_mib: must be between 2 and {}", vmm_config::config::MAX_VM_MEMORY_MIB),
            ));
        }
        check_cmdline(&spec.cmdline)?;
        if self.vms.len() >= self.limits.max_vms {
            return Err(limit(format!("the node keeps at most {} VM definitions (max_vms)", self.limits.max_vms)));
        }
        self.check_boot_images(&spec.image, spec.initrd.as_deref())?;
        if spec.vcpus == 0 || spec.memory_mib == 0 {
            return Err(ErrorReply::new(ErrorCode::Invalid, "vcpus/memory_mib: must be positive"));
        }
        if self.vms.values().any(|v| v.spec.lease == spec.lease && v.spec.name == spec.name) {
            return Err(ErrorReply::new(ErrorCode::Conflict, "name: already used in this lease"));
        }
        let vm = VmId(self.id());
        self.vms.insert(vm, Vm { spec, state: VmState::Stopped, starts: 0, autostart: false });
        Ok(Response::VmCreated { vm })
    }

    /// [`mgmt_proto::Request::DestroyVm`].
    pub(crate) fn destroy_vm(&mut self, vm: &VmId) -> Result<Response, ErrorReply> {
        // Policy rules naming the VM stay; they never match again.
        self.vms.remove(vm).ok_or_else(|| not_found("VM"))?;
        self.fleet_forget(vm);
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::ListVms`]: all VMs for the landlord, a
    /// tenant's own otherwise.
    pub(crate) fn list_vms(&self, role: Role) -> Response {
        Response::Vms(
            self.vms
                .iter()
                .filter(|(_, v)| role == Role::Landlord || role == Role::Tenant(v.spec.lease))
                .map(|(id, v)| VmInfo { id: *id, spec: v.spec.clone(), state: v.state })
                .collect(),
        )
    }

    /// `StartVm` (`refuse_running`: an error if it runs), `RestartVm` and
    /// `ReloadImage`: the VM is wanted running in a new run.
    pub(crate) fn start_vm(&mut self, vm: &VmId, refuse_running: bool) -> Result<Response, ErrorReply> {
        if let Some(f) = self.fleet.vms.get(vm) {
            if f.replica {
                return Err(ErrorReply::new(ErrorCode::Conflict, "replica: the facility controller promotes it first"));
            }
            if f.spec.epoch < f.fence {
                return Err(ErrorReply::new(
                    ErrorCode::Conflict,
                    format!("fenced: epoch {} runs elsewhere (this copy is {})", f.fence, f.spec.epoch),
                ));
            }
            if f.self_fenced {
                return Err(ErrorReply::new(
                    ErrorCode::Conflict,
                    "self-fenced: its fencing lease ran out; the facility controller restarts it",
                ));
            }
        }
        let v = self.vms.get_mut(vm).ok_or_else(|| not_found("VM"))?;
        if refuse_running && v.state == VmState::Running {
            return Err(ErrorReply::new(ErrorCode::Conflict, "VM already running"));
        }
        v.state = VmState::Running;
        v.starts += 1;
        v.autostart = true;
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::StopVm`]: wanted stopped, and not restarted
    /// after a reboot.
    pub(crate) fn stop_vm(&mut self, vm: &VmId) -> Result<Response, ErrorReply> {
        let v = self.vms.get_mut(vm).ok_or_else(|| not_found("VM"))?;
        v.state = VmState::Stopped;
        v.autostart = false;
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::ReadCounters`]: how often the VM was started,
    /// then the running node's counters of its current run.
    pub(crate) fn read_counters(&self, vm: &VmId, node: &mut dyn NodeBackend) -> Result<Response, ErrorReply> {
        let v = self.vms.get(vm).ok_or_else(|| not_found("VM"))?;
        let mut counters = alloc::vec![Counter { name: String::from("starts"), value: v.starts }];
        counters.extend(node.vm_counters(*vm, v.starts));
        Ok(Response::Counters(counters))
    }

    /// [`mgmt_proto::Request::ConsoleRead`]: the current run's console
    /// output, at most [`MAX_CONSOLE_BYTES`] at a time.
    pub(crate) fn console_read(
        &self,
        vm: &VmId,
        from_offset: &u64,
        node: &mut dyn NodeBackend,
    ) -> Result<Response, ErrorReply> {
        let v = self.vms.get(vm).ok_or_else(|| not_found("VM"))?;
        let (bytes, next_offset) = node.console_read(*vm, v.starts, *from_offset, MAX_CONSOLE_BYTES);
        Ok(Response::ConsoleOutput { next_offset, bytes })
    }

    /// [`mgmt_proto::Request::ConsoleWrite`]: console input for the current
    /// run, at most [`MAX_CONSOLE_BYTES`].
    pub(crate) fn console_write(
        &self,
        vm: &VmId,
        bytes: &[u8],
        node: &mut dyn NodeBackend,
    ) -> Result<Response, ErrorReply> {
        if bytes.len() > MAX_CONSOLE_BYTES {
            return Err(ErrorReply::new(ErrorCode::Invalid, "bytes: too many"));
        }
        let v = self.vms.get(vm).ok_or_else(|| not_found("VM"))?;
        node.console_write(*vm, v.starts, bytes)?;
        Ok(Response::Done)
    }
}
