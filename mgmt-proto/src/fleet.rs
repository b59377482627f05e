//! What a node says and hears as a member of a facility: the facility
//! controller's view of its VMs (instance ids, fencing epochs, replicas),
//! and the node-to-node sealing of a protected volume's secret.
//!
//! A protected VM's volume is replicated as ciphertext to a partner node.
//! The secret that opens it (its volume id and key) travels from the
//! primary BMonitor to the partner BMonitor in a one-way Noise `X` message
//! under the two nodes' own static keys (U_L): the controller relays the
//! message but can neither read nor forge it.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use snow::Builder;

use crate::crypto::{HashDrbg, PublicKey, Resolver, SecretKey};
use crate::msg::{LeaseId, NodeStatus, VmId, VmState};

/// A block of replicated ciphertext: the replica region's block size.
pub const REPLICA_BLOCK: usize = 4096;

/// Most blocks one pull or push carries, so a message stays within
/// [`crate::MAX_MESSAGE`] with room for its envelope.
pub const MAX_REPLICA_BLOCKS: u32 = 14;

/// Most member addresses of one cluster a node takes from its controller.
pub const MAX_CLUSTER_MEMBERS: usize = 256;

/// Most clusters whose members a node keeps.
pub const MAX_MEMBER_CLUSTERS: usize = 64;

/// Most replica partners a tenant approves for one lease.
pub const MAX_REPLICA_PARTNERS: usize = 16;

/// One lease as the landlord lists it ([`crate::Request::ListLeases`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease.
    pub lease: LeaseId,
    /// Its cluster.
    pub cluster: crate::msg::ClusterId,
    /// The tenant console's key registered for it.
    pub console: PublicKey,
    /// U_T, the node key its tenant console authenticates.
    pub node_key: PublicKey,
    /// Nodes the tenant approved as replica partners.
    pub replica_partners: Vec<PublicKey>,
}

/// Longest text a controller may leave for a tenant ([`crate::Request::NotifyTenant`]).
pub const MAX_NOTICE: usize = 256;

/// Most services a VM's health report names: the relay's table bound
/// ([`agent_proto::relay::MAX_SERVICE_TABLE`]), so a hostile guest cannot
/// grow a reply.
pub const MAX_HEALTH_SERVICES: usize = agent_proto::relay::MAX_SERVICE_TABLE;

/// Longest service name in a health report, in characters.
pub const MAX_HEALTH_NAME: usize = agent_proto::relay::MAX_SERVICE_NAME_CHARS;

/// Longest event text in a health report, in characters.
pub const MAX_HEALTH_EVENT: usize = agent_proto::relay::MAX_SERVICE_EVENT_CHARS;

/// One supervised service in a VM, as the landlord sees it
/// ([`crate::Request::FleetVmHealth`]): its name and whether it runs,
/// with the agent's last event text for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealthReport {
    /// Service name (at most [`MAX_HEALTH_NAME`] characters).
    pub name: String,
    /// The agent's last event for it (at most [`MAX_HEALTH_EVENT`] characters).
    pub last_event: String,
    /// Whether that event is a start (nothing failed or restarted since).
    pub up: bool,
}

/// A facility VM's health through its agent, for the controller's runbook
/// checks and rolling upgrades ([`crate::Request::FleetVmHealth`]). A VM
/// that is not running reports `running: false` and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHealthReport {
    /// The VM runs.
    pub running: bool,
    /// An agent is attached in it.
    pub agent_attached: bool,
    /// The agent's heartbeats stopped for longer than its bound.
    pub agent_hung: bool,
    /// Milliseconds since the agent's last heartbeat (or its attach).
    pub since_heartbeat_ms: Option<u64>,
    /// Heartbeats received in this run.
    pub heartbeats: u64,
    /// The services the agent reported since it attached, by name (at
    /// most [`MAX_HEALTH_SERVICES`]).
    pub services: Vec<ServiceHealthReport>,
}

impl VmHealthReport {
    /// The report of a running VM from its agent relay: the relay's agent
    /// state and service table, bounded and sorted by name.
    pub fn of_relay(relay: &agent_proto::relay::Relay, now_ms: u64) -> VmHealthReport {
        let status = relay.status(now_ms);
        let mut services: Vec<ServiceHealthReport> = relay
            .services()
            .iter()
            .take(MAX_HEALTH_SERVICES)
            .map(|s| ServiceHealthReport {
                name: agent_proto::relay::clean_guest_text(&s.name, MAX_HEALTH_NAME),
                last_event: agent_proto::relay::clean_guest_text(&s.what, MAX_HEALTH_EVENT),
                up: s.up(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        VmHealthReport {
            running: true,
            agent_attached: status.attached,
            agent_hung: status.hung,
            since_heartbeat_ms: status.since_heartbeat_ms,
            heartbeats: status.heartbeats,
            services,
        }
    }

    /// Whether the report keeps the bounds (checked by the node before it
    /// answers and by the console on what it receives): at most
    /// [`MAX_HEALTH_SERVICES`] services, names of 1 to [`MAX_HEALTH_NAME`]
    /// and texts of at most [`MAX_HEALTH_EVENT`] characters without
    /// control characters, and nothing but `running: false` for a VM that
    /// does not run. The error names the field.
    pub fn check(&self) -> Result<(), String> {
        if !self.running && *self != VmHealthReport::default() {
            return Err(String::from("health: a VM that does not run reports nothing else"));
        }
        if self.services.len() > MAX_HEALTH_SERVICES {
            return Err(alloc::format!("services: at most {MAX_HEALTH_SERVICES} (MAX_HEALTH_SERVICES)"));
        }
        let bounded = |t: &str, max: usize| t.chars().count() <= max && !t.chars().any(char::is_control);
        for s in &self.services {
            if s.name.is_empty() || !bounded(&s.name, MAX_HEALTH_NAME) {
                return Err(alloc::format!(
                    "services.name: 1 to {MAX_HEALTH_NAME} characters without control characters"
                ));
            }
            if !bounded(&s.last_event, MAX_HEALTH_EVENT) {
                return Err(alloc::format!(
                    "services.last_event: at most {MAX_HEALTH_EVENT} characters without control characters"
                ));
            }
        }
        Ok(())
    }
}

/// The Noise pattern of the sealed volume secret: one-way, the sender's
/// static key transmitted encrypted and authenticated, the recipient's
/// known in advance.
pub const SEAL_PARAMS: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";

/// Largest sealed secret accepted (the real one is about 200 bytes).
pub const MAX_SEALED: usize = 1024;

/// The facility's word on one VM instance, set when the controller places it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSpec {
    /// The NIC's MAC, the same on every node the VM ever runs on.
    pub mac: [u8; 6],
    /// The application-instance id: the same across healing, so a new
    /// instance can take over the old one's volume lock.
    pub instance: u64,
    /// The fencing epoch this copy runs under; a higher one elsewhere
    /// fences it.
    pub epoch: u64,
    /// Whether its volume is replicated to a partner node.
    pub protected: bool,
}

/// One facility VM as the node reports it to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetVmInfo {
    /// Its id on this node.
    pub id: VmId,
    /// Its name.
    pub name: String,
    /// Its lease on this node.
    pub lease: LeaseId,
    /// Its facility record.
    pub fleet: FleetSpec,
    /// Run state.
    pub state: VmState,
    /// A replica: it holds the partner copy of a protected volume and does
    /// not run until promoted.
    pub replica: bool,
    /// The lowest epoch this node still accepts for it (writes, starts,
    /// replica pushes below it are refused).
    pub fence: u64,
    /// Stopped by the node itself because its fencing lease ran out.
    pub self_fenced: bool,
}

/// The answer to a heartbeat: the node's status and its facility VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    /// Node status, as `NodeStatus` gives it.
    pub status: NodeStatus,
    /// Free space on the node disk for new volumes, in MiB.
    pub disk_free_mib: u64,
    /// Facility VMs (primaries and replicas).
    pub vms: Vec<FleetVmInfo>,
}

/// One block of a replica region, as pulled from the primary and pushed to
/// the partner: ciphertext only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaBlock {
    /// Index in the volume's replica region.
    pub index: u64,
    /// Exactly [`REPLICA_BLOCK`] bytes.
    pub bytes: Vec<u8>,
}

/// What the sealed message carries: which VM's volume, and its secret.
#[derive(Serialize, Deserialize)]
struct SealedPayload {
    vm_name: String,
    secret: Vec<u8>,
}

/// Why a sealed secret was not made or not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The message is not a valid Noise X message to this node.
    Invalid,
    /// It was sealed by a node other than the one named.
    WrongSender,
    /// It names another VM.
    WrongVm,
    /// Over [`MAX_SEALED`] bytes.
    Oversize,
    /// Internal failure (entropy, primitives).
    Internal,
}

impl core::fmt::Display for SealError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SealError::Invalid => "the sealed volume secret does not open with this node's key",
            SealError::WrongSender => "the sealed volume secret comes from another node than the one named",
            SealError::WrongVm => "the sealed volume secret is for another VM",
            SealError::Oversize => "the sealed volume secret is larger than 1024 bytes",
            SealError::Internal => "sealing failed inside the node",
        })
    }
}

fn params() -> Result<snow::params::NoiseParams, SealError> {
    SEAL_PARAMS.parse().map_err(|_| SealError::Internal)
}

/// The prologue binds both node keys, so a message cannot be replayed to
/// another partner.
fn prologue(sender: &PublicKey, recipient: &PublicKey) -> Vec<u8> {
    let mut p = Vec::with_capacity(96);
    p.extend_from_slice(b"BMonitor replica secret v1");
    p.extend_from_slice(&sender.0);
    p.extend_from_slice(&recipient.0);
    p
}

/// Seals `secret` (a volume secret) for the node whose static key is
/// `recipient`, from this node (`sender` private key, `sender_public` its
/// public half); `seed` feeds the ephemeral key.
pub fn seal_volume_secret(
    sender: &SecretKey,
    sender_public: &PublicKey,
    recipient: &PublicKey,
    vm_name: &str,
    secret: &[u8],
    seed: [u8; 32],
) -> Result<Vec<u8>, SealError> {
    let rng = alloc::boxed::Box::new(HashDrbg::new(seed));
    let pro = prologue(sender_public, recipient);
    let mut hs = Builder::with_resolver(params()?, alloc::boxed::Box::new(Resolver::new(Some(rng))))
        .local_private_key(&sender.0)
        .and_then(|b| b.remote_public_key(&recipient.0))
        .and_then(|b| b.prologue(&pro))
        .and_then(|b| b.build_initiator())
        .map_err(|_| SealError::Internal)?;
    let payload = postcard::to_allocvec(&SealedPayload { vm_name: String::from(vm_name), secret: secret.to_vec() })
        .map_err(|_| SealError::Internal)?;
    let mut out = vec![0u8; payload.len() + 128];
    let n = hs.write_message(&payload, &mut out).map_err(|_| SealError::Internal)?;
    out.truncate(n);
    if out.len() > MAX_SEALED {
        return Err(SealError::Oversize);
    }
    Ok(out)
}

/// Opens a sealed volume secret on the recipient node: checks it was sealed
/// by `expected_sender` for VM `vm_name`, and returns the secret.
pub fn open_volume_secret(
    recipient: &SecretKey,
    recipient_public: &PublicKey,
    expected_sender: &PublicKey,
    vm_name: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    if sealed.len() > MAX_SEALED {
        return Err(SealError::Oversize);
    }
    let pro = prologue(expected_sender, recipient_public);
    // snow wants a random source to build any handshake; the recipient of a
    // one-way pattern generates nothing, so a fixed one is never drawn on.
    let unused = alloc::boxed::Box::new(HashDrbg::new([0; 32]));
    let mut hs = Builder::with_resolver(params()?, alloc::boxed::Box::new(Resolver::new(Some(unused))))
        .local_private_key(&recipient.0)
        .and_then(|b| b.prologue(&pro))
        .and_then(|b| b.build_responder())
        .map_err(|_| SealError::Internal)?;
    let mut payload = vec![0u8; sealed.len()];
    let n = hs.read_message(sealed, &mut payload).map_err(|_| SealError::Invalid)?;
    let rs = hs.get_remote_static().ok_or(SealError::Invalid)?;
    if rs != expected_sender.0.as_slice() {
        return Err(SealError::WrongSender);
    }
    let body: SealedPayload =
        postcard::from_bytes(payload.get(..n).ok_or(SealError::Invalid)?).map_err(|_| SealError::Invalid)?;
    if body.vm_name != vm_name {
        return Err(SealError::WrongVm);
    }
    Ok(body.secret)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::crypto::KeyPair;

    fn pair(seed: u8) -> KeyPair {
        KeyPair::from_secret(SecretKey([seed; 32])).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_only_at_its_recipient_from_its_sender() {
        let (a, b, c) = (pair(1), pair(2), pair(3));
        let secret = [7u8; 56];
        let sealed = seal_volume_secret(&a.secret, &a.public, &b.public, "web", &secret, [9; 32]).unwrap();
        assert!(!sealed.windows(8).any(|w| w == [7u8; 8]), "secret in the clear");
        assert_eq!(open_volume_secret(&b.secret, &b.public, &a.public, "web", &sealed).unwrap(), secret);
        // Another recipient, a claimed other sender, another VM: refused.
        assert!(open_volume_secret(&c.secret, &c.public, &a.public, "web", &sealed).is_err());
        assert!(open_volume_secret(&b.secret, &b.public, &c.public, "web", &sealed).is_err());
        assert_eq!(open_volume_secret(&b.secret, &b.public, &a.public, "db", &sealed), Err(SealError::WrongVm));
        // Any bit flipped: refused.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open_volume_secret(&b.secret, &b.public, &a.public, "web", &bad).is_err(), "byte {i}");
        }
        assert_eq!(
            open_volume_secret(&b.secret, &b.public, &a.public, "web", &vec![0; MAX_SEALED + 1]),
            Err(SealError::Oversize)
        );
    }

    fn largest_report() -> VmHealthReport {
        let services = (0..MAX_HEALTH_SERVICES)
            .map(|i| ServiceHealthReport {
                name: alloc::format!("{i:\u{10FFFF}>32}"),
                last_event: "\u{10FFFF}".repeat(MAX_HEALTH_EVENT),
                up: true,
            })
            .collect();
        VmHealthReport {
            running: true,
            agent_attached: true,
            agent_hung: false,
            since_heartbeat_ms: Some(u64::MAX),
            heartbeats: u64::MAX,
            services,
        }
    }

    #[test]
    fn the_largest_health_report_fits_one_reply_and_checks() {
        let report = largest_report();
        assert_eq!(report.check(), Ok(()));
        let reply = crate::msg::Reply { seq: u64::MAX, body: Ok(crate::msg::Response::VmHealth(report)) };
        assert!(crate::msg::encode(&reply, crate::MAX_MESSAGE).is_ok());
    }

    #[test]
    fn health_reports_past_their_bounds_fail_the_check() {
        let mut more = largest_report();
        more.services.push(more.services[0].clone());
        assert!(more.check().unwrap_err().contains("MAX_HEALTH_SERVICES"));
        let mut long = largest_report();
        long.services[3].name.push('x');
        assert!(long.check().unwrap_err().starts_with("services.name"));
        let mut empty = largest_report();
        empty.services[0].name.clear();
        assert!(empty.check().is_err());
        let mut escape = largest_report();
        escape.services[1].last_event = String::from("started \u{1b}[2J");
        assert!(escape.check().unwrap_err().starts_with("services.last_event"));
        let stopped_with_services = VmHealthReport { running: false, ..largest_report() };
        assert!(stopped_with_services.check().is_err());
        assert_eq!(VmHealthReport::default().check(), Ok(()));
    }

    #[test]
    fn a_relay_report_is_bounded_sorted_and_says_up_for_starts_only() {
        let relay = agent_proto::relay::Relay::new(agent_proto::relay::RelayLimits::default());
        let report = VmHealthReport::of_relay(&relay, 5);
        assert!(report.running && !report.agent_attached && report.services.is_empty());
        assert_eq!(report.check(), Ok(()));
    }

    #[test]
    fn a_replica_batch_fits_one_message() {
        let blocks: Vec<ReplicaBlock> = (0..u64::from(MAX_REPLICA_BLOCKS))
            .map(|i| ReplicaBlock { index: u64::MAX - i, bytes: vec![0xFF; REPLICA_BLOCK] })
            .collect();
        let req = crate::msg::Request::ReplicaPush { vm: VmId(u32::MAX), epoch: u64::MAX, blocks };
        let env = crate::msg::Envelope { seq: u64::MAX, body: req };
        assert!(crate::msg::encode(&env, crate::MAX_MESSAGE).is_ok());
    }
}
