//! The node seal key and what is derived from it; the caller's randomness.
//!
//! ```text
//! k_purpose = HKDF-SHA256(salt = "BMonitor nodedisk v1 seal", ikm = seal key, info = purpose)
//! purposes:   "node-header mac", "seal check", "key-store mac", "volume-table mac", "key wrap"
//! ```
//!
//! One subkey per purpose, so no key serves two algorithms.

use blockcrypt::keys::{KeySeed, SecretKey, WrappedKey, KEY_LEN, WRAP_NONCE_LEN};
use blockcrypt::VolumeId;
use core::fmt;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use crate::DiskError;

/// Number of random bytes each randomised operation takes. The crate has
/// no RNG: the hypervisor fills these from RDRAND/RDSEED, and every key,
/// nonce and id an operation needs is expanded from them with HKDF under
/// distinct labels.
pub const RANDOM_LEN: usize = 32;

const SEAL_SALT: &[u8] = b"BMonitor nodedisk v1 seal";
const RANDOM_SALT: &[u8] = b"BMonitor nodedisk v1 random";

/// The 32-byte node seal key: from the TPM when the node has one, else from
/// the provisioning secret in the node's boot image. Everything at node
/// level (header MAC, key store, volume table) is keyed from it, so a disk
/// opened with another seal key fails with [`DiskError::WrongNode`]. Wiped
/// on drop, never printed.
pub struct SealKey(SecretKey);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// Takes ownership of the key bytes; the caller should wipe its copy.
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(SecretKey::from_bytes(bytes))
    }

    /// The subkey for one purpose.
    pub(crate) fn subkey(&self, purpose: &[u8]) -> Result<SecretKey, DiskError> {
        hkdf_key(SEAL_SALT, self.0.as_bytes(), &[purpose])
    }
}

/// HKDF-SHA256 with a 32-byte output.
fn hkdf_key(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Result<SecretKey, DiskError> {
    let mut out = [0u8; KEY_LEN];
    Hkdf::<Sha256>::new(Some(salt), ikm).expand_multi_info(info, &mut out).map_err(|_| DiskError::Crypto)?;
    let k = SecretKey::from_bytes(out);
    out.zeroize();
    Ok(k)
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn mac(key: &SecretKey, parts: &[&[u8]]) -> Result<[u8; 32], DiskError> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).map_err(|_| DiskError::Crypto)?;
    for p in parts {
        m.update(p);
    }
    Ok(m.finalize().into_bytes().into())
}

/// Checks an HMAC-SHA256 in constant time.
pub(crate) fn mac_ok(key: &SecretKey, parts: &[&[u8]], tag: &[u8]) -> bool {
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()) else { return false };
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

/// The caller's random bytes for one operation, expanded per purpose.
/// Wiped on drop.
pub(crate) struct Entropy(SecretKey);

impl Entropy {
    /// Takes the caller's [`RANDOM_LEN`] random bytes.
    pub(crate) fn new(random: &[u8; RANDOM_LEN]) -> Self {
        Self(SecretKey::from_bytes(*random))
    }

    fn expand<const N: usize>(&self, label: &[u8], ctx: &[u8]) -> Result<[u8; N], DiskError> {
        let mut out = [0u8; N];
        Hkdf::<Sha256>::new(Some(RANDOM_SALT), self.0.as_bytes())
            .expand_multi_info(&[label, ctx], &mut out)
            .map_err(|_| DiskError::Crypto)?;
        Ok(out)
    }

    /// A fresh 32-byte key (K_L or K_T); the caller wipes it.
    pub(crate) fn key(&self, label: &[u8]) -> Result<[u8; KEY_LEN], DiskError> {
        self.expand(label, b"key")
    }

    /// A fresh wrapping nonce.
    pub(crate) fn nonce(&self, label: &[u8]) -> Result<[u8; WRAP_NONCE_LEN], DiskError> {
        self.expand(label, b"nonce")
    }

    /// A fresh 16-byte id (node or volume).
    pub(crate) fn id(&self, label: &[u8]) -> Result<[u8; 16], DiskError> {
        self.expand(label, b"id")
    }

    /// A fresh volume-key seed for `volume` (distinct per volume, so one
    /// call's randomness can re-initialise many volumes).
    pub(crate) fn seed(&self, volume: VolumeId) -> Result<KeySeed, DiskError> {
        let mut b: [u8; KeySeed::LEN] = self.expand(b"volume seed", &volume.0)?;
        let s = KeySeed::from_random(b);
        b.zeroize();
        Ok(s)
    }
}

/// Wraps `key` under the seal key's wrapping subkey, bound to `ad`.
pub(crate) fn wrap(
    seal: &SealKey,
    key: &SecretKey,
    nonce: [u8; WRAP_NONCE_LEN],
    ad: &[u8],
) -> Result<WrappedKey, DiskError> {
    seal.subkey(b"key wrap")?.wrap(key, nonce, ad).map_err(|_| DiskError::Crypto)
}

/// Unwraps a key sealed by [`wrap`]; `None` if it does not verify.
pub(crate) fn unwrap(seal: &SealKey, w: &WrappedKey, ad: &[u8]) -> Result<Option<SecretKey>, DiskError> {
    Ok(seal.subkey(b"key wrap")?.unwrap_key(w, ad).ok())
}
