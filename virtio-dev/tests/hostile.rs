//! Hostile rings: every queue error puts the device into DEVICE_NEEDS_RESET,
//! raises the config-change interrupt, and a reset brings it back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use virtio_dev::features::{EVENT_IDX, INDIRECT_DESC};
use virtio_dev::mmio::regs::*;
use virtio_dev::net::{RX_QUEUE, TX_QUEUE};
use virtio_dev::queue::{QueueLayout, QueueOptions};
use virtio_dev::{GuestMemory, MmioOutcome, QueueError, VecMemory, Virtqueue};

const TX: usize = TX_QUEUE as usize;

/// Checks the error state, that the device stays inert, then resets and
/// proves the device works again.
fn assert_failed_then_recovers(mut d: Driver, out: MmioOutcome, want: QueueError) {
    assert_eq!(out.error, Some(want));
    assert_eq!(d.dev.last_error(), Some(want));
    assert!(d.needs_reset());
    assert!(!d.dev.is_running());
    assert!(d.dev.take_interrupt());
    assert_ne!(d.r(INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
    // Inert: further kicks and deliveries do nothing.
    assert_eq!(d.kick(TX_QUEUE), MmioOutcome::default());
    assert_eq!(d.dev.deliver_rx(&d.mem, &[0u8; 60]), Ok(false));
    // A driver status write does not clear DEVICE_NEEDS_RESET; only a reset does.
    let _ = d.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(d.needs_reset());
    assert!(d.handshake(virtio_dev::features::VERSION_1 | ALL_FEATURES));
    assert!(!d.needs_reset());
    let f: Vec<u8> = (0..100u8).collect();
    d.queue_tx(&f, 4096);
    let out = d.kick(TX_QUEUE);
    assert_eq!(out.error, None);
    assert_eq!(d.dev.backend_mut().take_tx_frames(), vec![f.clone()]);
    d.post_rx(2048);
    assert_eq!(d.dev.deliver_rx(&d.mem, &f), Ok(true));
    assert_eq!(d.take_rx(), vec![f]);
}

/// Publishes a chain whose head is `head` and kicks TX.
fn kick_head(d: &mut Driver, head: u16) -> MmioOutcome {
    d.stage(TX, head);
    d.publish(TX);
    d.kick(TX_QUEUE)
}

#[test]
fn head_index_out_of_range() {
    let mut d = Driver::ready(0);
    let out = kick_head(&mut d, 256);
    assert_failed_then_recovers(d, out, QueueError::DescriptorOutOfRange { index: 256 });
}

#[test]
fn next_index_out_of_range() {
    let mut d = Driver::ready(0);
    d.write_desc(TX, 0, BUF_START, 64, F_NEXT, 0xffff);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::DescriptorOutOfRange { index: 0xffff });
}

#[test]
fn descriptor_loop() {
    let mut d = Driver::ready(0);
    d.write_desc(TX, 0, BUF_START, 16, F_NEXT, 1);
    d.write_desc(TX, 1, BUF_START, 16, F_NEXT, 2);
    d.write_desc(TX, 2, BUF_START, 16, F_NEXT, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::Loop);
}

#[test]
fn self_loop() {
    let mut d = Driver::ready(0);
    d.write_desc(TX, 7, BUF_START, 0, F_NEXT, 7);
    let out = kick_head(&mut d, 7);
    assert_failed_then_recovers(d, out, QueueError::Loop);
}

#[test]
fn indirect_loop() {
    let mut d = Driver::ready(INDIRECT_DESC);
    let table = d.alloc(64);
    for i in 0..4u16 {
        let mut e = [0u8; 16];
        e[0..8].copy_from_slice(&BUF_START.to_le_bytes());
        e[8..12].copy_from_slice(&16u32.to_le_bytes());
        e[12..14].copy_from_slice(&F_NEXT.to_le_bytes());
        e[14..16].copy_from_slice(&((i + 1) % 4).to_le_bytes());
        d.mem.write(table + 16 * u64::from(i), &e).unwrap();
    }
    d.write_desc(TX, 0, table, 64, F_INDIRECT, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::Loop);
}

#[test]
fn indirect_table_longer_than_the_queue() {
    let mut d = Driver::ready(INDIRECT_DESC);
    let table = d.alloc(16 * 257);
    d.write_desc(TX, 0, table, 16 * 257, F_INDIRECT, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::ChainTooLong);
}

#[test]
fn direct_chain_plus_indirect_longer_than_the_queue() {
    let mut d = Driver::ready(INDIRECT_DESC);
    let table = d.alloc(16 * 256);
    for i in 0..256u16 {
        let mut e = [0u8; 16];
        e[0..8].copy_from_slice(&BUF_START.to_le_bytes());
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        e[12..14].copy_from_slice(&(if i < 255 { F_NEXT } else { 0 }).to_le_bytes());
        e[14..16].copy_from_slice(&(i + 1).to_le_bytes());
        d.mem.write(table + 16 * u64::from(i), &e).unwrap();
    }
    d.write_desc(TX, 0, BUF_START, 12, F_NEXT, 1);
    d.write_desc(TX, 1, table, 16 * 256, F_INDIRECT, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::ChainTooLong);
}

#[test]
fn oversize_chain() {
    let mut d = Driver::ready(0);
    // 12 + 65536 is the limit; two descriptors add up to one byte more.
    d.write_desc(TX, 0, BUF_START, 40_000, F_NEXT, 1);
    d.write_desc(TX, 1, BUF_START, 25_549, 0, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::TooManyBytes);
}

#[test]
fn buffer_outside_ram() {
    let mut d = Driver::ready(0);
    d.write_desc(TX, 0, RAM as u64 - 10, 64, 0, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::BadAddress { gpa: RAM as u64 - 10 });
}

#[test]
fn buffer_wrapping_the_address_space() {
    let mut d = Driver::ready(0);
    d.write_desc(TX, 0, u64::MAX - 4, 64, 0, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::BadAddress { gpa: u64::MAX - 4 });
}

#[test]
fn rx_buffer_outside_ram() {
    let mut d = Driver::ready(0);
    let rx = RX_QUEUE as usize;
    d.write_desc(rx, 0, 1 << 40, 2048, F_WRITE, 0);
    d.stage(rx, 0);
    d.publish(rx);
    let r = d.dev.deliver_rx(&d.mem, &[1u8; 60]);
    assert_eq!(r, Err(QueueError::BadAddress { gpa: 1 << 40 }));
    assert_failed_then_recovers(
        d,
        MmioOutcome { error: r.err(), ..MmioOutcome::default() },
        QueueError::BadAddress { gpa: 1 << 40 },
    );
}

#[test]
fn rings_outside_ram() {
    let mut d = Driver::new();
    d.rings[TX].desc = 1 << 40;
    assert!(d.handshake(virtio_dev::features::VERSION_1));
    let out = kick_head(&mut d, 0);
    assert_eq!(out.error, Some(QueueError::BadAddress { gpa: 1 << 40 }));
    d.rings[TX].desc = 0x2_0000;
    assert_failed_then_recovers(d, out, QueueError::BadAddress { gpa: 1 << 40 });
}

#[test]
fn readable_after_writable() {
    let mut d = Driver::ready(0);
    d.write_desc(TX, 0, BUF_START, 64, F_WRITE | F_NEXT, 1);
    d.write_desc(TX, 1, BUF_START, 64, 0, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::WritableBeforeReadable);
}

#[test]
fn avail_idx_jump() {
    let mut d = Driver::ready(EVENT_IDX);
    d.set_avail_idx(TX, 257);
    let out = d.kick(TX_QUEUE);
    assert_failed_then_recovers(d, out, QueueError::AvailIdxJump);
}

#[test]
fn indirect_without_negotiation() {
    let mut d = Driver::ready(0);
    d.write_desc(TX, 0, BUF_START, 32, F_INDIRECT, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::IndirectNotNegotiated);
}

#[test]
fn nested_indirect() {
    let mut d = Driver::ready(INDIRECT_DESC);
    let table = d.alloc(16);
    let mut e = [0u8; 16];
    e[0..8].copy_from_slice(&table.to_le_bytes());
    e[8..12].copy_from_slice(&16u32.to_le_bytes());
    e[12..14].copy_from_slice(&F_INDIRECT.to_le_bytes());
    d.mem.write(table, &e).unwrap();
    d.write_desc(TX, 0, table, 16, F_INDIRECT, 0);
    let out = kick_head(&mut d, 0);
    assert_failed_then_recovers(d, out, QueueError::BadIndirect);
}

#[test]
fn indirect_with_next_or_bad_length() {
    for (len, flags) in [(32, F_INDIRECT | F_NEXT), (24, F_INDIRECT), (0, F_INDIRECT)] {
        let mut d = Driver::ready(INDIRECT_DESC);
        d.write_desc(TX, 0, BUF_START, len, flags, 1);
        let out = kick_head(&mut d, 0);
        assert_failed_then_recovers(d, out, QueueError::BadIndirect);
    }
}

#[test]
fn bad_queue_layout() {
    let mut d = Driver::new();
    let _ = d.w(STATUS, ACKNOWLEDGE | DRIVER);
    let _ = d.w(DRIVER_FEATURES_SEL, 1);
    let _ = d.w(DRIVER_FEATURES, 1);
    let _ = d.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let _ = d.w(QUEUE_SEL, 1);
    let _ = d.w(QUEUE_NUM, 256);
    let _ = d.w(QUEUE_DRIVER_LOW, 0x2_1001); // avail ring must be 2-byte aligned
    let out = d.w(QUEUE_READY, 1);
    assert_eq!(out.error, Some(QueueError::BadLayout));
    assert_eq!(d.r(QUEUE_READY), 0);
    assert!(d.needs_reset());
    let _ = d.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(!d.dev.is_running());
    assert!(d.handshake(virtio_dev::features::VERSION_1));
}

#[test]
fn push_used_for_a_chain_never_popped() {
    let mem = VecMemory::new(0x10000);
    let opts = QueueOptions { max_size: 8, event_idx: false, indirect: false, max_chain_bytes: 100 };
    let mut q = Virtqueue::new(QueueLayout { size: 8, desc: 0, avail: 0x1000, used: 0x2000 }, opts).unwrap();
    assert_eq!(q.push_used(&mem, 0, 0), Err(QueueError::NotInFlight));
    assert_eq!(q.pop(&mem), Ok(None));
}

#[test]
fn malformed_tx_frame_is_dropped_not_fatal() {
    let mut d = Driver::ready(0);
    d.write_desc(TX, 0, BUF_START, 12, 0, 0); // header only, no frame
    let out = kick_head(&mut d, 0);
    assert_eq!(out.error, None);
    assert!(d.dev.is_running());
    assert!(d.dev.backend_mut().take_tx_frames().is_empty());
    assert_eq!(d.dev.backend().counters().errors, 1);
    assert_eq!(d.take_used(TX).len(), 1);
}

#[test]
fn queue_registers_frozen_while_ready_and_unknown_queues_ignored() {
    let mut d = Driver::ready(0);
    let _ = d.w(QUEUE_SEL, TX as u32);
    let _ = d.w(QUEUE_DESC_LOW, 0xdead_0000);
    let _ = d.w(QUEUE_SEL, 0xffff_ffff);
    let _ = d.w(QUEUE_NUM, 8);
    let _ = d.w(QUEUE_READY, 1);
    assert_eq!(d.w(QUEUE_NOTIFY, 7), MmioOutcome::default());
    assert_eq!(d.w(QUEUE_NOTIFY, 0xffff_0001).notified, Some(TX_QUEUE)); // high half: notification data, ignored
    let f = vec![5u8; 60];
    d.queue_tx(&f, 4096);
    let _ = d.kick(TX_QUEUE);
    assert_eq!(d.dev.backend_mut().take_tx_frames(), vec![f]);
}
