//! Ed25519 signatures over VM images.
//!
//! The tenant signs `DOMAIN || SHA-256(image)`: hashing first lets the node
//! verify an image that arrived in chunks without holding it twice, and the
//! domain string keeps an image signature from being valid for anything else
//! signed with the same key.

use ed25519_dalek::{Signature, Signer, SigningKey as DalekSigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::msg::{ImageSignature, ImageVerifyKey};

/// Domain separation prefix of the signed message.
pub const IMAGE_SIG_DOMAIN: &[u8] = b"BMonitor image signature v1\0";

/// Why an image signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigError {
    /// The registered key is not a valid Ed25519 point.
    BadKey,
    /// The signature does not verify for this image and key.
    Mismatch,
}

impl core::fmt::Display for SigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SigError::BadKey => write!(f, "image signing key is not a valid Ed25519 key"),
            SigError::Mismatch => write!(f, "image signature does not verify"),
        }
    }
}

/// SHA-256 of an image, the value that is signed (after the domain prefix).
pub fn image_digest(image: &[u8]) -> [u8; 32] {
    Sha256::digest(image).into()
}

fn signed_message(digest: &[u8; 32]) -> [u8; 60] {
    let mut m = [0u8; 60];
    for (d, s) in m.iter_mut().zip(IMAGE_SIG_DOMAIN.iter().chain(digest.iter())) {
        *d = *s;
    }
    m
}

/// Verifies `signature` over an image given its SHA-256 (for images hashed
/// chunk by chunk as they were uploaded). Uses strict verification (no
/// malleable or small-order forms).
pub fn verify_image_digest(
    key: &ImageVerifyKey,
    digest: &[u8; 32],
    signature: &ImageSignature,
) -> Result<(), SigError> {
    let vk = VerifyingKey::from_bytes(&key.0).map_err(|_| SigError::BadKey)?;
    let sig = Signature::from_bytes(&signature.to_bytes());
    vk.verify_strict(&signed_message(digest), &sig).map_err(|_| SigError::Mismatch)
}

/// Verifies `signature` over `image` with the tenant's registered key; the
/// node refuses to boot an image for which this fails when a key is set.
pub fn verify_image(key: &ImageVerifyKey, image: &[u8], signature: &ImageSignature) -> Result<(), SigError> {
    verify_image_digest(key, &image_digest(image), signature)
}

/// Signs an image with a 32-byte Ed25519 seed (used by `bmctl tenant
/// sign-image`; the node never signs).
pub fn sign_image(seed: &[u8; 32], image: &[u8]) -> ImageSignature {
    sign_image_digest(seed, &image_digest(image))
}

/// Signs an image given its SHA-256.
pub fn sign_image_digest(seed: &[u8; 32], digest: &[u8; 32]) -> ImageSignature {
    let sk = DalekSigningKey::from_bytes(seed);
    ImageSignature::from_bytes(&sk.sign(&signed_message(digest)).to_bytes())
}

/// The public (verifying) key for a 32-byte Ed25519 seed, to register with
/// [`crate::Request::SetImageSigningKey`].
pub fn image_verify_key(seed: &[u8; 32]) -> ImageVerifyKey {
    ImageVerifyKey(DalekSigningKey::from_bytes(seed).verifying_key().to_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify() {
        let seed = [9u8; 32];
        let key = image_verify_key(&seed);
        let sig = sign_image(&seed, b"kernel bytes");
        assert_eq!(verify_image(&key, b"kernel bytes", &sig), Ok(()));
        assert_eq!(verify_image(&key, b"kernel bytez", &sig), Err(SigError::Mismatch));
        let other = image_verify_key(&[8u8; 32]);
        assert_eq!(verify_image(&other, b"kernel bytes", &sig), Err(SigError::Mismatch));
        let mut bad = sig;
        bad.s[0] ^= 1;
        assert_eq!(verify_image(&key, b"kernel bytes", &bad), Err(SigError::Mismatch));
    }

    #[test]
    fn bad_key_refused() {
        // y = 2 does not decompress to a curve point.
        let mut k = [0u8; 32];
        k[0] = 2;
        let sig = sign_image(&[1; 32], b"x");
        assert!(verify_image(&ImageVerifyKey(k), b"x", &sig).is_err());
    }

    #[test]
    fn domain_is_28_bytes() {
        assert_eq!(IMAGE_SIG_DOMAIN.len() + 32, 60);
    }
}
