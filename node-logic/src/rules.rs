//! Cluster boundaries (the landlord's) and tenant sub-boundaries, which may
//! only narrow their cluster's boundary.

use alloc::format;
use alloc::vec::Vec;

use mgmt_proto::msg::{Action, BoundaryRule, ClusterId, ErrorCode, ErrorReply, Proto, Response, Role, RuleId};

use crate::limits::{internal, limit, not_found};
use crate::NodeState;

impl NodeState {
    /// [`mgmt_proto::Request::SetClusterBoundary`]: replaces a cluster's
    /// boundary, within [`crate::StateLimits::max_boundary_rules`].
    pub(crate) fn set_cluster_boundary(
        &mut self,
        cluster: &ClusterId,
        rules: &[BoundaryRule],
    ) -> Result<Response, ErrorReply> {
        if rules.len() > self.limits.max_boundary_rules {
            return Err(limit(format!(
                "a boundary has at most {} rules (max_boundary_rules)",
                self.limits.max_boundary_rules
            )));
        }
        self.boundaries.insert(*cluster, rules.to_vec());
        Ok(Response::Done)
    }

    /// [`mgmt_proto::Request::SetSubBoundary`]: a tenant rule, refused when
    /// it would allow what the cluster boundary does not.
    pub(crate) fn set_sub_boundary(&mut self, role: Role, rule: &BoundaryRule) -> Result<Response, ErrorReply> {
        if self.sub_rules.len() >= self.limits.max_sub_rules {
            return Err(limit(format!(
                "the node keeps at most {} tenant rules (max_sub_rules)",
                self.limits.max_sub_rules
            )));
        }
        let Role::Tenant(lease) = role else { return Err(internal()) };
        let cluster = self.leases.get(&lease).map(|l| l.cluster).ok_or_else(|| not_found("lease"))?;
        let boundary = self.boundaries.get(&cluster).map(Vec::as_slice).unwrap_or(&[]);
        if rule.action == Action::Allow && !boundary.iter().any(|b| covers(b, rule)) {
            return Err(ErrorReply::new(ErrorCode::Widening, "rule: allows traffic the cluster boundary does not"));
        }
        let id = RuleId(self.id());
        self.sub_rules.insert(id, (lease, *rule));
        Ok(Response::RuleAdded { id })
    }

    /// [`mgmt_proto::Request::RemoveSubBoundary`].
    pub(crate) fn remove_sub_boundary(&mut self, id: &RuleId) -> Result<Response, ErrorReply> {
        self.sub_rules.remove(id).ok_or_else(|| not_found("rule"))?;
        Ok(Response::Done)
    }
}

/// Whether landlord allow rule `b` covers tenant allow rule `r` entirely.
fn covers(b: &BoundaryRule, r: &BoundaryRule) -> bool {
    b.action == Action::Allow
        && (b.proto == Proto::Any || b.proto == r.proto)
        && b.peer.contains_net(&r.peer)
        && match (b.ports, r.ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(bp), Some(rp)) => bp.lo <= rp.lo && rp.hi <= bp.hi,
        }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use mgmt_proto::msg::{Ipv4Net, PortRange};

    #[test]
    fn covers_checks() {
        let net8 = Ipv4Net { addr: [10, 0, 0, 0], prefix: 8 };
        let b = BoundaryRule {
            action: Action::Allow,
            proto: Proto::Any,
            peer: net8,
            ports: Some(PortRange { lo: 1, hi: 100 }),
        };
        let r = BoundaryRule {
            action: Action::Allow,
            proto: Proto::Udp,
            peer: net8,
            ports: Some(PortRange { lo: 5, hi: 10 }),
        };
        assert!(covers(&b, &r));
        assert!(!covers(&b, &BoundaryRule { ports: None, ..r }));
        assert!(!covers(&b, &BoundaryRule { ports: Some(PortRange { lo: 5, hi: 101 }), ..r }));
    }
}
