//! Fuzzes the virtio-mmio net device and its virtqueue walker: guest RAM,
//! register accesses, ring edits, notifications and RX deliveries all come
//! from the input. The device must never panic or hang, and must either be
//! live or report DEVICE_NEEDS_RESET consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;
#[path = "common/mmio_driver.rs"]
mod mmio_driver;

use mmio_driver::{ack_interrupt, handshake, raw_access, seeded_ram, write_reg, Input};
use virtio_dev::mmio::regs::*;
use virtio_dev::net::{MAX_FRAME_LEN, RX_QUEUE, TX_QUEUE};
use virtio_dev::{GuestMemory, MmioDevice, VirtioNet};

const MAX_OPS: usize = 512;
/// Received frames are prefixes of this (built once, not per delivery).
static FRAME: [u8; 2000] = {
    let mut f = [0u8; 2000];
    let mut i = 0;
    while i < f.len() {
        f[i] = i as u8;
        i += 1;
    }
    f
};
/// virtio-net features the driver takes: MAC and STATUS.
const NET_FEATURES: u32 = (1 << 5) | (1 << 16);

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mem = seeded_ram(&mut inp);
    let mut dev = MmioDevice::new(VirtioNet::new([2, 0, 0, 0, 0, 1]));
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 9 {
            0 => raw_access(&mut dev, &mem, &mut inp, true),
            1 => raw_access(&mut dev, &mem, &mut inp, false),
            2 => {
                let len = usize::from(inp.u16()) % 2000;
                if dev.deliver_rx(&mem, &FRAME[..len]).is_err() {
                    assert_ne!(dev.status() & DEVICE_NEEDS_RESET, 0);
                }
            }
            3 => {
                let gpa = u64::from(inp.u16());
                let v = inp.u16();
                let _ = mem.write(gpa, &v.to_le_bytes());
            }
            4 => {
                let _ = dev.poll(&mem);
            }
            5 => {
                for f in dev.backend_mut().take_tx_frames() {
                    assert!(!f.is_empty() && f.len() <= MAX_FRAME_LEN);
                }
            }
            6 => handshake(&mut dev, &mem, &mut inp, NET_FEATURES, 2),
            7 => {
                write_reg(&mut dev, &mem, QUEUE_NOTIFY, u32::from(if inp.u8() & 1 == 0 { TX_QUEUE } else { RX_QUEUE }))
            }
            _ => ack_interrupt(&mut dev, &mem),
        }
        assert!(!(dev.is_running() && dev.status() & DEVICE_NEEDS_RESET != 0));
    }
});
