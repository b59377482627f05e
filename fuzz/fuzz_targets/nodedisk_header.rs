//! Fuzzes what the node-disk code reads from an untrusted disk: the node
//! header, key store and volume table decoders (what decodes re-encodes to
//! the same bytes, and a decoded table is checked against a decoded
//! header's layout), and the header stage of `NodeDisk::open` that runs
//! before any structure is authenticated (`is_formatted`, choosing between
//! the two header copies by seal check, MAC and generation).
//!
//! The key store and volume table are MACed under keys from the node's seal
//! key, so an attacker's bytes never get past `NodeDisk::open`'s MAC checks
//! to their decoders; the decoders are fed directly instead. Opening a whole
//! disk (a dozen HKDF and HMAC runs over tens of KiB, then the volumes) is
//! left to the unit and property tests: it would make this target fifty
//! times slower without reaching more of the code an attacker can reach.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nodedisk::header::NodeHeader;
use nodedisk::keystore::KeyStore;
use nodedisk::table::VolumeTable;
use nodedisk::{DiskError, LeaseId, MemDevice, NodeDisk, SealKey, BLOCK_SIZE, RANDOM_LEN};

const SEAL: [u8; 32] = [0x42; 32];
const BLOCKS: u64 = 48;

/// The two header blocks of a formatted disk with a volume and a tenant key.
fn genuine_headers() -> &'static [u8] {
    static H: OnceLock<Vec<u8>> = OnceLock::new();
    H.get_or_init(|| {
        let dev = MemDevice::new(BLOCKS).expect("device");
        let mut n = NodeDisk::format(dev, SealKey::from_bytes(SEAL), &[1; RANDOM_LEN]).expect("format");
        n.set_tenant_key(LeaseId(2), &[3; RANDOM_LEN]).expect("tenant");
        n.create_volume("a", LeaseId(2), 16, &[2; RANDOM_LEN]).expect("create a");
        let dev = n.into_device().expect("close");
        dev.image()[..2 * BLOCK_SIZE].to_vec()
    })
}

// Input layout: a mode byte, then the bytes. Mode bits 0-1 pick the
// structure the decoders try first, bit 2 puts its magic in front of the
// bytes; for the header stage bit 3 picks the header copy the bytes
// replace, bit 4 zeroes the other copy, bit 5 opens with another seal key.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    decoders(mode, rest);
    header_stage(mode, rest);
});

const MAGICS: [&[u8; 8]; 3] = [b"BMNODHD1", b"BMKEYST1", b"BMVOLTB1"];

fn decoders(mode: u8, rest: &[u8]) {
    let owned;
    let b = if mode & 4 != 0 {
        owned = [&MAGICS[usize::from(mode & 3) % 3][..], rest].concat();
        &owned[..]
    } else {
        rest
    };
    let header = NodeHeader::decode(b);
    if let Ok(h) = &header {
        assert_eq!(&h.encode()[..], &b[..256]);
        assert!(h.keystore_copy(1) < h.table_start && h.table_copy(1) < h.data_start && h.data_start < h.disk_blocks);
    }
    let mac_zeroed = |enc: Option<Vec<u8>>| {
        let mut enc = enc.expect("a decoded structure fits its own length");
        let n = b.len() - 32;
        enc[n..].copy_from_slice(&b[n..]);
        enc
    };
    if let Ok(k) = KeyStore::decode(b) {
        assert_eq!(mac_zeroed(k.encode(b.len())), b);
        for t in &k.tenants {
            assert_eq!(k.tenant(t.lease), Some(t));
        }
    }
    if let Ok(t) = VolumeTable::decode(b) {
        assert_eq!(mac_zeroed(t.encode(b.len())), b);
        for e in &t.entries {
            assert_eq!(t.find(&e.name), Some(e));
        }
        // The header the table would sit under: from the input's tail if
        // that decodes, else the genuine one.
        let h = b
            .get(b.len().saturating_sub(256)..)
            .and_then(|tail| NodeHeader::decode(tail).ok())
            .unwrap_or_else(|| NodeHeader::decode(genuine_headers()).expect("genuine header"));
        if t.check_layout(h.data_start, h.disk_blocks).is_ok() {
            assert!(t
                .entries
                .iter()
                .all(|e| e.start_block >= h.data_start && e.start_block + e.blocks <= h.disk_blocks));
        }
    }
}

/// `NodeDisk::open` on a device holding only the two header blocks (the
/// input over one copy), so it stops right after choosing a header: with
/// the genuine copy intact and the right seal key it must choose that one
/// (and then find the device too small for its layout).
fn header_stage(mode: u8, rest: &[u8]) {
    let mut dev = MemDevice::new(2).expect("device");
    let img = dev.image_mut();
    img.copy_from_slice(genuine_headers());
    let copy = usize::from(mode >> 3 & 1);
    let other = 1 - copy;
    if mode & 0x10 != 0 {
        img[other * BLOCK_SIZE..][..BLOCK_SIZE].fill(0);
    }
    let at = copy * BLOCK_SIZE;
    let n = rest.len().min(img.len() - at);
    img[at..at + n].copy_from_slice(&rest[..n]);
    let magic = |c: usize| img[c * BLOCK_SIZE..].starts_with(MAGICS[0]);
    let formatted = magic(0) || magic(1);
    let right_seal = mode & 0x20 == 0;
    let other_genuine = mode & 0x10 == 0 && n <= BLOCK_SIZE;
    assert_eq!(nodedisk::is_formatted(&mut dev), Ok(formatted));
    let seal = SealKey::from_bytes(if right_seal { SEAL } else { [mode; 32] });
    match NodeDisk::open(dev, seal, &[9; RANDOM_LEN]) {
        Ok(_) => panic!("a two-block device cannot hold a formatted disk"),
        Err(DiskError::DiskTooSmall { blocks: 2 }) => {}
        Err(e) => {
            assert!(!(right_seal && other_genuine), "a damaged header copy hid the intact one: {e:?}");
            if !formatted {
                assert_eq!(e, DiskError::NotFormatted);
            }
        }
    }
}
