#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::*;
use crate::MemDevice;
use alloc::collections::BTreeMap;
use alloc::format;
use core::sync::atomic::{AtomicU32, Ordering};

type Node = NodeDisk<MemDevice>;

const SEAL: [u8; 32] = [0x5e; 32];
const BLOCKS: u64 = 200;

fn seal() -> SealKey {
    SealKey::from_bytes(SEAL)
}

/// Distinct random bytes per call (deterministic across runs).
fn rnd() -> [u8; RANDOM_LEN] {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut r = [0xa5; RANDOM_LEN];
    r[..4].copy_from_slice(&n.to_le_bytes());
    r
}

fn fresh() -> Node {
    NodeDisk::format(MemDevice::new(BLOCKS).unwrap(), seal(), &rnd()).unwrap()
}

fn reboot(n: Node) -> Node {
    NodeDisk::open(n.into_device().unwrap(), seal(), &rnd()).unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

fn write(n: &mut Node, name: &str, sector: u64, data: &[u8]) {
    let mut h = n.open_volume(name).unwrap();
    h.write(sector, data).unwrap();
    h.flush().unwrap();
}

fn read_all(n: &mut Node, name: &str) -> Vec<u8> {
    let mut h = n.open_volume(name).unwrap();
    let mut buf = vec![0u8; h.capacity_sectors() as usize * SECTOR_SIZE];
    h.read(0, &mut buf).unwrap();
    buf
}

/// Every volume and its whole contents.
fn state(n: &mut Node) -> BTreeMap<String, Vec<u8>> {
    let names: Vec<String> = n.list().into_iter().map(|v| v.name).collect();
    names.into_iter().map(|name| (name.clone(), read_all(n, &name))).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A node with volumes "a" (lease 1, 20 sectors) and "b" (lease 2, 40
/// sectors), both holding a pattern.
fn two_volumes() -> Node {
    let mut n = fresh();
    n.create_volume("a", LeaseId(1), 20, &rnd()).unwrap();
    n.create_volume("b", LeaseId(2), 40, &rnd()).unwrap();
    write(&mut n, "a", 0, &pattern(1, 20 * 512));
    write(&mut n, "b", 0, &pattern(2, 40 * 512));
    n
}

#[test]
fn format_then_open_round_trip() {
    let mut dev = MemDevice::new(BLOCKS).unwrap();
    assert!(!is_formatted(&mut dev).unwrap());
    assert_eq!(NodeDisk::open(dev.clone(), seal(), &rnd()).unwrap_err(), DiskError::NotFormatted);
    let mut n = NodeDisk::format(dev, seal(), &rnd()).unwrap();
    assert_eq!(n.landlord_epoch(), 1);
    assert_eq!(n.free_blocks(), BLOCKS - 22);
    n.create_volume("web-1", LeaseId(7), 100, &rnd()).unwrap();
    let id = n.node_id();
    let listed = n.list();
    let mut dev = n.into_device().unwrap();
    assert!(is_formatted(&mut dev).unwrap());
    assert_eq!(NodeDisk::format(dev.clone(), seal(), &rnd()).unwrap_err(), DiskError::AlreadyFormatted);
    let n = NodeDisk::open(dev, seal(), &rnd()).unwrap();
    assert_eq!(n.node_id(), id);
    assert_eq!(n.list(), listed);
    assert_eq!(listed[0].sectors, 100);
    assert_eq!(listed[0].lease, LeaseId(7));
    assert!(!listed[0].tenant_keyed && !listed[0].open);
}

#[test]
fn small_disks_refused() {
    assert!(matches!(
        NodeDisk::format(MemDevice::new(22).unwrap(), seal(), &rnd()),
        Err(DiskError::DiskTooSmall { blocks: 22 })
    ));
    assert!(matches!(
        NodeDisk::format(MemDevice::new(0).unwrap(), seal(), &rnd()),
        Err(DiskError::DiskTooSmall { .. })
    ));
    // A disk that shrank below its header's size.
    let dev = fresh().into_device().unwrap();
    let small = MemDevice::new(BLOCKS - 1).unwrap();
    let mut small = small;
    small.image_mut().copy_from_slice(&dev.image()[..(BLOCKS as usize - 1) * BLOCK_SIZE]);
    assert_eq!(NodeDisk::open(small, seal(), &rnd()).unwrap_err(), DiskError::DiskTooSmall { blocks: BLOCKS - 1 });
}

#[test]
fn data_survives_reboot() {
    let mut n = two_volumes();
    // Unaligned writes: across 4 KiB blocks, partial head and tail.
    let odd = pattern(9, 13 * 512);
    write(&mut n, "b", 5, &odd);
    let mut n = reboot(reboot(n));
    let a = read_all(&mut n, "a");
    assert_eq!(a, pattern(1, 20 * 512));
    let b = read_all(&mut n, "b");
    let mut want = pattern(2, 40 * 512);
    want[5 * 512..18 * 512].copy_from_slice(&odd);
    assert_eq!(b, want);
    // Unaligned reads agree with the whole.
    let mut h = n.open_volume("b").unwrap();
    let mut part = vec![0u8; 3 * 512];
    h.read(15, &mut part).unwrap();
    assert_eq!(part, want[15 * 512..18 * 512]);
}

#[test]
fn wrong_seal_key_is_wrong_node() {
    let dev = two_volumes().into_device().unwrap();
    let e = NodeDisk::open(dev.clone(), SealKey::from_bytes([1; 32]), &rnd()).unwrap_err();
    assert_eq!(e, DiskError::WrongNode);
    assert!(format!("{e}").contains("another node"));
    // Nothing was written by the failed open.
    let mut n = NodeDisk::open(dev, seal(), &rnd()).unwrap();
    assert_eq!(read_all(&mut n, "a"), pattern(1, 20 * 512));
}

#[test]
fn header_copy_fallback_and_corruption() {
    let dev = fresh().into_device().unwrap();
    for block in [0usize, 1] {
        let mut d = dev.clone();
        d.image_mut()[block * BLOCK_SIZE + 30] ^= 4; // node id bit
        NodeDisk::open(d, seal(), &rnd()).unwrap();
    }
    let mut d = dev.clone();
    d.image_mut()[30] ^= 4;
    d.image_mut()[BLOCK_SIZE + 230] ^= 4; // MAC bit
    assert_eq!(NodeDisk::open(d, seal(), &rnd()).unwrap_err(), DiskError::Corrupt { what: "node header" });
    let mut d = dev.clone();
    d.image_mut()[8] = 9; // version
    d.image_mut()[BLOCK_SIZE + 8] = 9;
    assert_eq!(NodeDisk::open(d, seal(), &rnd()).unwrap_err(), DiskError::Corrupt { what: "node header" });
    let mut d = dev;
    d.image_mut()[..2 * BLOCK_SIZE].fill(0);
    assert_eq!(NodeDisk::open(d, seal(), &rnd()).unwrap_err(), DiskError::NotFormatted);
}

#[test]
fn key_store_and_table_fall_back_then_fail() {
    let mut n = fresh();
    n.create_volume("a", LeaseId(1), 8, &rnd()).unwrap();
    n.create_volume("b", LeaseId(1), 8, &rnd()).unwrap();
    let h = *n.header();
    let newest_table = n.table.generation & 1;
    let dev = n.into_device().unwrap();
    // Damage the newest table copy: the older one (only "a") wins.
    let mut d = dev.clone();
    d.image_mut()[h.table_copy(newest_table) as usize * BLOCK_SIZE + 40] ^= 1;
    let n2 = NodeDisk::open(d.clone(), seal(), &rnd()).unwrap();
    assert_eq!(n2.list().len(), 1);
    drop(n2);
    d.image_mut()[h.table_copy(newest_table ^ 1) as usize * BLOCK_SIZE + 40] ^= 1;
    assert_eq!(NodeDisk::open(d, seal(), &rnd()).unwrap_err(), DiskError::Corrupt { what: "volume table" });
    // Key store: one copy damaged is repaired at open; both is corrupt.
    let mut d = dev.clone();
    d.image_mut()[h.keystore_copy(0) as usize * BLOCK_SIZE + 30] ^= 1;
    let n3 = NodeDisk::open(d, seal(), &rnd()).unwrap();
    let d = n3.into_device().unwrap();
    let mut d2 = d.clone();
    d2.image_mut()[h.keystore_copy(1) as usize * BLOCK_SIZE + 30] ^= 1;
    NodeDisk::open(d2, seal(), &rnd()).unwrap(); // copy 0 was rewritten
    let mut d = dev;
    d.image_mut()[h.keystore_copy(0) as usize * BLOCK_SIZE + 30] ^= 1;
    d.image_mut()[h.keystore_copy(1) as usize * BLOCK_SIZE + 30] ^= 1;
    assert_eq!(NodeDisk::open(d, seal(), &rnd()).unwrap_err(), DiskError::Corrupt { what: "key store" });
}

#[test]
fn flipped_bit_in_volume_data_is_integrity_error() {
    let n = two_volumes();
    let entry = n.table.find("b").unwrap().clone();
    let mut dev = n.into_device().unwrap();
    // blockcrypt layout inside the range: 2 headers, 1 metadata block, then
    // two slots per 4 KiB sector. Sector 2 (512-sectors 16..24) was written
    // once, into slot 0.
    let block = entry.start_block + 2 + 1 + 2 * 2;
    dev.image_mut()[block as usize * BLOCK_SIZE + 100] ^= 0x10;
    let mut n = NodeDisk::open(dev, seal(), &rnd()).unwrap();
    let mut h = n.open_volume("b").unwrap();
    let mut buf = vec![0u8; 512];
    h.read(15, &mut buf).unwrap();
    let e = h.read(17, &mut buf).unwrap_err();
    assert_eq!(e, DiskError::Integrity { volume: "b".into(), sector: 16 });
    assert!(format!("{e}").contains("volume b: sector 16"));
    let mut big = vec![0u8; 40 * 512];
    assert!(matches!(h.read(0, &mut big), Err(DiskError::Integrity { sector: 16, .. })));
    // A partial write to the bad block is refused; a whole-block write heals it.
    assert!(matches!(h.write(16, &[0; 512]), Err(DiskError::Integrity { .. })));
    h.write(16, &[3; 4096]).unwrap();
    h.read(17, &mut buf).unwrap();
    assert_eq!(buf, vec![3; 512]);
    // Other volume unaffected.
    drop(h);
    assert_eq!(read_all(&mut n, "a"), pattern(1, 20 * 512));
}

#[test]
fn raw_disk_holds_no_plaintext() {
    let mut n = fresh();
    n.create_volume("secret", LeaseId(3), 64, &rnd()).unwrap();
    let needle: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(0x41)).collect();
    let data: Vec<u8> = needle.iter().copied().cycle().take(64 * 512).collect();
    write(&mut n, "secret", 0, &data);
    n.set_tenant_key(LeaseId(3), &rnd()).unwrap();
    n.create_volume("secret2", LeaseId(3), 64, &rnd()).unwrap();
    write(&mut n, "secret2", 0, &data);
    let dev = n.into_device().unwrap();
    assert!(!contains(dev.image(), &needle));
    // Nor any key: the seal key never touches the disk.
    assert!(!contains(dev.image(), &SEAL));
}

#[test]
fn landlord_rotation_erases_every_volume() {
    let mut n = two_volumes();
    n.set_tenant_key(LeaseId(2), &rnd()).unwrap();
    write(&mut n, "b", 0, &pattern(2, 40 * 512));
    let old_wrapped = n.store.landlord.to_bytes();
    let old_kl = *n.landlord.secret().as_bytes();
    let mut live = n.open_volume("a").unwrap();
    n.rotate_landlord_key(&rnd()).unwrap();
    assert_eq!(n.landlord_epoch(), 2);
    // An open handle sees the emptied volume.
    let mut buf = vec![1u8; 20 * 512];
    live.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0));
    drop(live);
    let mut n = reboot(n);
    let s = state(&mut n);
    assert_eq!(s.len(), 2);
    assert!(s.values().all(|v| v.iter().all(|&x| x == 0)));
    assert!(n.list().iter().find(|v| v.name == "b").unwrap().tenant_keyed);
    // The old K_L is gone from the disk (both key-store copies rewritten).
    let dev = n.into_device().unwrap();
    assert!(!contains(dev.image(), &old_wrapped));
    // Even with the old K_L, the volumes do not open: their headers were rewritten.
    let mut n = NodeDisk::open(dev, seal(), &rnd()).unwrap();
    let e = n.table.find("a").unwrap().clone();
    let key = DiskKey::derive(&LandlordKey::from_bytes(old_kl), &[], e.id).unwrap();
    let sub = n.root.sub(e.start_block, e.blocks).unwrap();
    assert!(Volume::open(sub, key, 0).is_err());
    // The volumes work under the new key.
    write(&mut n, "a", 3, &[9; 1024]);
    assert_eq!(read_all(&mut reboot(n), "a")[3 * 512..5 * 512], [9; 1024]);
}

#[test]
fn tenant_keys_affect_only_their_lease() {
    let mut n = two_volumes();
    n.create_volume("c", LeaseId(2), 8, &rnd()).unwrap();
    write(&mut n, "c", 0, &pattern(3, 8 * 512));
    assert_eq!(n.regenerate_tenant_key(LeaseId(2), &rnd()).unwrap_err(), DiskError::NoTenantKey { lease: LeaseId(2) });
    // First tenant key: lease 2's existing volumes are re-initialised.
    n.set_tenant_key(LeaseId(2), &rnd()).unwrap();
    assert_eq!(n.set_tenant_key(LeaseId(2), &rnd()).unwrap_err(), DiskError::TenantKeyExists { lease: LeaseId(2) });
    assert_eq!(n.tenant_epoch(LeaseId(2)), 1);
    assert_eq!(n.tenant_epoch(LeaseId(1)), 0);
    let s = state(&mut n);
    assert_eq!(s["a"], pattern(1, 20 * 512));
    assert!(s["b"].iter().all(|&x| x == 0) && s["c"].iter().all(|&x| x == 0));
    write(&mut n, "b", 0, &pattern(4, 40 * 512));
    write(&mut n, "c", 0, &pattern(5, 8 * 512));
    let mut n = reboot(n);
    assert_eq!(read_all(&mut n, "b"), pattern(4, 40 * 512));
    // The landlord key alone no longer opens a tenant volume.
    let e = n.table.find("b").unwrap().clone();
    let sub = n.root.sub(e.start_block, e.blocks).unwrap();
    let landlord_only = DiskKey::derive(&n.landlord, &[], e.id).unwrap();
    assert!(matches!(Volume::open(sub, landlord_only, 0), Err(VolumeError::WrongKeyOrTampered)));
    // Regeneration: lease 2 emptied again, lease 1 untouched.
    n.regenerate_tenant_key(LeaseId(2), &rnd()).unwrap();
    let mut n = reboot(n);
    assert_eq!(n.tenant_epoch(LeaseId(2)), 2);
    let s = state(&mut n);
    assert_eq!(s["a"], pattern(1, 20 * 512));
    assert!(s["b"].iter().all(|&x| x == 0) && s["c"].iter().all(|&x| x == 0));
}

#[test]
fn rekey_keeps_data() {
    let mut n = two_volumes();
    n.set_tenant_key(LeaseId(1), &rnd()).unwrap();
    write(&mut n, "a", 0, &pattern(6, 20 * 512));
    let report = n.rekey_volume("a", &rnd()).unwrap();
    assert_eq!(report.reencrypted, 3);
    // Also on an open volume, while it is in use.
    let mut h = n.open_volume("b").unwrap();
    n.rekey_volume("b", &rnd()).unwrap();
    let mut buf = vec![0u8; 40 * 512];
    h.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(2, 40 * 512));
    drop(h);
    let mut n = reboot(n);
    assert_eq!(read_all(&mut n, "a"), pattern(6, 20 * 512));
    assert_eq!(read_all(&mut n, "b"), pattern(2, 40 * 512));
    assert_eq!(n.rekey_volume("zz", &rnd()).unwrap_err(), DiskError::NoSuchVolume);
}

#[test]
fn volumes_open_together_and_handles_are_checked() {
    let mut n = two_volumes();
    let mut a = n.open_volume("a").unwrap();
    let mut b = n.open_volume("b").unwrap();
    assert_eq!(n.open_volume("a").unwrap_err(), DiskError::Busy);
    assert!(n.list().iter().all(|v| v.open));
    a.write(0, &[1; 512]).unwrap();
    b.write(0, &[2; 512]).unwrap();
    let mut buf = [0u8; 512];
    a.read(0, &mut buf).unwrap();
    assert_eq!(buf, [1; 512]);
    assert_eq!(a.name(), "a");
    assert_eq!(a.capacity_sectors(), 20);
    assert_eq!(a.read(20, &mut buf).unwrap_err(), DiskError::OutOfRange { sector: 20, len: 512 });
    assert_eq!(a.read(u64::MAX, &mut buf).unwrap_err(), DiskError::OutOfRange { sector: u64::MAX, len: 512 });
    assert_eq!(a.read(0, &mut buf[..100]).unwrap_err(), DiskError::BadLength { len: 100 });
    assert_eq!(a.write(19, &[0; 1024]).unwrap_err(), DiskError::OutOfRange { sector: 19, len: 1024 });
    a.read(0, &mut []).unwrap();
    // Deleting an open volume revokes its handle.
    n.delete_volume("a").unwrap();
    assert_eq!(a.read(0, &mut buf).unwrap_err(), DiskError::NoSuchVolume);
    assert_eq!(a.flush().unwrap_err(), DiskError::NoSuchVolume);
    drop(a);
    assert_eq!(n.into_device().unwrap_err(), DiskError::Busy);
    drop(b);
}

#[test]
fn create_delete_and_space() {
    let mut n = fresh();
    assert_eq!(n.create_volume("", LeaseId(1), 8, &rnd()).unwrap_err(), DiskError::BadName);
    assert_eq!(n.create_volume("a/b", LeaseId(1), 8, &rnd()).unwrap_err(), DiskError::BadName);
    assert_eq!(n.create_volume("a", LeaseId(1), 0, &rnd()).unwrap_err(), DiskError::BadSize { sectors: 0 });
    assert_eq!(
        n.create_volume("a", LeaseId(1), u64::MAX, &rnd()).unwrap_err(),
        DiskError::BadSize { sectors: u64::MAX }
    );
    let free = n.free_blocks();
    assert!(matches!(n.create_volume("a", LeaseId(1), 8 * 100, &rnd()), Err(DiskError::NoSpace { .. })));
    n.create_volume("a", LeaseId(1), 8 * 40, &rnd()).unwrap(); // 2 + 1 + 80 = 83 blocks
    assert_eq!(n.create_volume("a", LeaseId(1), 8, &rnd()).unwrap_err(), DiskError::VolumeExists);
    n.create_volume("b", LeaseId(1), 8 * 40, &rnd()).unwrap();
    assert_eq!(n.free_blocks(), free - 166);
    assert!(matches!(n.create_volume("c", LeaseId(1), 8 * 10, &rnd()), Err(DiskError::NoSpace { .. })));
    write(&mut n, "a", 0, &pattern(7, 4096));
    let a = n.table.find("a").unwrap().clone();
    n.delete_volume("a").unwrap();
    assert_eq!(n.delete_volume("a").unwrap_err(), DiskError::NoSuchVolume);
    assert_eq!(n.open_volume("a").unwrap_err(), DiskError::NoSuchVolume);
    // The deleted volume's wrapped key is gone: not even K_L opens it.
    let key = DiskKey::derive(&n.landlord, &[], a.id).unwrap();
    assert!(Volume::open(n.root.sub(a.start_block, a.blocks).unwrap(), key, 0).is_err());
    // First fit reuses the hole, and the new volume is empty.
    n.create_volume("c", LeaseId(1), 8 * 10, &rnd()).unwrap();
    assert_eq!(n.table.find("c").unwrap().start_block, a.start_block);
    assert!(read_all(&mut n, "c").iter().all(|&x| x == 0));
    let n = reboot(n);
    let names: Vec<String> = n.list().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["c", "b"]);
}

#[test]
fn table_and_key_store_fill_up() {
    let mut n = NodeDisk::format(MemDevice::new(22 + 256 * 5).unwrap(), seal(), &rnd()).unwrap();
    for i in 0..255 {
        n.create_volume(&format!("v{i}"), LeaseId(i), 1, &rnd()).unwrap();
    }
    assert_eq!(n.create_volume("x", LeaseId(0), 1, &rnd()).unwrap_err(), DiskError::TableFull { what: "volume table" });
    for i in 0..100 {
        n.set_tenant_key(LeaseId(1000 + i), &rnd()).unwrap();
    }
    assert_eq!(n.set_tenant_key(LeaseId(5000), &rnd()).unwrap_err(), DiskError::TableFull { what: "key store" });
    let n = reboot(n);
    assert_eq!(n.list().len(), 255);
    assert_eq!(n.tenant_epoch(LeaseId(1099)), 1);
}

/// Runs `op` on a copy of `base` with a power cut after every possible
/// number of writes (torn at several offsets), then reopens: the state must
/// be `old` or `new`, and a discarded landlord key must not survive a
/// reopen in the new state.
fn crash_everywhere(base: &MemDevice, op: &dyn Fn(&mut Node) -> Result<(), DiskError>) {
    let mut n = NodeDisk::open(base.clone(), seal(), &rnd()).unwrap();
    let old = state(&mut n);
    let old_kl = n.store.landlord.to_bytes();
    let start = n.device().lock().writes();
    op(&mut n).unwrap();
    let total = n.device().lock().writes() - start;
    let new = state(&mut n);
    assert_ne!(old, new);
    let new_kl = n.store.landlord.to_bytes();
    let (mut saw_old, mut saw_new) = (false, false);
    for k in 0..total {
        for torn in [0, 512, 2048, 3584, 4096] {
            let mut n = NodeDisk::open(base.clone(), seal(), &rnd()).unwrap();
            n.device().lock().crash_after(k, torn);
            assert!(op(&mut n).is_err(), "crash point {k} not hit");
            let mut dev = n.into_device().unwrap();
            dev.power_on();
            let mut n =
                NodeDisk::open(dev, seal(), &rnd()).unwrap_or_else(|e| panic!("open after crash {k}/{torn}: {e}"));
            let s = state(&mut n);
            if s == old {
                saw_old = true;
            } else if s == new {
                saw_new = true;
            } else {
                panic!("crash {k}/{torn}: neither old nor new state: {:?}", s.keys().collect::<Vec<_>>());
            }
            if n.store.landlord.to_bytes() == new_kl && old_kl != new_kl {
                let dev = n.into_device().unwrap();
                assert!(!contains(dev.image(), &old_kl), "old K_L survives crash {k}/{torn}");
            }
        }
    }
    assert!(saw_old && saw_new, "old {saw_old} new {saw_new} total {total}");
}

fn base() -> MemDevice {
    let mut n = two_volumes();
    n.set_tenant_key(LeaseId(2), &rnd()).unwrap();
    write(&mut n, "b", 0, &pattern(8, 40 * 512));
    n.into_device().unwrap()
}

#[test]
fn crash_during_create_or_delete_leaves_old_or_new() {
    let base = base();
    crash_everywhere(&base, &|n| n.create_volume("c", LeaseId(2), 30, &[7; RANDOM_LEN]));
    let secret = VolumeSecret::new([0x99; 16], &[5; 32], 1, 30);
    crash_everywhere(&base, &|n| n.create_replica_volume("r", LeaseId(2), &secret, &[7; RANDOM_LEN]));
    crash_everywhere(&base, &|n| n.delete_volume("a"));
}

#[test]
fn crash_during_key_changes_leaves_old_or_new() {
    let base = base();
    crash_everywhere(&base, &|n| n.rotate_landlord_key(&[7; RANDOM_LEN]));
    crash_everywhere(&base, &|n| n.regenerate_tenant_key(LeaseId(2), &[7; RANDOM_LEN]));
    crash_everywhere(&base, &|n| n.set_tenant_key(LeaseId(1), &[7; RANDOM_LEN]));
}

#[test]
fn crash_during_rekey_keeps_data() {
    let base = base();
    let mut n = NodeDisk::open(base.clone(), seal(), &rnd()).unwrap();
    let old = state(&mut n);
    let start = n.device().lock().writes();
    n.rekey_volume("b", &rnd()).unwrap();
    let total = n.device().lock().writes() - start;
    for k in 0..total {
        let mut n = NodeDisk::open(base.clone(), seal(), &rnd()).unwrap();
        n.device().lock().crash_after(k, 1024);
        assert!(n.rekey_volume("b", &rnd()).is_err());
        let mut dev = n.into_device().unwrap();
        dev.power_on();
        let mut n = NodeDisk::open(dev, seal(), &rnd()).unwrap();
        assert_eq!(state(&mut n), old, "crash point {k}");
    }
}

#[test]
fn errors_display() {
    let all = [
        DiskError::WrongNode,
        DiskError::NotFormatted,
        DiskError::AlreadyFormatted,
        DiskError::Corrupt { what: "key store" },
        DiskError::DiskTooSmall { blocks: 3 },
        DiskError::NoSpace { needed_blocks: 9 },
        DiskError::TableFull { what: "volume table" },
        DiskError::NoSuchVolume,
        DiskError::VolumeExists,
        DiskError::Busy,
        DiskError::BadName,
        DiskError::BadSize { sectors: 0 },
        DiskError::NoTenantKey { lease: LeaseId(1) },
        DiskError::TenantKeyExists { lease: LeaseId(1) },
        DiskError::Integrity { volume: "v".into(), sector: 8 },
        DiskError::OutOfRange { sector: 1, len: 512 },
        DiskError::BadLength { len: 3 },
        DiskError::Exhausted { what: "x" },
        DiskError::Io(crate::DeviceError::Io),
        DiskError::Crypto,
    ];
    for e in all {
        assert!(!format!("{e}").is_empty());
    }
    assert!(!format!("{:?}", seal()).contains("94"));
}
