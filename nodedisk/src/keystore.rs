//! The key store: `K_L` and each lease's `K_T`, wrapped under the seal key.
//!
//! Two copies of `keystore_blocks` blocks each; generation `g` lives in copy
//! `g & 1`; the valid copy with the highest generation wins. A copy
//! (little-endian; unused bytes zero):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `BMKEYST1` |
//! | 8 | 8 | generation |
//! | 16 | 4 | landlord epoch (≥ 1; +1 per landlord rotation) |
//! | 20 | 4 | number of tenant entries |
//! | 24 | 60 | `K_L` wrapped (nonce, ciphertext, tag) |
//! | 84 | 12 | reserved, zero |
//! | 96 + 80·i | 80 | tenant entry: lease (4), tenant epoch (4, ≥ 1), `K_T` wrapped (60), reserved (12) |
//! | len − 32 | 32 | HMAC-SHA256 under k_store over node id ‖ bytes 0..len−32 |
//!
//! Entries are sorted by lease, one per lease. Wrapping is ChaCha20-Poly1305
//! under k_wrap with AD `"BMonitor nodedisk K_L" ‖ node id ‖ epoch` or
//! `"BMonitor nodedisk K_T" ‖ node id ‖ lease ‖ epoch`, so a wrapped key
//! only opens in its own slot, epoch and disk.

use alloc::vec;
use alloc::vec::Vec;
use blockcrypt::keys::{WrappedKey, WRAPPED_KEY_LEN};

use crate::header::NodeId;
use crate::{FormatError, LeaseId};
use blockcrypt::bytes::{array, put, u32_at, u64_at};

/// Magic at the start of a key-store copy.
pub const KEYSTORE_MAGIC: [u8; 8] = *b"BMKEYST1";
const FIXED_LEN: usize = 96;
const ENTRY_LEN: usize = 80;
/// Length of the MAC at the end of a region.
pub const MAC_LEN: usize = 32;

/// One lease's tenant key, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantEntry {
    /// The lease.
    pub lease: LeaseId,
    /// Tenant key epoch: 1 for the first key, +1 per regeneration. Volumes
    /// record it, so a volume under an older epoch is known to need re-init.
    pub epoch: u32,
    /// `K_T` wrapped under the seal key.
    pub key: WrappedKey,
}

/// A decoded key-store copy (keys still wrapped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStore {
    /// Write generation; picks the newer copy.
    pub generation: u64,
    /// Landlord key epoch: 1 at format, +1 per rotation.
    pub landlord_epoch: u32,
    /// `K_L` wrapped under the seal key.
    pub landlord: WrappedKey,
    /// Tenant keys, sorted by lease.
    pub tenants: Vec<TenantEntry>,
}

/// Most tenant entries a key-store copy of `len` bytes holds.
#[must_use]
pub fn max_tenants(len: usize) -> usize {
    len.saturating_sub(FIXED_LEN + MAC_LEN) / ENTRY_LEN
}

/// AD binding a wrapped `K_L` to its disk and epoch.
#[must_use]
pub fn landlord_ad(node: &NodeId, epoch: u32) -> Vec<u8> {
    let mut ad = Vec::from(&b"BMonitor nodedisk K_L"[..]);
    ad.extend_from_slice(&node.0);
    ad.extend_from_slice(&epoch.to_le_bytes());
    ad
}

/// AD binding a wrapped `K_T` to its disk, lease and epoch.
#[must_use]
pub fn tenant_ad(node: &NodeId, lease: LeaseId, epoch: u32) -> Vec<u8> {
    let mut ad = Vec::from(&b"BMonitor nodedisk K_T"[..]);
    ad.extend_from_slice(&node.0);
    ad.extend_from_slice(&lease.0.to_le_bytes());
    ad.extend_from_slice(&epoch.to_le_bytes());
    ad
}

impl KeyStore {
    /// The tenant entry of `lease`, if it has a key.
    #[must_use]
    pub fn tenant(&self, lease: LeaseId) -> Option<&TenantEntry> {
        self.tenants.iter().find(|t| t.lease == lease)
    }

    /// The tenant epoch of `lease` (0: no tenant key).
    #[must_use]
    pub fn tenant_epoch(&self, lease: LeaseId) -> u32 {
        self.tenant(lease).map_or(0, |t| t.epoch)
    }

    /// Encodes into a region of `len` bytes, MAC left zero; `None` if the
    /// entries do not fit.
    #[must_use]
    pub fn encode(&self, len: usize) -> Option<Vec<u8>> {
        if self.tenants.len() > max_tenants(len) {
            return None;
        }
        let mut b = vec![0u8; len];
        let count = u32::try_from(self.tenants.len()).ok()?;
        let mut ok = put(&mut b, 0, &KEYSTORE_MAGIC)
            && put(&mut b, 8, &self.generation.to_le_bytes())
            && put(&mut b, 16, &self.landlord_epoch.to_le_bytes())
            && put(&mut b, 20, &count.to_le_bytes())
            && put(&mut b, 24, &self.landlord.to_bytes());
        for (i, t) in self.tenants.iter().enumerate() {
            let off = FIXED_LEN + i * ENTRY_LEN;
            ok = ok
                && put(&mut b, off, &t.lease.0.to_le_bytes())
                && put(&mut b, off + 4, &t.epoch.to_le_bytes())
                && put(&mut b, off + 8, &t.key.to_bytes());
        }
        ok.then_some(b)
    }

    /// Decodes a whole key-store copy and checks its structure (the MAC is
    /// the caller's: it needs the key). Any input is safe.
    ///
    /// # Errors
    /// [`FormatError`] naming what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let t = FormatError::Truncated;
        if b.len() < FIXED_LEN + MAC_LEN {
            return Err(t);
        }
        if array::<8>(b, 0).ok_or(t)? != KEYSTORE_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let bad = FormatError::BadField;
        let landlord_epoch = u32_at(b, 16).ok_or(t)?;
        if landlord_epoch == 0 {
            return Err(bad("landlord epoch"));
        }
        let count = usize::try_from(u32_at(b, 20).ok_or(t)?).map_err(|_| bad("tenant count"))?;
        if count > max_tenants(b.len()) {
            return Err(bad("tenant count"));
        }
        let zero = |from: usize, to: usize| b.get(from..to).is_some_and(|r| r.iter().all(|&x| x == 0));
        if !zero(84, FIXED_LEN) {
            return Err(bad("reserved"));
        }
        let mut tenants = Vec::with_capacity(count);
        for i in 0..count {
            let off = FIXED_LEN + i * ENTRY_LEN;
            let lease = LeaseId(u32_at(b, off).ok_or(t)?);
            let epoch = u32_at(b, off + 4).ok_or(t)?;
            if epoch == 0 {
                return Err(bad("tenant epoch"));
            }
            if !zero(off + 8 + WRAPPED_KEY_LEN, off + ENTRY_LEN) {
                return Err(bad("reserved"));
            }
            if tenants.last().is_some_and(|p: &TenantEntry| p.lease >= lease) {
                return Err(bad("tenant order"));
            }
            let key = WrappedKey::from_bytes(&array(b, off + 8).ok_or(t)?);
            tenants.push(TenantEntry { lease, epoch, key });
        }
        if !zero(FIXED_LEN + count * ENTRY_LEN, b.len() - MAC_LEN) {
            return Err(bad("trailing bytes"));
        }
        Ok(Self {
            generation: u64_at(b, 8).ok_or(t)?,
            landlord_epoch,
            landlord: WrappedKey::from_bytes(&array(b, 24).ok_or(t)?),
            tenants,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn wk(b: u8) -> WrappedKey {
        WrappedKey::from_bytes(&[b; WRAPPED_KEY_LEN])
    }

    #[test]
    fn roundtrip_and_limits() {
        let mut ks = KeyStore { generation: 3, landlord_epoch: 2, landlord: wk(1), tenants: Vec::new() };
        for l in 0..5 {
            ks.tenants.push(TenantEntry { lease: LeaseId(l * 3), epoch: l + 1, key: wk(l as u8) });
        }
        let b = ks.encode(8192).unwrap();
        assert_eq!(KeyStore::decode(&b).unwrap(), ks);
        assert_eq!(max_tenants(8192), 100);
        ks.tenants = (0..101).map(|l| TenantEntry { lease: LeaseId(l), epoch: 1, key: wk(0) }).collect();
        assert!(ks.encode(8192).is_none());
        ks.tenants.truncate(100);
        assert_eq!(KeyStore::decode(&ks.encode(8192).unwrap()).unwrap().tenants.len(), 100);
    }

    #[test]
    fn bad_stores_refused() {
        let ks = KeyStore {
            generation: 3,
            landlord_epoch: 1,
            landlord: wk(1),
            tenants: vec![
                TenantEntry { lease: LeaseId(1), epoch: 1, key: wk(2) },
                TenantEntry { lease: LeaseId(2), epoch: 1, key: wk(3) },
            ],
        };
        let good = ks.encode(4096).unwrap();
        assert_eq!(KeyStore::decode(&good[..100]), Err(FormatError::Truncated));
        let mut b = good.clone();
        b[0] = 0;
        assert_eq!(KeyStore::decode(&b), Err(FormatError::BadMagic));
        let mut b = good.clone();
        b[20] = 0xff;
        assert_eq!(KeyStore::decode(&b), Err(FormatError::BadField("tenant count")));
        let mut b = good.clone();
        b[96 + 80] = 1; // second lease = first
        assert_eq!(KeyStore::decode(&b), Err(FormatError::BadField("tenant order")));
        let mut b = good.clone();
        b[16..20].fill(0);
        assert_eq!(KeyStore::decode(&b), Err(FormatError::BadField("landlord epoch")));
        let mut b = good.clone();
        b[4000] = 1;
        assert_eq!(KeyStore::decode(&b), Err(FormatError::BadField("trailing bytes")));
        let mut b = good;
        b[100] = 0;
        b[101] = 0;
        b[102] = 0;
        b[103] = 0;
        assert_eq!(KeyStore::decode(&b), Err(FormatError::BadField("tenant epoch")));
    }
}
