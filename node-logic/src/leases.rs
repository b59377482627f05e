//! Leases and the node's keys: creating and ending leases, rotating the
//! landlord pair, regenerating a tenant pair, a lease's image signing key.

use alloc::format;

use mgmt_proto::crypto::{KeyPair, PublicKey};
use mgmt_proto::monitor::Owner;
use mgmt_proto::msg::{ClusterId, ErrorCode, ErrorReply, ImageVerifyKey, LeaseId, Response, Role};

use crate::limits::{internal, limit, not_found};
use crate::{Lease, NodeState};

impl NodeState {
    /// [`mgmt_proto::Request::CreateLease`]: a new lease with its own
    /// tenant key pair (U_T answered), within [`crate::StateLimits::max_leases`].
    pub(crate) fn create_lease(
        &mut self,
        tenant_console_key: &PublicKey,
        cluster: &ClusterId,
    ) -> Result<Response, ErrorReply> {
        if self.leases.len() >= self.limits.max_leases {
            return Err(limit(format!("the node holds at most {} leases (max_leases)", self.limits.max_leases)));
        }
        let lease = LeaseId(self.id());
        let pair = KeyPair::generate(&mut *self.rng).map_err(|_| internal())?;
        self.keys.tenants.insert(lease, (pair.secret.clone(), *tenant_console_key));
        self.leases.insert(
            lease,
            Lease {
                cluster: *cluster,
                node_key: pair.public,
                signing_key: None,
                replica_partners: alloc::vec::Vec::new(),
            },
        );
        Ok(Response::LeaseCreated { lease, tenant_node_key: pair.public })
    }

    /// [`mgmt_proto::Request::EndLease`]: the lease goes with its key, VMs,
    /// rules and policies.
    pub(crate) fn end_lease(&mut self, lease: &LeaseId) -> Result<Response, ErrorReply> {
        self.leases.remove(lease).ok_or_else(|| not_found("lease"))?;
        self.keys.tenants.remove(lease);
        self.vms.retain(|_, v| v.spec.lease != *lease);
        self.sub_rules.retain(|_, (l, _)| l != lease);
        self.policies.retain(|(_, owner), _| *owner != Owner::Tenant(*lease));
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::RotateLandlordKey`]: a new landlord pair (U_L answered).
    pub(crate) fn rotate_landlord_key(&mut self) -> Result<Response, ErrorReply> {
        let pair = KeyPair::generate(&mut *self.rng).map_err(|_| internal())?;
        if let Some((secret, _)) = self.keys.landlord.as_mut() {
            *secret = pair.secret.clone();
        }
        self.landlord_key = pair.public;
        Ok(Response::NodeKey { public: pair.public })
    }

    /// [`mgmt_proto::Request::RegenerateTenantKey`]: the landlord gives a
    /// lease a new tenant pair, and optionally a new tenant console key.
    pub(crate) fn regenerate_tenant_key(
        &mut self,
        lease: &LeaseId,
        tenant_console_key: &Option<PublicKey>,
    ) -> Result<Response, ErrorReply> {
        let public = self.regenerate_tenant(*lease)?;
        if let (Some(k), Some((_, console))) = (tenant_console_key, self.keys.tenants.get_mut(lease)) {
            *console = *k;
        }
        Ok(Response::NodeKey { public })
    }

    /// [`mgmt_proto::Request::RotateTenantKey`]: a tenant rotates its own pair.
    pub(crate) fn rotate_tenant_key(&mut self, role: Role) -> Result<Response, ErrorReply> {
        match role {
            Role::Tenant(lease) => Ok(Response::NodeKey { public: self.regenerate_tenant(lease)? }),
            Role::Landlord => Err(internal()),
        }
    }

    /// [`mgmt_proto::Request::SetImageSigningKey`]: the key the tenant's
    /// images must be signed with from now on (none: unsigned accepted).
    pub(crate) fn set_image_signing_key(
        &mut self,
        role: Role,
        key: &Option<ImageVerifyKey>,
    ) -> Result<Response, ErrorReply> {
        let Role::Tenant(lease) = role else { return Err(internal()) };
        let l = self.leases.get_mut(&lease).ok_or_else(|| not_found("lease"))?;
        l.signing_key = *key;
        Ok(Response::Done)
    }

    fn regenerate_tenant(&mut self, lease: LeaseId) -> Result<PublicKey, ErrorReply> {
        if !self.leases.contains_key(&lease) {
            return Err(ErrorReply::new(ErrorCode::NotFound, "no such lease"));
        }
        let pair = KeyPair::generate(&mut *self.rng).map_err(|_| internal())?;
        if let Some((secret, _)) = self.keys.tenants.get_mut(&lease) {
            *secret = pair.secret.clone();
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.node_key = pair.public;
        }
        Ok(pair.public)
    }
}
