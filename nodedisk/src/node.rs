//! The node disk: format/open, keys, volumes.
//!
//! # Crash safety
//!
//! Every structure that changes (key store, volume table) has two copies;
//! an update writes the copy *not* holding the newest valid state, with
//! generation + 1, then flushes. A torn or lost write fails that copy's
//! MAC and the other copy (the old state) wins. Operations are ordered so
//! each crash point leaves the old or the new state:
//!
//! - create: build the volume in free space, then commit the table (before:
//!   the space is still free; after: the volume exists, empty).
//! - delete: commit the table, then wipe the volume's header blocks (its
//!   wrapped volume key): before, the volume is intact; after, it is gone.
//! - rotate / set / regenerate: write the key store twice (so no copy keeps
//!   the discarded key), then re-create every volume whose table entry names
//!   an older key epoch, then commit the table. A crash after the key store
//!   switched leaves volumes marked with old epochs; [`NodeDisk::open`]
//!   re-creates them (they are unreadable anyway: their key is gone). That
//!   is why `open` takes random bytes: fresh volume keys, never re-derived
//!   ones, so a rolled-back table cannot make two volume lives share a key.
//! - rekey: blockcrypt's re-key records its progress in the volume header
//!   and `Volume::open` finishes it; the table does not change.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use blockcrypt::keys::SecretKey;
use blockcrypt::{DiskKey, IntegrityError, LandlordKey, RekeyReport, TenantKey, Volume, VolumeError, VolumeId};
use core::fmt;
use spin::Mutex;
use zeroize::Zeroize;

use crate::crypto::{mac, mac_ok, unwrap, wrap, Entropy, SealKey, RANDOM_LEN};
use crate::header::{NodeHeader, NodeId, NODE_HEADER_LEN, NODE_MAGIC};
use crate::keystore::{landlord_ad, tenant_ad, KeyStore, TenantEntry, MAC_LEN};
use crate::shared::SharedDevice;
use crate::table::{geometry, max_entries, valid_name, VolumeEntry, VolumeTable};
use crate::{BlockDevice, DiskError, FormatError, LeaseId, BLOCK_SIZE, SECTOR_SIZE};

/// Key-store blocks per copy at format: room for 100 tenant keys.
const KEYSTORE_BLOCKS: u32 = 2;
/// Volume-table blocks per copy at format: room for 255 volumes.
const TABLE_BLOCKS: u32 = 8;
const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / SECTOR_SIZE) as u64;

type Vol<D> = Volume<SharedDevice<D>>;
/// An open volume, shared by its [`VolumeHandle`] (strong) and the node's
/// open-volume map (weak). `None` once the volume is deleted. Its lock is
/// the outer one: it may be held while the device is locked, never the
/// other way round (see the crate documentation).
type Slot<D> = Arc<Mutex<Option<Vol<D>>>>;
/// A volume's dirty-block map (`None` while tracking is off), shared by the
/// node and the volume's [`VolumeHandle`]. Its lock comes after the slot's
/// and before the device's.
type DirtyCell = Arc<Mutex<Option<DirtyMap>>>;

mod replica;
use replica::DirtyMap;
pub use replica::{DirtyBatch, VolumeSecret, MAX_DIRTY_BITMAP_BYTES, VOLUME_SECRET_LEN};

/// Whether `dev` carries a node header (either copy has the magic). Only a
/// disk for which this is `false` may be formatted: a damaged or foreign
/// disk is reported by [`NodeDisk::open`], never silently reformatted.
///
/// # Errors
/// [`DiskError::Io`] if the device fails.
pub fn is_formatted<D: BlockDevice>(dev: &mut D) -> Result<bool, DiskError> {
    let n = dev.block_count().min(2);
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    for b in 0..n {
        dev.read_block(b, &mut buf)?;
        if buf.get(..NODE_MAGIC.len()) == Some(&NODE_MAGIC[..]) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One volume as [`NodeDisk::list`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// The lease it belongs to.
    pub lease: LeaseId,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Its block range on the disk.
    pub start_block: u64,
    /// Blocks it occupies (data twice, plus metadata and headers).
    pub blocks: u64,
    /// Whether its disk key includes a tenant key (else `K_L` alone).
    pub tenant_keyed: bool,
    /// Whether a [`VolumeHandle`] for it is alive.
    pub open: bool,
}

/// An opened node disk. Owns the device (shared with open volumes).
pub struct NodeDisk<D: BlockDevice> {
    root: SharedDevice<D>,
    seal: SealKey,
    header: NodeHeader,
    store: KeyStore,
    landlord: LandlordKey,
    tenants: BTreeMap<LeaseId, TenantKey>,
    table: VolumeTable,
    open: BTreeMap<String, Weak<Mutex<Option<Vol<D>>>>>,
    /// Dirty-block maps, one cell per volume opened or tracked since boot
    /// (memory only: tracking does not survive a reboot).
    dirty: BTreeMap<String, DirtyCell>,
}

impl<D: BlockDevice> fmt::Debug for NodeDisk<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeDisk").field("header", &self.header).field("table", &self.table).finish_non_exhaustive()
    }
}

fn read_region<D: BlockDevice>(dev: &mut D, start: u64, blocks: u32) -> Result<Vec<u8>, DiskError> {
    let mut out = vec![0u8; blocks as usize * BLOCK_SIZE];
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    for (i, chunk) in (0u64..).zip(out.chunks_exact_mut(BLOCK_SIZE)) {
        dev.read_block(start + i, &mut buf)?;
        chunk.copy_from_slice(&buf[..]);
    }
    Ok(out)
}

/// Writes `bytes` (whole blocks) at `start`, ordered after every earlier
/// write, and makes it durable.
fn write_region<D: BlockDevice>(dev: &mut D, start: u64, bytes: &[u8]) -> Result<(), DiskError> {
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    dev.barrier()?;
    for (i, chunk) in (0u64..).zip(bytes.chunks(BLOCK_SIZE)) {
        buf.fill(0);
        if let Some(dst) = buf.get_mut(..chunk.len()) {
            dst.copy_from_slice(chunk);
        }
        dev.write_block(start + i, &buf)?;
    }
    dev.flush()?;
    Ok(())
}

/// Puts the region MAC (over node id and everything before it) at the end.
fn seal_region(key: &SecretKey, node: &NodeId, bytes: &mut [u8]) -> Result<(), DiskError> {
    let body = bytes.len().checked_sub(MAC_LEN).ok_or(DiskError::Crypto)?;
    let (data, tag) = bytes.split_at_mut(body);
    tag.copy_from_slice(&mac(key, &[&node.0, data])?);
    Ok(())
}

fn region_mac_ok(key: &SecretKey, node: &NodeId, bytes: &[u8]) -> bool {
    let Some(body) = bytes.len().checked_sub(MAC_LEN) else { return false };
    let (data, tag) = bytes.split_at(body);
    mac_ok(key, &[&node.0, data], tag)
}

/// The valid copies of an A/B region: MAC, structure, and generation
/// parity (copy `g & 1`) all check. Device errors propagate.
fn load_copies<D: BlockDevice, T>(
    dev: &mut D,
    starts: [u64; 2],
    blocks: u32,
    key: &SecretKey,
    node: &NodeId,
    decode: impl Fn(&[u8]) -> Result<T, FormatError>,
    generation: impl Fn(&T) -> u64,
) -> Result<[Option<T>; 2], DiskError> {
    let mut out = [None, None];
    for ((copy, start), slot) in (0u64..).zip(starts).zip(out.iter_mut()) {
        let bytes = read_region(dev, start, blocks)?;
        if !region_mac_ok(key, node, &bytes) {
            continue;
        }
        if let Ok(v) = decode(&bytes) {
            if generation(&v) & 1 == copy {
                *slot = Some(v);
            }
        }
    }
    Ok(out)
}

/// The newer of two optional copies, with the other one.
fn newest<T>(copies: [Option<T>; 2], generation: impl Fn(&T) -> u64) -> Option<(T, Option<T>)> {
    let [a, b] = copies;
    match (a, b) {
        (Some(a), Some(b)) => Some(if generation(&a) >= generation(&b) { (a, Some(b)) } else { (b, Some(a)) }),
        (Some(x), None) | (None, Some(x)) => Some((x, None)),
        (None, None) => None,
    }
}

fn read_header<D: BlockDevice>(dev: &mut D, seal: &SealKey) -> Result<NodeHeader, DiskError> {
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    let (mut any_magic, mut any_decoded, mut any_sealed) = (false, false, false);
    let mut best: Option<NodeHeader> = None;
    for copy in 0..dev.block_count().min(2) {
        dev.read_block(copy, &mut buf)?;
        let h = match NodeHeader::decode(&buf[..]) {
            Ok(h) => h,
            Err(FormatError::BadMagic) => continue,
            Err(_) => {
                any_magic = true;
                continue;
            }
        };
        any_magic = true;
        any_decoded = true;
        if !h.seal_matches(seal)? {
            continue;
        }
        any_sealed = true;
        if h.generation & 1 != copy || !h.mac_valid(seal)? {
            continue;
        }
        if best.is_none_or(|b| h.generation > b.generation) {
            best = Some(h);
        }
    }
    match best {
        Some(h) => Ok(h),
        None if !any_magic => Err(DiskError::NotFormatted),
        None if any_decoded && !any_sealed => Err(DiskError::WrongNode),
        None => Err(DiskError::Corrupt { what: "node header" }),
    }
}

/// A blockcrypt error on volume `name`, as the caller should see it.
fn volume_error(name: &str, e: VolumeError) -> DiskError {
    match e {
        VolumeError::Device(d) => DiskError::Io(d),
        VolumeError::Integrity(IntegrityError { sector, .. }) => {
            DiskError::Integrity { volume: String::from(name), sector: sector.saturating_mul(SECTORS_PER_BLOCK) }
        }
        VolumeError::OutOfRange { sector, count } => DiskError::OutOfRange {
            sector: sector.saturating_mul(SECTORS_PER_BLOCK),
            len: usize::try_from(count).unwrap_or(usize::MAX).saturating_mul(BLOCK_SIZE),
        },
        VolumeError::BadLength { len } => DiskError::BadLength { len },
        VolumeError::CounterExhausted { .. } => DiskError::Exhausted { what: "sector write counter" },
        VolumeError::GenerationExhausted => DiskError::Exhausted { what: "volume header generation" },
        VolumeError::EpochExhausted => DiskError::Exhausted { what: "volume key epoch" },
        VolumeError::ReadOnlyReplica => DiskError::ReadOnlyReplica { volume: String::from(name) },
        VolumeError::DeviceTooSmall { .. }
        | VolumeError::BadSectorCount(_)
        | VolumeError::NoHeader(_)
        | VolumeError::WrongVolume
        | VolumeError::WrongKeyOrTampered
        | VolumeError::RolledBack { .. }
        | VolumeError::Key(_) => DiskError::Corrupt { what: "volume header" },
    }
}

impl<D: BlockDevice> NodeDisk<D> {
    /// Formats an empty disk (first boot): a new node id and landlord key
    /// from `random`, no tenant keys, no volumes. Refuses a disk that
    /// carries a node header ([`is_formatted`]), so a foreign or damaged
    /// disk is never wiped by accident. The header is written last: a
    /// crash part-way leaves an unformatted disk.
    ///
    /// # Errors
    /// [`DiskError::AlreadyFormatted`], [`DiskError::DiskTooSmall`], or device errors.
    pub fn format(mut dev: D, seal_key: SealKey, random: &[u8; RANDOM_LEN]) -> Result<Self, DiskError> {
        if is_formatted(&mut dev)? {
            return Err(DiskError::AlreadyFormatted);
        }
        let root = SharedDevice::whole(Arc::new(Mutex::new(dev)));
        let e = Entropy::new(random);
        let node_id = NodeId(e.id(b"node id")?);
        let mut header = NodeHeader::layout(node_id, root.block_count(), KEYSTORE_BLOCKS, TABLE_BLOCKS)?;
        let mut kl = e.key(b"landlord key")?;
        let landlord = LandlordKey::from_bytes(kl);
        kl.zeroize();
        let wrapped = wrap(&seal_key, landlord.secret(), e.nonce(b"landlord nonce")?, &landlord_ad(&node_id, 1))?;
        let store = KeyStore { generation: 0, landlord_epoch: 1, landlord: wrapped, tenants: Vec::new() };
        let mut node = Self {
            root,
            seal: seal_key,
            header,
            store: store.clone(),
            landlord,
            tenants: BTreeMap::new(),
            table: VolumeTable::default(),
            open: BTreeMap::new(),
            dirty: BTreeMap::new(),
        };
        node.write_store_twice(store)?;
        node.commit_table(VolumeTable::default())?;
        node.commit_table(node.table.clone())?;
        for generation in [1, 2] {
            header.generation = generation;
            header.seal(&node.seal)?;
            let mut block = vec![0u8; BLOCK_SIZE];
            if let Some(dst) = block.get_mut(..NODE_HEADER_LEN) {
                dst.copy_from_slice(&header.encode());
            }
            write_region(&mut node.root, generation & 1, &block)?;
        }
        node.header = header;
        Ok(node)
    }

    /// Opens a formatted disk (later boots) with this node's seal key:
    /// verifies the header, unwraps the keys, loads the volume table, and
    /// finishes a key rotation a crash interrupted (re-creating the volumes
    /// whose keys were discarded; `random` supplies their fresh keys and is
    /// otherwise unused).
    ///
    /// # Errors
    /// [`DiskError::NotFormatted`] (empty disk), [`DiskError::WrongNode`]
    /// (another node's disk, or another seal key), [`DiskError::Corrupt`]
    /// (both copies of a structure bad), or device errors.
    pub fn open(dev: D, seal_key: SealKey, random: &[u8; RANDOM_LEN]) -> Result<Self, DiskError> {
        let mut root = SharedDevice::whole(Arc::new(Mutex::new(dev)));
        let header = read_header(&mut root, &seal_key)?;
        if root.block_count() < header.disk_blocks {
            return Err(DiskError::DiskTooSmall { blocks: root.block_count() });
        }
        let node = header.node_id;
        let corrupt_store = DiskError::Corrupt { what: "key store" };

        let k_store = seal_key.subkey(b"key-store mac")?;
        let starts = [header.keystore_copy(0), header.keystore_copy(1)];
        let copies = load_copies(&mut root, starts, header.keystore_blocks, &k_store, &node, KeyStore::decode, |s| {
            s.generation
        })?;
        let (store, other) = newest(copies, |s| s.generation).ok_or(corrupt_store.clone())?;
        let kl = unwrap(&seal_key, &store.landlord, &landlord_ad(&node, store.landlord_epoch))?
            .ok_or(corrupt_store.clone())?;
        let landlord = LandlordKey::from_bytes(*kl.as_bytes());
        let mut tenants = BTreeMap::new();
        for t in &store.tenants {
            let k = unwrap(&seal_key, &t.key, &tenant_ad(&node, t.lease, t.epoch))?.ok_or(corrupt_store.clone())?;
            tenants.insert(t.lease, TenantKey::from_bytes(*k.as_bytes()));
        }

        let k_table = seal_key.subkey(b"volume-table mac")?;
        let starts = [header.table_copy(0), header.table_copy(1)];
        let decode = |b: &[u8]| {
            let t = VolumeTable::decode(b)?;
            t.check_layout(header.data_start, header.disk_blocks)?;
            Ok(t)
        };
        let copies = load_copies(&mut root, starts, header.table_blocks, &k_table, &node, decode, |t| t.generation)?;
        let (table, _) = newest(copies, |t| t.generation).ok_or(DiskError::Corrupt { what: "volume table" })?;

        let same_keys = other.as_ref().is_some_and(|o| {
            o.landlord_epoch == store.landlord_epoch && o.landlord == store.landlord && o.tenants == store.tenants
        });
        let mut node = Self {
            root,
            seal: seal_key,
            header,
            store: store.clone(),
            landlord,
            tenants,
            table,
            open: BTreeMap::new(),
            dirty: BTreeMap::new(),
        };
        if !same_keys {
            // The other copy is damaged or holds retired keys (a crash
            // between the two writes of an update): overwrite it.
            node.write_store_twice(store)?;
        }
        node.reinit_stale(&Entropy::new(random))?;
        Ok(node)
    }

    /// Closes the node, returning the device.
    ///
    /// # Errors
    /// [`DiskError::Busy`] while a [`VolumeHandle`] is alive.
    pub fn into_device(self) -> Result<D, DiskError> {
        let Self { root, .. } = self;
        let arc = Arc::clone(root.shared());
        drop(root);
        Arc::try_unwrap(arc).map(Mutex::into_inner).map_err(|_| DiskError::Busy)
    }

    /// The shared device (e.g. to flush it, or for tests to tamper with it).
    /// Its lock is the innermost one (see the crate documentation): hold it
    /// only for device calls, and call nothing of this crate meanwhile.
    #[must_use]
    pub fn device(&self) -> &Arc<Mutex<D>> {
        self.root.shared()
    }

    /// The node id (random at format).
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        self.header.node_id
    }

    /// The node header in use.
    #[must_use]
    pub fn header(&self) -> &NodeHeader {
        &self.header
    }

    /// The landlord key epoch (1 at format, +1 per rotation).
    #[must_use]
    pub fn landlord_epoch(&self) -> u32 {
        self.store.landlord_epoch
    }

    /// The tenant key epoch of `lease` (0: no tenant key).
    #[must_use]
    pub fn tenant_epoch(&self, lease: LeaseId) -> u32 {
        self.store.tenant_epoch(lease)
    }

    /// Blocks not used by any volume.
    #[must_use]
    pub fn free_blocks(&self) -> u64 {
        let used: u64 = self.table.entries.iter().map(|e| e.blocks).sum();
        self.header.disk_blocks.saturating_sub(self.header.data_start).saturating_sub(used)
    }

    /// The volumes, in disk order.
    #[must_use]
    pub fn list(&self) -> Vec<VolumeInfo> {
        self.table
            .entries
            .iter()
            .map(|e| VolumeInfo {
                name: e.name.clone(),
                lease: e.lease,
                sectors: e.sectors,
                start_block: e.start_block,
                blocks: e.blocks,
                tenant_keyed: e.tenant_epoch > 0,
                open: self.live(&e.name).is_some(),
            })
            .collect()
    }

    /// Creates an empty volume (reads as zeros) of `sectors` 512-byte
    /// sectors for `lease`, in the first free range that fits. Its disk key
    /// is `K_L` alone while the lease has no tenant key, else `K_L` then `K_T`.
    ///
    /// # Errors
    /// [`DiskError::BadName`], [`DiskError::VolumeExists`], [`DiskError::BadSize`],
    /// [`DiskError::NoSpace`], [`DiskError::TableFull`], or device errors.
    pub fn create_volume(
        &mut self,
        name: &str,
        lease: LeaseId,
        sectors: u64,
        random: &[u8; RANDOM_LEN],
    ) -> Result<(), DiskError> {
        let e = Entropy::new(random);
        let (entry, crypt_sectors) = self.place_volume(name, lease, sectors, || Ok(VolumeId(e.id(b"volume id")?)))?;
        if self.table.entries.iter().any(|x| x.id == entry.id) {
            // 2^-128: the caller's RNG is broken; refuse rather than share keys.
            return Err(DiskError::Crypto);
        }
        let dev = self.volume_device(&entry)?;
        let vol = Volume::create(dev, self.disk_key(&entry)?, crypt_sectors, &e.seed(entry.id)?)
            .map_err(|err| volume_error(name, err))?;
        drop(vol);
        self.commit_new_volume(entry)
    }

    /// The checks and the room every new volume needs (name valid and
    /// unused, size, a table entry free, a free range): its table entry,
    /// with the id `id` gives once all else is known to fit, and its
    /// blockcrypt sector count. Nothing is written.
    pub(crate) fn place_volume(
        &self,
        name: &str,
        lease: LeaseId,
        sectors: u64,
        id: impl FnOnce() -> Result<VolumeId, DiskError>,
    ) -> Result<(VolumeEntry, u64), DiskError> {
        if !valid_name(name.as_bytes()) {
            return Err(DiskError::BadName);
        }
        if self.table.find(name).is_some() {
            return Err(DiskError::VolumeExists);
        }
        let (crypt_sectors, blocks) = geometry(sectors)?;
        if self.table.entries.len() >= max_entries(self.table_len()) {
            return Err(DiskError::TableFull { what: "volume table" });
        }
        let start_block = self
            .table
            .allocate(blocks, self.header.data_start, self.header.disk_blocks)
            .ok_or(DiskError::NoSpace { needed_blocks: blocks })?;
        let entry = VolumeEntry {
            name: String::from(name),
            lease,
            sectors,
            start_block,
            blocks,
            landlord_epoch: self.store.landlord_epoch,
            tenant_epoch: self.store.tenant_epoch(lease),
            id: id()?,
        };
        Ok((entry, crypt_sectors))
    }

    /// The device view of a new volume's range.
    pub(crate) fn volume_device(&self, entry: &VolumeEntry) -> Result<SharedDevice<D>, DiskError> {
        self.root.sub(entry.start_block, entry.blocks).ok_or(DiskError::NoSpace { needed_blocks: entry.blocks })
    }

    /// Commits a volume built in free space: the table is written last, so
    /// after a crash the space is still free or the volume exists.
    pub(crate) fn commit_new_volume(&mut self, entry: VolumeEntry) -> Result<(), DiskError> {
        let mut table = self.table.clone();
        table.insert(entry);
        self.commit_table(table)
    }

    /// Opens a volume for I/O. Several volumes may be open at once; one
    /// volume only once at a time (it belongs to one VM).
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::Busy`], [`DiskError::Corrupt`]
    /// (its header does not verify), or device errors.
    pub fn open_volume(&mut self, name: &str) -> Result<VolumeHandle<D>, DiskError> {
        let entry = self.table.find(name).ok_or(DiskError::NoSuchVolume)?.clone();
        if self.live(name).is_some() {
            return Err(DiskError::Busy);
        }
        if self.is_stale(&entry) {
            // Only after a failed rotation; the next `open` re-creates it.
            return Err(DiskError::Corrupt { what: "volume keys (re-initialisation pending)" });
        }
        let dev = self.root.sub(entry.start_block, entry.blocks).ok_or(DiskError::Corrupt { what: "volume table" })?;
        let vol = Volume::open(dev, self.disk_key(&entry)?, 0).map_err(|e| volume_error(name, e))?;
        if vol.sector_count() != entry.crypt_sectors() || vol.volume_id() != entry.id {
            return Err(DiskError::Corrupt { what: "volume header" });
        }
        let slot = Arc::new(Mutex::new(Some(vol)));
        self.open.insert(String::from(name), Arc::downgrade(&slot));
        let dirty = Arc::clone(self.dirty.entry(String::from(name)).or_default());
        Ok(VolumeHandle {
            name: String::from(name),
            sectors: entry.sectors,
            slot,
            dirty,
            bounce: Box::new([0; BLOCK_SIZE]),
        })
    }

    /// Deletes a volume: removes it from the table, then wipes its header
    /// blocks (its wrapped volume key), so its data is unreadable even with
    /// `K_L`. An open handle to it is revoked (its I/O fails with
    /// [`DiskError::NoSuchVolume`]); a call of that handle in progress on
    /// another CPU is waited for.
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], or device errors.
    pub fn delete_volume(&mut self, name: &str) -> Result<(), DiskError> {
        let entry = self.table.find(name).ok_or(DiskError::NoSuchVolume)?.clone();
        if let Some(slot) = self.live(name) {
            // Slot lock only (dropping the volume does no I/O).
            *slot.lock() = None;
        }
        self.open.remove(name);
        if let Some(cell) = self.dirty.remove(name) {
            *cell.lock() = None;
        }
        let mut table = self.table.clone();
        table.entries.retain(|e| e.name != name);
        self.commit_table(table)?;
        let mut dev =
            self.root.sub(entry.start_block, entry.blocks).ok_or(DiskError::Corrupt { what: "volume table" })?;
        let zero = [0u8; BLOCK_SIZE];
        dev.write_block(0, &zero)?;
        dev.write_block(1, &zero)?;
        dev.flush()?;
        Ok(())
    }

    /// Crypto-erase of the whole node: replaces `K_L` with a new key from
    /// `random` and discards the old one from both key-store copies. Every
    /// volume is then unreadable and is re-initialised (empty, under the
    /// new key; open handles see the empty volume).
    ///
    /// # Errors
    /// [`DiskError::Exhausted`] after 2^32 rotations, or device errors.
    pub fn rotate_landlord_key(&mut self, random: &[u8; RANDOM_LEN]) -> Result<(), DiskError> {
        let e = Entropy::new(random);
        let epoch = self.store.landlord_epoch.checked_add(1).ok_or(DiskError::Exhausted { what: "landlord epoch" })?;
        let mut k = e.key(b"landlord key")?;
        let landlord = LandlordKey::from_bytes(k);
        k.zeroize();
        let mut store = self.store.clone();
        store.landlord_epoch = epoch;
        store.landlord = wrap(
            &self.seal,
            landlord.secret(),
            e.nonce(b"landlord nonce")?,
            &landlord_ad(&self.header.node_id, epoch),
        )?;
        self.write_store_twice(store)?;
        self.landlord = landlord;
        self.reinit_stale(&e)
    }

    /// Sets the first tenant key of `lease` (new, from `random`). Volumes
    /// created for the lease from then on use `K_L` then `K_T`, so the
    /// landlord key alone no longer opens them. The lease's **existing
    /// volumes are re-initialised** (emptied): their old key was `K_L`
    /// alone, and keeping their data would leave it readable to whoever
    /// held `K_L` and an old copy of the disk. Copy data off first if it
    /// matters.
    ///
    /// # Errors
    /// [`DiskError::TenantKeyExists`], [`DiskError::TableFull`] (key store), or device errors.
    pub fn set_tenant_key(&mut self, lease: LeaseId, random: &[u8; RANDOM_LEN]) -> Result<(), DiskError> {
        if self.store.tenant(lease).is_some() {
            return Err(DiskError::TenantKeyExists { lease });
        }
        self.new_tenant_key(lease, 1, random)
    }

    /// Crypto-erase of one lease: replaces its tenant key with a new one
    /// from `random`; the lease's volumes become unreadable and are
    /// re-initialised (empty). Other leases are untouched.
    ///
    /// # Errors
    /// [`DiskError::NoTenantKey`], [`DiskError::Exhausted`], or device errors.
    pub fn regenerate_tenant_key(&mut self, lease: LeaseId, random: &[u8; RANDOM_LEN]) -> Result<(), DiskError> {
        let epoch = self.store.tenant(lease).ok_or(DiskError::NoTenantKey { lease })?.epoch;
        let epoch = epoch.checked_add(1).ok_or(DiskError::Exhausted { what: "tenant epoch" })?;
        self.new_tenant_key(lease, epoch, random)
    }

    fn new_tenant_key(&mut self, lease: LeaseId, epoch: u32, random: &[u8; RANDOM_LEN]) -> Result<(), DiskError> {
        let e = Entropy::new(random);
        let mut k = e.key(b"tenant key")?;
        let tenant = TenantKey::from_bytes(k);
        k.zeroize();
        let ad = tenant_ad(&self.header.node_id, lease, epoch);
        let entry =
            TenantEntry { lease, epoch, key: wrap(&self.seal, tenant.secret(), e.nonce(b"tenant nonce")?, &ad)? };
        let mut store = self.store.clone();
        store.tenants.retain(|t| t.lease != lease);
        let at = store.tenants.iter().position(|t| t.lease > lease).unwrap_or(store.tenants.len());
        store.tenants.insert(at, entry);
        self.write_store_twice(store)?;
        self.tenants.insert(lease, tenant);
        self.reinit_stale(&e)
    }

    /// Re-keys one volume keeping its data: every written sector is
    /// re-encrypted under a fresh volume key (from `random`), wrapped under
    /// the volume's current disk key. Crash-safe (blockcrypt records the
    /// progress; the next open finishes it). Works on an open volume too:
    /// a call of its handle in progress on another CPU is waited for, and
    /// the handle's calls wait while the re-key runs.
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`], [`DiskError::Corrupt`], or device errors.
    pub fn rekey_volume(&mut self, name: &str, random: &[u8; RANDOM_LEN]) -> Result<RekeyReport, DiskError> {
        let entry = self.table.find(name).ok_or(DiskError::NoSuchVolume)?.clone();
        if self.is_stale(&entry) {
            return Err(DiskError::Corrupt { what: "volume keys (re-initialisation pending)" });
        }
        let key = self.disk_key(&entry)?;
        let seed = Entropy::new(random).seed(entry.id)?;
        let done = if let Some(slot) = self.live(name) {
            // Slot lock, then (inside `rekey`, one call at a time) the device lock.
            let mut s = slot.lock();
            let vol = s.as_mut().ok_or(DiskError::NoSuchVolume)?;
            vol.rekey(key, &seed).map_err(|e| volume_error(name, e))
        } else {
            let dev =
                self.root.sub(entry.start_block, entry.blocks).ok_or(DiskError::Corrupt { what: "volume table" })?;
            Volume::open(dev, key.clone(), 0)
                .and_then(|mut vol| vol.rekey(key, &seed))
                .map_err(|e| volume_error(name, e))
        };
        // Every written sector was rewritten (or some, on an error): a
        // tracked volume is all dirty, marked after the writes.
        self.mark_all_if_tracked(name);
        done
    }

    fn table_len(&self) -> usize {
        self.header.table_blocks as usize * BLOCK_SIZE
    }

    fn live(&self, name: &str) -> Option<Slot<D>> {
        self.open.get(name).and_then(Weak::upgrade)
    }

    fn is_stale(&self, e: &VolumeEntry) -> bool {
        e.landlord_epoch != self.store.landlord_epoch || e.tenant_epoch != self.store.tenant_epoch(e.lease)
    }

    /// The volume's disk key from its entry's epochs and the current keys.
    fn disk_key(&self, e: &VolumeEntry) -> Result<DiskKey, DiskError> {
        let tenant = if e.tenant_epoch > 0 {
            Some(self.tenants.get(&e.lease).ok_or(DiskError::NoTenantKey { lease: e.lease })?)
        } else {
            None
        };
        let further: Vec<&TenantKey> = tenant.into_iter().collect();
        DiskKey::derive(&self.landlord, &further, e.id).map_err(|_| DiskError::Crypto)
    }

    /// Re-creates (empty, fresh keys) every volume whose entry names a key
    /// epoch that is no longer current, then commits the table.
    fn reinit_stale(&mut self, e: &Entropy) -> Result<(), DiskError> {
        let mut table = self.table.clone();
        let mut changed = false;
        for entry in table.entries.iter_mut().filter(|x| self.is_stale(x)) {
            entry.landlord_epoch = self.store.landlord_epoch;
            entry.tenant_epoch = self.store.tenant_epoch(entry.lease);
            let key = self.disk_key(entry)?;
            let seed = e.seed(entry.id)?;
            let live = self.live(&entry.name);
            // An open volume's slot stays locked while it is rebuilt (slot
            // lock, then the device lock inside `create`), so its handle
            // waits and then sees the new volume, never a missing one.
            let mut held = live.as_ref().map(|slot| slot.lock());
            if let Some(s) = held.as_mut() {
                // Drop the old volume (and its keys) before rebuilding it.
                **s = None;
            }
            let dev =
                self.root.sub(entry.start_block, entry.blocks).ok_or(DiskError::Corrupt { what: "volume table" })?;
            let vol = Volume::create(dev, key, entry.crypt_sectors(), &seed);
            // Rebuilt (or partly, on an error): a tracked volume is all dirty.
            if let Some(cell) = self.dirty.get(&entry.name) {
                if let Some(map) = cell.lock().as_mut() {
                    map.set_all();
                }
            }
            let vol = vol.map_err(|err| volume_error(&entry.name, err))?;
            if let Some(s) = held.as_mut() {
                **s = Some(vol);
            }
            changed = true;
        }
        if changed {
            self.commit_table(table)?;
        }
        Ok(())
    }

    /// Writes `store` (generation + 1) to the copy after the current one.
    fn write_store(&mut self, mut store: KeyStore) -> Result<(), DiskError> {
        store.generation =
            self.store.generation.checked_add(1).ok_or(DiskError::Exhausted { what: "key store generation" })?;
        let len = self.header.keystore_blocks as usize * BLOCK_SIZE;
        let mut bytes = store.encode(len).ok_or(DiskError::TableFull { what: "key store" })?;
        seal_region(&self.seal.subkey(b"key-store mac")?, &self.header.node_id, &mut bytes)?;
        write_region(&mut self.root, self.header.keystore_copy(store.generation & 1), &bytes)?;
        self.store = store;
        Ok(())
    }

    /// Writes `store` into both copies, so neither keeps a discarded key.
    fn write_store_twice(&mut self, store: KeyStore) -> Result<(), DiskError> {
        self.write_store(store.clone())?;
        self.write_store(store)
    }

    /// Writes `table` (generation + 1) to the copy after the current one.
    fn commit_table(&mut self, mut table: VolumeTable) -> Result<(), DiskError> {
        table.generation =
            self.table.generation.checked_add(1).ok_or(DiskError::Exhausted { what: "volume table generation" })?;
        let mut bytes = table.encode(self.table_len()).ok_or(DiskError::TableFull { what: "volume table" })?;
        seal_region(&self.seal.subkey(b"volume-table mac")?, &self.header.node_id, &mut bytes)?;
        write_region(&mut self.root, self.header.table_copy(table.generation & 1), &bytes)?;
        self.table = table;
        Ok(())
    }
}

/// One piece of a byte range `[pos, end)` of a volume, split at 4 KiB
/// block boundaries: either a run of whole blocks, or part of one block.
struct BlockChunk {
    /// First block.
    block: u64,
    /// Offset within that block (0 for whole blocks).
    off: usize,
    /// Bytes in this piece.
    len: usize,
    /// Bytes of the range before this piece.
    done: usize,
    /// Whole blocks (no read-modify-write needed).
    whole: bool,
}

/// Splits `[pos, end)` into [`BlockChunk`]s, so reads and writes walk a
/// range the same way.
fn block_chunks(mut pos: u64, end: u64) -> impl Iterator<Item = BlockChunk> {
    let block = BLOCK_SIZE as u64;
    let mut done = 0usize;
    core::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let off = (pos % block) as usize;
        let left = end - pos;
        let (len, whole) = if off == 0 && left >= block {
            ((left - left % block) as usize, true)
        } else {
            ((BLOCK_SIZE - off).min(left as usize), false)
        };
        let c = BlockChunk { block: pos / block, off, len, done, whole };
        pos += len as u64;
        done += len;
        Some(c)
    })
}

/// An open volume: what the hypervisor's virtio-blk backend calls. Sizes
/// and addresses are in 512-byte sectors; unaligned requests are
/// read-modify-write of the underlying 4 KiB encrypted blocks (each of
/// which is old or new after a crash). Dropping it closes the volume.
///
/// `Send + Sync` when `D: Send`: a VM's handle may be used on the CPU
/// running that VM while the node uses [`NodeDisk`] on another. Each call
/// holds the volume's lock for its duration and the device lock for one
/// device call at a time (slot, then device; see the crate documentation).
pub struct VolumeHandle<D: BlockDevice> {
    name: String,
    sectors: u64,
    slot: Slot<D>,
    dirty: DirtyCell,
    bounce: Box<[u8; BLOCK_SIZE]>,
}

impl<D: BlockDevice> fmt::Debug for VolumeHandle<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeHandle").field("name", &self.name).field("sectors", &self.sectors).finish_non_exhaustive()
    }
}

impl<D: BlockDevice> VolumeHandle<D> {
    /// The volume's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in 512-byte sectors (the guest's capacity).
    #[must_use]
    pub fn capacity_sectors(&self) -> u64 {
        self.sectors
    }

    /// Byte range `[start, end)` of a request, checked against the volume.
    fn range(&self, sector: u64, len: usize) -> Result<(u64, u64), DiskError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::BadLength { len });
        }
        let count = (len / SECTOR_SIZE) as u64;
        match sector.checked_add(count) {
            Some(end) if end <= self.sectors => Ok((sector * SECTOR_SIZE as u64, end * SECTOR_SIZE as u64)),
            _ => Err(DiskError::OutOfRange { sector, len }),
        }
    }

    /// Reads `buf.len()` bytes (whole 512-byte sectors) from `sector`.
    /// A block that fails authentication is [`DiskError::Integrity`]; `buf`
    /// then holds no unverified bytes.
    ///
    /// # Errors
    /// [`DiskError::Integrity`], [`DiskError::OutOfRange`], [`DiskError::BadLength`],
    /// [`DiskError::NoSuchVolume`] (deleted), or device errors.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let (pos, end) = self.range(sector, buf.len())?;
        let mut slot = self.slot.lock();
        let vol = slot.as_mut().ok_or(DiskError::NoSuchVolume)?;
        let err = |e| volume_error(&self.name, e);
        let mut bounced = false;
        for c in block_chunks(pos, end) {
            let out = buf.get_mut(c.done..c.done + c.len).ok_or(DiskError::BadLength { len: c.len })?;
            if c.whole {
                vol.read_sectors(c.block, out).map_err(err)?;
            } else {
                bounced = true;
                vol.read_sectors(c.block, &mut self.bounce[..]).map_err(err)?;
                let src = self.bounce.get(c.off..c.off + c.len).ok_or(DiskError::BadLength { len: c.len })?;
                out.copy_from_slice(src);
            }
        }
        if bounced {
            self.bounce.fill(0);
        }
        Ok(())
    }

    /// Writes `data` (whole 512-byte sectors) at `sector`. Durable after
    /// [`VolumeHandle::flush`]. A partial 4 KiB block is read first; if
    /// that block fails authentication the write is refused.
    ///
    /// # Errors
    /// [`DiskError::Integrity`] (partial block), [`DiskError::OutOfRange`],
    /// [`DiskError::BadLength`], [`DiskError::NoSuchVolume`], or device errors.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DiskError> {
        let (pos, end) = self.range(sector, data.len())?;
        let mut slot = self.slot.lock();
        let vol = slot.as_mut().ok_or(DiskError::NoSuchVolume)?;
        // Slot, then dirty map, then (inside the volume) the device.
        let mut dirty = self.dirty.lock();
        let mut mark = |block| {
            if let Some(map) = dirty.as_mut() {
                map.mark_volume_block(block);
            }
        };
        let err = |e| volume_error(&self.name, e);
        let mut bounced = false;
        for c in block_chunks(pos, end) {
            let src = data.get(c.done..c.done + c.len).ok_or(DiskError::BadLength { len: c.len })?;
            if c.whole {
                vol.write_sectors_logged(c.block, src, &mut mark).map_err(err)?;
            } else {
                bounced = true;
                vol.read_sectors(c.block, &mut self.bounce[..]).map_err(err)?;
                self.bounce
                    .get_mut(c.off..c.off + c.len)
                    .ok_or(DiskError::BadLength { len: c.len })?
                    .copy_from_slice(src);
                vol.write_sectors_logged(c.block, &self.bounce[..], &mut mark).map_err(err)?;
            }
        }
        if bounced {
            self.bounce.fill(0);
        }
        Ok(())
    }

    /// Makes every completed write (data and metadata) durable.
    ///
    /// # Errors
    /// [`DiskError::NoSuchVolume`] (deleted), or device errors.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        let mut slot = self.slot.lock();
        let vol = slot.as_mut().ok_or(DiskError::NoSuchVolume)?;
        vol.flush().map_err(|e| volume_error(&self.name, e))
    }
}

#[cfg(test)]
mod tests;
