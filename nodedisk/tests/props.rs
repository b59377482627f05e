//! Property tests: random operation sequences against a model, and
//! arbitrary bytes where the node's structures live.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use nodedisk::header::NodeHeader;
use nodedisk::keystore::KeyStore;
use nodedisk::table::VolumeTable;
use nodedisk::{DiskError, LeaseId, MemDevice, NodeDisk, SealKey, BLOCK_SIZE, RANDOM_LEN, SECTOR_SIZE};
use proptest::prelude::*;

const SEAL: [u8; 32] = [0x33; 32];
const BLOCKS: u64 = 120;
const NAMES: [&str; 4] = ["vm-a", "vm-b", "vm-c", "vm-d"];

thread_local! {
    static COUNTER: Cell<u32> = const { Cell::new(1) };
}

fn rnd() -> [u8; RANDOM_LEN] {
    let n = COUNTER.with(|c| {
        let v = c.get();
        c.set(v + 1);
        v
    });
    let mut r = [0x5a; RANDOM_LEN];
    r[..4].copy_from_slice(&n.to_le_bytes());
    r
}

#[derive(Clone, Debug)]
enum Op {
    Create { name: usize, lease: u32, sectors: u64 },
    Write { name: usize, sector: u64, count: u64, byte: u8 },
    Read { name: usize, sector: u64, count: u64 },
    Reopen,
    RotateLandlord,
    SetTenant(u32),
    RegenerateTenant(u32),
    Rekey(usize),
    Delete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4usize, 0..3u32, 1..64u64).prop_map(|(name, lease, sectors)| Op::Create { name, lease, sectors }),
        6 => (0..4usize, 0..64u64, 1..20u64, any::<u8>())
            .prop_map(|(name, sector, count, byte)| Op::Write { name, sector, count, byte }),
        4 => (0..4usize, 0..64u64, 1..20u64).prop_map(|(name, sector, count)| Op::Read { name, sector, count }),
        2 => Just(Op::Reopen),
        1 => Just(Op::RotateLandlord),
        1 => (0..3u32).prop_map(Op::SetTenant),
        1 => (0..3u32).prop_map(Op::RegenerateTenant),
        1 => (0..4usize).prop_map(Op::Rekey),
        1 => (0..4usize).prop_map(Op::Delete),
    ]
}

#[derive(Default)]
struct Model {
    volumes: BTreeMap<&'static str, (u32, Vec<u8>)>,
    tenants: BTreeSet<u32>,
}

impl Model {
    fn erase(&mut self, lease: Option<u32>) {
        for (l, data) in self.volumes.values_mut() {
            if lease.is_none_or(|x| x == *l) {
                data.fill(0);
            }
        }
    }
}

fn check_read(node: &mut NodeDisk<MemDevice>, name: &str, want: &[u8], sector: u64) {
    let mut h = node.open_volume(name).unwrap();
    let mut buf = vec![0xeeu8; want.len()];
    h.read(sector, &mut buf).unwrap();
    assert!(buf == want, "{name}: read at {sector} differs");
}

fn run(ops: &[Op]) {
    let mut node = NodeDisk::format(MemDevice::new(BLOCKS).unwrap(), SealKey::from_bytes(SEAL), &rnd()).unwrap();
    let mut m = Model::default();
    for op in ops {
        match *op {
            Op::Create { name, lease, sectors } => {
                let r = node.create_volume(NAMES[name], LeaseId(lease), sectors, &rnd());
                if m.volumes.contains_key(NAMES[name]) {
                    assert_eq!(r, Err(DiskError::VolumeExists));
                } else {
                    r.unwrap();
                    m.volumes.insert(NAMES[name], (lease, vec![0; sectors as usize * SECTOR_SIZE]));
                }
            }
            Op::Write { name, sector, count, byte } => {
                let Some((_, data)) = m.volumes.get_mut(NAMES[name]) else {
                    assert_eq!(node.open_volume(NAMES[name]).unwrap_err(), DiskError::NoSuchVolume);
                    continue;
                };
                let cap = (data.len() / SECTOR_SIZE) as u64;
                let sector = sector % cap;
                let count = count.min(cap - sector);
                let bytes: Vec<u8> = (0..count as usize * SECTOR_SIZE).map(|i| byte ^ (i / 512) as u8).collect();
                let mut h = node.open_volume(NAMES[name]).unwrap();
                h.write(sector, &bytes).unwrap();
                h.flush().unwrap();
                data[sector as usize * SECTOR_SIZE..][..bytes.len()].copy_from_slice(&bytes);
            }
            Op::Read { name, sector, count } => {
                let Some((_, data)) = m.volumes.get(NAMES[name]) else { continue };
                let cap = (data.len() / SECTOR_SIZE) as u64;
                let sector = sector % cap;
                let count = count.min(cap - sector);
                let want = &data[sector as usize * SECTOR_SIZE..][..count as usize * SECTOR_SIZE];
                check_read(&mut node, NAMES[name], want, sector);
            }
            Op::Reopen => {
                let dev = node.into_device().unwrap();
                node = NodeDisk::open(dev, SealKey::from_bytes(SEAL), &rnd()).unwrap();
            }
            Op::RotateLandlord => {
                node.rotate_landlord_key(&rnd()).unwrap();
                m.erase(None);
            }
            Op::SetTenant(lease) => {
                let r = node.set_tenant_key(LeaseId(lease), &rnd());
                if m.tenants.insert(lease) {
                    r.unwrap();
                    m.erase(Some(lease));
                } else {
                    assert_eq!(r, Err(DiskError::TenantKeyExists { lease: LeaseId(lease) }));
                }
            }
            Op::RegenerateTenant(lease) => {
                let r = node.regenerate_tenant_key(LeaseId(lease), &rnd());
                if m.tenants.contains(&lease) {
                    r.unwrap();
                    m.erase(Some(lease));
                } else {
                    assert_eq!(r, Err(DiskError::NoTenantKey { lease: LeaseId(lease) }));
                }
            }
            Op::Rekey(name) => {
                let r = node.rekey_volume(NAMES[name], &rnd());
                assert_eq!(r.is_ok(), m.volumes.contains_key(NAMES[name]));
            }
            Op::Delete(name) => {
                let r = node.delete_volume(NAMES[name]);
                assert_eq!(r.is_ok(), m.volumes.remove(NAMES[name]).is_some());
            }
        }
    }
    let listed: Vec<String> = node.list().into_iter().map(|v| v.name).collect();
    let mut names: Vec<String> = m.volumes.keys().map(|s| (*s).to_string()).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    names.sort();
    assert_eq!(sorted, names);
    let dev = node.into_device().unwrap();
    let mut node = NodeDisk::open(dev, SealKey::from_bytes(SEAL), &rnd()).unwrap();
    for (name, (lease, data)) in &m.volumes {
        check_read(&mut node, name, data, 0);
        let info = node.list().into_iter().find(|v| v.name == *name).unwrap();
        assert_eq!(info.lease, LeaseId(*lease));
        assert_eq!(info.tenant_keyed, m.tenants.contains(lease));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random operation sequences never panic, and every live volume reads
    /// back what was last written (zeros after a crypto-erase of its keys).
    #[test]
    fn ops_match_model(ops in proptest::collection::vec(op(), 1..30)) {
        run(&ops);
    }

    /// Arbitrary bytes written over the node's structures (headers, key
    /// store, table, volume headers): open and use give values or errors,
    /// never a panic, and a successful open is usable.
    #[test]
    fn tampered_structures_never_panic(
        edits in proptest::collection::vec((0..(22 * BLOCK_SIZE + 8 * BLOCK_SIZE), any::<u8>()), 1..40),
        seal_byte in prop_oneof![Just(0x33u8), any::<u8>()],
    ) {
        let mut node = NodeDisk::format(MemDevice::new(60).unwrap(), SealKey::from_bytes(SEAL), &[1; RANDOM_LEN]).unwrap();
        node.create_volume("a", LeaseId(1), 16, &[2; RANDOM_LEN]).unwrap();
        node.set_tenant_key(LeaseId(1), &[3; RANDOM_LEN]).unwrap();
        node.create_volume("b", LeaseId(1), 16, &[4; RANDOM_LEN]).unwrap();
        let mut dev = node.into_device().unwrap();
        for (pos, byte) in edits {
            dev.image_mut()[pos] ^= byte | 1;
        }
        if let Ok(mut node) = NodeDisk::open(dev, SealKey::from_bytes([seal_byte; 32]), &[5; RANDOM_LEN]) {
            for v in node.list() {
                if let Ok(mut h) = node.open_volume(&v.name) {
                    let mut buf = vec![0u8; 16 * SECTOR_SIZE];
                    let _ = h.read(0, &mut buf);
                    let _ = h.write(3, &buf[..1024]);
                }
            }
            let _ = node.create_volume("c", LeaseId(2), 8, &[6; RANDOM_LEN]);
            let _ = node.rotate_landlord_key(&[7; RANDOM_LEN]);
        }
    }

    /// Decoders accept any bytes; what they accept re-encodes identically.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000), magic in 0..3u8) {
        let mut b = bytes;
        let m: &[u8] = match magic { 0 => b"BMNODHD1", 1 => b"BMKEYST1", _ => b"BMVOLTB1" };
        if b.len() >= 8 {
            b[..8].copy_from_slice(m);
        }
        if let Ok(h) = NodeHeader::decode(&b) {
            prop_assert_eq!(&h.encode()[..], &b[..256]);
        }
        if let Ok(k) = KeyStore::decode(&b) {
            let mut enc = k.encode(b.len()).unwrap();
            let n = enc.len();
            enc[n - 32..].copy_from_slice(&b[n - 32..]);
            prop_assert_eq!(enc, b.clone());
        }
        if let Ok(t) = VolumeTable::decode(&b) {
            let mut enc = t.encode(b.len()).unwrap();
            let n = enc.len();
            enc[n - 32..].copy_from_slice(&b[n - 32..]);
            prop_assert_eq!(enc, b.clone());
        }
    }
}

#[test]
fn a_long_fixed_sequence() {
    let ops = [
        Op::Create { name: 0, lease: 1, sectors: 63 },
        Op::Create { name: 1, lease: 2, sectors: 9 },
        Op::Write { name: 0, sector: 3, count: 19, byte: 7 },
        Op::Write { name: 1, sector: 8, count: 5, byte: 9 },
        Op::SetTenant(1),
        Op::Write { name: 0, sector: 60, count: 19, byte: 1 },
        Op::Reopen,
        Op::Rekey(0),
        Op::Read { name: 0, sector: 50, count: 19 },
        Op::RegenerateTenant(2),
        Op::RegenerateTenant(1),
        Op::Write { name: 0, sector: 1, count: 1, byte: 3 },
        Op::Delete(1),
        Op::Create { name: 2, lease: 2, sectors: 30 },
        Op::RotateLandlord,
        Op::Write { name: 2, sector: 29, count: 1, byte: 4 },
        Op::Reopen,
    ];
    run(&ops);
}
