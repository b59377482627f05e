//! Fuzzes the encrypted-volume decoders on untrusted disk bytes: the volume
//! header, per-sector records, and opening/reading a volume whose header and
//! metadata blocks come from the input.
#![no_main]

use blockcrypt::metadata::{SectorRecord, VolumeHeader, HEADER_LEN, RECORD_LEN};
use blockcrypt::{DiskKey, KeySeed, LandlordKey, Layout, MemDevice, Volume, VolumeId, BLOCK_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = VolumeHeader::decode(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(&h.encode()[..], &data[..HEADER_LEN]);
    }
    for chunk in data.chunks(RECORD_LEN) {
        if let Ok(r) = SectorRecord::decode(chunk) {
            assert_eq!(&r.encode()[..], chunk);
        }
        let _ = SectorRecord::raw_counter(chunk);
    }
    // A small volume whose header copy 0 and first metadata block come from
    // the input: open and read must give values or errors, never panic.
    let v = VolumeId([1; 16]);
    let Ok(key) = DiskKey::derive(&LandlordKey::from_bytes([2; 32]), &[], v) else { return };
    let Some(dev) = Layout::new(4).ok().and_then(|l| MemDevice::new(l.total_blocks)) else { return };
    let Ok(mut vol) = Volume::create(dev, key.clone(), 4, &KeySeed::from_random([3; KeySeed::LEN])) else { return };
    let _ = vol.write_sector(0, &[7; BLOCK_SIZE]);
    let mut dev = vol.into_device();
    let (hdr, meta) = data.split_at(data.len().min(BLOCK_SIZE));
    dev.image_mut()[..hdr.len()].copy_from_slice(hdr);
    let m = meta.len().min(BLOCK_SIZE);
    dev.image_mut()[2 * BLOCK_SIZE..2 * BLOCK_SIZE + m].copy_from_slice(&meta[..m]);
    if let Ok(mut vol) = Volume::open(dev, key, 0) {
        let mut buf = vec![0u8; 4 * BLOCK_SIZE];
        let _ = vol.read_sectors(0, &mut buf);
        let _ = vol.write_sectors(0, &buf);
        let _ = vol.read_sectors(0, &mut buf);
    }
});
