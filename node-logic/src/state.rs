//! The node's management state: what it holds, and how a fresh one is made.
//! Requests on it are in [`crate::dispatch`] and the modules it calls.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use mgmt_proto::authz::Ownership;
use mgmt_proto::crypto::{Entropy, EntropyError, KeyPair, PublicKey};
use mgmt_proto::monitor::policy::Policies;
use mgmt_proto::msg::{
    AuditEntry, BoundaryRule, ClusterId, ImageVerifyKey, LeaseId, RuleId, UploadId, VmId, VmSpec, VmState,
};
use mgmt_proto::session::KeyTable;

use crate::images::{ImageStore, MemImageStore};
use crate::limits::StateLimits;
use crate::uploads::{Image, Upload};

/// A lease as the node records it.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Cluster its VMs join.
    pub cluster: ClusterId,
    /// U_T, the node's tenant public key.
    pub node_key: PublicKey,
    /// Key that must sign this lease's images, if set.
    pub signing_key: Option<ImageVerifyKey>,
    /// Nodes (their U_L) the tenant approved as replica partners.
    pub replica_partners: Vec<PublicKey>,
}

/// A VM as the node records it: what the consoles asked for. Its console
/// output and counters belong to the running VM (the [`crate::NodeBackend`]).
#[derive(Debug, Clone)]
pub struct Vm {
    /// Its definition.
    pub spec: VmSpec,
    /// Its state.
    pub state: VmState,
    /// Times started (each start is a new run).
    pub starts: u64,
    /// The consoles' last word on it: started (and not stopped since). A
    /// node reboot brings such VMs back running, as an operator expects.
    pub autostart: bool,
}

/// The node's management state: keys, leases, VMs, images, rules, policies,
/// audit log.
pub struct NodeState {
    pub(crate) rng: Box<dyn Entropy>,
    /// Where image bytes live.
    pub(crate) store: Box<dyn ImageStore>,
    /// What consoles may make the node keep.
    pub limits: StateLimits,
    /// Index of the oldest kept audit entry (older ones were trimmed).
    pub audit_base: u64,
    /// The chain value before the oldest kept audit entry.
    pub audit_anchor: [u8; 32],
    /// Node keys and registered console keys; the sessions' key directory.
    pub keys: KeyTable,
    /// U_L.
    pub landlord_key: PublicKey,
    /// Leases.
    pub leases: BTreeMap<LeaseId, Lease>,
    /// VMs.
    pub vms: BTreeMap<VmId, Vm>,
    /// Images by name.
    pub images: BTreeMap<String, Image>,
    /// Uploads in progress.
    pub uploads: BTreeMap<UploadId, Upload>,
    /// Cluster boundaries.
    pub boundaries: BTreeMap<ClusterId, Vec<BoundaryRule>>,
    /// Tenant sub-boundary rules.
    pub sub_rules: BTreeMap<RuleId, (LeaseId, BoundaryRule)>,
    /// The audit log (the newest [`StateLimits::max_audit`] entries).
    pub audit: Vec<AuditEntry>,
    /// Corrective-action policies by cluster and owner (at most
    /// [`mgmt_proto::monitor::policy::MAX_POLICIES`]). Rules naming a VM
    /// that is later destroyed stay in place and simply never match again;
    /// ending a lease removes its policies.
    pub policies: Policies,
    /// Membership of a facility: placed VMs, fences, replicas.
    pub fleet: crate::fleet::Fleet,
    /// Set by `Reboot`.
    pub reboot_requested: bool,
    /// Set by `Shutdown`.
    pub shutdown_requested: bool,
    /// Set by `Suspend`, cleared by `Resume`.
    pub suspended: bool,
    pub(crate) next_id: u32,
    pub(crate) clock: u64,
    /// Set once the host supplies real time (`set_clock`); the audit log
    /// then records it instead of counting entries.
    pub(crate) external_clock: bool,
}

impl NodeState {
    /// A freshly provisioned node: generates the landlord pair and registers
    /// the landlord console's key. Returns the state (U_L is `landlord_key`).
    pub fn provision(mut rng: Box<dyn Entropy>, landlord_console: PublicKey) -> Result<NodeState, EntropyError> {
        let landlord = KeyPair::generate(&mut *rng)?;
        let keys = KeyTable { landlord: Some((landlord.secret.clone(), landlord_console)), ..KeyTable::default() };
        Ok(NodeState {
            rng,
            store: default_store(),
            limits: StateLimits::DEFAULT,
            audit_base: 0,
            audit_anchor: [0; 32],
            keys,
            landlord_key: landlord.public,
            leases: BTreeMap::new(),
            vms: BTreeMap::new(),
            images: BTreeMap::new(),
            uploads: BTreeMap::new(),
            boundaries: BTreeMap::new(),
            sub_rules: BTreeMap::new(),
            audit: Vec::new(),
            policies: Policies::new(),
            fleet: crate::fleet::Fleet::default(),
            reboot_requested: false,
            shutdown_requested: false,
            suspended: false,
            next_id: 1,
            clock: 0,
            external_clock: false,
        })
    }

    /// Uses `store` for image bytes (and `limits`); call before serving.
    pub fn with_image_store(mut self, store: Box<dyn ImageStore>, limits: StateLimits) -> NodeState {
        self.store = store;
        self.limits = limits;
        self
    }

    /// Re-registers the landlord console key (provisioning changed it).
    pub fn set_landlord_console(&mut self, key: PublicKey) {
        if let Some((_, console)) = self.keys.landlord.as_mut() {
            *console = key;
        }
    }

    /// The next id for a lease, VM, upload or rule.
    pub(crate) fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Supplies the time (seconds since the node booted) for audit entries
    /// and status; it never goes backwards.
    pub fn set_clock(&mut self, now_secs: u64) {
        self.external_clock = true;
        self.clock = self.clock.max(now_secs);
    }

    /// The node's time as the state knows it: seconds since boot once the
    /// host supplies them ([`Self::set_clock`]), else the audit entries
    /// counted. Backends without a clock of their own report it as uptime.
    pub fn clock(&self) -> u64 {
        self.clock
    }
}

impl Ownership for NodeState {
    fn vm_lease(&self, vm: VmId) -> Option<LeaseId> {
        self.vms.get(&vm).map(|v| v.spec.lease)
    }

    fn rule_lease(&self, rule: RuleId) -> Option<LeaseId> {
        self.sub_rules.get(&rule).map(|(l, _)| *l)
    }
}

// The state is served from the CPU that runs the consoles while VMs run on
// others (and from test threads): checked in every build, bare-metal too.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<NodeState>();
};

/// The default image store: memory, as a node without a disk has.
pub(crate) fn default_store() -> Box<dyn ImageStore> {
    Box::new(MemImageStore::new(StateLimits::DEFAULT.max_images_bytes, MemImageStore::accept_all))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state is served from the CPU (or thread) running the consoles
    /// while VMs run elsewhere: it must be movable there.
    fn _assert_send<T: Send>() {}

    #[test]
    fn node_state_is_send() {
        _assert_send::<NodeState>();
        _assert_send::<Box<dyn crate::NodeBackend>>();
    }
}
