//! What the facility controller asks of one facility VM beyond placing and
//! fencing it: its health through its agent, and which images it boots
//! (a rolling upgrade re-points a stopped VM at a new version, keeping its
//! disk, MAC, address, lease and epoch).

use alloc::format;
use alloc::string::String;

use mgmt_proto::fleet::VmHealthReport;
use mgmt_proto::msg::{ErrorCode, ErrorReply, Response, VmId, VmState};

use crate::limits::not_found;
use crate::vms::check_cmdline;
use crate::{NodeBackend, NodeState};

/// The boot a [`mgmt_proto::Request::FleetSetImage`] asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Boot<'a> {
    /// The kernel image's name.
    pub image: &'a str,
    /// The initrd image's name, if any.
    pub initrd: Option<&'a str>,
    /// The kernel command line.
    pub cmdline: &'a str,
}

fn conflict(m: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Conflict, m)
}

impl NodeState {
    /// [`mgmt_proto::Request::FleetVmHealth`]: a facility VM that does not
    /// run (or whose run the node has not started yet) reports only that;
    /// a running one what its agent relay knows. A report past its bounds
    /// is never sent (the backend's is checked like the console checks it).
    pub(crate) fn fleet_vm_health(&mut self, vm: &VmId, node: &mut dyn NodeBackend) -> Result<Response, ErrorReply> {
        self.fleet_vm(vm)?;
        let v = self.vms.get(vm).ok_or_else(|| not_found("VM"))?;
        if v.state != VmState::Running {
            return Ok(Response::VmHealth(VmHealthReport::default()));
        }
        let report = node.vm_health(*vm, v.starts).unwrap_or_default();
        report.check().map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("health report: {e}")))?;
        Ok(Response::VmHealth(report))
    }

    /// [`mgmt_proto::Request::FleetSetImage`]: only a stopped facility VM
    /// that is not fenced, only stored images; the same boot again is
    /// `Done` (the controller retries its intents). Its disk, MAC,
    /// address, lease and epoch stay; the snapshot saves the new spec.
    pub(crate) fn fleet_set_image(&mut self, vm: &VmId, boot: Boot<'_>) -> Result<Response, ErrorReply> {
        let f = *self.fleet_vm(vm)?;
        if !f.replica && f.spec.epoch < f.fence {
            return Err(conflict(format!(
                "fenced: epoch {} runs elsewhere (this copy is {}); its boot image stays",
                f.fence, f.spec.epoch
            )));
        }
        check_cmdline(boot.cmdline)?;
        self.check_boot_images(boot.image, boot.initrd)?;
        let v = self.vms.get_mut(vm).ok_or_else(|| not_found("VM"))?;
        let same =
            v.spec.image == boot.image && v.spec.initrd.as_deref() == boot.initrd && v.spec.cmdline == boot.cmdline;
        if same {
            return Ok(Response::Done);
        }
        if v.state == VmState::Running {
            return Err(conflict(String::from("running: stop the VM before changing its boot image")));
        }
        v.spec.image = String::from(boot.image);
        v.spec.initrd = boot.initrd.map(String::from);
        v.spec.cmdline = String::from(boot.cmdline);
        Ok(Response::Done)
    }
}
