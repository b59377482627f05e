//! Where uploaded images live, and how room for them is handed out.
//!
//! Image bytes never sit whole in the node's heap: each upload gets an
//! extent (a run of 4 KiB blocks) in an [`ImageStore`] — on the node, one
//! encrypted volume of the node disk; without a disk, memory counted
//! against a fixed budget — and chunks are written there as they arrive.
//! [`place`] hands out that space first-fit; the management
//! state keeps each image's extent in its snapshot.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Granularity of image extents.
pub const BLOCK: u64 = 4096;

/// Blocks an image of `size` bytes occupies (at least one).
pub fn blocks_for(size: u64) -> u64 {
    size.div_ceil(BLOCK).max(1)
}

/// A run of blocks in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extent {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub blocks: u64,
}

impl Extent {
    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.blocks)
    }

    fn overlaps(&self, other: &Extent) -> bool {
        self.start < other.end() && other.start < self.end()
    }
}

/// First-fit placement of `blocks` among `used` within `capacity` blocks.
/// `None` when no gap is large enough.
pub fn place(used: &[Extent], blocks: u64, capacity: u64) -> Option<Extent> {
    if blocks == 0 || blocks > capacity {
        return None;
    }
    let mut sorted: Vec<Extent> = used.to_vec();
    sorted.sort_by_key(|e| e.start);
    let mut at = 0u64;
    for e in &sorted {
        if e.start >= at && e.start - at >= blocks {
            break;
        }
        at = at.max(e.end());
    }
    let candidate = Extent { start: at, blocks };
    (candidate.end() <= capacity && !sorted.iter().any(|e| e.overlaps(&candidate))).then_some(candidate)
}

/// Why a store operation failed (shown to the console).
pub type StoreError = String;

/// The bytes behind image extents. `Send` because the management state
/// may be served from another thread (console tests) or CPU.
pub trait ImageStore: Send {
    /// Blocks the store holds in all.
    fn capacity_blocks(&self) -> u64;
    /// Writes `bytes` at byte `offset` of the store.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// Reads `buf.len()` bytes at byte `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Makes written bytes durable (before an upload is acknowledged).
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Forgets an extent's bytes (a cancelled upload, a deleted image).
    fn discard(&mut self, extent: Extent);
    /// Whether a complete image of `size` bytes at `extent` can boot; the
    /// loader's error otherwise. Called once, when the upload completes.
    fn check(&mut self, extent: Extent, size: u64) -> Result<(), StoreError>;
    /// Where the bytes live, for status and errors ("node disk", "memory").
    fn kind(&self) -> &'static str;
}

/// Checks a whole image (the node plugs in its kernel loader).
pub type ImageCheck = fn(&[u8]) -> Result<(), String>;

/// Images in memory, block by block as written: for nodes without a disk
/// and for tests. Only written blocks take memory.
pub struct MemImageStore {
    capacity: u64,
    blocks: BTreeMap<u64, Box<[u8]>>,
    check: ImageCheck,
}

impl MemImageStore {
    /// A store of `capacity` bytes (rounded down to blocks) whose images
    /// are checked with `check`.
    pub fn new(capacity: u64, check: ImageCheck) -> MemImageStore {
        MemImageStore { capacity: capacity / BLOCK, blocks: BTreeMap::new(), check }
    }

    /// Accepts any image (tests of the transfer itself).
    pub fn accept_all(_: &[u8]) -> Result<(), String> {
        Ok(())
    }

    fn span(&self, offset: u64, len: usize) -> Result<(), StoreError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.capacity.saturating_mul(BLOCK) => Ok(()),
            _ => Err(String::from("image store: access beyond its capacity")),
        }
    }
}

impl ImageStore for MemImageStore {
    fn capacity_blocks(&self) -> u64 {
        self.capacity
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.span(offset, bytes.len())?;
        let mut done = 0usize;
        while done < bytes.len() {
            let pos = offset + done as u64;
            let (block, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(bytes.len() - done);
            let b = self.blocks.entry(block).or_insert_with(|| vec![0u8; BLOCK as usize].into_boxed_slice());
            if let (Some(dst), Some(src)) = (b.get_mut(within..within + n), bytes.get(done..done + n)) {
                dst.copy_from_slice(src);
            }
            done += n;
        }
        Ok(())
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.span(offset, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (block, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let n = (BLOCK as usize - within).min(buf.len() - done);
            let Some(dst) = buf.get_mut(done..done + n) else { break };
            match self.blocks.get(&block).and_then(|b| b.get(within..within + n)) {
                Some(src) => dst.copy_from_slice(src),
                None => dst.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn discard(&mut self, extent: Extent) {
        let keys: Vec<u64> = self.blocks.range(extent.start..extent.end()).map(|(k, _)| *k).collect();
        for k in keys {
            self.blocks.remove(&k);
        }
    }

    fn check(&mut self, extent: Extent, size: u64) -> Result<(), StoreError> {
        let len = usize::try_from(size).map_err(|_| String::from("image too large"))?;
        let mut buf = vec![0u8; len];
        self.read(extent.start * BLOCK, &mut buf)?;
        (self.check)(&buf)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_fit_fills_gaps_and_refuses_when_full() {
        let a = place(&[], 4, 10).unwrap();
        assert_eq!(a, Extent { start: 0, blocks: 4 });
        let b = place(&[a], 4, 10).unwrap();
        assert_eq!(b.start, 4);
        assert_eq!(place(&[a, b], 3, 10), None);
        assert_eq!(place(&[a, b], 2, 10), Some(Extent { start: 8, blocks: 2 }));
        // The hole left by `a` takes a smaller image.
        assert_eq!(place(&[b], 3, 10), Some(Extent { start: 0, blocks: 3 }));
        assert_eq!(place(&[], 0, 10), None);
        assert_eq!(place(&[], 11, 10), None);
        assert_eq!(place(&[], 10, 10), Some(Extent { start: 0, blocks: 10 }));
    }

    #[test]
    fn memory_store_round_trips_unaligned_writes() {
        let mut s = MemImageStore::new(64 * 1024, MemImageStore::accept_all);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        s.write(100, &data[..5000]).unwrap();
        s.write(5100, &data[5000..]).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read(100, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(s.write(64 * 1024 - 1, &[1, 2]).is_err());
        s.discard(Extent { start: 0, blocks: 16 });
        s.read(100, &mut back).unwrap();
        assert!(back.iter().all(|b| *b == 0));
    }

    proptest! {
        /// Placed extents never overlap each other and stay within capacity.
        #[test]
        fn placements_never_overlap(sizes in proptest::collection::vec((1u64..20, any::<bool>()), 1..60)) {
            let cap = 100;
            let mut used: Vec<Extent> = Vec::new();
            for (blocks, free_one) in sizes {
                if free_one && !used.is_empty() {
                    used.remove(0);
                }
                if let Some(e) = place(&used, blocks, cap) {
                    prop_assert!(e.end() <= cap);
                    prop_assert!(used.iter().all(|u| !u.overlaps(&e)));
                    used.push(e);
                } else {
                    let free: u64 = cap - used.iter().map(|e| e.blocks).sum::<u64>();
                    // Refused only when no gap fits (free space may be fragmented).
                    prop_assert!(free < blocks || used.len() >= 2);
                }
            }
        }
    }
}
