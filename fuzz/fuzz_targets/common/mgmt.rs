//! What the management fuzz targets share: who owns what on the fuzzed node.

use mgmt_proto::{LeaseId, Ownership, RuleId, VmId};

/// VM 1 and rule 1 belong to lease 1; nothing else is owned.
pub struct Owners;

impl Ownership for Owners {
    fn vm_lease(&self, vm: VmId) -> Option<LeaseId> {
        (vm.0 == 1).then_some(LeaseId(1))
    }
    fn rule_lease(&self, rule: RuleId) -> Option<LeaseId> {
        (rule.0 == 1).then_some(LeaseId(1))
    }
}
