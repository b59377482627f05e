//! Snapshot layouts of earlier format versions (1 to 5), still read so an
//! upgraded node keeps its leases, VMs, images and audit log. postcard is
//! not self-describing, so each old layout needs its own type; each
//! upgrades to the current [`Snapshot`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use mgmt_proto::crypto::PublicKey;
use mgmt_proto::monitor::{Owner, VersionedPolicy};
use mgmt_proto::msg::{AuditEntry, BoundaryRule, ClusterId, LeaseId, Role, RuleId, VmId, VmSpec};

use super::{LeaseSnapshot, Snapshot, VmSnapshot, SNAPSHOT_VERSION};
use crate::uploads::Image;

/// A VM definition as versions 1 to 3 stored it (no initrd). postcard is
/// not self-describing, so the old layout needs its own type.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct VmSpecV3 {
    pub(crate) lease: LeaseId,
    pub(crate) name: String,
    pub(crate) vcpus: u8,
    pub(crate) memory_mib: u32,
    pub(crate) disk_mib: u32,
    pub(crate) image: String,
    pub(crate) cluster: ClusterId,
    pub(crate) cmdline: String,
    pub(crate) ip: Option<[u8; 4]>,
}

impl VmSpecV3 {
    pub(crate) fn upgrade(self) -> VmSpec {
        VmSpec {
            lease: self.lease,
            name: self.name,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_mib: self.disk_mib,
            image: self.image,
            cluster: self.cluster,
            cmdline: self.cmdline,
            ip: self.ip,
            initrd: None,
        }
    }
}

/// A VM of a version 2 or 3 snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct VmSnapshotV3 {
    pub(crate) id: VmId,
    pub(crate) spec: VmSpecV3,
    pub(crate) starts: u64,
    pub(crate) autostart: bool,
}

impl VmSnapshotV3 {
    pub(crate) fn upgrade(self) -> VmSnapshot {
        VmSnapshot { id: self.id, spec: self.spec.upgrade(), starts: self.starts, autostart: self.autostart }
    }
}

/// The version 3 layout (VMs without an initrd).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotV3 {
    pub(crate) version: u16,
    pub(crate) landlord_secret: [u8; 32],
    pub(crate) landlord_console: PublicKey,
    pub(crate) leases: Vec<LeaseSnapshot>,
    pub(crate) vms: Vec<VmSnapshotV3>,
    pub(crate) images: Vec<(String, Image)>,
    pub(crate) boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    pub(crate) sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    pub(crate) audit: Vec<AuditEntry>,
    pub(crate) audit_anchor: [u8; 32],
    pub(crate) next_id: u32,
    pub(crate) clock: u64,
}

impl SnapshotV3 {
    pub(crate) fn upgrade(self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            landlord_secret: self.landlord_secret,
            landlord_console: self.landlord_console,
            leases: self.leases,
            vms: self.vms.into_iter().map(VmSnapshotV3::upgrade).collect(),
            images: self.images,
            boundaries: self.boundaries,
            sub_rules: self.sub_rules,
            audit: self.audit,
            audit_anchor: self.audit_anchor,
            next_id: self.next_id,
            clock: self.clock,
            policies: Vec::new(),
            fleet: Vec::new(),
            fleet_members: Vec::new(),
            replica_partners: Vec::new(),
            legacy_images: Vec::new(),
        }
    }
}

/// The version 5 layout (no facility records).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotV5 {
    pub(crate) version: u16,
    pub(crate) landlord_secret: [u8; 32],
    pub(crate) landlord_console: PublicKey,
    pub(crate) leases: Vec<LeaseSnapshot>,
    pub(crate) vms: Vec<VmSnapshot>,
    pub(crate) images: Vec<(String, Image)>,
    pub(crate) boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    pub(crate) sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    pub(crate) audit: Vec<AuditEntry>,
    pub(crate) audit_anchor: [u8; 32],
    pub(crate) next_id: u32,
    pub(crate) clock: u64,
    pub(crate) policies: Vec<((ClusterId, Owner), VersionedPolicy)>,
}

impl SnapshotV5 {
    /// The current layout, with no facility records.
    pub(crate) fn upgrade(self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            landlord_secret: self.landlord_secret,
            landlord_console: self.landlord_console,
            leases: self.leases,
            vms: self.vms,
            images: self.images,
            boundaries: self.boundaries,
            sub_rules: self.sub_rules,
            audit: self.audit,
            audit_anchor: self.audit_anchor,
            next_id: self.next_id,
            clock: self.clock,
            policies: self.policies,
            fleet: Vec::new(),
            fleet_members: Vec::new(),
            replica_partners: Vec::new(),
            legacy_images: Vec::new(),
        }
    }
}

/// The version 4 layout (no policies).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotV4 {
    pub(crate) version: u16,
    pub(crate) landlord_secret: [u8; 32],
    pub(crate) landlord_console: PublicKey,
    pub(crate) leases: Vec<LeaseSnapshot>,
    pub(crate) vms: Vec<VmSnapshot>,
    pub(crate) images: Vec<(String, Image)>,
    pub(crate) boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    pub(crate) sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    pub(crate) audit: Vec<AuditEntry>,
    pub(crate) audit_anchor: [u8; 32],
    pub(crate) next_id: u32,
    pub(crate) clock: u64,
}

impl SnapshotV4 {
    /// The current layout, with no policies (through version 5).
    pub(crate) fn upgrade(self) -> Snapshot {
        SnapshotV5 {
            version: 5,
            landlord_secret: self.landlord_secret,
            landlord_console: self.landlord_console,
            leases: self.leases,
            vms: self.vms,
            images: self.images,
            boundaries: self.boundaries,
            sub_rules: self.sub_rules,
            audit: self.audit,
            audit_anchor: self.audit_anchor,
            next_id: self.next_id,
            clock: self.clock,
            policies: Vec::new(),
        }
        .upgrade()
    }
}

/// An audit entry as versions 1 and 2 stored it (no chain).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct AuditEntryV1 {
    pub(crate) index: u64,
    pub(crate) time_secs: u64,
    pub(crate) role: Option<Role>,
    pub(crate) action: String,
    pub(crate) outcome: String,
}

/// Chains entries of an old snapshot, from a zero anchor.
pub(crate) fn rechain(old: Vec<AuditEntryV1>) -> Vec<AuditEntry> {
    let mut prev = [0u8; 32];
    old.into_iter()
        .map(|e| {
            let chain = AuditEntry::link(&prev, e.index, e.time_secs, e.role, &e.action, &e.outcome);
            prev = chain;
            AuditEntry {
                index: e.index,
                time_secs: e.time_secs,
                role: e.role,
                action: e.action,
                outcome: e.outcome,
                chain,
            }
        })
        .collect()
}

/// The version 2 layout (images inline).
#[derive(serde::Deserialize)]
pub(crate) struct SnapshotV2 {
    pub(crate) version: u16,
    pub(crate) landlord_secret: [u8; 32],
    pub(crate) landlord_console: PublicKey,
    pub(crate) leases: Vec<LeaseSnapshot>,
    pub(crate) vms: Vec<VmSnapshotV3>,
    pub(crate) images: Vec<(String, Vec<u8>, [u8; 32])>,
    pub(crate) boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    pub(crate) sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    pub(crate) audit: Vec<AuditEntryV1>,
    pub(crate) next_id: u32,
    pub(crate) clock: u64,
}

impl SnapshotV2 {
    /// The current layout: images move to `legacy_images` (the caller
    /// writes them into the image store), the audit log is chained afresh.
    pub(crate) fn upgrade(self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            landlord_secret: self.landlord_secret,
            landlord_console: self.landlord_console,
            leases: self.leases,
            vms: self.vms.into_iter().map(VmSnapshotV3::upgrade).collect(),
            images: Vec::new(),
            boundaries: self.boundaries,
            sub_rules: self.sub_rules,
            audit: rechain(self.audit),
            audit_anchor: [0; 32],
            next_id: self.next_id,
            clock: self.clock,
            policies: Vec::new(),
            fleet: Vec::new(),
            fleet_members: Vec::new(),
            replica_partners: Vec::new(),
            legacy_images: self.images,
        }
    }
}

/// The version 1 layout (VMs without the autostart flag), still read so an
/// upgraded node keeps its leases, VMs and images.
#[derive(serde::Deserialize)]
pub(crate) struct SnapshotV1 {
    pub(crate) version: u16,
    pub(crate) landlord_secret: [u8; 32],
    pub(crate) landlord_console: PublicKey,
    pub(crate) leases: Vec<LeaseSnapshot>,
    pub(crate) vms: Vec<(VmId, VmSpecV3, u64)>,
    pub(crate) images: Vec<(String, Vec<u8>, [u8; 32])>,
    pub(crate) boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    pub(crate) sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    pub(crate) audit: Vec<AuditEntryV1>,
    pub(crate) next_id: u32,
    pub(crate) clock: u64,
}

/// Decodes `bytes` as one of the older layouts (the current one did not
/// decode, or carried an older version number).
pub(crate) fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if let Ok(v5) = postcard::from_bytes::<SnapshotV5>(bytes) {
        if v5.version == 5 {
            return Ok(v5.upgrade());
        }
    }
    if let Ok(v4) = postcard::from_bytes::<SnapshotV4>(bytes) {
        if v4.version == 4 {
            return Ok(v4.upgrade());
        }
    }
    if let Ok(v3) = postcard::from_bytes::<SnapshotV3>(bytes) {
        if v3.version == 3 {
            return Ok(v3.upgrade());
        }
    }
    if let Ok(v2) = postcard::from_bytes::<SnapshotV2>(bytes) {
        if v2.version == 2 {
            return Ok(v2.upgrade());
        }
    }
    match postcard::from_bytes::<SnapshotV1>(bytes) {
        Ok(v1) if v1.version == 1 => Ok(SnapshotV2 {
            version: 2,
            landlord_secret: v1.landlord_secret,
            landlord_console: v1.landlord_console,
            leases: v1.leases,
            vms: v1
                .vms
                .into_iter()
                .map(|(id, spec, starts)| VmSnapshotV3 { id, spec, starts, autostart: false })
                .collect(),
            images: v1.images,
            boundaries: v1.boundaries,
            sub_rules: v1.sub_rules,
            audit: v1.audit,
            next_id: v1.next_id,
            clock: v1.clock,
        }
        .upgrade()),
        Ok(v1) => Err(format!("unknown snapshot version {}", v1.version)),
        Err(e) => Err(format!("snapshot does not decode: {e}")),
    }
}
