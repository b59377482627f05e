//! One running command of an `Op::Exec`: its pipes (or pty), stdin queue,
//! signals, timeout, and the rule that `Exited` comes only after the output
//! is drained.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agent_proto::msg::ExecSpec;
use agent_proto::{Event, Input};

use crate::{pty, sys};

/// PATH when neither the request nor the agent has one.
pub const DEFAULT_PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";

/// How long output may stay open after the command exited with nothing
/// flowing, before the agent stops waiting (a daemon kept the pipe).
const LINGER: Duration = Duration::from_secs(2);

/// Which of a command's descriptors a poll entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// Standard output (or the pty master's output).
    Out,
    /// Standard error.
    Err,
    /// Standard input (or the pty master's input).
    In,
}

/// A running command.
pub struct Exec {
    child: Child,
    pid: i32,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    master: Option<OwnedFd>,
    stdin_buf: VecDeque<u8>,
    stdin_end: bool,
    deadline: Option<Instant>,
    timed_out: bool,
    killed: bool,
    status: Option<ExitStatus>,
    last_activity: Instant,
}

/// The PATH to search: the request's, the agent's, or [`DEFAULT_PATH`].
pub fn search_path(env: &[(String, String)]) -> String {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| DEFAULT_PATH.to_string())
}

fn nonblocking(fd: OwnedFd) -> Result<OwnedFd, String> {
    sys::set_nonblocking(fd.as_raw_fd()).map_err(|e| format!("cannot set up pipes: {e}"))?;
    Ok(fd)
}

impl Exec {
    /// Starts the command; the error reads "cannot run X: why".
    pub fn spawn(spec: &ExecSpec) -> Result<Exec, String> {
        let Some(prog) = spec.argv.first() else { return Err("cannot run: empty argv".into()) };
        let fail = |e: std::io::Error| format!("cannot run {prog}: {e}");
        let mut cmd = Command::new(prog);
        crate::hypercall::no_io_permission(&mut cmd);
        cmd.args(spec.argv.iter().skip(1));
        cmd.env("PATH", search_path(&spec.env));
        cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let mut master = None;
        if let Some(size) = spec.pty {
            if !spec.env.iter().any(|(k, _)| k == "TERM") {
                cmd.env("TERM", "xterm");
            }
            let (m, slave) = pty::open(size).map_err(fail)?;
            pty::attach_child(&mut cmd, &slave).map_err(fail)?;
            master = Some(m);
        } else {
            cmd.process_group(0);
            cmd.stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped());
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(fail)?;
        // Dropping `cmd` closes our copies of the pty slave.
        drop(cmd);
        let pid = i32::try_from(child.id()).unwrap_or(0);
        let (out, err, stdin) = match &master {
            Some(m) => {
                let dup = |m: &OwnedFd| m.try_clone().map_err(|e| format!("cannot set up the pty: {e}"));
                (Some(nonblocking(dup(m)?)?), None, Some(nonblocking(dup(m)?)?))
            }
            None => (
                child.stdout.take().map(|p| nonblocking(OwnedFd::from(p))).transpose()?,
                child.stderr.take().map(|p| nonblocking(OwnedFd::from(p))).transpose()?,
                child.stdin.take().map(|p| nonblocking(OwnedFd::from(p))).transpose()?,
            ),
        };
        let now = Instant::now();
        Ok(Exec {
            child,
            pid,
            out,
            err,
            stdin,
            master,
            stdin_buf: VecDeque::new(),
            stdin_end: false,
            deadline: (spec.timeout_ms > 0).then(|| now + Duration::from_millis(u64::from(spec.timeout_ms))),
            timed_out: false,
            killed: false,
            status: None,
            last_activity: now,
        })
    }

    /// Whether its output pipes reached end of file, so only the exit
    /// status is awaited (which follows within moments).
    pub fn output_done(&self) -> bool {
        self.out.is_none() && self.err.is_none()
    }

    /// Descriptors to poll: outputs only when `may_read` (stream credit),
    /// stdin when input waits.
    pub fn poll_fds(&self, may_read: bool) -> Vec<(RawFd, i16, Pipe)> {
        let mut v = Vec::new();
        if may_read {
            if let Some(f) = &self.out {
                v.push((f.as_raw_fd(), libc::POLLIN, Pipe::Out));
            }
            if let Some(f) = &self.err {
                v.push((f.as_raw_fd(), libc::POLLIN, Pipe::Err));
            }
        }
        if let Some(f) = &self.stdin {
            if !self.stdin_buf.is_empty() {
                v.push((f.as_raw_fd(), libc::POLLOUT, Pipe::In));
            }
        }
        v
    }

    /// Reads up to `max` bytes of one output: the event to send, if any.
    pub fn read(&mut self, pipe: Pipe, max: usize) -> Option<Event> {
        let slot = match pipe {
            Pipe::Out => &mut self.out,
            Pipe::Err => &mut self.err,
            Pipe::In => return None,
        };
        let fd = slot.as_ref()?.as_raw_fd();
        let mut buf = vec![0u8; max.clamp(1, agent_proto::MAX_DATA)];
        match sys::read_some(fd, &mut buf) {
            Ok(sys::Read::Data(n)) => {
                self.last_activity = Instant::now();
                buf.truncate(n);
                Some(if pipe == Pipe::Err { Event::Stderr(buf) } else { Event::Stdout(buf) })
            }
            Ok(sys::Read::WouldBlock) => None,
            Ok(sys::Read::Eof) | Err(_) => {
                *slot = None;
                None
            }
        }
    }

    /// Feeds queued standard input to the command.
    pub fn write_stdin(&mut self) {
        let Some(f) = &self.stdin else { return };
        while !self.stdin_buf.is_empty() {
            let (a, _) = self.stdin_buf.as_slices();
            match sys::write_some(f.as_raw_fd(), a) {
                Ok(0) => return,
                Ok(n) => {
                    self.stdin_buf.drain(..n.min(a.len()));
                }
                Err(_) => {
                    // The command closed its input (EPIPE): drop what waits.
                    self.stdin_buf.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
        if self.stdin_end && self.master.is_none() {
            self.stdin = None;
        }
    }

    fn group(&self) -> i32 {
        self.master.as_ref().and_then(|m| pty::foreground_group(m.as_raw_fd())).unwrap_or(self.pid)
    }

    fn kill_all(&mut self) {
        let fg = self.group();
        let _ = sys::kill_group(fg, libc::SIGKILL);
        let _ = sys::kill_group(self.pid, libc::SIGKILL);
        let _ = self.child.kill();
        self.killed = true;
    }

    /// Console input for this command.
    pub fn input(&mut self, input: Input) {
        match input {
            Input::Data(d) => {
                if self.stdin.is_some() && !self.stdin_end {
                    self.stdin_buf.extend(d);
                    self.write_stdin();
                }
            }
            Input::End => {
                self.stdin_end = true;
                self.write_stdin();
            }
            Input::Signal(n) => {
                let _ = sys::kill_group(self.group(), n);
            }
            Input::Resize(size) => {
                if let Some(m) = &self.master {
                    let _ = pty::resize(m.as_raw_fd(), size);
                }
            }
            Input::Cancel => self.kill_all(),
        }
    }

    /// Reaps and enforces the timeout; the `Exited` event once the command
    /// has ended and its output is drained. `may_read` is false while the
    /// stream waits for credit: waiting for credit is not idleness.
    pub fn check(&mut self, now: Instant, may_read: bool) -> Option<Event> {
        if !may_read {
            self.last_activity = now;
        }
        if self.status.is_none() {
            if let Some(d) = self.deadline {
                if now >= d && !self.killed {
                    self.timed_out = true;
                    self.kill_all();
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
                self.last_activity = self.last_activity.max(now);
                self.stdin = None;
            }
        }
        let st = self.status?;
        let drained = self.out.is_none() && self.err.is_none();
        if !drained && now.duration_since(self.last_activity) < LINGER {
            return None;
        }
        self.out = None;
        self.err = None;
        self.master = None;
        Some(if self.timed_out {
            Event::Exited { code: None, signal: Some(libc::SIGKILL), timed_out: true }
        } else {
            Event::Exited { code: st.code(), signal: st.signal(), timed_out: false }
        })
    }

    /// The nearest time `check` must run again.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.status.is_some() {
            Some(self.last_activity + LINGER)
        } else {
            self.deadline
        }
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill_all();
            let _ = self.child.wait();
        }
    }
}
