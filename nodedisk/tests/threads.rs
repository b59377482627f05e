//! The node disk from several threads (as from several CPUs): the types
//! are `Send`, volumes of one node do I/O concurrently with each other and
//! with the node, and a volume still opens only once.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use nodedisk::{DiskError, LeaseId, MemDevice, NodeDisk, SealKey, SharedDevice, VolumeHandle, RANDOM_LEN, SECTOR_SIZE};

const SEAL: [u8; 32] = [0x7c; 32];
const BLOCKS: u64 = 400;
const SECTORS: u64 = 64;

fn assert_send<T: Send>() {}
fn assert_send_sync<T: Send + Sync>() {}

/// Compile-time: what the hypervisor hands to other CPUs is `Send`.
#[test]
fn types_are_send() {
    assert_send::<NodeDisk<MemDevice>>();
    assert_send_sync::<VolumeHandle<MemDevice>>();
    assert_send_sync::<SharedDevice<MemDevice>>();
}

/// Distinct random bytes per call (shared by all threads).
fn rnd() -> [u8; RANDOM_LEN] {
    static N: AtomicU32 = AtomicU32::new(1);
    let mut r = [0x3c; RANDOM_LEN];
    r[..4].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    r
}

fn node_with(names: &[&str]) -> NodeDisk<MemDevice> {
    let mut n = NodeDisk::format(MemDevice::new(BLOCKS).unwrap(), SealKey::from_bytes(SEAL), &rnd()).unwrap();
    for name in names {
        n.create_volume(name, LeaseId(1), SECTORS, &rnd()).unwrap();
    }
    n
}

/// `count` sectors of a pattern that differs per volume, round and sector.
fn pattern(seed: u8, round: u32, count: usize) -> Vec<u8> {
    (0..count * SECTOR_SIZE).map(|i| seed ^ (round as u8).wrapping_mul(13) ^ (i / 7) as u8).collect()
}

/// Writes and reads back runs of sectors (whole and partial 4 KiB blocks)
/// all over the volume, checking every read; returns the volume's final
/// contents.
fn hammer(mut h: VolumeHandle<MemDevice>, seed: u8) -> Vec<u8> {
    let mut model = vec![0u8; SECTORS as usize * SECTOR_SIZE];
    for round in 0..60u32 {
        let sector = u64::from(round * 7 % 50);
        let count = (round % 13 + 1) as usize;
        let data = pattern(seed, round, count);
        h.write(sector, &data).unwrap();
        let at = sector as usize * SECTOR_SIZE;
        model[at..at + data.len()].copy_from_slice(&data);
        let mut back = vec![0u8; data.len()];
        h.read(sector, &mut back).unwrap();
        assert_eq!(back, data, "volume {seed}: round {round}");
        if round % 10 == 9 {
            h.flush().unwrap();
        }
    }
    let mut all = vec![0u8; model.len()];
    h.read(0, &mut all).unwrap();
    assert_eq!(all, model, "volume {seed}: whole volume");
    all
}

fn read_all(n: &mut NodeDisk<MemDevice>, name: &str) -> Vec<u8> {
    let mut h = n.open_volume(name).unwrap();
    let mut buf = vec![0u8; SECTORS as usize * SECTOR_SIZE];
    h.read(0, &mut buf).unwrap();
    buf
}

#[test]
fn two_threads_use_two_volumes_while_the_node_works() {
    let mut n = node_with(&["a", "b"]);
    let a = n.open_volume("a").unwrap();
    let b = n.open_volume("b").unwrap();
    let (da, db) = thread::scope(|s| {
        let ta = s.spawn(move || hammer(a, 0x11));
        let tb = s.spawn(move || hammer(b, 0x22));
        // Meanwhile the node (this thread, as the boot CPU) changes the
        // table and re-keys an open volume under its handle's feet.
        n.create_volume("c", LeaseId(2), SECTORS, &rnd()).unwrap();
        n.rekey_volume("a", &rnd()).unwrap();
        n.delete_volume("c").unwrap();
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_ne!(da, db);
    assert!(n.list().iter().all(|v| !v.open));
    // What the threads wrote is on the disk, under each volume's key.
    let mut n = NodeDisk::open(n.into_device().unwrap(), SealKey::from_bytes(SEAL), &rnd()).unwrap();
    assert_eq!(read_all(&mut n, "a"), da);
    assert_eq!(read_all(&mut n, "b"), db);
}

#[test]
fn a_volume_open_on_another_thread_is_busy() {
    let mut n = node_with(&["a"]);
    let h = n.open_volume("a").unwrap();
    assert_eq!(n.open_volume("a").unwrap_err(), DiskError::Busy);
    // Moved to another thread (another CPU), the handle still holds the volume.
    let h = thread::spawn(move || {
        let mut h = h;
        h.write(0, &[9; SECTOR_SIZE]).unwrap();
        h
    })
    .join()
    .unwrap();
    assert_eq!(n.open_volume("a").unwrap_err(), DiskError::Busy);
    thread::spawn(move || drop(h)).join().unwrap();
    let mut h = n.open_volume("a").unwrap();
    let mut buf = [0u8; SECTOR_SIZE];
    h.read(0, &mut buf).unwrap();
    assert_eq!(buf, [9; SECTOR_SIZE]);
}
