#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use super::*;
use crate::device::MemDevice;
use crate::keys::{LandlordKey, TenantKey};
use alloc::vec;
use alloc::vec::Vec;

const V: VolumeId = VolumeId([0x11; 16]);

fn dkey(l: u8, t: Option<u8>) -> DiskKey {
    let ll = LandlordKey::from_bytes([l; 32]);
    match t {
        Some(t) => DiskKey::derive(&ll, &[&TenantKey::from_bytes([t; 32])], V).unwrap(),
        None => DiskKey::derive(&ll, &[], V).unwrap(),
    }
}

fn seed(b: u8) -> KeySeed {
    KeySeed::from_random([b; KeySeed::LEN])
}

fn pattern(s: u64, version: u8) -> Vec<u8> {
    (0..SECTOR_SIZE).map(|i| (i as u8) ^ (s as u8).wrapping_mul(31) ^ version.wrapping_mul(97) ^ 0x5A).collect()
}

fn new_volume(sectors: u64) -> Volume<MemDevice> {
    let blocks = Layout::new(sectors).unwrap().total_blocks;
    Volume::create(MemDevice::new(blocks).unwrap(), dkey(1, Some(2)), sectors, &seed(3)).unwrap()
}

fn read(v: &mut Volume<MemDevice>, s: u64) -> Result<Vec<u8>, VolumeError> {
    let mut b = vec![0u8; SECTOR_SIZE];
    v.read_sector(s, &mut b).map(|()| b)
}

fn record_offset(l: &Layout, s: u64) -> usize {
    let (b, i) = l.meta_pos(s);
    b as usize * BLOCK_SIZE + i * RECORD_LEN
}

fn record(v: &Volume<MemDevice>, s: u64) -> SectorRecord {
    let o = record_offset(v.layout(), s);
    SectorRecord::decode(&v.device().image()[o..o + RECORD_LEN]).unwrap()
}

fn integrity(sector: u64, reason: IntegrityReason) -> VolumeError {
    VolumeError::Integrity(IntegrityError { sector, reason })
}

#[test]
fn layout_sizes() {
    let l = Layout::new(1).unwrap();
    assert_eq!((l.meta_start, l.meta_blocks, l.data_start, l.total_blocks), (2, 1, 3, 5));
    let l = Layout::new(129).unwrap();
    assert_eq!((l.meta_blocks, l.total_blocks), (2, 4 + 258));
    assert_eq!(Layout::new(0), Err(VolumeError::BadSectorCount(0)));
    assert!(Layout::new(MAX_SECTOR + 1).is_ok());
    assert_eq!(Layout::new(MAX_SECTOR + 2), Err(VolumeError::BadSectorCount(MAX_SECTOR + 2)));
}

#[test]
fn write_read_roundtrip_and_no_plaintext_on_disk() {
    let mut v = new_volume(300);
    assert_eq!(read(&mut v, 5).unwrap(), vec![0; SECTOR_SIZE], "unwritten reads zeros");
    v.write_sector(5, &pattern(5, 1)).unwrap();
    let mut multi = Vec::new();
    for s in 120..140 {
        multi.extend(pattern(s, 1));
    }
    v.write_sectors(120, &multi).unwrap();
    v.flush().unwrap();
    assert_eq!(read(&mut v, 5).unwrap(), pattern(5, 1));
    let mut back = vec![0u8; multi.len()];
    v.read_sectors(120, &mut back).unwrap();
    assert_eq!(back, multi);
    // No plaintext sector appears anywhere in the image.
    let img = v.device().image();
    for s in [5u64, 120, 139] {
        let p = pattern(s, 1);
        assert!(!img.windows(64).any(|w| w == &p[..64]), "plaintext of sector {s} on disk");
    }
    // It survives a reopen.
    let dev = v.into_device();
    let mut v = Volume::open(dev, dkey(1, Some(2)), 0).unwrap();
    assert_eq!(read(&mut v, 5).unwrap(), pattern(5, 1));
    v.read_sectors(120, &mut back).unwrap();
    assert_eq!(back, multi);
}

#[test]
fn bad_requests_are_errors() {
    let mut v = new_volume(4);
    let mut b = vec![0u8; SECTOR_SIZE];
    assert_eq!(v.read_sector(4, &mut b), Err(VolumeError::OutOfRange { sector: 4, count: 1 }));
    assert_eq!(v.write_sector(u64::MAX, &b), Err(VolumeError::OutOfRange { sector: u64::MAX, count: 1 }));
    assert_eq!(v.write_sectors(3, &vec![0; 2 * SECTOR_SIZE]), Err(VolumeError::OutOfRange { sector: 3, count: 2 }));
    assert_eq!(v.read_sector(0, &mut b[..100]), Err(VolumeError::BadLength { len: 100 }));
    assert_eq!(v.write_sectors(0, &b[..4095]), Err(VolumeError::BadLength { len: 4095 }));
    v.write_sectors(0, &[]).unwrap();
    let small = MemDevice::new(4).unwrap();
    assert_eq!(
        Volume::create(small, dkey(1, None), 1, &seed(1)).unwrap_err(),
        VolumeError::DeviceTooSmall { needed: 5, have: 4 }
    );
}

#[test]
fn open_checks_keys_volume_and_rollback() {
    let v = new_volume(8);
    let gen = v.generation();
    let dev = v.into_device();
    assert_eq!(Volume::open(dev.clone(), dkey(1, None), 0).unwrap_err(), VolumeError::WrongKeyOrTampered);
    assert_eq!(Volume::open(dev.clone(), dkey(9, Some(2)), 0).unwrap_err(), VolumeError::WrongKeyOrTampered);
    let other = DiskKey::derive(&LandlordKey::from_bytes([1; 32]), &[], VolumeId([2; 16])).unwrap();
    assert_eq!(Volume::open(dev.clone(), other, 0).unwrap_err(), VolumeError::WrongVolume);
    assert_eq!(
        Volume::open(dev.clone(), dkey(1, Some(2)), gen + 1).unwrap_err(),
        VolumeError::RolledBack { found: gen, minimum: gen + 1 }
    );
    assert_eq!(
        Volume::open(MemDevice::new(8).unwrap(), dkey(1, None), 0).unwrap_err(),
        VolumeError::NoHeader(HeaderError::BadMagic)
    );
    let v = Volume::open(dev, dkey(1, Some(2)), gen).unwrap();
    assert_eq!(v.generation(), gen + 1);
    assert_eq!(v.header().key_links, 1);
}

#[test]
fn one_bad_header_copy_falls_back_to_the_other() {
    let mut v = new_volume(8);
    v.write_sector(1, &pattern(1, 1)).unwrap();
    let gen = v.generation();
    let mut dev = v.into_device();
    let newest = (gen & 1) as usize * BLOCK_SIZE;
    dev.image_mut()[newest + 40] ^= 1;
    let mut v = Volume::open(dev, dkey(1, Some(2)), 0).unwrap();
    assert_eq!(read(&mut v, 1).unwrap(), pattern(1, 1));
    let mut dev = v.into_device();
    dev.image_mut()[100] ^= 0x80;
    dev.image_mut()[BLOCK_SIZE + 100] ^= 0x80;
    assert_eq!(Volume::open(dev, dkey(1, Some(2)), 0).unwrap_err(), VolumeError::WrongKeyOrTampered);
}

#[test]
fn tampering_is_an_integrity_error_naming_the_sector() {
    let mut v = new_volume(8);
    for s in 0..4 {
        v.write_sector(s, &pattern(s, 1)).unwrap();
    }
    let l = *v.layout();
    let rec = record(&v, 2);
    let data_off = l.data_block(2, rec.slot()) as usize * BLOCK_SIZE;
    let rec_off = record_offset(&l, 2);
    let pristine = v.device().image().to_vec();
    let cases: Vec<(usize, u8, IntegrityReason)> = vec![
        (data_off + 1000, 0x04, IntegrityReason::TagMismatch),
        (rec_off, 0x01, IntegrityReason::TagMismatch),          // counter
        (rec_off + 8, FLAG_SLOT, IntegrityReason::TagMismatch), // slot
        (rec_off + 8, FLAG_EPOCH, IntegrityReason::UnknownKeyEpoch), // key epoch
        (rec_off + 8, 0x10, IntegrityReason::BadRecord(RecordError::UnknownFlags(0x10 | rec.flags))),
        (rec_off + 10, 0x01, IntegrityReason::BadRecord(RecordError::ReservedNotZero)),
        (rec_off + 31, 0x80, IntegrityReason::TagMismatch), // tag
    ];
    for (off, bit, reason) in cases {
        v.device_mut().image_mut().copy_from_slice(&pristine);
        v.device_mut().image_mut()[off] ^= bit;
        let mut b = vec![0xEEu8; SECTOR_SIZE];
        assert_eq!(v.read_sector(2, &mut b), Err(integrity(2, reason)), "offset {off} bit {bit:#x}");
        assert!(b.iter().all(|&x| x == 0 || x == 0xEE), "no unverified plaintext");
        // Neighbours are unaffected.
        assert_eq!(read(&mut v, 1).unwrap(), pattern(1, 1));
        assert_eq!(read(&mut v, 3).unwrap(), pattern(3, 1));
    }
    // A multi-sector read stops at the bad sector and names it.
    v.device_mut().image_mut().copy_from_slice(&pristine);
    v.device_mut().image_mut()[data_off] ^= 1;
    let mut b = vec![0u8; 4 * SECTOR_SIZE];
    assert_eq!(v.read_sectors(0, &mut b), Err(integrity(2, IntegrityReason::TagMismatch)));
    // A tampered sector can still be overwritten (the guest can repair it).
    v.write_sector(2, &pattern(2, 2)).unwrap();
    assert_eq!(read(&mut v, 2).unwrap(), pattern(2, 2));
}

#[test]
fn misplaced_and_rolled_back_sectors() {
    let mut v = new_volume(8);
    v.write_sector(1, &pattern(1, 1)).unwrap();
    v.write_sector(2, &pattern(2, 1)).unwrap();
    let l = *v.layout();
    // Copy sector 1 (record and data) over sector 2: detected.
    let (r1, r2) = (record_offset(&l, 1), record_offset(&l, 2));
    let s1 = l.data_block(1, record(&v, 1).slot()) as usize * BLOCK_SIZE;
    let s2 = l.data_block(2, record(&v, 2).slot()) as usize * BLOCK_SIZE;
    let snapshot = v.device().image().to_vec();
    let img = v.device_mut().image_mut();
    img.copy_within(r1..r1 + RECORD_LEN, r2);
    img.copy_within(s1..s1 + BLOCK_SIZE, s2);
    assert_eq!(read(&mut v, 2), Err(integrity(2, IntegrityReason::TagMismatch)));
    // Rolling one sector back to an older version (record + data together)
    // is NOT detected: that needs a hash tree (see README).
    v.device_mut().image_mut().copy_from_slice(&snapshot);
    let old_rec = v.device().image()[r2..r2 + RECORD_LEN].to_vec();
    v.write_sector(2, &pattern(2, 2)).unwrap();
    v.device_mut().image_mut()[r2..r2 + RECORD_LEN].copy_from_slice(&old_rec);
    assert_eq!(read(&mut v, 2).unwrap(), pattern(2, 1));
    // ... but the next write still uses a fresh counter (no nonce reuse in
    // this mount, because the floor and the rolled-back counter are below it).
    let before = record(&v, 2).counter;
    v.write_sector(2, &pattern(2, 3)).unwrap();
    assert!(record(&v, 2).counter > before);
}

#[test]
fn counters_strictly_increase_across_writes_and_mounts() {
    let mut v = new_volume(4);
    let mut last = 0;
    for round in 0..3 {
        for i in 0..5 {
            v.write_sector(1, &pattern(1, i)).unwrap();
            let c = record(&v, 1).counter;
            assert!(c > last, "round {round}: {c} after {last}");
            last = c;
        }
        let dev = v.into_device();
        v = Volume::open(dev, dkey(1, Some(2)), 0).unwrap();
        assert_eq!(read(&mut v, 1).unwrap(), pattern(1, 4));
    }
    // A record rolled back while the volume was closed cannot bring a used
    // counter back: the mount floor is above every earlier counter.
    let l = *v.layout();
    let r = record_offset(&l, 1);
    let old = v.device().image()[r..r + RECORD_LEN].to_vec();
    v.write_sector(1, &pattern(1, 9)).unwrap();
    let used = record(&v, 1).counter;
    let mut dev = v.into_device();
    dev.image_mut()[r..r + RECORD_LEN].copy_from_slice(&old);
    let mut v = Volume::open(dev, dkey(1, Some(2)), 0).unwrap();
    v.write_sector(1, &pattern(1, 10)).unwrap();
    assert!(record(&v, 1).counter > used);
}

#[test]
fn crypto_erase_discards_old_data() {
    let mut v = new_volume(8);
    v.write_sector(3, &pattern(3, 1)).unwrap();
    let epoch = v.key_epoch();
    // A new tenant key: new disk key, fresh volume key.
    v.crypto_erase(dkey(1, Some(7)), &seed(4)).unwrap();
    assert_eq!(v.key_epoch(), epoch + 1);
    assert_eq!(read(&mut v, 3).unwrap(), vec![0; SECTOR_SIZE]);
    v.write_sector(4, &pattern(4, 1)).unwrap();
    let dev = v.into_device();
    // The old keys open nothing: no header copy keeps the old wrapped key.
    assert_eq!(Volume::open(dev.clone(), dkey(1, Some(2)), 0).unwrap_err(), VolumeError::WrongKeyOrTampered);
    let mut v = Volume::open(dev, dkey(1, Some(7)), 0).unwrap();
    assert_eq!(read(&mut v, 3).unwrap(), vec![0; SECTOR_SIZE]);
    assert_eq!(read(&mut v, 4).unwrap(), pattern(4, 1));
    assert_eq!(v.crypto_erase(dkey(1, None).clone(), &seed(5)), Ok(()));
    let other = DiskKey::derive(&LandlordKey::from_bytes([1; 32]), &[], VolumeId([3; 16])).unwrap();
    assert_eq!(v.crypto_erase(other, &seed(6)), Err(VolumeError::WrongVolume));
}

#[test]
fn rekey_keeps_data_under_new_keys() {
    let mut v = new_volume(200);
    for s in [0u64, 1, 130, 199] {
        v.write_sector(s, &pattern(s, 1)).unwrap();
    }
    let old_ct = v.device().image().to_vec();
    // Landlord-only volume gets a tenant key: re-encrypt, keep data.
    let report = v.rekey(dkey(1, Some(8)), &seed(9)).unwrap();
    assert_eq!(report, RekeyReport { reencrypted: 4, unreadable: 0 });
    assert_eq!(v.key_epoch(), 1);
    assert_eq!(v.header().state, VolumeState::Active);
    for s in [0u64, 1, 130, 199] {
        assert_eq!(read(&mut v, s).unwrap(), pattern(s, 1));
    }
    assert_eq!(read(&mut v, 2).unwrap(), vec![0; SECTOR_SIZE]);
    assert_ne!(v.device().image(), &old_ct[..]);
    let dev = v.into_device();
    assert_eq!(Volume::open(dev.clone(), dkey(1, Some(2)), 0).unwrap_err(), VolumeError::WrongKeyOrTampered);
    let mut v = Volume::open(dev, dkey(1, Some(8)), 0).unwrap();
    assert_eq!(read(&mut v, 130).unwrap(), pattern(130, 1));
    // A second re-key (epoch parity wraps back) with a tampered sector.
    let l = *v.layout();
    let off = l.data_block(1, record(&v, 1).slot()) as usize * BLOCK_SIZE;
    v.device_mut().image_mut()[off] ^= 1;
    let report = v.rekey(dkey(1, Some(8)), &seed(10)).unwrap();
    assert_eq!(report, RekeyReport { reencrypted: 3, unreadable: 1 });
    assert!(matches!(read(&mut v, 1), Err(VolumeError::Integrity(IntegrityError { sector: 1, .. }))));
    assert_eq!(read(&mut v, 199).unwrap(), pattern(199, 1));
}

/// Writes `versions` over sectors, crashing at every write index and tear
/// point, then checks every sector is wholly old or wholly new.
#[test]
fn torn_writes_leave_each_sector_old_or_new() {
    let sectors = 130u64; // two metadata blocks, so a multi-write spans both
    let base = {
        let mut v = new_volume(sectors);
        for s in 0..sectors {
            v.write_sector(s, &pattern(s, 1)).unwrap();
        }
        v.into_device()
    };
    let first = 120u64;
    let count = 10u64;
    let mut new_data = Vec::new();
    for s in first..first + count {
        new_data.extend(pattern(s, 2));
    }
    // Count the block writes of the interrupted operation.
    let total_writes = {
        let mut v = Volume::open(base.clone(), dkey(1, Some(2)), 0).unwrap();
        let w0 = v.device().writes();
        v.write_sectors(first, &new_data).unwrap();
        v.device().writes() - w0
    };
    assert!(total_writes >= count + 2);
    for crash_at in 0..=total_writes {
        for torn in [0usize, 512, 2048, 3584, 4096] {
            let mut v = Volume::open(base.clone(), dkey(1, Some(2)), 0).unwrap();
            v.device_mut().crash_after(crash_at, torn);
            let r = v.write_sectors(first, &new_data);
            assert!(r.is_err() || crash_at == total_writes);
            let mut dev = v.into_device();
            dev.power_on();
            let mut v = Volume::open(dev, dkey(1, Some(2)), 0).unwrap();
            for s in first..first + count {
                let got = read(&mut v, s).unwrap_or_else(|e| panic!("crash {crash_at}/{torn}: sector {s}: {e}"));
                assert!(got == pattern(s, 1) || got == pattern(s, 2), "crash {crash_at}/{torn}: sector {s} mixed");
            }
            // Untouched neighbours stay intact.
            assert_eq!(read(&mut v, 0).unwrap(), pattern(0, 1));
            // And the volume keeps working.
            v.write_sector(first, &pattern(first, 3)).unwrap();
            assert_eq!(read(&mut v, first).unwrap(), pattern(first, 3));
        }
    }
}

#[test]
fn crash_during_erase_or_rekey_is_finished_by_open() {
    let sectors = 6u64;
    let base = {
        let mut v = new_volume(sectors);
        for s in 0..sectors {
            v.write_sector(s, &pattern(s, 1)).unwrap();
        }
        v.into_device()
    };
    // Erase: after a crash, the volume opens with the old keys (old data)
    // or with the new ones (all zeros); never anything in between.
    for crash_at in 0..12 {
        let mut v = Volume::open(base.clone(), dkey(1, Some(2)), 0).unwrap();
        v.device_mut().crash_after(crash_at, 2048);
        let done = v.crypto_erase(dkey(1, Some(5)), &seed(6)).is_ok();
        let mut dev = v.into_device();
        dev.power_on();
        match Volume::open(dev.clone(), dkey(1, Some(5)), 0) {
            Ok(mut v) => {
                for s in 0..sectors {
                    assert_eq!(read(&mut v, s).unwrap(), vec![0; SECTOR_SIZE], "crash {crash_at}");
                }
            }
            Err(e) => {
                assert!(!done, "crash {crash_at}: {e}");
                let mut v = Volume::open(dev, dkey(1, Some(2)), 0).unwrap();
                for s in 0..sectors {
                    assert_eq!(read(&mut v, s).unwrap(), pattern(s, 1), "crash {crash_at}");
                }
            }
        }
    }
    // Re-key: the data survives whichever key set opens it.
    for crash_at in 0..24 {
        let mut v = Volume::open(base.clone(), dkey(1, Some(2)), 0).unwrap();
        v.device_mut().crash_after(crash_at, 1024);
        let _ = v.rekey(dkey(1, Some(5)), &seed(6));
        let mut dev = v.into_device();
        dev.power_on();
        let mut v = match Volume::open(dev.clone(), dkey(1, Some(5)), 0) {
            Ok(v) => v,
            Err(_) => Volume::open(dev, dkey(1, Some(2)), 0).unwrap(),
        };
        assert_eq!(v.header().state, VolumeState::Active);
        for s in 0..sectors {
            assert_eq!(read(&mut v, s).unwrap(), pattern(s, 1), "crash {crash_at}");
        }
    }
}

#[test]
fn errors_display() {
    let e = integrity(7, IntegrityReason::TagMismatch);
    assert!(alloc::format!("{e}").contains("sector 7"));
    assert!(alloc::format!("{}", VolumeError::Device(DeviceError::Io)).contains("I/O"));
}

/// Copies every block but the two headers from `from` to `to`.
fn copy_replicable(from: &Volume<MemDevice>, to: &mut Volume<MemDevice>) {
    let src = from.device().image()[2 * BLOCK_SIZE..].to_vec();
    to.device_mut().image_mut()[2 * BLOCK_SIZE..].copy_from_slice(&src);
}

#[test]
fn replica_reads_copied_ciphertext_and_refuses_writes_until_rekeyed() {
    let mut a = new_volume(6);
    // An odd key epoch: the replica must carry it (record flags hold its parity).
    a.rekey(dkey(1, Some(2)), &seed(4)).unwrap();
    for s in 0..6 {
        a.write_sector(s, &pattern(s, 1)).unwrap();
    }
    let mut logged = Vec::new();
    a.write_sectors_logged(2, &pattern(2, 2), |b| logged.push(b)).unwrap();
    let l = *a.layout();
    assert_eq!(logged.len(), 2);
    assert!(logged[0] == l.data_block(2, 0) || logged[0] == l.data_block(2, 1));
    assert_eq!(logged[1], l.meta_start);
    let key = a.volume_key().unwrap().clone();
    let epoch = a.key_epoch();
    assert_eq!(epoch, 1);

    // Another node: other landlord key, same volume id.
    let blocks = l.total_blocks;
    let mut b = Volume::create_replica(MemDevice::new(blocks).unwrap(), dkey(9, None), 6, key.clone(), epoch, &seed(5))
        .unwrap();
    assert_eq!(Volume::inspect(b.device_mut(), &dkey(9, None)).unwrap().state, VolumeState::Replica);
    assert_eq!(read(&mut b, 0).unwrap(), vec![0; SECTOR_SIZE]);
    copy_replicable(&a, &mut b);
    let mut b = Volume::open(b.into_device(), dkey(9, None), 0).unwrap();
    for s in 0..6 {
        assert_eq!(read(&mut b, s).unwrap(), pattern(s, if s == 2 { 2 } else { 1 }), "sector {s}");
    }
    assert_eq!(b.write_sector(0, &pattern(0, 3)), Err(VolumeError::ReadOnlyReplica));
    assert!(alloc::format!("{}", VolumeError::ReadOnlyReplica).contains("replica"));
    // Promotion: a key of its own, data kept, writable.
    b.rekey(dkey(9, None), &seed(6)).unwrap();
    assert_eq!(b.header().state, VolumeState::Active);
    assert_ne!(b.volume_key().unwrap().secret().as_bytes(), key.secret().as_bytes());
    b.write_sector(0, &pattern(0, 3)).unwrap();
    assert_eq!(read(&mut b, 0).unwrap(), pattern(0, 3));
    assert_eq!(read(&mut b, 5).unwrap(), pattern(5, 1));

    // A replica made with another key (or epoch parity) reads nothing.
    let mut c = Volume::create_replica(
        MemDevice::new(blocks).unwrap(),
        dkey(9, None),
        6,
        VolumeKey::from_bytes([7; 32]),
        epoch,
        &seed(5),
    )
    .unwrap();
    copy_replicable(&a, &mut c);
    assert_eq!(read(&mut c, 1), Err(integrity(1, IntegrityReason::TagMismatch)));
    let mut d =
        Volume::create_replica(MemDevice::new(blocks).unwrap(), dkey(9, None), 6, key, epoch + 1, &seed(5)).unwrap();
    copy_replicable(&a, &mut d);
    assert_eq!(read(&mut d, 1), Err(integrity(1, IntegrityReason::UnknownKeyEpoch)));
}

/// A device the test keeps a handle on while a volume owns it.
#[derive(Clone)]
struct Shared(alloc::rc::Rc<core::cell::RefCell<MemDevice>>);

impl BlockDevice for Shared {
    fn block_count(&self) -> u64 {
        self.0.borrow().block_count()
    }
    fn read_block(&mut self, index: u64, buf: &mut [u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        self.0.borrow_mut().read_block(index, buf)
    }
    fn write_block(&mut self, index: u64, buf: &[u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        self.0.borrow_mut().write_block(index, buf)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.0.borrow_mut().flush()
    }
}

#[test]
fn replica_create_crash_never_leaves_a_writable_volume() {
    let key = VolumeKey::from_bytes([3; 32]);
    let blocks = Layout::new(200).unwrap().total_blocks;
    let mut writes = 0;
    loop {
        let mut dev = MemDevice::new(blocks).unwrap();
        dev.image_mut().fill(0xAB);
        dev.crash_after(writes, 2048);
        let dev = Shared(alloc::rc::Rc::new(core::cell::RefCell::new(dev)));
        let done = Volume::create_replica(dev.clone(), dkey(9, None), 200, key.clone(), 0, &seed(5)).is_ok();
        dev.0.borrow_mut().power_on();
        match Volume::open(dev, dkey(9, None), 0) {
            Ok(v) => assert_eq!(v.header().state, VolumeState::Replica, "crash after {writes} writes"),
            Err(e) => assert!(!done, "{e:?}"),
        }
        if done {
            break;
        }
        writes += 1;
    }
    assert!(writes > 3);
}
