//! The management state on the node's encrypted disk: one postcard-encoded
//! snapshot in a landlord-owned volume (so it is sealed like every volume),
//! written after each change. Layout: magic, length, bytes.

use crate::storage::node::AnyDisk;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use node_logic::Snapshot;
use nodedisk::VolumeHandle;

const MAGIC: &[u8; 8] = b"BMMGMT01";
const SECTOR: usize = 512;

/// Reads the snapshot, if one was ever written.
pub fn load(vol: &mut VolumeHandle<AnyDisk>) -> Result<Option<Snapshot>, String> {
    let mut head = [0u8; SECTOR];
    vol.read(0, &mut head).map_err(|e| format!("{e}"))?;
    if head.get(..8) != Some(MAGIC.as_slice()) {
        return Ok(None);
    }
    let len = head.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(u64::MAX);
    let capacity = vol.capacity_sectors() * SECTOR as u64;
    if len > capacity - 16 {
        return Err(String::from("snapshot length beyond its volume"));
    }
    let total = (16 + len as usize).div_ceil(SECTOR) * SECTOR;
    let mut buf = vec![0u8; total];
    vol.read(0, &mut buf).map_err(|e| format!("{e}"))?;
    let body = buf.get(16..16 + len as usize).ok_or("snapshot truncated")?;
    Snapshot::decode(body).map(Some)
}

/// Writes the snapshot and flushes it to the disk.
pub fn save(vol: &mut VolumeHandle<AnyDisk>, snap: &Snapshot) -> Result<(), String> {
    let body = postcard::to_allocvec(snap).map_err(|e| format!("{e}"))?;
    let total = (16usize + body.len()).div_ceil(SECTOR) * SECTOR;
    if total as u64 > vol.capacity_sectors() * SECTOR as u64 {
        return Err(format!("state of {} bytes does not fit its volume", body.len()));
    }
    let mut buf = vec![0u8; total];
    if let Some(m) = buf.get_mut(..8) {
        m.copy_from_slice(MAGIC);
    }
    if let Some(l) = buf.get_mut(8..16) {
        l.copy_from_slice(&(body.len() as u64).to_le_bytes());
    }
    if let Some(b) = buf.get_mut(16..16 + body.len()) {
        b.copy_from_slice(&body);
    }
    // The body first, then the header sector with the new length: a cut in
    // between leaves the old header pointing at a prefix of equal or newer
    // bytes only if lengths match; postcard then fails to decode and the
    // error is reported rather than half a state used.
    vol.write(0, &buf).map_err(|e| format!("{e}"))?;
    vol.flush().map_err(|e| format!("{e}"))
}
