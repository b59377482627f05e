//! Corrective-action policies: set (validated by the same rules the node
//! applies, versioned), read, and the context validation sees.

use alloc::format;

use mgmt_proto::monitor::policy::{validate, PolicyContext, MAX_POLICIES};
use mgmt_proto::monitor::{Owner, Policy, VersionedPolicy};
use mgmt_proto::msg::{ClusterId, ErrorCode, ErrorReply, LeaseId, Response, Role, VmId};

use crate::limits::limit;
use crate::NodeState;

impl NodeState {
    /// What policy validation needs to know about this node's VMs and
    /// leases, so the node validates policies by the same rules as
    /// `SetPolicy` does.
    pub fn policy_context(&self) -> impl PolicyContext + '_ {
        StatePolicyContext { state: self }
    }

    /// [`mgmt_proto::Request::SetPolicy`]: the role's policy for `cluster`,
    /// replaced if `expect_version` matches (an empty one removes it).
    pub(crate) fn set_policy(
        &mut self,
        role: Role,
        cluster: &ClusterId,
        expect_version: &Option<u32>,
        policy: &Policy,
    ) -> Result<Response, ErrorReply> {
        let owner = Owner::of(role);
        let key = (*cluster, owner);
        validate(owner, *cluster, policy, &self.policy_context())?;
        let stored = self.policies.get(&key).map_or(0, |p| p.version);
        if let Some(expected) = expect_version {
            if *expected != stored {
                return Err(ErrorReply::new(
                    ErrorCode::Conflict,
                    format!("expect_version: the stored policy is version {stored}, not {expected}"),
                ));
            }
        }
        let version = stored.saturating_add(1);
        if policy.rules.is_empty() {
            self.policies.remove(&key);
            return Ok(Response::PolicySet { version });
        }
        if !self.policies.contains_key(&key) && self.policies.len() >= MAX_POLICIES {
            return Err(limit(format!("the node keeps at most {MAX_POLICIES} policies (MAX_POLICIES)")));
        }
        self.policies.insert(key, VersionedPolicy { version, policy: policy.clone() });
        Ok(Response::PolicySet { version })
    }

    /// [`mgmt_proto::Request::GetPolicy`]: the role's own policy for `cluster`.
    pub(crate) fn get_policy(&self, role: Role, cluster: &ClusterId) -> Result<Response, ErrorReply> {
        let owner = Owner::of(role);
        if let Owner::Tenant(lease) = owner {
            if self.leases.get(&lease).map(|l| l.cluster) != Some(*cluster) {
                return Err(ErrorReply::new(
                    ErrorCode::Invalid,
                    format!("cluster: {} is not the cluster of lease {}", cluster.0, lease.0),
                ));
            }
        }
        Ok(Response::Policy(self.policies.get(&(*cluster, owner)).cloned()))
    }
}

/// [`NodeState::policy_context`]: VMs and leases as the state holds them.
struct StatePolicyContext<'a> {
    state: &'a NodeState,
}

impl PolicyContext for StatePolicyContext<'_> {
    fn vm(&self, vm: VmId) -> Option<(LeaseId, ClusterId)> {
        self.state.vms.get(&vm).map(|v| (v.spec.lease, v.spec.cluster))
    }

    fn lease_cluster(&self, lease: LeaseId) -> Option<ClusterId> {
        self.state.leases.get(&lease).map(|l| l.cluster)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::images::Extent;
    use crate::sim::SimNode;
    use crate::snapshot::legacy::SnapshotV4;
    use crate::snapshot::{Snapshot, SNAPSHOT_VERSION};
    use crate::uploads::Image;
    use alloc::boxed::Box;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;
    use mgmt_proto::crypto::{HashDrbg, PublicKey};
    use mgmt_proto::monitor::{Condition, PolicyAction, PolicyRule};
    use mgmt_proto::msg::*;

    /// Lease A in cluster 1 with VM `a`, lease B in cluster 1 with VM `b`.
    fn node() -> (NodeState, [LeaseId; 2], [VmId; 2]) {
        let mut n = NodeState::provision(Box::new(HashDrbg::new([3; 32])), PublicKey([7; 32])).unwrap();
        n.images
            .insert(String::from("img"), Image { extent: Extent { start: 0, blocks: 1 }, size: 16, sha256: [0; 32] });
        let mut leases = Vec::new();
        let mut vms = Vec::new();
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let r = n.handle(
                Role::Landlord,
                &Request::CreateLease { tenant_console_key: PublicKey([9 + i as u8; 32]), cluster: ClusterId(1) },
                &mut SimNode::default(),
            );
            let Ok(Response::LeaseCreated { lease, .. }) = r else { panic!("{r:?}") };
            let spec = VmSpec {
                name: name.to_string(),
                lease,
                cluster: ClusterId(1),
                memory_mib: 16,
                image: String::from("img"),
                cmdline: String::new(),
                disk_mib: 0,
                vcpus: 1,
                ip: None,
                initrd: None,
            };
            let r = n.handle(Role::Landlord, &Request::CreateVm { spec }, &mut SimNode::default());
            let Ok(Response::VmCreated { vm }) = r else { panic!("{r:?}") };
            leases.push(lease);
            vms.push(vm);
        }
        (n, [leases[0], leases[1]], [vms[0], vms[1]])
    }

    fn policy(vm: Option<VmId>, action: PolicyAction) -> Policy {
        Policy {
            rules: alloc::vec![PolicyRule {
                name: String::from("hb"),
                vm,
                when: Condition::HeartbeatMissed { secs: 30 },
                action,
                notify: true,
                backoff_secs: 10,
                max_repeats: 3,
                window_secs: 600,
            }],
        }
    }

    fn set(
        n: &mut NodeState,
        role: Role,
        cluster: u32,
        expect: Option<u32>,
        p: &Policy,
    ) -> Result<Response, ErrorReply> {
        n.handle(
            role,
            &Request::SetPolicy { cluster: ClusterId(cluster), expect_version: expect, policy: p.clone() },
            &mut SimNode::default(),
        )
    }

    fn get(n: &mut NodeState, role: Role, cluster: u32) -> Result<Response, ErrorReply> {
        n.handle(role, &Request::GetPolicy { cluster: ClusterId(cluster) }, &mut SimNode::default())
    }

    #[test]
    fn policies_are_set_versioned_read_and_removed() {
        let (mut n, [la, _], [va, _]) = node();
        let ta = Role::Tenant(la);
        let p = policy(Some(va), PolicyAction::RestartVm);
        assert_eq!(get(&mut n, ta, 1), Ok(Response::Policy(None)));
        assert_eq!(set(&mut n, ta, 1, Some(0), &p), Ok(Response::PolicySet { version: 1 }));
        assert_eq!(set(&mut n, ta, 1, None, &p), Ok(Response::PolicySet { version: 2 }));
        let e = set(&mut n, ta, 1, Some(1), &p).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert_eq!(e.message, "expect_version: the stored policy is version 2, not 1");
        assert_eq!(get(&mut n, ta, 1), Ok(Response::Policy(Some(VersionedPolicy { version: 2, policy: p.clone() }))));
        // The landlord's policy for the cluster is its own.
        assert_eq!(get(&mut n, Role::Landlord, 1), Ok(Response::Policy(None)));
        let lp = policy(None, PolicyAction::Notify);
        assert_eq!(set(&mut n, Role::Landlord, 1, Some(0), &lp), Ok(Response::PolicySet { version: 1 }));
        assert_eq!(n.policies.len(), 2);
        // An empty policy removes it, answering the version it would have had.
        assert_eq!(set(&mut n, ta, 1, Some(2), &Policy::default()), Ok(Response::PolicySet { version: 3 }));
        assert_eq!(get(&mut n, ta, 1), Ok(Response::Policy(None)));
        assert_eq!(n.policies.len(), 1);
    }

    #[test]
    fn refused_policies_change_nothing() {
        let (mut n, [la, lb], [va, vb]) = node();
        let ta = Role::Tenant(la);
        assert!(set(&mut n, ta, 1, None, &policy(Some(va), PolicyAction::RestartVm)).is_ok());
        let before = n.policies.clone();
        // Another lease's VM reads like a missing one.
        let e1 = set(&mut n, ta, 1, None, &policy(Some(vb), PolicyAction::RestartVm)).unwrap_err();
        let e2 = set(&mut n, ta, 1, None, &policy(Some(VmId(9999)), PolicyAction::RestartVm)).unwrap_err();
        assert_eq!((e1.code, e2.code), (ErrorCode::NotFound, ErrorCode::NotFound));
        assert_eq!(e1.message.replace(&vb.0.to_string(), "9999"), e2.message);
        // Beyond the owner's powers.
        let e = set(&mut n, ta, 1, None, &policy(None, PolicyAction::RebootNode)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        // Another cluster than the lease's, to set or to read.
        let e = set(&mut n, ta, 2, None, &policy(None, PolicyAction::RestartVm)).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Invalid, &*format!("cluster: 2 is not the cluster of lease {}", la.0))
        );
        assert_eq!(get(&mut n, ta, 2).unwrap_err().code, ErrorCode::Invalid);
        // A stale version.
        assert_eq!(set(&mut n, ta, 1, Some(0), &Policy::default()).unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(n.policies, before);
        // Lease B's tenant has no policy; ending lease A removes A's.
        assert_eq!(get(&mut n, Role::Tenant(lb), 1), Ok(Response::Policy(None)));
        assert!(set(&mut n, Role::Landlord, 1, None, &policy(None, PolicyAction::Notify)).is_ok());
        assert!(n.handle(Role::Landlord, &Request::EndLease { lease: la }, &mut SimNode::default()).is_ok());
        assert_eq!(n.policies.keys().copied().collect::<Vec<_>>(), [(ClusterId(1), Owner::Landlord)]);
    }

    #[test]
    fn the_number_of_policies_is_limited() {
        let (mut n, _, _) = node();
        let p = policy(None, PolicyAction::Notify);
        for c in 0..MAX_POLICIES as u32 {
            assert!(set(&mut n, Role::Landlord, 100 + c, None, &p).is_ok());
        }
        let e = set(&mut n, Role::Landlord, 1, None, &p).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Limit, "the node keeps at most 256 policies (MAX_POLICIES)")
        );
        assert_eq!(n.policies.len(), MAX_POLICIES);
        // Replacing or removing one still works.
        assert_eq!(set(&mut n, Role::Landlord, 100, None, &p), Ok(Response::PolicySet { version: 2 }));
        assert!(set(&mut n, Role::Landlord, 101, None, &Policy::default()).is_ok());
        assert!(set(&mut n, Role::Landlord, 1, None, &p).is_ok());
        // A snapshot holding more (hand-made) is cut to the limit on restore.
        let mut snap = n.snapshot();
        snap.policies.push(((ClusterId(99_999), Owner::Landlord), VersionedPolicy { version: 1, policy: p.clone() }));
        let back = NodeState::restore(Box::new(HashDrbg::new([4; 32])), snap).unwrap();
        assert_eq!(back.policies.len(), MAX_POLICIES);
    }

    #[test]
    fn policies_survive_a_snapshot_and_version_4_snapshots_still_load() {
        let (mut n, [la, _], [va, _]) = node();
        let p = policy(Some(va), PolicyAction::ReloadImage);
        assert!(set(&mut n, Role::Tenant(la), 1, None, &p).is_ok());
        assert!(set(&mut n, Role::Tenant(la), 1, None, &p).is_ok());
        let bytes = postcard::to_allocvec(&n.snapshot()).unwrap();
        let snap = Snapshot::decode(&bytes).unwrap();
        assert_eq!(snap.version, crate::SNAPSHOT_VERSION);
        let back = NodeState::restore(Box::new(HashDrbg::new([4; 32])), snap).unwrap();
        assert_eq!(back.policies, n.policies);
        assert_eq!(back.policies[&(ClusterId(1), Owner::Tenant(la))].version, 2);
        // Version 4: the same without policies.
        let s = n.snapshot();
        let v4 = SnapshotV4 {
            version: 4,
            landlord_secret: s.landlord_secret,
            landlord_console: s.landlord_console,
            leases: s.leases.clone(),
            vms: s.vms.clone(),
            images: s.images.clone(),
            boundaries: s.boundaries.clone(),
            sub_rules: s.sub_rules.clone(),
            audit: s.audit.clone(),
            audit_anchor: s.audit_anchor,
            next_id: s.next_id,
            clock: s.clock,
        };
        let old = Snapshot::decode(&postcard::to_allocvec(&v4).unwrap()).unwrap();
        assert_eq!(old.version, SNAPSHOT_VERSION);
        assert!(old.policies.is_empty());
        assert_eq!(old.vms.len(), 2);
        assert_eq!(old.leases.len(), 2);
        let back = NodeState::restore(Box::new(HashDrbg::new([5; 32])), old).unwrap();
        assert!(back.policies.is_empty());
        assert_eq!(back.vms.len(), 2);
        // The context the node validates with sees the same VMs and leases.
        let ctx = back.policy_context();
        assert_eq!(ctx.vm(va), Some((la, ClusterId(1))));
        assert_eq!(ctx.lease_cluster(la), Some(ClusterId(1)));
        assert_eq!(ctx.vm(VmId(9999)), None);
    }
}
