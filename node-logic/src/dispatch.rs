//! Request handling: authorization first, then each request to the part of
//! the state it concerns, or to the running node ([`NodeBackend`]) for what
//! only it knows; and serving a whole session (handshake, requests,
//! replies, audit).

use alloc::format;
use alloc::string::ToString;

use mgmt_proto::authz::authorize;
use mgmt_proto::msg::{ErrorCode, ErrorReply, Request, Response, Role};
use mgmt_proto::session::{NodeEvent, NodeSession, SessionError};

use crate::limits::internal;
use crate::{NodeBackend, NodeState};

impl NodeState {
    /// Serves received bytes on one session: handshake, then every request
    /// (authorized, handled, audited, answered). Refusals are audited and
    /// returned; the caller sends `session.take_output()` either way.
    pub fn serve(
        &mut self,
        session: &mut NodeSession,
        input: &[u8],
        node: &mut dyn NodeBackend,
    ) -> Result<(), SessionError> {
        let events = match session.receive(input, &self.keys) {
            Ok(ev) => ev,
            Err(e) => {
                self.log(session.role(), "session", format!("refused: {e}"));
                return Err(e);
            }
        };
        for ev in events {
            match ev {
                NodeEvent::Established { role, console_key } => {
                    self.log(Some(role), "connect", format!("ok (console {})", console_key.to_hex()))
                }
                NodeEvent::Request(env) => {
                    let role = session.role().ok_or(SessionError::NotEstablished)?;
                    let result = self.handle(role, &env.body, node);
                    let outcome = match &result {
                        Ok(_) => "ok".to_string(),
                        Err(e) => format!("refused: {e}"),
                    };
                    self.log(Some(role), env.body.name(), outcome);
                    session.reply(env.seq, result)?;
                }
            }
        }
        Ok(())
    }

    /// Handles one request for `role`: authorization first, then the effect.
    /// Status, console I/O and VM counters come from `node`, the running node.
    pub fn handle(&mut self, role: Role, req: &Request, node: &mut dyn NodeBackend) -> Result<Response, ErrorReply> {
        authorize(&role, req, self).map_err(|d| d.to_error())?;
        match req {
            Request::NodeStatus => Ok(Response::Status(node.status(self))),
            Request::ReadCounters { vm } => self.read_counters(vm, node),
            Request::ConsoleRead { vm, from_offset } => self.console_read(vm, from_offset, node),
            Request::ConsoleWrite { vm, bytes } => self.console_write(vm, bytes, node),
            Request::FleetHeartbeat { fence_after_ms } => Ok(self.fleet_heartbeat(*fence_after_ms, node)),
            Request::ReplicaKey { vm, partner } => self.replica_key(vm, partner, node),
            Request::ReplicaCreate { spec, fleet, from, sealed } => {
                self.replica_create(spec, fleet, from, sealed, node)
            }
            Request::ReplicaPull { vm, max_blocks, resync } => self.replica_pull(vm, *max_blocks, *resync, node),
            Request::ReplicaPush { vm, epoch, blocks } => self.replica_push(vm, *epoch, blocks, node),
            Request::FleetVmHealth { vm } => self.fleet_vm_health(vm, node),
            _ => self.apply(role, req),
        }
    }

    /// The effect of an authorized request that the state answers alone.
    pub(crate) fn apply(&mut self, role: Role, req: &Request) -> Result<Response, ErrorReply> {
        match req {
            Request::Reboot => {
                self.reboot_requested = true;
                Ok(Response::Done)
            }
            Request::Shutdown => {
                self.shutdown_requested = true;
                Ok(Response::Done)
            }
            Request::Suspend => {
                self.suspended = true;
                Ok(Response::Done)
            }
            Request::Resume => {
                self.suspended = false;
                Ok(Response::Done)
            }
            Request::CreateLease { tenant_console_key, cluster } => self.create_lease(tenant_console_key, cluster),
            Request::EndLease { lease } => self.end_lease(lease),
            Request::SetClusterBoundary { cluster, rules } => self.set_cluster_boundary(cluster, rules),
            Request::UploadImageBegin { name, size, sha256, signature, lease } => {
                self.upload_begin(name, size, sha256, signature, lease)
            }
            Request::UploadImageChunk { upload, offset, bytes } => self.upload_chunk(upload, offset, bytes),
            Request::CancelUpload { name } => self.cancel_upload(name),
            Request::ListImages { verify } => Ok(Response::Images(self.image_list(*verify))),
            Request::UploadImageCommit { upload } => self.upload_commit(upload),
            Request::CreateVm { spec } => self.create_vm(spec),
            Request::DestroyVm { vm } => self.destroy_vm(vm),
            Request::RotateLandlordKey => self.rotate_landlord_key(),
            Request::RegenerateTenantKey { lease, tenant_console_key } => {
                self.regenerate_tenant_key(lease, tenant_console_key)
            }
            Request::RotateTenantKey => self.rotate_tenant_key(role),
            Request::ReadAudit { from } => Ok(self.read_audit(role, from)),
            Request::ListVms => Ok(self.list_vms(role)),
            Request::StartVm { vm } => self.start_vm(vm, true),
            Request::RestartVm { vm } | Request::ReloadImage { vm } => self.start_vm(vm, false),
            Request::StopVm { vm } => self.stop_vm(vm),
            Request::AgentOpen { .. }
            | Request::AgentSend { .. }
            | Request::AgentPoll { .. }
            | Request::AgentStatus { .. }
            | Request::AgentLog { .. }
            | Request::AgentHeartbeat { .. } => Err(ErrorReply::new(
                ErrorCode::Unsupported,
                "agent requests are served by the node's relay, not by the state",
            )),
            Request::Subscribe { .. } => Err(ErrorReply::new(
                ErrorCode::Unsupported,
                "subscriptions are served by the node's session loop, not by the state",
            )),
            Request::SetPolicy { cluster, expect_version, policy } => {
                self.set_policy(role, cluster, expect_version, policy)
            }
            Request::GetPolicy { cluster } => self.get_policy(role, cluster),
            Request::SetSubBoundary { rule } => self.set_sub_boundary(role, rule),
            Request::RemoveSubBoundary { id } => self.remove_sub_boundary(id),
            Request::SetImageSigningKey { key } => self.set_image_signing_key(role, key),
            Request::FleetCreateVm { spec, fleet } => self.fleet_create_vm(spec, fleet),
            Request::FleetStartVm { vm, epoch } => self.fleet_start_vm(vm, *epoch),
            Request::FenceVm { vm, epoch } => self.fence_vm(vm, *epoch),
            Request::PromoteReplica { vm, instance, epoch } => self.promote_replica(vm, *instance, *epoch),
            Request::NotifyTenant { vm, text } => self.notify_tenant(vm, text),
            Request::SetClusterMembers { cluster, members } => self.set_cluster_members(cluster, members),
            Request::ListLeases => Ok(self.list_leases()),
            Request::SetReplicaPartners { partners } => self.set_replica_partners(role, partners),
            Request::FleetSetImage { vm, image, initrd, cmdline } => {
                self.fleet_set_image(vm, crate::fleet::Boot { image, initrd: initrd.as_deref(), cmdline })
            }
            // Answered by `handle` through the backend.
            Request::NodeStatus
            | Request::ReadCounters { .. }
            | Request::ConsoleRead { .. }
            | Request::ConsoleWrite { .. }
            | Request::FleetHeartbeat { .. }
            | Request::ReplicaKey { .. }
            | Request::ReplicaCreate { .. }
            | Request::ReplicaPull { .. }
            | Request::ReplicaPush { .. }
            | Request::FleetVmHealth { .. } => Err(internal()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::sim::SimNode;
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use mgmt_proto::crypto::{HashDrbg, KeyPair, PublicKey};
    use mgmt_proto::msg::*;
    use mgmt_proto::session::{ConsoleEvent, ConsoleSession};

    #[test]
    fn end_to_end_in_memory() {
        let console = KeyPair::generate(&mut HashDrbg::new([1; 32])).unwrap();
        let tenant = KeyPair::generate(&mut HashDrbg::new([2; 32])).unwrap();
        let mut node = NodeState::provision(Box::new(HashDrbg::new([3; 32])), console.public).unwrap();
        let run =
            |node: &mut NodeState, role: Role, secret: &mgmt_proto::SecretKey, key: PublicKey, reqs: Vec<Request>| {
                let mut c = ConsoleSession::new(role, secret, &key, Box::new(HashDrbg::new([4; 32]))).unwrap();
                let mut s = NodeSession::new(Box::new(HashDrbg::new([5; 32])));
                node.serve(&mut s, &c.take_output(), &mut SimNode::default()).unwrap();
                c.receive(&s.take_output()).unwrap();
                let mut out = Vec::new();
                for r in reqs {
                    c.send(r).unwrap();
                    node.serve(&mut s, &c.take_output(), &mut SimNode::default()).unwrap();
                    for ev in c.receive(&s.take_output()).unwrap() {
                        if let ConsoleEvent::Reply(r) = ev {
                            out.push(r.body);
                        }
                    }
                }
                out
            };
        let lk = node.landlord_key;
        let r = run(
            &mut node,
            Role::Landlord,
            &console.secret,
            lk,
            alloc::vec![Request::CreateLease { tenant_console_key: tenant.public, cluster: ClusterId(1) }],
        );
        let Ok(Response::LeaseCreated { lease, tenant_node_key }) = r[0].clone() else { panic!("{r:?}") };
        let r = run(
            &mut node,
            Role::Tenant(lease),
            &tenant.secret,
            tenant_node_key,
            alloc::vec![
                Request::ListVms,
                Request::Reboot,
                Request::SetSubBoundary {
                    rule: BoundaryRule {
                        action: Action::Allow,
                        proto: Proto::Tcp,
                        peer: Ipv4Net { addr: [10, 0, 0, 0], prefix: 8 },
                        ports: None
                    }
                },
                Request::SetSubBoundary {
                    rule: BoundaryRule {
                        action: Action::Deny,
                        proto: Proto::Tcp,
                        peer: Ipv4Net { addr: [10, 0, 0, 0], prefix: 8 },
                        ports: None
                    }
                },
            ],
        );
        assert_eq!(r[0], Ok(Response::Vms(Vec::new())));
        assert_eq!(r[1].as_ref().unwrap_err().code, ErrorCode::Denied);
        assert_eq!(r[2].as_ref().unwrap_err().code, ErrorCode::Widening);
        assert!(matches!(r[3], Ok(Response::RuleAdded { .. })));
        assert!(!node.reboot_requested);
        assert!(node.audit.iter().any(|e| e.action == "reboot" && e.outcome.starts_with("refused")));
    }
}
