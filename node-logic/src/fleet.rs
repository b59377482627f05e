//! The node as a member of a facility: VMs the facility controller placed
//! (instance id, fencing epoch, MAC), the node's fencing lease, replicas of
//! protected volumes, and the checks that keep a fenced copy from running
//! or writing (docs/fleet.md, "Fencing").

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use mgmt_proto::crypto::PublicKey;
use mgmt_proto::fleet::{
    open_volume_secret, seal_volume_secret, FleetReport, FleetSpec, FleetVmInfo, ReplicaBlock, MAX_NOTICE,
    MAX_REPLICA_BLOCKS, REPLICA_BLOCK,
};
use mgmt_proto::fleet::{LeaseInfo, MAX_CLUSTER_MEMBERS, MAX_MEMBER_CLUSTERS, MAX_REPLICA_PARTNERS};
use mgmt_proto::msg::{ClusterId, ErrorCode, ErrorReply, Response, Role, VmId, VmSpec, VmState};

use crate::limits::{internal, not_found};
use crate::{NodeBackend, NodeState};

/// Longest fencing lease a controller may ask for (ten minutes): a lease
/// is a promise to stop protected VMs in time, so it has to end.
pub const MAX_FENCE_AFTER_MS: u32 = 600_000;

/// A VM's facility record on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FleetVm {
    /// What the controller said when it placed it.
    pub spec: FleetSpec,
    /// A replica of a protected volume (runs only once promoted).
    pub replica: bool,
    /// The lowest epoch still accepted for it.
    pub fence: u64,
    /// Stopped by the node itself when its fencing lease ran out.
    pub self_fenced: bool,
}

/// The facility side of the node's state.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// Facility VMs by id.
    pub vms: BTreeMap<VmId, FleetVm>,
    /// When protected VMs stop unless a heartbeat comes first (node ms).
    pub lease_deadline_ms: Option<u64>,
    /// The node's monotonic time in ms, as last given to [`NodeState::fleet_tick`].
    pub now_ms: u64,
    /// Where each cluster's VMs are in the facility (their addresses).
    pub members: BTreeMap<ClusterId, Vec<[u8; 4]>>,
}

fn conflict(m: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Conflict, m)
}

fn invalid(m: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::Invalid, m)
}

impl NodeState {
    /// Advances the facility clock; when the fencing lease has run out,
    /// stops every running protected primary (it may be healed elsewhere
    /// now) and returns their ids for the log.
    pub fn fleet_tick(&mut self, now_ms: u64) -> Vec<VmId> {
        self.fleet.now_ms = self.fleet.now_ms.max(now_ms);
        let Some(deadline) = self.fleet.lease_deadline_ms else { return Vec::new() };
        if self.fleet.now_ms < deadline {
            return Vec::new();
        }
        self.fleet.lease_deadline_ms = None;
        let mut stopped = Vec::new();
        for (id, f) in self.fleet.vms.iter_mut().filter(|(_, f)| f.spec.protected && !f.replica) {
            let Some(v) = self.vms.get_mut(id) else { continue };
            if v.state == VmState::Running {
                v.state = VmState::Stopped;
                v.autostart = false;
                f.self_fenced = true;
                stopped.push(*id);
            }
        }
        stopped
    }

    /// Whether VM `vm` may write its disk now: not a facility VM, or one
    /// whose epoch is not below its fence and that is no replica. The
    /// hypervisor keeps the same answer in the VM's write gate.
    pub fn may_write(&self, vm: VmId) -> bool {
        self.fleet.vms.get(&vm).is_none_or(|f| !f.replica && f.spec.epoch >= f.fence)
    }

    /// [`mgmt_proto::Request::FleetHeartbeat`].
    pub(crate) fn fleet_heartbeat(&mut self, fence_after_ms: u32, node: &mut dyn NodeBackend) -> Response {
        let after = fence_after_ms.min(MAX_FENCE_AFTER_MS);
        self.fleet.lease_deadline_ms = (after > 0).then(|| self.fleet.now_ms.saturating_add(u64::from(after)));
        let vms = self
            .fleet
            .vms
            .iter()
            .filter_map(|(id, f)| {
                let v = self.vms.get(id)?;
                Some(FleetVmInfo {
                    id: *id,
                    name: v.spec.name.clone(),
                    lease: v.spec.lease,
                    fleet: f.spec,
                    state: v.state,
                    replica: f.replica,
                    fence: f.fence,
                    self_fenced: f.self_fenced,
                })
            })
            .collect();
        Response::Fleet(FleetReport { status: node.status(self), disk_free_mib: node.disk_free_mib(), vms })
    }

    /// The existing VM of `spec`'s lease and name, if it is the same
    /// instance (so a repeated create is answered, not doubled).
    fn same_instance(&self, spec: &VmSpec, fleet: &FleetSpec) -> Result<Option<VmId>, ErrorReply> {
        let Some((id, _)) = self.vms.iter().find(|(_, v)| v.spec.lease == spec.lease && v.spec.name == spec.name)
        else {
            return Ok(None);
        };
        match self.fleet.vms.get(id) {
            Some(f) if f.spec.instance == fleet.instance => Ok(Some(*id)),
            Some(f) => Err(conflict(format!(
                "name: {:?} is instance {} on this node, not {}",
                spec.name, f.spec.instance, fleet.instance
            ))),
            None => Err(conflict(format!("name: {:?} is already a VM of this lease", spec.name))),
        }
    }

    fn check_fleet_spec(fleet: &FleetSpec, spec: &VmSpec) -> Result<(), ErrorReply> {
        let [first, ..] = fleet.mac;
        if first & 1 != 0 || fleet.mac == [0; 6] {
            return Err(invalid("mac: must be a unicast address, not all zeros"));
        }
        if fleet.protected && spec.disk_mib == 0 {
            return Err(invalid("protected: a protected VM needs a disk (disk_mib > 0)"));
        }
        Ok(())
    }

    /// [`mgmt_proto::Request::FleetCreateVm`].
    pub(crate) fn fleet_create_vm(&mut self, spec: &VmSpec, fleet: &FleetSpec) -> Result<Response, ErrorReply> {
        Self::check_fleet_spec(fleet, spec)?;
        if let Some(vm) = self.same_instance(spec, fleet)? {
            return Ok(Response::VmCreated { vm });
        }
        if self.vms.values().any(|v| v.spec.ip.is_some() && v.spec.ip == spec.ip) {
            return Err(conflict(String::from("ip: another VM on this node has this address")));
        }
        let Response::VmCreated { vm } = self.create_vm(spec)? else { return Err(internal()) };
        self.fleet.vms.insert(vm, FleetVm { spec: *fleet, replica: false, fence: fleet.epoch, self_fenced: false });
        Ok(Response::VmCreated { vm })
    }

    pub(crate) fn fleet_vm(&mut self, vm: &VmId) -> Result<&mut FleetVm, ErrorReply> {
        if !self.vms.contains_key(vm) {
            return Err(not_found("VM"));
        }
        self.fleet.vms.get_mut(vm).ok_or_else(|| invalid("vm: not a facility VM (create it with fleet-create-vm)"))
    }

    /// [`mgmt_proto::Request::FleetStartVm`]: refused below the fence and
    /// for a replica; an epoch above the VM's own is the controller taking
    /// the lock again for this copy.
    pub(crate) fn fleet_start_vm(&mut self, vm: &VmId, epoch: u64) -> Result<Response, ErrorReply> {
        let f = self.fleet_vm(vm)?;
        if f.replica {
            return Err(conflict(String::from("replica: promote it before starting it")));
        }
        if epoch < f.fence {
            return Err(conflict(format!("fenced: epoch {epoch} is below this node's fence {} for it", f.fence)));
        }
        f.spec.epoch = epoch;
        f.fence = epoch;
        f.self_fenced = false;
        let running = self.vms.get(vm).is_some_and(|v| v.state == VmState::Running);
        if running {
            return Ok(Response::Done);
        }
        self.start_vm(vm, true)
    }

    /// [`mgmt_proto::Request::FenceVm`]: raises the fence; a copy below it
    /// stops at once and is never started again here.
    pub(crate) fn fence_vm(&mut self, vm: &VmId, epoch: u64) -> Result<Response, ErrorReply> {
        let f = self.fleet_vm(vm)?;
        f.fence = f.fence.max(epoch);
        let stop = f.spec.epoch < f.fence;
        if stop {
            if let Some(v) = self.vms.get_mut(vm) {
                v.state = VmState::Stopped;
                v.autostart = false;
            }
        }
        Ok(Response::Done)
    }

    fn protected_primary(&mut self, vm: &VmId) -> Result<(), ErrorReply> {
        let f = self.fleet_vm(vm)?;
        if !f.spec.protected {
            return Err(invalid("vm: not protected"));
        }
        if f.replica {
            return Err(invalid("vm: a replica, not the primary"));
        }
        Ok(())
    }

    /// [`mgmt_proto::Request::ReplicaKey`]: the volume secret sealed for
    /// the partner's node key, from this node's U_L.
    pub(crate) fn replica_key(
        &mut self,
        vm: &VmId,
        partner: &PublicKey,
        node: &mut dyn NodeBackend,
    ) -> Result<Response, ErrorReply> {
        self.protected_primary(vm)?;
        let spec = self.vms.get(vm).map(|v| v.spec.clone()).ok_or_else(|| not_found("VM"))?;
        // Only a node the tenant approved: else a landlord could name a key
        // of its own and open the secret itself.
        let approved =
            self.leases.get(&spec.lease).is_some_and(|l| l.replica_partners.iter().any(|p| p.ct_eq(partner)));
        if !approved {
            return Err(ErrorReply::new(
                ErrorCode::Denied,
                format!(
                    "partner: the VM's tenant has not approved node {partner} as a replica partner \
                     (the tenant sets its partners with `bmctl tenant replica-partners`)"
                ),
            ));
        }
        let secret = node.replica_secret(*vm, &spec)?;
        let (sk, _) = self.keys.landlord.as_ref().ok_or_else(internal)?;
        let mut seed = [0u8; 32];
        self.rng.fill(&mut seed).map_err(|_| internal())?;
        let sealed = seal_volume_secret(sk, &self.landlord_key, partner, &spec.name, &secret, seed)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("{e}")))?;
        Ok(Response::SealedSecret(sealed))
    }

    /// [`mgmt_proto::Request::ReplicaCreate`].
    pub(crate) fn replica_create(
        &mut self,
        spec: &VmSpec,
        fleet: &FleetSpec,
        from: &PublicKey,
        sealed: &[u8],
        node: &mut dyn NodeBackend,
    ) -> Result<Response, ErrorReply> {
        Self::check_fleet_spec(fleet, spec)?;
        if !fleet.protected {
            return Err(invalid("protected: only a protected VM has a replica"));
        }
        let (sk, _) = self.keys.landlord.as_ref().ok_or_else(internal)?;
        let secret = open_volume_secret(sk, &self.landlord_key, from, &spec.name, sealed)
            .map_err(|e| ErrorReply::new(ErrorCode::BadSignature, format!("sealed: {e}")))?;
        if let Some(vm) = self.same_instance(spec, fleet)? {
            let f = self.fleet_vm(&vm)?;
            if !f.replica {
                return Err(conflict(String::from("vm: this instance runs here as the primary, not a replica")));
            }
            if fleet.epoch < f.fence {
                return Err(conflict(format!(
                    "fenced: epoch {} is below this replica's fence {} (a deposed primary cannot re-pair)",
                    fleet.epoch, f.fence
                )));
            }
            // Same instance again (a new pairing): the volume follows the
            // secret given now.
            node.replica_open(vm, spec, &secret)?;
            return Ok(Response::VmCreated { vm });
        }
        let Response::VmCreated { vm } = self.create_vm(spec)? else { return Err(internal()) };
        if let Err(e) = node.replica_open(vm, spec, &secret) {
            self.vms.remove(&vm);
            return Err(e);
        }
        self.fleet.vms.insert(vm, FleetVm { spec: *fleet, replica: true, fence: fleet.epoch, self_fenced: false });
        Ok(Response::VmCreated { vm })
    }

    /// [`mgmt_proto::Request::ReplicaPull`].
    pub(crate) fn replica_pull(
        &mut self,
        vm: &VmId,
        max_blocks: u32,
        resync: bool,
        node: &mut dyn NodeBackend,
    ) -> Result<Response, ErrorReply> {
        self.protected_primary(vm)?;
        if !(1..=MAX_REPLICA_BLOCKS).contains(&max_blocks) {
            return Err(invalid("max_blocks: must be 1..=14 (MAX_REPLICA_BLOCKS)"));
        }
        let (blocks, remaining) = node.replica_pull(*vm, max_blocks, resync)?;
        Ok(Response::ReplicaBatch { blocks, remaining })
    }

    /// [`mgmt_proto::Request::ReplicaPush`]: refused below the replica's
    /// fence, so a deposed primary's data never lands.
    pub(crate) fn replica_push(
        &mut self,
        vm: &VmId,
        epoch: u64,
        blocks: &[ReplicaBlock],
        node: &mut dyn NodeBackend,
    ) -> Result<Response, ErrorReply> {
        let f = *self.fleet_vm(vm)?;
        if !f.replica {
            return Err(conflict(String::from("vm: not a replica (promoted, or a primary)")));
        }
        if epoch < f.fence {
            return Err(conflict(format!("fenced: epoch {epoch} is below this replica's fence {}", f.fence)));
        }
        if blocks.len() > MAX_REPLICA_BLOCKS as usize {
            return Err(invalid("blocks: at most 14 (MAX_REPLICA_BLOCKS)"));
        }
        if blocks.iter().any(|b| b.bytes.len() != REPLICA_BLOCK) {
            return Err(invalid("blocks: each must be 4096 bytes"));
        }
        node.replica_push(*vm, blocks)?;
        if let Some(f) = self.fleet.vms.get_mut(vm) {
            f.fence = f.fence.max(epoch);
        }
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::PromoteReplica`]: the replica becomes the VM
    /// at a new epoch; pushes of older epochs are refused from then on.
    pub(crate) fn promote_replica(&mut self, vm: &VmId, instance: u64, epoch: u64) -> Result<Response, ErrorReply> {
        let f = self.fleet_vm(vm)?;
        if f.spec.instance != instance {
            return Err(conflict(format!("instance: the replica is instance {}, not {instance}", f.spec.instance)));
        }
        if !f.replica {
            return if f.spec.epoch == epoch {
                Ok(Response::Done)
            } else {
                Err(conflict(String::from("vm: already promoted at another epoch")))
            };
        }
        if epoch <= f.fence {
            return Err(conflict(format!("epoch: must be above {} (the epoch the replica last saw)", f.fence)));
        }
        f.replica = false;
        f.spec.epoch = epoch;
        f.fence = epoch;
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::NotifyTenant`]: checked here; the hypervisor
    /// records it as an event the VM's tenant sees.
    pub(crate) fn notify_tenant(&mut self, vm: &VmId, text: &str) -> Result<Response, ErrorReply> {
        if !self.vms.contains_key(vm) {
            return Err(not_found("VM"));
        }
        if text.is_empty() || text.len() > MAX_NOTICE || text.chars().any(|c| c.is_control()) {
            return Err(invalid("text: 1-256 bytes without control characters"));
        }
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::SetClusterMembers`] (the hypervisor checks
    /// the switch takes it first).
    pub(crate) fn set_cluster_members(
        &mut self,
        cluster: &ClusterId,
        members: &[[u8; 4]],
    ) -> Result<Response, ErrorReply> {
        if members.len() > MAX_CLUSTER_MEMBERS {
            return Err(ErrorReply::new(
                ErrorCode::Limit,
                format!("members: at most {MAX_CLUSTER_MEMBERS} addresses per cluster (MAX_CLUSTER_MEMBERS)"),
            ));
        }
        if cluster.0 == 0 {
            return Err(invalid("cluster: clusters are numbered from 1"));
        }
        if !members.is_empty()
            && !self.fleet.members.contains_key(cluster)
            && self.fleet.members.len() >= MAX_MEMBER_CLUSTERS
        {
            return Err(ErrorReply::new(
                ErrorCode::Limit,
                format!("cluster: members of at most {MAX_MEMBER_CLUSTERS} clusters are kept (MAX_MEMBER_CLUSTERS)"),
            ));
        }
        let mut list = members.to_vec();
        list.sort_unstable();
        list.dedup();
        if list.is_empty() {
            self.fleet.members.remove(cluster);
        } else {
            self.fleet.members.insert(*cluster, list);
        }
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::ListLeases`].
    pub(crate) fn list_leases(&self) -> Response {
        Response::Leases(
            self.leases
                .iter()
                .filter_map(|(id, l)| {
                    Some(LeaseInfo {
                        lease: *id,
                        cluster: l.cluster,
                        console: self.keys.tenants.get(id)?.1,
                        node_key: l.node_key,
                        replica_partners: l.replica_partners.clone(),
                    })
                })
                .collect(),
        )
    }

    /// [`mgmt_proto::Request::SetReplicaPartners`]: the tenant's consent to
    /// the nodes that may hold its volumes' replicas.
    pub(crate) fn set_replica_partners(&mut self, role: Role, partners: &[PublicKey]) -> Result<Response, ErrorReply> {
        let Role::Tenant(lease) = role else { return Err(internal()) };
        if partners.len() > MAX_REPLICA_PARTNERS {
            return Err(ErrorReply::new(
                ErrorCode::Limit,
                format!("partners: at most {MAX_REPLICA_PARTNERS} nodes (MAX_REPLICA_PARTNERS)"),
            ));
        }
        let mut list = partners.to_vec();
        list.sort_unstable();
        list.dedup();
        let l = self.leases.get_mut(&lease).ok_or_else(|| not_found("lease"))?;
        l.replica_partners = list;
        Ok(Response::Done)
    }

    /// Drops a destroyed VM's facility record.
    pub(crate) fn fleet_forget(&mut self, vm: &VmId) {
        self.fleet.vms.remove(vm);
    }
}

mod boot;
pub(crate) use boot::Boot;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests;
