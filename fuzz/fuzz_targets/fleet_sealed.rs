//! Fuzzes the sealed volume secret a node receives from another node (a
//! one-way Noise `X` message relayed by the facility controller,
//! `mgmt_proto::fleet::open_volume_secret`) and the volume secret it
//! carries (`nodedisk::VolumeSecret::from_bytes`).
//!
//! Input layout: the whole input is the sealed message node B opens as
//! coming from node A for VM "web" (and the bytes `VolumeSecret::from_bytes`
//! decodes). When it starts with [`MARKER`], the rest is
//! `flip_at (u16 BE) | flip_xor | secret`: A really seals `secret` for B,
//! which must open to the same secret and refuse it with the byte at
//! `flip_at % len` xored with `flip_xor | 1`, and (chosen by `flip_xor`)
//! for another VM, at another node, from another sender, truncated at
//! `flip_at % len` or with a byte more.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mgmt_proto::crypto::{KeyPair, SecretKey};
use mgmt_proto::fleet::{open_volume_secret, seal_volume_secret, SealError, MAX_SEALED};
use nodedisk::{DiskError, VolumeSecret};

const MARKER: u8 = 0xA5;

/// Nodes A (sender), B (recipient) and C (neither).
fn keys() -> &'static [KeyPair; 3] {
    static K: OnceLock<[KeyPair; 3]> = OnceLock::new();
    K.get_or_init(|| [1u8, 2, 3].map(|n| KeyPair::from_secret(SecretKey([n; 32])).expect("a valid X25519 secret")))
}

fuzz_target!(|data: &[u8]| {
    let [a, b, c] = keys();
    // Hostile bytes as the sealed message: never a panic; whatever opens
    // (only a genuine message can) is bound to its VM and recipient.
    match open_volume_secret(&b.secret, &b.public, &a.public, "web", data) {
        Ok(secret) => {
            assert!(data.len() <= MAX_SEALED);
            assert_eq!(open_volume_secret(&b.secret, &b.public, &a.public, "db", data), Err(SealError::WrongVm));
            assert!(open_volume_secret(&c.secret, &c.public, &a.public, "web", data).is_err());
            assert!(open_volume_secret(&b.secret, &b.public, &c.public, "web", data).is_err());
            assert!(secret.len() < data.len());
        }
        Err(e) => assert!(data.len() <= MAX_SEALED || e == SealError::Oversize),
    }
    volume_secret(data);
    if let [MARKER, hi, lo, xor, secret @ ..] = data {
        sealed_round_trip(usize::from(u16::from_be_bytes([*hi, *lo])), *xor | 1, secret);
    }
});

/// A genuine sealed message opens to its secret at its recipient only, and
/// any one byte changed makes it fail.
fn sealed_round_trip(flip_at: usize, xor: u8, secret: &[u8]) {
    let [a, b, c] = keys();
    let sealed = match seal_volume_secret(&a.secret, &a.public, &b.public, "web", secret, [9; 32]) {
        Ok(s) => s,
        Err(SealError::Oversize) => {
            // Only a secret that cannot fit with its envelope is refused.
            assert!(secret.len() + 96 > MAX_SEALED - 32, "a {}-byte secret refused as oversize", secret.len());
            return;
        }
        Err(e) => panic!("sealing a {}-byte secret failed: {e:?}", secret.len()),
    };
    assert!(sealed.len() <= MAX_SEALED);
    let opened = open_volume_secret(&b.secret, &b.public, &a.public, "web", &sealed);
    assert_eq!(opened.as_deref(), Ok(secret));
    let mut bad = sealed.clone();
    let i = flip_at % bad.len();
    bad[i] ^= xor;
    assert!(
        open_volume_secret(&b.secret, &b.public, &a.public, "web", &bad).is_err(),
        "byte {i} of {} xored with {xor:#04x} still opens",
        bad.len()
    );
    // One more refusal, chosen by the input (each costs X25519 operations,
    // which set this target's speed).
    let refused = match (xor >> 1) % 5 {
        0 => open_volume_secret(&b.secret, &b.public, &a.public, "db", &sealed) == Err(SealError::WrongVm),
        1 => open_volume_secret(&c.secret, &c.public, &a.public, "web", &sealed).is_err(),
        2 => open_volume_secret(&b.secret, &b.public, &c.public, "web", &sealed).is_err(),
        3 => open_volume_secret(&b.secret, &b.public, &a.public, "web", &sealed[..i]).is_err(),
        _ => {
            let mut longer = sealed;
            longer.push(xor);
            open_volume_secret(&b.secret, &b.public, &a.public, "web", &longer).is_err()
        }
    };
    assert!(refused, "a sealed secret opened for another VM, node, sender or length (case {})", (xor >> 1) % 5);
}

/// `VolumeSecret::from_bytes`: exactly 60 bytes with a size a volume can
/// have, and what decodes encodes back to the same bytes.
fn volume_secret(data: &[u8]) {
    let valid_size = |b: &[u8]| {
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[52..60]);
        nodedisk::table::geometry(u64::from_le_bytes(n)).is_ok()
    };
    match VolumeSecret::from_bytes(data) {
        Ok(s) => {
            assert_eq!(data.len(), nodedisk::VOLUME_SECRET_LEN);
            assert!(valid_size(data));
            assert_eq!(&s.to_bytes()[..], data);
            let again = VolumeSecret::from_bytes(&s.to_bytes()).expect("an encoded secret decodes");
            assert_eq!((again.volume_id, again.key_epoch, again.sectors), (s.volume_id, s.key_epoch, s.sectors));
            assert_eq!(again.key(), s.key());
        }
        Err(DiskError::BadLength { len }) => {
            assert_eq!(len, data.len());
            assert_ne!(len, nodedisk::VOLUME_SECRET_LEN);
        }
        Err(DiskError::BadSize { sectors }) => {
            assert_eq!(data.len(), nodedisk::VOLUME_SECRET_LEN);
            assert!(!valid_size(data));
            assert_eq!(sectors.to_le_bytes(), data[52..60]);
        }
        Err(e) => panic!("unexpected error {e:?} for {} bytes", data.len()),
    }
}
