//! Where the facility's state lives between rounds and across controllers:
//! compare-and-swap saves, so two controllers never overwrite each other
//! blindly. [`FileStore`] is for a single controller; `EtcdStore` (in
//! [`crate::etcd`]) for several with an election.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::FacilityState;

/// A stored version; 0 means nothing was ever stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rev(pub u64);

/// Why a load or save failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else saved since `expect` (reload and redo).
    Conflict {
        /// What the caller expected.
        expected: Rev,
        /// What is stored.
        found: Rev,
    },
    /// The stored state is damaged (torn write, bad checksum, bad JSON).
    Corrupt(String),
    /// The store cannot be reached or written.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict { expected, found } => write!(
                f,
                "store conflict: expected revision {}, found {} (another controller wrote)",
                expected.0, found.0
            ),
            StoreError::Corrupt(s) => write!(f, "store corrupt: {s}"),
            StoreError::Unavailable(s) => write!(f, "store unavailable: {s}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The facility's persistent state with compare-and-swap.
pub trait Store: Send + Sync {
    /// The stored state and its revision (empty state, `Rev(0)` if none).
    fn load(&self) -> Result<(FacilityState, Rev), StoreError>;
    /// Save if the stored revision is still `expect`; returns the new one.
    fn save(&self, st: &FacilityState, expect: Rev) -> Result<Rev, StoreError>;
}

const MAGIC: &str = "BMFACILITY1";

/// One file, replaced atomically: write a temporary file, fsync it, rename it
/// over, fsync the directory. A header line carries the revision and a
/// SHA-256 of the body, so a torn or edited file is refused, not half-read.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path` (created on first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    fn io(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::Unavailable(format!("{} {}: {e}", what, self.path.display()))
    }

    fn read(&self) -> Result<(FacilityState, Rev), StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((FacilityState::default(), Rev(0))),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(StoreError::Corrupt(format!("{}: not UTF-8", self.path.display())))
            }
            Err(e) => return Err(self.io("reading", e)),
        };
        decode(&text).map_err(|e| StoreError::Corrupt(format!("{}: {e}", self.path.display())))
    }

    fn lock(&self) -> Result<File, StoreError> {
        let mut p = self.path.clone().into_os_string();
        p.push(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| self.io("opening lock of", e))?;
        f.lock().map_err(|e| self.io("locking", e))?;
        Ok(f)
    }
}

fn checksum(rev: u64, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(rev.to_le_bytes());
    h.update(body.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's text for `st` at `rev`.
pub fn encode(st: &FacilityState, rev: Rev) -> Result<String, StoreError> {
    let body = serde_json::to_string_pretty(st).map_err(|e| StoreError::Corrupt(format!("encoding: {e}")))?;
    Ok(format!("{MAGIC} {} {}\n{body}", rev.0, checksum(rev.0, &body)))
}

/// Parse and check a file's text.
pub fn decode(text: &str) -> Result<(FacilityState, Rev), String> {
    let (head, body) = text.split_once('\n').ok_or("no header line (torn write?)")?;
    let mut parts = head.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(format!("not a facility state file (expected {MAGIC})"));
    }
    let rev: u64 = parts.next().and_then(|r| r.parse().ok()).ok_or("bad revision in header")?;
    let sum = parts.next().ok_or("no checksum in header")?;
    if sum != checksum(rev, body) {
        return Err("checksum mismatch: the file is torn or was edited; restore a backup".into());
    }
    let st = serde_json::from_str(body).map_err(|e| format!("bad state: {e}"))?;
    Ok((st, Rev(rev)))
}

fn sync_dir(p: &Path) -> std::io::Result<()> {
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl Store for FileStore {
    fn load(&self) -> Result<(FacilityState, Rev), StoreError> {
        self.read()
    }

    fn save(&self, st: &FacilityState, expect: Rev) -> Result<Rev, StoreError> {
        let _guard = self.lock()?;
        let (_, found) = self.read()?;
        if found != expect {
            return Err(StoreError::Conflict { expected: expect, found });
        }
        // A revision that cannot grow would make every save look fresh.
        let rev = Rev(found.0.checked_add(1).ok_or_else(|| {
            StoreError::Corrupt(format!("{}: revision {} cannot be raised", self.path.display(), found.0))
        })?);
        let text = encode(st, rev)?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp).map_err(|e| self.io("creating temporary for", e))?;
            f.write_all(text.as_bytes()).map_err(|e| self.io("writing", e))?;
            f.sync_all().map_err(|e| self.io("syncing", e))?;
        }
        fs::rename(&tmp, &self.path).map_err(|e| self.io("renaming over", e))?;
        sync_dir(&self.path).map_err(|e| self.io("syncing the directory of", e))?;
        Ok(rev)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn cas_and_corruption() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let s = FileStore::new(dir.path().join("state"));
        let (mut st, r0) = s.load().unwrap_or_default();
        assert_eq!(r0, Rev(0));
        st.next_instance = 5;
        let r1 = s.save(&st, r0);
        assert_eq!(r1, Ok(Rev(1)));
        assert_eq!(s.save(&st, r0), Err(StoreError::Conflict { expected: Rev(0), found: Rev(1) }));
        assert_eq!(s.load(), Ok((st.clone(), Rev(1))));
        // Tear the file: drop its tail.
        let p = dir.path().join("state");
        let text = fs::read_to_string(&p).unwrap_or_default();
        fs::write(&p, &text[..text.len() / 2]).ok();
        match s.load() {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("checksum"), "{m}"),
            other => panic!("torn file accepted: {other:?}"),
        }
        assert!(matches!(s.save(&st, Rev(1)), Err(StoreError::Corrupt(_))));
    }
}
