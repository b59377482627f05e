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
use crate::msg::*;
use crate::session::{KeyTable, NodeEvent, NodeSession, SessionError};
use crate::sig::verify_image_digest;
use crate::{MAX_CHUNK, MAX_CONSOLE_BYTES};

/// Largest number of audit entries returned per request.
const AUDIT_PAGE: usize = 100;

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
    /// Bytes received.
    pub data: Vec<u8>,
}

/// A stored image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its bytes.
    pub data: Vec<u8>,
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

/// The snapshot format this build writes.
pub const SNAPSHOT_VERSION: u16 = 2;

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
    /// Stored images: name, bytes, SHA-256.
    pub images: Vec<(String, Vec<u8>, [u8; 32])>,
    /// Cluster boundaries.
    pub boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    /// Tenant sub-boundaries.
    pub sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    /// The audit log.
    pub audit: Vec<AuditEntry>,
    /// Next id to hand out.
    pub next_id: u32,
    /// Last audit time.
    pub clock: u64,
}

/// The version 1 layout (VMs without the autostart flag), still read so an
/// upgraded node keeps its leases, VMs and images.
#[derive(serde::Deserialize)]
struct SnapshotV1 {
    version: u16,
    landlord_secret: [u8; 32],
    landlord_console: PublicKey,
    leases: Vec<LeaseSnapshot>,
    vms: Vec<(VmId, VmSpec, u64)>,
    images: Vec<(String, Vec<u8>, [u8; 32])>,
    boundaries: Vec<(ClusterId, Vec<BoundaryRule>)>,
    sub_rules: Vec<(RuleId, LeaseId, BoundaryRule)>,
    audit: Vec<AuditEntry>,
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
        match postcard::from_bytes::<SnapshotV1>(bytes) {
            Ok(v1) if v1.version == 1 => Ok(Snapshot {
                version: SNAPSHOT_VERSION,
                landlord_secret: v1.landlord_secret,
                landlord_console: v1.landlord_console,
                leases: v1.leases,
                vms: v1
                    .vms
                    .into_iter()
                    .map(|(id, spec, starts)| VmSnapshot { id, spec, starts, autostart: false })
                    .collect(),
                images: v1.images,
                boundaries: v1.boundaries,
                sub_rules: v1.sub_rules,
                audit: v1.audit,
                next_id: v1.next_id,
                clock: v1.clock,
            }),
            Ok(v1) => Err(format!("unknown snapshot version {}", v1.version)),
            Err(e) => Err(format!("snapshot does not decode: {e}")),
        }
    }
}

/// The whole simulated node: keys, leases, VMs, images, rules, audit log.
pub struct NodeState {
    rng: Box<dyn Entropy>,
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
    /// The audit log.
    pub audit: Vec<AuditEntry>,
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
            keys,
            landlord_key: landlord.public,
            leases: BTreeMap::new(),
            vms: BTreeMap::new(),
            images: BTreeMap::new(),
            uploads: BTreeMap::new(),
            boundaries: BTreeMap::new(),
            sub_rules: BTreeMap::new(),
            audit: Vec::new(),
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
            images: self.images.iter().map(|(n, i)| (n.clone(), i.data.clone(), i.sha256)).collect(),
            boundaries: self.boundaries.iter().map(|(c, r)| (*c, r.clone())).collect(),
            sub_rules: self.sub_rules.iter().map(|(id, (l, r))| (*id, *l, *r)).collect(),
            audit: self.audit.clone(),
            next_id: self.next_id,
            clock: self.clock,
        }
    }

    /// Rebuilds the state a [`Snapshot`] holds. VMs a console had started
    /// come back wanted running (one more start); the rest stopped.
    /// `None` if a stored key is not a valid X25519 secret.
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
        Some(NodeState {
            rng,
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
            images: snap.images.into_iter().map(|(n, data, sha256)| (n, Image { data, sha256 })).collect(),
            uploads: BTreeMap::new(),
            boundaries: snap.boundaries.into_iter().collect(),
            sub_rules: snap.sub_rules.into_iter().map(|(id, l, r)| (id, (l, r))).collect(),
            audit: snap.audit,
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
        let index = self.audit.len() as u64;
        self.audit.push(AuditEntry { index, time_secs: self.clock, role, action: action.to_string(), outcome });
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
                Ok(Response::Done)
            }
            Request::SetClusterBoundary { cluster, rules } => {
                self.boundaries.insert(*cluster, rules.clone());
                Ok(Response::Done)
            }
            Request::UploadImageBegin { name, size, sha256, signature, lease } => {
                if name.is_empty() || name.len() > 64 {
                    return Err(ErrorReply::new(ErrorCode::Invalid, "name: must be 1 to 64 bytes"));
                }
                if let Some(l) = lease {
                    if !self.leases.contains_key(l) {
                        return Err(not_found("lease"));
                    }
                }
                if let Some((id, u)) = self.uploads.iter().find(|(_, u)| u.name == *name) {
                    if u.size != *size || u.sha256 != *sha256 {
                        return Err(ErrorReply::new(
                            ErrorCode::Conflict,
                            "an upload of this name with another size or hash is in progress",
                        ));
                    }
                    return Ok(Response::Upload { upload: *id, offset: u.data.len() as u64 });
                }
                let id = UploadId(self.id());
                self.uploads.insert(
                    id,
                    Upload {
                        name: name.clone(),
                        size: *size,
                        sha256: *sha256,
                        signature: *signature,
                        lease: *lease,
                        data: Vec::new(),
                    },
                );
                Ok(Response::Upload { upload: id, offset: 0 })
            }
            Request::UploadImageChunk { upload, offset, bytes } => {
                let u = self.uploads.get_mut(upload).ok_or_else(|| not_found("upload"))?;
                if bytes.len() > MAX_CHUNK {
                    return Err(ErrorReply::new(ErrorCode::Invalid, format!("bytes: chunk above {MAX_CHUNK} bytes")));
                }
                if *offset != u.data.len() as u64 {
                    return Err(ErrorReply::new(
                        ErrorCode::Invalid,
                        format!("offset: expected {}, got {offset}", u.data.len()),
                    ));
                }
                if u.data.len() as u64 + bytes.len() as u64 > u.size {
                    return Err(ErrorReply::new(ErrorCode::Invalid, "bytes: past the declared size"));
                }
                u.data.extend_from_slice(bytes);
                Ok(Response::Upload { upload: *upload, offset: u.data.len() as u64 })
            }
            Request::CancelUpload { name } => {
                let id = self.uploads.iter().find(|(_, u)| u.name == *name).map(|(id, _)| *id);
                let id = id.ok_or_else(|| not_found("upload"))?;
                self.uploads.remove(&id);
                Ok(Response::Done)
            }
            Request::UploadImageCommit { upload } => {
                let u = self.uploads.get(upload).ok_or_else(|| not_found("upload"))?;
                if u.data.len() as u64 != u.size {
                    return Err(ErrorReply::new(
                        ErrorCode::Invalid,
                        format!("size: {} of {} bytes received", u.data.len(), u.size),
                    ));
                }
                let digest: [u8; 32] = Sha256::digest(&u.data).into();
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
                let (name, size) = (u.name.clone(), u.size);
                self.images.insert(u.name, Image { data: u.data, sha256: digest });
                Ok(Response::ImageStored { name, size, sha256: digest })
            }
            Request::CreateVm { spec } => {
                if !self.leases.contains_key(&spec.lease) {
                    return Err(not_found("lease"));
                }
                if !self.images.contains_key(&spec.image) {
                    return Err(ErrorReply::new(
                        ErrorCode::NotFound,
                        format!("image: no image named {:?}", spec.image),
                    ));
                }
                if spec.vcpus == 0 || spec.memory_mib == 0 {
                    return Err(ErrorReply::new(ErrorCode::Invalid, "vcpus/memory_mib: must be positive"));
                }
                if self.vms.values().any(|v| v.spec.lease == spec.lease && v.spec.name == spec.name) {
                    return Err(ErrorReply::new(ErrorCode::Conflict, "name: already used in this lease"));
                }
                let vm = VmId(self.id());
                self.vms.insert(
                    vm,
                    Vm {
                        spec: spec.clone(),
                        state: VmState::Stopped,
                        console: Vec::new(),
                        starts: 0,
                        autostart: false,
                    },
                );
                Ok(Response::VmCreated { vm })
            }
            Request::DestroyVm { vm } => {
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
                let start = usize::try_from(*from).unwrap_or(usize::MAX);
                let entries: Vec<AuditEntry> = self
                    .audit
                    .iter()
                    .skip(start)
                    .filter(|e| role == Role::Landlord || e.role == Some(role))
                    .take(AUDIT_PAGE)
                    .cloned()
                    .collect();
                let next = if entries.len() < AUDIT_PAGE {
                    (self.audit.len() as u64).max(*from)
                } else {
                    entries.last().map_or(*from, |e| e.index + 1)
                };
                Ok(Response::Audit { entries, next })
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
        n.images.insert(String::from("img"), Image { data: alloc::vec![0x90; 16], sha256: [0; 32] });
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
            };
            let r = n.handle(Role::Landlord, &Request::CreateVm { spec });
            let Ok(Response::VmCreated { vm }) = r else { panic!("{r:?}") };
            ids.push(vm);
        }
        (n, ids)
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
        let (n, ids) = node_with_vms(&["old"]);
        let snap = n.snapshot();
        #[derive(serde::Serialize)]
        struct V1<'a> {
            version: u16,
            landlord_secret: [u8; 32],
            landlord_console: PublicKey,
            leases: &'a [LeaseSnapshot],
            vms: Vec<(VmId, VmSpec, u64)>,
            images: &'a [(String, Vec<u8>, [u8; 32])],
            boundaries: &'a [(ClusterId, Vec<BoundaryRule>)],
            sub_rules: &'a [(RuleId, LeaseId, BoundaryRule)],
            audit: &'a [AuditEntry],
            next_id: u32,
            clock: u64,
        }
        let v1 = V1 {
            version: 1,
            landlord_secret: snap.landlord_secret,
            landlord_console: snap.landlord_console,
            leases: &snap.leases,
            vms: snap.vms.iter().map(|v| (v.id, v.spec.clone(), 5)).collect(),
            images: &snap.images,
            boundaries: &snap.boundaries,
            sub_rules: &snap.sub_rules,
            audit: &snap.audit,
            next_id: snap.next_id,
            clock: snap.clock,
        };
        let bytes = postcard::to_allocvec(&v1).unwrap();
        let back = Snapshot::decode(&bytes).unwrap();
        assert_eq!(back.version, SNAPSHOT_VERSION);
        assert_eq!(back.leases.len(), 1);
        assert_eq!((back.vms[0].id, back.vms[0].starts, back.vms[0].autostart), (ids[0], 5, false));
        assert_eq!(back.audit.len(), n.audit.len());
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
