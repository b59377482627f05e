//! Recognising an initramfs, so a node can tell an uploaded initrd from
//! garbage before a VM boots with it. Only the format is recognised (by
//! its magic bytes, as Linux's unpacker does); the kernel unpacks it.

/// The container of an initramfs image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitramfsFormat {
    /// An uncompressed newc/crc cpio archive.
    Cpio,
    /// gzip.
    Gzip,
    /// xz.
    Xz,
    /// zstd.
    Zstd,
    /// lz4 (legacy frame, as Linux writes it).
    Lz4,
    /// bzip2.
    Bzip2,
    /// lzma (legacy .lzma header).
    Lzma,
}

/// The format of `image` if it starts like an initramfs Linux can unpack.
pub fn initramfs_format(image: &[u8]) -> Option<InitramfsFormat> {
    let starts = |m: &[u8]| image.starts_with(m);
    if starts(b"070701") || starts(b"070702") {
        Some(InitramfsFormat::Cpio)
    } else if starts(&[0x1F, 0x8B]) {
        Some(InitramfsFormat::Gzip)
    } else if starts(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(InitramfsFormat::Xz)
    } else if starts(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Some(InitramfsFormat::Zstd)
    } else if starts(&[0x02, 0x21, 0x4C, 0x18]) {
        Some(InitramfsFormat::Lz4)
    } else if starts(b"BZh") {
        Some(InitramfsFormat::Bzip2)
    } else if starts(&[0x5D, 0x00, 0x00]) {
        Some(InitramfsFormat::Lzma)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        assert_eq!(initramfs_format(b"070701000000"), Some(InitramfsFormat::Cpio));
        assert_eq!(initramfs_format(&[0x1F, 0x8B, 8, 0]), Some(InitramfsFormat::Gzip));
        assert_eq!(initramfs_format(&[0x28, 0xB5, 0x2F, 0xFD, 1]), Some(InitramfsFormat::Zstd));
        assert_eq!(initramfs_format(b"\x7fELF"), None);
        assert_eq!(initramfs_format(&[]), None);
        assert_eq!(initramfs_format(&[0x1F]), None);
    }
}
