//! Protected volumes as the facility replicates them: the primary exports
//! its volume secret and hands out changed ciphertext blocks; the partner
//! holds a replica volume opened by that secret and writes those blocks
//! verbatim; promotion gives the replica a key of its own
//! (docs/fleet.md, "Replication"). Nothing here sees plaintext.

use super::node::{random, sectors, Storage};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use nodedisk::{LeaseId, VolumeSecret, BLOCK_SIZE};

/// A replica region block: its index and its ciphertext.
pub type CipherBlock = (u64, Vec<u8>);

impl Storage {
    fn exists(&self, name: &str) -> bool {
        self.disk.lock().list().iter().any(|v| v.name == name)
    }

    /// The secret of a protected VM's volume (created empty if the VM has
    /// not run yet) for its partner; from now on its changes are tracked,
    /// all of it pending first (the partner starts from nothing).
    pub fn replica_secret(&mut self, name: &str, lease: u32, mib: u32) -> Result<Vec<u8>, String> {
        if !self.exists(name) {
            drop(self.volume_for_lease(name, lease, mib)?);
        }
        let mut disk = self.disk.lock();
        let secret = disk.export_volume_secret(name).map_err(|e| format!("volume {name}: {e}"))?;
        disk.track_dirty(name, true).map_err(|e| format!("volume {name}: {e}"))?;
        disk.mark_dirty_all(name).map_err(|e| format!("volume {name}: {e}"))?;
        Ok(secret.to_bytes().to_vec())
    }

    /// Creates the replica volume `name` that `secret` opens, for disk
    /// lease `lease`; a replica already there for the same secret is kept
    /// (with what it holds), one for another secret is replaced.
    pub fn replica_open(&mut self, name: &str, lease: u32, mib: u32, secret: &[u8]) -> Result<(), String> {
        let secret = VolumeSecret::from_bytes(secret).map_err(|e| format!("volume secret: {e}"))?;
        if secret.sectors != sectors(mib) {
            return Err(format!("volume secret: {} sectors, the VM's disk has {}", secret.sectors, sectors(mib)));
        }
        let mut disk = self.disk.lock();
        if disk.list().iter().any(|v| v.name == name) {
            let same = disk.export_volume_secret(name).is_ok_and(|have| {
                have.volume_id == secret.volume_id && have.key() == secret.key() && have.key_epoch == secret.key_epoch
            });
            if same {
                return Ok(());
            }
            disk.delete_volume(name).map_err(|e| format!("replacing replica {name}: {e}"))?;
        }
        disk.create_replica_volume(name, LeaseId(lease), &secret, &random()?)
            .map_err(|e| format!("replica {name}: {e}"))?;
        drop(disk);
        crate::log!("disk: replica volume {name} ({mib} MiB) for cluster {lease}");
        Ok(())
    }

    /// Up to `max` changed blocks of a protected volume (index, ciphertext),
    /// data before records, and how many stay pending. `resync` marks the
    /// whole volume pending first. A read failure puts the batch back.
    pub fn replica_pull(&mut self, name: &str, max: usize, resync: bool) -> Result<(Vec<CipherBlock>, u64), String> {
        let mut disk = self.disk.lock();
        let err = |e: nodedisk::DiskError| format!("volume {name}: {e}");
        if !disk.is_tracking_dirty(name) {
            // First pull since the node booted: the partner's state is unknown.
            disk.track_dirty(name, true).map_err(err)?;
            disk.mark_dirty_all(name).map_err(err)?;
        } else if resync {
            disk.mark_dirty_all(name).map_err(err)?;
        }
        let batch = disk.take_dirty(name, max).map_err(err)?;
        let mut out = Vec::with_capacity(batch.blocks.len());
        for &index in &batch.blocks {
            let mut buf = vec![0u8; BLOCK_SIZE];
            if let Err(e) = disk.read_replica_blocks(name, index, &mut buf) {
                let _ = disk.mark_dirty(name, &batch.blocks);
                return Err(err(e));
            }
            out.push((index, buf));
        }
        Ok((out, batch.remaining))
    }

    /// Writes ciphertext blocks into replica `name`, in the order given.
    pub fn replica_push(&mut self, name: &str, blocks: &[(u64, &[u8])]) -> Result<(), String> {
        let mut disk = self.disk.lock();
        for (index, bytes) in blocks {
            disk.write_replica_blocks(name, *index, bytes).map_err(|e| format!("replica {name}: {e}"))?;
        }
        Ok(())
    }

    /// Promotes replica `name` to a volume of its own: a fresh volume key
    /// (its data kept), after which its handles write.
    pub fn replica_promote(&mut self, name: &str) -> Result<(), String> {
        let mut disk = self.disk.lock();
        disk.rekey_volume(name, &random()?).map_err(|e| format!("promoting {name}: {e}"))?;
        Ok(())
    }

    /// Free space for new volumes, in MiB.
    pub fn free_mib(&self) -> u64 {
        (self.disk.lock().free_blocks() * BLOCK_SIZE as u64) >> 20
    }
}
