//! Fuzzes the node-disk decoders and `NodeDisk::open` on untrusted disk
//! bytes: the node header, key store and volume table decoders (with a
//! re-encode identity check), then opening a device image that is either the
//! raw input or a valid formatted image with the input written over part of
//! it, and using whatever opens.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nodedisk::header::NodeHeader;
use nodedisk::keystore::KeyStore;
use nodedisk::table::VolumeTable;
use nodedisk::{LeaseId, MemDevice, NodeDisk, SealKey, BLOCK_SIZE, RANDOM_LEN, SECTOR_SIZE};

const SEAL: [u8; 32] = [0x42; 32];
const BLOCKS: u64 = 48;

/// A formatted disk with two volumes (one tenant-keyed) holding data.
fn base() -> &'static MemDevice {
    static BASE: OnceLock<MemDevice> = OnceLock::new();
    BASE.get_or_init(|| {
        let dev = MemDevice::new(BLOCKS).expect("device");
        let mut n = NodeDisk::format(dev, SealKey::from_bytes(SEAL), &[1; RANDOM_LEN]).expect("format");
        n.create_volume("a", LeaseId(1), 16, &[2; RANDOM_LEN]).expect("create a");
        n.set_tenant_key(LeaseId(2), &[3; RANDOM_LEN]).expect("tenant");
        n.create_volume("b", LeaseId(2), 24, &[4; RANDOM_LEN]).expect("create b");
        for name in ["a", "b"] {
            let mut h = n.open_volume(name).expect("open");
            h.write(1, &[0x77; 3 * SECTOR_SIZE]).expect("write");
        }
        n.into_device().expect("close")
    })
}

fn reencodes(data: &[u8]) {
    if let Ok(h) = NodeHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..256]);
    }
    for len in [BLOCK_SIZE, 2 * BLOCK_SIZE] {
        let Some(b) = data.get(..len) else { break };
        if let Ok(k) = KeyStore::decode(b) {
            let mut enc = k.encode(len).expect("fits");
            enc[len - 32..].copy_from_slice(&b[len - 32..]);
            assert_eq!(enc, b);
        }
        if let Ok(t) = VolumeTable::decode(b) {
            let mut enc = t.encode(len).expect("fits");
            enc[len - 32..].copy_from_slice(&b[len - 32..]);
            assert_eq!(enc, b);
        }
    }
    // Short inputs too, with each magic in front.
    for magic in [b"BMNODHD1", b"BMKEYST1", b"BMVOLTB1"] {
        let mut b = magic.to_vec();
        b.extend_from_slice(data);
        let _ = NodeHeader::decode(&b);
        let _ = KeyStore::decode(&b);
        let _ = VolumeTable::decode(&b);
    }
}

fuzz_target!(|data: &[u8]| {
    reencodes(data);
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut dev = base().clone();
    let img = dev.image_mut();
    if mode & 1 == 0 {
        // The input is the start of the image (the rest zero).
        img.fill(0);
        let n = rest.len().min(img.len());
        img[..n].copy_from_slice(&rest[..n]);
    } else {
        // The input overwrites the valid image at a chosen offset.
        let Some((off, bytes)) = rest.split_first_chunk::<2>() else { return };
        let at = (usize::from(u16::from_le_bytes(*off)) * 16) % img.len();
        let n = bytes.len().min(img.len() - at);
        img[at..at + n].copy_from_slice(&bytes[..n]);
    }
    let seal = if mode & 2 == 0 { SEAL } else { [mode; 32] };
    let _ = nodedisk::is_formatted(&mut dev);
    if let Ok(mut node) = NodeDisk::open(dev, SealKey::from_bytes(seal), &[9; RANDOM_LEN]) {
        for v in node.list() {
            if let Ok(mut h) = node.open_volume(&v.name) {
                let mut buf = vec![0u8; (h.capacity_sectors() as usize).min(32) * SECTOR_SIZE];
                let _ = h.read(0, &mut buf);
                let _ = h.write(1, &buf[..SECTOR_SIZE]);
            }
        }
        let _ = node.rekey_volume("a", &[10; RANDOM_LEN]);
        let _ = node.create_volume("c", LeaseId(3), 8, &[11; RANDOM_LEN]);
        let _ = node.delete_volume("b");
        let _ = node.regenerate_tenant_key(LeaseId(2), &[12; RANDOM_LEN]);
    }
});
