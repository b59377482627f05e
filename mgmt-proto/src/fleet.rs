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
