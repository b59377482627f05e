//! Turning one descriptor chain into a checked block request (spec 5.2.6).
//!
//! Layout, whatever the descriptor boundaries (spec 2.6.4: the device must
//! not assume any): the device-readable bytes are the 16-byte header
//! `{type: le32, reserved: le32, sector: le64}` followed, for OUT, by the
//! data; the device-writable bytes are, for IN and GET_ID, the data followed
//! by one status byte, always the last writable byte.
//!
//! [`parse_request`] is pure apart from reading the header through
//! [`GuestMemory`]: it decides everything (ranges, lengths, type) before any
//! storage is touched, so a refused request has no side effect but its status.

use alloc::vec::Vec;

use super::SECTOR_SIZE;
use crate::memory::GuestMemory;
use crate::queue::{DescriptorChain, QueueError};

/// Length of `struct virtio_blk_req`'s header.
pub const HEADER_LEN: u64 = 16;
/// Length of the serial returned by VIRTIO_BLK_T_GET_ID.
pub const ID_LEN: u64 = 20;

/// Request type: read sectors (device writes guest memory).
pub const T_IN: u32 = 0;
/// Request type: write sectors (device reads guest memory).
pub const T_OUT: u32 = 1;
/// Request type: make completed writes durable.
pub const T_FLUSH: u32 = 4;
/// Request type: read the 20-byte device serial.
pub const T_GET_ID: u32 = 8;

/// Status byte: success.
pub const S_OK: u8 = 0;
/// Status byte: the request failed (bad range, bad layout, storage or integrity error).
pub const S_IOERR: u8 = 1;
/// Status byte: the request type is not supported.
pub const S_UNSUPP: u8 = 2;

/// The queue error reported for a chain with no device-writable byte at all:
/// there is nowhere to put a status, so the request cannot be completed and
/// the device asks for a reset (as QEMU does). The transport has no
/// block-specific variant; this one names the closest fault, a chain whose
/// readable/writable split is wrong.
pub const NO_STATUS_BYTE: QueueError = QueueError::BadRequest;

/// Guest buffers as `(guest-physical address, length)`, in order.
pub type Segments = Vec<(u64, u32)>;

/// What the device will do for one checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes from `sector` into `data` (the writable bytes before the status).
    Read {
        /// First sector.
        sector: u64,
        /// Destination in guest RAM.
        data: Segments,
        /// Total bytes, a multiple of 512, inside the disk.
        len: u64,
    },
    /// Write `len` bytes from `data` (the readable bytes after the header) at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Source in guest RAM.
        data: Segments,
        /// Total bytes, a multiple of 512, inside the disk.
        len: u64,
    },
    /// Flush the backend.
    Flush,
    /// Write up to 20 bytes of serial into `data`.
    GetId {
        /// Destination in guest RAM.
        data: Segments,
        /// Bytes to write: min(20, room before the status byte).
        len: u64,
    },
    /// Complete at once with a failure status; storage is not touched.
    Refuse(Refusal),
}

/// Why a request was refused without touching storage; each maps to a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Fewer than 16 device-readable bytes (e.g. a writable header).
    HeaderTooShort,
    /// An unknown or unimplemented request type.
    Unsupported(u32),
    /// IN/OUT data not a multiple of 512 bytes, or buffers of the wrong direction.
    BadLength,
    /// `sector + len / 512` beyond the disk (or overflowing).
    OutOfRange,
    /// OUT on a read-only disk.
    ReadOnly,
}

impl Refusal {
    /// The status byte the guest gets.
    pub fn status(self) -> u8 {
        match self {
            Self::Unsupported(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// One parsed request: where its status goes and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Guest-physical address of the status byte (the last writable byte).
    pub status_gpa: u64,
    /// The operation, or the refusal.
    pub op: Op,
}

/// The first `n` bytes of `list` and what follows them. `n` must not exceed
/// the total; what is past the end is simply absent.
fn split_at(list: &[(u64, u32)], n: u64) -> (Segments, Segments) {
    let (mut front, mut back) = (Vec::new(), Vec::new());
    let mut left = n;
    for &(gpa, len) in list {
        let len64 = u64::from(len);
        if left >= len64 {
            front.push((gpa, len));
            left -= len64;
        } else if left == 0 {
            back.push((gpa, len));
        } else {
            // 0 < left < len <= u32::MAX. The walk checked that gpa + len does
            // not wrap; if a caller broke that, the wrapped address is refused
            // by GuestMemory when used.
            let cut = left as u32;
            front.push((gpa, cut));
            back.push((gpa.wrapping_add(left), len - cut));
            left = 0;
        }
    }
    (front, back)
}

/// Reads the 16-byte header gathered from the front of the readable buffers.
fn read_header(readable: &[(u64, u32)], mem: &dyn GuestMemory) -> Result<[u8; 16], QueueError> {
    let mut header = [0u8; 16];
    let mut rest = header.as_mut_slice();
    for &(gpa, len) in readable {
        if rest.is_empty() {
            break;
        }
        let n = usize::try_from(len).unwrap_or(usize::MAX).min(rest.len());
        let (now, later) = rest.split_at_mut(n);
        mem.read(gpa, now)?;
        rest = later;
    }
    Ok(header)
}

/// Checks that `len` bytes at `sector` are whole sectors inside a disk of `capacity` sectors.
fn check_range(sector: u64, len: u64, capacity: u64) -> Result<(), Refusal> {
    if !len.is_multiple_of(SECTOR_SIZE as u64) {
        return Err(Refusal::BadLength);
    }
    match sector.checked_add(len / SECTOR_SIZE as u64) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(Refusal::OutOfRange),
    }
}

/// Parses and checks one chain for a disk of `capacity` sectors.
///
/// `Err` only when the chain has no device-writable byte to carry a status
/// ([`NO_STATUS_BYTE`]) or the header is not in guest RAM; every other
/// malformation is an [`Op::Refuse`] that the device completes with IOERR or
/// UNSUPP.
pub fn parse_request(
    chain: &DescriptorChain,
    mem: &dyn GuestMemory,
    capacity: u64,
    read_only: bool,
) -> Result<Request, QueueError> {
    let Some(&(last_gpa, last_len)) = chain.writable.last() else { return Err(NO_STATUS_BYTE) };
    // The queue walk gives non-empty, non-wrapping buffers; a chain built
    // another way is checked rather than trusted.
    let status_gpa = last_gpa
        .checked_add(u64::from(last_len))
        .and_then(|end| end.checked_sub(1))
        .filter(|_| last_len != 0)
        .ok_or(QueueError::BadAddress { gpa: last_gpa })?;
    let in_len = chain.writable_len().saturating_sub(1);
    let (in_data, _) = split_at(&chain.writable, in_len);
    let refuse = |r| Ok(Request { status_gpa, op: Op::Refuse(r) });

    let readable_len = chain.readable_len();
    if readable_len < HEADER_LEN {
        return refuse(Refusal::HeaderTooShort);
    }
    let header = read_header(&chain.readable, mem)?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let kind = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let out_len = readable_len - HEADER_LEN;

    let op = match kind {
        T_IN => {
            if out_len != 0 {
                return refuse(Refusal::BadLength);
            }
            if let Err(r) = check_range(sector, in_len, capacity) {
                return refuse(r);
            }
            Op::Read { sector, data: in_data, len: in_len }
        }
        T_OUT => {
            if in_len != 0 {
                return refuse(Refusal::BadLength);
            }
            if let Err(r) = check_range(sector, out_len, capacity) {
                return refuse(r);
            }
            if read_only {
                return refuse(Refusal::ReadOnly);
            }
            let (_, data) = split_at(&chain.readable, HEADER_LEN);
            Op::Write { sector, data, len: out_len }
        }
        // Extra buffers on FLUSH carry nothing the device needs; they are ignored.
        T_FLUSH => Op::Flush,
        T_GET_ID => {
            let len = in_len.min(ID_LEN);
            let (data, _) = split_at(&in_data, len);
            Op::GetId { data, len }
        }
        other => return refuse(Refusal::Unsupported(other)),
    };
    Ok(Request { status_gpa, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn split_at_cuts_inside_and_between_buffers() {
        let list = [(100, 10), (200, 6), (300, 4)];
        assert_eq!(split_at(&list, 0), (vec![], list.to_vec()));
        assert_eq!(split_at(&list, 10), (vec![(100, 10)], vec![(200, 6), (300, 4)]));
        assert_eq!(split_at(&list, 12), (vec![(100, 10), (200, 2)], vec![(202, 4), (300, 4)]));
        assert_eq!(split_at(&list, 20), (list.to_vec(), vec![]));
    }

    #[test]
    fn range_check_handles_overflow() {
        assert_eq!(check_range(0, 1024, 2), Ok(()));
        assert_eq!(check_range(1, 1024, 2), Err(Refusal::OutOfRange));
        assert_eq!(check_range(2, 0, 2), Ok(()));
        assert_eq!(check_range(3, 0, 2), Err(Refusal::OutOfRange));
        assert_eq!(check_range(u64::MAX, 512, u64::MAX), Err(Refusal::OutOfRange));
        assert_eq!(check_range(0, 511, 2), Err(Refusal::BadLength));
    }
}
