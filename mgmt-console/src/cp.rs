//! `bmctl tenant cp`: files and trees between this machine and a VM, through
//! its agent, resumable both ways and checked end to end with SHA-256.
//!
//! Into the VM the agent writes `PATH.bm-part` and renames it at the end;
//! a later copy that finds such a partial file (`Stat.partial`) resumes
//! after it. Out of the VM bmctl writes `DST.bm-part` the same way. Either
//! way the whole file's SHA-256 is compared at the end, so a resume over a
//! partial file that does not match the source is caught (exit 6).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use agent_proto::msg::{FileStat, TreeEntry};
use agent_proto::{Event, Input, Op, MAX_CONSOLE_DATA};
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use mgmt_proto::crypto::to_hex;
use mgmt_proto::{Request, Response};
use sha2::{Digest, Sha256};
use vmm_config::text::escape_control;

use crate::agent::{is_backpressure, unexpected, Agent, AgentFailure};
use crate::cli::UsageError;
use crate::client::ClientError;

/// Data inputs sent ahead of the node's answers. After the node's first
/// backpressure refusal only one: with several in flight a later input can
/// be taken after an earlier one was refused (the agent drained the queue
/// in between), which would reorder the file.
const WINDOW: usize = 8;
/// Whole-file restarts after the node took input out of order.
const RESTARTS: u32 = 3;

/// How to copy.
pub struct CpOptions {
    /// Copy directories recursively.
    pub recursive: bool,
    /// Print notes ("resuming at N bytes") to stderr.
    pub notes: bool,
    /// Progress (hidden when not wanted).
    pub bar: ProgressBar,
}

impl CpOptions {
    fn note(&self, text: String) {
        if self.notes {
            self.bar.suspend(|| eprintln!("{text}"));
        }
    }
}

/// What a copy did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CpReport {
    /// Bytes of file data in the copied files (including resumed parts).
    pub bytes: u64,
    /// Bytes actually transferred this time.
    pub transferred: u64,
    /// Files copied.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Wall time.
    pub seconds: f64,
    /// SHA-256 of the file (single-file copies).
    pub sha256: Option<String>,
    /// Offsets copies resumed at.
    pub resumed_at: Vec<u64>,
    /// Data inputs sent again after the node's backpressure.
    pub backpressure_retries: u64,
}

impl CpReport {
    /// The final line.
    pub fn summary(&self) -> String {
        let mibs = if self.seconds > 0.0 { self.transferred as f64 / 1048576.0 / self.seconds } else { 0.0 };
        let mut s = format!("copied {} bytes in {:.2} s ({:.2} MiB/s)", self.bytes, self.seconds, mibs);
        match &self.sha256 {
            Some(h) => s.push_str(&format!(", sha256 {h}")),
            None => s.push_str(&format!(" ({} files, {} directories)", self.files, self.dirs)),
        }
        s
    }
}

/// SHA-256 of a local file.
pub fn sha256_file(p: &Path) -> Result<[u8; 32]> {
    let mut f = File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or(&[]));
    }
    Ok(h.finalize().into())
}

/// A path in the guest joined with a relative part.
pub fn join_remote(base: &str, rel: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

/// The last component of a guest path.
pub fn remote_name(p: &str) -> Option<&str> {
    p.trim_end_matches('/').rsplit('/').next().filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

/// A relative path from the guest's tree listing, checked so a hostile
/// guest cannot make bmctl write outside the destination.
pub fn safe_relative(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(p.to_path_buf())
}

fn stat(agent: &mut Agent, path: &str) -> Result<FileStat> {
    match agent.run(Op::Stat { path: path.to_string() })? {
        Event::Stat(s) => Ok(s),
        e => Err(ClientError::Unexpected(format!("{e:?}")).into()),
    }
}

fn mismatch(what: &str, got: &[u8; 32], want: &[u8; 32]) -> anyhow::Error {
    ClientError::Unexpected(format!(
        "sha256 mismatch for {what}: the copy has {}, the source {} (a resumed partial copy that did not match? copy again)",
        to_hex(got),
        to_hex(want)
    ))
    .into()
}

#[cfg(unix)]
fn local_mode(m: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn local_mode(m: &std::fs::Metadata) -> u32 {
    if m.is_dir() {
        0o755
    } else {
        0o644
    }
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // No set-id bits from a guest.
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o1777))
        .with_context(|| format!("setting the mode of {}", p.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

// ---- into the VM ----

/// Copies a local file or (with `recursive`) tree into the VM.
pub fn copy_in(agent: &mut Agent, src: &Path, dst: &str, opts: &CpOptions) -> Result<CpReport> {
    let start = Instant::now();
    let meta = std::fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
    if meta.is_dir() && !opts.recursive {
        return Err(UsageError(format!("{} is a directory: give -r", src.display())).into());
    }
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| UsageError(format!("{}: no usable file name", src.display())))?;
    let st = stat(agent, dst)?;
    let target = if st.exists && st.dir { join_remote(dst, name) } else { dst.to_string() };
    let mut report = CpReport::default();
    if meta.is_dir() {
        let mut entries = Vec::new();
        walk_local(src, Path::new(""), &mut entries)?;
        let total: u64 = entries.iter().filter(|(_, m)| m.is_file()).map(|(_, m)| m.len()).sum();
        opts.bar.set_length(total);
        make_dir(agent, &target, local_mode(&meta))?;
        report.dirs += 1;
        for (rel, m) in &entries {
            let rel_s = rel.to_string_lossy().replace('\\', "/");
            let remote = join_remote(&target, &rel_s);
            if m.is_dir() {
                make_dir(agent, &remote, local_mode(m))?;
                report.dirs += 1;
            } else if m.is_file() {
                put_file(agent, &src.join(rel), &remote, local_mode(m), opts, &mut report)?;
            }
        }
    } else {
        opts.bar.set_length(meta.len());
        let sha = put_file(agent, src, &target, local_mode(&meta), opts, &mut report)?;
        report.sha256 = Some(to_hex(&sha));
    }
    report.backpressure_retries = agent.backpressure_retries;
    report.seconds = start.elapsed().as_secs_f64();
    opts.bar.finish_and_clear();
    Ok(report)
}

/// Every entry under `dir` (relative paths, parents first, sorted).
fn walk_local(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let r = rel.join(e.file_name());
        let m = std::fs::metadata(root.join(&r)).with_context(|| format!("reading {}", root.join(&r).display()))?;
        let is_dir = m.is_dir();
        out.push((r.clone(), m));
        if is_dir {
            walk_local(root, &r, out)?;
        }
    }
    Ok(())
}

fn make_dir(agent: &mut Agent, path: &str, mode: u32) -> Result<()> {
    match agent.run(Op::MakeDir { path: path.to_string(), mode })? {
        Event::Ok => Ok(()),
        e => Err(ClientError::Unexpected(format!("{e:?}")).into()),
    }
}

/// How sending a file's data ended.
enum Sent {
    /// The agent's `Done`: hash and size.
    Done([u8; 32], u64),
    /// The node took a later input after refusing an earlier one: the
    /// stream was cancelled and the copy must start over.
    Reordered,
}

/// One file into the VM, resuming after a partial copy; returns its hash.
fn put_file(
    agent: &mut Agent,
    local: &Path,
    remote: &str,
    mode: u32,
    opts: &CpOptions,
    report: &mut CpReport,
) -> Result<[u8; 32]> {
    let size = std::fs::metadata(local).with_context(|| format!("reading {}", local.display()))?.len();
    let want = sha256_file(local)?;
    let shown = escape_control(remote);
    let base = opts.bar.position();
    for attempt in 0..=RESTARTS {
        let st = stat(agent, remote)?;
        let offset = if attempt == 0 && st.partial > 0 && st.partial <= size {
            opts.note(format!("resuming at {} bytes", st.partial));
            report.resumed_at.push(st.partial);
            st.partial
        } else {
            0
        };
        opts.bar.set_position(base + offset);
        let job = WriteJob { local, remote, mode, offset, size, restarted: attempt > 0 };
        match send_file(agent, &job, opts)? {
            Sent::Done(got, got_size) => {
                if got != want || got_size != size {
                    return Err(mismatch(&shown, &got, &want));
                }
                report.bytes += size;
                report.transferred += size - offset;
                report.files += 1;
                return Ok(want);
            }
            Sent::Reordered => opts.note(format!("{shown}: the node took input out of order; copying it again")),
        }
    }
    Err(ClientError::Unexpected(format!("{shown}: input kept arriving out of order")).into())
}

fn read_chunk(f: &mut File, off: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// Streams `local` from `offset` as `WriteFile` data, [`WINDOW`] inputs in
/// flight; a backpressure refusal is waited out and resent in order.
/// One file's write into the VM.
struct WriteJob<'a> {
    local: &'a Path,
    remote: &'a str,
    mode: u32,
    offset: u64,
    size: u64,
    /// After a reordering: one input in flight from the start.
    restarted: bool,
}

fn send_file(agent: &mut Agent, job: &WriteJob<'_>, opts: &CpOptions) -> Result<Sent> {
    let WriteJob { local, remote, mode, offset, size, restarted } = *job;
    let mut f = File::open(local).with_context(|| format!("reading {}", local.display()))?;
    let stream = agent.open(Op::WriteFile { path: remote.to_string(), mode, offset, size })?;
    let vm = agent.vm();
    let mut next = offset;
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut pause = Duration::from_millis(5);
    let mut window = if restarted { 1 } else { WINDOW };
    loop {
        while in_flight.len() < window && next < size {
            let n = (size - next).min(MAX_CONSOLE_DATA as u64);
            let data = read_chunk(&mut f, next, n as usize).with_context(|| format!("reading {}", local.display()))?;
            if let Err(e) = agent.client().send(Request::AgentSend { vm, stream, input: Input::Data(data) }) {
                return Err(agent.explain(stream, e));
            }
            in_flight.push_back((next, n));
            next += n;
        }
        let Some((off, n)) = in_flight.pop_front() else { break };
        match agent.client().reply() {
            Ok(Response::Done) => {
                opts.bar.inc(n);
                pause = Duration::from_millis(5);
            }
            Ok(r) => return Err(unexpected(r).into()),
            Err(e) if is_backpressure(&e) => {
                let mut reordered = false;
                while in_flight.pop_front().is_some() {
                    match agent.client().reply() {
                        Ok(_) => reordered = true,
                        Err(e) if is_backpressure(&e) => {}
                        Err(e) => return Err(agent.explain(stream, e)),
                    }
                }
                agent.backpressure_retries += 1;
                if reordered {
                    let _ = agent.send(stream, Input::Cancel);
                    let _ = agent.drain(stream, |_| Ok(()));
                    return Ok(Sent::Reordered);
                }
                window = 1;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
                next = off;
            }
            Err(e) => {
                for _ in in_flight.drain(..) {
                    let _ = agent.client().reply();
                }
                return Err(agent.explain(stream, e));
            }
        }
    }
    if let Err(e) = agent.send(stream, Input::End) {
        return Err(agent.explain(stream, e));
    }
    match agent.drain(stream, |_| Ok(()))? {
        Event::Done { sha256, size, .. } => Ok(Sent::Done(sha256, size)),
        e => Err(ClientError::Unexpected(format!("{e:?}")).into()),
    }
}

// ---- out of the VM ----

/// Copies a file or (with `recursive`) tree out of the VM.
pub fn copy_out(agent: &mut Agent, src: &str, dst: &Path, opts: &CpOptions) -> Result<CpReport> {
    let start = Instant::now();
    let st = stat(agent, src)?;
    let shown = escape_control(src);
    if !st.exists {
        return Err(AgentFailure::Agent(format!("{shown}: no such file or directory in the VM")).into());
    }
    if st.dir && !opts.recursive {
        return Err(UsageError(format!("{shown} is a directory: give -r")).into());
    }
    let target = if dst.is_dir() {
        let name = remote_name(src).ok_or_else(|| UsageError(format!("{shown}: no usable file name")))?;
        dst.join(name)
    } else {
        dst.to_path_buf()
    };
    let mut report = CpReport::default();
    if st.dir {
        let tree = match agent.run(Op::ListTree { path: src.to_string() })? {
            Event::Tree(t) => t,
            e => return Err(ClientError::Unexpected(format!("{e:?}")).into()),
        };
        copy_tree_out(agent, src, &target, st.mode, &tree, opts, &mut report)?;
    } else {
        opts.bar.set_length(st.size);
        let sha = get_file(agent, src, st.size, &target, opts, &mut report)?;
        report.sha256 = Some(to_hex(&sha));
    }
    report.backpressure_retries = agent.backpressure_retries;
    report.seconds = start.elapsed().as_secs_f64();
    opts.bar.finish_and_clear();
    Ok(report)
}

fn copy_tree_out(
    agent: &mut Agent,
    src: &str,
    target: &Path,
    root_mode: u32,
    tree: &[TreeEntry],
    opts: &CpOptions,
    report: &mut CpReport,
) -> Result<()> {
    let mut checked = Vec::with_capacity(tree.len());
    for e in tree {
        let rel = safe_relative(&e.path).ok_or_else(|| {
            ClientError::Unexpected(format!("the agent listed an unsafe path {:?}", escape_control(&e.path)))
        })?;
        checked.push((rel, e));
    }
    checked.sort_by(|a, b| a.0.cmp(&b.0));
    opts.bar.set_length(tree.iter().filter(|e| !e.dir).map(|e| e.size).sum());
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    report.dirs += 1;
    let mut dirs = vec![(target.to_path_buf(), root_mode)];
    for (rel, e) in &checked {
        let local = target.join(rel);
        if e.dir {
            std::fs::create_dir_all(&local).with_context(|| format!("creating {}", local.display()))?;
            dirs.push((local, e.mode));
            report.dirs += 1;
        } else {
            if let Some(parent) = local.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            get_file(agent, &join_remote(src, &e.path), e.size, &local, opts, report)?;
        }
    }
    // Directory modes last (deepest first), so a read-only directory is
    // filled before it is closed.
    for (d, mode) in dirs.iter().rev() {
        set_mode(d, *mode)?;
    }
    Ok(())
}

/// `PATH.bm-part`.
pub fn part_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".bm-part");
    PathBuf::from(s)
}

/// One file out of the VM into `local`, resuming after `local.bm-part`.
fn get_file(
    agent: &mut Agent,
    remote: &str,
    size: u64,
    local: &Path,
    opts: &CpOptions,
    report: &mut CpReport,
) -> Result<[u8; 32]> {
    let part = part_path(local);
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let offset = if have > 0 && have <= size {
        opts.note(format!("resuming at {have} bytes"));
        report.resumed_at.push(have);
        have
    } else {
        0
    };
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&part)
        .with_context(|| format!("writing {}", part.display()))?;
    f.set_len(offset).with_context(|| format!("writing {}", part.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    opts.bar.inc(offset);
    let stream = agent.open(Op::ReadFile { path: remote.to_string(), offset })?;
    let mut got = 0u64;
    let end = agent.drain(stream, |e| {
        if let Event::Data(d) = e {
            f.write_all(d).with_context(|| format!("writing {}", part.display()))?;
            got += d.len() as u64;
            opts.bar.inc(d.len() as u64);
        }
        Ok(())
    })?;
    f.flush()?;
    drop(f);
    let Event::Done { sha256, size: total, mode } = end else {
        return Err(ClientError::Unexpected(format!("{end:?}")).into());
    };
    let local_sha = sha256_file(&part)?;
    if local_sha != sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(mismatch(&escape_control(remote), &local_sha, &sha256));
    }
    set_mode(&part, mode)?;
    std::fs::rename(&part, local).with_context(|| format!("renaming {} to {}", part.display(), local.display()))?;
    report.bytes += total;
    report.transferred += got;
    report.files += 1;
    Ok(sha256)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn guest_tree_paths_are_confined() {
        assert_eq!(safe_relative("a/b"), Some(PathBuf::from("a/b")));
        assert_eq!(safe_relative("../x"), None);
        assert_eq!(safe_relative("a/../../x"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative(""), None);
        assert_eq!(safe_relative("./a"), None);
    }

    #[test]
    fn remote_names_and_joins() {
        assert_eq!(remote_name("/root/f"), Some("f"));
        assert_eq!(remote_name("/root/d/"), Some("d"));
        assert_eq!(remote_name("/"), None);
        assert_eq!(remote_name("/a/.."), None);
        assert_eq!(join_remote("/", "x"), "/x");
        assert_eq!(join_remote("/root", "x"), "/root/x");
        assert_eq!(part_path(Path::new("/tmp/f")), PathBuf::from("/tmp/f.bm-part"));
    }
}
