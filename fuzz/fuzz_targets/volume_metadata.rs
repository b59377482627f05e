//! Fuzzes the encrypted-volume code on untrusted disk bytes: the volume
//! header and sector-record decoders (what decodes re-encodes to the same
//! bytes), then either `Volume::open` with one header copy from the input,
//! or a read and a write on an open volume whose metadata block or a data
//! block comes from the input.
//!
//! A header from the input fails its MAC, so on request the target MACs
//! whatever header decodes with the volume's disk key: then the fields
//! behind the MAC (generation, size, state, wrapped keys, key epoch) reach
//! `Volume::open`'s checks. The disk key is derived, the volume formatted
//! and (for the sector path) opened once; each input runs on a
//! copy-on-write view of that image, so it costs a few 4 KiB copies and the
//! crypto of one or two sectors, not a whole volume setup.
#![no_main]

use std::sync::OnceLock;

use blockcrypt::metadata::{SectorRecord, VolumeHeader, HEADER_LEN, RECORD_LEN};
use blockcrypt::{
    BlockDevice, DeviceError, DiskKey, KeySeed, LandlordKey, Layout, MemDevice, Volume, VolumeError, VolumeId,
    BLOCK_SIZE,
};
use libfuzzer_sys::fuzz_target;

const SECTORS: u64 = 4;

struct Fixture {
    key: DiskKey,
    image: Vec<u8>,
    generation: u64,
}

/// A 4-sector volume with sectors 0 and 1 written.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = DiskKey::derive(&LandlordKey::from_bytes([2; 32]), &[], VolumeId([1; 16])).expect("disk key");
        let layout = Layout::new(SECTORS).expect("layout");
        let dev = MemDevice::new(layout.total_blocks).expect("device");
        let seed = KeySeed::from_random([3; KeySeed::LEN]);
        let mut vol = Volume::create(dev, key.clone(), SECTORS, &seed).expect("create");
        vol.write_sector(0, &[7; BLOCK_SIZE]).expect("write 0");
        vol.write_sector(1, &[8; BLOCK_SIZE]).expect("write 1");
        let generation = vol.generation();
        Fixture { key, image: vol.into_device().image().to_vec(), generation }
    })
}

/// The fixture's image with the blocks this input changed or the volume
/// wrote on top: a few 4 KiB copies instead of the whole image per input.
struct Overlay {
    base: &'static [u8],
    changed: Vec<(u64, Box<[u8; BLOCK_SIZE]>)>,
    /// Blocks to reuse (fresh allocations are slow under the sanitizer).
    spare: Vec<Box<[u8; BLOCK_SIZE]>>,
}

impl Overlay {
    fn new(base: &'static [u8]) -> Self {
        Overlay { base, changed: Vec::new(), spare: Vec::new() }
    }

    /// Back to the base image.
    fn reset(&mut self) {
        self.spare.extend(self.changed.drain(..).map(|(_, b)| b));
    }

    fn block_mut(&mut self, index: u64) -> &mut [u8; BLOCK_SIZE] {
        let pos = match self.changed.iter().position(|(i, _)| *i == index) {
            Some(p) => p,
            None => {
                let mut b = self.spare.pop().unwrap_or_else(|| Box::new([0u8; BLOCK_SIZE]));
                let start = usize::try_from(index).expect("small index") * BLOCK_SIZE;
                b.copy_from_slice(&self.base[start..start + BLOCK_SIZE]);
                self.changed.push((index, b));
                self.changed.len() - 1
            }
        };
        &mut self.changed[pos].1
    }
}

impl BlockDevice for Overlay {
    fn block_count(&self) -> u64 {
        (self.base.len() / BLOCK_SIZE) as u64
    }
    fn read_block(&mut self, index: u64, buf: &mut [u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        if index >= self.block_count() {
            return Err(DeviceError::OutOfRange { block: index });
        }
        match self.changed.iter().find(|(i, _)| *i == index) {
            Some((_, b)) => buf.copy_from_slice(&b[..]),
            None => {
                let start = index as usize * BLOCK_SIZE;
                buf.copy_from_slice(&self.base[start..start + BLOCK_SIZE]);
            }
        }
        Ok(())
    }
    fn write_block(&mut self, index: u64, buf: &[u8; BLOCK_SIZE]) -> Result<(), DeviceError> {
        if index >= self.block_count() {
            return Err(DeviceError::OutOfRange { block: index });
        }
        self.block_mut(index).copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

// Input layout: a mode byte, then the bytes. Mode bit 0 picks the path:
//
// - header (0): `Volume::open` on the fixture with the bytes over header
//   copy `bit 1`; bit 2 MACs a header that decodes, bit 3 demands a newer
//   generation than the disk holds (a rollback), bit 4 zeroes the other
//   copy.
// - sectors (1): on the volume opened once, the bytes over the metadata
//   block (bit 1 clear) or over sector 0's current data block (bit 1 set),
//   then a read of sector `bits 4-5` and, with bit 6, a write and a read
//   back. Every block the input or the volume changed is put back after.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    decoders(rest);
    if mode & 1 == 0 {
        header(mode, rest);
    } else {
        sectors(mode, rest);
    }
});

fn decoders(data: &[u8]) {
    if let Ok(h) = VolumeHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..HEADER_LEN]);
    }
    for chunk in data.chunks(RECORD_LEN) {
        if let Ok(r) = SectorRecord::decode(chunk) {
            assert_eq!(&r.encode()[..], chunk);
            assert!(r.is_written() || r == SectorRecord::EMPTY);
        }
        let _ = SectorRecord::raw_counter(chunk);
    }
}

fn header(mode: u8, rest: &[u8]) {
    let f = fixture();
    let mut dev = Overlay::new(&f.image);
    let copy = u64::from(mode >> 1 & 1);
    let other_zeroed = mode & 0x10 != 0;
    if other_zeroed {
        dev.block_mut(1 - copy).fill(0);
    }
    let b = dev.block_mut(copy);
    let n = rest.len().min(BLOCK_SIZE);
    b[..n].copy_from_slice(&rest[..n]);
    let macked = mode & 4 != 0;
    if macked {
        if let Ok(mut h) = VolumeHeader::decode(&b[..]) {
            h.mac = f.key.header_mac(&h.mac_input()).expect("header mac");
            b[..HEADER_LEN].copy_from_slice(&h.encode());
        }
    }
    let min_generation = if mode & 8 != 0 { f.generation + 1 } else { 0 };
    match Volume::open(dev, f.key.clone(), min_generation) {
        Ok(vol) => {
            assert!(vol.generation() >= min_generation);
            assert!(vol.layout().total_blocks <= vol.device().block_count());
            if !macked {
                assert_eq!(vol.sector_count(), SECTORS);
            }
        }
        // Only a header the MAC vouches for can make the intact copy lose.
        Err(e) => assert!(macked || other_zeroed || min_generation > 0, "a damaged copy hid the intact one: {e:?}"),
    }
}

thread_local! {
    /// The fixture volume, opened once; `sectors` resets its device after
    /// each input, and reads and writes keep no other state.
    /// With two sector buffers.
    #[allow(clippy::type_complexity)]
    static OPEN: std::cell::RefCell<Option<(Volume<Overlay>, Box<[u8; BLOCK_SIZE]>, Box<[u8; BLOCK_SIZE]>)>> =
        const { std::cell::RefCell::new(None) };
}

fn opened() -> Volume<Overlay> {
    let f = fixture();
    let mut vol = Volume::open(Overlay::new(&f.image), f.key.clone(), 0).expect("open");
    // Make the header that open wrote part of the base image.
    static AFTER_OPEN: OnceLock<Vec<u8>> = OnceLock::new();
    let dev = vol.device_mut();
    let img = AFTER_OPEN.get_or_init(|| {
        let mut img = f.image.clone();
        for (i, b) in &dev.changed {
            img[*i as usize * BLOCK_SIZE..][..BLOCK_SIZE].copy_from_slice(&b[..]);
        }
        img
    });
    dev.base = img;
    dev.reset();
    vol
}

fn sectors(mode: u8, rest: &[u8]) {
    OPEN.with_borrow_mut(|open| {
        let (vol, buf, back) =
            open.get_or_insert_with(|| (opened(), Box::new([0; BLOCK_SIZE]), Box::new([0; BLOCK_SIZE])));
        vol.device_mut().reset();
        let layout = *vol.layout();
        let block = if mode & 2 == 0 { layout.meta_start } else { sector0_data(vol) };
        let b = vol.device_mut().block_mut(block);
        let n = rest.len().min(BLOCK_SIZE);
        b[..n].copy_from_slice(&rest[..n]);
        let tampered_data = mode & 2 != 0 && n > 0;
        let sector = u64::from(mode >> 4 & 3);
        buf.fill(0xee);
        match vol.read_sector(sector, &mut buf[..]) {
            Ok(()) => {
                // Untouched records and data read back as written.
                if n == 0 || (tampered_data && sector != 0) {
                    let want = [7, 8, 0, 0][sector as usize];
                    // Whole-slice comparisons: a byte loop would cost a
                    // sanitizer callback per byte.
                    assert!(buf[..] == [want; BLOCK_SIZE][..], "sector {sector} reads other data");
                }
            }
            Err(VolumeError::Integrity(e)) => {
                assert_eq!(e.sector, sector);
                // Untouched or wiped: never unverified plaintext.
                assert!(buf[..] == [0xee; BLOCK_SIZE][..] || buf[..] == [0; BLOCK_SIZE][..], "unverified data");
            }
            Err(e) => panic!("read failed without an integrity error: {e:?}"),
        }
        if mode & 0x40 != 0 {
            buf.fill(mode);
            match vol.write_sector(sector, &buf[..]) {
                Ok(()) => {
                    vol.read_sector(sector, &mut back[..]).expect("a sector just written reads back");
                    assert!(back[..] == buf[..]);
                }
                // A damaged record's counter is kept moving forward, up to the end.
                Err(VolumeError::CounterExhausted { .. }) => {}
                Err(e) => panic!("a sector cannot be rewritten: {e:?}"),
            }
        }
        vol.device_mut().reset();
    });
}

/// The block holding sector 0's current data (its record names the slot).
fn sector0_data(vol: &mut Volume<Overlay>) -> u64 {
    let layout = *vol.layout();
    let mut meta = [0u8; BLOCK_SIZE];
    vol.device_mut().read_block(layout.meta_start, &mut meta).expect("metadata block");
    let rec = SectorRecord::decode(&meta[..RECORD_LEN]).expect("sector 0's record");
    layout.data_start + u64::from(rec.slot())
}
