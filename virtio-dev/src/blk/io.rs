//! Running requests: the queue loop, and data moved between guest RAM and
//! the backend through a bounded bounce buffer.

use alloc::vec;

use super::request::{parse_request, Op, Refusal, Request, S_IOERR, S_OK, S_UNSUPP};
use super::{BlockBackend, BlockError, VirtioBlk, IO_CHUNK, MAX_BYTES_PER_NOTIFY, REQUEST_QUEUE, SECTOR_SIZE};
use crate::memory::GuestMemory;
use crate::queue::{QueueError, Virtqueue};

/// Passes over the ring per notification (each re-checks after re-enabling notifications).
const MAX_PASSES: usize = 4;

/// A position in a list of guest buffers, for gathering and scattering
/// a byte stream across descriptor boundaries.
struct Cursor<'a> {
    list: &'a [(u64, u32)],
    /// Bytes already consumed of `list[0]`.
    offset: u64,
}

impl<'a> Cursor<'a> {
    fn new(list: &'a [(u64, u32)]) -> Self {
        Self { list, offset: 0 }
    }

    /// Visits the next `n` bytes as guest ranges. Running out early is a
    /// device-model bug (lengths were checked by the parser): reported, not hidden.
    fn advance(
        &mut self,
        mut n: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let mut done = 0usize;
        while n > 0 {
            let Some((&(gpa, len), rest)) = self.list.split_first() else { return Err(QueueError::TooManyBytes) };
            let room = u64::from(len).saturating_sub(self.offset);
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(n);
            // offset < len and the walk checked gpa + len does not wrap; a
            // wrapped address from a hand-built chain is refused by GuestMemory.
            if take > 0 {
                f(gpa.wrapping_add(self.offset), done, take)?;
            }
            done += take;
            n -= take;
            self.offset += take as u64;
            if self.offset >= u64::from(len) {
                self.list = rest;
                self.offset = 0;
            }
        }
        Ok(())
    }

    /// Fills `buf` from guest RAM.
    fn gather(&mut self, mem: &dyn GuestMemory, buf: &mut [u8]) -> Result<(), QueueError> {
        self.advance(buf.len(), |gpa, at, n| {
            let part = buf.get_mut(at..at + n).ok_or(QueueError::TooManyBytes)?;
            Ok(mem.read(gpa, part)?)
        })
    }

    /// Copies `data` into guest RAM.
    fn scatter(&mut self, mem: &dyn GuestMemory, data: &[u8]) -> Result<(), QueueError> {
        self.advance(data.len(), |gpa, at, n| {
            let part = data.get(at..at + n).ok_or(QueueError::TooManyBytes)?;
            Ok(mem.write(gpa, part)?)
        })
    }
}

/// How a request ended, as far as the guest and the counters are concerned.
enum Outcome {
    /// Status OK; `data` bytes were moved.
    Ok { data: u64 },
    /// Status IOERR; `integrity` if a sector failed authentication.
    IoError { integrity: bool },
    /// Status UNSUPP.
    Unsupported,
}

impl From<BlockError> for Outcome {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::Io => Self::IoError { integrity: false },
            BlockError::Integrity => Self::IoError { integrity: true },
            BlockError::Unsupported => Self::Unsupported,
        }
    }
}

impl<B: BlockBackend> VirtioBlk<B> {
    /// Takes available requests with notifications off meanwhile, so a busy
    /// guest need not exit per request. Work is bounded by the queue size in
    /// requests and [`MAX_BYTES_PER_NOTIFY`] in data; what is left sets `backlog`.
    pub(super) fn process(&mut self, queues: &mut [Virtqueue], mem: &dyn GuestMemory) -> Result<(), QueueError> {
        let Some(q) = queues.get_mut(usize::from(REQUEST_QUEUE)) else { return Ok(()) };
        let mut requests = usize::from(q.size());
        let mut bytes = 0u64;
        self.backlog = false;
        for _ in 0..MAX_PASSES {
            q.set_notifications(mem, false)?;
            while requests > 0 && bytes < MAX_BYTES_PER_NOTIFY {
                let Some(chain) = q.pop(mem)? else { break };
                requests -= 1;
                bytes += chain.readable_len() + chain.writable_len();
                let request = parse_request(&chain, mem, self.backend.capacity_sectors(), self.backend.read_only())?;
                let written = self.execute(&request, mem)?;
                q.push_used(mem, chain.head(), written)?;
            }
            q.set_notifications(mem, true)?;
            if !q.has_available(mem)? {
                return Ok(());
            }
            if requests == 0 || bytes >= MAX_BYTES_PER_NOTIFY {
                break;
            }
        }
        self.backlog = true;
        Ok(())
    }

    /// Runs one parsed request, writes its status, counts it, and returns the
    /// used length: the bytes written into guest RAM (data and status).
    fn execute(&mut self, request: &Request, mem: &dyn GuestMemory) -> Result<u32, QueueError> {
        let (outcome, data_written) = match &request.op {
            Op::Read { sector, data, len } => match self.read(*sector, data, *len, mem)? {
                Ok(()) => (Outcome::Ok { data: *len }, *len),
                Err(e) => (e.into(), 0),
            },
            Op::Write { sector, data, len } => match self.write(*sector, data, *len, mem)? {
                Ok(()) => (Outcome::Ok { data: *len }, 0),
                Err(e) => (e.into(), 0),
            },
            Op::Flush => match self.backend.flush() {
                Ok(()) => (Outcome::Ok { data: 0 }, 0),
                Err(e) => (e.into(), 0),
            },
            Op::GetId { data, len } => {
                let id = self.backend.device_id();
                let part = id.get(..usize::try_from(*len).unwrap_or(0)).unwrap_or(&[]);
                Cursor::new(data).scatter(mem, part)?;
                (Outcome::Ok { data: 0 }, *len)
            }
            Op::Refuse(Refusal::Unsupported(_)) => (Outcome::Unsupported, 0),
            Op::Refuse(_) => (Outcome::IoError { integrity: false }, 0),
        };
        let c = &mut self.counters;
        let status = match outcome {
            Outcome::Ok { data } => {
                match &request.op {
                    Op::Read { .. } => {
                        c.reads += 1;
                        c.bytes_read += data;
                    }
                    Op::Write { .. } => {
                        c.writes += 1;
                        c.bytes_written += data;
                    }
                    Op::Flush => c.flushes += 1,
                    Op::GetId { .. } | Op::Refuse(_) => {}
                }
                S_OK
            }
            Outcome::IoError { integrity } => {
                c.io_errors += 1;
                c.integrity_errors += u64::from(integrity);
                S_IOERR
            }
            Outcome::Unsupported => {
                c.unsupported += 1;
                S_UNSUPP
            }
        };
        mem.write(request.status_gpa, &[status])?;
        // data_written <= MAX_CHAIN_BYTES, which fits in u32.
        Ok(u32::try_from(data_written + 1).unwrap_or(u32::MAX))
    }

    /// Reads `len` bytes at `sector` into the guest buffers, one chunk at a
    /// time. The outer `Err` is a broken ring; the inner one a storage error,
    /// after which nothing more is copied to the guest.
    fn read(
        &mut self,
        sector: u64,
        data: &[(u64, u32)],
        len: u64,
        mem: &dyn GuestMemory,
    ) -> Result<Result<(), BlockError>, QueueError> {
        let mut bounce = vec![0u8; chunk_for(len)];
        let mut cursor = Cursor::new(data);
        let mut done = 0u64;
        while done < len {
            let n = chunk_len(len - done, bounce.len());
            let buf = bounce.get_mut(..n).ok_or(QueueError::TooManyBytes)?;
            if let Err(e) = self.backend.read(sector + done / SECTOR_SIZE as u64, buf) {
                return Ok(Err(e));
            }
            cursor.scatter(mem, buf)?;
            done += n as u64;
        }
        Ok(Ok(()))
    }

    /// Writes `len` bytes from the guest buffers at `sector`, one chunk at a time.
    fn write(
        &mut self,
        sector: u64,
        data: &[(u64, u32)],
        len: u64,
        mem: &dyn GuestMemory,
    ) -> Result<Result<(), BlockError>, QueueError> {
        let mut bounce = vec![0u8; chunk_for(len)];
        let mut cursor = Cursor::new(data);
        let mut done = 0u64;
        while done < len {
            let n = chunk_len(len - done, bounce.len());
            let buf = bounce.get_mut(..n).ok_or(QueueError::TooManyBytes)?;
            cursor.gather(mem, buf)?;
            if let Err(e) = self.backend.write(sector + done / SECTOR_SIZE as u64, buf) {
                return Ok(Err(e));
            }
            done += n as u64;
        }
        Ok(Ok(()))
    }
}

/// Bounce buffer size for a request of `len` bytes: no larger than needed.
fn chunk_for(len: u64) -> usize {
    usize::try_from(len).unwrap_or(IO_CHUNK).min(IO_CHUNK)
}

/// Bytes for the next backend call: `left` capped at `chunk` (both multiples of 512).
fn chunk_len(left: u64, chunk: usize) -> usize {
    usize::try_from(left).unwrap_or(chunk).min(chunk)
}
