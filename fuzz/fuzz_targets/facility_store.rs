//! Fuzzes the facility controller's file store (`facility::FileStore`):
//! a `BMFACILITY1 <rev> <sha256>` header line, then the state as JSON.
//! The input is written to a file and loaded: an `Ok` or a clear `Err`,
//! never a panic, and the same answer as `facility::store::decode` on the
//! text; what loads saves and loads back the same at the next revision.
//!
//! Input layout: one mode byte, then the rest. Mode bit 0 clear: the rest is
//! the whole file. Set: the rest is the body (JSON) and the file gets a
//! correct header for revision `mode >> 1` (`u64::MAX` for mode 0xFF), so
//! the input reaches the JSON decoder past the checksum.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use facility::store::decode;
use facility::{FileStore, Rev, Store, StoreError};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// This process's store file, `state-<pid>` in a shared scratch directory
/// (tmpfs when there is one); files of processes that are gone are removed
/// (libFuzzer exits without cleaning up).
fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
        let d = base.join("bmonitor-fuzz-facility");
        std::fs::create_dir_all(&d).expect("a scratch directory");
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("state-").and_then(|r| r.split('.').next()).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !PathBuf::from(format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        d.join(format!("state-{}", std::process::id()))
    })
}

fn file(mode: u8, rest: &[u8]) -> Vec<u8> {
    if mode & 1 == 0 {
        return rest.to_vec();
    }
    let rev = if mode == 0xFF { u64::MAX } else { u64::from(mode >> 1) };
    let mut h = Sha256::new();
    h.update(rev.to_le_bytes());
    h.update(rest);
    let sum: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut f = format!("BMFACILITY1 {rev} {sum}\n").into_bytes();
    f.extend_from_slice(rest);
    f
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = file(mode, rest);
    let path = path();
    std::fs::write(path, &bytes).expect("writing the scratch store");
    let store = FileStore::new(path);
    let loaded = store.load();
    let direct = std::str::from_utf8(&bytes).map_err(|_| ()).map(decode);
    match (&loaded, &direct) {
        (Ok(l), Ok(Ok(d))) => assert_eq!(l, d),
        (Err(StoreError::Corrupt(m)), Ok(Err(e))) => assert!(m.ends_with(e.as_str()), "{m} / {e}"),
        (Err(StoreError::Corrupt(m)), Err(())) => assert!(m.contains("UTF-8"), "{m}"),
        _ => panic!("load {loaded:?} disagrees with decode {direct:?}"),
    }
    if let Err(StoreError::Corrupt(m)) = &loaded {
        assert!(!m.is_empty());
    }
    let Ok((st, rev)) = loaded else { return };
    // A stale expectation is a conflict and changes nothing.
    if rev.0 > 0 {
        assert_eq!(store.save(&st, Rev(rev.0 - 1)), Err(StoreError::Conflict { expected: Rev(rev.0 - 1), found: rev }));
        assert_eq!(std::fs::read(path).expect("the store file"), bytes);
    }
    let next = store.save(&st, rev).expect("a loaded state saves");
    // The revision advances (it saturates at u64::MAX, where a save no
    // longer moves it: see the fuzz README).
    assert_eq!(next, Rev(rev.0.saturating_add(1)));
    assert_eq!(store.load(), Ok((st, next)));
});
