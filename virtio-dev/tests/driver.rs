//! The driver handshake, TX/RX round trips and notification suppression,
//! all through the virtio-mmio registers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use virtio_dev::features::{EVENT_IDX, INDIRECT_DESC, VERSION_1};
use virtio_dev::mmio::regs::*;
use virtio_dev::net::{F_MAC, F_STATUS, RX_QUEUE, STATUS_LINK_UP, TX_QUEUE};
use virtio_dev::{DeviceBackend, GuestMemory};

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn identity_features_and_config() {
    let mut d = Driver::new();
    assert_eq!(d.r(MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.r(VERSION_REG), 2);
    assert_eq!(d.r(DEVICE_ID), 1);
    assert_eq!(d.r(VENDOR_ID_REG), VENDOR_ID);
    let _ = d.w(DEVICE_FEATURES_SEL, 0);
    let lo = d.r(DEVICE_FEATURES);
    let _ = d.w(DEVICE_FEATURES_SEL, 1);
    let hi = d.r(DEVICE_FEATURES);
    let f = u64::from(lo) | u64::from(hi) << 32;
    assert_eq!(f, VERSION_1 | F_MAC | F_STATUS | EVENT_IDX | INDIRECT_DESC);
    // MAC bytes with every access width, then the link status.
    let mac: Vec<u8> = (0..6).map(|i| d.dev.read(CONFIG + i, 1) as u8).collect();
    assert_eq!(mac, MAC);
    assert_eq!(d.dev.read(CONFIG, 4).to_le_bytes(), [MAC[0], MAC[1], MAC[2], MAC[3]]);
    assert_eq!(d.dev.read(CONFIG + 6, 2), u32::from(STATUS_LINK_UP));
    assert_eq!(d.dev.read(CONFIG + 0x40, 4), 0);
    // Narrow reads of 32-bit registers read 0; the queue registers exist for 2 queues.
    assert_eq!(d.dev.read(MAGIC_VALUE, 1), 0);
    assert_eq!(d.dev.read(MAGIC_VALUE, 2), 0);
    let _ = d.w(QUEUE_SEL, 1);
    assert_eq!(d.r(QUEUE_NUM_MAX), 256);
    let _ = d.w(QUEUE_SEL, 2);
    assert_eq!(d.r(QUEUE_NUM_MAX), 0);
    // Outside the window: nothing.
    assert_eq!(d.dev.read(0x200, 4), 0);
    assert_eq!(d.dev.read(u64::MAX, 4), 0);
}

#[test]
fn handshake_reaches_driver_ok() {
    let mut d = Driver::ready(ALL_FEATURES);
    assert!(d.dev.is_running());
    assert_eq!(d.r(STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(d.dev.negotiated_features(), VERSION_1 | ALL_FEATURES);
}

#[test]
fn features_ok_refused_without_version_1_or_with_unoffered_bits() {
    let mut d = Driver::new();
    assert!(!d.handshake(F_MAC));
    assert!(!d.dev.is_running());
    assert!(!d.handshake(VERSION_1 | (1 << 15))); // MRG_RXBUF is not offered
    assert!(!d.handshake(VERSION_1 | (1 << 40)));
    assert!(d.handshake(VERSION_1));
}

#[test]
fn queue_ready_before_features_ok_is_ignored_and_bad_size_needs_reset() {
    let mut d = Driver::new();
    let _ = d.w(STATUS, ACKNOWLEDGE | DRIVER);
    let _ = d.w(QUEUE_NUM, 256);
    let _ = d.w(QUEUE_READY, 1);
    assert_eq!(d.r(QUEUE_READY), 0);
    let _ = d.w(DRIVER_FEATURES_SEL, 1);
    let _ = d.w(DRIVER_FEATURES, 1);
    let _ = d.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let _ = d.w(QUEUE_NUM, 100);
    let out = d.w(QUEUE_READY, 1);
    assert!(out.error.is_some());
    assert_eq!(d.r(QUEUE_READY), 0);
    assert!(d.needs_reset());
    assert!(d.handshake(VERSION_1));
}

#[test]
fn tx_frames_reach_the_hypervisor() {
    for features in [0, EVENT_IDX, INDIRECT_DESC, ALL_FEATURES] {
        let mut d = Driver::ready(features);
        let frames = [frame(60, 1), frame(1514, 2), frame(9000, 3)];
        d.queue_tx(&frames[0], 4096);
        d.queue_tx(&frames[1], 12); // header in its own descriptor, as Linux does
        d.queue_tx(&frames[2], 1000);
        let out = d.kick(TX_QUEUE);
        assert_eq!(out.notified, Some(TX_QUEUE));
        assert_eq!(out.error, None);
        assert_eq!(d.dev.backend_mut().take_tx_frames(), frames.to_vec());
        let used = d.take_used(TX_QUEUE as usize);
        assert_eq!(used.len(), 3);
        assert!(used.iter().all(|&(_, len)| len == 0));
        assert!(d.dev.take_interrupt());
        assert_eq!(d.r(INTERRUPT_STATUS), INT_USED_BUFFER);
        let _ = d.w(INTERRUPT_ACK, INT_USED_BUFFER);
        assert!(!d.dev.interrupt_pending());
        assert_eq!(d.dev.backend().counters().tx_frames, 3);
    }
}

#[test]
fn rx_frames_reach_the_guest() {
    let mut d = Driver::ready(ALL_FEATURES);
    let mem = &d.mem;
    assert_eq!(d.dev.deliver_rx(mem, &frame(60, 9)), Ok(false)); // nothing posted yet
    for _ in 0..4 {
        d.post_rx(1526);
    }
    let _ = d.kick(RX_QUEUE);
    let frames = [frame(60, 4), frame(1514, 5), frame(200, 6)];
    for f in &frames {
        assert_eq!(d.dev.deliver_rx(&d.mem, f), Ok(true));
    }
    assert!(d.dev.take_interrupt());
    assert_eq!(d.take_rx(), frames.to_vec());
    // Too big for the posted buffer: returned empty, counted, not an error.
    assert_eq!(d.dev.deliver_rx(&d.mem, &frame(1515, 7)), Ok(false));
    assert!(d.dev.is_running());
    let c = d.dev.backend().counters();
    assert_eq!((c.rx_frames, c.rx_dropped_no_buffer, c.rx_dropped_too_big), (3, 1, 1));
}

#[test]
fn rx_scatters_over_several_writable_buffers() {
    let mut d = Driver::ready(0);
    let q = RX_QUEUE as usize;
    let ds = d.take_descs(q, 3);
    let (a, b, c) = (d.alloc(12), d.alloc(50), d.alloc(2000));
    d.write_desc(q, ds[0], a, 12, F_WRITE | F_NEXT, ds[1]);
    d.write_desc(q, ds[1], b, 50, F_WRITE | F_NEXT, ds[2]);
    d.write_desc(q, ds[2], c, 2000, F_WRITE, 0);
    d.stage(q, ds[0]);
    d.publish(q);
    let f = frame(1000, 8);
    assert_eq!(d.dev.deliver_rx(&d.mem, &f), Ok(true));
    assert_eq!(d.take_used(q), vec![(u32::from(ds[0]), 1012)]);
    let mut got = vec![0u8; 50];
    d.mem.read(b, &mut got).unwrap();
    let mut rest = vec![0u8; 950];
    d.mem.read(c, &mut rest).unwrap();
    got.extend(rest);
    assert_eq!(got, f);
}

#[test]
fn interrupts_are_suppressed_when_the_driver_asks() {
    // Without EVENT_IDX: avail.flags NO_INTERRUPT.
    let mut d = Driver::ready(0);
    d.set_avail_flags(TX_QUEUE as usize, 1);
    d.queue_tx(&frame(60, 0), 4096);
    let _ = d.kick(TX_QUEUE);
    assert!(!d.dev.take_interrupt());
    assert_eq!(d.dev.backend_mut().take_tx_frames().len(), 1);

    // With EVENT_IDX: interrupt only when used.idx passes used_event.
    let mut d = Driver::ready(EVENT_IDX);
    let q = TX_QUEUE as usize;
    d.set_used_event(q, 2); // "interrupt me when entry 2 is used"
    d.queue_tx(&frame(60, 0), 4096);
    d.queue_tx(&frame(60, 1), 4096);
    let _ = d.kick(TX_QUEUE);
    assert!(!d.dev.take_interrupt(), "used.idx 0 -> 2 does not pass event 2");
    d.queue_tx(&frame(60, 2), 4096);
    let _ = d.kick(TX_QUEUE);
    assert!(d.dev.take_interrupt(), "used.idx 2 -> 3 passes event 2");
}

#[test]
fn device_asks_for_no_kicks_while_busy_and_resumes_after() {
    let mut d = Driver::ready(0);
    let q = TX_QUEUE as usize;
    d.queue_tx(&frame(60, 0), 4096);
    let _ = d.kick(TX_QUEUE);
    // Idle again: notifications re-enabled.
    assert_eq!(d.used_flags(q), 0);

    let mut d = Driver::ready(EVENT_IDX);
    for i in 0..5 {
        d.queue_tx(&frame(60, i), 4096);
    }
    let _ = d.kick(TX_QUEUE);
    assert_eq!(d.dev.backend_mut().take_tx_frames().len(), 5);
    // The guest should kick when it publishes entry 5, not before.
    assert_eq!(d.avail_event(q), 5);

    // RX: while buffers are posted the device asks for no refill kicks; when
    // it runs dry it asks again.
    let mut d = Driver::ready(0);
    let rx = RX_QUEUE as usize;
    d.post_rx(2048);
    d.post_rx(2048);
    assert_eq!(d.dev.deliver_rx(&d.mem, &frame(60, 0)), Ok(true));
    assert_eq!(d.used_flags(rx), 1);
    assert_eq!(d.dev.deliver_rx(&d.mem, &frame(60, 0)), Ok(true));
    assert_eq!(d.dev.deliver_rx(&d.mem, &frame(60, 0)), Ok(false));
    assert_eq!(d.used_flags(rx), 0);
}

#[test]
fn tx_backlog_stops_early_and_poll_resumes() {
    let mut d = Driver::ready(EVENT_IDX);
    let mut sent = Vec::new();
    // Three batches without draining: the third overflows TX_BACKLOG_MAX (512).
    for batch in 0..3u8 {
        for i in 0..200u8 {
            let f = frame(64, batch.wrapping_mul(200).wrapping_add(i));
            d.queue_tx(&f, 4096);
            sent.push(f);
        }
        let _ = d.kick(TX_QUEUE);
        let _ = d.take_used(TX_QUEUE as usize);
    }
    assert!(d.dev.backend().tx_backlog());
    let mut got = d.dev.backend_mut().take_tx_frames();
    assert_eq!(got.len(), 512);
    d.dev.poll(&d.mem).unwrap();
    assert!(!d.dev.backend().tx_backlog());
    got.extend(d.dev.backend_mut().take_tx_frames());
    assert_eq!(got, sent);
}

#[test]
fn reset_clears_everything_and_config_change_interrupts() {
    let mut d = Driver::ready(ALL_FEATURES);
    d.dev.config_changed();
    assert!(d.dev.take_interrupt());
    assert_eq!(d.r(INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    assert_eq!(d.r(CONFIG_GENERATION), 1);
    d.queue_tx(&frame(60, 0), 4096);
    let _ = d.kick(TX_QUEUE);
    let out = d.w(STATUS, 0);
    assert!(out.reset);
    assert_eq!(d.r(STATUS), 0);
    assert_eq!(d.r(INTERRUPT_STATUS), 0);
    assert!(d.dev.backend_mut().take_tx_frames().is_empty());
    for q in 0..2 {
        let _ = d.w(QUEUE_SEL, q);
        assert_eq!(d.r(QUEUE_READY), 0);
    }
    // Notifies on a reset device do nothing.
    assert_eq!(d.kick(TX_QUEUE).notified, None);
    assert!(d.dev.backend_mut().reset_is_idempotent());
}

trait ResetCheck {
    fn reset_is_idempotent(&mut self) -> bool;
}

impl ResetCheck for virtio_dev::VirtioNet {
    fn reset_is_idempotent(&mut self) -> bool {
        self.reset();
        self.take_tx_frames().is_empty() && !self.tx_backlog()
    }
}

#[test]
fn tx_backlog_is_bounded_in_bytes() {
    let mut d = Driver::ready(0);
    let sent: Vec<Vec<u8>> = (0..200).map(|i| frame(4000, i as u8)).collect();
    for f in &sent {
        d.queue_tx(f, 4096);
    }
    let _ = d.kick(TX_QUEUE);
    assert!(d.dev.backend().tx_backlog());
    let mut got = d.dev.backend_mut().take_tx_frames();
    assert!(got.len() * 4000 <= virtio_dev::net::TX_BACKLOG_MAX_BYTES + 4000, "{} frames held", got.len());
    for _ in 0..10 {
        d.dev.poll(&d.mem).unwrap();
        got.extend(d.dev.backend_mut().take_tx_frames());
    }
    assert!(!d.dev.backend().tx_backlog());
    assert_eq!(got, sent);
}
