//! virtio-blk through the virtio-mmio registers: handshake, config space,
//! IN/OUT/FLUSH/GET_ID round trips, and every refusal the parser makes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod blkdrv;

use blkdrv::*;
use virtio_dev::blk::{self as vblk, *};
use virtio_dev::features::{EVENT_IDX, INDIRECT_DESC, VERSION_1};
use virtio_dev::mmio::regs::{self, *};
use virtio_dev::{GuestMemory, QueueError};

const SECTORS: u64 = 128;
const ALL: u64 = EVENT_IDX | INDIRECT_DESC;

#[test]
fn identity_features_and_config_layout() {
    let mut d = BlkDriver::new(SECTORS);
    assert_eq!(d.r(regs::DEVICE_ID), vblk::DEVICE_ID);
    assert_eq!(d.features(), VERSION_1 | F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | EVENT_IDX | INDIRECT_DESC);
    // struct virtio_blk_config: capacity @0, size_max @8, seg_max @12, geometry @16, blk_size @20.
    assert_eq!(d.dev.read(CONFIG, 4), SECTORS as u32);
    assert_eq!(d.dev.read(CONFIG + 4, 4), 0);
    assert_eq!(d.dev.read(CONFIG + 8, 4), 64 * 1024);
    assert_eq!(d.dev.read(CONFIG + 12, 4), u32::from(QUEUE_SIZE) - 2);
    assert_eq!(d.dev.read(CONFIG + 16, 4), 0);
    assert_eq!(d.dev.read(CONFIG + 20, 4), 512);
    assert_eq!(d.dev.read(CONFIG + 20, 2), 512);
    assert_eq!(d.dev.read(CONFIG + 21, 1), 2);
    assert_eq!(d.dev.read(CONFIG + 24, 4), 0);
    assert_eq!(d.dev.read(CONFIG + 0x80, 4), 0);
    // Config writes are ignored.
    let _ = d.dev.write(CONFIG, 4, 7, &d.mem);
    assert_eq!(d.dev.read(CONFIG, 4), SECTORS as u32);
    // One queue of 256.
    let _ = d.w(QUEUE_SEL, 0);
    assert_eq!(d.r(QUEUE_NUM_MAX), 256);
    let _ = d.w(QUEUE_SEL, 1);
    assert_eq!(d.r(QUEUE_NUM_MAX), 0);
    // A large disk: capacity is a full u64.
    let big = VirtioBlk::new(MemBackend::new(0, ID));
    let mut buf = [0u8; 8];
    virtio_dev::DeviceBackend::read_config(&big, 0, &mut buf);
    assert_eq!(buf, [0; 8]);
}

#[test]
fn read_only_backend_offers_ro_and_refuses_writes() {
    let mut b = MemBackend::new(SECTORS, ID);
    b.set_read_only(true);
    let mut d = BlkDriver::with_backend(b);
    assert_ne!(d.features() & F_RO, 0);
    assert!(d.handshake(VERSION_1 | F_RO | F_FLUSH));
    assert_eq!(d.write_sectors(0, &pattern(512, 1)), S_IOERR);
    assert!(d.dev.backend().backend().bytes().iter().all(|&b| b == 0));
    let (status, data, _) = d.read_sectors(0, 512);
    assert_eq!((status, data), (S_OK, vec![0; 512]));
    assert_eq!(d.dev.backend().counters().io_errors, 1);
}

#[test]
fn handshake_and_feature_refusal() {
    let mut d = BlkDriver::new(SECTORS);
    assert!(!d.handshake(F_FLUSH), "VERSION_1 is required");
    assert!(!d.handshake(VERSION_1 | F_RO), "RO is not offered for a writable disk");
    assert!(d.handshake(VERSION_1 | F_FLUSH | F_BLK_SIZE | F_SEG_MAX | F_SIZE_MAX | ALL));
}

#[test]
fn write_then_read_round_trips() {
    for features in [0, EVENT_IDX, INDIRECT_DESC, ALL] {
        let mut d = BlkDriver::ready(SECTORS, features);
        let data = pattern(4096, 3);
        assert_eq!(d.write_sectors(10, &data), S_OK);
        assert_eq!(&d.dev.backend().backend().bytes()[10 * 512..18 * 512], &data[..]);
        let (status, got, used) = d.read_sectors(10, 4096);
        assert_eq!((status, used), (S_OK, 4097));
        assert_eq!(got, data);
        // Last sector of the disk.
        assert_eq!(d.write_sectors(SECTORS - 1, &pattern(512, 9)), S_OK);
        let (status, got, _) = d.read_sectors(SECTORS - 1, 512);
        assert_eq!((status, got), (S_OK, pattern(512, 9)));
        let c = d.dev.backend().counters();
        assert_eq!((c.reads, c.writes, c.bytes_read, c.bytes_written, c.io_errors), (2, 2, 4608, 4608, 0));
        assert!(d.dev.take_interrupt());
    }
}

#[test]
fn data_may_be_split_and_merged_across_descriptors() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    let data = pattern(3 * 512, 5);
    // Header split 10 + 6 with data glued to the second part; data over odd boundaries.
    let mut second = BlkDriver::header(T_OUT, 4)[10..].to_vec();
    second.extend_from_slice(&data[..100]);
    let h1 = d.readable(&BlkDriver::header(T_OUT, 4)[..10]);
    let h2 = d.readable(&second);
    let d2 = d.readable(&data[100..1000]);
    let d3 = d.readable(&data[1000..]);
    let s = d.writable(1);
    assert_eq!(d.run(&[h1, h2, d2, d3, s]), (S_OK, 1));
    // Read back into two buffers, the status byte sharing the second one.
    let h = d.readable(&BlkDriver::header(T_IN, 4));
    let a = d.writable(700);
    let b = d.writable(3 * 512 - 700 + 1);
    assert_eq!(d.run(&[h, a, b]), (S_OK, 3 * 512 + 1));
    let mut got = d.bytes(a);
    got.extend_from_slice(&d.bytes(b)[..3 * 512 - 700]);
    assert_eq!(got, data);
}

#[test]
fn indirect_request_with_many_segments() {
    let mut d = BlkDriver::ready(SECTORS, INDIRECT_DESC);
    let data = pattern(64 * 512, 7);
    let mut bufs = vec![d.readable(&BlkDriver::header(T_OUT, 0))];
    for chunk in data.chunks(512) {
        bufs.push(d.readable(chunk));
    }
    bufs.push(d.writable(1));
    d.submit_indirect(&bufs);
    assert_eq!(d.kick().error, None);
    let used = d.take_used();
    assert_eq!(used.len(), 1);
    assert_eq!(d.byte(bufs.last().unwrap().gpa), S_OK);
    assert_eq!(&d.dev.backend().backend().bytes()[..64 * 512], &data[..]);
}

#[test]
fn large_request_crosses_bounce_chunks() {
    let mut d = BlkDriver::ready(1024, 0);
    let data = pattern(200 * 1024, 11);
    let h = d.readable(&BlkDriver::header(T_OUT, 3));
    let parts: Vec<Buf> = data.chunks(SIZE_MAX as usize).map(|c| d.readable(c)).collect();
    let s = d.writable(1);
    let mut bufs = vec![h];
    bufs.extend(parts);
    bufs.push(s);
    assert_eq!(d.run(&bufs), (S_OK, 1));
    let (status, got, used) = d.read_sectors(3, data.len() as u32);
    assert_eq!((status, used), (S_OK, data.len() as u32 + 1));
    assert_eq!(got, data);
}

#[test]
fn flush_and_get_id() {
    let mut d = BlkDriver::ready(SECTORS, ALL);
    let h = d.readable(&BlkDriver::header(T_FLUSH, 0));
    let s = d.writable(1);
    assert_eq!(d.run(&[h, s]), (S_OK, 1));
    assert_eq!(d.dev.backend().backend().flush_count(), 1);
    assert_eq!(d.dev.backend().counters().flushes, 1);

    let h = d.readable(&BlkDriver::header(T_GET_ID, 0));
    let id = d.writable(20);
    let s = d.writable(1);
    assert_eq!(d.run(&[h, id, s]), (S_OK, 21));
    assert_eq!(d.bytes(id), ID);
    // A bigger buffer gets 20 bytes; a smaller one a prefix.
    let h = d.readable(&BlkDriver::header(T_GET_ID, 0));
    let id = d.writable(33);
    assert_eq!(d.run(&[h, id]), (S_OK, 21));
    assert_eq!(&d.bytes(id)[..20], &ID);
    assert_eq!(d.bytes(id)[20..32], [0xee; 12]);
    let h = d.readable(&BlkDriver::header(T_GET_ID, 0));
    let id = d.writable(5);
    assert_eq!(d.run(&[h, id]), (S_OK, 5));
    assert_eq!(&d.bytes(id)[..4], &ID[..4]);
}

#[test]
fn out_of_range_sector_is_ioerr_and_nothing_is_written() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    assert_eq!(d.write_sectors(SECTORS, &pattern(512, 1)), S_IOERR);
    assert_eq!(d.write_sectors(SECTORS - 1, &pattern(1024, 1)), S_IOERR);
    assert!(d.dev.backend().backend().bytes().iter().all(|&b| b == 0));
    let (status, data, used) = d.read_sectors(SECTORS - 1, 1024);
    assert_eq!((status, used), (S_IOERR, 1));
    assert_eq!(data, vec![0xee; 1024], "nothing written to guest data on error");
    assert_eq!(d.dev.backend().counters().io_errors, 3);
    assert!(d.dev.is_running());
}

#[test]
fn sector_plus_length_overflow_is_ioerr() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    assert_eq!(d.write_sectors(u64::MAX, &pattern(512, 1)), S_IOERR);
    assert_eq!(d.write_sectors(u64::MAX - 1, &pattern(1024, 1)), S_IOERR);
    let (status, _, _) = d.read_sectors(u64::MAX, 512);
    assert_eq!(status, S_IOERR);
    assert!(d.dev.backend().backend().bytes().iter().all(|&b| b == 0));
}

#[test]
fn data_not_a_multiple_of_512_is_ioerr() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    assert_eq!(d.write_sectors(0, &pattern(513, 1)), S_IOERR);
    assert_eq!(d.write_sectors(0, &pattern(100, 1)), S_IOERR);
    let (status, data, used) = d.read_sectors(0, 511);
    assert_eq!((status, used), (S_IOERR, 1));
    assert_eq!(data, vec![0xee; 511]);
    assert!(d.dev.backend().backend().bytes().iter().all(|&b| b == 0));
    // Wrong direction: IN with readable data, OUT with writable data.
    let h = d.readable(&BlkDriver::header(T_IN, 0));
    let extra = d.readable(&[0; 512]);
    let data = d.writable(512);
    let s = d.writable(1);
    assert_eq!(d.run(&[h, extra, data, s]), (S_IOERR, 1));
    let h = d.readable(&BlkDriver::header(T_OUT, 0));
    let data = d.readable(&[1; 512]);
    let junk = d.writable(512);
    let s = d.writable(1);
    assert_eq!(d.run(&[h, data, junk, s]), (S_IOERR, 1));
    assert!(d.dev.backend().backend().bytes().iter().all(|&b| b == 0));
}

#[test]
fn writable_header_is_ioerr_in_the_last_writable_byte() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    let h = d.writable(16);
    d.mem.write(h.gpa, &BlkDriver::header(T_IN, 0)).unwrap();
    let data = d.writable(512);
    let s = d.writable(1);
    assert_eq!(d.run(&[h, data, s]), (S_IOERR, 1));
    assert_eq!(d.bytes(data), vec![0xee; 512]);
    // A header that is too short.
    let h = d.readable(&BlkDriver::header(T_IN, 0)[..15]);
    let s = d.writable(1);
    assert_eq!(d.run(&[h, s]), (S_IOERR, 1));
    assert_eq!(d.dev.backend().counters().io_errors, 2);
}

#[test]
fn missing_status_byte_needs_reset_then_recovers() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    // OUT without any writable buffer: nowhere for a status.
    let h = d.readable(&BlkDriver::header(T_OUT, 0));
    let data = d.readable(&[5; 512]);
    let ro_status = d.readable(&[0xaa]);
    d.submit(&[h, data, ro_status]);
    let out = d.kick();
    assert_eq!(out.error, Some(NO_STATUS_BYTE));
    assert!(d.needs_reset());
    assert!(d.dev.backend().backend().bytes().iter().all(|&b| b == 0), "storage untouched");
    assert_eq!(d.byte(ro_status.gpa), 0xaa);
    assert!(d.dev.take_interrupt());
    // The device is inert until reset, then works.
    assert_eq!(d.kick().notified, None);
    assert!(d.handshake(VERSION_1));
    assert_eq!(d.write_sectors(0, &pattern(512, 2)), S_OK);
}

#[test]
fn status_outside_guest_ram_needs_reset() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    let h = d.readable(&BlkDriver::header(T_FLUSH, 0));
    let s = Buf { gpa: RAM as u64, len: 1, writable: true };
    d.submit(&[h, s]);
    let out = d.kick();
    assert!(matches!(out.error, Some(QueueError::BadAddress { .. })));
    assert!(d.needs_reset());
}

#[test]
fn unsupported_types_get_unsupp() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    for kind in [2u32, 3, 5, 10, 11, 13, 14, u32::MAX] {
        let h = d.readable(&BlkDriver::header(kind, 0));
        let s = d.writable(1);
        assert_eq!(d.run(&[h, s]), (S_UNSUPP, 1), "type {kind}");
    }
    let c = d.dev.backend().counters();
    assert_eq!((c.unsupported, c.io_errors), (8, 0));
    assert!(d.dev.backend().backend().bytes().iter().all(|&b| b == 0));
}

#[test]
fn integrity_error_is_ioerr_never_data() {
    let mut d = BlkDriver::ready(1024, 0);
    let data = pattern(200 * 1024, 4);
    let h = d.readable(&BlkDriver::header(T_OUT, 0));
    let parts: Vec<Buf> = data.chunks(SIZE_MAX as usize).map(|c| d.readable(c)).collect();
    let s = d.writable(1);
    let mut bufs = vec![h];
    bufs.extend(parts);
    bufs.push(s);
    assert_eq!(d.run(&bufs), (S_OK, 1));
    // A bad sector in the third bounce chunk (sectors 256..384).
    d.dev.backend_mut().backend_mut().fail_integrity(300);
    let (status, got, used) = d.read_sectors(0, data.len() as u32);
    assert_eq!((status, used), (S_IOERR, 1));
    // No byte from the failing chunk onward reached the guest.
    assert_eq!(&got[256 * 512..], &vec![0xee; got.len() - 256 * 512][..]);
    // Reads not touching the bad sector still work.
    let (status, got, _) = d.read_sectors(301, 512);
    assert_eq!((status, got), (S_OK, data[301 * 512..302 * 512].to_vec()));
    let (status, _, _) = d.read_sectors(300, 512);
    assert_eq!(status, S_IOERR);
    let c = d.dev.backend().counters();
    assert_eq!((c.integrity_errors, c.io_errors, c.reads), (2, 2, 1));
    assert!(d.dev.is_running());
}

#[test]
fn batch_of_requests_and_interrupt_suppression() {
    let mut d = BlkDriver::ready(SECTORS, EVENT_IDX);
    let mut statuses = Vec::new();
    for i in 0..10u64 {
        let h = d.readable(&BlkDriver::header(T_OUT, i));
        let data = d.readable(&pattern(512, i as u8));
        let s = d.writable(1);
        d.submit(&[h, data, s]);
        statuses.push(s);
    }
    // used_event far ahead: no interrupt.
    d.mem.write(AVAIL + 4 + 2 * 256, &100u16.to_le_bytes()).unwrap();
    assert_eq!(d.kick().error, None);
    assert_eq!(d.take_used().len(), 10);
    assert!(!d.dev.take_interrupt());
    assert!(statuses.iter().all(|s| d.byte(s.gpa) == S_OK));
    // The device asks to be kicked for the next request.
    let mut b = [0u8; 2];
    d.mem.read(USED + 4 + 8 * 256, &mut b).unwrap();
    assert_eq!(u16::from_le_bytes(b), 10);
    for i in 0..10u64 {
        let (status, got, _) = d.read_sectors(i, 512);
        assert_eq!((status, got), (S_OK, pattern(512, i as u8)));
    }
}

#[test]
fn work_per_notify_is_bounded_and_poll_resumes() {
    let mut d = BlkDriver::ready(40 * 512, 0);
    // 40 requests of 256 KiB = 10 MiB: more than one notification's byte budget.
    let data = pattern(256 * 1024, 1);
    let src: Vec<Buf> = data.chunks(SIZE_MAX as usize).map(|c| d.readable(c)).collect();
    for i in 0..40u64 {
        let h = d.readable(&BlkDriver::header(T_OUT, i * 512));
        let s = d.writable(1);
        let mut bufs = vec![h];
        bufs.extend(src.iter().copied());
        bufs.push(s);
        d.submit(&bufs);
    }
    assert_eq!(d.kick().error, None);
    let first = d.take_used().len();
    assert!(first < 40 && first > 0, "{first} done in one notify");
    assert!(d.dev.backend().backlog());
    let mut done = first;
    for _ in 0..10 {
        d.dev.poll(&d.mem).unwrap();
        done += d.take_used().len();
    }
    assert_eq!(done, 40);
    assert!(!d.dev.backend().backlog());
    assert_eq!(d.dev.backend().counters().writes, 40);
}

#[test]
fn oversized_chain_needs_reset() {
    let mut d = BlkDriver::ready(1 << 20, INDIRECT_DESC);
    let h = d.readable(&BlkDriver::header(T_IN, 0));
    let big = Buf { gpa: 0x20_0000, len: MAX_CHAIN_BYTES, writable: true };
    d.submit(&[h, big]);
    assert_eq!(d.kick().error, Some(QueueError::TooManyBytes));
}

#[test]
fn reset_clears_backlog_keeps_counters() {
    let mut d = BlkDriver::ready(SECTORS, 0);
    assert_eq!(d.write_sectors(0, &pattern(512, 1)), S_OK);
    let out = d.w(STATUS, 0);
    assert!(out.reset);
    assert!(!d.dev.backend().backlog());
    assert_eq!(d.dev.backend().counters().writes, 1);
    assert!(d.handshake(VERSION_1));
    let (status, got, _) = d.read_sectors(0, 512);
    assert_eq!((status, got), (S_OK, pattern(512, 1)));
}

#[test]
fn parser_reports_refusals() {
    let mem = virtio_dev::VecMemory::new(0x1000);
    mem.write(0, &BlkDriver::header(T_OUT, 7)).unwrap();
    let mut chain = virtio_dev::DescriptorChain::default();
    chain.readable = vec![(0, 16), (0x100, 1024)];
    chain.writable = vec![(0x800, 1)];
    let req = parse_request(&chain, &mem, 9, false).unwrap();
    assert_eq!(req.status_gpa, 0x800);
    assert_eq!(req.op, Op::Write { sector: 7, data: vec![(0x100, 1024)], len: 1024 });
    assert_eq!(parse_request(&chain, &mem, 8, false).unwrap().op, Op::Refuse(Refusal::OutOfRange));
    assert_eq!(parse_request(&chain, &mem, 9, true).unwrap().op, Op::Refuse(Refusal::ReadOnly));
    chain.writable.clear();
    assert_eq!(parse_request(&chain, &mem, 9, false), Err(NO_STATUS_BYTE));
    chain.writable = vec![(0x800, 4)];
    assert_eq!(parse_request(&chain, &mem, 9, false).unwrap().op, Op::Refuse(Refusal::BadLength));
    assert_eq!(Refusal::Unsupported(3).status(), S_UNSUPP);
    assert_eq!(Refusal::OutOfRange.status(), S_IOERR);
}
