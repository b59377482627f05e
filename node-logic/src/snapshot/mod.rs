//! The snapshot: everything the node keeps across reboots, in the format
//! this build writes ([`SNAPSHOT_VERSION`]), with decoding of older ones
//! ([`legacy`]) and the state's save ([`NodeState::snapshot`]) and restore.

pub(crate) mod legacy;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use mgmt_proto::crypto::{Entropy, KeyPair, PublicKey, SecretKey};
use mgmt_proto::fleet::MAX_CLUSTER_MEMBERS;
use mgmt_proto::monitor::policy::{Policies, MAX_POLICIES};
use mgmt_proto::monitor::{Owner, VersionedPolicy};
use mgmt_proto::msg::{AuditEntry, BoundaryRule, ClusterId, ImageVerifyKey, LeaseId, RuleId, VmId, VmSpec, VmState};
use mgmt_proto::session::KeyTable;

use crate::images::{blocks_for, place, ImageStore, BLOCK};
use crate::limits::StateLimits;
use crate::state::default_store;
use crate::uploads::Image;
use crate::{Lease, NodeState, Vm};

/// One lease in a [`Snapshot`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LeaseSnapshot {
    /// The lease.
    pub lease: LeaseId,
    /// R_T (stays on the node, in its sealed storage).
    pub secret: [u8; 32],
    /// The tenant console's registered key.
    pub console: PublicKey,
    /// Cluster its VMs join.
    pub cluster: ClusterId,
    /// Image signing key, if set.
    pub signing_key: Option<ImageVerifyKey>,
}

/// One VM definition in a [`Snapshot`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmSnapshot {
    /// Its id.
    pub id: VmId,
    /// Its definition.
    pub spec: VmSpec,
    /// Times started.
    pub starts: u64,
    /// Started by a console and not stopped since: restart it after a reboot.
    pub autostart: bool,
}

/// The snapshot format this build writes (3: images live in the image
/// store, the snapshot keeps their extents; 4: VM definitions carry an
/// initrd; 5: corrective-action policies; 6: facility records).
pub const SNAPSHOT_VERSION: u16 = 6;

/// Everything the node keeps across reboots: keys, leases, VM definitions,
/// images, boundaries, rules, audit log. The hypervisor stores it on its
/// encrypted disk; it holds private keys, so it never leaves the node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Format version ([`SNAPSHOT_VERSION`]).
    pub version: u16,
    /// R_L.
    pub landlord_secret: [u8; 32],
    /// The landlord console's registered key.
    pub landlord_console: PublicKey,
    /// Leases.
    pub leases: Vec<LeaseSnapshot>,
    /// VM definitions.
    pub vms: Vec<VmSnapshot>,
    /// Stored images: name and where the store holds them.
    pub images: Vec<(String, Image)>,
    /// Cluster boundaries.
    pub boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    /// Tenant sub-boundaries.
    pub sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    /// The audit log.
    pub audit: Vec<AuditEntry>,
    /// The chain value before the oldest kept audit entry (zeros if none
    /// was ever trimmed).
    pub audit_anchor: [u8; 32],
    /// Next id to hand out.
    pub next_id: u32,
    /// Last audit time.
    pub clock: u64,
    /// Corrective-action policies, by cluster and owner (version 5).
    pub policies: Vec<((ClusterId, Owner), VersionedPolicy)>,
    /// Facility records of VMs placed by a facility controller (version 6).
    pub fleet: Vec<(VmId, crate::fleet::FleetVm)>,
    /// Where each cluster's VMs are in the facility (version 6).
    pub fleet_members: Vec<(ClusterId, Vec<[u8; 4]>)>,
    /// Replica partners each lease's tenant approved (version 6).
    pub replica_partners: Vec<(LeaseId, Vec<PublicKey>)>,
    /// Images of a version 1 or 2 snapshot, which carried their bytes:
    /// [`NodeState::restore_with`] moves them into the image store.
    #[serde(skip)]
    pub legacy_images: Vec<(String, Vec<u8>, [u8; 32])>,
}

impl Snapshot {
    /// Decodes a stored snapshot of this or an earlier format version.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        match postcard::from_bytes::<Snapshot>(bytes) {
            Ok(s) if s.version == SNAPSHOT_VERSION => return Ok(s),
            Ok(s) if s.version > SNAPSHOT_VERSION => {
                return Err(format!("snapshot version {} is newer than this build reads", s.version))
            }
            _ => {}
        }
        legacy::decode(bytes)
    }
}

impl NodeState {
    /// What must survive a reboot (uploads in progress do not).
    pub fn snapshot(&self) -> Snapshot {
        let (landlord_secret, landlord_console) =
            self.keys.landlord.as_ref().map_or(([0; 32], self.landlord_key), |(s, c)| (s.0, *c));
        Snapshot {
            version: SNAPSHOT_VERSION,
            landlord_secret,
            landlord_console,
            leases: self
                .leases
                .iter()
                .filter_map(|(id, l)| {
                    let (secret, console) = self.keys.tenants.get(id)?;
                    Some(LeaseSnapshot {
                        lease: *id,
                        secret: secret.0,
                        console: *console,
                        cluster: l.cluster,
                        signing_key: l.signing_key,
                    })
                })
                .collect(),
            vms: self
                .vms
                .iter()
                .map(|(id, v)| VmSnapshot { id: *id, spec: v.spec.clone(), starts: v.starts, autostart: v.autostart })
                .collect(),
            images: self.images.iter().map(|(n, i)| (n.clone(), *i)).collect(),
            boundaries: self.boundaries.iter().map(|(c, r)| (*c, r.clone())).collect(),
            sub_rules: self.sub_rules.iter().map(|(id, (l, r))| (*id, *l, *r)).collect(),
            audit: self.audit.clone(),
            audit_anchor: self.audit_anchor,
            next_id: self.next_id,
            clock: self.clock,
            policies: self.policies.iter().map(|(k, p)| (*k, p.clone())).collect(),
            fleet: self.fleet.vms.iter().map(|(id, f)| (*id, *f)).collect(),
            fleet_members: self.fleet.members.iter().map(|(c, m)| (*c, m.clone())).collect(),
            replica_partners: self
                .leases
                .iter()
                .filter(|(_, l)| !l.replica_partners.is_empty())
                .map(|(id, l)| (*id, l.replica_partners.clone()))
                .collect(),
            legacy_images: Vec::new(),
        }
    }

    /// [`Self::restore`] with the image store the snapshot's images live
    /// in. Images of an older snapshot are written into it; one that does
    /// not fit is dropped and named in the returned list.
    pub fn restore_with(
        rng: Box<dyn Entropy>,
        mut snap: Snapshot,
        store: Box<dyn ImageStore>,
        limits: StateLimits,
    ) -> Option<(NodeState, Vec<String>)> {
        let legacy = core::mem::take(&mut snap.legacy_images);
        let mut state = NodeState::restore(rng, snap)?.with_image_store(store, limits);
        let capacity = state.store.capacity_blocks();
        state.images.retain(|_, i| i.extent.end() <= capacity);
        let mut dropped = Vec::new();
        for (name, data, sha256) in legacy {
            let size = data.len() as u64;
            let used = state.used_extents();
            let stored = place(&used, blocks_for(size), capacity)
                .filter(|_| size <= state.limits.max_image_bytes)
                .and_then(|extent| {
                    state.store.write(extent.start * BLOCK, &data).ok()?;
                    Some(Image { extent, size, sha256 })
                });
            match stored {
                Some(img) => {
                    state.images.insert(name, img);
                }
                None => dropped.push(name),
            }
        }
        let _ = state.store.flush();
        Some((state, dropped))
    }

    /// Rebuilds the state a [`Snapshot`] holds. VMs a console had started
    /// come back wanted running (one more start); the rest stopped. A
    /// protected facility VM never comes back running by itself: it may
    /// have been healed elsewhere while this node was away, so it waits
    /// for the facility controller's start (docs/fleet.md).
    /// `None` if a stored key is not a valid X25519 secret. Policies past
    /// [`MAX_POLICIES`] are dropped (they were validated when set).
    pub fn restore(rng: Box<dyn Entropy>, snap: Snapshot) -> Option<NodeState> {
        let landlord = KeyPair::from_secret(SecretKey(snap.landlord_secret))?;
        let mut keys =
            KeyTable { landlord: Some((landlord.secret.clone(), snap.landlord_console)), ..KeyTable::default() };
        let partners: BTreeMap<LeaseId, Vec<PublicKey>> = snap
            .replica_partners
            .into_iter()
            .filter(|(_, p)| p.len() <= mgmt_proto::fleet::MAX_REPLICA_PARTNERS)
            .collect();
        let mut leases = BTreeMap::new();
        for l in snap.leases {
            let pair = KeyPair::from_secret(SecretKey(l.secret))?;
            keys.tenants.insert(l.lease, (pair.secret.clone(), l.console));
            let replica_partners = partners.get(&l.lease).cloned().unwrap_or_default();
            leases.insert(
                l.lease,
                Lease { cluster: l.cluster, node_key: pair.public, signing_key: l.signing_key, replica_partners },
            );
        }
        let fleet: BTreeMap<VmId, crate::fleet::FleetVm> = snap.fleet.into_iter().collect();
        let waits_for_controller = |id: &VmId| fleet.get(id).is_some_and(|f| f.spec.protected || f.replica);
        let mut policies = Policies::new();
        for (key, p) in snap.policies {
            if policies.len() < MAX_POLICIES || policies.contains_key(&key) {
                policies.insert(key, p);
            }
        }
        Some(NodeState {
            rng,
            store: default_store(),
            limits: StateLimits::DEFAULT,
            audit_base: snap.audit.first().map_or(0, |e| e.index),
            audit_anchor: snap.audit_anchor,
            keys,
            landlord_key: landlord.public,
            leases,
            vms: snap
                .vms
                .into_iter()
                .map(|v| {
                    let (state, starts) = if v.autostart && !waits_for_controller(&v.id) {
                        (VmState::Running, v.starts.saturating_add(1))
                    } else {
                        (VmState::Stopped, v.starts)
                    };
                    (v.id, Vm { spec: v.spec, state, starts, autostart: v.autostart })
                })
                .collect(),
            images: snap.images.into_iter().collect(),
            uploads: BTreeMap::new(),
            boundaries: snap.boundaries.into_iter().collect(),
            sub_rules: snap.sub_rules.into_iter().map(|(id, l, r)| (id, (l, r))).collect(),
            audit: snap.audit,
            policies,
            fleet: crate::fleet::Fleet {
                vms: fleet,
                lease_deadline_ms: None,
                now_ms: 0,
                members: snap
                    .fleet_members
                    .into_iter()
                    .filter(|(_, m)| m.len() <= MAX_CLUSTER_MEMBERS)
                    .take(mgmt_proto::fleet::MAX_MEMBER_CLUSTERS)
                    .collect(),
            },
            reboot_requested: false,
            shutdown_requested: false,
            suspended: false,
            next_id: snap.next_id,
            clock: snap.clock,
            external_clock: false,
        })
    }
}
