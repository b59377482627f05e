//! Entropy, the snow crypto resolver, and X25519 static key pairs.
//!
//! Bare metal has no `getrandom`, so randomness is injected: the hypervisor
//! supplies an [`Entropy`] backed by RDRAND/RDSEED, `bmctl` one backed by the
//! OS, and tests a seeded [`HashDrbg`]. The resolver hands that source to snow
//! and uses snow's portable ChaCha20-Poly1305, BLAKE2s and Curve25519.

use alloc::boxed::Box;
use alloc::string::String;
use core::cell::Cell;

use blake2::{Blake2s256, Digest};
use serde::{Deserialize, Serialize};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The entropy source failed; a session cannot start without fresh
/// ephemeral keys, so this is reported rather than papered over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntropyError;

impl core::fmt::Display for EntropyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "entropy source failed")
    }
}

/// A source of cryptographically secure random bytes, injected so the same
/// code runs on bare metal (RDRAND), on a host (OS RNG) and in tests (seeded).
pub trait Entropy: Send + Sync {
    /// Fills `dest` entirely, or fails.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError>;
}

impl<E: Entropy + ?Sized> Entropy for Box<E> {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        (**self).fill(dest)
    }
}

/// A deterministic random bit generator: BLAKE2s in counter mode over a
/// 32-byte seed, re-keyed after every call (so a later state compromise does
/// not reveal earlier output). Use it seeded from RDSEED to stretch a little
/// hardware entropy, or with a fixed seed in tests.
pub struct HashDrbg {
    key: [u8; 32],
    counter: u64,
}

impl HashDrbg {
    /// A generator seeded with `seed` (which must be secret and random
    /// outside tests).
    pub fn new(seed: [u8; 32]) -> Self {
        HashDrbg { key: seed, counter: 0 }
    }

    /// Mixes more entropy into the state, e.g. a fresh RDRAND value per
    /// session.
    pub fn reseed(&mut self, extra: &[u8]) {
        let new: [u8; 32] =
            Blake2s256::new().chain_update(b"reseed").chain_update(self.key).chain_update(extra).finalize().into();
        self.key.zeroize();
        self.key = new;
    }
}

impl Drop for HashDrbg {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl Entropy for HashDrbg {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        for chunk in dest.chunks_mut(32) {
            self.counter = self.counter.wrapping_add(1);
            let block: [u8; 32] = Blake2s256::new()
                .chain_update(b"out")
                .chain_update(self.key)
                .chain_update(self.counter.to_le_bytes())
                .finalize()
                .into();
            for (d, s) in chunk.iter_mut().zip(block.iter()) {
                *d = *s;
            }
        }
        let next: [u8; 32] = Blake2s256::new().chain_update(b"rekey").chain_update(self.key).finalize().into();
        self.key.zeroize();
        self.key = next;
        Ok(())
    }
}

/// Adapts an [`Entropy`] to snow's RNG trait.
struct SnowRandom(Box<dyn Entropy>);

impl Random for SnowRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill(dest).map_err(|_| snow::Error::Rng)
    }
}

/// snow resolver: our injected RNG (handed out once) plus snow's portable
/// primitives. Only the primitives of [`crate::NOISE_PARAMS`] are resolved.
pub(crate) struct Resolver {
    rng: Cell<Option<Box<dyn Entropy>>>,
}

impl Resolver {
    pub(crate) fn new(rng: Option<Box<dyn Entropy>>) -> Self {
        Resolver { rng: Cell::new(rng) }
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        self.rng.take().map(|r| Box::new(SnowRandom(r)) as Box<dyn Random>)
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => DefaultResolver.resolve_dh(choice),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        match choice {
            HashChoice::Blake2s => DefaultResolver.resolve_hash(choice),
            _ => None,
        }
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::ChaChaPoly => DefaultResolver.resolve_cipher(choice),
            _ => None,
        }
    }
}

/// An X25519 public key: node keys (U_L, U_T) and console static keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Lowercase hex, the form shown to people and stored in profiles.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hex digits, so keys can be pasted from `bmctl` output.
    pub fn from_hex(s: &str) -> Option<Self> {
        from_hex32(s).map(PublicKey)
    }

    /// Constant-time comparison (cheap, and removes any doubt about timing
    /// when matching a presented key against the registered one).
    pub fn ct_eq(&self, other: &PublicKey) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl core::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An X25519 private key, zeroed on drop and never printed, because private
/// keys must never leave the node (or the console's profile file).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl core::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A static X25519 key pair (a node role key or a console key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    /// The private half.
    pub secret: SecretKey,
    /// The public half.
    pub public: PublicKey,
}

impl KeyPair {
    /// Generates a fresh pair from `rng`.
    pub fn generate(rng: &mut dyn Entropy) -> Result<KeyPair, EntropyError> {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret)?;
        let kp = KeyPair::from_secret(SecretKey(secret));
        secret.zeroize();
        kp.ok_or(EntropyError)
    }

    /// Rebuilds the pair from a stored private key (e.g. a node's persisted
    /// R_L or a console profile). `None` only if the Curve25519 primitive is
    /// unavailable, which cannot happen with this crate's features.
    pub fn from_secret(secret: SecretKey) -> Option<KeyPair> {
        let mut dh = DefaultResolver.resolve_dh(&DHChoice::Curve25519)?;
        dh.set(&secret.0);
        let mut public = [0u8; 32];
        let pk = dh.pubkey();
        if pk.len() != 32 {
            return None;
        }
        public.copy_from_slice(pk);
        Some(KeyPair { secret, public: PublicKey(public) })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nib in [b >> 4, b & 15] {
            if let Some(&c) = HEX.get(usize::from(nib)) {
                s.push(char::from(c));
            }
        }
    }
    s
}

/// Parses exactly 64 hex digits (either case, surrounding whitespace
/// ignored) into 32 bytes.
pub fn from_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let hi = hex_val(*pair.first()?)?;
        let lo = hex_val(*pair.get(1)?)?;
        *o = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn drbg_is_deterministic_and_rekeys() {
        let mut a = HashDrbg::new([1; 32]);
        let mut b = HashDrbg::new([1; 32]);
        let (mut x, mut y) = ([0u8; 70], [0u8; 70]);
        a.fill(&mut x).unwrap();
        b.fill(&mut y).unwrap();
        assert_eq!(x, y);
        let mut z = [0u8; 70];
        a.fill(&mut z).unwrap();
        assert_ne!(x, z);
        assert_ne!(x[..32], x[32..64]);
    }

    #[test]
    fn keypair_from_secret_matches_generate() {
        let mut rng = HashDrbg::new([2; 32]);
        let kp = KeyPair::generate(&mut rng).unwrap();
        let again = KeyPair::from_secret(kp.secret.clone()).unwrap();
        assert_eq!(kp.public, again.public);
        assert_ne!(kp.public.0, [0; 32]);
    }

    #[test]
    fn hex_round_trip() {
        let k = PublicKey([0xab; 32]);
        assert_eq!(PublicKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(PublicKey::from_hex("zz"), None);
        assert_eq!(PublicKey::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn secret_debug_hides_key() {
        assert_eq!(alloc::format!("{:?}", SecretKey([7; 32])), "SecretKey(..)");
    }
}
