//! Validation of corrective-action policies: a policy is accepted only if
//! every rule is within the node's limits and within its owner's powers.

use alloc::collections::BTreeMap;

use super::{Owner, Policy, VersionedPolicy};
use crate::msg::{ClusterId, ErrorReply, LeaseId, VmId};

/// Most rules in one policy.
pub const MAX_RULES: usize = 32;
/// Most policies a node keeps (one per cluster and owner).
pub const MAX_POLICIES: usize = 256;
/// Longest rule name.
pub const MAX_RULE_NAME: usize = 64;

/// The stored policies, by cluster and owner.
pub type Policies = BTreeMap<(ClusterId, Owner), VersionedPolicy>;

/// What validation needs to know about the node's VMs and leases.
pub trait PolicyContext {
    /// The lease and cluster of `vm`, if it exists.
    fn vm(&self, vm: VmId) -> Option<(LeaseId, ClusterId)>;
    /// The cluster of `lease`, if it exists.
    fn lease_cluster(&self, lease: LeaseId) -> Option<ClusterId>;
}

/// Checks `policy` for `owner` on `cluster`; the error names the rule and
/// the field.
pub fn validate(owner: Owner, cluster: ClusterId, policy: &Policy, ctx: &dyn PolicyContext) -> Result<(), ErrorReply> {
    let _ = (owner, cluster, policy, ctx);
    Err(ErrorReply::new(crate::msg::ErrorCode::Unsupported, "policy validation not built yet"))
}
