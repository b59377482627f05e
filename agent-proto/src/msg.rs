//! The messages between the node and the guest agent, and the operations a
//! tenant's console asks for. The console and the node share [`Op`],
//! [`Input`] and [`Event`]; [`ToAgent`] and [`FromAgent`] are what crosses
//! the ring. All are postcard-encoded; [`decode`] refuses trailing bytes and
//! oversized input, so a record is either one whole message or an error.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Names one operation on one VM. The node assigns it; 0 is the agent's
/// own control stream (hello, heartbeats, service events).
pub type StreamId = u32;

/// The control stream's id.
pub const CONTROL_STREAM: StreamId = 0;

/// A terminal size, for a shell on a pseudo-terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A command to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments; the program is looked up in the agent's PATH.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory (the agent's own when `None`).
    pub cwd: Option<String>,
    /// The agent kills the command's process group after this many
    /// milliseconds (0 = no limit).
    pub timeout_ms: u32,
    /// Whether the console sends standard input (else it is /dev/null).
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (an interactive shell); stdout
    /// then carries the terminal's output and stderr is unused.
    pub pty: Option<WinSize>,
}

/// When a supervised service is started again after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never.
    Never,
    /// When it exits with a non-zero status or is killed by a signal.
    OnFailure,
    /// Whenever it exits, unless stopped by the tenant.
    Always,
}

/// A supervised service, as the tenant defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Its name (1-32 chars of A-Z a-z 0-9 _ . -).
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The restart policy.
    pub restart: RestartPolicy,
    /// Delay before a restart, in milliseconds (doubled per consecutive
    /// restart, up to 30 s).
    pub backoff_ms: u32,
    /// At most this many restarts within `window_secs`; then the service is
    /// marked failed and left stopped (0 = no limit).
    pub max_restarts: u32,
    /// The window for `max_restarts`, in seconds.
    pub window_secs: u32,
}

/// Operations on supervised services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceOp {
    /// Define (or redefine) a service and start it.
    Define(ServiceSpec),
    /// Stop and forget a service.
    Remove {
        /// Service name.
        name: String,
    },
    /// Start a stopped service.
    Start {
        /// Service name.
        name: String,
    },
    /// Stop a running service (SIGTERM, then SIGKILL after 5 s).
    Stop {
        /// Service name.
        name: String,
    },
    /// Stop then start.
    Restart {
        /// Service name.
        name: String,
    },
    /// The state of one service, or of all when `None`.
    Status {
        /// Service name.
        name: Option<String>,
    },
    /// The last `lines` lines of a service's output (stdout and stderr).
    Logs {
        /// Service name.
        name: String,
        /// How many lines, at most 1000.
        lines: u32,
    },
}

/// An operation a tenant asks its VM's agent for. Each runs on its own
/// stream and ends with one terminal [`Event`] ([`Event::is_terminal`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Run a command: `Stdout`/`Stderr` events, then `Exited`.
    Exec(ExecSpec),
    /// Metadata of a path: `Stat`.
    Stat {
        /// Absolute path in the guest.
        path: String,
    },
    /// Every entry under a directory, recursively (bounded): `Tree`.
    ListTree {
        /// Absolute path in the guest.
        path: String,
    },
    /// Read a file from `offset`: `Data` events, then `Done` with the
    /// SHA-256 of the whole file.
    ReadFile {
        /// Absolute path in the guest.
        path: String,
        /// Where to start (to resume a copy).
        offset: u64,
    },
    /// Write a file: the console sends `Data` inputs then `End`; the agent
    /// answers `Done` with the SHA-256 of the whole file. The data goes to
    /// `path.bm-part` and is renamed into place at the end, so a dropped
    /// copy never leaves a half file under the real name; `offset` > 0
    /// resumes such a partial file (the agent refuses when it is shorter).
    WriteFile {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits to set (e.g. 0o644).
        mode: u32,
        /// Where to start (to resume a copy).
        offset: u64,
        /// The whole file's size.
        size: u64,
    },
    /// Create a directory and its parents: `Ok`.
    MakeDir {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// The guest's processes: `Processes`.
    Processes,
    /// Send a signal to a process: `Ok`.
    Kill {
        /// Process id.
        pid: u32,
        /// Signal number.
        signal: i32,
    },
    /// Manage supervised services: `Ok`, `Services` or `Logs`.
    Service(ServiceOp),
    /// What the guest runs: `Inventory`.
    Inventory,
}

/// What the console sends on an open stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// Standard input or file data (at most [`crate::MAX_DATA`] bytes).
    Data(Vec<u8>),
    /// End of standard input, or of the file.
    End,
    /// Send this signal to the command's process group.
    Signal(i32),
    /// The terminal changed size.
    Resize(WinSize),
    /// Abandon the operation (kill the command, drop the partial file).
    Cancel,
}

/// A file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Whether the path exists.
    pub exists: bool,
    /// Whether it is a directory.
    pub dir: bool,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Size of `path.bm-part` (a partial copy to resume), 0 when none.
    pub partial: u64,
}

/// One entry of a directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Path relative to the listed directory, `/`-separated.
    pub path: String,
    /// Whether it is a directory.
    pub dir: bool,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

/// One process in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// State letter from /proc (R, S, D, Z, T, ...).
    pub state: String,
    /// Resident memory in KiB.
    pub rss_kib: u64,
    /// Command line (or the command name for kernel threads).
    pub cmd: String,
}

/// The state of a supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// `running`, `stopped`, `backoff` (waiting to restart) or `failed`
    /// (restart limit reached).
    pub state: String,
    /// Its process id when running.
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// How the last run ended (`exit 1`, `signal 9`), if it ended.
    pub last_exit: Option<String>,
    /// The restart policy.
    pub restart: RestartPolicy,
}

/// What the guest runs, for the tenant's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// `uname -r`.
    pub kernel: String,
    /// PRETTY_NAME from /etc/os-release, if any.
    pub os_release: Option<String>,
    /// Host name.
    pub hostname: String,
    /// bm-agent's version.
    pub agent_version: String,
    /// Installed packages (`name version`), where a package database
    /// exists (dpkg, apk); empty otherwise.
    pub packages: Vec<String>,
    /// Which package database was read (`dpkg`, `apk`, or `none`).
    pub package_source: String,
    /// Supervised services.
    pub services: Vec<ServiceStatus>,
    /// Guest memory, total and available, in KiB.
    pub mem_total_kib: u64,
    /// Guest memory available, in KiB.
    pub mem_available_kib: u64,
    /// Guest uptime in seconds.
    pub uptime_secs: u64,
}

/// What comes back on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Command output (or terminal output for a shell).
    Stdout(Vec<u8>),
    /// Command error output.
    Stderr(Vec<u8>),
    /// File data.
    Data(Vec<u8>),
    /// The command ended: its exit code, or the signal that killed it.
    Exited {
        /// Exit status when it exited.
        code: Option<i32>,
        /// Signal when it was killed.
        signal: Option<i32>,
        /// Whether the agent killed it at the timeout.
        timed_out: bool,
    },
    /// A file copy ended.
    Done {
        /// SHA-256 of the whole file.
        sha256: [u8; 32],
        /// The whole file's size.
        size: u64,
        /// Its permission bits.
        mode: u32,
    },
    /// Result of [`Op::Stat`].
    Stat(FileStat),
    /// Result of [`Op::ListTree`].
    Tree(Vec<TreeEntry>),
    /// Result of [`Op::Processes`].
    Processes(Vec<ProcessInfo>),
    /// Result of a service status request.
    Services(Vec<ServiceStatus>),
    /// Result of a service log request.
    Logs(Vec<String>),
    /// Result of [`Op::Inventory`].
    Inventory(Inventory),
    /// The operation succeeded with nothing to report.
    Ok,
    /// The operation failed; the message says why.
    Error(String),
}

impl Event {
    /// Whether this event ends its stream.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Event::Stdout(_) | Event::Stderr(_) | Event::Data(_))
    }

    /// Bytes this event counts against its stream's window: the payload
    /// for data events, a nominal 64 for the rest.
    pub fn weight(&self) -> usize {
        match self {
            Event::Stdout(d) | Event::Stderr(d) | Event::Data(d) => d.len().max(1),
            _ => 64,
        }
    }
}

/// Guest load, from the agent's heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestLoad {
    /// Load averages over 1, 5 and 15 minutes, times 1000.
    pub load_milli: [u32; 3],
    /// Memory available, in KiB.
    pub mem_available_kib: u64,
    /// Processes.
    pub processes: u32,
    /// Supervised services running.
    pub services_running: u32,
    /// Supervised services failed (restart limit reached).
    pub services_failed: u32,
}

/// Node to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToAgent {
    /// Start an operation on a new stream.
    Open {
        /// The stream.
        stream: StreamId,
        /// The operation.
        op: Op,
    },
    /// Console input for a stream.
    Input {
        /// The stream.
        stream: StreamId,
        /// The input.
        input: Input,
    },
    /// The console consumed this many bytes of the stream's events: the
    /// agent may send that much more ([`crate::relay::RelayLimits::stream_window`]).
    Credit {
        /// The stream.
        stream: StreamId,
        /// Bytes.
        bytes: u32,
    },
    /// Send heartbeats this often (milliseconds).
    Configure {
        /// Heartbeat period.
        heartbeat_ms: u32,
    },
}

/// Agent to node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromAgent {
    /// The first message after attaching.
    Hello {
        /// [`crate::AGENT_PROTOCOL`].
        protocol: u32,
        /// bm-agent's version.
        agent_version: String,
        /// Guest host name.
        hostname: String,
        /// Guest kernel release.
        kernel: String,
    },
    /// Sent every heartbeat period.
    Heartbeat {
        /// Counts up from 1.
        seq: u64,
        /// Guest uptime in milliseconds.
        uptime_ms: u64,
        /// Guest load.
        load: GuestLoad,
    },
    /// Something happened to a supervised service (started, exited,
    /// restarted, failed): a line for the VM's agent log. The texts a
    /// failure starts with are [`SERVICE_FAILURE_PREFIXES`]; an exit the
    /// tenant asked for ends with [`STOP_REQUESTED`] (see [`is_service_failure`]).
    ServiceEvent {
        /// Service name.
        name: String,
        /// What happened.
        what: String,
    },
    /// An event on an operation's stream.
    Event {
        /// The stream.
        stream: StreamId,
        /// The event.
        event: Event,
    },
}

/// Why bytes did not decode into a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// Longer than the limit.
    Oversize,
    /// Not one whole message.
    Malformed,
}

/// Encodes a message, refusing one over `limit` bytes.
pub fn encode<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    let v = postcard::to_allocvec(msg).map_err(|_| CodecError::Malformed)?;
    if v.len() > limit {
        return Err(CodecError::Oversize);
    }
    Ok(v)
}

/// Decodes exactly one message from `bytes` (no trailing bytes).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::Oversize);
    }
    let (v, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|_| CodecError::Malformed)?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed);
    }
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use alloc::{string::ToString, vec};

    #[test]
    fn round_trip_and_trailing_refused() {
        let m = ToAgent::Open {
            stream: 3,
            op: Op::Exec(ExecSpec {
                argv: vec!["echo".to_string(), "hi".to_string()],
                env: vec![],
                cwd: None,
                timeout_ms: 1000,
                stdin: false,
                pty: None,
            }),
        };
        let mut b = encode(&m, crate::MAX_RECORD).unwrap();
        assert_eq!(decode::<ToAgent>(&b, crate::MAX_RECORD).unwrap(), m);
        b.push(0);
        assert_eq!(decode::<ToAgent>(&b, crate::MAX_RECORD), Err(CodecError::Malformed));
    }

    #[test]
    fn max_data_fits_a_record() {
        let m = FromAgent::Event { stream: u32::MAX, event: Event::Stdout(vec![0xAB; crate::MAX_DATA]) };
        assert!(encode(&m, crate::MAX_RECORD).is_ok());
        let i = ToAgent::Input { stream: u32::MAX, input: Input::Data(vec![1; crate::MAX_DATA]) };
        assert!(encode(&i, crate::MAX_RECORD).is_ok());
    }

    #[test]
    fn terminal_events() {
        assert!(!Event::Stdout(vec![]).is_terminal());
        assert!(!Event::Data(vec![1]).is_terminal());
        assert!(Event::Ok.is_terminal());
        assert!(Event::Exited { code: Some(0), signal: None, timed_out: false }.is_terminal());
    }
}

/// Service-event texts that report the process ending or not starting.
pub const SERVICE_FAILURE_PREFIXES: [&str; 3] = ["exited with status ", "killed by signal ", "cannot start"];

/// Suffix of a service-event text whose exit the tenant asked for (a stop,
/// restart or removal): not a failure.
pub const STOP_REQUESTED: &str = " (stop requested)";

/// Whether a service event's text reports a failure: the process ended
/// with a non-zero status or a signal, or could not start, without a
/// tenant's stop. Monitoring counts these for `service-failing` policies.
pub fn is_service_failure(what: &str) -> bool {
    if what.ends_with(STOP_REQUESTED) {
        return false;
    }
    if let Some(code) = what.strip_prefix("exited with status ") {
        return code.trim().parse::<i64>() != Ok(0);
    }
    SERVICE_FAILURE_PREFIXES.iter().skip(1).any(|p| what.starts_with(p))
}

/// The state a service event's text leaves the service in, as monitoring
/// shows it (`running`, `restarting`, `failed`, `stopped`, `exited`);
/// `None` for texts that do not change it.
pub fn service_state_after(what: &str) -> Option<&'static str> {
    if what.starts_with("started pid") {
        Some("running")
    } else if what.starts_with("restarting") {
        Some("restarting")
    } else if what.starts_with("failed") {
        Some("failed")
    } else if what == "stopped" {
        Some("stopped")
    } else if is_service_failure(what) {
        Some("exited")
    } else {
        None
    }
}

#[cfg(test)]
mod service_failure_tests {
    use super::{is_service_failure, service_state_after};

    #[test]
    fn states_follow_the_agent_texts() {
        assert_eq!(service_state_after("started pid 7"), Some("running"));
        assert_eq!(service_state_after("restarting in 20 ms (restart 1)"), Some("restarting"));
        assert_eq!(service_state_after("failed: 3 restarts in 60 s (max_restarts)"), Some("failed"));
        assert_eq!(service_state_after("stopped"), Some("stopped"));
        assert_eq!(service_state_after("killed by signal 9"), Some("exited"));
        assert_eq!(service_state_after("killed by signal 15 (stop requested)"), None);
        assert_eq!(service_state_after("removed"), None);
    }

    #[test]
    fn classifies_agent_texts() {
        assert!(is_service_failure("exited with status 1"));
        assert!(is_service_failure("killed by signal 9"));
        assert!(is_service_failure("cannot start: No such file or directory (os error 2)"));
        assert!(!is_service_failure("exited with status 0"));
        assert!(!is_service_failure("killed by signal 15 (stop requested)"));
        assert!(!is_service_failure("started pid 12"));
        assert!(!is_service_failure("restarting in 20 ms (restart 1)"));
        assert!(!is_service_failure("failed: 3 restarts in 60 s (max_restarts)"));
        assert!(is_service_failure("exited with status garbage"));
    }
}
