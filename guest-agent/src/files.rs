//! File operations: stat, recursive listing, resumable reads and writes
//! with SHA-256 over the whole file, mkdir.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent_proto::msg::{FileStat, TreeEntry};
use agent_proto::Event;
use sha2::{Digest, Sha256};

/// At most this many entries in one `ListTree`.
pub const MAX_TREE_ENTRIES: usize = 10_000;

/// Suffix of a partial copy.
pub const PART_SUFFIX: &str = ".bm-part";

fn part_path(path: &str) -> PathBuf {
    PathBuf::from(format!("{path}{PART_SUFFIX}"))
}

/// `Op::Stat`.
pub fn stat(path: &str) -> Event {
    let partial = fs::metadata(part_path(path)).map(|m| m.len()).unwrap_or(0);
    match fs::metadata(path) {
        Ok(m) => Event::Stat(FileStat {
            exists: true,
            dir: m.is_dir(),
            mode: m.mode() & 0o7777,
            size: if m.is_dir() { 0 } else { m.len() },
            partial,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Event::Stat(FileStat { exists: false, dir: false, mode: 0, size: 0, partial })
        }
        Err(e) => Event::Error(format!("cannot stat {path}: {e}")),
    }
}

/// `Op::ListTree`: sorted by name within each directory, directories before their
/// contents. Symbolic links are skipped (never followed, never listed), as
/// are sockets, fifos and devices.
pub fn list_tree(path: &str) -> Event {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Event::Error(format!("cannot list {path}: not a directory")),
        Err(e) => return Event::Error(format!("cannot list {path}: {e}")),
    }
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(PathBuf::from(path), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => return Event::Error(format!("cannot list {}: {e}", dir.display())),
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let full = dir.join(&name);
            let Ok(m) = fs::symlink_metadata(&full) else { continue };
            let ft = m.file_type();
            if !ft.is_dir() && !ft.is_file() {
                continue;
            }
            let relp = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            if out.len() >= MAX_TREE_ENTRIES {
                return Event::Error(format!(
                    "{path} has more than {MAX_TREE_ENTRIES} entries (the listing limit); list a subdirectory"
                ));
            }
            out.push(TreeEntry {
                path: relp.clone(),
                dir: ft.is_dir(),
                mode: m.mode() & 0o7777,
                size: if ft.is_dir() { 0 } else { m.len() },
            });
            if ft.is_dir() {
                subdirs.push((full, relp));
            }
        }
        // Visit subdirectories next, in name order (their own entries are
        // already out, so a directory always precedes its contents).
        stack.extend(subdirs.into_iter().rev());
    }
    Event::Tree(out)
}

/// `Op::MakeDir`.
pub fn make_dir(path: &str, mode: u32) -> Event {
    if let Err(e) = fs::create_dir_all(path) {
        return Event::Error(format!("cannot create {path}: {e}"));
    }
    match fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)) {
        Ok(()) => Event::Ok,
        Err(e) => Event::Error(format!("cannot chmod {path}: {e}")),
    }
}

/// A file being read (`Op::ReadFile`): first hashes `[0, offset)`, then
/// yields data chunks as credit allows.
pub struct ReadOp {
    path: String,
    file: File,
    hasher: Sha256,
    pos: u64,
    offset: u64,
    mode: u32,
}

/// What one step of a read gave.
pub enum ReadStep {
    /// Work was done but nothing to send (still hashing the skipped part).
    Progress,
    /// A data event to send.
    Event(Event),
    /// The final event (`Done` or `Error`).
    Finished(Event),
}

impl ReadOp {
    /// Opens the file; why when it cannot be read.
    pub fn open(path: &str, offset: u64) -> Result<ReadOp, String> {
        let file = File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let m = file.metadata().map_err(|e| format!("cannot read {path}: {e}"))?;
        if !m.is_file() {
            return Err(format!("cannot read {path}: not a regular file"));
        }
        if offset > m.len() {
            return Err(format!("cannot read {path}: offset {offset} is beyond its size {}", m.len()));
        }
        Ok(ReadOp { path: path.to_string(), file, hasher: Sha256::new(), pos: 0, offset, mode: m.mode() & 0o7777 })
    }

    /// Does a bounded piece of work; `max` bytes of data at most.
    pub fn step(&mut self, max: usize) -> ReadStep {
        let hashing = self.pos < self.offset;
        let want =
            if hashing { (self.offset - self.pos).min(1 << 20) as usize } else { max.min(agent_proto::MAX_DATA) };
        let mut buf = vec![0u8; want.max(1)];
        let n = match self.file.read(&mut buf) {
            Ok(n) => n,
            Err(e) => return ReadStep::Finished(Event::Error(format!("cannot read {}: {e}", self.path))),
        };
        if n == 0 {
            if hashing {
                return ReadStep::Finished(Event::Error(format!("cannot read {}: file shrank", self.path)));
            }
            let sha256: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
            return ReadStep::Finished(Event::Done { sha256, size: self.pos, mode: self.mode });
        }
        buf.truncate(n);
        self.hasher.update(&buf);
        self.pos += n as u64;
        if hashing {
            ReadStep::Progress
        } else {
            ReadStep::Event(Event::Data(buf))
        }
    }

    /// Whether the next step is hashing (sends nothing, needs no credit).
    pub fn hashing(&self) -> bool {
        self.pos < self.offset
    }
}

/// A file being written (`Op::WriteFile`) into `path.bm-part`.
pub struct WriteOp {
    path: String,
    part: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    pos: u64,
    size: u64,
    mode: u32,
}

fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let chunk = buf.get_mut(..want).ok_or_else(|| std::io::Error::other("buffer"))?;
        file.read_exact(chunk)?;
        hasher.update(&*chunk);
        left -= want as u64;
    }
    Ok(())
}

impl WriteOp {
    /// Opens (or resumes) the part file; why when it cannot.
    pub fn open(path: &str, mode: u32, offset: u64, size: u64) -> Result<WriteOp, String> {
        let part = part_path(path);
        let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", part.display());
        if let Some(parent) = Path::new(path).parent() {
            if !parent.as_os_str().is_empty() && !parent.is_dir() {
                return Err(format!("cannot write {path}: directory {} does not exist", parent.display()));
            }
        }
        if offset > size {
            return Err(format!("cannot resume {path}: offset {offset} beyond size {size}"));
        }
        let mut hasher = Sha256::new();
        let file = if offset == 0 {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode_ext(0o600)
                .open(&part)
                .map_err(|e| err("cannot create", e))?
        } else {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&part)
                .map_err(|e| format!("cannot resume: {}: {e}", part.display()))?;
            let have = f.metadata().map_err(|e| err("cannot resume", e))?.len();
            if have < offset {
                return Err(format!(
                    "cannot resume: {} has {have} bytes, fewer than the offset {offset}",
                    part.display()
                ));
            }
            f.set_len(offset).map_err(|e| err("cannot truncate", e))?;
            hash_prefix(&mut f, offset, &mut hasher).map_err(|e| err("cannot read", e))?;
            f.seek(SeekFrom::Start(offset)).map_err(|e| err("cannot seek", e))?;
            f
        };
        Ok(WriteOp { path: path.to_string(), part, file: Some(file), hasher, pos: offset, size, mode })
    }

    /// One chunk of data; an error ends the operation (the part
    /// file is kept for a resume).
    pub fn data(&mut self, d: &[u8]) -> Result<(), String> {
        let Some(f) = self.file.as_mut() else { return Ok(()) };
        if self.pos + d.len() as u64 > self.size {
            return Err(format!("cannot write {}: more data than the announced size {}", self.path, self.size));
        }
        f.write_all(d).map_err(|e| format!("cannot write {}: {e}", self.part.display()))?;
        self.hasher.update(d);
        self.pos += d.len() as u64;
        Ok(())
    }

    /// End of data: sync, check, chmod, rename; the final event.
    pub fn finish(&mut self) -> Event {
        let Some(f) = self.file.take() else { return Event::Error("write already finished".into()) };
        if let Err(e) = f.sync_all() {
            return Event::Error(format!("cannot sync {}: {e}", self.part.display()));
        }
        drop(f);
        if self.pos != self.size {
            return Event::Error(format!(
                "cannot finish {}: got {} bytes, expected {} (partial file kept for a resume)",
                self.path, self.pos, self.size
            ));
        }
        if let Err(e) = fs::set_permissions(&self.part, fs::Permissions::from_mode(self.mode & 0o7777)) {
            return Event::Error(format!("cannot chmod {}: {e}", self.part.display()));
        }
        if let Err(e) = fs::rename(&self.part, &self.path) {
            return Event::Error(format!("cannot rename {} to {}: {e}", self.part.display(), self.path));
        }
        let sha256: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        Event::Done { sha256, size: self.pos, mode: self.mode & 0o7777 }
    }

    /// `Input::Cancel`: drop the part file.
    pub fn cancel(&mut self) -> Event {
        self.file = None;
        let _ = fs::remove_file(&self.part);
        Event::Error("cancelled".into())
    }
}

trait ModeExt {
    fn mode_ext(&mut self, mode: u32) -> &mut Self;
}

impl ModeExt for OpenOptions {
    fn mode_ext(&mut self, mode: u32) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, mode)
    }
}
