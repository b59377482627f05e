//! The typed messages of the management protocol and their codec.
//!
//! All messages are `postcard`-encoded. VM, rule and status types are kept
//! small and self-contained here (the hypervisor maps them to its own config
//! types) so that this crate is the single definition of the wire format.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::crypto::PublicKey;

/// Identifies a lease (one tenant's tenancy on a node); also selects which
/// tenant key pair answers a tenant console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub u32);

/// Identifies a VM on a node, unique across leases so a tenant cannot name
/// another lease's VM by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmId(pub u32);

/// Identifies an image upload in progress, so an interrupted upload can be
/// resumed by a later session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UploadId(pub u32);

/// Identifies a tenant sub-boundary rule, so it can be removed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleId(pub u32);

/// Identifies a cluster (a group of VMs sharing a landlord boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u32);

/// Who is speaking: selects the node's static key for the handshake and
/// bounds what the session may do (see [`crate::authorize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The facility operator: hardware and facility operations.
    Landlord,
    /// A tenant, confined to its lease's VMs and rules.
    Tenant(LeaseId),
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Role::Landlord => write!(f, "landlord"),
            Role::Tenant(l) => write!(f, "tenant of lease {}", l.0),
        }
    }
}

/// The first, cleartext frame from the console. It selects the node's static
/// key and is the Noise prologue on both sides, so tampering with it breaks
/// the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the console speaks ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// The role the console asks for.
    pub role: Role,
}

/// The node's answer to the console's hello and first handshake message:
/// either the second Noise message or a (cleartext, unauthenticated) refusal
/// so the console can tell the user why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeReply {
    /// The Noise IK responder message; the session is established.
    Accept(Vec<u8>),
    /// The node refused the handshake.
    Refused(ErrorReply),
}

/// One request, numbered so replays and reordering are detected even inside
/// an authenticated session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Strictly increasing per session, starting at 1.
    pub seq: u64,
    /// The request.
    pub body: Request,
}

/// The answer to the request with the same `seq` (or `seq` 0 for a refusal
/// of a message that could not be decoded, after which the node closes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's sequence number.
    pub seq: u64,
    /// The result.
    pub body: Result<Response, ErrorReply>,
}

/// Why a request or session was refused: a machine-readable code for scripts
/// and a human message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The category.
    pub code: ErrorCode,
    /// A human-readable explanation naming the field or reason.
    pub message: String,
}

impl ErrorReply {
    /// Builds an error reply, so call sites stay one line.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { code, message: message.into() }
    }
}

impl core::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Error categories, stable across versions so scripts can match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The message could not be decoded.
    Malformed,
    /// The message exceeded a size limit.
    Oversize,
    /// The protocol version is not supported.
    Version,
    /// The console's static key is not registered on this node.
    UnknownKey,
    /// The console's key is registered, but not for the role it asked for.
    WrongRole,
    /// The role names no lease on this node.
    UnknownRole,
    /// The handshake failed cryptographically.
    Handshake,
    /// A sequence number was replayed or out of order.
    Replay,
    /// The role may not perform this request.
    Denied,
    /// The named object does not exist (or is not visible to this role).
    NotFound,
    /// A field is invalid; the message names it.
    Invalid,
    /// The request conflicts with current state (e.g. name in use).
    Conflict,
    /// A tenant rule would widen the landlord's boundary.
    Widening,
    /// An image signature did not verify.
    BadSignature,
    /// The node does not support this request (yet).
    Unsupported,
    /// The node failed internally.
    Internal,
    /// The node has no room for another session now (every slot is held by
    /// authenticated sessions); the console may retry after a moment.
    Busy,
    /// A node limit (quota, table size) would be exceeded; the message
    /// names the limit.
    Limit,
}

impl ErrorCode {
    /// Whether this code marks a protocol refusal after which the node has
    /// closed the session. Request handlers must not use these codes.
    pub fn closes_session(self) -> bool {
        matches!(
            self,
            ErrorCode::Malformed | ErrorCode::Oversize | ErrorCode::Replay | ErrorCode::Version | ErrorCode::Handshake
        )
    }
}

impl From<agent_proto::RelayError> for ErrorReply {
    /// How the node answers a console when a VM's agent relay refuses: the
    /// node and the tests' simulated node share this one mapping.
    fn from(e: agent_proto::RelayError) -> Self {
        use agent_proto::RelayError as R;
        let code = match e {
            R::NoAgent(_) | R::Closed => ErrorCode::Conflict,
            R::NoStream => ErrorCode::NotFound,
            R::TooManyStreams(_) | R::InputFull(_) => ErrorCode::Limit,
            R::TooLarge(_) | R::Invalid(_) => ErrorCode::Invalid,
        };
        ErrorReply::new(code, alloc::format!("{e}"))
    }
}

/// An Ed25519 public key used to verify tenant image signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVerifyKey(pub [u8; 32]);

/// An Ed25519 signature, split in halves because serde derives arrays only up
/// to 32 elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSignature {
    /// R, the first half of the signature.
    pub r: [u8; 32],
    /// s, the second half.
    pub s: [u8; 32],
}

impl ImageSignature {
    /// From the 64-byte form that Ed25519 libraries use.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(b.get(..32).unwrap_or(&[0u8; 32]));
        s.copy_from_slice(b.get(32..).unwrap_or(&[0u8; 32]));
        ImageSignature { r, s }
    }

    /// To the 64-byte form that Ed25519 libraries use.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        for (d, s) in b.iter_mut().zip(self.r.iter().chain(self.s.iter())) {
            *d = *s;
        }
        b
    }
}

/// What a boundary rule does with matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Let it through.
    Allow,
    /// Drop it.
    Deny,
}

/// Which IP protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proto {
    /// Any protocol.
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// ICMP only.
    Icmp,
}

/// An IPv4 network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Net {
    /// Network address.
    pub addr: [u8; 4],
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// Whether `other` lies entirely inside `self`, used for the "sub-boundary
    /// only narrows" check.
    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        if self.prefix > 32 || other.prefix > 32 || other.prefix < self.prefix {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
        (u32::from_be_bytes(self.addr) & mask) == (u32::from_be_bytes(other.addr) & mask)
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

/// One boundary rule: cluster boundaries (landlord) and sub-boundaries
/// (tenant) share this shape so narrowing can be checked rule against rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundaryRule {
    /// Allow or deny.
    pub action: Action,
    /// Protocol matched.
    pub proto: Proto,
    /// Peer network matched.
    pub peer: Ipv4Net,
    /// Peer ports matched (`None` = all ports).
    pub ports: Option<PortRange>,
}

/// A VM definition, as the landlord creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The lease owning the VM.
    pub lease: LeaseId,
    /// A human name, unique per lease.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Virtual disk size in MiB (0 = no disk).
    pub disk_mib: u32,
    /// Name of an uploaded image to boot.
    pub image: String,
    /// Cluster the VM joins.
    pub cluster: ClusterId,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// IPv4 address of the VM's NIC in its cluster; no NIC when absent.
    #[serde(default)]
    pub ip: Option<[u8; 4]>,
    /// Name of an uploaded image loaded as the VM's initrd (initramfs,
    /// a multiboot module); none when absent.
    #[serde(default)]
    pub initrd: Option<String>,
}

/// Run state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Defined, not running.
    Stopped,
    /// Running.
    Running,
    /// Stopped by a fault; the reason is in the audit log.
    Faulted,
}

/// A VM as listed to a console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Its id.
    pub id: VmId,
    /// Its definition.
    pub spec: VmSpec,
    /// Its state.
    pub state: VmState,
}

/// A named counter (VM exits per reason, packets, drops, bytes encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Counter name, e.g. `exits.io`.
    pub name: String,
    /// Its value.
    pub value: u64,
}

/// Node health for the landlord.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// BMonitor version string.
    pub version: String,
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// Physical CPUs.
    pub cpus: u32,
    /// Total memory in MiB.
    pub memory_total_mib: u64,
    /// Free memory in MiB.
    pub memory_free_mib: u64,
    /// Disks present, with sizes in MiB.
    pub disks: Vec<Counter>,
    /// Whether the uplink NIC has a link and an address.
    pub nic_up: bool,
    /// Number of leases.
    pub leases: u32,
    /// VMs defined.
    pub vms_total: u32,
    /// VMs running.
    pub vms_running: u32,
    /// Node-wide counters.
    pub counters: Vec<Counter>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log (monotonic).
    pub index: u64,
    /// Node time in seconds since boot.
    pub time_secs: u64,
    /// Who acted (`None` = the node itself or an unauthenticated peer).
    pub role: Option<Role>,
    /// What was attempted.
    pub action: String,
    /// `ok` or the refusal reason.
    pub outcome: String,
    /// The hash chain: SHA-256 over the previous entry's `chain` and this
    /// entry's fields ([`AuditEntry::link`]), so a reader holding any
    /// earlier chain value can tell that no entry was changed, dropped or
    /// inserted after it, across pages and across trimming.
    pub chain: [u8; 32],
}

impl AuditEntry {
    /// The chain value of an entry with these fields after `prev` (all
    /// zeros before the first entry ever written).
    pub fn link(
        prev: &[u8; 32],
        index: u64,
        time_secs: u64,
        role: Option<Role>,
        action: &str,
        outcome: &str,
    ) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let fields = postcard::to_allocvec(&(index, time_secs, role, action, outcome)).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(b"bmonitor audit chain v1");
        h.update(prev);
        h.update(&fields);
        h.finalize().into()
    }

    /// Whether this entry's `chain` follows from `prev`.
    pub fn follows(&self, prev: &[u8; 32]) -> bool {
        self.chain == AuditEntry::link(prev, self.index, self.time_secs, self.role, &self.action, &self.outcome)
    }
}

/// Requests. Landlord and tenant operations share one enum so that
/// [`crate::authorize`] is one match that a reviewer reads in one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    // ---- landlord ----
    /// Node health and counters.
    NodeStatus,
    /// Reboot the node.
    Reboot,
    /// Power the node off.
    Shutdown,
    /// Create a lease and register the tenant console's static key; the reply
    /// carries the new tenant node key U_T.
    CreateLease {
        /// The tenant console's X25519 static public key.
        tenant_console_key: PublicKey,
        /// The cluster the lease's VMs join.
        cluster: ClusterId,
    },
    /// End a lease: destroys its VMs, discards its keys.
    EndLease {
        /// The lease.
        lease: LeaseId,
    },
    /// Replace a cluster's boundary rules.
    SetClusterBoundary {
        /// The cluster.
        cluster: ClusterId,
        /// Its rules, first match wins, default deny.
        rules: Vec<BoundaryRule>,
    },
    /// Start (or resume) an image upload. On an existing upload with the same
    /// name and size the reply gives its current offset.
    UploadImageBegin {
        /// Image name.
        name: String,
        /// Total size in bytes.
        size: u64,
        /// Expected SHA-256 of the whole image, checked at commit.
        sha256: Option<[u8; 32]>,
        /// Tenant Ed25519 signature, checked when the lease has a signing key.
        signature: Option<ImageSignature>,
        /// The lease the image is for (its signing key applies).
        lease: Option<LeaseId>,
    },
    /// One chunk; `offset` must equal the upload's current offset.
    UploadImageChunk {
        /// The upload.
        upload: UploadId,
        /// Where this chunk goes.
        offset: u64,
        /// At most [`crate::MAX_CHUNK`] bytes.
        bytes: Vec<u8>,
    },
    /// Finish an upload: checks size, hash and signature, stores the image.
    UploadImageCommit {
        /// The upload.
        upload: UploadId,
    },
    /// Define a VM.
    CreateVm {
        /// Its definition.
        spec: VmSpec,
    },
    /// Stop and delete a VM and its disk.
    DestroyVm {
        /// The VM.
        vm: VmId,
    },
    /// Generate a new landlord key pair (crypto-erases data under the old K_L).
    RotateLandlordKey,
    /// Generate a new tenant key pair for a lease (the old tenant console is
    /// refused from then on), optionally registering a new tenant console key.
    RegenerateTenantKey {
        /// The lease.
        lease: LeaseId,
        /// A new tenant console static key, if the tenant changes hands.
        tenant_console_key: Option<PublicKey>,
    },
    // ---- both (scoped by role) ----
    /// Audit log from index `from` (a tenant sees only its lease's entries).
    ReadAudit {
        /// First index wanted.
        from: u64,
    },
    /// VMs visible to the role.
    ListVms,
    /// Start a VM.
    StartVm {
        /// The VM.
        vm: VmId,
    },
    /// Stop a VM.
    StopVm {
        /// The VM.
        vm: VmId,
    },
    /// Restart a VM.
    RestartVm {
        /// The VM.
        vm: VmId,
    },
    /// Counters of one VM.
    ReadCounters {
        /// The VM.
        vm: VmId,
    },
    // ---- tenant ----
    /// Restart a VM from a fresh copy of its image.
    ReloadImage {
        /// The VM.
        vm: VmId,
    },
    /// Read a VM's serial console output from an offset.
    ConsoleRead {
        /// The VM.
        vm: VmId,
        /// Offset in the console output stream.
        from_offset: u64,
    },
    /// Type into a VM's serial console.
    ConsoleWrite {
        /// The VM.
        vm: VmId,
        /// At most [`crate::MAX_CONSOLE_BYTES`] bytes.
        bytes: Vec<u8>,
    },
    /// Add a sub-boundary rule; must only narrow the cluster boundary.
    SetSubBoundary {
        /// The rule.
        rule: BoundaryRule,
    },
    /// Remove a sub-boundary rule.
    RemoveSubBoundary {
        /// The rule.
        id: RuleId,
    },
    /// Generate a new tenant key pair for the caller's lease.
    RotateTenantKey,
    /// Set (or clear) the Ed25519 key that must sign this lease's images.
    SetImageSigningKey {
        /// The key, or `None` to stop requiring signatures.
        key: Option<ImageVerifyKey>,
    },
    // ---- landlord (added in protocol 1 without renumbering) ----
    /// Pause every VM (they keep their state and resume where they were);
    /// the management plane stays up.
    Suspend,
    /// Resume the VMs a `Suspend` paused.
    Resume,
    // ---- landlord (added in protocol 1 without renumbering) ----
    /// Abandon the upload of this image name and free what it holds on the
    /// node (an unfinished upload also expires on its own).
    CancelUpload {
        /// The image name the upload was begun with.
        name: String,
    },
    /// The stored images and unfinished uploads, with the space they use.
    ListImages {
        /// Re-read every image from the node's disk and check its SHA-256
        /// (a scrub: slow for large images).
        verify: bool,
    },
    // ---- tenant: the guest agent (protocol 1, appended without renumbering) ----
    /// Start an operation in the VM through its agent (exec, file copy,
    /// processes, services, inventory); answered with the stream that
    /// carries its events.
    AgentOpen {
        /// The VM.
        vm: VmId,
        /// The operation.
        op: agent_proto::Op,
    },
    /// Input for an agent stream (stdin, file data, a signal, a resize).
    AgentSend {
        /// The VM.
        vm: VmId,
        /// The stream from [`Response::AgentStream`].
        stream: u32,
        /// The input.
        input: agent_proto::Input,
    },
    /// Take up to `max_bytes` of an agent stream's events.
    AgentPoll {
        /// The VM.
        vm: VmId,
        /// The stream.
        stream: u32,
        /// At most this many bytes of events (at least one event is returned when any waits).
        max_bytes: u32,
    },
    /// The VM's agent: attached, heartbeats, load.
    AgentStatus {
        /// The VM.
        vm: VmId,
    },
    /// The VM's agent log (attach/detach, heartbeats missed, service events) from index `from`.
    AgentLog {
        /// The VM.
        vm: VmId,
        /// First index wanted.
        from: u64,
    },
    /// Set the agent's heartbeat period and the bound after which it is reported hung.
    AgentHeartbeat {
        /// The VM.
        vm: VmId,
        /// Heartbeat period, 100..=60000 ms.
        period_ms: u32,
        /// Hung after this long without one (at least twice the period).
        timeout_ms: u64,
    },
    // ---- monitoring (both roles; appended without renumbering) ----
    /// Subscribe this session to health pushes every `interval_ms` and to
    /// the events the role may see, from sequence number `since` (a
    /// reconnecting console resumes where it stopped; `None`: only new
    /// events). Pushes arrive as replies numbered
    /// [`crate::monitor::PUSH_SEQ`] until the session ends. Subscribing
    /// again replaces the subscription.
    Subscribe {
        /// First event wanted.
        since: Option<u64>,
        /// Health push period, [`crate::monitor::MIN_INTERVAL_MS`]..=[`crate::monitor::MAX_INTERVAL_MS`].
        interval_ms: u32,
    },
    /// Replace the caller's corrective-action policy for a cluster (a
    /// tenant: its lease's cluster only). With `expect_version`, refused
    /// as a conflict unless the stored policy has that version (0: none
    /// stored yet), so two operators cannot overwrite each other blindly.
    SetPolicy {
        /// The cluster.
        cluster: ClusterId,
        /// The version the caller last read.
        expect_version: Option<u32>,
        /// The new policy (an empty one removes the caller's policy).
        policy: crate::monitor::Policy,
    },
    /// The caller's policy for a cluster.
    GetPolicy {
        /// The cluster.
        cluster: ClusterId,
    },
    // ---- landlord: membership of a facility (docs/fleet.md) ----
    /// The facility controller's heartbeat: renews the node's fencing
    /// lease for `fence_after_ms` (0: no lease, protected VMs never stop
    /// for lack of heartbeats) and asks for the node's facility report.
    FleetHeartbeat {
        /// How long the node keeps its protected VMs running without
        /// another heartbeat.
        fence_after_ms: u32,
    },
    /// Define a VM placed by the facility controller (its MAC, instance id
    /// and epoch); idempotent for the same instance and name.
    FleetCreateVm {
        /// Its definition.
        spec: VmSpec,
        /// Its facility record.
        fleet: crate::fleet::FleetSpec,
    },
    /// Start a facility VM at `epoch`; refused when the node has been told
    /// of a higher epoch for it.
    FleetStartVm {
        /// The VM.
        vm: VmId,
        /// The epoch the controller granted.
        epoch: u64,
    },
    /// Fence a VM: from now on nothing below `epoch` runs or writes (the
    /// VM stops if its own epoch is lower).
    FenceVm {
        /// The VM.
        vm: VmId,
        /// The epoch that took over.
        epoch: u64,
    },
    /// Seal the secret of a protected VM's volume for the partner node
    /// whose static key (U_L) is `partner` (docs/fleet.md).
    ReplicaKey {
        /// The VM.
        vm: VmId,
        /// The partner's node key.
        partner: crate::crypto::PublicKey,
    },
    /// Hold the partner copy of a protected VM's volume: a replica VM
    /// definition (not startable until promoted) and a volume opened by
    /// the sealed secret from node `from`.
    ReplicaCreate {
        /// The VM's definition.
        spec: VmSpec,
        /// Its facility record.
        fleet: crate::fleet::FleetSpec,
        /// The primary's node key (U_L) that sealed the secret.
        from: crate::crypto::PublicKey,
        /// [`crate::fleet::seal_volume_secret`]'s output.
        sealed: Vec<u8>,
    },
    /// Up to `max_blocks` changed ciphertext blocks of a protected VM's
    /// volume; what a pull returns is no longer pending, so a controller
    /// that lost a batch (or just took over) pulls with `resync` first.
    ReplicaPull {
        /// The VM.
        vm: VmId,
        /// At most [`crate::fleet::MAX_REPLICA_BLOCKS`].
        max_blocks: u32,
        /// Mark every block of the volume pending first (a full copy).
        resync: bool,
    },
    /// Ciphertext blocks for a replica, from the primary's epoch `epoch`;
    /// refused below the replica's fence.
    ReplicaPush {
        /// The replica VM.
        vm: VmId,
        /// The primary's epoch.
        epoch: u64,
        /// The blocks, applied in order.
        blocks: Vec<crate::fleet::ReplicaBlock>,
    },
    /// Make a replica the VM itself, at a new epoch (the lock taken over):
    /// it may then be started with [`Request::FleetStartVm`].
    PromoteReplica {
        /// The replica VM.
        vm: VmId,
        /// The instance id (must match the replica's).
        instance: u64,
        /// The new epoch (above every epoch the replica has seen).
        epoch: u64,
    },
    /// Replace the facility's list of cluster `cluster`'s VM addresses on
    /// other nodes (the filters' view of where its members are): traffic
    /// between them and another cluster's VMs here is dropped. At most
    /// [`crate::fleet::MAX_CLUSTER_MEMBERS`] addresses.
    SetClusterMembers {
        /// The cluster.
        cluster: ClusterId,
        /// Its members' IPv4 addresses anywhere in the facility (this
        /// node's own VMs among them are ignored).
        members: Vec<[u8; 4]>,
    },
    /// The node's leases (which tenant console key, which cluster, the
    /// tenant node key U_T), so a facility controller finds the lease it
    /// made for a tenant and can tell the tenant how to reach it.
    ListLeases,
    /// The tenant's consent: the node keys (U_L) of the nodes that may hold
    /// replicas of this lease's protected volumes. The node seals a volume
    /// secret only for one of them, so a landlord cannot name a key of its
    /// own as "partner" and read the tenant's disks. At most
    /// [`crate::fleet::MAX_REPLICA_PARTNERS`]; empty: none.
    SetReplicaPartners {
        /// The partner nodes' landlord node keys.
        partners: Vec<crate::crypto::PublicKey>,
    },
    /// Leave a notice for the VM's tenant (audited under its lease, pushed
    /// to its watch): e.g. "healed here from node-1".
    NotifyTenant {
        /// The VM.
        vm: VmId,
        /// At most [`crate::fleet::MAX_NOTICE`] bytes, printable.
        text: String,
    },
    /// A facility VM's health through its agent (attached, hung,
    /// heartbeats, each service's last event and whether it is up): what
    /// the controller's runbook checks and rolling upgrades wait for. The
    /// landlord learns service names and up/down, nothing else of the guest.
    FleetVmHealth {
        /// The VM.
        vm: VmId,
    },
    /// Boot a stopped facility VM from other stored images from its next
    /// start on, keeping its disk, MAC, address, lease and epoch: a
    /// rolling upgrade's step. Refused while it runs or is fenced; the
    /// same boot again is `Done`.
    FleetSetImage {
        /// The VM.
        vm: VmId,
        /// A stored image to boot (as [`VmSpec::image`]).
        image: String,
        /// A stored image loaded as its initrd, if any (as [`VmSpec::initrd`]).
        initrd: Option<String>,
        /// Its kernel command line (as [`VmSpec::cmdline`]).
        cmdline: String,
    },
}

impl Request {
    /// A short name for logs and the audit trail (no payload bytes).
    pub fn name(&self) -> &'static str {
        match self {
            Request::NodeStatus => "node-status",
            Request::Reboot => "reboot",
            Request::Shutdown => "shutdown",
            Request::CreateLease { .. } => "create-lease",
            Request::EndLease { .. } => "end-lease",
            Request::SetClusterBoundary { .. } => "set-cluster-boundary",
            Request::UploadImageBegin { .. } => "upload-begin",
            Request::UploadImageChunk { .. } => "upload-chunk",
            Request::UploadImageCommit { .. } => "upload-commit",
            Request::CreateVm { .. } => "create-vm",
            Request::DestroyVm { .. } => "destroy-vm",
            Request::RotateLandlordKey => "rotate-landlord-key",
            Request::RegenerateTenantKey { .. } => "regenerate-tenant-key",
            Request::ReadAudit { .. } => "read-audit",
            Request::ListVms => "list-vms",
            Request::StartVm { .. } => "start-vm",
            Request::StopVm { .. } => "stop-vm",
            Request::RestartVm { .. } => "restart-vm",
            Request::ReadCounters { .. } => "read-counters",
            Request::ReloadImage { .. } => "reload-image",
            Request::ConsoleRead { .. } => "console-read",
            Request::ConsoleWrite { .. } => "console-write",
            Request::SetSubBoundary { .. } => "set-sub-boundary",
            Request::RemoveSubBoundary { .. } => "remove-sub-boundary",
            Request::RotateTenantKey => "rotate-tenant-key",
            Request::SetImageSigningKey { .. } => "set-image-signing-key",
            Request::Suspend => "suspend",
            Request::Resume => "resume",
            Request::CancelUpload { .. } => "cancel-upload",
            Request::ListImages { .. } => "list-images",
            Request::AgentOpen { .. } => "agent-open",
            Request::AgentSend { .. } => "agent-send",
            Request::AgentPoll { .. } => "agent-poll",
            Request::AgentStatus { .. } => "agent-status",
            Request::AgentLog { .. } => "agent-log",
            Request::AgentHeartbeat { .. } => "agent-heartbeat",
            Request::Subscribe { .. } => "subscribe",
            Request::SetPolicy { .. } => "set-policy",
            Request::GetPolicy { .. } => "get-policy",
            Request::FleetHeartbeat { .. } => "fleet-heartbeat",
            Request::FleetCreateVm { .. } => "fleet-create-vm",
            Request::FleetStartVm { .. } => "fleet-start-vm",
            Request::FenceVm { .. } => "fence-vm",
            Request::ReplicaKey { .. } => "replica-key",
            Request::ReplicaCreate { .. } => "replica-create",
            Request::ReplicaPull { .. } => "replica-pull",
            Request::ReplicaPush { .. } => "replica-push",
            Request::PromoteReplica { .. } => "promote-replica",
            Request::NotifyTenant { .. } => "notify-tenant",
            Request::SetClusterMembers { .. } => "set-cluster-members",
            Request::ListLeases => "list-leases",
            Request::SetReplicaPartners { .. } => "set-replica-partners",
            Request::FleetVmHealth { .. } => "fleet-vm-health",
            Request::FleetSetImage { .. } => "fleet-set-image",
        }
    }
}

/// One stored image, as the landlord sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, checked on every read from the node's disk.
    pub sha256: [u8; 32],
    /// With `verify`: whether the bytes on disk still match `sha256`.
    pub intact: Option<bool>,
}

/// An unfinished upload, so the landlord can resume or cancel it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The image name it was begun with.
    pub name: String,
    /// Bytes received so far.
    pub received: u64,
    /// Its announced size.
    pub size: u64,
}

/// The node's images and how much of the image quota they use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    /// Stored images, by name.
    pub images: Vec<ImageInfo>,
    /// Unfinished uploads (their space is reserved).
    pub uploads: Vec<UploadInfo>,
    /// Bytes stored and reserved against the quota.
    pub used_bytes: u64,
    /// The total image quota in bytes.
    pub limit_bytes: u64,
    /// The largest image accepted, in bytes.
    pub max_image_bytes: u64,
}

/// Successful responses, one shape per kind of result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request was carried out; nothing to return.
    Done,
    /// Node health.
    Status(NodeStatus),
    /// A lease was created; `tenant_node_key` is U_T for the tenant console.
    LeaseCreated {
        /// The new lease.
        lease: LeaseId,
        /// The node's tenant static public key for this lease.
        tenant_node_key: PublicKey,
    },
    /// A node static key was (re)generated; the new public half.
    NodeKey {
        /// The new public key.
        public: PublicKey,
    },
    /// Where an upload stands.
    Upload {
        /// The upload.
        upload: UploadId,
        /// Bytes received so far (the next chunk's offset).
        offset: u64,
    },
    /// An image was stored.
    ImageStored {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
        /// Its SHA-256.
        sha256: [u8; 32],
    },
    /// A VM was created.
    VmCreated {
        /// Its id.
        vm: VmId,
    },
    /// VMs visible to the role.
    Vms(Vec<VmInfo>),
    /// Console output.
    ConsoleOutput {
        /// Offset after these bytes (ask from here next time).
        next_offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A rule was added.
    RuleAdded {
        /// Its id.
        id: RuleId,
    },
    /// Counters.
    Counters(Vec<Counter>),
    /// Audit entries.
    Audit {
        /// The entries.
        entries: Vec<AuditEntry>,
        /// Index to ask from next time.
        next: u64,
        /// The chain value just before entry `from` (the anchor of the
        /// kept log when `from` is at or below its oldest entry): the
        /// landlord, who sees every entry, can check the page from it.
        prev_chain: [u8; 32],
    },
    /// Stored images and unfinished uploads (added in protocol 1 without
    /// renumbering).
    Images(ImageList),
    /// The stream of a started agent operation.
    AgentStream {
        /// Its id.
        stream: u32,
    },
    /// Events of an agent stream.
    AgentEvents {
        /// The events, in order.
        events: Vec<agent_proto::Event>,
        /// The stream has ended and the node forgot it.
        finished: bool,
    },
    /// The VM's agent state.
    Agent(agent_proto::AgentStatus),
    /// Entries of the VM's agent log.
    AgentLog {
        /// The entries.
        entries: Vec<agent_proto::relay::LogEntry>,
        /// The index to ask for next.
        next: u64,
    },
    /// The subscription is in place.
    Subscribed {
        /// The sequence number the first pushed event will have (or more,
        /// when `since` was older than the log keeps: the push says how
        /// many were lost).
        next_seq: u64,
        /// The health push period granted.
        interval_ms: u32,
        /// Random per node boot: a console that sees another value than on
        /// its last connection knows the node restarted and its event
        /// numbers began again, whatever they are now.
        boot: u64,
    },
    /// A node-initiated message of a subscription (sequence number
    /// [`crate::monitor::PUSH_SEQ`]).
    Push(crate::monitor::Push),
    /// A policy was stored.
    PolicySet {
        /// Its new version.
        version: u32,
    },
    /// The caller's policy for the cluster, if one is stored.
    Policy(Option<crate::monitor::VersionedPolicy>),
    /// The node's facility report (heartbeat answer).
    Fleet(crate::fleet::FleetReport),
    /// The node's leases.
    Leases(Vec<crate::fleet::LeaseInfo>),
    /// A sealed volume secret for a partner node.
    SealedSecret(Vec<u8>),
    /// Changed ciphertext blocks of a protected volume.
    ReplicaBatch {
        /// The blocks (data before records: apply in order).
        blocks: Vec<crate::fleet::ReplicaBlock>,
        /// Blocks still changed after these.
        remaining: u64,
    },
    /// A facility VM's health ([`Request::FleetVmHealth`]).
    VmHealth(crate::fleet::VmHealthReport),
}

/// Why a message failed to decode or encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// Larger than the limit.
    Oversize {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a valid encoding of the expected type, or trailing bytes.
    Malformed,
}

impl core::fmt::Display for CodecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CodecError::Oversize { len, limit } => write!(f, "message of {len} bytes exceeds the limit of {limit}"),
            CodecError::Malformed => write!(f, "malformed message"),
        }
    }
}

/// Encodes a message, refusing results above `limit` so a reply never
/// overflows a frame.
pub fn encode<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    let v = postcard::to_allocvec(msg).map_err(|_| CodecError::Malformed)?;
    if v.len() > limit {
        return Err(CodecError::Oversize { len: v.len(), limit });
    }
    Ok(v)
}

/// Decodes a message of exactly `bytes` (trailing bytes are refused, so one
/// ciphertext maps to one meaning), refusing input above `limit` before
/// parsing. Decoded size is bounded by input size: postcard never allocates
/// more than the bytes present.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::Oversize { len: bytes.len(), limit });
    }
    let (v, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|_| CodecError::Malformed)?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed);
    }
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn request_round_trip() {
        let e = Envelope {
            seq: 7,
            body: Request::UploadImageChunk { upload: UploadId(3), offset: 99, bytes: vec![1, 2, 3] },
        };
        let b = encode(&e, crate::MAX_MESSAGE).unwrap();
        assert_eq!(decode::<Envelope>(&b, crate::MAX_MESSAGE).unwrap(), e);
    }

    #[test]
    fn trailing_bytes_refused() {
        let mut b = encode(&Hello { version: 1, role: Role::Landlord }, 64).unwrap();
        b.push(0);
        assert_eq!(decode::<Hello>(&b, 64), Err(CodecError::Malformed));
    }

    #[test]
    fn oversize_refused() {
        let b = encode(&Envelope { seq: 1, body: Request::ConsoleWrite { vm: VmId(1), bytes: vec![0; 100] } }, 1000)
            .unwrap();
        assert!(matches!(decode::<Envelope>(&b, 50), Err(CodecError::Oversize { .. })));
        assert!(matches!(
            encode(&Envelope { seq: 1, body: Request::ConsoleWrite { vm: VmId(1), bytes: vec![0; 100] } }, 50),
            Err(CodecError::Oversize { .. })
        ));
    }

    #[test]
    fn garbage_refused() {
        assert_eq!(decode::<Envelope>(&[0xff; 12], 100), Err(CodecError::Malformed));
        // A length prefix claiming more bytes than present.
        assert_eq!(decode::<Envelope>(&[1, 21, 1, 0xff, 0xff, 0x03], 100), Err(CodecError::Malformed));
    }

    #[test]
    fn max_chunk_fits_a_message() {
        let e = Envelope {
            seq: u64::MAX,
            body: Request::UploadImageChunk {
                upload: UploadId(u32::MAX),
                offset: u64::MAX,
                bytes: vec![0xAA; crate::MAX_CHUNK],
            },
        };
        assert!(encode(&e, crate::MAX_MESSAGE).is_ok());
    }

    #[test]
    fn net_contains() {
        let a = Ipv4Net { addr: [10, 0, 0, 0], prefix: 8 };
        assert!(a.contains_net(&Ipv4Net { addr: [10, 1, 2, 0], prefix: 24 }));
        assert!(!a.contains_net(&Ipv4Net { addr: [11, 1, 2, 0], prefix: 24 }));
        assert!(!a.contains_net(&Ipv4Net { addr: [10, 0, 0, 0], prefix: 7 }));
        assert!(Ipv4Net { addr: [0; 4], prefix: 0 }.contains_net(&a));
        assert!(!a.contains_net(&Ipv4Net { addr: [10, 0, 0, 0], prefix: 33 }));
    }

    #[test]
    fn signature_bytes_round_trip() {
        let mut b = [0u8; 64];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        assert_eq!(ImageSignature::from_bytes(&b).to_bytes(), b);
    }
}
