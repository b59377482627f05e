//! The node's storage: one `nodedisk` layout on the physical virtio-blk
//! disk (or, without one, in memory through the very same encryption
//! path), the key epochs from the config applied at boot, and one
//! encrypted volume per VM that asks for a disk.

use crate::arch::x86_64::acpi::Ecam;
use crate::arch::x86_64::rng;
use crate::drivers::disk::PhysDisk;
use alloc::format;
use alloc::string::{String, ToString};
use nodedisk::{
    is_formatted, BlockDevice, DeviceError, LeaseId, MemDevice, NodeDisk, SealKey, VolumeHandle, BLOCK_SIZE, RANDOM_LEN,
};
use virtio_drivers::transport::DeviceType;
use vmm_config::config::{NodeConfig, VmConfig};

/// The physical disk, or memory when the node has none.
pub enum AnyDisk {
    Phys(alloc::boxed::Box<PhysDisk>),
    Mem(MemDevice),
}

impl BlockDevice for AnyDisk {
    fn block_count(&self) -> u64 {
        match self {
            AnyDisk::Phys(d) => d.block_count(),
            AnyDisk::Mem(d) => d.block_count(),
        }
    }

    fn read_block(&mut self, index: u64, buf: &mut [u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        match self {
            AnyDisk::Phys(d) => d.read_block(index, buf),
            AnyDisk::Mem(d) => d.read_block(index, buf),
        }
    }

    fn write_block(&mut self, index: u64, buf: &[u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        match self {
            AnyDisk::Phys(d) => d.write_block(index, buf),
            AnyDisk::Mem(d) => d.write_block(index, buf),
        }
    }

    fn write_blocks(&mut self, writes: &[(u64, &[u8; BLOCK_SIZE])]) -> Result<(), DeviceError> {
        match self {
            AnyDisk::Phys(d) => d.write_blocks(writes),
            AnyDisk::Mem(d) => d.write_blocks(writes),
        }
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        match self {
            AnyDisk::Phys(d) => d.flush(),
            AnyDisk::Mem(d) => d.flush(),
        }
    }
}

/// The node disk with its key store open.
/// Shared (cloned) by the node loop and the management plane, which
/// reads and writes replica regions; one NodeDisk call at a time. Lock
/// order: this lock, then a volume slot, then the device (a guest's
/// volume handle takes only the last two).
#[derive(Clone)]
pub struct Storage {
    pub(super) disk: alloc::sync::Arc<spin::Mutex<NodeDisk<AnyDisk>>>,
}

pub(super) fn random() -> Result<[u8; RANDOM_LEN], String> {
    let mut r = [0u8; RANDOM_LEN];
    rng::fill(&mut r).map_err(ToString::to_string)?;
    Ok(r)
}

/// A tenant cluster's lease number on the disk (clusters in config order).
fn lease_of(config: &NodeConfig, cluster: &str) -> Option<LeaseId> {
    config.clusters.iter().position(|c| c.name == cluster).map(|i| LeaseId(i as u32 + 1))
}

/// Size of the management plane's state volume.
const STATE_VOLUME_MIB: u32 = 20;
/// Largest image volume (uploaded images; the state's quota is 64 MiB).
const IMAGE_POOL_MIB: u32 = 72;

/// Sectors (512 bytes) of a disk of `mib` MiB.
pub(super) fn sectors(mib: u32) -> u64 {
    u64::from(mib) * 2048
}

impl Storage {
    /// Opens (or formats) the node disk when some VM has a disk; `None`
    /// with the reason logged otherwise.
    pub fn start(ecam: Option<Ecam>, config: &NodeConfig, secret: Option<&[u8]>) -> Option<Storage> {
        let vm_disks = config.vms.iter().any(|v| v.disk.is_some());
        let mgmt_state = config.node.landlord_console_key.is_some();
        let disk_present = || crate::drivers::pci::find_virtio(ecam, DeviceType::Block).is_ok();
        if !(vm_disks || (mgmt_state && disk_present())) {
            return None;
        }
        match Self::try_start(ecam, config, secret) {
            Ok(s) => Some(s),
            Err(why) => {
                crate::log!("disk: unavailable: {why}; VMs with disks will not start");
                None
            }
        }
    }

    fn try_start(ecam: Option<Ecam>, config: &NodeConfig, secret: Option<&[u8]>) -> Result<Storage, String> {
        let secret: [u8; 32] = secret
            .and_then(|s| s.try_into().ok())
            .ok_or("no seal secret in the boot bundle (bmimage adds node.secret when a VM has a disk)")?;
        if !rng::available() {
            return Err("no hardware random source (RDSEED/RDRAND) to generate keys".into());
        }
        // With a TPM, the seal key needs both the provisioning secret and
        // this node's TPM; without one, the secret alone.
        let seal = match crate::drivers::tpm::node_seal_key(&secret)? {
            Some(key) => key,
            None => {
                crate::log!("disk: no TPM; key store sealed with the provisioning secret alone");
                secret
            }
        };
        let seal = SealKey::from_bytes(seal);
        let mut dev = match crate::drivers::pci::find_virtio(ecam, DeviceType::Block) {
            Ok(t) => {
                let d = PhysDisk::new(t).map_err(ToString::to_string)?;
                crate::log!("disk: node disk virtio-blk, {} MiB", (d.block_count() * BLOCK_SIZE as u64) >> 20);
                AnyDisk::Phys(alloc::boxed::Box::new(d))
            }
            Err(why) => {
                // Same layout and encryption, in memory: room for every
                // volume twice over (two slots per sector) plus metadata.
                let want: u64 = config.vms.iter().filter_map(|v| v.disk.as_ref()).map(|d| sectors(d.size_mib)).sum();
                let blocks = want / 8 * 2 + want / 8 / 16 + 1024;
                crate::log!(
                    "disk: no physical disk ({why}); volumes in memory ({} MiB), same encryption path",
                    (blocks * BLOCK_SIZE as u64) >> 20
                );
                AnyDisk::Mem(MemDevice::new(blocks).ok_or("no memory for in-memory volumes")?)
            }
        };
        let formatted = is_formatted(&mut dev).map_err(|e| e.to_string())?;
        let mut disk = if formatted {
            NodeDisk::open(dev, seal, &random()?).map_err(|e| format!("cannot open the node disk: {e}"))?
        } else {
            let d = NodeDisk::format(dev, seal, &random()?).map_err(|e| format!("cannot format the node disk: {e}"))?;
            crate::log!("disk: formatted an empty node disk");
            d
        };
        Self::apply_epochs(&mut disk, config)?;
        Ok(Storage { disk: alloc::sync::Arc::new(spin::Mutex::new(disk)) })
    }

    /// Applies key rotations the config asks for (one step per boot and
    /// key: epochs are raised by one per rotation).
    fn apply_epochs(disk: &mut NodeDisk<AnyDisk>, config: &NodeConfig) -> Result<(), String> {
        let target = 1 + config.storage.landlord_key_epoch;
        if target > disk.landlord_epoch() {
            disk.rotate_landlord_key(&random()?).map_err(|e| format!("landlord key rotation: {e}"))?;
            crate::log!("disk: landlord key rotated (epoch {}): every volume crypto-erased", disk.landlord_epoch());
        }
        for c in &config.clusters {
            let Some(lease) = lease_of(config, &c.name) else { continue };
            let target = if c.tenant_key { 1 + c.tenant_key_epoch } else { 0 };
            let have = disk.tenant_epoch(lease);
            if have == 0 && target >= 1 {
                disk.set_tenant_key(lease, &random()?).map_err(|e| format!("tenant key of {}: {e}", c.name))?;
                crate::log!("disk: tenant key set for cluster {}: its disks now need K_L and K_T", c.name);
            } else if target > have {
                disk.regenerate_tenant_key(lease, &random()?).map_err(|e| format!("tenant key of {}: {e}", c.name))?;
                crate::log!(
                    "disk: tenant key of cluster {} regenerated (epoch {}): its volumes crypto-erased",
                    c.name,
                    disk.tenant_epoch(lease)
                );
            } else if target < have && target == 0 {
                crate::log!("disk: cluster {} has a tenant key on disk; the config cannot remove it (kept)", c.name);
            }
        }
        Ok(())
    }

    /// Size, free space and volume count of the node disk, for status.
    pub fn summary(&self) -> (u64, u64, u64) {
        let blocks = self.disk.lock().header().disk_blocks;
        let free = self.disk.lock().free_blocks();
        let mib = |b: u64| (b * BLOCK_SIZE as u64) >> 20;
        (mib(blocks), mib(free), self.disk.lock().list().len() as u64)
    }

    /// The disk health probe: reads the block holding the node header in
    /// use and checks it decodes to the header the node works with.
    pub fn check_header(&mut self) -> Result<String, String> {
        let header = *self.disk.lock().header();
        let block = header.generation & 1;
        let mut buf = alloc::boxed::Box::new([0u8; BLOCK_SIZE]);
        self.disk
            .lock()
            .device()
            .lock()
            .read_block(block, &mut buf)
            .map_err(|e| format!("reading header block {block}: {e:?}"))?;
        let read = nodedisk::NodeHeader::decode(&buf[..]).map_err(|e| format!("header block {block}: {e:?}"))?;
        if read != header {
            return Err(format!(
                "header block {block} differs from the header in use (generation {} on disk, {} in use)",
                read.generation, header.generation
            ));
        }
        let kind = if self.is_physical() { "virtio-blk" } else { "in-memory" };
        Ok(format!("{kind} header block {block} (generation {}) reads back", header.generation))
    }

    /// A new landlord key pair discards K_L: every volume on the node is
    /// crypto-erased (re-initialised empty under a fresh K_L).
    pub fn rotate_landlord_key(&mut self) -> Result<(), String> {
        self.disk.lock().rotate_landlord_key(&random()?).map_err(|e| format!("landlord key rotation: {e}"))?;
        crate::log!(
            "disk: landlord key rotated (epoch {}): every volume crypto-erased",
            self.disk.lock().landlord_epoch()
        );
        Ok(())
    }

    /// A new tenant key pair discards K_T of that tenant's cluster (disk
    /// lease = cluster number): its volumes are crypto-erased.
    pub fn regenerate_tenant_key(&mut self, cluster: u32) -> Result<(), String> {
        let lease = LeaseId(cluster);
        if self.disk.lock().tenant_epoch(lease) == 0 {
            self.disk.lock().set_tenant_key(lease, &random()?).map_err(|e| format!("tenant key: {e}"))?;
        } else {
            self.disk.lock().regenerate_tenant_key(lease, &random()?).map_err(|e| format!("tenant key: {e}"))?;
        }
        crate::log!(
            "disk: tenant key of cluster {cluster} regenerated (epoch {}): its volumes crypto-erased",
            self.disk.lock().tenant_epoch(lease)
        );
        Ok(())
    }

    /// The management plane's own volume (landlord-owned, under K_L),
    /// created on first use.
    pub fn state_volume(&mut self) -> Result<VolumeHandle<AnyDisk>, String> {
        const NAME: &str = "bm-mgmt-state";
        if !self.disk.lock().list().iter().any(|v| v.name == NAME) {
            self.disk
                .lock()
                .create_volume(NAME, LeaseId(u32::MAX), sectors(STATE_VOLUME_MIB), &random()?)
                .map_err(|e| format!("cannot create the management state volume: {e}"))?;
        }
        self.disk.lock().open_volume(NAME).map_err(|e| format!("cannot open the management state volume: {e}"))
    }

    /// Whether volumes live on a physical disk (not in memory).
    pub fn is_physical(&self) -> bool {
        matches!(&*self.disk.lock().device().lock(), AnyDisk::Phys(_))
    }

    /// The volume holding uploaded images (landlord-owned, under K_L),
    /// created on first use as large as the disk allows up to
    /// `IMAGE_POOL_MIB`, leaving room for VM disks.
    pub fn image_volume(&mut self) -> Result<VolumeHandle<AnyDisk>, String> {
        const NAME: &str = "bm-images";
        if !self.disk.lock().list().iter().any(|v| v.name == NAME) {
            let mut made = None;
            for mib in [IMAGE_POOL_MIB, 48, 32, 16] {
                match self.disk.lock().create_volume(NAME, LeaseId(u32::MAX), sectors(mib), &random()?) {
                    Ok(()) => {
                        made = Some(mib);
                        break;
                    }
                    Err(nodedisk::DiskError::NoSpace { .. }) => continue,
                    Err(e) => return Err(format!("cannot create the image volume: {e}")),
                }
            }
            let mib = made.ok_or("no room on the node disk for an image volume")?;
            crate::log!("disk: created the image volume ({mib} MiB)");
        }
        self.disk.lock().open_volume(NAME).map_err(|e| format!("cannot open the image volume: {e}"))
    }

    /// A volume owned by disk lease `lease` (a cluster number), created on
    /// first use with `mib` MiB: the disks of VMs the consoles create.
    pub fn volume_for_lease(&mut self, name: &str, lease: u32, mib: u32) -> Result<VolumeHandle<AnyDisk>, String> {
        if !(1..=vmm_config::config::MAX_DISK_MIB).contains(&mib) {
            return Err(format!("disk size must be 1 to {} MiB", vmm_config::config::MAX_DISK_MIB));
        }
        if !self.disk.lock().list().iter().any(|v| v.name == name) {
            self.disk
                .lock()
                .create_volume(name, LeaseId(lease), sectors(mib), &random()?)
                .map_err(|e| format!("cannot create volume {name}: {e}"))?;
            crate::log!("disk: created volume {name} ({mib} MiB) for cluster {lease}");
        }
        self.disk.lock().open_volume(name).map_err(|e| format!("cannot open volume {name}: {e}"))
    }

    /// Deletes a volume (its header wiped: unreadable even with K_L).
    pub fn delete_volume(&mut self, name: &str) {
        if self.disk.lock().list().iter().any(|v| v.name == name) {
            match self.disk.lock().delete_volume(name) {
                Ok(()) => crate::log!("disk: deleted volume {name}"),
                Err(e) => crate::log!("disk: cannot delete volume {name}: {e}"),
            }
        }
    }

    /// The VM's volume, created on first use.
    pub fn volume_for(&mut self, config: &NodeConfig, vm: &VmConfig) -> Result<VolumeHandle<AnyDisk>, String> {
        let disk = vm.disk.as_ref().ok_or("VM has no disk")?;
        let cluster = vm.cluster.as_deref().ok_or("a VM with a disk needs a cluster")?;
        let lease = lease_of(config, cluster).ok_or("unknown cluster")?;
        let existing = self.disk.lock().list().into_iter().find(|v| v.name == vm.name);
        match existing {
            Some(v) if v.lease != lease || v.sectors != sectors(disk.size_mib) => {
                return Err(format!(
                    "volume {} exists with another owner or size ({} sectors); delete it first",
                    vm.name, v.sectors
                ));
            }
            Some(_) => {}
            None => {
                self.disk
                    .lock()
                    .create_volume(&vm.name, lease, sectors(disk.size_mib), &random()?)
                    .map_err(|e| format!("cannot create volume {}: {e}", vm.name))?;
                crate::log!("disk: created volume {} ({} MiB) for cluster {}", vm.name, disk.size_mib, cluster);
            }
        }
        self.disk.lock().open_volume(&vm.name).map_err(|e| format!("cannot open volume {}: {e}", vm.name))
    }
}
