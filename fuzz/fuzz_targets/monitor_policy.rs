//! Fuzzes corrective-action policies as a console sends them: the policy
//! decoder, `validate` for the landlord and for a tenant against a small
//! fixed node, and the decision engine driven through rounds of hostile
//! facts with the policy installed unvalidated (the engine must keep to
//! the owners' powers and its memory bounds on its own). Nothing may
//! panic; a validated policy keeps to its owner's powers; a tenant's
//! decisions only name its own VMs; the landlord never restarts a
//! service; the engine's memory stays within its bounds.
//!
//! The fixed node: lease 1 and lease 2 in cluster 1 with VMs 1 and 2,
//! lease 3 in cluster 2 with VM 3.
//!
//! Input layout:
//!
//! - bytes 0-1 (LE): length L of the policy (at most 4096);
//! - L bytes: a postcard-encoded `mgmt_proto::monitor::Policy`; it is
//!   installed for the landlord and lease 1 in cluster 1 and lease 3 in
//!   cluster 2;
//! - then rounds (at most 64), each:
//!   - u16 LE: time step in units of 100 ms;
//!   - control byte: bit 0 bumps the policies' version, bit 1 removes them
//!     for this round, bit 2 forgets VM `(b >> 3) % 4` before the round;
//!   - probe byte: probe `b % 5` has failed `b >> 3` times in a row;
//!   - per VM 1 to 3, a flags byte: bit 0 present, bit 1 running, bit 2
//!     agent attached, bit 3 stopped abnormally, bit 4 started, bits 5-7
//!     the number of service failures that follow; then, when the agent is
//!     attached, the heartbeat age in seconds (one byte); then one byte per
//!     service failure naming the service (`web`, `db`, an invalid name,
//!     or `s<byte>`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgmt_proto::monitor::engine::{Engine, Facts, VmFacts, MAX_SERVICES_PER_VM};
use mgmt_proto::monitor::policy::{powers_refusal, validate, Policies, PolicyContext, MAX_POLICIES, MAX_RULES};
use mgmt_proto::monitor::{Owner, Policy, PolicyAction, Probe, Target, VersionedPolicy};
use mgmt_proto::msg::{ClusterId, LeaseId, VmId};

const MAX_POLICY_BYTES: usize = 4096;
const MAX_ROUNDS: usize = 64;

struct Node;

impl PolicyContext for Node {
    fn vm(&self, vm: VmId) -> Option<(LeaseId, ClusterId)> {
        match vm.0 {
            1 => Some((LeaseId(1), ClusterId(1))),
            2 => Some((LeaseId(2), ClusterId(1))),
            3 => Some((LeaseId(3), ClusterId(2))),
            _ => None,
        }
    }

    fn lease_cluster(&self, lease: LeaseId) -> Option<ClusterId> {
        match lease.0 {
            1 | 2 => Some(ClusterId(1)),
            3 => Some(ClusterId(2)),
            _ => None,
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

fn service_name(b: u8) -> String {
    match b {
        0 => "web".into(),
        1 => "db".into(),
        2 => "not a name".into(),
        _ => format!("s{b}"),
    }
}

fn install(policy: &Policy, version: u32) -> Policies {
    let vp = VersionedPolicy { version, policy: policy.clone() };
    [
        ((ClusterId(1), Owner::Landlord), vp.clone()),
        ((ClusterId(1), Owner::Tenant(LeaseId(1))), vp.clone()),
        ((ClusterId(2), Owner::Tenant(LeaseId(3))), vp),
    ]
    .into_iter()
    .collect()
}

fn check_validation(policy: &Policy) {
    for (owner, cluster) in [
        (Owner::Landlord, ClusterId(1)),
        (Owner::Tenant(LeaseId(1)), ClusterId(1)),
        (Owner::Tenant(LeaseId(3)), ClusterId(2)),
    ] {
        if validate(owner, cluster, policy, &Node).is_ok() {
            assert!(policy.rules.len() <= MAX_RULES);
            for r in &policy.rules {
                assert!(powers_refusal(owner, r).is_none(), "{owner:?} {r:?}");
                if let (Owner::Tenant(l), Some(vm)) = (owner, r.vm) {
                    assert_eq!(Node.vm(vm).map(|(lease, _)| lease), Some(l));
                }
            }
        }
    }
    // A tenant never sets a policy for another cluster than its lease's.
    assert!(validate(Owner::Tenant(LeaseId(1)), ClusterId(2), policy, &Node).is_err());
    assert!(validate(Owner::Tenant(LeaseId(9)), ClusterId(1), policy, &Node).is_err());
}

fn vm_facts(c: &mut Cursor<'_>, vm: u32) -> Option<Option<VmFacts>> {
    let flags = c.u8()?;
    let age = if flags & 4 != 0 { Some(u64::from(c.u8()?) * 1000) } else { None };
    let mut service_failures = Vec::new();
    for _ in 0..flags >> 5 {
        service_failures.push(service_name(c.u8()?));
    }
    if flags & 1 == 0 {
        return Some(None);
    }
    let (lease, cluster) = Node.vm(VmId(vm))?;
    Some(Some(VmFacts {
        vm: VmId(vm),
        lease,
        cluster,
        running: flags & 2 != 0,
        heartbeat_age_ms: age,
        service_failures,
        stopped_abnormally: flags & 8 != 0,
        started: flags & 16 != 0,
    }))
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let Some(len) = c.u16() else { return };
    let Some(bytes) = c.take(usize::from(len).min(MAX_POLICY_BYTES)) else { return };
    let Ok(policy) = postcard::from_bytes::<Policy>(bytes) else { return };
    check_validation(&policy);

    let mut engine = Engine::new();
    let mut version = 1u32;
    let mut now_ms = 0u64;
    for _ in 0..MAX_ROUNDS {
        let (Some(dt), Some(control), Some(probe)) = (c.u16(), c.u8(), c.u8()) else { break };
        now_ms += u64::from(dt) * 100;
        if control & 1 != 0 {
            version = version.wrapping_add(1);
        }
        if control & 4 != 0 {
            engine.forget_vm(VmId(u32::from(control >> 3) % 4));
        }
        let mut vms = Vec::new();
        for vm in 1..=3 {
            match vm_facts(&mut c, vm) {
                Some(Some(f)) => vms.push(f),
                Some(None) => {}
                None => return,
            }
        }
        let probes = vec![(Probe::ALL[usize::from(probe % 5)], u32::from(probe >> 3))];
        let policies = if control & 2 != 0 { Policies::new() } else { install(&policy, version) };
        let decisions = engine.step(&policies, &Facts { now_ms, vms, probes });
        if policies.is_empty() {
            assert!(decisions.is_empty());
        }
        for d in &decisions {
            let vm = match &d.target {
                Target::Node => None,
                Target::Vm(v) | Target::Service(v, _) => Some(*v),
            };
            match d.owner {
                Owner::Tenant(l) => {
                    assert!(vm.is_some_and(|v| Node.vm(v).map(|(lease, _)| lease) == Some(l)), "{d:?}");
                    assert_ne!(d.action, PolicyAction::RebootNode);
                }
                Owner::Landlord => {
                    assert!(!matches!(d.action, PolicyAction::RestartService | PolicyAction::ReloadImage), "{d:?}");
                }
            }
            assert_eq!(d.policy_version, version);
        }
        let s = engine.size();
        assert!(s.policies <= 3 && s.policies <= MAX_POLICIES);
        assert!(s.max_rules_per_policy <= MAX_RULES);
        assert!(s.max_keys_per_rule <= 3 * MAX_SERVICES_PER_VM);
        assert!(s.max_services_per_vm <= MAX_SERVICES_PER_VM);
        assert!(s.max_acts_per_key <= 100 && s.max_failures_per_key <= 100);
    }
});
