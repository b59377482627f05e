//! Property tests: what was written is read back; any flipped bit in data,
//! tag, counter or header is detected; counters never repeat; decoding
//! arbitrary bytes never panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::collections::HashMap;

use blockcrypt::metadata::{SectorRecord, VolumeHeader, HEADER_LEN, RECORD_LEN};
use blockcrypt::volume::RECORDS_PER_BLOCK;
use blockcrypt::{
    BlockDevice, DiskKey, KeySeed, LandlordKey, Layout, MemDevice, TenantKey, Volume, VolumeError, VolumeId, BLOCK_SIZE,
};
use proptest::prelude::*;

const SECTORS: u64 = 140;
const V: VolumeId = VolumeId([0x42; 16]);

fn key() -> DiskKey {
    DiskKey::derive(&LandlordKey::from_bytes([1; 32]), &[&TenantKey::from_bytes([2; 32])], V).unwrap()
}

fn fresh() -> Volume<MemDevice> {
    let dev = MemDevice::new(Layout::new(SECTORS).unwrap().total_blocks).unwrap();
    Volume::create(dev, key(), SECTORS, &KeySeed::from_random([3; KeySeed::LEN])).unwrap()
}

fn fill(seed: u8, s: u64) -> Vec<u8> {
    (0..BLOCK_SIZE).map(|i| (i as u8).wrapping_mul(seed | 1) ^ (s as u8) ^ seed).collect()
}

fn record_off(l: &Layout, s: u64) -> usize {
    (l.meta_start + s / RECORDS_PER_BLOCK) as usize * BLOCK_SIZE + (s % RECORDS_PER_BLOCK) as usize * RECORD_LEN
}

fn record(v: &Volume<MemDevice>, s: u64) -> SectorRecord {
    let o = record_off(v.layout(), s);
    SectorRecord::decode(&v.device().image()[o..o + RECORD_LEN]).unwrap()
}

/// A write: first sector, number of sectors, content seed.
fn writes() -> impl Strategy<Value = Vec<(u64, u64, u8)>> {
    prop::collection::vec((0..SECTORS, 1..4u64, any::<u8>()), 1..12)
}

fn apply(v: &mut Volume<MemDevice>, ops: &[(u64, u64, u8)], model: &mut HashMap<u64, Vec<u8>>) {
    for &(s, n, seed) in ops {
        let n = n.min(SECTORS - s);
        let mut data = Vec::new();
        for i in s..s + n {
            data.extend(fill(seed, i));
            model.insert(i, fill(seed, i));
        }
        v.write_sectors(s, &data).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn written_is_read_back(ops in writes(), reopen in any::<bool>()) {
        let mut v = fresh();
        let mut model = HashMap::new();
        apply(&mut v, &ops, &mut model);
        if reopen {
            v = Volume::open(v.into_device(), key(), 0).unwrap();
        }
        let mut all = vec![0u8; SECTORS as usize * BLOCK_SIZE];
        v.read_sectors(0, &mut all).unwrap();
        for s in 0..SECTORS {
            let got = &all[s as usize * BLOCK_SIZE..][..BLOCK_SIZE];
            match model.get(&s) {
                Some(want) => prop_assert_eq!(got, &want[..]),
                None => prop_assert!(got.iter().all(|&x| x == 0)),
            }
        }
    }

    /// Flip one bit in the current data slot or the record of a written
    /// sector: reading it is an integrity error naming that sector.
    #[test]
    fn flipped_data_or_record_bit_is_detected(ops in writes(), pick in any::<prop::sample::Index>(),
                                              in_record in any::<bool>(), bit in 0usize..BLOCK_SIZE * 8) {
        let mut v = fresh();
        let mut model = HashMap::new();
        apply(&mut v, &ops, &mut model);
        let mut written: Vec<u64> = model.keys().copied().collect();
        written.sort_unstable();
        let s = *pick.get(&written);
        let l = *v.layout();
        let off = if in_record {
            record_off(&l, s) * 8 + bit % (RECORD_LEN * 8)
        } else {
            let slot = u64::from(record(&v, s).slot());
            (l.data_start + 2 * s + slot) as usize * BLOCK_SIZE * 8 + bit
        };
        v.device_mut().image_mut()[off / 8] ^= 1 << (off % 8);
        let mut buf = vec![0u8; BLOCK_SIZE];
        match v.read_sector(s, &mut buf) {
            Err(VolumeError::Integrity(e)) => prop_assert_eq!(e.sector, s),
            other => prop_assert!(false, "sector {} bit {} undetected: {:?}", s, off, other),
        }
    }

    /// Flip one bit in the header: that copy no longer parses or verifies,
    /// and with both copies hit the volume does not open.
    #[test]
    fn flipped_header_bit_is_detected(bit in 0usize..HEADER_LEN * 8, both in any::<bool>()) {
        let v = fresh();
        let k = key();
        let mut dev = v.into_device();
        let mut img = dev.image().to_vec();
        for copy in 0..2usize {
            let block = &mut img[copy * BLOCK_SIZE..(copy + 1) * BLOCK_SIZE];
            block[bit / 8] ^= 1 << (bit % 8);
            let ok = VolumeHeader::decode(block).map(|h| k.verify_header_mac(&h.mac_input(), &h.mac).is_ok());
            prop_assert!(!matches!(ok, Ok(true)), "copy {} bit {} undetected", copy, bit);
            if !both { break; }
        }
        dev.image_mut().copy_from_slice(&img);
        let r = Volume::open(dev, k, 0);
        if both {
            prop_assert!(r.is_err());
        } else {
            prop_assert!(r.is_ok(), "one good copy remains");
        }
    }

    /// Counters of one sector never repeat, across writes and mounts.
    #[test]
    fn counters_never_repeat(plan in prop::collection::vec((0..3u64, any::<bool>()), 1..40)) {
        let mut v = fresh();
        let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
        for (s, reopen) in plan {
            v.write_sector(s, &fill(7, s)).unwrap();
            let c = record(&v, s).counter;
            let prev = seen.entry(s).or_default();
            prop_assert!(!prev.contains(&c));
            prop_assert!(prev.last().is_none_or(|&p| c > p));
            prev.push(c);
            if reopen {
                v = Volume::open(v.into_device(), key(), 0).unwrap();
            }
        }
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = SectorRecord::decode(&bytes);
        let _ = SectorRecord::raw_counter(&bytes);
        let _ = VolumeHeader::decode(&bytes);
    }

    /// Arbitrary bytes in the header and first metadata block: opening and
    /// reading give values or errors, never a panic.
    #[test]
    fn volume_never_panics_on_garbage(header in prop::collection::vec(any::<u8>(), HEADER_LEN),
                                      meta in prop::collection::vec(any::<u8>(), BLOCK_SIZE),
                                      valid_magic in any::<bool>()) {
        let mut v = fresh();
        v.write_sector(0, &fill(1, 0)).unwrap();
        let mut dev = v.into_device();
        let img = dev.image_mut();
        img[2 * BLOCK_SIZE..3 * BLOCK_SIZE].copy_from_slice(&meta);
        let _ = Volume::open(dev.clone(), key(), 0).map(|mut v| {
            let mut buf = vec![0u8; 8 * BLOCK_SIZE];
            let _ = v.read_sectors(0, &mut buf);
            let _ = v.write_sectors(0, &buf);
        });
        let img = dev.image_mut();
        img[..HEADER_LEN].copy_from_slice(&header);
        if valid_magic { img[..8].copy_from_slice(b"BMVOLHD1"); }
        img[BLOCK_SIZE..BLOCK_SIZE + HEADER_LEN].copy_from_slice(&header);
        prop_assert!(Volume::open(dev.clone(), key(), 0).is_err());
        let _ = dev.block_count();
    }
}
