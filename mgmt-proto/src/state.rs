//! The node's management state and request handling: keys, leases, VM
//! definitions, images, boundaries, rules and the audit log, with
//! snapshots for sealed storage. BMonitor serves it (answering status,
//! console I/O and counters from the running node itself); console tests
//! use it on its own as an in-memory node.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use sha2::{Digest, Sha256};

use crate::authz::{authorize, Ownership};
use crate::crypto::{Entropy, KeyPair, PublicKey, SecretKey};
use crate::images::{blocks_for, place, Extent, ImageStore, MemImageStore, BLOCK};
use crate::monitor::policy::{validate, Policies, PolicyContext, MAX_POLICIES};
use crate::monitor::{Owner, VersionedPolicy};
use crate::msg::*;
use crate::session::{KeyTable, NodeEvent, NodeSession, SessionError};
use crate::sig::verify_image_digest;
use crate::{MAX_CHUNK, MAX_CONSOLE_BYTES};

/// Largest number of audit entries returned per request.
/// Entries per `ReadAudit` answer at most: a shorter page is the end of
/// the log (consoles page on that).
pub const AUDIT_PAGE: usize = 100;

/// Limits on what consoles may make the node keep; each refusal names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Largest single image.
    pub max_image_bytes: u64,
    /// All stored images and unfinished uploads together.
    pub max_images_bytes: u64,
    /// Unfinished uploads at once.
    pub max_uploads: usize,
    /// An upload with no chunk for this long is discarded.
    pub upload_expiry_secs: u64,
    /// Leases at once.
    pub max_leases: usize,
    /// VM definitions at once.
    pub max_vms: usize,
    /// Tenant sub-boundary rules (all leases).
    pub max_sub_rules: usize,
    /// Rules in one cluster boundary.
    pub max_boundary_rules: usize,
    /// Audit entries kept (older ones are trimmed).
    pub max_audit: usize,
}

impl StateLimits {
    /// The node's defaults.
    pub const DEFAULT: StateLimits = StateLimits {
        max_image_bytes: 16 << 20,
        max_images_bytes: 64 << 20,
        max_uploads: 8,
        upload_expiry_secs: 600,
        max_leases: 256,
        max_vms: 64,
        max_sub_rules: 1024,
        max_boundary_rules: 256,
        max_audit: 4096,
    };
}

/// A VM or image name against the config's naming rule, refused naming it.
pub fn check_name(name: &str) -> Result<(), ErrorReply> {
    if vmm_config::text::valid_name(name) {
        Ok(())
    } else {
        Err(ErrorReply::new(ErrorCode::Invalid, format!("name: {}", vmm_config::text::NAME_RULE)))
    }
}

fn limit(msg: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Limit, msg)
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// A lease as the simulated node records it.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Cluster its VMs join.
    pub cluster: ClusterId,
    /// U_T, the node's tenant public key.
    pub node_key: PublicKey,
    /// Key that must sign this lease's images, if set.
    pub signing_key: Option<ImageVerifyKey>,
}

/// A simulated VM.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Its definition.
    pub spec: VmSpec,
    /// Its state.
    pub state: VmState,
    /// Serial console output (the sim echoes console input here).
    pub console: Vec<u8>,
    /// Times started.
    pub starts: u64,
    /// The consoles' last word on it: started (and not stopped since). A
    /// node reboot brings such VMs back running, as an operator expects.
    pub autostart: bool,
}

/// An upload in progress.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Image name.
    pub name: String,
    /// Declared size.
    pub size: u64,
    /// Expected hash.
    pub sha256: Option<[u8; 32]>,
    /// Tenant signature.
    pub signature: Option<ImageSignature>,
    /// Lease the image is for.
    pub lease: Option<LeaseId>,
    /// Where its bytes go in the image store.
    pub extent: Extent,
    /// Bytes received (always a prefix: chunks arrive in order).
    pub received: u64,
    /// SHA-256 of the received prefix.
    pub hasher: Sha256,
    /// Node time of the last chunk, for expiry.
    pub touched: u64,
}

/// A stored image: its bytes are in the image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// Where its bytes are.
    pub extent: Extent,
    /// Its length.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

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
/// initrd; 5: corrective-action policies).
pub const SNAPSHOT_VERSION: u16 = 5;

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
    /// Images of a version 1 or 2 snapshot, which carried their bytes:
    /// [`NodeState::restore_with`] moves them into the image store.
    #[serde(skip)]
    pub legacy_images: Vec<(String, Vec<u8>, [u8; 32])>,
}

/// A VM definition as versions 1 to 3 stored it (no initrd). postcard is
/// not self-describing, so the old layout needs its own type.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct VmSpecV3 {
    lease: LeaseId,
    name: String,
    vcpus: u8,
    memory_mib: u32,
    disk_mib: u32,
    image: String,
    cluster: ClusterId,
    cmdline: String,
    ip: Option<[u8; 4]>,
}

impl VmSpecV3 {
    fn upgrade(self) -> VmSpec {
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
struct VmSnapshotV3 {
    id: VmId,
    spec: VmSpecV3,
    starts: u64,
    autostart: bool,
}

impl VmSnapshotV3 {
    fn upgrade(self) -> VmSnapshot {
        VmSnapshot { id: self.id, spec: self.spec.upgrade(), starts: self.starts, autostart: self.autostart }
    }
}

/// The version 3 layout (VMs without an initrd).
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotV3 {
    version: u16,
    landlord_secret: [u8; 32],
    landlord_console: PublicKey,
    leases: Vec<LeaseSnapshot>,
    vms: Vec<VmSnapshotV3>,
    images: Vec<(String, Image)>,
    boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    audit: Vec<AuditEntry>,
    audit_anchor: [u8; 32],
    next_id: u32,
    clock: u64,
}

impl SnapshotV3 {
    fn upgrade(self) -> Snapshot {
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
            legacy_images: Vec::new(),
        }
    }
}

/// The version 4 layout (no policies).
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotV4 {
    version: u16,
    landlord_secret: [u8; 32],
    landlord_console: PublicKey,
    leases: Vec<LeaseSnapshot>,
    vms: Vec<VmSnapshot>,
    images: Vec<(String, Image)>,
    boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    audit: Vec<AuditEntry>,
    audit_anchor: [u8; 32],
    next_id: u32,
    clock: u64,
}

impl SnapshotV4 {
    /// The current layout, with no policies.
    fn upgrade(self) -> Snapshot {
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
            policies: Vec::new(),
            legacy_images: Vec::new(),
        }
    }
}

/// An audit entry as versions 1 and 2 stored it (no chain).
#[derive(serde::Serialize, serde::Deserialize)]
struct AuditEntryV1 {
    index: u64,
    time_secs: u64,
    role: Option<Role>,
    action: String,
    outcome: String,
}

/// Chains entries of an old snapshot, from a zero anchor.
fn rechain(old: Vec<AuditEntryV1>) -> Vec<AuditEntry> {
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
struct SnapshotV2 {
    version: u16,
    landlord_secret: [u8; 32],
    landlord_console: PublicKey,
    leases: Vec<LeaseSnapshot>,
    vms: Vec<VmSnapshotV3>,
    images: Vec<(String, Vec<u8>, [u8; 32])>,
    boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    audit: Vec<AuditEntryV1>,
    next_id: u32,
    clock: u64,
}

impl SnapshotV2 {
    /// The current layout: images move to `legacy_images` (the caller
    /// writes them into the image store), the audit log is chained afresh.
    fn upgrade(self) -> Snapshot {
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
            legacy_images: self.images,
        }
    }
}

/// The version 1 layout (VMs without the autostart flag), still read so an
/// upgraded node keeps its leases, VMs and images.
#[derive(serde::Deserialize)]
struct SnapshotV1 {
    version: u16,
    landlord_secret: [u8; 32],
    landlord_console: PublicKey,
    leases: Vec<LeaseSnapshot>,
    vms: Vec<(VmId, VmSpecV3, u64)>,
    images: Vec<(String, Vec<u8>, [u8; 32])>,
    boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    audit: Vec<AuditEntryV1>,
    next_id: u32,
    clock: u64,
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
}

/// The whole simulated node: keys, leases, VMs, images, rules, audit log.
pub struct NodeState {
    rng: Box<dyn Entropy>,
    /// Where image bytes live.
    store: Box<dyn ImageStore>,
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
    /// [`MAX_POLICIES`]). Rules naming a VM that is later destroyed stay
    /// in place and simply never match again; ending a lease removes its
    /// policies.
    pub policies: Policies,
    /// Set by `Reboot`.
    pub reboot_requested: bool,
    /// Set by `Shutdown`.
    pub shutdown_requested: bool,
    /// Set by `Suspend`, cleared by `Resume`.
    pub suspended: bool,
    next_id: u32,
    clock: u64,
    /// Set once the host supplies real time (`set_clock`); the audit log
    /// then records it instead of counting entries.
    external_clock: bool,
}

impl NodeState {
    /// A freshly provisioned node: generates the landlord pair and registers
    /// the landlord console's key. Returns the state (U_L is `landlord_key`).
    pub fn provision(mut rng: Box<dyn Entropy>, landlord_console: PublicKey) -> Result<NodeState, crate::EntropyError> {
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
            reboot_requested: false,
            shutdown_requested: false,
            suspended: false,
            next_id: 1,
            clock: 0,
            external_clock: false,
        })
    }

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
            legacy_images: Vec::new(),
        }
    }

    /// What policy validation needs to know about this node's VMs and
    /// leases, so the node validates policies by the same rules as
    /// `SetPolicy` does.
    pub fn policy_context(&self) -> impl PolicyContext + '_ {
        StatePolicyContext { state: self }
    }

    /// Uses `store` for image bytes (and `limits`); call before serving.
    pub fn with_image_store(mut self, store: Box<dyn ImageStore>, limits: StateLimits) -> NodeState {
        self.store = store;
        self.limits = limits;
        self
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

    /// Puts `bytes` into the image store as image `name`, as the node
    /// config's `[[image]]` asks at boot: `Ok(false)` when an image of that
    /// name with the same SHA-256 is already stored, `Ok(true)` when it was
    /// stored (replacing one of the same name). It goes the way of a
    /// landlord upload (begin, chunks, commit), so the same name rule,
    /// quotas, store placement and bootable check apply; a refusal leaves
    /// no partial upload behind.
    pub fn preload_image(&mut self, name: &str, bytes: &[u8]) -> Result<bool, ErrorReply> {
        check_name(name)?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if self.images.get(name).is_some_and(|i| i.sha256 == digest && i.size == bytes.len() as u64) {
            return Ok(false);
        }
        let begin = Request::UploadImageBegin {
            name: name.to_string(),
            size: bytes.len() as u64,
            sha256: Some(digest),
            signature: None,
            lease: None,
        };
        let Response::Upload { upload, offset } = self.handle(Role::Landlord, &begin)? else {
            return Err(internal());
        };
        let result = self.preload_rest(upload, offset, bytes);
        if result.is_err() && self.uploads.contains_key(&upload) {
            let _ = self.handle(Role::Landlord, &Request::CancelUpload { name: name.to_string() });
        }
        result.map(|()| true)
    }

    fn preload_rest(&mut self, upload: UploadId, mut offset: u64, bytes: &[u8]) -> Result<(), ErrorReply> {
        let start = usize::try_from(offset).map_err(|_| internal())?;
        for chunk in bytes.get(start..).unwrap_or_default().chunks(MAX_CHUNK) {
            let req = Request::UploadImageChunk { upload, offset, bytes: chunk.to_vec() };
            let Response::Upload { offset: next, .. } = self.handle(Role::Landlord, &req)? else {
                return Err(internal());
            };
            offset = next;
        }
        match self.handle(Role::Landlord, &Request::UploadImageCommit { upload })? {
            Response::ImageStored { .. } => Ok(()),
            _ => Err(internal()),
        }
    }

    /// Extents held by stored images and unfinished uploads.
    fn used_extents(&self) -> Vec<Extent> {
        self.images.values().map(|i| i.extent).chain(self.uploads.values().map(|u| u.extent)).collect()
    }

    /// Bytes of stored images plus declared sizes of unfinished uploads.
    pub fn images_bytes(&self) -> u64 {
        self.images.values().map(|i| i.size).chain(self.uploads.values().map(|u| u.size)).sum()
    }

    /// What [`Request::ListImages`] answers; with `verify` every image is
    /// re-read in small pieces (never whole in memory) and re-hashed.
    pub fn image_list(&mut self, verify: bool) -> ImageList {
        let mut images = Vec::with_capacity(self.images.len());
        for (name, img) in &self.images {
            let intact = verify.then(|| verify_extent(&mut *self.store, img));
            images.push(ImageInfo { name: name.clone(), size: img.size, sha256: img.sha256, intact });
        }
        let uploads = self
            .uploads
            .values()
            .map(|u| UploadInfo { name: u.name.clone(), received: u.received, size: u.size })
            .collect();
        ImageList {
            images,
            uploads,
            used_bytes: self.images_bytes(),
            limit_bytes: self.limits.max_images_bytes,
            max_image_bytes: self.limits.max_image_bytes,
        }
    }

    /// The whole image `name`, read from the store (to boot it). The
    /// caller checks it has room for `size` bytes first.
    pub fn image_bytes(&mut self, name: &str) -> Result<Vec<u8>, String> {
        let img = *self.images.get(name).ok_or_else(|| format!("no image named {name:?}"))?;
        let len = usize::try_from(img.size).map_err(|_| String::from("image too large"))?;
        let mut buf = alloc::vec![0u8; len];
        self.store.read(img.extent.start * BLOCK, &mut buf)?;
        let digest: [u8; 32] = Sha256::digest(&buf).into();
        if digest != img.sha256 {
            return Err(format!("image {name:?} does not match its SHA-256 (store damaged)"));
        }
        Ok(buf)
    }

    /// Drops uploads no chunk reached for [`StateLimits::upload_expiry_secs`]
    /// and frees their room; returns their names.
    pub fn expire_uploads(&mut self) -> Vec<String> {
        let now = self.clock;
        let ttl = self.limits.upload_expiry_secs;
        let old: Vec<UploadId> =
            self.uploads.iter().filter(|(_, u)| now.saturating_sub(u.touched) >= ttl).map(|(id, _)| *id).collect();
        let mut names = Vec::new();
        for id in old {
            if let Some(u) = self.uploads.remove(&id) {
                self.store.discard(u.extent);
                names.push(u.name);
            }
        }
        names
    }

    /// Forgets every image and upload (their bytes were crypto-erased with
    /// the landlord key); returns how many images were dropped.
    pub fn drop_all_images(&mut self) -> usize {
        let n = self.images.len();
        for (_, i) in core::mem::take(&mut self.images) {
            self.store.discard(i.extent);
        }
        for (_, u) in core::mem::take(&mut self.uploads) {
            self.store.discard(u.extent);
        }
        n
    }

    /// Rebuilds the state a [`Snapshot`] holds. VMs a console had started
    /// come back wanted running (one more start); the rest stopped.
    /// `None` if a stored key is not a valid X25519 secret. Policies past
    /// [`MAX_POLICIES`] are dropped (they were validated when set).
    pub fn restore(rng: Box<dyn Entropy>, snap: Snapshot) -> Option<NodeState> {
        let landlord = KeyPair::from_secret(SecretKey(snap.landlord_secret))?;
        let mut keys =
            KeyTable { landlord: Some((landlord.secret.clone(), snap.landlord_console)), ..KeyTable::default() };
        let mut leases = BTreeMap::new();
        for l in snap.leases {
            let pair = KeyPair::from_secret(SecretKey(l.secret))?;
            keys.tenants.insert(l.lease, (pair.secret.clone(), l.console));
            leases.insert(l.lease, Lease { cluster: l.cluster, node_key: pair.public, signing_key: l.signing_key });
        }
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
                    let (state, starts) = if v.autostart {
                        (VmState::Running, v.starts.saturating_add(1))
                    } else {
                        (VmState::Stopped, v.starts)
                    };
                    (v.id, Vm { spec: v.spec, state, console: Vec::new(), starts, autostart: v.autostart })
                })
                .collect(),
            images: snap.images.into_iter().collect(),
            uploads: BTreeMap::new(),
            boundaries: snap.boundaries.into_iter().collect(),
            sub_rules: snap.sub_rules.into_iter().map(|(id, l, r)| (id, (l, r))).collect(),
            audit: snap.audit,
            policies,
            reboot_requested: false,
            shutdown_requested: false,
            suspended: false,
            next_id: snap.next_id,
            clock: snap.clock,
            external_clock: false,
        })
    }

    /// Re-registers the landlord console key (provisioning changed it).
    pub fn set_landlord_console(&mut self, key: PublicKey) {
        if let Some((_, console)) = self.keys.landlord.as_mut() {
            *console = key;
        }
    }

    fn id(&mut self) -> u32 {
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

    /// Appends an audit entry (the hypervisor logs what it handles itself).
    pub fn log(&mut self, role: Option<Role>, action: &str, outcome: String) {
        if !self.external_clock {
            self.clock += 1;
        }
        let index = self.audit_base + self.audit.len() as u64;
        let prev = self.audit.last().map_or(self.audit_anchor, |e| e.chain);
        let chain = AuditEntry::link(&prev, index, self.clock, role, action, &outcome);
        self.audit.push(AuditEntry { index, time_secs: self.clock, role, action: action.to_string(), outcome, chain });
        let max = self.limits.max_audit.max(1);
        if self.audit.len() > max {
            // Trim an eighth at a time so trimming is rare; the last trimmed
            // entry's chain value anchors what is kept.
            let cut = (self.audit.len() - max).max(max / 8).min(self.audit.len());
            if let Some(last_cut) = self.audit.get(cut.saturating_sub(1)) {
                self.audit_anchor = last_cut.chain;
            }
            self.audit.drain(..cut);
            self.audit_base = self.audit.first().map_or(index + 1, |e| e.index);
        }
    }

    /// Serves received bytes on one session: handshake, then every request
    /// (authorized, handled, audited, answered). Refusals are audited and
    /// returned; the caller sends `session.take_output()` either way.
    pub fn serve(&mut self, session: &mut NodeSession, input: &[u8]) -> Result<(), SessionError> {
        let events = match session.receive(input, &self.keys) {
            Ok(ev) => ev,
            Err(e) => {
                self.log(session.role(), "session", format!("refused: {e}"));
                return Err(e);
            }
        };
        for ev in events {
            match ev {
                NodeEvent::Established { role, console_key } => {
                    self.log(Some(role), "connect", format!("ok (console {})", console_key.to_hex()))
                }
                NodeEvent::Request(env) => {
                    let role = session.role().ok_or(SessionError::NotEstablished)?;
                    let result = self.handle(role, &env.body);
                    let outcome = match &result {
                        Ok(_) => "ok".to_string(),
                        Err(e) => format!("refused: {e}"),
                    };
                    self.log(Some(role), env.body.name(), outcome);
                    session.reply(env.seq, result)?;
                }
            }
        }
        Ok(())
    }

    /// Handles one request for `role`: authorization first, then the effect.
    pub fn handle(&mut self, role: Role, req: &Request) -> Result<Response, ErrorReply> {
        authorize(&role, req, self).map_err(|d| d.to_error())?;
        let not_found = |what: &str| ErrorReply::new(ErrorCode::NotFound, format!("no such {what}"));
        match req {
            Request::NodeStatus => Ok(Response::Status(NodeStatus {
                version: String::from("in-memory"),
                uptime_secs: self.clock,
                cpus: 2,
                memory_total_mib: 4096,
                memory_free_mib: 4096 - self.vms.values().map(|v| u64::from(v.spec.memory_mib)).sum::<u64>().min(4096),
                disks: Vec::new(),
                nic_up: true,
                leases: self.leases.len() as u32,
                vms_total: self.vms.len() as u32,
                vms_running: self.vms.values().filter(|v| v.state == VmState::Running).count() as u32,
                counters: alloc::vec![Counter { name: String::from("audit.entries"), value: self.audit.len() as u64 }],
            })),
            Request::Reboot => {
                self.reboot_requested = true;
                Ok(Response::Done)
            }
            Request::Shutdown => {
                self.shutdown_requested = true;
                Ok(Response::Done)
            }
            Request::Suspend => {
                self.suspended = true;
                Ok(Response::Done)
            }
            Request::Resume => {
                self.suspended = false;
                Ok(Response::Done)
            }
            Request::CreateLease { .. } if self.leases.len() >= self.limits.max_leases => {
                Err(limit(format!("the node holds at most {} leases (max_leases)", self.limits.max_leases)))
            }
            Request::SetClusterBoundary { rules, .. } if rules.len() > self.limits.max_boundary_rules => Err(limit(
                format!("a boundary has at most {} rules (max_boundary_rules)", self.limits.max_boundary_rules),
            )),
            Request::SetSubBoundary { .. } if self.sub_rules.len() >= self.limits.max_sub_rules => {
                Err(limit(format!("the node keeps at most {} tenant rules (max_sub_rules)", self.limits.max_sub_rules)))
            }
            Request::CreateLease { tenant_console_key, cluster } => {
                let lease = LeaseId(self.id());
                let pair = KeyPair::generate(&mut *self.rng).map_err(|_| internal())?;
                self.keys.tenants.insert(lease, (pair.secret.clone(), *tenant_console_key));
                self.leases.insert(lease, Lease { cluster: *cluster, node_key: pair.public, signing_key: None });
                Ok(Response::LeaseCreated { lease, tenant_node_key: pair.public })
            }
            Request::EndLease { lease } => {
                self.leases.remove(lease).ok_or_else(|| not_found("lease"))?;
                self.keys.tenants.remove(lease);
                self.vms.retain(|_, v| v.spec.lease != *lease);
                self.sub_rules.retain(|_, (l, _)| l != lease);
                self.policies.retain(|(_, owner), _| *owner != Owner::Tenant(*lease));
                Ok(Response::Done)
            }
            Request::SetClusterBoundary { cluster, rules } => {
                self.boundaries.insert(*cluster, rules.clone());
                Ok(Response::Done)
            }
            Request::UploadImageBegin { name, size, sha256, signature, lease } => {
                check_name(name)?;
                if let Some(l) = lease {
                    if !self.leases.contains_key(l) {
                        return Err(not_found("lease"));
                    }
                }
                if let Some((id, u)) = self.uploads.iter_mut().find(|(_, u)| u.name == *name) {
                    if u.size != *size || u.sha256 != *sha256 {
                        return Err(ErrorReply::new(
                            ErrorCode::Conflict,
                            "an upload of this name with another size or hash is in progress (cancel it first)",
                        ));
                    }
                    // A resumed upload: already counted, continue where it was.
                    u.touched = self.clock;
                    return Ok(Response::Upload { upload: *id, offset: u.received });
                }
                if *size == 0 {
                    return Err(ErrorReply::new(ErrorCode::Invalid, "size: an image cannot be empty"));
                }
                let l = self.limits;
                if *size > l.max_image_bytes {
                    return Err(limit(format!(
                        "size: images are limited to {} MiB each (max_image_bytes)",
                        mib(l.max_image_bytes)
                    )));
                }
                if self.uploads.len() >= l.max_uploads {
                    return Err(limit(format!(
                        "at most {} uploads may be unfinished at once (max_uploads); finish or cancel one",
                        l.max_uploads
                    )));
                }
                // Replacing an image of the same name frees its room at commit,
                // so it is not counted twice.
                let replaced = self.images.get(name).map_or(0, |i| i.size);
                let used = self.images_bytes().saturating_sub(replaced);
                if used.saturating_add(*size) > l.max_images_bytes {
                    return Err(limit(format!(
                        "size: the node stores at most {} MiB of images (max_images_bytes); {} MiB are in use",
                        mib(l.max_images_bytes),
                        used.div_ceil(1 << 20)
                    )));
                }
                let extent =
                    place(&self.used_extents(), blocks_for(*size), self.store.capacity_blocks()).ok_or_else(|| {
                        limit(format!(
                            "size: no room for {} MiB in the image store ({}, {} MiB)",
                            size.div_ceil(1 << 20),
                            self.store.kind(),
                            mib(self.store.capacity_blocks() * BLOCK)
                        ))
                    })?;
                let id = UploadId(self.id());
                self.uploads.insert(
                    id,
                    Upload {
                        name: name.clone(),
                        size: *size,
                        sha256: *sha256,
                        signature: *signature,
                        lease: *lease,
                        extent,
                        received: 0,
                        hasher: Sha256::new(),
                        touched: self.clock,
                    },
                );
                Ok(Response::Upload { upload: id, offset: 0 })
            }
            Request::UploadImageChunk { upload, offset, bytes } => {
                let clock = self.clock;
                let u = self.uploads.get_mut(upload).ok_or_else(|| not_found("upload"))?;
                if bytes.len() > MAX_CHUNK {
                    return Err(ErrorReply::new(ErrorCode::Invalid, format!("bytes: chunk above {MAX_CHUNK} bytes")));
                }
                if *offset != u.received {
                    return Err(ErrorReply::new(
                        ErrorCode::Invalid,
                        format!("offset: expected {}, got {offset}", u.received),
                    ));
                }
                if u.received + bytes.len() as u64 > u.size {
                    return Err(ErrorReply::new(ErrorCode::Invalid, "bytes: past the declared size"));
                }
                self.store
                    .write(u.extent.start * BLOCK + u.received, bytes)
                    .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("image store: {e}")))?;
                u.hasher.update(bytes);
                u.received += bytes.len() as u64;
                u.touched = clock;
                Ok(Response::Upload { upload: *upload, offset: u.received })
            }
            Request::CancelUpload { name } => {
                let id = self.uploads.iter().find(|(_, u)| u.name == *name).map(|(id, _)| *id);
                let u = id.and_then(|id| self.uploads.remove(&id)).ok_or_else(|| not_found("upload"))?;
                self.store.discard(u.extent);
                Ok(Response::Done)
            }
            Request::ListImages { verify } => Ok(Response::Images(self.image_list(*verify))),
            Request::UploadImageCommit { upload } => {
                let u = self.uploads.get(upload).ok_or_else(|| not_found("upload"))?;
                if u.received != u.size {
                    return Err(ErrorReply::new(
                        ErrorCode::Invalid,
                        format!("size: {} of {} bytes received", u.received, u.size),
                    ));
                }
                let digest: [u8; 32] = u.hasher.clone().finalize().into();
                if u.sha256.is_some_and(|h| h != digest) {
                    return Err(ErrorReply::new(ErrorCode::Invalid, "sha256: image does not match"));
                }
                let key = u.lease.and_then(|l| self.leases.get(&l)).and_then(|l| l.signing_key);
                if let Some(key) = key {
                    let sig = u.signature.ok_or_else(|| {
                        ErrorReply::new(ErrorCode::BadSignature, "signature: required by the lease's signing key")
                    })?;
                    verify_image_digest(&key, &digest, &sig)
                        .map_err(|e| ErrorReply::new(ErrorCode::BadSignature, e.to_string()))?;
                }
                let u = self.uploads.remove(upload).ok_or_else(|| not_found("upload"))?;
                let checked = self
                    .store
                    .flush()
                    .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("image store: {e}")))
                    .and_then(|()| {
                        self.store.check(u.extent, u.size).map_err(|e| {
                            ErrorReply::new(ErrorCode::Invalid, format!("image: not a bootable kernel: {e}"))
                        })
                    });
                if let Err(e) = checked {
                    // It can never succeed: free its room.
                    self.store.discard(u.extent);
                    return Err(e);
                }
                let (name, size) = (u.name.clone(), u.size);
                if let Some(old) = self.images.insert(u.name, Image { extent: u.extent, size, sha256: digest }) {
                    self.store.discard(old.extent);
                }
                Ok(Response::ImageStored { name, size, sha256: digest })
            }
            Request::CreateVm { spec } => {
                let Some(lease_cluster) = self.leases.get(&spec.lease).map(|l| l.cluster) else {
                    return Err(not_found("lease"));
                };
                // A lease's VMs join its cluster (0: "the lease's").
                let mut spec = spec.clone();
                if spec.cluster.0 == 0 {
                    spec.cluster = lease_cluster;
                } else if spec.cluster != lease_cluster {
                    return Err(ErrorReply::new(
                        ErrorCode::Invalid,
                        format!(
                            "cluster: lease {}'s VMs join its cluster {}, not {}",
                            spec.lease.0, lease_cluster.0, spec.cluster.0
                        ),
                    ));
                }
                check_name(&spec.name)?;
                if !(2..=vmm_config::config::MAX_VM_MEMORY_MIB).contains(&spec.memory_mib) {
                    return Err(ErrorReply::new(
                        ErrorCode::Invalid,
                        format!("memory_mib: must be between 2 and {}", vmm_config::config::MAX_VM_MEMORY_MIB),
                    ));
                }
                if spec.cmdline.len() > vmm_config::config::MAX_CMDLINE_LEN {
                    return Err(ErrorReply::new(
                        ErrorCode::Invalid,
                        format!("cmdline: at most {} bytes", vmm_config::config::MAX_CMDLINE_LEN),
                    ));
                }
                if self.vms.len() >= self.limits.max_vms {
                    return Err(limit(format!(
                        "the node keeps at most {} VM definitions (max_vms)",
                        self.limits.max_vms
                    )));
                }
                if !self.images.contains_key(&spec.image) {
                    return Err(ErrorReply::new(
                        ErrorCode::NotFound,
                        format!("image: no image named {:?}", spec.image),
                    ));
                }
                if let Some(initrd) = &spec.initrd {
                    if !self.images.contains_key(initrd) {
                        return Err(ErrorReply::new(ErrorCode::NotFound, format!("initrd: no image named {initrd:?}")));
                    }
                }
                if spec.vcpus == 0 || spec.memory_mib == 0 {
                    return Err(ErrorReply::new(ErrorCode::Invalid, "vcpus/memory_mib: must be positive"));
                }
                if self.vms.values().any(|v| v.spec.lease == spec.lease && v.spec.name == spec.name) {
                    return Err(ErrorReply::new(ErrorCode::Conflict, "name: already used in this lease"));
                }
                let vm = VmId(self.id());
                self.vms
                    .insert(vm, Vm { spec, state: VmState::Stopped, console: Vec::new(), starts: 0, autostart: false });
                Ok(Response::VmCreated { vm })
            }
            Request::DestroyVm { vm } => {
                // Policy rules naming the VM stay; they never match again.
                self.vms.remove(vm).ok_or_else(|| not_found("VM"))?;
                Ok(Response::Done)
            }
            Request::RotateLandlordKey => {
                let pair = KeyPair::generate(&mut *self.rng).map_err(|_| internal())?;
                if let Some((secret, _)) = self.keys.landlord.as_mut() {
                    *secret = pair.secret.clone();
                }
                self.landlord_key = pair.public;
                Ok(Response::NodeKey { public: pair.public })
            }
            Request::RegenerateTenantKey { lease, tenant_console_key } => {
                let public = self.regenerate_tenant(*lease)?;
                if let (Some(k), Some((_, console))) = (tenant_console_key, self.keys.tenants.get_mut(lease)) {
                    *console = *k;
                }
                Ok(Response::NodeKey { public })
            }
            Request::RotateTenantKey => match role {
                Role::Tenant(lease) => Ok(Response::NodeKey { public: self.regenerate_tenant(lease)? }),
                Role::Landlord => Err(internal()),
            },
            Request::ReadAudit { from } => {
                // Entries before `audit_base` were trimmed: start at the oldest kept.
                let from = &(*from).max(self.audit_base);
                let start = usize::try_from(*from - self.audit_base).unwrap_or(usize::MAX);
                let entries: Vec<AuditEntry> = self
                    .audit
                    .iter()
                    .skip(start)
                    .filter(|e| role == Role::Landlord || e.role == Some(role))
                    .take(AUDIT_PAGE)
                    .cloned()
                    .collect();
                let prev_chain = match start.checked_sub(1).and_then(|i| self.audit.get(i)) {
                    Some(e) => e.chain,
                    None => self.audit_anchor,
                };
                let next = if entries.len() < AUDIT_PAGE {
                    (self.audit_base + self.audit.len() as u64).max(*from)
                } else {
                    entries.last().map_or(*from, |e| e.index + 1)
                };
                Ok(Response::Audit { entries, next, prev_chain })
            }
            Request::ListVms => Ok(Response::Vms(
                self.vms
                    .iter()
                    .filter(|(_, v)| role == Role::Landlord || role == Role::Tenant(v.spec.lease))
                    .map(|(id, v)| VmInfo { id: *id, spec: v.spec.clone(), state: v.state })
                    .collect(),
            )),
            Request::StartVm { vm } | Request::RestartVm { vm } | Request::ReloadImage { vm } => {
                let v = self.vms.get_mut(vm).ok_or_else(|| not_found("VM"))?;
                if matches!(req, Request::StartVm { .. }) && v.state == VmState::Running {
                    return Err(ErrorReply::new(ErrorCode::Conflict, "VM already running"));
                }
                v.state = VmState::Running;
                v.starts += 1;
                v.autostart = true;
                Ok(Response::Done)
            }
            Request::StopVm { vm } => {
                let v = self.vms.get_mut(vm).ok_or_else(|| not_found("VM"))?;
                v.state = VmState::Stopped;
                v.autostart = false;
                Ok(Response::Done)
            }
            Request::ReadCounters { vm } => {
                let v = self.vms.get(vm).ok_or_else(|| not_found("VM"))?;
                Ok(Response::Counters(alloc::vec![
                    Counter { name: String::from("starts"), value: v.starts },
                    Counter { name: String::from("console.bytes"), value: v.console.len() as u64 },
                ]))
            }
            Request::AgentOpen { .. }
            | Request::AgentSend { .. }
            | Request::AgentPoll { .. }
            | Request::AgentStatus { .. }
            | Request::AgentLog { .. }
            | Request::AgentHeartbeat { .. } => Err(ErrorReply::new(
                ErrorCode::Unsupported,
                "agent requests are served by the node's relay, not by the state",
            )),
            Request::Subscribe { .. } => Err(ErrorReply::new(
                ErrorCode::Unsupported,
                "subscriptions are served by the node's session loop, not by the state",
            )),
            Request::SetPolicy { cluster, expect_version, policy } => {
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
            Request::GetPolicy { cluster } => {
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
            Request::ConsoleRead { vm, from_offset } => {
                let v = self.vms.get(vm).ok_or_else(|| not_found("VM"))?;
                let start = usize::try_from(*from_offset).unwrap_or(usize::MAX).min(v.console.len());
                let bytes: Vec<u8> = v.console.iter().skip(start).take(MAX_CONSOLE_BYTES).copied().collect();
                Ok(Response::ConsoleOutput { next_offset: (start + bytes.len()) as u64, bytes })
            }
            Request::ConsoleWrite { vm, bytes } => {
                if bytes.len() > MAX_CONSOLE_BYTES {
                    return Err(ErrorReply::new(ErrorCode::Invalid, "bytes: too many"));
                }
                let v = self.vms.get_mut(vm).ok_or_else(|| not_found("VM"))?;
                // The simulated guest echoes its input.
                v.console.extend_from_slice(bytes);
                Ok(Response::Done)
            }
            Request::SetSubBoundary { rule } => {
                let Role::Tenant(lease) = role else { return Err(internal()) };
                let cluster = self.leases.get(&lease).map(|l| l.cluster).ok_or_else(|| not_found("lease"))?;
                let boundary = self.boundaries.get(&cluster).map(Vec::as_slice).unwrap_or(&[]);
                if rule.action == Action::Allow && !boundary.iter().any(|b| covers(b, rule)) {
                    return Err(ErrorReply::new(
                        ErrorCode::Widening,
                        "rule: allows traffic the cluster boundary does not",
                    ));
                }
                let id = RuleId(self.id());
                self.sub_rules.insert(id, (lease, *rule));
                Ok(Response::RuleAdded { id })
            }
            Request::RemoveSubBoundary { id } => {
                self.sub_rules.remove(id).ok_or_else(|| not_found("rule"))?;
                Ok(Response::Done)
            }
            Request::SetImageSigningKey { key } => {
                let Role::Tenant(lease) = role else { return Err(internal()) };
                let l = self.leases.get_mut(&lease).ok_or_else(|| not_found("lease"))?;
                l.signing_key = *key;
                Ok(Response::Done)
            }
        }
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

/// Re-hashes a stored image in 64 KiB pieces: whether it still matches.
fn verify_extent(store: &mut dyn ImageStore, img: &Image) -> bool {
    let mut hasher = Sha256::new();
    let mut piece = alloc::vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < img.size {
        let n = usize::try_from((img.size - at).min(piece.len() as u64)).unwrap_or(piece.len());
        let Some(buf) = piece.get_mut(..n) else { return false };
        if store.read(img.extent.start * BLOCK + at, buf).is_err() {
            return false;
        }
        hasher.update(&*buf);
        at += n as u64;
    }
    let digest: [u8; 32] = hasher.finalize().into();
    digest == img.sha256
}

/// The default image store: memory, as a node without a disk has.
fn default_store() -> Box<dyn ImageStore> {
    Box::new(MemImageStore::new(StateLimits::DEFAULT.max_images_bytes, MemImageStore::accept_all))
}

fn internal() -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, "internal error")
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

impl Ownership for NodeState {
    fn vm_lease(&self, vm: VmId) -> Option<LeaseId> {
        self.vms.get(&vm).map(|v| v.spec.lease)
    }

    fn rule_lease(&self, rule: RuleId) -> Option<LeaseId> {
        self.sub_rules.get(&rule).map(|(l, _)| *l)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::crypto::HashDrbg;
    use crate::session::{ConsoleEvent, ConsoleSession};

    #[test]
    fn end_to_end_in_memory() {
        let console = KeyPair::generate(&mut HashDrbg::new([1; 32])).unwrap();
        let tenant = KeyPair::generate(&mut HashDrbg::new([2; 32])).unwrap();
        let mut node = NodeState::provision(Box::new(HashDrbg::new([3; 32])), console.public).unwrap();
        let run = |node: &mut NodeState, role: Role, secret: &crate::SecretKey, key: PublicKey, reqs: Vec<Request>| {
            let mut c = ConsoleSession::new(role, secret, &key, Box::new(HashDrbg::new([4; 32]))).unwrap();
            let mut s = NodeSession::new(Box::new(HashDrbg::new([5; 32])));
            node.serve(&mut s, &c.take_output()).unwrap();
            c.receive(&s.take_output()).unwrap();
            let mut out = Vec::new();
            for r in reqs {
                c.send(r).unwrap();
                node.serve(&mut s, &c.take_output()).unwrap();
                for ev in c.receive(&s.take_output()).unwrap() {
                    if let ConsoleEvent::Reply(r) = ev {
                        out.push(r.body);
                    }
                }
            }
            out
        };
        let lk = node.landlord_key;
        let r = run(
            &mut node,
            Role::Landlord,
            &console.secret,
            lk,
            alloc::vec![Request::CreateLease { tenant_console_key: tenant.public, cluster: ClusterId(1) }],
        );
        let Ok(Response::LeaseCreated { lease, tenant_node_key }) = r[0].clone() else { panic!("{r:?}") };
        let r = run(
            &mut node,
            Role::Tenant(lease),
            &tenant.secret,
            tenant_node_key,
            alloc::vec![
                Request::ListVms,
                Request::Reboot,
                Request::SetSubBoundary {
                    rule: BoundaryRule {
                        action: Action::Allow,
                        proto: Proto::Tcp,
                        peer: Ipv4Net { addr: [10, 0, 0, 0], prefix: 8 },
                        ports: None
                    }
                },
                Request::SetSubBoundary {
                    rule: BoundaryRule {
                        action: Action::Deny,
                        proto: Proto::Tcp,
                        peer: Ipv4Net { addr: [10, 0, 0, 0], prefix: 8 },
                        ports: None
                    }
                },
            ],
        );
        assert_eq!(r[0], Ok(Response::Vms(Vec::new())));
        assert_eq!(r[1].as_ref().unwrap_err().code, ErrorCode::Denied);
        assert_eq!(r[2].as_ref().unwrap_err().code, ErrorCode::Widening);
        assert!(matches!(r[3], Ok(Response::RuleAdded { .. })));
        assert!(!node.reboot_requested);
        assert!(node.audit.iter().any(|e| e.action == "reboot" && e.outcome.starts_with("refused")));
    }

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod snapshot_tests {
    use super::*;
    use crate::crypto::HashDrbg;

    #[test]
    fn snapshot_round_trips_through_postcard() {
        let console = PublicKey([7; 32]);
        let mut n = NodeState::provision(Box::new(HashDrbg::new([1; 32])), console).unwrap();
        let r = n.handle(
            Role::Landlord,
            &Request::CreateLease { tenant_console_key: PublicKey([9; 32]), cluster: ClusterId(1) },
        );
        let Ok(Response::LeaseCreated { lease, tenant_node_key }) = r else { panic!("{r:?}") };
        let bytes = postcard::to_allocvec(&n.snapshot()).unwrap();
        let back = NodeState::restore(Box::new(HashDrbg::new([2; 32])), postcard::from_bytes(&bytes).unwrap()).unwrap();
        assert_eq!(back.landlord_key, n.landlord_key);
        assert_eq!(back.leases.get(&lease).unwrap().node_key, tenant_node_key);
        assert_eq!(back.keys.tenants.get(&lease).unwrap().1, PublicKey([9; 32]));
        assert_eq!(back.audit.len(), n.audit.len());
    }

    fn node_with_vms(names: &[&str]) -> (NodeState, Vec<VmId>) {
        let mut n = NodeState::provision(Box::new(HashDrbg::new([3; 32])), PublicKey([7; 32])).unwrap();
        let r = n.handle(
            Role::Landlord,
            &Request::CreateLease { tenant_console_key: PublicKey([9; 32]), cluster: ClusterId(1) },
        );
        let Ok(Response::LeaseCreated { lease, .. }) = r else { panic!("{r:?}") };
        n.images
            .insert(String::from("img"), Image { extent: Extent { start: 0, blocks: 1 }, size: 16, sha256: [0; 32] });
        let mut ids = Vec::new();
        for name in names {
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
            let r = n.handle(Role::Landlord, &Request::CreateVm { spec });
            let Ok(Response::VmCreated { vm }) = r else { panic!("{r:?}") };
            ids.push(vm);
        }
        (n, ids)
    }

    #[test]
    fn vms_join_their_lease_cluster() {
        let (mut n, ids) = node_with_vms(&["a"]);
        let lease = n.vms[&ids[0]].spec.lease;
        let spec = |name: &str, cluster: u32| VmSpec {
            name: name.into(),
            cluster: ClusterId(cluster),
            ..n.vms[&ids[0]].spec.clone()
        };
        let (default, other) = (spec("b", 0), spec("c", 2));
        let r = n.handle(Role::Landlord, &Request::CreateVm { spec: default });
        let Ok(Response::VmCreated { vm }) = r else { panic!("{r:?}") };
        assert_eq!(n.vms[&vm].spec.cluster, n.leases[&lease].cluster);
        let before = n.vms.len();
        let r = n.handle(Role::Landlord, &Request::CreateVm { spec: other });
        assert!(matches!(&r, Err(e) if e.code == ErrorCode::Invalid && e.message.contains("cluster")), "{r:?}");
        assert_eq!(n.vms.len(), before);
    }

    #[test]
    fn started_vms_come_back_running_after_a_reboot() {
        let (mut n, ids) = node_with_vms(&["a", "b", "c"]);
        for vm in &ids {
            assert!(n.handle(Role::Landlord, &Request::StartVm { vm: *vm }).is_ok());
        }
        assert!(n.handle(Role::Landlord, &Request::StopVm { vm: ids[1] }).is_ok());
        // "c" exited on its own: still wanted, as no console stopped it.
        n.vms.get_mut(&ids[2]).unwrap().state = VmState::Stopped;
        let bytes = postcard::to_allocvec(&n.snapshot()).unwrap();
        let back = NodeState::restore(Box::new(HashDrbg::new([4; 32])), Snapshot::decode(&bytes).unwrap()).unwrap();
        let state = |i: usize| (back.vms[&ids[i]].state, back.vms[&ids[i]].starts);
        assert_eq!(state(0), (VmState::Running, 2));
        assert_eq!(state(1), (VmState::Stopped, 1));
        assert_eq!(state(2), (VmState::Running, 2));
    }

    #[test]
    fn version_1_snapshots_still_load_with_vms_stopped() {
        let (mut n, ids) = node_with_vms(&["old"]);
        n.log(None, "first", String::from("ok"));
        n.log(None, "second", String::from("ok"));
        let snap = n.snapshot();
        #[derive(serde::Serialize)]
        struct V1<'a> {
            version: u16,
            landlord_secret: [u8; 32],
            landlord_console: PublicKey,
            leases: &'a [LeaseSnapshot],
            vms: Vec<(VmId, VmSpecV3, u64)>,
            images: &'a [(String, Vec<u8>, [u8; 32])],
            boundaries: &'a [(ClusterId, Vec<BoundaryRule>)],
            sub_rules: &'a [(RuleId, LeaseId, BoundaryRule)],
            audit: Vec<AuditEntryV1>,
            next_id: u32,
            clock: u64,
        }
        let inline = alloc::vec![(String::from("img"), alloc::vec![0x90u8; 16], [0u8; 32])];
        let v1 = V1 {
            version: 1,
            landlord_secret: snap.landlord_secret,
            landlord_console: snap.landlord_console,
            leases: &snap.leases,
            vms: snap.vms.iter().map(|v| (v.id, v3_spec(&v.spec), 5)).collect(),
            images: &inline,
            boundaries: &snap.boundaries,
            sub_rules: &snap.sub_rules,
            audit: snap
                .audit
                .iter()
                .map(|e| AuditEntryV1 {
                    index: e.index,
                    time_secs: e.time_secs,
                    role: e.role,
                    action: e.action.clone(),
                    outcome: e.outcome.clone(),
                })
                .collect(),
            next_id: snap.next_id,
            clock: snap.clock,
        };
        let bytes = postcard::to_allocvec(&v1).unwrap();
        let back = Snapshot::decode(&bytes).unwrap();
        assert_eq!(back.version, SNAPSHOT_VERSION);
        assert_eq!(back.leases.len(), 1);
        assert_eq!((back.vms[0].id, back.vms[0].starts, back.vms[0].autostart), (ids[0], 5, false));
        assert_eq!(back.audit.len(), n.audit.len());
        // Old entries are chained afresh from a zero anchor.
        assert!(back.audit.first().is_some_and(|e| e.follows(&[0; 32])));
        assert!(back.audit.windows(2).all(|w| w[1].follows(&w[0].chain)));
        assert_eq!(back.legacy_images, inline);
        // Restoring moves the inline bytes into the image store.
        let store = MemImageStore::new(1 << 20, MemImageStore::accept_all);
        let (mut st, dropped) =
            NodeState::restore_with(Box::new(HashDrbg::new([5; 32])), back, Box::new(store), StateLimits::DEFAULT)
                .unwrap();
        assert!(dropped.is_empty());
        assert_eq!(st.images["img"].size, 16);
        assert_eq!(st.image_bytes("img").unwrap_err(), "image \"img\" does not match its SHA-256 (store damaged)");
    }

    fn v3_spec(s: &VmSpec) -> VmSpecV3 {
        VmSpecV3 {
            lease: s.lease,
            name: s.name.clone(),
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            disk_mib: s.disk_mib,
            image: s.image.clone(),
            cluster: s.cluster,
            cmdline: s.cmdline.clone(),
            ip: s.ip,
        }
    }

    #[test]
    fn version_3_snapshots_still_load_without_initrd() {
        let (mut n, ids) = node_with_vms(&["a", "b"]);
        assert!(n.handle(Role::Landlord, &Request::StartVm { vm: ids[1] }).is_ok());
        n.log(None, "entry", String::from("ok"));
        let snap = n.snapshot();
        let v3 = SnapshotV3 {
            version: 3,
            landlord_secret: snap.landlord_secret,
            landlord_console: snap.landlord_console,
            leases: snap.leases.clone(),
            vms: snap
                .vms
                .iter()
                .map(|v| VmSnapshotV3 { id: v.id, spec: v3_spec(&v.spec), starts: v.starts, autostart: v.autostart })
                .collect(),
            images: snap.images.clone(),
            boundaries: snap.boundaries.clone(),
            sub_rules: snap.sub_rules.clone(),
            audit: snap.audit.clone(),
            audit_anchor: snap.audit_anchor,
            next_id: snap.next_id,
            clock: snap.clock,
        };
        let bytes = postcard::to_allocvec(&v3).unwrap();
        let back = Snapshot::decode(&bytes).unwrap();
        assert_eq!(back.version, SNAPSHOT_VERSION);
        assert_eq!(back.vms.len(), 2);
        for (old, new) in snap.vms.iter().zip(&back.vms) {
            assert_eq!(old.spec, new.spec);
            assert_eq!((old.id, old.starts, old.autostart), (new.id, new.starts, new.autostart));
            assert_eq!(new.spec.initrd, None);
        }
        assert_eq!(back.images, snap.images);
        assert_eq!(back.audit.len(), snap.audit.len());
        assert_eq!(back.next_id, snap.next_id);
        // A current snapshot keeps the initrd.
        let mut snap4 = snap.clone();
        snap4.vms[0].spec.initrd = Some(String::from("img"));
        let back4 = Snapshot::decode(&postcard::to_allocvec(&snap4).unwrap()).unwrap();
        assert_eq!(back4.vms[0].spec.initrd.as_deref(), Some("img"));
    }

    #[test]
    fn a_vm_whose_initrd_image_is_missing_is_refused() {
        let (mut n, _) = node_with_vms(&[]);
        let lease = *n.leases.keys().next().unwrap();
        let mut spec = VmSpec {
            name: String::from("withrd"),
            lease,
            cluster: ClusterId(1),
            memory_mib: 16,
            image: String::from("img"),
            cmdline: String::new(),
            disk_mib: 0,
            vcpus: 1,
            ip: None,
            initrd: Some(String::from("nope")),
        };
        let e = n.handle(Role::Landlord, &Request::CreateVm { spec: spec.clone() }).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.starts_with("initrd:"), "{}", e.message);
        spec.initrd = Some(String::from("img"));
        assert!(matches!(n.handle(Role::Landlord, &Request::CreateVm { spec }), Ok(Response::VmCreated { .. })));
    }

    #[test]
    fn snapshots_from_a_newer_build_or_garbage_are_refused() {
        let (n, _) = node_with_vms(&["x"]);
        let mut snap = n.snapshot();
        snap.version = SNAPSHOT_VERSION + 1;
        let err = Snapshot::decode(&postcard::to_allocvec(&snap).unwrap()).unwrap_err();
        assert!(err.contains("newer"), "{err}");
        assert!(Snapshot::decode(&[0xff; 40]).is_err());
        assert!(Snapshot::decode(&[]).is_err());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod upload_tests {
    use super::*;
    use crate::crypto::HashDrbg;

    fn only_elf(b: &[u8]) -> Result<(), String> {
        if b.starts_with(b"\x7fELF") {
            Ok(())
        } else {
            Err(String::from("not an ELF file"))
        }
    }

    fn node(capacity: u64, limits: StateLimits) -> NodeState {
        NodeState::provision(Box::new(HashDrbg::new([1; 32])), PublicKey([7; 32]))
            .unwrap()
            .with_image_store(Box::new(MemImageStore::new(capacity, only_elf)), limits)
    }

    fn image(len: usize, seed: u8) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        v[..4].copy_from_slice(b"\x7fELF");
        v
    }

    fn begin(n: &mut NodeState, name: &str, size: u64) -> Result<(UploadId, u64), ErrorReply> {
        let req = Request::UploadImageBegin { name: name.into(), size, sha256: None, signature: None, lease: None };
        match n.handle(Role::Landlord, &req)? {
            Response::Upload { upload, offset } => Ok((upload, offset)),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn image_list_reports_usage_uploads_and_damage() {
        let mut n = node(1 << 20, StateLimits::DEFAULT);
        let a = image(10_000, 1);
        upload(&mut n, "a", &a).unwrap();
        begin(&mut n, "partial", 5000).unwrap();
        let Response::Images(l) = n.handle(Role::Landlord, &Request::ListImages { verify: true }).unwrap() else {
            panic!()
        };
        assert_eq!(l.images.len(), 1);
        assert_eq!(l.images[0].sha256, <[u8; 32]>::from(Sha256::digest(&a)));
        assert_eq!(l.images[0].intact, Some(true));
        assert_eq!(l.uploads, alloc::vec![UploadInfo { name: "partial".into(), received: 0, size: 5000 }]);
        assert_eq!(l.used_bytes, 15_000);
        assert_eq!(l.limit_bytes, StateLimits::DEFAULT.max_images_bytes);
        // A flipped byte on the disk shows up in a verifying list only.
        let at = n.images["a"].extent.start * BLOCK + 9_999;
        n.store.write(at, &[0]).unwrap();
        let Response::Images(l) = n.handle(Role::Landlord, &Request::ListImages { verify: true }).unwrap() else {
            panic!()
        };
        assert_eq!(l.images[0].intact, Some(false));
        let Response::Images(l) = n.handle(Role::Landlord, &Request::ListImages { verify: false }).unwrap() else {
            panic!()
        };
        assert_eq!(l.images[0].intact, None);
        assert!(n.handle(Role::Tenant(LeaseId(1)), &Request::ListImages { verify: false }).is_err());
    }

    fn upload(n: &mut NodeState, name: &str, data: &[u8]) -> Result<Response, ErrorReply> {
        let (id, mut offset) = begin(n, name, data.len() as u64)?;
        for c in data.chunks(MAX_CHUNK) {
            let r = n.handle(Role::Landlord, &Request::UploadImageChunk { upload: id, offset, bytes: c.to_vec() })?;
            let Response::Upload { offset: o, .. } = r else { panic!("{r:?}") };
            offset = o;
        }
        n.handle(Role::Landlord, &Request::UploadImageCommit { upload: id })
    }

    #[test]
    fn preloaded_images_go_through_the_upload_checks() {
        let mut n = node(8 << 20, limits(2 << 20));
        let a = image(300_000, 1);
        assert_eq!(n.preload_image("kernel", &a), Ok(true));
        assert_eq!(n.image_bytes("kernel").unwrap(), a);
        // The same bytes again: nothing to do.
        assert_eq!(n.preload_image("kernel", &a), Ok(false));
        // Other bytes under the same name replace the image (its room too).
        let b = image(200_000, 2);
        assert_eq!(n.preload_image("kernel", &b), Ok(true));
        assert_eq!(n.image_bytes("kernel").unwrap(), b);
        assert_eq!(n.images.len(), 1);
        assert_eq!(n.images_bytes(), 200_000);
        // The upload refusals apply, and leave no upload behind.
        let e = n.preload_image("junk", b"not a kernel").unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains("not a bootable kernel"), "{e}");
        let e = n.preload_image("big", &image((1 << 20) + 1, 3)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Limit);
        assert!(e.message.contains("max_image_bytes"), "{e}");
        assert_eq!(n.preload_image("bad name", &a).unwrap_err().code, ErrorCode::Invalid);
        assert_eq!(n.preload_image("empty", b"").unwrap_err().code, ErrorCode::Invalid);
        assert_eq!(n.preload_image("second", &image(1 << 20, 4)), Ok(true));
        let e = n.preload_image("third", &image(1 << 20, 5)).unwrap_err();
        assert!(e.message.contains("max_images_bytes"), "{e}");
        assert!(n.uploads.is_empty());
        let names: Vec<&str> = n.images.keys().map(String::as_str).collect();
        assert_eq!(names, ["kernel", "second"]);
    }

    fn limits(total: u64) -> StateLimits {
        StateLimits { max_image_bytes: 1 << 20, max_images_bytes: total, ..StateLimits::DEFAULT }
    }

    #[test]
    fn images_are_stored_and_read_back_intact() {
        let mut n = node(8 << 20, limits(4 << 20));
        let a = image(300_000, 1);
        let b = image(123_457, 2);
        upload(&mut n, "a", &a).unwrap();
        upload(&mut n, "b", &b).unwrap();
        assert_eq!(n.image_bytes("a").unwrap(), a);
        assert_eq!(n.image_bytes("b").unwrap(), b);
        // Replacing an image keeps one copy.
        let a2 = image(1000, 3);
        upload(&mut n, "a", &a2).unwrap();
        assert_eq!(n.image_bytes("a").unwrap(), a2);
        assert_eq!(n.images_bytes(), 1000 + 123_457);
    }

    #[test]
    fn the_quota_refuses_past_the_limit_and_names_it() {
        let mut n = node(8 << 20, limits(2 << 20));
        upload(&mut n, "a", &image(1 << 20, 1)).unwrap();
        upload(&mut n, "b", &image(1 << 20, 2)).unwrap();
        let e = upload(&mut n, "c", &image(8, 3)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Limit);
        assert!(e.message.contains("max_images_bytes") && e.message.contains("2 MiB"), "{}", e.message);
        let e = upload(&mut n, "d", &image((1 << 20) + 1, 3)).unwrap_err();
        assert!(e.message.contains("max_image_bytes"), "{}", e.message);
        // Nothing changed: both images intact.
        assert_eq!(n.image_bytes("a").unwrap(), image(1 << 20, 1));
        assert_eq!(n.image_bytes("b").unwrap(), image(1 << 20, 2));
        assert!(n.uploads.is_empty());
    }

    #[test]
    fn a_resumed_upload_counts_once() {
        let mut n = node(8 << 20, limits(1 << 20));
        let data = image(700_000, 4);
        let (id, _) = begin(&mut n, "r", data.len() as u64).unwrap();
        n.handle(Role::Landlord, &Request::UploadImageChunk { upload: id, offset: 0, bytes: data[..1000].to_vec() })
            .unwrap();
        // The console reconnects and begins again: same upload, same offset.
        for _ in 0..3 {
            assert_eq!(begin(&mut n, "r", data.len() as u64).unwrap(), (id, 1000));
        }
        assert_eq!(n.images_bytes(), 700_000);
        let e = begin(&mut n, "other", 400_000).unwrap_err();
        assert_eq!(e.code, ErrorCode::Limit);
        assert!(begin(&mut n, "other", 300_000).is_ok());
    }

    #[test]
    fn cancel_and_expiry_free_partial_uploads() {
        let mut n = node(8 << 20, limits(1 << 20));
        begin(&mut n, "x", 1 << 20).unwrap();
        assert_eq!(begin(&mut n, "y", 1).unwrap_err().code, ErrorCode::Limit);
        n.handle(Role::Landlord, &Request::CancelUpload { name: "x".into() }).unwrap();
        assert_eq!(
            n.handle(Role::Landlord, &Request::CancelUpload { name: "x".into() }).unwrap_err().code,
            ErrorCode::NotFound
        );
        begin(&mut n, "y", 1 << 20).unwrap();
        n.set_clock(n.limits.upload_expiry_secs - 1);
        assert!(n.expire_uploads().is_empty());
        n.set_clock(n.limits.upload_expiry_secs);
        assert_eq!(n.expire_uploads(), alloc::vec![String::from("y")]);
        assert_eq!(n.images_bytes(), 0);
    }

    #[test]
    fn unbootable_empty_and_badly_named_images_are_refused() {
        let mut n = node(8 << 20, limits(4 << 20));
        let e = upload(&mut n, "junk", b"not a kernel").unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains("not an ELF file"), "{}", e.message);
        assert!(!n.images.contains_key("junk"));
        assert_eq!(n.images_bytes(), 0, "a refused image gives its room back");
        assert_eq!(begin(&mut n, "empty", 0).unwrap_err().code, ErrorCode::Invalid);
        let e = begin(&mut n, "web\nvm web stopped: exit-code=0", 10).unwrap_err();
        assert!(e.message.starts_with("name: "), "{}", e.message);
    }

    #[test]
    fn too_many_unfinished_uploads_are_refused() {
        let mut n = node(8 << 20, StateLimits { max_uploads: 2, ..limits(4 << 20) });
        begin(&mut n, "a", 10).unwrap();
        begin(&mut n, "b", 10).unwrap();
        let e = begin(&mut n, "c", 10).unwrap_err();
        assert!(e.message.contains("max_uploads"), "{}", e.message);
    }

    #[test]
    fn the_audit_log_is_bounded_and_pages_from_the_oldest_kept() {
        let mut n = node(1 << 20, StateLimits { max_audit: 64, ..StateLimits::DEFAULT });
        for i in 0..1000 {
            n.log(None, "test", format!("entry {i}"));
        }
        assert!(n.audit.len() <= 64);
        assert_eq!(n.audit.last().unwrap().index, 999);
        assert_eq!(n.audit_base, n.audit[0].index);
        let r = n.handle(Role::Landlord, &Request::ReadAudit { from: 0 }).unwrap();
        let Response::Audit { entries, next, prev_chain } = r else { panic!() };
        assert_eq!(entries[0].index, n.audit_base);
        assert_eq!(next, 1000);
        assert!(entries.windows(2).all(|w| w[1].index == w[0].index + 1));
        // The chain holds across the trimming: the page checks from its
        // anchor, and the anchor is the last trimmed entry's chain value.
        assert_eq!(prev_chain, n.audit_anchor);
        assert_ne!(prev_chain, [0; 32]);
        let mut prev = prev_chain;
        for e in &entries {
            assert!(e.follows(&prev), "entry {}", e.index);
            prev = e.chain;
        }
        // A page further on starts from the entry before it.
        let from = entries[10].index;
        let Response::Audit { entries: later, prev_chain, .. } =
            n.handle(Role::Landlord, &Request::ReadAudit { from }).unwrap()
        else {
            panic!()
        };
        assert_eq!(prev_chain, entries[9].chain);
        assert!(later[0].follows(&prev_chain));
        // A changed entry no longer follows.
        let mut forged = later[0].clone();
        forged.outcome.push('!');
        assert!(!forged.follows(&prev_chain));
        // The anchor survives a snapshot.
        let snap = n.snapshot();
        let back = Snapshot::decode(&postcard::to_allocvec(&snap).unwrap()).unwrap();
        assert_eq!(back.audit_anchor, n.audit_anchor);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod policy_tests {
    use super::*;
    use crate::crypto::HashDrbg;
    use crate::monitor::{Condition, Policy, PolicyAction, PolicyRule};

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
            let r = n.handle(Role::Landlord, &Request::CreateVm { spec });
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
        n.handle(role, &Request::SetPolicy { cluster: ClusterId(cluster), expect_version: expect, policy: p.clone() })
    }

    fn get(n: &mut NodeState, role: Role, cluster: u32) -> Result<Response, ErrorReply> {
        n.handle(role, &Request::GetPolicy { cluster: ClusterId(cluster) })
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
        assert!(n.handle(Role::Landlord, &Request::EndLease { lease: la }).is_ok());
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
        assert_eq!(snap.version, 5);
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
