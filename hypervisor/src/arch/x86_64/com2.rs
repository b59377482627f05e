//! COM2 (16550 at 0x2F8): the landlord's out-of-band management line. The
//! management plane reads and writes it between time slices (polled, no
//! interrupts). Absent on many machines: probed with the scratch register.

use x86::io::{inb, outb};

const BASE: u16 = 0x2F8;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
/// Most bytes taken per poll, so a flood cannot hold the CPU.
const MAX_READ: usize = 4096;
/// Bound on waiting for the transmitter per byte.
const TX_SPINS: u32 = 100_000;

/// The line, once found.
pub struct Com2 {
    _private: (),
}

impl Com2 {
    /// Finds and programs COM2 (115200 8N1, FIFOs on); `None` if there is
    /// no UART at 0x2F8.
    pub fn probe() -> Option<Com2> {
        // SAFETY: COM2's own ports; a missing device ignores writes and
        // reads all-ones, which the scratch test detects.
        unsafe {
            outb(BASE + 7, 0x5A);
            if inb(BASE + 7) != 0x5A {
                return None;
            }
            outb(BASE + 7, 0xA5);
            if inb(BASE + 7) != 0xA5 {
                return None;
            }
            outb(BASE + 1, 0x00);
            outb(BASE + 3, 0x80);
            outb(BASE, 0x01);
            outb(BASE + 1, 0x00);
            outb(BASE + 3, 0x03);
            outb(BASE + 2, 0xC7);
            outb(BASE + 4, 0x03);
        }
        Some(Com2 { _private: () })
    }

    /// Bytes received since the last call.
    pub fn read(&mut self, out: &mut alloc::vec::Vec<u8>) {
        for _ in 0..MAX_READ {
            // SAFETY: reading COM2's LSR and RBR.
            let byte = unsafe {
                if inb(BASE + 5) & LSR_DATA_READY == 0 {
                    break;
                }
                inb(BASE)
            };
            out.push(byte);
        }
    }

    /// Sends bytes (polled; gives up on a byte the line never takes).
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: polling LSR and writing THR of COM2.
            unsafe {
                let mut spins = 0;
                while inb(BASE + 5) & LSR_THR_EMPTY == 0 && spins < TX_SPINS {
                    spins += 1;
                }
                outb(BASE, b);
            }
        }
    }
}
