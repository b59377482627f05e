//! Encrypted-volume throughput against the bare cipher on the same data:
//! 4 KiB sectors through an in-memory volume (so the device costs only a
//! memcpy) vs ChaCha20-Poly1305 sealing the same 4 KiB in place.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use std::time::Duration;

use blockcrypt::{
    DiskKey, KeySeed, LandlordKey, Layout, MemDevice, SectorCipher, SectorContext, SectorSize, TenantKey, Volume,
    VolumeId, VolumeKey, BLOCK_SIZE,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SECTORS: u64 = 256; // 1 MiB of data per iteration

fn volume() -> Volume<MemDevice> {
    let v = VolumeId([9; 16]);
    let key = DiskKey::derive(&LandlordKey::from_bytes([1; 32]), &[&TenantKey::from_bytes([2; 32])], v).unwrap();
    let dev = MemDevice::new(Layout::new(SECTORS).unwrap().total_blocks).unwrap();
    Volume::create(dev, key, SECTORS, &KeySeed::from_random([3; KeySeed::LEN])).unwrap()
}

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..SECTORS as usize * BLOCK_SIZE).map(|i| i as u8).collect();
    let mut g = c.benchmark_group("4KiB sectors");
    g.measurement_time(Duration::from_secs(2)).sample_size(20).throughput(Throughput::Bytes(data.len() as u64));

    let cipher = SectorCipher::new(&VolumeKey::from_bytes([4; 32]), SectorSize::B4096);
    let mut buf = data.clone();
    let mut counter = 0u64;
    g.bench_function("bare cipher seal", |b| {
        b.iter(|| {
            counter += 1;
            for (s, chunk) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
                let ctx = SectorContext { volume: VolumeId([9; 16]), sector: s as u64, counter, flags: 0 };
                std::hint::black_box(cipher.seal(&ctx, chunk).unwrap());
            }
        });
    });

    // The bare cipher's open, on sealed copies of the same data (the copy
    // back of the ciphertext is part of the measured loop, as the volume's
    // device read is).
    let mut sealed = data.clone();
    let ctx = |s: usize| SectorContext { volume: VolumeId([9; 16]), sector: s as u64, counter: 1, flags: 0 };
    let tags: Vec<[u8; 16]> =
        sealed.chunks_exact_mut(BLOCK_SIZE).enumerate().map(|(s, c)| cipher.seal(&ctx(s), c).unwrap()).collect();
    let mut work = sealed.clone();
    g.bench_function("bare cipher open", |b| {
        b.iter(|| {
            for (s, (chunk, src)) in work.chunks_exact_mut(BLOCK_SIZE).zip(sealed.chunks_exact(BLOCK_SIZE)).enumerate()
            {
                chunk.copy_from_slice(src);
                cipher.open(&ctx(s), chunk, &tags[s]).unwrap();
            }
        });
    });
    assert_eq!(work, data);

    let mut v = volume();
    v.write_sectors(0, &data).unwrap(); // so reads measure real opens even when writes are filtered out
    g.bench_function("volume write (1 sector per call)", |b| {
        b.iter(|| {
            for (s, chunk) in data.chunks_exact(BLOCK_SIZE).enumerate() {
                v.write_sector(s as u64, chunk).unwrap();
            }
        });
    });
    g.bench_function("volume write (64 sectors per call)", |b| {
        b.iter(|| {
            for (i, chunk) in data.chunks_exact(64 * BLOCK_SIZE).enumerate() {
                v.write_sectors(i as u64 * 64, chunk).unwrap();
            }
        });
    });
    let mut out = vec![0u8; data.len()];
    g.bench_function("volume read (1 sector per call)", |b| {
        b.iter(|| {
            for (s, chunk) in out.chunks_exact_mut(BLOCK_SIZE).enumerate() {
                v.read_sector(s as u64, chunk).unwrap();
            }
        });
    });
    g.bench_function("volume read (64 sectors per call)", |b| {
        b.iter(|| {
            for (i, chunk) in out.chunks_exact_mut(64 * BLOCK_SIZE).enumerate() {
                v.read_sectors(i as u64 * 64, chunk).unwrap();
            }
        });
    });
    assert_eq!(out, data);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
