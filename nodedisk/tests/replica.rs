//! Replication of a volume's ciphertext to a partner node: node A (the
//! primary) and node B (another seal key, so other K_L and K_T) each on
//! their own memory disk; dirty batches from A applied on B make B's
//! replica read exactly what A's volume holds.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};

use nodedisk::{
    DiskError, LeaseId, MemDevice, NodeDisk, SealKey, VolumeSecret, BLOCK_SIZE, RANDOM_LEN, SECTOR_SIZE,
    VOLUME_SECRET_LEN,
};
use proptest::prelude::*;

type Node = NodeDisk<MemDevice>;

const BLOCKS: u64 = 900;
/// 138 blocks of 4 KiB: two record blocks, 276 data-slot blocks.
const SECTORS: u64 = 1100;

fn rnd() -> [u8; RANDOM_LEN] {
    static N: AtomicU32 = AtomicU32::new(1);
    let mut r = [0x6b; RANDOM_LEN];
    r[..4].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    r
}

/// A node with its own seal key, and a tenant key for lease 1.
fn node(seal: u8) -> Node {
    let mut n = NodeDisk::format(MemDevice::new(BLOCKS).unwrap(), SealKey::from_bytes([seal; 32]), &rnd()).unwrap();
    n.set_tenant_key(LeaseId(1), &rnd()).unwrap();
    n
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

fn read_all(n: &mut Node, name: &str) -> Vec<u8> {
    let mut h = n.open_volume(name).unwrap();
    let mut buf = vec![0u8; (h.capacity_sectors() as usize) * SECTOR_SIZE];
    h.read(0, &mut buf).unwrap();
    buf
}

/// Applies one batch: reads each run on A, writes it on B, in batch order.
fn apply(a: &mut Node, va: &str, b: &mut Node, vb: &str, blocks: &nodedisk::DirtyBatch) {
    for (first, count) in blocks.runs() {
        let mut buf = vec![0u8; count as usize * BLOCK_SIZE];
        a.read_replica_blocks(va, first, &mut buf).unwrap();
        b.write_replica_blocks(vb, first, &buf).unwrap();
    }
}

/// Drains A's dirty blocks onto B in batches of `max`; returns the batch count.
fn drain(a: &mut Node, va: &str, b: &mut Node, vb: &str, max: usize) -> usize {
    let mut batches = 0;
    loop {
        let batch = a.take_dirty(va, max).unwrap();
        apply(a, va, b, vb, &batch);
        batches += 1;
        if batch.remaining == 0 {
            return batches;
        }
    }
}

/// A with volume "vm" (lease 1) holding patterns, tracking on; B with its
/// replica "vm-r" (lease 1 on B: B's own K_T).
fn pair() -> (Node, Node) {
    let mut a = node(0xA1);
    let mut b = node(0xB2);
    a.create_volume("vm", LeaseId(1), SECTORS, &rnd()).unwrap();
    {
        let mut h = a.open_volume("vm").unwrap();
        h.write(0, &pattern(1, 300 * SECTOR_SIZE)).unwrap();
        h.write(517, &pattern(2, 3 * SECTOR_SIZE)).unwrap(); // partial 4 KiB blocks
        h.write(SECTORS - 8, &pattern(3, 8 * SECTOR_SIZE)).unwrap();
        h.flush().unwrap();
    }
    a.track_dirty("vm", true).unwrap();
    let wire = a.export_volume_secret("vm").unwrap().to_bytes();
    let secret = VolumeSecret::from_bytes(&wire).unwrap();
    b.create_replica_volume("vm-r", LeaseId(1), &secret, &rnd()).unwrap();
    (a, b)
}

#[test]
fn replica_reads_exactly_what_the_primary_wrote() {
    let (mut a, mut b) = pair();
    assert_ne!(a.node_id(), b.node_id());
    assert_eq!(a.replica_blocks("vm").unwrap(), 2 + 2 * 138);
    assert_eq!(b.replica_blocks("vm-r").unwrap(), a.replica_blocks("vm").unwrap());
    // A fresh replica is empty.
    assert_eq!(read_all(&mut b, "vm-r"), vec![0u8; SECTORS as usize * SECTOR_SIZE]);

    // Full copy in small batches, while A's volume is open and written
    // between drains.
    let mut h = a.open_volume("vm").unwrap();
    assert!(drain(&mut a, "vm", &mut b, "vm-r", 37) > 5);
    h.write(40, &pattern(4, 100 * SECTOR_SIZE)).unwrap();
    h.write(1003, &pattern(5, SECTOR_SIZE)).unwrap();
    let batch = a.take_dirty("vm", usize::MAX).unwrap();
    // Only what those writes touched: the data slots of 13 + 1 blocks and
    // the record block (blocks 5..=17 and 125 all have theirs in block 0).
    assert_eq!(batch.blocks.len(), 13 + 1 + 1);
    assert_eq!(batch.blocks.last(), Some(&0));
    assert_eq!(batch.remaining, 0);
    apply(&mut a, "vm", &mut b, "vm-r", &batch);
    drop(h);

    let want = read_all(&mut a, "vm");
    assert_eq!(read_all(&mut b, "vm-r"), want);

    // The replica is read-only, and refuses raw writes while open.
    let mut hb = b.open_volume("vm-r").unwrap();
    assert_eq!(hb.write(0, &[0u8; SECTOR_SIZE]), Err(DiskError::ReadOnlyReplica { volume: "vm-r".into() }));
    assert_eq!(b.write_replica_blocks("vm-r", 0, &[0u8; BLOCK_SIZE]), Err(DiskError::Busy));
    drop(hb);
    // Raw writes never go into a primary.
    assert_eq!(a.write_replica_blocks("vm", 0, &[0u8; BLOCK_SIZE]), Err(DiskError::NotReplica { volume: "vm".into() }));
    // The same volume id twice on one node is refused, naming the holder.
    let secret = a.export_volume_secret("vm").unwrap();
    match b.create_replica_volume("vm-r2", LeaseId(1), &secret, &rnd()) {
        Err(DiskError::VolumeIdExists { id, volume }) => {
            assert_eq!((id, volume.as_str()), (secret.volume_id, "vm-r"));
        }
        other => panic!("{other:?}"),
    }
    assert!(format!("{secret:?}").contains("volume_id") && !format!("{secret:?}").contains("key:"));

    // B survives a reboot as a replica.
    let dev = b.into_device().unwrap();
    let mut b = NodeDisk::open(dev, SealKey::from_bytes([0xB2; 32]), &rnd()).unwrap();
    assert_eq!(read_all(&mut b, "vm-r"), want);

    // Promotion: B re-keys the replica; it keeps the data and is writable.
    b.rekey_volume("vm-r", &rnd()).unwrap();
    assert_eq!(read_all(&mut b, "vm-r"), want);
    let mut hb = b.open_volume("vm-r").unwrap();
    hb.write(0, &pattern(9, SECTOR_SIZE)).unwrap();
    drop(hb);
    assert_eq!(
        b.write_replica_blocks("vm-r", 0, &[0u8; BLOCK_SIZE]),
        Err(DiskError::NotReplica { volume: "vm-r".into() })
    );
}

#[test]
fn wrong_secret_reads_as_integrity_errors() {
    let (mut a, _) = pair();
    let good = a.export_volume_secret("vm").unwrap();
    let mut c = node(0xC3);
    let wrong_key = VolumeSecret::new(good.volume_id, &[0x42; 32], good.key_epoch, good.sectors);
    c.create_replica_volume("k", LeaseId(1), &wrong_key, &rnd()).unwrap();
    let wrong_epoch = VolumeSecret::new(good.volume_id.map(|x| !x), good.key(), good.key_epoch + 1, good.sectors);
    c.create_replica_volume("e", LeaseId(1), &wrong_epoch, &rnd()).unwrap();
    let wrong_id = VolumeSecret::new(good.volume_id.map(|x| x ^ 1), good.key(), good.key_epoch, good.sectors);
    c.create_replica_volume("i", LeaseId(1), &wrong_id, &rnd()).unwrap();
    for name in ["k", "e", "i"] {
        a.mark_dirty_all("vm").unwrap();
        drain(&mut a, "vm", &mut c, name, 1000);
        let mut h = c.open_volume(name).unwrap();
        let mut buf = vec![0u8; BLOCK_SIZE];
        // Every block A wrote: an integrity error, never data.
        for block in (0..38).chain([64, 136]) {
            match h.read(block * 8, &mut buf) {
                Err(DiskError::Integrity { volume, sector }) => {
                    assert_eq!((volume.as_str(), sector), (name, block * 8))
                }
                other => panic!("{name}: block {block}: {other:?}"),
            }
        }
        // Blocks A never wrote read as zeros there too.
        h.read(50 * 8, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; BLOCK_SIZE]);
    }
}

#[test]
fn replica_requests_are_checked_and_bad_ones_change_nothing() {
    let (mut a, mut b) = pair();
    let limit = b.replica_blocks("vm-r").unwrap();
    let before = b.device().lock().image().to_vec();
    let two = vec![0x77u8; 2 * BLOCK_SIZE];
    assert_eq!(
        b.write_replica_blocks("vm-r", limit - 1, &two),
        Err(DiskError::ReplicaRange { first: limit - 1, blocks: 2, limit })
    );
    assert_eq!(
        b.write_replica_blocks("vm-r", u64::MAX, &two),
        Err(DiskError::ReplicaRange { first: u64::MAX, blocks: 2, limit })
    );
    assert_eq!(b.write_replica_blocks("vm-r", 0, &two[..100]), Err(DiskError::BadBlockLength { len: 100 }));
    assert_eq!(b.write_replica_blocks("nope", 0, &two), Err(DiskError::NoSuchVolume));
    assert_eq!(b.device().lock().image(), &before[..]);
    let e = b.write_replica_blocks("vm-r", limit, &two).unwrap_err();
    assert!(e.to_string().contains(&format!("{limit} replicable blocks")), "{e}");
    // An empty write at the end is a no-op; the last block is writable.
    b.write_replica_blocks("vm-r", limit, &[]).unwrap();
    b.write_replica_blocks("vm-r", limit - 1, &two[..BLOCK_SIZE]).unwrap();

    let mut buf = vec![0u8; 2 * BLOCK_SIZE];
    assert_eq!(
        a.read_replica_blocks("vm", limit - 1, &mut buf),
        Err(DiskError::ReplicaRange { first: limit - 1, blocks: 2, limit })
    );
    assert_eq!(a.read_replica_blocks("vm", 0, &mut buf[..1]), Err(DiskError::BadBlockLength { len: 1 }));

    // Dirty tracking: errors, ordering, put-back.
    assert_eq!(b.take_dirty("vm-r", 1), Err(DiskError::NotTracked { volume: "vm-r".into() }));
    assert_eq!(a.mark_dirty("vm", &[1, limit]), Err(DiskError::ReplicaRange { first: limit, blocks: 1, limit }));
    assert!(a.is_tracking_dirty("vm"));
    assert_eq!(a.dirty_count("vm").unwrap(), limit);
    let batch = a.take_dirty("vm", usize::MAX).unwrap();
    assert_eq!(batch.remaining, 0);
    assert_eq!(batch.blocks.len() as u64, limit);
    // Data slots (2..) ascending, then the two record blocks.
    assert_eq!(&batch.blocks[..3], &[2, 3, 4]);
    assert_eq!(&batch.blocks[batch.blocks.len() - 2..], &[0, 1]);
    assert_eq!(batch.runs(), vec![(2, limit - 2), (0, 2)]);
    a.mark_dirty("vm", &[0, 7, 7, 100]).unwrap();
    let batch = a.take_dirty("vm", 2).unwrap();
    assert_eq!((batch.blocks, batch.remaining), (vec![7, 100], 1));
    let batch = a.take_dirty("vm", 2).unwrap();
    assert_eq!((batch.blocks, batch.remaining), (vec![0], 0));
    assert_eq!(a.take_dirty("vm", 5).unwrap(), nodedisk::DirtyBatch::default());
    // Writes through a handle mark their data slot and record block only.
    let mut h = a.open_volume("vm").unwrap();
    h.write(8, &pattern(7, 8 * SECTOR_SIZE)).unwrap();
    let batch = a.take_dirty("vm", 10).unwrap();
    assert_eq!(batch.blocks.len(), 2);
    assert!(batch.blocks[0] == 2 + 2 || batch.blocks[0] == 2 + 3, "{batch:?}");
    assert_eq!(batch.blocks[1], 0);
    // Off: writes are no longer tracked; on again: everything dirty.
    a.track_dirty("vm", false).unwrap();
    h.write(8, &pattern(8, 8 * SECTOR_SIZE)).unwrap();
    assert_eq!(a.take_dirty("vm", 1), Err(DiskError::NotTracked { volume: "vm".into() }));
    a.track_dirty("vm", true).unwrap();
    a.track_dirty("vm", true).unwrap();
    assert_eq!(a.dirty_count("vm").unwrap(), limit);
    drop(h);
    // A re-key rewrites everything: all dirty again (and a new secret).
    a.take_dirty("vm", usize::MAX).unwrap();
    let old = a.export_volume_secret("vm").unwrap();
    a.rekey_volume("vm", &rnd()).unwrap();
    assert_eq!(a.dirty_count("vm").unwrap(), limit);
    let new = a.export_volume_secret("vm").unwrap();
    assert_ne!(old.key(), new.key());
    assert_eq!(old.key_epoch + 1, new.key_epoch);
    // A delete drops the map.
    a.delete_volume("vm").unwrap();
    assert_eq!(a.take_dirty("vm", 1), Err(DiskError::NoSuchVolume));
}

/// A sector written twice within one round: mid-drain the partner's copy
/// of it is an integrity error (its old record with the newest data in
/// that slot), never wrong data; the drain's end repairs it.
#[test]
fn sector_written_twice_in_a_round_is_an_integrity_error_until_drained() {
    let (mut a, mut b) = pair();
    drain(&mut a, "vm", &mut b, "vm-r", 1000);
    let mut h = a.open_volume("vm").unwrap();
    h.write(24, &pattern(20, 8 * SECTOR_SIZE)).unwrap();
    h.write(24, &pattern(21, 8 * SECTOR_SIZE)).unwrap();
    drop(h);
    let old = pattern(1, 300 * SECTOR_SIZE)[24 * SECTOR_SIZE..32 * SECTOR_SIZE].to_vec();
    let mut seen = Vec::new();
    loop {
        let batch = a.take_dirty("vm", 1).unwrap();
        apply(&mut a, "vm", &mut b, "vm-r", &batch);
        let mut hb = b.open_volume("vm-r").unwrap();
        let mut buf = vec![0u8; BLOCK_SIZE];
        seen.push(match hb.read(24, &mut buf) {
            Ok(()) if buf == old => "old",
            Ok(()) if buf == pattern(21, BLOCK_SIZE) => "new",
            Err(DiskError::Integrity { sector: 24, .. }) => "integrity",
            other => panic!("{other:?}"),
        });
        if batch.remaining == 0 {
            break;
        }
    }
    // Slot 0 held version 1 (B's record names it); version 20 went to slot
    // 1, version 21 back to slot 0. Batch 1 is slot 0: B's old record now
    // meets version-21 data. Batch 2 is slot 1 (named by no record yet),
    // batch 3 the record block.
    assert_eq!(seen, ["integrity", "integrity", "new"]);
}

#[test]
fn secret_bytes_are_strict() {
    let s = VolumeSecret::new([1; 16], &[2; 32], 3, 1100);
    let b = s.to_bytes();
    assert_eq!(b.len(), VOLUME_SECRET_LEN);
    let t = VolumeSecret::from_bytes(&b).unwrap();
    assert_eq!((t.volume_id, *t.key(), t.key_epoch, t.sectors), ([1; 16], [2; 32], 3, 1100));
    assert_eq!(VolumeSecret::from_bytes(&b[..59]).unwrap_err(), DiskError::BadLength { len: 59 });
    let mut long = b.to_vec();
    long.push(0);
    assert_eq!(VolumeSecret::from_bytes(&long).unwrap_err(), DiskError::BadLength { len: 61 });
    let mut zero = b;
    zero[52..].fill(0);
    assert_eq!(VolumeSecret::from_bytes(&zero).unwrap_err(), DiskError::BadSize { sectors: 0 });
}

#[derive(Clone, Debug)]
enum Op {
    /// A writes `count` sectors of `byte` at `sector`.
    Write { sector: u64, count: u64, byte: u8 },
    /// Up to `batches` batches of `max` blocks are applied on B.
    Drain { max: usize, batches: usize },
    /// A batch of `max` is taken, A writes, then the batch is read and applied.
    Racing { max: usize, sector: u64, byte: u8 },
    /// A batch is taken and its delivery fails: put back.
    Lost { max: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let sector = 0..SECTORS;
    prop_oneof![
        5 => (sector.clone(), 1..40u64, any::<u8>()).prop_map(|(sector, count, byte)| Op::Write { sector, count, byte }),
        3 => (1..60usize, 1..4usize).prop_map(|(max, batches)| Op::Drain { max, batches }),
        2 => (1..60usize, sector, any::<u8>()).prop_map(|(max, sector, byte)| Op::Racing { max, sector, byte }),
        1 => (1..60usize).prop_map(|max| Op::Lost { max }),
    ]
}

/// B's replica mid-drain: each 4 KiB block reads as a version A's block
/// once had (or zeros), or is an integrity error; never anything else.
fn never_wrong(b: &mut Node, history: &BTreeMap<u64, BTreeSet<Vec<u8>>>) {
    let mut h = b.open_volume("vm-r").unwrap();
    for block in 0..SECTORS.div_ceil(8) {
        // The last block is half in the volume.
        let mut buf = vec![0u8; (SECTORS - block * 8).min(8) as usize * SECTOR_SIZE];
        match h.read(block * 8, &mut buf) {
            Ok(()) => assert!(
                buf.iter().all(|&x| x == 0) || history.get(&block).is_some_and(|v| v.contains(&buf)),
                "block {block} reads data A never had"
            ),
            Err(DiskError::Integrity { sector, .. }) => assert_eq!(sector, block * 8),
            Err(e) => panic!("{e:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random writes interleaved with partial, racing and lost drains, then
    /// a full drain: B's replica equals A's volume. In between, B never
    /// reads data A did not write there.
    #[test]
    fn drains_end_equal(ops in prop::collection::vec(op(), 1..24)) {
        let (mut a, mut b) = pair();
        let mut model = read_all(&mut a, "vm");
        let mut history: BTreeMap<u64, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (block, chunk) in (0u64..).zip(model.chunks(BLOCK_SIZE)) {
            history.entry(block).or_default().insert(chunk.to_vec());
        }
        let write = |a: &mut Node, model: &mut Vec<u8>, history: &mut BTreeMap<u64, BTreeSet<Vec<u8>>>, sector: u64, count: u64, byte: u8| {
            let count = count.min(SECTORS - sector);
            let data = vec![byte; count as usize * SECTOR_SIZE];
            let mut h = a.open_volume("vm").unwrap();
            h.write(sector, &data).unwrap();
            let at = sector as usize * SECTOR_SIZE;
            model[at..at + data.len()].copy_from_slice(&data);
            for block in sector / 8..(sector + count).div_ceil(8) {
                let at = block as usize * BLOCK_SIZE;
                let end = (at + BLOCK_SIZE).min(model.len());
                history.entry(block).or_default().insert(model[at..end].to_vec());
            }
        };
        for op in ops {
            match op {
                Op::Write { sector, count, byte } => write(&mut a, &mut model, &mut history, sector, count, byte),
                Op::Drain { max, batches } => {
                    for _ in 0..batches {
                        let batch = a.take_dirty("vm", max).unwrap();
                        apply(&mut a, "vm", &mut b, "vm-r", &batch);
                    }
                    never_wrong(&mut b, &history);
                }
                Op::Racing { max, sector, byte } => {
                    let batch = a.take_dirty("vm", max).unwrap();
                    write(&mut a, &mut model, &mut history, sector, 9, byte);
                    apply(&mut a, "vm", &mut b, "vm-r", &batch);
                    never_wrong(&mut b, &history);
                }
                Op::Lost { max } => {
                    let batch = a.take_dirty("vm", max).unwrap();
                    a.mark_dirty("vm", &batch.blocks).unwrap();
                }
            }
        }
        drain(&mut a, "vm", &mut b, "vm-r", 50);
        prop_assert_eq!(read_all(&mut a, "vm"), model.clone());
        prop_assert!(read_all(&mut b, "vm-r") == model, "replica differs after the full drain");
    }
}
