//! Property tests: random rings never panic and cost O(queue size) guest
//! accesses per operation; valid frame sequences round-trip unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::cell::Cell;

use common::*;
use proptest::prelude::*;
use virtio_dev::features::{EVENT_IDX, INDIRECT_DESC};
use virtio_dev::net::{HDR_LEN, TX_QUEUE};
use virtio_dev::queue::{QueueLayout, QueueOptions};
use virtio_dev::{GuestMemory, MemoryError, VecMemory, Virtqueue};

/// Counts guest memory accesses, to bound the work a hostile ring can cause.
struct Counting<'a> {
    inner: &'a VecMemory,
    accesses: Cell<usize>,
}

impl GuestMemory for Counting<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.accesses.set(self.accesses.get() + 1);
        self.inner.read(gpa, buf)
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.accesses.set(self.accesses.get() + 1);
        self.inner.write(gpa, data)
    }
}

const MEM: usize = 0x8000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x4000;
const USED: u64 = 0x5000;

/// A descriptor with fields biased toward plausible-but-wrong values.
fn descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    (
        prop_oneof![0u64..MEM as u64, Just(u64::MAX - 8), any::<u64>(), Just(0x6000u64)],
        prop_oneof![0u32..64, Just(16 * 3), any::<u32>(), 0u32..70_000],
        0u16..8,
        prop_oneof![0u16..8, 0u16..80, any::<u16>()],
    )
}

fn write_desc(mem: &VecMemory, at: u64, (addr, len, flags, next): (u64, u32, u16, u16)) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write(at, &d).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_rings_never_panic_and_stay_bounded(
        size_log in 0u32..7,
        descs in prop::collection::vec(descriptor(), 64),
        indirect_table in prop::collection::vec(descriptor(), 8),
        ring in prop::collection::vec(prop_oneof![0u16..64, any::<u16>()], 64),
        avail_idx in prop_oneof![0u16..70, any::<u16>()],
        event_idx in any::<bool>(),
        indirect in any::<bool>(),
        max_chain_bytes in prop_oneof![Just(65_548u32), 0u32..200],
    ) {
        let size = 1u16 << size_log;
        let mem = VecMemory::new(MEM);
        for (i, d) in descs.iter().enumerate() {
            write_desc(&mem, DESC + 16 * i as u64, *d);
        }
        for (i, d) in indirect_table.iter().enumerate() {
            write_desc(&mem, 0x6000 + 16 * i as u64, *d);
        }
        for (i, h) in ring.iter().enumerate() {
            mem.write(AVAIL + 4 + 2 * i as u64, &h.to_le_bytes()).unwrap();
        }
        mem.write(AVAIL + 2, &avail_idx.to_le_bytes()).unwrap();
        let opts = QueueOptions { max_size: 64, event_idx, indirect, max_chain_bytes };
        let mut q = Virtqueue::new(QueueLayout { size, desc: DESC, avail: AVAIL, used: USED }, opts).unwrap();
        let counting = Counting { inner: &mem, accesses: Cell::new(0) };
        let per_op = 2 * usize::from(size) + 8;
        let mut popped = 0usize;
        for _ in 0..(2 * usize::from(size) + 2) {
            counting.accesses.set(0);
            let r = q.pop(&counting);
            prop_assert!(counting.accesses.get() <= per_op, "{} accesses", counting.accesses.get());
            match r {
                Ok(Some(chain)) => {
                    popped += 1;
                    let total = chain.readable_len() + chain.writable_len();
                    prop_assert!(total <= u64::from(max_chain_bytes));
                    prop_assert!(chain.readable.len() + chain.writable.len() <= usize::from(size));
                    prop_assert!(chain.head() < size);
                    q.push_used(&counting, chain.head(), 0).unwrap();
                    let _ = q.needs_interrupt(&counting);
                    let _ = q.set_notifications(&counting, popped.is_multiple_of(2));
                }
                Ok(None) | Err(_) => break,
            }
        }
        prop_assert!(popped <= usize::from(size));
    }

    #[test]
    fn random_tx_ring_through_the_device_never_panics(
        descs in prop::collection::vec(descriptor(), 16),
        ring in prop::collection::vec(prop_oneof![0u16..16, any::<u16>()], 16),
        avail_idx in any::<u16>(),
        features in prop_oneof![Just(0u64), Just(EVENT_IDX), Just(INDIRECT_DESC), Just(ALL_FEATURES)],
    ) {
        let mut d = Driver::ready(features);
        let tx = TX_QUEUE as usize;
        for (i, desc) in descs.iter().enumerate() {
            let (addr, len, flags, next) = *desc;
            d.write_desc(tx, i as u16, addr, len, flags, next);
        }
        for (i, h) in ring.iter().enumerate() {
            let at = d.rings[tx].avail + 4 + 2 * i as u64;
            d.mem.write(at, &h.to_le_bytes()).unwrap();
        }
        d.set_avail_idx(tx, avail_idx);
        let out = d.kick(TX_QUEUE);
        // Either the device processed the ring or it is in DEVICE_NEEDS_RESET; never both, never stuck.
        prop_assert_eq!(out.error.is_some(), d.needs_reset());
        prop_assert_eq!(d.dev.is_running(), out.error.is_none());
        for f in d.dev.backend_mut().take_tx_frames() {
            prop_assert!(!f.is_empty() && f.len() <= virtio_dev::net::MAX_FRAME_LEN);
        }
        prop_assert!(d.handshake(virtio_dev::features::VERSION_1));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn frames_round_trip_tx_and_rx(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..1515), 1..120),
        seg in prop_oneof![Just(4096usize), 1usize..64, 12usize..2000],
        batch in 1usize..100,
        features in prop_oneof![Just(0u64), Just(EVENT_IDX), Just(INDIRECT_DESC), Just(ALL_FEATURES)],
    ) {
        let mut d = Driver::ready(features);
        // TX, in batches per kick; a one-byte segment chain can exceed the
        // queue size, so bound segments per chain.
        let seg = seg.max(1515usize.div_ceil(200));
        let mut got = Vec::new();
        for chunk in frames.chunks(batch) {
            // A driver never has more descriptors in flight than the ring holds.
            let mut in_flight = 0;
            for f in chunk {
                let parts = (f.len() + HDR_LEN).div_ceil(seg);
                if in_flight + parts > 256 {
                    prop_assert_eq!(d.kick(TX_QUEUE).error, None);
                    in_flight = 0;
                }
                in_flight += parts;
                d.queue_tx(f, seg);
            }
            let out = d.kick(TX_QUEUE);
            prop_assert_eq!(out.error, None);
            let _ = d.take_used(TX_QUEUE as usize);
            got.extend(d.dev.backend_mut().take_tx_frames());
        }
        prop_assert_eq!(&got, &frames);
        // RX, buffers posted in batches as a driver refills.
        let mut received = Vec::new();
        for chunk in frames.chunks(batch) {
            for _ in chunk {
                d.post_rx(1526);
            }
            for f in chunk {
                prop_assert_eq!(d.dev.deliver_rx(&d.mem, f), Ok(true));
            }
            received.extend(d.take_rx());
        }
        prop_assert_eq!(&received, &frames);
        let c = d.dev.backend().counters();
        prop_assert_eq!(c.tx_frames, frames.len() as u64);
        prop_assert_eq!(c.rx_frames, frames.len() as u64);
    }
}
