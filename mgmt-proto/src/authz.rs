//! Which role may send which request.
//!
//! One function, one match over every request, so a reviewer checks the whole
//! policy in one place. The node calls [`authorize`] before acting on any
//! request; state-dependent scoping (a tenant's audit entries, a tenant's VM
//! list) is then done by the handler for `ListVms` and `ReadAudit`.

use crate::msg::{ErrorCode, ErrorReply, LeaseId, Request, Role, RuleId, VmId};

/// Ownership lookups the policy needs; the node answers them from its state.
pub trait Ownership {
    /// The lease owning `vm`, or `None` if there is no such VM.
    fn vm_lease(&self, vm: VmId) -> Option<LeaseId>;
    /// The lease owning sub-boundary rule `rule`, or `None` if there is none.
    fn rule_lease(&self, rule: RuleId) -> Option<LeaseId>;
}

/// Why a request was refused by policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A tenant asked for a landlord operation.
    LandlordOnly,
    /// The landlord asked for a tenant-only operation (tenant data or keys).
    TenantOnly,
    /// A tenant named a VM or rule that is not its own; reported exactly like
    /// a missing one so other leases stay invisible.
    NotVisible,
}

impl Denied {
    /// The wire form of the refusal.
    pub fn to_error(self) -> ErrorReply {
        match self {
            Denied::LandlordOnly => ErrorReply::new(ErrorCode::Denied, "landlord operation refused for a tenant"),
            Denied::TenantOnly => ErrorReply::new(ErrorCode::Denied, "tenant operation refused for the landlord"),
            Denied::NotVisible => ErrorReply::new(ErrorCode::NotFound, "no such object"),
        }
    }
}

impl core::fmt::Display for Denied {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.to_error().message)
    }
}

/// Decides whether `role` may send `req`: tenants only touch their own
/// lease's VMs and rules and never landlord operations; the landlord never
/// touches tenant software (consoles, sub-boundaries, tenant-chosen keys).
pub fn authorize(role: &Role, req: &Request, owners: &dyn Ownership) -> Result<(), Denied> {
    match role {
        Role::Landlord => match req {
            Request::NodeStatus
            | Request::Reboot
            | Request::Shutdown
            | Request::Suspend
            | Request::Resume
            | Request::CreateLease { .. }
            | Request::EndLease { .. }
            | Request::SetClusterBoundary { .. }
            | Request::UploadImageBegin { .. }
            | Request::UploadImageChunk { .. }
            | Request::UploadImageCommit { .. }
            | Request::CancelUpload { .. }
            | Request::ListImages { .. }
            | Request::CreateVm { .. }
            | Request::DestroyVm { .. }
            | Request::RotateLandlordKey
            | Request::RegenerateTenantKey { .. }
            | Request::ReadAudit { .. }
            | Request::ListVms
            | Request::StartVm { .. }
            | Request::StopVm { .. }
            | Request::RestartVm { .. }
            | Request::ReadCounters { .. }
            | Request::Subscribe { .. }
            | Request::SetPolicy { .. }
            | Request::GetPolicy { .. }
            | Request::FleetHeartbeat { .. }
            | Request::FleetCreateVm { .. }
            | Request::FleetStartVm { .. }
            | Request::FenceVm { .. }
            | Request::ReplicaKey { .. }
            | Request::ReplicaCreate { .. }
            | Request::ReplicaPull { .. }
            | Request::ReplicaPush { .. }
            | Request::PromoteReplica { .. }
            | Request::NotifyTenant { .. }
            | Request::SetClusterMembers { .. }
            | Request::ListLeases
            | Request::FleetVmHealth { .. }
            | Request::FleetSetImage { .. } => Ok(()),
            Request::ReloadImage { .. }
            | Request::ConsoleRead { .. }
            | Request::ConsoleWrite { .. }
            | Request::SetSubBoundary { .. }
            | Request::RemoveSubBoundary { .. }
            | Request::RotateTenantKey
            | Request::SetImageSigningKey { .. }
            | Request::AgentOpen { .. }
            | Request::AgentSend { .. }
            | Request::AgentPoll { .. }
            | Request::AgentStatus { .. }
            | Request::AgentLog { .. }
            | Request::AgentHeartbeat { .. }
            | Request::SetReplicaPartners { .. } => Err(Denied::TenantOnly),
        },
        Role::Tenant(lease) => {
            let own_vm =
                |vm: &VmId| if owners.vm_lease(*vm) == Some(*lease) { Ok(()) } else { Err(Denied::NotVisible) };
            match req {
                Request::NodeStatus
                | Request::Reboot
                | Request::Shutdown
                | Request::Suspend
                | Request::Resume
                | Request::CreateLease { .. }
                | Request::EndLease { .. }
                | Request::SetClusterBoundary { .. }
                | Request::UploadImageBegin { .. }
                | Request::UploadImageChunk { .. }
                | Request::UploadImageCommit { .. }
                | Request::CancelUpload { .. }
                | Request::ListImages { .. }
                | Request::CreateVm { .. }
                | Request::DestroyVm { .. }
                | Request::RotateLandlordKey
                | Request::RegenerateTenantKey { .. }
                | Request::FleetHeartbeat { .. }
                | Request::FleetCreateVm { .. }
                | Request::FleetStartVm { .. }
                | Request::FenceVm { .. }
                | Request::ReplicaKey { .. }
                | Request::ReplicaCreate { .. }
                | Request::ReplicaPull { .. }
                | Request::ReplicaPush { .. }
                | Request::PromoteReplica { .. }
                | Request::NotifyTenant { .. }
                | Request::SetClusterMembers { .. }
                | Request::ListLeases
                | Request::FleetVmHealth { .. }
                | Request::FleetSetImage { .. } => Err(Denied::LandlordOnly),
                Request::ReadAudit { .. }
                | Request::ListVms
                | Request::SetSubBoundary { .. }
                | Request::RotateTenantKey
                | Request::SetImageSigningKey { .. }
                | Request::SetReplicaPartners { .. }
                | Request::Subscribe { .. } => Ok(()),
                // The state checks the cluster is the lease's and every VM a rule names is the lease's.
                Request::SetPolicy { .. } | Request::GetPolicy { .. } => Ok(()),
                Request::StartVm { vm }
                | Request::StopVm { vm }
                | Request::RestartVm { vm }
                | Request::ReadCounters { vm }
                | Request::ReloadImage { vm }
                | Request::ConsoleRead { vm, .. }
                | Request::ConsoleWrite { vm, .. }
                | Request::AgentOpen { vm, .. }
                | Request::AgentSend { vm, .. }
                | Request::AgentPoll { vm, .. }
                | Request::AgentStatus { vm }
                | Request::AgentLog { vm, .. }
                | Request::AgentHeartbeat { vm, .. } => own_vm(vm),
                Request::RemoveSubBoundary { id } => {
                    if owners.rule_lease(*id) == Some(*lease) {
                        Ok(())
                    } else {
                        Err(Denied::NotVisible)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::crypto::PublicKey;
    use crate::msg::*;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    struct Owners;
    impl Ownership for Owners {
        fn vm_lease(&self, vm: VmId) -> Option<LeaseId> {
            match vm.0 {
                1 => Some(LeaseId(1)),
                2 => Some(LeaseId(2)),
                _ => None,
            }
        }
        fn rule_lease(&self, rule: RuleId) -> Option<LeaseId> {
            (rule.0 == 10).then_some(LeaseId(1))
        }
    }

    fn rule() -> BoundaryRule {
        BoundaryRule {
            action: Action::Allow,
            proto: Proto::Tcp,
            peer: Ipv4Net { addr: [10, 0, 0, 0], prefix: 8 },
            ports: None,
        }
    }

    fn landlord_ops() -> Vec<Request> {
        vec![
            Request::NodeStatus,
            Request::Reboot,
            Request::Shutdown,
            Request::Suspend,
            Request::Resume,
            Request::CreateLease { tenant_console_key: PublicKey([0; 32]), cluster: ClusterId(0) },
            Request::EndLease { lease: LeaseId(1) },
            Request::SetClusterBoundary { cluster: ClusterId(0), rules: vec![] },
            Request::UploadImageBegin { name: String::from("x"), size: 1, sha256: None, signature: None, lease: None },
            Request::UploadImageChunk { upload: UploadId(0), offset: 0, bytes: vec![] },
            Request::UploadImageCommit { upload: UploadId(0) },
            Request::CancelUpload { name: String::from("x") },
            Request::ListImages { verify: false },
            Request::CreateVm {
                spec: VmSpec {
                    lease: LeaseId(1),
                    name: String::from("a"),
                    vcpus: 1,
                    memory_mib: 1,
                    disk_mib: 0,
                    cmdline: String::new(),
                    ip: None,
                    image: String::from("x"),
                    cluster: ClusterId(0),
                    initrd: None,
                },
            },
            Request::DestroyVm { vm: VmId(1) },
            Request::RotateLandlordKey,
            Request::RegenerateTenantKey { lease: LeaseId(1), tenant_console_key: None },
            // A tenant's own VM: facility requests are the landlord's still.
            Request::FleetVmHealth { vm: VmId(1) },
            Request::FleetSetImage { vm: VmId(1), image: String::from("x"), initrd: None, cmdline: String::new() },
        ]
    }

    fn tenant_only_ops(vm: VmId) -> Vec<Request> {
        vec![
            Request::ReloadImage { vm },
            Request::ConsoleRead { vm, from_offset: 0 },
            Request::ConsoleWrite { vm, bytes: vec![1] },
            Request::SetSubBoundary { rule: rule() },
            Request::RemoveSubBoundary { id: RuleId(10) },
            Request::RotateTenantKey,
            Request::SetImageSigningKey { key: None },
        ]
    }

    #[test]
    fn tenant_refused_every_landlord_op() {
        for r in landlord_ops() {
            assert_eq!(authorize(&Role::Tenant(LeaseId(1)), &r, &Owners), Err(Denied::LandlordOnly), "{r:?}");
            assert_eq!(authorize(&Role::Landlord, &r, &Owners), Ok(()), "{r:?}");
        }
    }

    #[test]
    fn landlord_refused_tenant_software_ops() {
        for r in tenant_only_ops(VmId(1)) {
            assert_eq!(authorize(&Role::Landlord, &r, &Owners), Err(Denied::TenantOnly), "{r:?}");
            assert_eq!(authorize(&Role::Tenant(LeaseId(1)), &r, &Owners), Ok(()), "{r:?}");
        }
    }

    #[test]
    fn tenant_touching_another_lease_is_refused_as_not_found() {
        let t1 = Role::Tenant(LeaseId(1));
        for vm in [VmId(2), VmId(99)] {
            for r in [
                Request::StartVm { vm },
                Request::StopVm { vm },
                Request::RestartVm { vm },
                Request::ReadCounters { vm },
                Request::ReloadImage { vm },
                Request::ConsoleRead { vm, from_offset: 0 },
                Request::ConsoleWrite { vm, bytes: vec![] },
            ] {
                assert_eq!(authorize(&t1, &r, &Owners), Err(Denied::NotVisible), "{r:?}");
            }
        }
        assert_eq!(
            authorize(&Role::Tenant(LeaseId(2)), &Request::RemoveSubBoundary { id: RuleId(10) }, &Owners),
            Err(Denied::NotVisible)
        );
        assert_eq!(authorize(&t1, &Request::RemoveSubBoundary { id: RuleId(11) }, &Owners), Err(Denied::NotVisible));
        assert_eq!(Denied::NotVisible.to_error().code, ErrorCode::NotFound);
    }

    #[test]
    fn shared_ops() {
        for role in [Role::Landlord, Role::Tenant(LeaseId(1))] {
            assert_eq!(authorize(&role, &Request::ListVms, &Owners), Ok(()));
            assert_eq!(authorize(&role, &Request::ReadAudit { from: 0 }, &Owners), Ok(()));
            assert_eq!(authorize(&role, &Request::StartVm { vm: VmId(1) }, &Owners), Ok(()));
        }
    }
}
