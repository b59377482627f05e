//! Keys: the landlord's and tenant's symmetric keys, the disk-key KDF chain
//! that combines them, the per-volume data key, and key wrapping.
//!
//! # Disk-key construction
//!
//! The disk key of a volume is a chain of HKDF-SHA256 steps, one per key
//! holder, all bound to the volume id `V` (16 bytes):
//!
//! ```text
//! S_0 = HKDF(salt = "BMonitor blockcrypt v1 chain", ikm = K_L, info = "disk-key" || 0 || V)
//! S_i = HKDF(salt = S_{i-1},                        ikm = K_i, info = "disk-key" || i || V)
//! K_disk = S_n
//! ```
//!
//! With no tenant key, `n = 0` and the disk key depends on `K_L` alone (but is
//! still per-volume, so two volumes never share a key). With a tenant key
//! `K_1 = K_T`; a sub-tenant's key is `K_2`, and so on (up to 255 links).
//! Every link is needed: without any one of `K_L, K_1, .., K_n` the disk key
//! cannot be computed, so the landlord alone cannot read a tenant's volume
//! once a tenant key is in the chain. The position `i` is in the info string,
//! so the same keys in another order give another disk key.
//!
//! The disk key never encrypts sectors itself: it wraps a random per-volume
//! [`VolumeKey`] (and keys the header MAC). Discarding any link therefore
//! makes the wrapped volume key, and with it all data, unreadable
//! (crypto-erase), and re-keying a volume re-encrypts under a fresh
//! volume key (see `volume`).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use core::fmt;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::VolumeId;

/// Length of every symmetric key here (ChaCha20 and HMAC-SHA256 keys).
pub const KEY_LEN: usize = 32;
/// Length of a key-wrapping nonce, supplied by the caller from its RNG.
pub const WRAP_NONCE_LEN: usize = 12;
/// Encoded length of a [`WrappedKey`]: nonce, ciphertext, tag.
pub const WRAPPED_KEY_LEN: usize = WRAP_NONCE_LEN + KEY_LEN + 16;
/// Longest disk-key chain: the landlord key plus 255 further keys, so the
/// chain length fits the header's one-byte field.
pub const MAX_CHAIN_LINKS: usize = 255;

const CHAIN_SALT: &[u8] = b"BMonitor blockcrypt v1 chain";
const CHAIN_INFO: &[u8] = b"disk-key";
const SUBKEY_SALT: &[u8] = b"BMonitor blockcrypt v1 subkey";

/// Why a key operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// More than [`MAX_CHAIN_LINKS`] keys were chained after the landlord key.
    ChainTooLong,
    /// The KDF refused its parameters (cannot happen for 32-byte outputs;
    /// reported rather than assumed).
    Kdf,
    /// A wrapped key did not verify: wrong wrapping key, wrong associated
    /// data, or tampered bytes.
    UnwrapFailed,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ChainTooLong => write!(f, "disk-key chain longer than {MAX_CHAIN_LINKS} links"),
            Self::Kdf => write!(f, "key derivation failed"),
            Self::UnwrapFailed => write!(f, "wrapped key does not verify (wrong key or tampered)"),
        }
    }
}

/// A 32-byte secret, wiped from memory when dropped, never printed. The
/// role types below wrap it so a landlord key cannot be passed where a
/// tenant key is meant.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Takes ownership of key bytes (from the RNG or the sealed key store).
    /// The caller should wipe its own copy of `bytes`.
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key, for sealing it into the node's key store.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The AEAD keyed with this secret.
    pub(crate) fn aead(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    /// Encrypts and authenticates `key` under `self` (ChaCha20-Poly1305),
    /// binding `ad` so the wrapped key only opens in the same context.
    /// `nonce` must be fresh random bytes: it is stored in the result.
    ///
    /// # Errors
    /// Never in practice; the AEAD's length check is reported as [`KeyError::Kdf`].
    pub fn wrap(&self, key: &SecretKey, nonce: [u8; WRAP_NONCE_LEN], ad: &[u8]) -> Result<WrappedKey, KeyError> {
        let mut ciphertext = key.0;
        let tag = self
            .aead()
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), ad, &mut ciphertext)
            .map_err(|_| KeyError::Kdf)?;
        Ok(WrappedKey { nonce, ciphertext, tag: tag.into() })
    }

    /// Opens a key sealed by [`SecretKey::wrap`] with the same `ad`.
    ///
    /// # Errors
    /// [`KeyError::UnwrapFailed`] if the tag does not verify.
    pub fn unwrap_key(&self, wrapped: &WrappedKey, ad: &[u8]) -> Result<SecretKey, KeyError> {
        let mut plain = wrapped.ciphertext;
        let ok = self.aead().decrypt_in_place_detached(
            Nonce::from_slice(&wrapped.nonce),
            ad,
            &mut plain,
            Tag::from_slice(&wrapped.tag),
        );
        if ok.is_err() {
            plain.zeroize();
            return Err(KeyError::UnwrapFailed);
        }
        Ok(SecretKey(plain))
    }

    /// HKDF-SHA256 of this key for one purpose; `label` separates uses so one
    /// key never serves two algorithms.
    pub(crate) fn subkey(&self, label: &[u8], volume: &VolumeId) -> Result<SecretKey, KeyError> {
        hkdf32(SUBKEY_SALT, &self.0, &[label, &volume.0])
    }
}

/// HKDF-SHA256 with a 32-byte output; `info` is the concatenation of its parts.
fn hkdf32(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Result<SecretKey, KeyError> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = [0u8; KEY_LEN];
    hk.expand_multi_info(info, &mut out).map_err(|_| KeyError::Kdf)?;
    Ok(SecretKey(out))
}

macro_rules! role_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name(SecretKey);

        impl $name {
            /// Takes ownership of key bytes (from the RNG or the sealed key
            /// store). The caller should wipe its own copy of `bytes`.
            #[must_use]
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(SecretKey(bytes))
            }

            /// The underlying secret, e.g. to wrap it into the node's key store.
            #[must_use]
            pub fn secret(&self) -> &SecretKey {
                &self.0
            }
        }
    };
}

role_key!(
    /// The landlord's symmetric key `K_L`, generated by BMonitor. Replacing it
    /// crypto-erases every volume whose chain starts with it.
    LandlordKey
);
role_key!(
    /// A tenant's (or sub-tenant's) symmetric key `K_T`, generated by
    /// BMonitor. Once in a volume's chain, the landlord key alone no longer
    /// opens the volume.
    TenantKey
);
role_key!(
    /// The random per-volume data key that seals sectors. Stored only wrapped
    /// under the disk key, so discarding a chain link destroys it.
    VolumeKey
);

/// The key that guards one volume: it wraps the volume's [`VolumeKey`] and
/// keys its header MAC. Only made by the KDF chain ([`DiskKeyChain`]), so it
/// always knows the volume it belongs to and how many links made it.
#[derive(Clone, Debug)]
pub struct DiskKey {
    key: SecretKey,
    volume: VolumeId,
    links: u8,
}

impl DiskKey {
    /// Derives the disk key from the landlord key and zero or more further
    /// keys (tenant, sub-tenant, ...), in chain order.
    ///
    /// # Errors
    /// [`KeyError::ChainTooLong`] past [`MAX_CHAIN_LINKS`] further keys.
    pub fn derive(landlord: &LandlordKey, further: &[&TenantKey], volume: VolumeId) -> Result<Self, KeyError> {
        let mut chain = DiskKeyChain::new(landlord, volume)?;
        for k in further {
            chain = chain.link(k)?;
        }
        Ok(chain.finish())
    }

    /// The volume this key was derived for.
    #[must_use]
    pub fn volume(&self) -> VolumeId {
        self.volume
    }

    /// How many keys follow the landlord key in the chain (0 = landlord only).
    /// Recorded in the header so an operator sees which keys a volume needs.
    #[must_use]
    pub fn links(&self) -> u8 {
        self.links
    }

    /// The subkey that wraps volume keys.
    pub(crate) fn wrapping_key(&self) -> Result<SecretKey, KeyError> {
        self.key.subkey(b"volume-key wrap", &self.volume)
    }

    /// HMAC-SHA256 of `data` under the header-MAC subkey.
    ///
    /// # Errors
    /// Only if the KDF fails ([`KeyError::Kdf`]).
    pub fn header_mac(&self, data: &[u8]) -> Result<[u8; 32], KeyError> {
        Ok(self.header_hmac(data)?.finalize().into_bytes().into())
    }

    /// Checks a header MAC in constant time.
    ///
    /// # Errors
    /// [`KeyError::UnwrapFailed`] if it does not match.
    pub fn verify_header_mac(&self, data: &[u8], mac: &[u8; 32]) -> Result<(), KeyError> {
        self.header_hmac(data)?.verify_slice(mac).map_err(|_| KeyError::UnwrapFailed)
    }

    fn header_hmac(&self, data: &[u8]) -> Result<Hmac<Sha256>, KeyError> {
        let k = self.key.subkey(b"header mac", &self.volume)?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k.as_bytes()).map_err(|_| KeyError::Kdf)?;
        m.update(data);
        Ok(m)
    }
}

/// Builds a [`DiskKey`] one link at a time, for callers that hold the chain
/// as a list (e.g. landlord, tenant, sub-tenant from the key store).
#[derive(Debug)]
pub struct DiskKeyChain {
    state: SecretKey,
    volume: VolumeId,
    links: u8,
}

impl DiskKeyChain {
    /// Starts the chain at `S_0` from the landlord key.
    ///
    /// # Errors
    /// Only if the KDF fails ([`KeyError::Kdf`]).
    pub fn new(landlord: &LandlordKey, volume: VolumeId) -> Result<Self, KeyError> {
        let state = hkdf32(CHAIN_SALT, landlord.0.as_bytes(), &[CHAIN_INFO, &[0], &volume.0])?;
        Ok(Self { state, volume, links: 0 })
    }

    /// Adds the next key: `S_i = HKDF(salt = S_{i-1}, ikm = K_i, info = "disk-key" || i || V)`.
    ///
    /// # Errors
    /// [`KeyError::ChainTooLong`] past [`MAX_CHAIN_LINKS`] links.
    pub fn link(self, key: &TenantKey) -> Result<Self, KeyError> {
        let links = self.links.checked_add(1).ok_or(KeyError::ChainTooLong)?;
        let state = hkdf32(self.state.as_bytes(), key.0.as_bytes(), &[CHAIN_INFO, &[links], &self.volume.0])?;
        Ok(Self { state, volume: self.volume, links })
    }

    /// The disk key `K_disk = S_n`.
    #[must_use]
    pub fn finish(self) -> DiskKey {
        DiskKey { key: self.state.clone(), volume: self.volume, links: self.links }
    }
}

/// A key sealed under another key; not secret, stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// The random nonce used to seal it.
    pub nonce: [u8; WRAP_NONCE_LEN],
    /// The encrypted key.
    pub ciphertext: [u8; KEY_LEN],
    /// The Poly1305 tag.
    pub tag: [u8; 16],
}

impl WrappedKey {
    /// The stored form: nonce, ciphertext, tag.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; WRAPPED_KEY_LEN] {
        let mut out = [0u8; WRAPPED_KEY_LEN];
        let (n, rest) = out.split_at_mut(WRAP_NONCE_LEN);
        let (c, t) = rest.split_at_mut(KEY_LEN);
        n.copy_from_slice(&self.nonce);
        c.copy_from_slice(&self.ciphertext);
        t.copy_from_slice(&self.tag);
        out
    }

    /// Parses the stored form (any 60 bytes parse; validity is the tag's job).
    #[must_use]
    pub fn from_bytes(b: &[u8; WRAPPED_KEY_LEN]) -> Self {
        let (n, rest) = b.split_at(WRAP_NONCE_LEN);
        let (c, t) = rest.split_at(KEY_LEN);
        let mut w = Self { nonce: [0; WRAP_NONCE_LEN], ciphertext: [0; KEY_LEN], tag: [0; 16] };
        w.nonce.copy_from_slice(n);
        w.ciphertext.copy_from_slice(c);
        w.tag.copy_from_slice(t);
        w
    }
}

/// Random bytes from the caller's RNG (RDRAND/RDSEED in the hypervisor) for
/// one new volume key: the key itself and two wrapping nonces. The crate
/// has no RNG of its own, so tests are deterministic. Wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeySeed {
    key: [u8; KEY_LEN],
    nonces: [[u8; WRAP_NONCE_LEN]; 2],
}

impl fmt::Debug for KeySeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySeed(<redacted>)")
    }
}

impl KeySeed {
    /// Number of random bytes a seed takes.
    pub const LEN: usize = KEY_LEN + 2 * WRAP_NONCE_LEN;

    /// Takes [`KeySeed::LEN`] random bytes.
    #[must_use]
    pub fn from_random(bytes: [u8; Self::LEN]) -> Self {
        let (k, n) = bytes.split_at(KEY_LEN);
        let (n0, n1) = n.split_at(WRAP_NONCE_LEN);
        let mut s = Self { key: [0; KEY_LEN], nonces: [[0; WRAP_NONCE_LEN]; 2] };
        s.key.copy_from_slice(k);
        s.nonces[0].copy_from_slice(n0);
        s.nonces[1].copy_from_slice(n1);
        s
    }

    /// The new volume key.
    pub(crate) fn volume_key(&self) -> VolumeKey {
        VolumeKey::from_bytes(self.key)
    }

    /// Nonce `i` (0 or 1) for wrapping.
    pub(crate) fn nonce(&self, second: bool) -> [u8; WRAP_NONCE_LEN] {
        let [a, b] = self.nonces;
        if second {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ll(b: u8) -> LandlordKey {
        LandlordKey::from_bytes([b; 32])
    }
    fn tk(b: u8) -> TenantKey {
        TenantKey::from_bytes([b; 32])
    }
    const V: VolumeId = VolumeId([7; 16]);

    fn raw(k: &DiskKey) -> [u8; 32] {
        *k.key.as_bytes()
    }

    #[test]
    fn chain_is_deterministic_and_every_link_matters() {
        let a = DiskKey::derive(&ll(1), &[], V).unwrap();
        assert_eq!(raw(&a), raw(&DiskKey::derive(&ll(1), &[], V).unwrap()));
        assert_eq!(a.links(), 0);
        // Landlord-only key is still not K_L itself, and is per volume.
        assert_ne!(raw(&a), [1; 32]);
        assert_ne!(raw(&a), raw(&DiskKey::derive(&ll(1), &[], VolumeId([8; 16])).unwrap()));
        assert_ne!(raw(&a), raw(&DiskKey::derive(&ll(2), &[], V).unwrap()));
        let t = DiskKey::derive(&ll(1), &[&tk(3)], V).unwrap();
        assert_eq!(t.links(), 1);
        assert_ne!(raw(&a), raw(&t));
        assert_ne!(raw(&t), raw(&DiskKey::derive(&ll(1), &[&tk(4)], V).unwrap()));
        let st = DiskKey::derive(&ll(1), &[&tk(3), &tk(4)], V).unwrap();
        assert_ne!(raw(&st), raw(&t));
        // Order matters.
        assert_ne!(raw(&st), raw(&DiskKey::derive(&ll(1), &[&tk(4), &tk(3)], V).unwrap()));
        // The builder and derive agree.
        let b = DiskKeyChain::new(&ll(1), V).unwrap().link(&tk(3)).unwrap().link(&tk(4)).unwrap().finish();
        assert_eq!(raw(&b), raw(&st));
    }

    #[test]
    fn chain_length_is_bounded() {
        let t = tk(1);
        let keys: alloc::vec::Vec<&TenantKey> = (0..MAX_CHAIN_LINKS).map(|_| &t).collect();
        assert_eq!(DiskKey::derive(&ll(1), &keys, V).unwrap().links(), 255);
        let mut keys = keys;
        keys.push(&t);
        assert_eq!(DiskKey::derive(&ll(1), &keys, V).unwrap_err(), KeyError::ChainTooLong);
    }

    #[test]
    fn wrap_roundtrip_and_rejects_tampering() {
        let kek = SecretKey::from_bytes([9; 32]);
        let key = SecretKey::from_bytes([5; 32]);
        let w = kek.wrap(&key, [1; 12], b"ctx").unwrap();
        assert_ne!(w.ciphertext, [5; 32]);
        assert_eq!(kek.unwrap_key(&w, b"ctx").unwrap().as_bytes(), &[5; 32]);
        assert_eq!(WrappedKey::from_bytes(&w.to_bytes()), w);
        assert_eq!(kek.unwrap_key(&w, b"other").unwrap_err(), KeyError::UnwrapFailed);
        assert_eq!(SecretKey::from_bytes([8; 32]).unwrap_key(&w, b"ctx").unwrap_err(), KeyError::UnwrapFailed);
        for i in 0..WRAPPED_KEY_LEN * 8 {
            let mut b = w.to_bytes();
            b[i / 8] ^= 1 << (i % 8);
            assert!(kek.unwrap_key(&WrappedKey::from_bytes(&b), b"ctx").is_err(), "bit {i}");
        }
    }

    #[test]
    fn header_mac_verifies_only_same_data_and_key() {
        let k = DiskKey::derive(&ll(1), &[&tk(2)], V).unwrap();
        let mac = k.header_mac(b"header").unwrap();
        k.verify_header_mac(b"header", &mac).unwrap();
        assert!(k.verify_header_mac(b"headeR", &mac).is_err());
        let other = DiskKey::derive(&ll(1), &[], V).unwrap();
        assert!(other.verify_header_mac(b"header", &mac).is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = alloc::format!("{:?} {:?}", ll(0xAB), KeySeed::from_random([0xCD; KeySeed::LEN]));
        assert!(!s.contains("171") && !s.contains("ab") && !s.contains("205"), "{s}");
    }
}
