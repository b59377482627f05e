//! Property tests for virtio-blk: random request chains never panic and
//! leave the device either live or in DEVICE_NEEDS_RESET; valid writes and
//! reads, split over random descriptor layouts, match a plain byte model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod blkdrv;

use blkdrv::*;
use proptest::prelude::*;
use virtio_dev::blk::{MemBackend, S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use virtio_dev::features::{EVENT_IDX, INDIRECT_DESC, VERSION_1};

const SECTORS: u64 = 64;

/// A buffer: (address choice, length, writable).
fn buffer() -> impl Strategy<Value = (u64, u32, bool)> {
    (
        prop_oneof![4 => Just(0u64), 1 => any::<u64>(), 1 => Just(RAM as u64 - 1)],
        prop_oneof![0u32..40, Just(16), Just(512), Just(1024), 500u32..1100, any::<u32>()],
        any::<bool>(),
    )
}

/// Splits `len` bytes into pieces at the given fractional cut points.
fn pieces(len: usize, cuts: &[u16]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * len / 65536).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| w[1] - w[0]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_requests_never_panic(
        kind in prop_oneof![Just(T_IN), Just(T_OUT), Just(T_FLUSH), Just(T_GET_ID), any::<u32>()],
        sector in prop_oneof![0u64..SECTORS + 2, any::<u64>(), Just(u64::MAX)],
        header_len in prop_oneof![Just(16u32), 0u32..20],
        header_writable in prop::bool::weighted(0.1),
        bufs in prop::collection::vec(buffer(), 0..6),
        read_only in prop::bool::weighted(0.2),
        features in prop_oneof![Just(0u64), Just(EVENT_IDX), Just(INDIRECT_DESC)],
        indirect in any::<bool>(),
    ) {
        let mut backend = MemBackend::new(SECTORS, ID);
        backend.set_read_only(read_only);
        backend.fail_integrity(3);
        let mut d = BlkDriver::with_backend(backend);
        let ro = if read_only { virtio_dev::blk::F_RO } else { 0 };
        prop_assert!(d.handshake(VERSION_1 | features | ro));
        let before = d.dev.backend().backend().bytes().to_vec();
        let mut chain = Vec::new();
        if header_len > 0 {
            let mut h = BlkDriver::header(kind, sector);
            h.resize(header_len as usize, 0);
            let mut b = d.readable(&h);
            b.writable = header_writable;
            chain.push(b);
        }
        for (addr, len, writable) in bufs {
            let gpa = if addr == 0 { d.alloc(u64::from(len.min(0x10000))) } else { addr };
            chain.push(Buf { gpa, len, writable });
        }
        if chain.is_empty() {
            return Ok(());
        }
        let head = if indirect && features & INDIRECT_DESC != 0 { d.submit_indirect(&chain) } else { d.submit(&chain) };
        let out = d.kick();
        prop_assert_eq!(out.error.is_some(), d.needs_reset());
        prop_assert_eq!(d.dev.is_running(), out.error.is_none());
        if out.error.is_none() {
            let used = d.take_used();
            prop_assert_eq!(used.len(), 1);
            prop_assert_eq!(used[0].0, u32::from(head));
            let last = chain.iter().rev().find(|b| b.writable && b.len > 0).unwrap();
            let status = d.byte(last.gpa + u64::from(last.len) - 1);
            prop_assert!(matches!(status, S_OK | S_IOERR | S_UNSUPP));
            let writable: u64 = chain.iter().filter(|b| b.writable).map(|b| u64::from(b.len)).sum();
            prop_assert!(u64::from(used[0].1) >= 1 && u64::from(used[0].1) <= writable);
            if status != S_OK {
                prop_assert_eq!(used[0].1, 1);
            }
            if status != S_OK || kind != T_OUT {
                prop_assert_eq!(d.dev.backend().backend().bytes(), &before[..], "storage changed");
            }
        }
        // Always recoverable.
        prop_assert!(d.handshake(VERSION_1));
    }
}

/// One step of the round-trip model.
#[derive(Clone, Debug)]
enum Step {
    Write { sector: u64, sectors: usize, seed: u8, cuts: Vec<u16> },
    Read { sector: u64, sectors: usize, cuts: Vec<u16> },
    Flush,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..SECTORS + 4, 0usize..12, any::<u8>(), prop::collection::vec(any::<u16>(), 0..6))
            .prop_map(|(sector, sectors, seed, cuts)| Step::Write { sector, sectors, seed, cuts }),
        4 => (0..SECTORS + 4, 0usize..12, prop::collection::vec(any::<u16>(), 0..6))
            .prop_map(|(sector, sectors, cuts)| Step::Read { sector, sectors, cuts }),
        1 => Just(Step::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn writes_then_reads_round_trip(
        steps in prop::collection::vec(step(), 1..40),
        features in prop_oneof![Just(0u64), Just(EVENT_IDX), Just(INDIRECT_DESC), Just(EVENT_IDX | INDIRECT_DESC)],
        indirect in any::<bool>(),
    ) {
        let mut d = BlkDriver::ready(SECTORS, features);
        let use_indirect = indirect && features & INDIRECT_DESC != 0;
        let mut model = vec![0u8; SECTORS as usize * 512];
        let mut expect_writes = 0u64;
        for s in steps {
            match s {
                Step::Write { sector, sectors, seed, cuts } => {
                    let data = pattern(sectors * 512, seed);
                    let mut chain = vec![d.readable(&BlkDriver::header(T_OUT, sector))];
                    let mut at = 0;
                    for n in pieces(data.len(), &cuts) {
                        chain.push(d.readable(&data[at..at + n]));
                        at += n;
                    }
                    let st = d.writable(1);
                    chain.push(st);
                    if use_indirect { d.submit_indirect(&chain); } else { d.submit(&chain); }
                    prop_assert_eq!(d.kick().error, None);
                    prop_assert_eq!(d.take_used().len(), 1);
                    let fits = sector + sectors as u64 <= SECTORS;
                    prop_assert_eq!(d.byte(st.gpa), if fits { S_OK } else { S_IOERR });
                    if fits {
                        let start = sector as usize * 512;
                        model[start..start + data.len()].copy_from_slice(&data);
                        expect_writes += 1;
                    }
                }
                Step::Read { sector, sectors, cuts } => {
                    let len = sectors * 512;
                    let mut chain = vec![d.readable(&BlkDriver::header(T_IN, sector))];
                    let targets: Vec<Buf> = pieces(len, &cuts).into_iter().map(|n| d.writable(n as u32)).collect();
                    chain.extend(targets.iter().copied());
                    let st = d.writable(1);
                    chain.push(st);
                    if use_indirect { d.submit_indirect(&chain); } else { d.submit(&chain); }
                    prop_assert_eq!(d.kick().error, None);
                    let used = d.take_used();
                    prop_assert_eq!(used.len(), 1);
                    let fits = sector + sectors as u64 <= SECTORS;
                    prop_assert_eq!(d.byte(st.gpa), if fits { S_OK } else { S_IOERR });
                    if fits {
                        prop_assert_eq!(used[0].1 as usize, len + 1);
                        let got: Vec<u8> = targets.iter().flat_map(|&b| d.bytes(b)).collect();
                        let start = sector as usize * 512;
                        prop_assert_eq!(&got[..], &model[start..start + len]);
                    }
                }
                Step::Flush => {
                    let h = d.readable(&BlkDriver::header(T_FLUSH, 0));
                    let st = d.writable(1);
                    prop_assert_eq!(d.run(&[h, st]), (S_OK, 1));
                }
            }
        }
        prop_assert_eq!(d.dev.backend().backend().bytes(), &model[..]);
        prop_assert_eq!(d.dev.backend().counters().writes, expect_writes);
    }
}
