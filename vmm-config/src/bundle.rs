//! The boot bundle: one boot module carrying the node config and the guest
//! images, so a boot loader needs to pass only one file (GRUB as a multiboot2
//! module, QEMU as `-initrd`).
//!
//! # Format
//!
//! All integers are little-endian; there is no padding anywhere.
//!
//! ```text
//! magic        8 bytes   b"BMBUNDL1"
//! count        u32       number of entries, at most MAX_ENTRIES (256)
//! count times:
//!   name_len   u16       1..=255
//!   name       name_len bytes of UTF-8, unique within the bundle
//!   data_len   u64
//!   data       data_len bytes
//! ```
//!
//! Bytes after the last entry are ignored (boot loaders may round module
//! sizes up). The entry named [`CONFIG_ENTRY`] holds the postcard-encoded
//! [`NodeConfig`]; its `kernel` and `module` fields are names of other entries.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::config::{ConfigError, NodeConfig};

/// First 8 bytes of every bundle; the `1` is the format version.
pub const MAGIC: [u8; 8] = *b"BMBUNDL1";
/// Name of the entry that holds the postcard-encoded [`NodeConfig`].
pub const CONFIG_ENTRY: &str = "node.config";
/// Most entries a bundle may have, bounding parse work and memory.
pub const MAX_ENTRIES: u32 = 256;
/// Longest entry name in bytes.
pub const MAX_ENTRY_NAME_LEN: usize = 255;

/// Writes a bundle holding `entries` in order (host side, but `no_std` too).
///
/// The caller keeps names 1..=255 bytes, unique, and at most 256 entries;
/// otherwise [`Bundle::parse`] refuses the result.
pub fn encode(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(n, d)| 2 + n.len() + 8 + d.len()).sum();
    let mut out = Vec::with_capacity(12 + size);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (name, data) in entries {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// A parsed bundle borrowing its bytes: named entries in file order.
#[derive(Clone, Debug)]
pub struct Bundle<'a> {
    entries: Vec<(&'a str, &'a [u8])>,
}

/// Why a bundle or its config was refused.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum BundleError {
    /// The first 8 bytes are not [`MAGIC`].
    BadMagic,
    /// The bundle ends inside `what`, which starts at byte `offset`.
    Truncated {
        /// Byte offset where the incomplete item starts.
        offset: usize,
        /// What was being read, e.g. "entry 3 data".
        what: &'static str,
    },
    /// An entry name is empty, longer than 255 bytes or not UTF-8.
    BadName,
    /// Two entries have this name.
    Duplicate(String),
    /// The entry count exceeds [`MAX_ENTRIES`].
    TooManyEntries,
    /// There is no [`CONFIG_ENTRY`] entry.
    MissingConfig,
    /// The config entry does not decode (postcard error text).
    BadConfig(String),
    /// The config decodes but fails validation.
    Invalid(ConfigError),
    /// A config field names an entry the bundle does not have.
    MissingEntry {
        /// Config field, e.g. `vm[1].kernel`.
        field: String,
        /// The entry name it gives.
        name: String,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::BadMagic => write!(f, "not a BMonitor bundle (bad magic)"),
            BundleError::Truncated { offset, what } => {
                write!(f, "bundle truncated: {what} at byte {offset} extends past the end")
            }
            BundleError::BadName => {
                write!(f, "bundle entry name is empty, longer than 255 bytes or not UTF-8")
            }
            BundleError::Duplicate(name) => write!(f, "bundle has two entries named \"{name}\""),
            BundleError::TooManyEntries => {
                write!(f, "bundle has more than {MAX_ENTRIES} entries")
            }
            BundleError::MissingConfig => write!(f, "bundle has no \"{CONFIG_ENTRY}\" entry"),
            BundleError::BadConfig(e) => write!(f, "bundle config does not decode: {e}"),
            BundleError::Invalid(e) => write!(f, "bundle config is invalid: {e}"),
            BundleError::MissingEntry { field, name } => {
                write!(f, "{field}: bundle has no entry named \"{name}\"")
            }
        }
    }
}

impl core::error::Error for BundleError {}

/// Bounds-checked little-endian reader over the bundle bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], BundleError> {
        let truncated = BundleError::Truncated { offset: self.pos, what };
        let end = self.pos.checked_add(len).ok_or(truncated.clone())?;
        let out = self.bytes.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BundleError> {
        let pos = self.pos;
        let s = self.take(N, what)?;
        s.try_into().map_err(|_| BundleError::Truncated { offset: pos, what })
    }
}

impl<'a> Bundle<'a> {
    /// Parses and checks a bundle without copying its data.
    pub fn parse(bytes: &'a [u8]) -> Result<Bundle<'a>, BundleError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic: [u8; 8] = r.array("magic").map_err(|_| BundleError::BadMagic)?;
        if magic != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let count = u32::from_le_bytes(r.array("entry count")?);
        if count > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries);
        }
        let mut entries: Vec<(&'a str, &'a [u8])> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name_len = u16::from_le_bytes(r.array("entry name length")?) as usize;
            if name_len == 0 || name_len > MAX_ENTRY_NAME_LEN {
                return Err(BundleError::BadName);
            }
            let name = r.take(name_len, "entry name")?;
            let name = core::str::from_utf8(name).map_err(|_| BundleError::BadName)?;
            let data_len_pos = r.pos;
            let data_len = u64::from_le_bytes(r.array("entry data length")?);
            let data_len = usize::try_from(data_len)
                .map_err(|_| BundleError::Truncated { offset: data_len_pos, what: "entry data" })?;
            let data = r.take(data_len, "entry data")?;
            if entries.iter().any(|(n, _)| *n == name) {
                return Err(BundleError::Duplicate(name.into()));
            }
            entries.push((name, data));
        }
        Ok(Bundle { entries })
    }

    /// The data of the entry called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.entries.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
    }

    /// All entries in file order, config entry included.
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.entries.iter().copied()
    }

    /// Decodes, validates and cross-checks the node config: every `kernel`
    /// and `module` must name an entry of this bundle.
    pub fn node_config(&self) -> Result<NodeConfig, BundleError> {
        let bytes = self.get(CONFIG_ENTRY).ok_or(BundleError::MissingConfig)?;
        let (config, rest) =
            postcard::take_from_bytes::<NodeConfig>(bytes).map_err(|e| BundleError::BadConfig(format!("{e}")))?;
        if !rest.is_empty() {
            return Err(BundleError::BadConfig(format!("{} unexpected bytes after the config", rest.len())));
        }
        config.validate().map_err(BundleError::Invalid)?;
        for (i, vm) in config.vms.iter().enumerate() {
            let named = [("kernel", Some(&vm.kernel)), ("module", vm.module.as_ref())];
            for (field, name) in named {
                if let Some(name) = name {
                    if name == CONFIG_ENTRY || self.get(name).is_none() {
                        return Err(BundleError::MissingEntry {
                            field: format!("vm[{i}].{field}"),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
        for (i, img) in config.images.iter().enumerate() {
            if img.file == CONFIG_ENTRY || self.get(&img.file).is_none() {
                return Err(BundleError::MissingEntry { field: format!("image[{i}].file"), name: img.file.clone() });
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::{BootProtocol, VmConfig};
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn config(kernel: &str, module: Option<&str>) -> NodeConfig {
        NodeConfig {
            vms: vec![VmConfig {
                name: "vm0".into(),
                memory_mib: 32,
                kernel: kernel.into(),
                cmdline: "x".into(),
                module: module.map(Into::into),
                boot: BootProtocol::Pvh,
                cpu_time_limit_ms: Some(10),
                debug_hypercalls: false,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn bundle_with(cfg: &NodeConfig) -> Vec<u8> {
        let c = postcard::to_allocvec(cfg).unwrap();
        encode(&[(CONFIG_ENTRY, &c), ("k.elf", b"kernel"), ("initrd", b"")])
    }

    #[test]
    fn round_trip() {
        let cfg = config("k.elf", Some("initrd"));
        let bytes = bundle_with(&cfg);
        let b = Bundle::parse(&bytes).unwrap();
        assert_eq!(b.get("k.elf"), Some(&b"kernel"[..]));
        assert_eq!(b.get("initrd"), Some(&b""[..]));
        assert_eq!(b.get("nope"), None);
        assert_eq!(b.entries().count(), 3);
        assert_eq!(b.node_config().unwrap(), cfg);
    }

    #[test]
    fn exact_layout() {
        let bytes = encode(&[("ab", b"xyz")]);
        let mut want = b"BMBUNDL1".to_vec();
        want.extend_from_slice(&[1, 0, 0, 0, 2, 0, b'a', b'b', 3, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(b"xyz");
        assert_eq!(bytes, want);
        // Trailing padding is ignored.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(Bundle::parse(&padded).unwrap().get("ab"), Some(&b"xyz"[..]));
    }

    #[test]
    fn bad_magic() {
        assert_eq!(Bundle::parse(b"").unwrap_err(), BundleError::BadMagic);
        assert_eq!(Bundle::parse(b"BMBUNDL").unwrap_err(), BundleError::BadMagic);
        assert_eq!(Bundle::parse(b"BMBUNDL2\0\0\0\0").unwrap_err(), BundleError::BadMagic);
    }

    #[test]
    fn truncated() {
        let bytes = encode(&[("ab", b"xyz")]);
        for len in 8..bytes.len() {
            let e = Bundle::parse(&bytes[..len]).unwrap_err();
            assert!(matches!(e, BundleError::Truncated { .. }), "len {len}: {e:?}");
            assert!(e.to_string().contains("truncated"));
        }
        // A data length too large for the address space.
        let mut huge = encode(&[("ab", b"")]);
        let n = huge.len();
        huge[n - 8..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Bundle::parse(&huge), Err(BundleError::Truncated { what: "entry data", .. })));
    }

    #[test]
    fn bad_names() {
        assert_eq!(Bundle::parse(&encode(&[("", b"x")])).unwrap_err(), BundleError::BadName);
        let long = "n".repeat(256);
        assert_eq!(Bundle::parse(&encode(&[(&long, b"x")])).unwrap_err(), BundleError::BadName);
        let ok = "n".repeat(255);
        assert!(Bundle::parse(&encode(&[(&ok, b"x")])).is_ok());
        let mut bytes = encode(&[("ab", b"x")]);
        bytes[14] = 0xFF;
        assert_eq!(Bundle::parse(&bytes).unwrap_err(), BundleError::BadName);
    }

    #[test]
    fn duplicates_and_count() {
        let e = Bundle::parse(&encode(&[("a", b"1"), ("b", b""), ("a", b"2")])).unwrap_err();
        assert_eq!(e, BundleError::Duplicate("a".into()));
        let names: Vec<String> = (0..257).map(|i| format!("e{i}")).collect();
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        assert_eq!(Bundle::parse(&encode(&entries)).unwrap_err(), BundleError::TooManyEntries);
        assert!(Bundle::parse(&encode(&entries[..256])).is_ok());
    }

    #[test]
    fn config_errors() {
        let b = encode(&[("k.elf", b"")]);
        assert_eq!(Bundle::parse(&b).unwrap().node_config(), Err(BundleError::MissingConfig));

        let b = encode(&[(CONFIG_ENTRY, &[0xFF, 0xFF, 0xFF])]);
        let e = Bundle::parse(&b).unwrap().node_config().unwrap_err();
        assert!(matches!(e, BundleError::BadConfig(_)), "{e:?}");

        let mut c = postcard::to_allocvec(&config("k.elf", None)).unwrap();
        c.push(0);
        let b = encode(&[(CONFIG_ENTRY, &c), ("k.elf", b"")]);
        assert!(matches!(Bundle::parse(&b).unwrap().node_config(), Err(BundleError::BadConfig(_))));

        let mut cfg = config("k.elf", None);
        cfg.vms[0].memory_mib = 0;
        let e = Bundle::parse(&bundle_with(&cfg)).unwrap().node_config().unwrap_err();
        assert_eq!(e.to_string(), "bundle config is invalid: vm[0].memory_mib: must be between 1 and 2048");

        let cfg = config("other.elf", None);
        let e = Bundle::parse(&bundle_with(&cfg)).unwrap().node_config().unwrap_err();
        assert_eq!(e, BundleError::MissingEntry { field: "vm[0].kernel".into(), name: "other.elf".into() });
        let cfg = config("k.elf", Some("missing"));
        let e = Bundle::parse(&bundle_with(&cfg)).unwrap().node_config().unwrap_err();
        assert_eq!(e.to_string(), "vm[0].module: bundle has no entry named \"missing\"");
        let cfg = config(CONFIG_ENTRY, None);
        let e = Bundle::parse(&bundle_with(&cfg)).unwrap().node_config().unwrap_err();
        assert!(matches!(e, BundleError::MissingEntry { .. }));
        let mut cfg = config("k.elf", None);
        cfg.images.push(crate::config::ImageConfig { name: "initrd".into(), file: "initrd".into() });
        assert_eq!(Bundle::parse(&bundle_with(&cfg)).unwrap().node_config().unwrap(), cfg);
        cfg.images[0].file = "gone".into();
        let e = Bundle::parse(&bundle_with(&cfg)).unwrap().node_config().unwrap_err();
        assert_eq!(e.to_string(), "image[0].file: bundle has no entry named \"gone\"");
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(b) = Bundle::parse(&bytes) {
                let _ = b.node_config();
            }
        }

        #[test]
        fn parse_never_panics_with_magic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut all = MAGIC.to_vec();
            all.extend_from_slice(&bytes);
            if let Ok(b) = Bundle::parse(&all) {
                let _ = b.node_config();
            }
        }

        #[test]
        fn encode_then_parse(
            entries in proptest::collection::btree_map(
                "[a-z.]{1,20}", proptest::collection::vec(any::<u8>(), 0..64), 0..20)
        ) {
            let list: Vec<(&str, &[u8])> =
                entries.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            let bytes = encode(&list);
            let b = Bundle::parse(&bytes).unwrap();
            prop_assert_eq!(b.entries().collect::<Vec<_>>(), list);
        }
    }
}
