//! Validation of corrective-action policies: a policy is accepted only if
//! every rule is within the node's limits and within its owner's powers.
//!
//! The owner's powers:
//!
//! | owner    | conditions                                             | actions                                              |
//! |----------|--------------------------------------------------------|------------------------------------------------------|
//! | landlord | heartbeat-missed, probe-failing, vm-stopped-abnormally | notify, restart-vm, reboot-node                      |
//! | tenant   | heartbeat-missed, service-failing, vm-stopped-abnormally | notify, restart-service, restart-vm, reload-image |
//!
//! and, whoever the owner: restart-service only on service-failing,
//! reboot-node only on probe-failing (a VM's fault must never reboot the
//! node), probe-failing only notifies or reboots and names no VM. A tenant
//! sets policies for its lease's cluster only, naming only its own VMs; a
//! VM it does not own is refused exactly like a missing one.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;

use super::{Condition, Owner, Policy, PolicyAction, PolicyRule, VersionedPolicy};
use crate::msg::{ClusterId, ErrorCode, ErrorReply, LeaseId, VmId};

/// Most rules in one policy.
pub const MAX_RULES: usize = 32;
/// Most policies a node keeps (one per cluster and owner).
pub const MAX_POLICIES: usize = 256;
/// Longest rule name.
pub const MAX_RULE_NAME: usize = 64;
/// Longest service name a rule may name (and the engine tracks).
pub const MAX_SERVICE_NAME: usize = 64;

/// Bounds of [`Condition::HeartbeatMissed`]`::secs`.
pub const HEARTBEAT_SECS: (u32, u32) = (1, 3600);
/// Bounds of the failure counts of [`Condition::ProbeFailing`] and [`Condition::ServiceFailing`].
pub const FAILURE_COUNT: (u32, u32) = (1, 100);
/// Bounds of [`PolicyRule::window_secs`] and of [`Condition::ServiceFailing`]`::window_secs`.
pub const WINDOW_SECS: (u32, u32) = (1, 86_400);
/// Bounds of [`PolicyRule::backoff_secs`].
pub const BACKOFF_SECS: (u32, u32) = (0, 3600);
/// Bounds of [`PolicyRule::max_repeats`].
pub const MAX_REPEATS: (u32, u32) = (1, 100);

/// The stored policies, by cluster and owner.
pub type Policies = BTreeMap<(ClusterId, Owner), VersionedPolicy>;

/// What validation needs to know about the node's VMs and leases.
pub trait PolicyContext {
    /// The lease and cluster of `vm`, if it exists.
    fn vm(&self, vm: VmId) -> Option<(LeaseId, ClusterId)>;
    /// The cluster of `lease`, if it exists.
    fn lease_cluster(&self, lease: LeaseId) -> Option<ClusterId>;
}

/// The name of a condition kind, as events, errors and the CLI spell it.
pub fn condition_name(c: &Condition) -> &'static str {
    match c {
        Condition::HeartbeatMissed { .. } => "heartbeat-missed",
        Condition::ProbeFailing { .. } => "probe-failing",
        Condition::ServiceFailing { .. } => "service-failing",
        Condition::VmStoppedAbnormally => "vm-stopped-abnormally",
    }
}

/// Whether `name` is a valid rule name: 1..=[`MAX_RULE_NAME`] of `[a-z0-9._-]`.
pub fn valid_rule_name(name: &str) -> bool {
    (1..=MAX_RULE_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `name` is a valid service name: 1..=[`MAX_SERVICE_NAME`] of
/// `[A-Za-z0-9._-]` (`"*"` is a pattern, not a name). The engine ignores
/// failures of services named otherwise.
pub fn valid_service_name(name: &str) -> bool {
    (1..=MAX_SERVICE_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why `owner` may not have a rule with this condition, action and VM
/// (`None`: it may). Context-free, so the engine applies it too and never
/// acts beyond an owner's powers even on a policy that skipped validation.
pub fn powers_refusal(owner: Owner, rule: &PolicyRule) -> Option<&'static str> {
    let landlord = owner == Owner::Landlord;
    match (&rule.when, landlord) {
        (Condition::ProbeFailing { .. }, false) => return Some("when: probe-failing is for the landlord only"),
        (Condition::ServiceFailing { .. }, true) => return Some("when: service-failing is for tenants only"),
        _ => {}
    }
    match (rule.action, landlord) {
        (PolicyAction::RestartService, true) => return Some("action: restart-service is for tenants only"),
        (PolicyAction::ReloadImage, true) => return Some("action: reload-image is for tenants only"),
        (PolicyAction::RebootNode, false) => return Some("action: reboot-node is for the landlord only"),
        _ => {}
    }
    let probe = matches!(rule.when, Condition::ProbeFailing { .. });
    match rule.action {
        PolicyAction::RestartService if !matches!(rule.when, Condition::ServiceFailing { .. }) => {
            return Some("action: restart-service needs a service-failing condition")
        }
        PolicyAction::RebootNode if !probe => {
            return Some("action: reboot-node needs a probe-failing condition (a VM's fault never reboots the node)")
        }
        PolicyAction::RestartVm | PolicyAction::ReloadImage if probe => {
            return Some("action: a probe-failing rule may only notify or reboot the node")
        }
        _ => {}
    }
    if probe && rule.vm.is_some() {
        return Some("vm: a probe-failing rule applies to the node, not to a VM");
    }
    None
}

fn invalid(msg: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Invalid, msg)
}

fn range(rule: &str, field: &str, v: u32, (lo, hi): (u32, u32)) -> Result<(), ErrorReply> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(invalid(format!("rule {rule:?}: {field}: {v} is out of range {lo}..={hi}")))
    }
}

/// Checks `policy` for `owner` on `cluster`; the error names the rule and
/// the field. An empty policy is valid (setting it removes the owner's
/// policy).
pub fn validate(owner: Owner, cluster: ClusterId, policy: &Policy, ctx: &dyn PolicyContext) -> Result<(), ErrorReply> {
    if let Owner::Tenant(lease) = owner {
        if ctx.lease_cluster(lease) != Some(cluster) {
            return Err(invalid(format!("cluster: {} is not the cluster of lease {}", cluster.0, lease.0)));
        }
    }
    if policy.rules.len() > MAX_RULES {
        return Err(ErrorReply::new(
            ErrorCode::Limit,
            format!("rules: {} rules, a policy has at most {MAX_RULES} (MAX_RULES)", policy.rules.len()),
        ));
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        if !valid_rule_name(&rule.name) {
            return Err(invalid(format!(
                "rule {}: name: must be 1 to {MAX_RULE_NAME} characters of a-z, 0-9, '.', '_' or '-'",
                i + 1
            )));
        }
        if policy.rules.iter().take(i).any(|r| r.name == rule.name) {
            return Err(invalid(format!("rule {:?}: name: used by an earlier rule", rule.name)));
        }
        check_rule(owner, cluster, rule, ctx)?;
    }
    Ok(())
}

/// One rule (its name already checked).
fn check_rule(owner: Owner, cluster: ClusterId, rule: &PolicyRule, ctx: &dyn PolicyContext) -> Result<(), ErrorReply> {
    let name = rule.name.as_str();
    match &rule.when {
        Condition::HeartbeatMissed { secs } => range(name, "when.secs", *secs, HEARTBEAT_SECS)?,
        Condition::ProbeFailing { count, .. } => range(name, "when.count", *count, FAILURE_COUNT)?,
        Condition::ServiceFailing { service, count, window_secs } => {
            if service != "*" && !valid_service_name(service) {
                return Err(invalid(format!(
                    "rule {name:?}: when.service: must be \"*\" or 1 to {MAX_SERVICE_NAME} characters of A-Z, a-z, \
                     0-9, '.', '_' or '-'"
                )));
            }
            range(name, "when.count", *count, FAILURE_COUNT)?;
            range(name, "when.window_secs", *window_secs, WINDOW_SECS)?;
        }
        Condition::VmStoppedAbnormally => {}
    }
    range(name, "backoff_secs", rule.backoff_secs, BACKOFF_SECS)?;
    range(name, "max_repeats", rule.max_repeats, MAX_REPEATS)?;
    range(name, "window_secs", rule.window_secs, WINDOW_SECS)?;
    if let Some(why) = powers_refusal(owner, rule) {
        let whose = if owner == Owner::Landlord { "landlord" } else { "tenant" };
        return Err(invalid(format!("rule {name:?}: {why} ({whose} policy)")));
    }
    if let Some(vm) = rule.vm {
        let no_such = || ErrorReply::new(ErrorCode::NotFound, format!("rule {name:?}: vm: no such VM {}", vm.0));
        let (lease, vm_cluster) = ctx.vm(vm).ok_or_else(no_such)?;
        if let Owner::Tenant(l) = owner {
            if l != lease {
                // Exactly like a missing VM: other leases' VMs stay invisible.
                return Err(no_such());
            }
        }
        if vm_cluster != cluster {
            return Err(invalid(format!("rule {name:?}: vm: VM {} is not in cluster {}", vm.0, cluster.0)));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::monitor::Probe;
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Lease 1 in cluster 10 with VM 100; lease 2 in cluster 10 with VM
    /// 200; lease 3 in cluster 30 with VM 300.
    struct Ctx;
    impl PolicyContext for Ctx {
        fn vm(&self, vm: VmId) -> Option<(LeaseId, ClusterId)> {
            match vm.0 {
                100 => Some((LeaseId(1), ClusterId(10))),
                200 => Some((LeaseId(2), ClusterId(10))),
                300 => Some((LeaseId(3), ClusterId(30))),
                _ => None,
            }
        }
        fn lease_cluster(&self, lease: LeaseId) -> Option<ClusterId> {
            match lease.0 {
                1 | 2 => Some(ClusterId(10)),
                3 => Some(ClusterId(30)),
                _ => None,
            }
        }
    }

    const T1: Owner = Owner::Tenant(LeaseId(1));
    const C: ClusterId = ClusterId(10);

    fn rule(name: &str, when: Condition, action: PolicyAction) -> PolicyRule {
        PolicyRule {
            name: name.to_string(),
            vm: None,
            when,
            action,
            notify: false,
            backoff_secs: 10,
            max_repeats: 3,
            window_secs: 300,
        }
    }

    fn hb() -> Condition {
        Condition::HeartbeatMissed { secs: 10 }
    }

    fn probe() -> Condition {
        Condition::ProbeFailing { probe: Probe::Disk, count: 3 }
    }

    fn svc(name: &str) -> Condition {
        Condition::ServiceFailing { service: name.to_string(), count: 2, window_secs: 60 }
    }

    fn check(owner: Owner, rules: Vec<PolicyRule>) -> Result<(), ErrorReply> {
        validate(owner, C, &Policy { rules }, &Ctx)
    }

    fn refused(owner: Owner, rules: Vec<PolicyRule>, code: ErrorCode, msg: &str) {
        let e = check(owner, rules).unwrap_err();
        assert_eq!(e.code, code, "{e}");
        assert_eq!(e.message, msg);
    }

    #[test]
    fn valid_policies_are_accepted() {
        assert!(check(Owner::Landlord, vec![]).is_ok());
        assert!(check(T1, vec![]).is_ok());
        let landlord = vec![
            rule("hb", hb(), PolicyAction::RestartVm),
            rule("disk", probe(), PolicyAction::RebootNode),
            rule("disk.notify", probe(), PolicyAction::Notify),
            rule("crash", Condition::VmStoppedAbnormally, PolicyAction::RestartVm),
            PolicyRule { vm: Some(VmId(200)), ..rule("one-vm", hb(), PolicyAction::Notify) },
        ];
        assert!(check(Owner::Landlord, landlord).is_ok());
        let tenant = vec![
            rule("hb", hb(), PolicyAction::ReloadImage),
            rule("web", svc("web"), PolicyAction::RestartService),
            rule("any_svc", svc("*"), PolicyAction::RestartVm),
            rule("crash", Condition::VmStoppedAbnormally, PolicyAction::Notify),
            PolicyRule { vm: Some(VmId(100)), ..rule("mine", hb(), PolicyAction::RestartVm) },
        ];
        assert!(check(T1, tenant).is_ok());
        // Range edges.
        let edges = PolicyRule {
            backoff_secs: 0,
            max_repeats: 100,
            window_secs: 86_400,
            ..rule("e", Condition::HeartbeatMissed { secs: 3600 }, PolicyAction::Notify)
        };
        assert!(check(T1, vec![edges]).is_ok());
        let full: Vec<PolicyRule> = (0..MAX_RULES).map(|i| rule(&i.to_string(), hb(), PolicyAction::Notify)).collect();
        assert!(check(T1, full).is_ok());
        assert!(validate(Owner::Landlord, ClusterId(999), &Policy::default(), &Ctx).is_ok());
    }

    #[test]
    fn counts_and_names_are_limited() {
        let many: Vec<PolicyRule> = (0..=MAX_RULES).map(|i| rule(&i.to_string(), hb(), PolicyAction::Notify)).collect();
        refused(T1, many, ErrorCode::Limit, "rules: 33 rules, a policy has at most 32 (MAX_RULES)");
        let msg = "rule 1: name: must be 1 to 64 characters of a-z, 0-9, '.', '_' or '-'";
        refused(T1, vec![rule("", hb(), PolicyAction::Notify)], ErrorCode::Invalid, msg);
        refused(T1, vec![rule("Web", hb(), PolicyAction::Notify)], ErrorCode::Invalid, msg);
        refused(T1, vec![rule(&"a".repeat(65), hb(), PolicyAction::Notify)], ErrorCode::Invalid, msg);
        assert!(check(T1, vec![rule(&"a".repeat(64), hb(), PolicyAction::Notify)]).is_ok());
        refused(
            T1,
            vec![rule("a", hb(), PolicyAction::Notify), rule("a", hb(), PolicyAction::RestartVm)],
            ErrorCode::Invalid,
            "rule \"a\": name: used by an earlier rule",
        );
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let cases: Vec<(PolicyRule, &str)> = vec![
            (
                rule("hb", Condition::HeartbeatMissed { secs: 0 }, PolicyAction::Notify),
                "rule \"hb\": when.secs: 0 is out of range 1..=3600",
            ),
            (
                rule("hb", Condition::HeartbeatMissed { secs: 3601 }, PolicyAction::Notify),
                "rule \"hb\": when.secs: 3601 is out of range 1..=3600",
            ),
            (
                rule(
                    "s",
                    Condition::ServiceFailing { service: "*".into(), count: 0, window_secs: 1 },
                    PolicyAction::Notify,
                ),
                "rule \"s\": when.count: 0 is out of range 1..=100",
            ),
            (
                rule(
                    "s",
                    Condition::ServiceFailing { service: "*".into(), count: 1, window_secs: 86_401 },
                    PolicyAction::Notify,
                ),
                "rule \"s\": when.window_secs: 86401 is out of range 1..=86400",
            ),
            (
                PolicyRule { backoff_secs: 3601, ..rule("b", hb(), PolicyAction::Notify) },
                "rule \"b\": backoff_secs: 3601 is out of range 0..=3600",
            ),
            (
                PolicyRule { max_repeats: 0, ..rule("m", hb(), PolicyAction::Notify) },
                "rule \"m\": max_repeats: 0 is out of range 1..=100",
            ),
            (
                PolicyRule { max_repeats: 101, ..rule("m", hb(), PolicyAction::Notify) },
                "rule \"m\": max_repeats: 101 is out of range 1..=100",
            ),
            (
                PolicyRule { window_secs: 0, ..rule("w", hb(), PolicyAction::Notify) },
                "rule \"w\": window_secs: 0 is out of range 1..=86400",
            ),
        ];
        for (r, msg) in cases {
            refused(T1, vec![r], ErrorCode::Invalid, msg);
        }
        refused(
            Owner::Landlord,
            vec![rule("p", Condition::ProbeFailing { probe: Probe::Tpm, count: 101 }, PolicyAction::Notify)],
            ErrorCode::Invalid,
            "rule \"p\": when.count: 101 is out of range 1..=100",
        );
        for bad in ["", "a b", "x/y", &"s".repeat(65)] {
            let e = check(T1, vec![rule("s", svc(bad), PolicyAction::Notify)]).unwrap_err();
            assert!(e.message.starts_with("rule \"s\": when.service: must be"), "{e}");
        }
        assert!(check(T1, vec![rule("s", svc("Web-1.x_y"), PolicyAction::Notify)]).is_ok());
    }

    #[test]
    fn owners_keep_to_their_powers() {
        let inv = ErrorCode::Invalid;
        refused(
            T1,
            vec![rule("p", probe(), PolicyAction::Notify)],
            inv,
            "rule \"p\": when: probe-failing is for the landlord only (tenant policy)",
        );
        refused(
            Owner::Landlord,
            vec![rule("s", svc("web"), PolicyAction::Notify)],
            inv,
            "rule \"s\": when: service-failing is for tenants only (landlord policy)",
        );
        refused(
            Owner::Landlord,
            vec![rule("r", hb(), PolicyAction::ReloadImage)],
            inv,
            "rule \"r\": action: reload-image is for tenants only (landlord policy)",
        );
        refused(
            Owner::Landlord,
            vec![rule("r", hb(), PolicyAction::RestartService)],
            inv,
            "rule \"r\": action: restart-service is for tenants only (landlord policy)",
        );
        refused(
            T1,
            vec![rule("r", hb(), PolicyAction::RebootNode)],
            inv,
            "rule \"r\": action: reboot-node is for the landlord only (tenant policy)",
        );
        refused(
            T1,
            vec![rule("r", hb(), PolicyAction::RestartService)],
            inv,
            "rule \"r\": action: restart-service needs a service-failing condition (tenant policy)",
        );
        for when in [hb(), Condition::VmStoppedAbnormally] {
            let e = check(Owner::Landlord, vec![rule("r", when, PolicyAction::RebootNode)]).unwrap_err();
            assert_eq!(e.code, inv);
            assert!(e.message.contains("reboot-node needs a probe-failing condition"), "{e}");
        }
        refused(
            Owner::Landlord,
            vec![rule("p", probe(), PolicyAction::RestartVm)],
            inv,
            "rule \"p\": action: a probe-failing rule may only notify or reboot the node (landlord policy)",
        );
        refused(
            Owner::Landlord,
            vec![PolicyRule { vm: Some(VmId(100)), ..rule("p", probe(), PolicyAction::Notify) }],
            inv,
            "rule \"p\": vm: a probe-failing rule applies to the node, not to a VM (landlord policy)",
        );
    }

    #[test]
    fn tenants_keep_to_their_cluster_and_vms() {
        let e = validate(T1, ClusterId(30), &Policy::default(), &Ctx).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::Invalid, "cluster: 30 is not the cluster of lease 1"));
        let e = validate(Owner::Tenant(LeaseId(9)), C, &Policy::default(), &Ctx).unwrap_err();
        assert_eq!(e.message, "cluster: 10 is not the cluster of lease 9");
        // Another lease's VM (same cluster) reads exactly like a missing one.
        let other = PolicyRule { vm: Some(VmId(200)), ..rule("x", hb(), PolicyAction::RestartVm) };
        let missing = PolicyRule { vm: Some(VmId(201)), ..rule("x", hb(), PolicyAction::RestartVm) };
        let e1 = check(T1, vec![other]).unwrap_err();
        let e2 = check(T1, vec![missing.clone()]).unwrap_err();
        assert_eq!(e1.code, ErrorCode::NotFound);
        assert_eq!(e2.code, ErrorCode::NotFound);
        assert_eq!(e1.message.replace("200", "201"), e2.message);
        let e = check(Owner::Landlord, vec![missing]).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::NotFound, "rule \"x\": vm: no such VM 201"));
        // The landlord names any VM, but of the policy's cluster only.
        let elsewhere = PolicyRule { vm: Some(VmId(300)), ..rule("x", hb(), PolicyAction::RestartVm) };
        refused(Owner::Landlord, vec![elsewhere], ErrorCode::Invalid, "rule \"x\": vm: VM 300 is not in cluster 10");
    }
}
