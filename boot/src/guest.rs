//! `bmimage guest`: a bootable tenant Linux image with the guest agent.
//!
//! The output is the kernel (copied) and an initrd made of the base
//! initramfs (scripts/linux-guest.sh) followed by one more gzip'd newc cpio
//! archive, the overlay. The kernel unpacks concatenated archives in order,
//! later entries replacing earlier ones, so the overlay adds:
//!
//! - `/usr/sbin/bm-agent` (mode 0755);
//! - `/etc/bm-role` = `agent` (the guest's init starts the agent and stays up);
//! - `/etc/bm-agent/services.conf`: one line per `--service NAME=CMD ARGS`,
//!   `NAME<TAB>on-failure<TAB>CMD ARGS`, which bm-agent supervises;
//! - the tenant's files (`--files DIR`, copied to `/` with their permission
//!   bits).
//!
//! With `--sign-key` the kernel and the initrd get `.sig` files exactly as
//! `bmctl tenant sign-image` writes them (the same function,
//! `mgmt_proto::sign_image`, and the same file format: 128 hex digits and a
//! newline).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;

/// The node refuses larger images (`max_image_bytes`).
pub const NODE_IMAGE_LIMIT: u64 = 16 << 20;

/// Where the agent goes in the guest.
pub const AGENT_PATH: &str = "usr/sbin/bm-agent";
/// The role file the guest's init reads.
pub const ROLE_PATH: &str = "etc/bm-role";
/// The services bm-agent starts.
pub const SERVICES_PATH: &str = "etc/bm-agent/services.conf";

/// What `bmimage guest` was asked for.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The Linux bzImage.
    pub kernel: PathBuf,
    /// The base initramfs (gzip'd or plain newc cpio).
    pub base_initrd: PathBuf,
    /// The bm-agent binary.
    pub agent: PathBuf,
    /// Directories whose trees are copied to the guest's `/`.
    pub files: Vec<PathBuf>,
    /// `NAME=CMD ARGS` services.
    pub services: Vec<String>,
    /// Ed25519 signing seed file (as `bmctl keygen --signing` writes it).
    pub sign_key: Option<PathBuf>,
    /// Output directory.
    pub out: PathBuf,
}

/// One member of a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its permission bits.
    Dir {
        /// Path without a leading `/`.
        path: String,
        /// Permission bits (0o7777 at most).
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path without a leading `/`.
        path: String,
        /// Permission bits (0o7777 at most).
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Path without a leading `/`.
        path: String,
        /// Link target.
        target: String,
    },
}

impl Entry {
    /// The entry's path.
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => path,
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// The newc ("070701") archive of `entries`, uncompressed, ending with the
/// trailer. Owner root, mtime 0, inode numbers from 1 (the kernel links
/// entries with equal inode and nlink > 1 only, and every nlink here is 1
/// for files).
pub fn newc(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 0u32;
    let mut push = |out: &mut Vec<u8>, name: &str, mode: u32, nlink: u32, data: &[u8]| {
        ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}{dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            dmaj = 0,
            dmin = 0,
            rmaj = 0,
            rmin = 0,
            check = 0,
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    };
    for e in entries {
        match e {
            Entry::Dir { path, mode } => push(&mut out, path, S_IFDIR | (mode & 0o7777), 2, &[]),
            Entry::File { path, mode, data } => push(&mut out, path, S_IFREG | (mode & 0o7777), 1, data),
            Entry::Symlink { path, target } => push(&mut out, path, S_IFLNK | 0o777, 1, target.as_bytes()),
        }
    }
    push(&mut out, "TRAILER!!!", 0, 1, &[]);
    out
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// gzip (best compression, no name or time in the header).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data).context("gzip")?;
    enc.finish().context("gzip")
}

/// A checked service: name and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// 1-32 chars of A-Z a-z 0-9 _ . -
    pub name: String,
    /// The command and its arguments, as one line.
    pub command: String,
}

/// Parses `NAME=CMD ARGS`; errors name the flag and say what is wrong.
pub fn parse_service(s: &str) -> Result<Service> {
    let Some((name, command)) = s.split_once('=') else {
        bail!("--service {s:?}: expected NAME=CMD ARGS (e.g. web=httpd -f -p 8080)");
    };
    let name = name.trim();
    let command = command.trim();
    if name.is_empty() || name.len() > 32 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        bail!("--service {s:?}: the name must be 1-32 characters of A-Z a-z 0-9 _ . -");
    }
    if command.is_empty() {
        bail!("--service {s:?}: no command after '='");
    }
    if command.chars().any(|c| c.is_control()) {
        bail!("--service {s:?}: the command may not contain tabs, newlines or other control characters");
    }
    Ok(Service { name: name.to_string(), command: command.to_string() })
}

/// The services.conf text: `NAME<TAB>on-failure<TAB>CMD ARGS` per line.
pub fn services_conf(services: &[Service]) -> String {
    services.iter().map(|s| format!("{}\ton-failure\t{}\n", s.name, s.command)).collect()
}

/// Reads a tree into entries (paths relative to `root`, sorted). Regular
/// files, directories and symlinks only.
fn tree_entries(root: &Path) -> Result<Vec<Entry>> {
    let meta = fs::metadata(root).with_context(|| format!("--files {}: cannot read the directory", root.display()))?;
    if !meta.is_dir() {
        bail!("--files {}: not a directory", root.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("--files {}: cannot list {}", root.display(), dir.display()))?
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("--files {}: cannot list {}", root.display(), dir.display()))?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let Some(rel) = rel.to_str().map(str::to_string) else {
                bail!("--files {}: {} is not a UTF-8 path", root.display(), p.display());
            };
            let m = fs::symlink_metadata(&p).with_context(|| format!("--files: cannot read {}", p.display()))?;
            let mode = permission_bits(&m);
            let ft = m.file_type();
            if ft.is_symlink() {
                let t = fs::read_link(&p).with_context(|| format!("--files: cannot read link {}", p.display()))?;
                let Some(t) = t.to_str() else { bail!("--files: link {} is not UTF-8", p.display()) };
                out.push(Entry::Symlink { path: rel, target: t.to_string() });
            } else if ft.is_dir() {
                out.push(Entry::Dir { path: rel, mode });
                stack.push(p);
            } else if ft.is_file() {
                let data = fs::read(&p).with_context(|| format!("--files: cannot read {}", p.display()))?;
                out.push(Entry::File { path: rel, mode, data });
            } else {
                bail!(
                    "--files {}: {} is not a regular file, directory or symlink (device nodes, FIFOs and sockets are not copied)",
                    root.display(),
                    p.display()
                );
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

#[cfg(unix)]
fn permission_bits(m: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn permission_bits(m: &fs::Metadata) -> u32 {
    if m.is_dir() {
        0o755
    } else if m.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

/// The overlay's entries: parent directories first (so each path can be
/// created in any base), the tenant's files, then the agent, role and
/// services (which a tenant file may not replace).
pub fn overlay_entries(agent: Vec<u8>, services: &[Service], tenant: Vec<(PathBuf, Vec<Entry>)>) -> Result<Vec<Entry>> {
    let ours = [AGENT_PATH, ROLE_PATH, SERVICES_PATH];
    let mut by_path: BTreeMap<String, (Entry, String)> = BTreeMap::new();
    for (root, entries) in tenant {
        for e in entries {
            let p = e.path().to_string();
            if ours.contains(&p.as_str())
                || ours.iter().any(|o| o.starts_with(&format!("{p}/")) && !matches!(e, Entry::Dir { .. }))
            {
                bail!("--files {}: {p} would replace what bmimage puts there (/{p})", root.display());
            }
            let from = root.display().to_string();
            if let Some((old, old_from)) = by_path.get(&p) {
                let both_dirs = matches!(old, Entry::Dir { .. }) && matches!(e, Entry::Dir { .. });
                if !both_dirs {
                    bail!("--files: {p} is in both {old_from} and {from}");
                }
            }
            by_path.insert(p, (e, from));
        }
    }
    // Parent directories of every path not already given.
    let mut dirs: BTreeMap<String, u32> = BTreeMap::new();
    let all: Vec<String> = by_path.keys().cloned().chain(ours.iter().map(|s| s.to_string())).collect();
    for p in &all {
        let mut acc = String::new();
        let parts: Vec<&str> = p.split('/').collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if !by_path.contains_key(&acc) {
                dirs.insert(acc.clone(), 0o755);
            }
        }
    }
    let mut out: Vec<Entry> = dirs.into_iter().map(|(path, mode)| Entry::Dir { path, mode }).collect();
    out.extend(by_path.into_values().map(|(e, _)| e));
    // Directories before what they hold: sort by path ("a" < "a/b").
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out.push(Entry::File { path: AGENT_PATH.into(), mode: 0o755, data: agent });
    out.push(Entry::File { path: ROLE_PATH.into(), mode: 0o644, data: b"agent\n".to_vec() });
    out.push(Entry::File { path: SERVICES_PATH.into(), mode: 0o644, data: services_conf(services).into_bytes() });
    Ok(out)
}

/// Checks the agent binary: a 64-bit x86-64 ELF executable. Returns a
/// warning when it is dynamically linked.
fn check_agent(path: &Path, bytes: &[u8]) -> Result<Option<String>> {
    let p = path.display();
    if bytes.len() < 64 || bytes.get(..4) != Some(b"\x7fELF") {
        bail!("--agent {p}: not an ELF executable (build it with `cargo build --release --target x86_64-unknown-linux-musl -p guest-agent`)");
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        bail!("--agent {p}: not a 64-bit little-endian ELF");
    }
    let u16_at = |o: usize| bytes.get(o..o + 2).and_then(|b| b.try_into().ok()).map_or(0, u16::from_le_bytes);
    if u16_at(18) != 62 {
        bail!("--agent {p}: not an x86-64 binary (e_machine {})", u16_at(18));
    }
    if !matches!(u16_at(16), 2 | 3) {
        bail!("--agent {p}: not an executable (e_type {})", u16_at(16));
    }
    // A PT_INTERP program header means dynamic linking.
    let phoff = bytes.get(32..40).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0) as usize;
    let phentsize = usize::from(u16_at(54));
    let phnum = usize::from(u16_at(56));
    for i in 0..phnum {
        let at = phoff.saturating_add(i.saturating_mul(phentsize));
        let ty = bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))).unwrap_or(0);
        if ty == 3 {
            return Ok(Some(format!(
                "--agent {p}: dynamically linked; the guest needs its libraries (a static musl build has none)"
            )));
        }
    }
    Ok(None)
}

/// Checks the base initramfs: gzip'd or plain newc.
fn check_base(path: &Path, bytes: &[u8]) -> Result<()> {
    let p = path.display();
    if bytes.is_empty() {
        bail!("--base-initrd {p}: empty file");
    }
    if bytes.starts_with(&[0x1f, 0x8b]) || bytes.starts_with(b"070701") || bytes.starts_with(b"070702") {
        return Ok(());
    }
    bail!("--base-initrd {p}: neither a gzip'd nor a plain newc cpio archive (scripts/linux-guest.sh writes target/linux/initramfs.cpio.gz)")
}

/// The signature file text for `data`, as `bmctl tenant sign-image` writes it.
pub fn signature_text(seed: &[u8; 32], data: &[u8]) -> String {
    let sig = mgmt_proto::sign_image(seed, data);
    format!("{}\n", mgmt_proto::crypto::to_hex(&sig.to_bytes()))
}

/// Reads a signing seed file (64 hex digits).
fn read_seed(path: &Path) -> Result<[u8; 32]> {
    let text = fs::read_to_string(path).with_context(|| format!("--sign-key {}: cannot read", path.display()))?;
    mgmt_proto::crypto::from_hex32(text.trim()).with_context(|| {
        format!(
            "--sign-key {}: not an Ed25519 signing seed (64 hex digits, as `bmctl keygen --signing NAME` writes keys/NAME.ed25519)",
            path.display()
        )
    })
}

/// What `build` wrote.
#[derive(Debug)]
pub struct Built {
    /// Output files.
    pub files: Vec<PathBuf>,
    /// Overlay entries.
    pub entries: usize,
    /// Warnings to print.
    pub warnings: Vec<String>,
}

/// Runs `bmimage guest`.
pub fn build(spec: &GuestSpec) -> Result<Built> {
    let mut warnings = Vec::new();
    let kernel = fs::read(&spec.kernel).with_context(|| format!("--kernel {}: cannot read", spec.kernel.display()))?;
    guest_loader::parse_kernel(&kernel, guest_loader::Preference::Linux).map_err(|e| {
        anyhow::anyhow!("--kernel {}: not a Linux bzImage the node can boot: {e:?}", spec.kernel.display())
    })?;
    let base = fs::read(&spec.base_initrd)
        .with_context(|| format!("--base-initrd {}: cannot read", spec.base_initrd.display()))?;
    check_base(&spec.base_initrd, &base)?;
    let agent = fs::read(&spec.agent).with_context(|| format!("--agent {}: cannot read", spec.agent.display()))?;
    if let Some(w) = check_agent(&spec.agent, &agent)? {
        warnings.push(w);
    }
    let mut services = Vec::new();
    for s in &spec.services {
        let svc = parse_service(s)?;
        if services.iter().any(|o: &Service| o.name == svc.name) {
            bail!("--service {s:?}: a service named {} was given twice", svc.name);
        }
        services.push(svc);
    }
    let mut tenant = Vec::new();
    for d in &spec.files {
        tenant.push((d.clone(), tree_entries(d)?));
    }
    let seed = spec.sign_key.as_deref().map(read_seed).transpose()?;
    let entries = overlay_entries(agent, &services, tenant)?;
    let overlay = gzip(&newc(&entries))?;
    let mut initrd = base;
    // The kernel skips zero padding between archives; align to 4 anyway.
    while !initrd.len().is_multiple_of(4) {
        initrd.push(0);
    }
    initrd.extend_from_slice(&overlay);

    fs::create_dir_all(&spec.out).with_context(|| format!("--out {}: cannot create", spec.out.display()))?;
    let mut files = Vec::new();
    for (name, data) in [("vmlinuz", &kernel), ("initrd.img", &initrd)] {
        let path = spec.out.join(name);
        fs::write(&path, data).with_context(|| format!("--out: cannot write {}", path.display()))?;
        if data.len() as u64 > NODE_IMAGE_LIMIT {
            warnings.push(format!(
                "{} is {} bytes: the node refuses console uploads over {} bytes (max_image_bytes)",
                path.display(),
                data.len(),
                NODE_IMAGE_LIMIT
            ));
        }
        files.push(path.clone());
        let sig = PathBuf::from(format!("{}.sig", path.display()));
        if let Some(seed) = &seed {
            fs::write(&sig, signature_text(seed, data))
                .with_context(|| format!("--out: cannot write {}", sig.display()))?;
            files.push(sig);
        } else if sig.exists() {
            // A stale signature would not match the new image.
            fs::remove_file(&sig).with_context(|| format!("--out: cannot remove the stale {}", sig.display()))?;
        }
    }
    Ok(Built { files, entries: entries.len(), warnings })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A small newc reader: (name, mode, data) per member, up to the trailer.
    fn read_newc(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            let at = total - b.len();
            assert_eq!(at % 4, 0, "header not 4-aligned");
            assert_eq!(&b[..6], b"070701", "bad magic at {at}");
            let field =
                |i: usize| u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
            let mode = field(1);
            let size = field(6) as usize;
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&b[110..110 + namesize - 1]).unwrap().to_string();
            assert_eq!(b[110 + namesize - 1], 0);
            let data_at = (110 + namesize + 3) & !3;
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size + 3) & !3;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push((name, mode, data));
        }
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(b).read_to_end(&mut v).unwrap();
        v
    }

    /// A minimal static x86-64 ELF header (no program headers).
    fn fake_agent() -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16] = 2;
        b[18] = 62;
        b
    }

    #[test]
    fn newc_round_trip() {
        let entries = vec![
            Entry::Dir { path: "etc".into(), mode: 0o755 },
            Entry::File { path: "etc/a".into(), mode: 0o600, data: b"hello".to_vec() },
            Entry::File { path: "etc/empty".into(), mode: 0o644, data: vec![] },
            Entry::Symlink { path: "etc/l".into(), target: "a".into() },
        ];
        let got = read_newc(&gunzip(&gzip(&newc(&entries)).unwrap()));
        assert_eq!(
            got,
            vec![
                ("etc".into(), 0o040755, vec![]),
                ("etc/a".into(), 0o100600, b"hello".to_vec()),
                ("etc/empty".into(), 0o100644, vec![]),
                ("etc/l".into(), 0o120777, b"a".to_vec()),
            ]
        );
    }

    #[test]
    fn services_parse_and_refuse() {
        assert_eq!(
            parse_service("web=httpd -f -p 8080").unwrap(),
            Service { name: "web".into(), command: "httpd -f -p 8080".into() }
        );
        for bad in
            ["web", "=httpd", "web=", "we b=x", "a/b=x", "web=x\ty", "web=x\ny", &format!("{}=x", "n".repeat(33))]
        {
            let e = parse_service(bad).unwrap_err().to_string();
            assert!(e.starts_with("--service "), "{bad:?}: {e}");
        }
        let conf = services_conf(&[parse_service("web=httpd -f").unwrap(), parse_service("t=sleep 5").unwrap()]);
        assert_eq!(conf, "web\ton-failure\thttpd -f\nt\ton-failure\tsleep 5\n");
    }

    fn kernel_fixture(dir: &Path) -> PathBuf {
        // The smallest bzImage guest_loader accepts: a setup header with
        // the "HdrS" magic and protocol 2.06+.
        let mut k = vec![0u8; 0x2000];
        k[0x1f1] = 1; // setup_sects
        k[0x1fe] = 0x55;
        k[0x201] = 0x66; // jump: the header runs to 0x268
        k[0x1ff] = 0xAA;
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        k[0x211] = 1; // loadflags: LOADED_HIGH
        k[0x230..0x234].copy_from_slice(&0x200000u32.to_le_bytes()); // kernel_alignment
        k[0x236] = 1; // relocatable
        k[0x238..0x23c].copy_from_slice(&0x7fffffffu32.to_le_bytes()); // cmdline_size
        let p = dir.join("vmlinuz");
        fs::write(&p, k).unwrap();
        p
    }

    fn spec(dir: &Path) -> GuestSpec {
        let base = dir.join("base.cpio.gz");
        fs::write(
            &base,
            gzip(&newc(&[Entry::File { path: "init".into(), mode: 0o755, data: b"#!/bin/sh\n".to_vec() }])).unwrap(),
        )
        .unwrap();
        let agent = dir.join("bm-agent");
        fs::write(&agent, fake_agent()).unwrap();
        GuestSpec {
            kernel: kernel_fixture(dir),
            base_initrd: base,
            agent,
            files: vec![],
            services: vec!["web=httpd -f -p 8080".into()],
            sign_key: None,
            out: dir.join("out"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn overlay_parses_back_with_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let mut s = spec(t.path());
        let files = t.path().join("files");
        fs::create_dir_all(files.join("srv/www")).unwrap();
        fs::write(files.join("srv/www/index.html"), b"<p>hi</p>").unwrap();
        fs::write(files.join("srv/run.sh"), b"#!/bin/sh\necho run\n").unwrap();
        fs::set_permissions(files.join("srv/run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(files.join("srv/www/index.html"), fs::Permissions::from_mode(0o604)).unwrap();
        std::os::unix::fs::symlink("www/index.html", files.join("srv/link")).unwrap();
        s.files = vec![files];
        let built = build(&s).unwrap();
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        let initrd = fs::read(s.out.join("initrd.img")).unwrap();
        let base = fs::read(&s.base_initrd).unwrap();
        assert_eq!(&initrd[..base.len()], &base[..], "the base comes first, unchanged");
        let mut rest = &initrd[base.len()..];
        while rest.first() == Some(&0) {
            rest = &rest[1..];
        }
        let got = read_newc(&gunzip(rest));
        let find =
            |n: &str| got.iter().find(|(p, _, _)| p == n).unwrap_or_else(|| panic!("{n} missing: {got:?}")).clone();
        assert_eq!(find("usr/sbin/bm-agent").1, 0o100755);
        assert_eq!(find("usr/sbin/bm-agent").2, fake_agent());
        assert_eq!(find("etc/bm-role").2, b"agent\n");
        assert_eq!(find("etc/bm-agent/services.conf").2, b"web\ton-failure\thttpd -f -p 8080\n");
        assert_eq!(find("srv/run.sh").1, 0o100750);
        assert_eq!(find("srv/www/index.html").1, 0o100604);
        assert_eq!(find("srv/www/index.html").2, b"<p>hi</p>");
        assert_eq!(find("srv/link").1 & 0o170000, 0o120000);
        assert_eq!(find("srv/link").2, b"www/index.html");
        assert_eq!(find("etc/bm-agent").1, 0o040755);
        // Every parent comes before its children.
        for (i, (p, _, _)) in got.iter().enumerate() {
            if let Some((parent, _)) = p.rsplit_once('/') {
                let pi = got.iter().position(|(q, _, _)| q == parent).unwrap_or_else(|| panic!("no parent for {p}"));
                assert!(pi < i, "{parent} after {p}");
            }
        }
        assert_eq!(fs::read(s.out.join("vmlinuz")).unwrap(), fs::read(&s.kernel).unwrap());
        assert!(!s.out.join("initrd.img.sig").exists());
    }

    #[test]
    fn bad_inputs_name_the_flag() {
        let t = tempfile::tempdir().unwrap();
        let s = spec(t.path());
        let err = |s: &GuestSpec| build(s).unwrap_err().to_string();
        let mut b = s.clone();
        b.services = vec!["web httpd".into()];
        assert!(err(&b).starts_with("--service"), "{}", err(&b));
        let mut b = s.clone();
        b.services = vec!["a=x".into(), "a=y".into()];
        assert!(err(&b).contains("twice"), "{}", err(&b));
        let mut b = s.clone();
        b.agent = t.path().join("base.cpio.gz");
        assert!(err(&b).starts_with("--agent"), "{}", err(&b));
        let mut b = s.clone();
        b.agent = t.path().join("missing");
        assert!(err(&b).starts_with("--agent"), "{}", err(&b));
        let mut b = s.clone();
        b.base_initrd = s.agent.clone();
        assert!(err(&b).starts_with("--base-initrd"), "{}", err(&b));
        let mut b = s.clone();
        b.kernel = s.agent.clone();
        assert!(err(&b).starts_with("--kernel"), "{}", err(&b));
        let mut b = s.clone();
        b.files = vec![s.agent.clone()];
        assert!(err(&b).starts_with("--files"), "{}", err(&b));
        let mut b = s.clone();
        fs::write(t.path().join("key"), "not hex").unwrap();
        b.sign_key = Some(t.path().join("key"));
        assert!(err(&b).starts_with("--sign-key"), "{}", err(&b));
        // A tenant file may not replace the agent or the role.
        let files = t.path().join("over");
        fs::create_dir_all(files.join("etc")).unwrap();
        fs::write(files.join("etc/bm-role"), "shell\n").unwrap();
        let mut b = s.clone();
        b.files = vec![files];
        assert!(err(&b).starts_with("--files") && err(&b).contains("etc/bm-role"), "{}", err(&b));
    }

    #[test]
    fn signatures_match_bmctl() {
        let t = tempfile::tempdir().unwrap();
        let mut s = spec(t.path());
        let seed = [7u8; 32];
        fs::write(t.path().join("k.ed25519"), format!("{}\n", mgmt_proto::crypto::to_hex(&seed))).unwrap();
        s.sign_key = Some(t.path().join("k.ed25519"));
        build(&s).unwrap();
        let key = mgmt_proto::image_verify_key(&seed);
        for f in ["vmlinuz", "initrd.img"] {
            let data = fs::read(s.out.join(f)).unwrap();
            let text = fs::read_to_string(s.out.join(format!("{f}.sig"))).unwrap();
            assert_eq!(text.len(), 129);
            assert!(text.ends_with('\n'));
            let bytes: Vec<u8> = (0..64).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect();
            let sig = mgmt_proto::ImageSignature::from_bytes(&bytes.try_into().unwrap());
            assert_eq!(mgmt_proto::verify_image(&key, &data, &sig), Ok(()), "{f}");
        }
    }
}
