//! The command tree (clap) and its execution.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mgmt_proto::crypto::{from_hex32, to_hex};
use mgmt_proto::AUDIT_PAGE;
use mgmt_proto::*;
use serde_json::{json, Value};
use vmm_config::text::{escape_control, valid_name, NAME_RULE};

use crate::agent::AgentFailure;
use crate::client::{Client, ClientError};
use crate::profile::{role_string, Config, Profile};
use crate::rules::{format_rule, parse_rule};
use crate::upload::{upload_image, UploadOptions};

/// The exit codes, shown under `bmctl --help` so scripts can rely on them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    local problem (configuration, key or file)
  2    usage error (bad arguments or names; nothing was sent to the node)
  3    node unreachable or silent (cannot connect, timeout, connection lost)
  4    session refused (unknown console key, wrong role, wrong node key)
  5    request refused by the node (denied, not found, invalid, over a limit)
  6    protocol error (a malformed or unexpected answer)
  7    node busy: all console slots in use, still after retrying
  130  interrupted (Ctrl-C; an image upload is cancelled on the node)";

/// bmctl: the BMonitor landlord and tenant console.
#[derive(Debug, Parser)]
#[command(name = "bmctl", version, about, propagate_version = true, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Configuration directory (default: $XDG_CONFIG_HOME/bmctl).
    #[arg(long, global = true, env = "BMCTL_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Profile to use (default: the only landlord or tenant profile).
    #[arg(long, short = 'p', global = true, env = "BMCTL_PROFILE")]
    pub profile: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the node: to connect, and for each answer (at least 1).
    #[arg(long, global = true, env = "BMCTL_TIMEOUT", value_name = "SECS", value_parser = parse_timeout,
          default_value = "10")]
    pub timeout: Duration,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a console key (X25519) or, with --signing, an image signing key (Ed25519).
    Keygen {
        /// Key name (file name under keys/).
        name: String,
        /// Generate an Ed25519 image-signing key instead.
        #[arg(long)]
        signing: bool,
    },
    /// Manage connection profiles.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Landlord operations (hardware and facility).
    #[command(subcommand)]
    Landlord(LandlordCmd),
    /// Tenant operations (your own VMs).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Watch nodes: print their events, serve metrics and a dashboard.
    ///
    /// Subscribes to each profile's node (landlord or tenant: each sees what
    /// its role may), prints one line per event (`TIME NODE SCOPE KIND
    /// TEXT`; --json: JSON lines), and reconnects with backoff (0.5 s
    /// doubling to 10 s), resuming from the last event seen; a node that
    /// restarted is followed from its first event. Lost events are counted
    /// and reported on stderr. With --listen (default 127.0.0.1:9464) it
    /// serves /metrics (Prometheus), /api/state (JSON) and / (a live
    /// dashboard). SIGINT/SIGTERM or --for end it with exit 0.
    #[command(after_help = WATCH_HELP)]
    Watch(WatchArgs),
    /// The facility controller: nodes, placement, healing, replication,
    /// fencing (docs/fleet.md).
    Facility(Box<crate::fleet::cmd::FacilityArgs>),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Shown under `bmctl watch --help`.
pub const WATCH_HELP: &str = "\
--notify CMD runs `sh -c CMD` for every Notify event of a policy, with the
event as one JSON line on stdin and in $BM_EVENT; at most 4 run at once,
each is killed after 30 s; failures are reported on stderr, never fatal.
Examples:
  bmctl watch ll ta --listen 0.0.0.0:9464
  bmctl watch --json --notify 'mail -s bmonitor ops@example.org' ll";

/// `bmctl watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Profiles to watch (default: --profile, or the only profile there is).
    #[arg(value_name = "PROFILE")]
    pub profiles: Vec<String>,
    /// Health push period asked of the nodes.
    #[arg(long, value_name = "MS", default_value = "1000", value_parser = crate::watch::parse_interval)]
    pub interval_ms: u32,
    /// Run `sh -c CMD` for each Notify event (JSON on stdin and in $BM_EVENT).
    #[arg(long, value_name = "CMD")]
    pub notify: Option<String>,
    /// Serve /metrics, /api/state and the dashboard here.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464", conflicts_with = "no_listen")]
    pub listen: String,
    /// No HTTP server.
    #[arg(long)]
    pub no_listen: bool,
    /// Stop after this many seconds (exit 0).
    #[arg(long = "for", value_name = "SECS")]
    pub run_for: Option<u64>,
}

/// `bmctl landlord policy` and `bmctl tenant policy`.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Store a policy from a TOML file (`-`: standard input), replacing yours for the cluster.
    #[command(after_help = POLICY_HELP)]
    Set {
        /// The policy file.
        file: PathBuf,
        /// The cluster (a tenant's default: the cluster its VMs are in).
        #[arg(long)]
        cluster: Option<u32>,
        /// Refuse unless the stored policy has this version (0: none yet), so
        /// two operators do not overwrite each other.
        #[arg(long, value_name = "V")]
        expect_version: Option<u32>,
    },
    /// Print your policy for the cluster in the file format, with its version.
    Get {
        /// The cluster (a tenant's default: the cluster its VMs are in).
        #[arg(long)]
        cluster: Option<u32>,
    },
}

/// Shown under `policy set --help`: the file format.
pub const POLICY_HELP: &str = "\
The file holds [[rule]] tables; unknown keys are refused:
  [[rule]]
  name = \"restart-hung\"                        # unique in the policy
  when = { heartbeat-missed = { secs = 10 } }
      # or { probe-failing = { probe = \"disk\", count = 3 } }          (landlord)
      # or { service-failing = { service = \"web\", count = 2, window-secs = 60 } }  (tenant)
      # or { vm-stopped-abnormally = {} }
  action = \"restart-vm\"  # notify | restart-service | restart-vm | reload-image | reboot-node
  notify = true          # also notify `bmctl watch --notify` (default false)
  backoff-secs = 5       # doubled per repeat (default 10)
  max-repeats = 3        # per target per window (default 3)
  window-secs = 300      # (default 300)
  vm = 12                # only this VM (default: all of yours in the cluster)
An empty file removes your policy. `policy get` prints the same format.";

/// Profile commands.
#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// Add a profile.
    Add {
        /// Profile name.
        #[arg(value_parser = name_arg)]
        name: String,
        /// Node address: host:port or serial:/dev/ttyS1.
        #[arg(long)]
        node: String,
        /// The node's public key for this role (64 hex digits).
        #[arg(long)]
        node_key: String,
        /// landlord or tenant:LEASE.
        #[arg(long)]
        role: String,
        /// Console key name (default: the profile name; generated if missing).
        #[arg(long)]
        key: Option<String>,
    },
    /// List profiles.
    List,
    /// Remove a profile (its key file stays).
    Remove {
        /// Profile name.
        name: String,
    },
}

/// Landlord commands.
#[derive(Debug, Subcommand)]
pub enum LandlordCmd {
    /// Node status and health.
    Status,
    /// Reboot the node.
    Reboot,
    /// Shut the node down.
    Shutdown,
    /// Pause every VM (the management plane stays up).
    Suspend,
    /// Resume the VMs a suspend paused.
    Resume,
    /// Leases.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// VMs.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Set a cluster's boundary (rules ACTION:PROTO:NET[:PORTS], first match wins).
    Boundary {
        /// Cluster id.
        cluster: u32,
        /// Rules.
        rules: Vec<String>,
    },
    /// Node keys.
    #[command(subcommand)]
    Keys(LandlordKeysCmd),
    /// Read the audit log (all of it, page by page, unless --limit).
    Audit(AuditArgs),
    /// Corrective-action policies of a cluster.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

/// Which part of the audit log to read.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// First entry index (entries the node has trimmed are skipped).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// At most this many entries (default: all from --from on).
    #[arg(long)]
    pub limit: Option<u64>,
}

/// Lease commands.
#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Create a lease for a tenant console key; prints the tenant node key.
    Create {
        /// The tenant console's public key (hex).
        #[arg(long)]
        tenant_key: String,
        /// Cluster the lease's VMs join.
        #[arg(long, default_value_t = 0)]
        cluster: u32,
    },
    /// End a lease (destroys its VMs and keys).
    End {
        /// Lease id.
        lease: u32,
    },
}

/// Landlord VM commands.
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Define a VM.
    Create {
        /// Lease owning it.
        #[arg(long)]
        lease: u32,
        /// Name.
        #[arg(long, value_parser = name_arg)]
        name: String,
        /// Uploaded image name.
        #[arg(long, value_parser = name_arg)]
        image: String,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// RAM in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u32,
        /// Disk in MiB.
        #[arg(long, default_value_t = 0)]
        disk: u32,
        /// Cluster.
        #[arg(long, default_value_t = 0)]
        cluster: u32,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Give the VM a NIC with this IPv4 address in its cluster.
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// Uploaded image loaded as the VM's initrd (initramfs / boot module);
        /// the node refuses the VM when no such image is stored.
        #[arg(long, value_parser = name_arg, value_name = "IMAGE")]
        initrd: Option<String>,
    },
    /// Destroy a VM.
    Destroy {
        /// VM id.
        vm: u32,
    },
    /// List all VMs.
    List,
    /// Start a VM.
    Start {
        /// VM id.
        vm: u32,
    },
    /// Stop a VM.
    Stop {
        /// VM id.
        vm: u32,
    },
}

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Upload an image (chunked; re-running resumes an interrupted upload).
    Upload {
        /// The image file.
        file: PathBuf,
        /// Name on the node (default: the file name).
        #[arg(long, value_parser = name_arg)]
        name: Option<String>,
        /// Lease the image is for.
        #[arg(long)]
        lease: Option<u32>,
        /// Signature file from `bmctl tenant sign-image`.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Chunk size in KiB.
        #[arg(long, default_value_t = 60)]
        chunk_kib: usize,
        /// Reconnections allowed after a broken connection.
        #[arg(long, default_value_t = 5)]
        retries: u32,
    },
    /// List stored images and unfinished uploads, with the image quota's use.
    List {
        /// Re-read every image from the node's disk and check its SHA-256 (slow for large images).
        #[arg(long)]
        verify: bool,
    },
    /// Cancel an unfinished upload and free the space it holds on the node.
    Cancel {
        /// The image name the upload was begun with.
        #[arg(value_parser = name_arg)]
        name: String,
    },
}

/// Landlord key commands.
#[derive(Debug, Subcommand)]
pub enum LandlordKeysCmd {
    /// Generate a new landlord key pair (crypto-erases data under the old key).
    Rotate,
    /// Generate a new tenant key pair for a lease (the old tenant console is refused).
    RegenerateTenant {
        /// Lease id.
        lease: u32,
        /// Register a new tenant console key at the same time.
        #[arg(long)]
        tenant_key: Option<String>,
    },
}

/// Tenant commands.
#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Your lease on this node: its VMs and what state they are in.
    Status,
    /// List your VMs.
    Vms,
    /// Start a VM.
    Start {
        /// VM id.
        vm: u32,
    },
    /// Stop a VM.
    Stop {
        /// VM id.
        vm: u32,
    },
    /// Restart a VM.
    Restart {
        /// VM id.
        vm: u32,
    },
    /// Restart a VM from a fresh copy of its image.
    Reload {
        /// VM id.
        vm: u32,
    },
    /// Attach to a VM's serial console (lines typed are sent; Ctrl-D leaves).
    Console {
        /// VM id.
        vm: u32,
        /// Print what is there and leave.
        #[arg(long)]
        no_input: bool,
    },
    /// Sub-boundary rules.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Your node keys.
    #[command(subcommand)]
    Keys(TenantKeysCmd),
    /// Counters of a VM.
    Counters {
        /// VM id.
        vm: u32,
    },
    /// Read your part of the audit log (all of it, page by page, unless --limit).
    Audit(AuditArgs),
    /// Your corrective-action policies (for your VMs and their services).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Sign an image with an Ed25519 signing key (offline; writes FILE.sig).
    SignImage {
        /// The image file.
        file: PathBuf,
        /// Signing key name (from `bmctl keygen --signing`).
        #[arg(long)]
        key: String,
        /// Output file (default FILE.sig).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Approve the nodes that may hold replicas of your protected VMs'
    /// disks (their landlord node keys U_L; `bmctl facility lease` lists
    /// them). Replaces the list; none: no replicas. The node seals a disk's
    /// key only for a node named here.
    ReplicaPartners {
        /// Node keys (64 hex digits each), at most 16.
        keys: Vec<String>,
    },
    /// Register (or with --clear, remove) the key that must sign your images.
    SigningKey {
        /// Signing key name.
        key: Option<String>,
        /// Stop requiring signatures.
        #[arg(long)]
        clear: bool,
    },
    /// Run a command in a VM through its guest agent (bm-agent).
    ///
    /// Output streams to stdout/stderr as it comes. bmctl exits with the
    /// command's exit code, 128+N when a signal N killed it, 124 when the
    /// agent killed it at --cmd-timeout. Ctrl-C sends SIGINT to the command;
    /// a second Ctrl-C cancels it (the agent kills it); a third quits bmctl.
    /// With --json the output is collected and printed in one JSON object.
    #[command(after_help = AGENT_HELP)]
    Exec(ExecArgs),
    /// An interactive shell in a VM (a pseudo-terminal through the agent).
    ///
    /// The local terminal is put in raw mode while connected (every key,
    /// Ctrl-C included, goes to the VM) and its size follows the window.
    /// Without a terminal (pipes) the input is passed as it is. bmctl exits
    /// with the shell's status.
    #[command(after_help = AGENT_HELP)]
    Shell {
        /// VM id.
        vm: u32,
        /// Run this command line (`/bin/sh -c CMD`) instead of a login shell.
        #[arg(long)]
        command: Option<String>,
    },
    /// Copy files between this machine and a VM: exactly one of SRC and DST
    /// is VM:PATH (e.g. 3:/root/f).
    ///
    /// Into an existing directory the file keeps its name. Permission bits
    /// are kept both ways. An interrupted copy resumes ("resuming at N
    /// bytes"): into a VM from the agent's PATH.bm-part, out of it from the
    /// local DST.bm-part. The whole file's SHA-256 is checked at the end (a
    /// mismatch exits 6). Prints "copied N bytes in T s (X MiB/s), sha256 H".
    #[command(after_help = AGENT_HELP)]
    Cp {
        /// Copy directories recursively.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// No progress bar (also off with --json or when stderr is not a terminal).
        #[arg(long)]
        no_progress: bool,
        /// Source: a local path or VM:PATH.
        src: String,
        /// Destination: a local path or VM:PATH.
        dst: String,
    },
    /// The processes of a VM (PID PPID STATE RSS CMD).
    #[command(after_help = AGENT_HELP)]
    Ps {
        /// VM id.
        vm: u32,
    },
    /// Send a signal to a process in a VM.
    #[command(after_help = AGENT_HELP)]
    Kill {
        /// VM id.
        vm: u32,
        /// Process id.
        pid: u32,
        /// Signal number.
        #[arg(long, short = 's', default_value_t = 15)]
        signal: i32,
    },
    /// Supervised services in a VM (the agent starts, watches and restarts them).
    #[command(after_help = AGENT_HELP)]
    Service {
        /// VM id.
        vm: u32,
        /// What to do.
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// What a VM runs: OS, kernel, memory, packages, services (--json: everything).
    #[command(after_help = AGENT_HELP)]
    Inventory {
        /// VM id.
        vm: u32,
    },
    /// A VM's agent: attached, version, heartbeats, load, streams.
    ///
    /// --wait polls until the agent is attached and has said hello, or exits
    /// 5 with "agent not ready after N s". --heartbeat-ms with --timeout-ms
    /// first sets the heartbeat period and the bound after which the agent is
    /// reported hung.
    #[command(after_help = AGENT_HELP)]
    Agent {
        /// VM id.
        vm: u32,
        /// Wait up to this many seconds for the agent.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Heartbeat period (100..=60000 ms).
        #[arg(long, requires = "timeout_ms")]
        heartbeat_ms: Option<u32>,
        /// Report the agent hung after this long without a heartbeat (at least twice the period).
        #[arg(long, requires = "heartbeat_ms")]
        timeout_ms: Option<u64>,
    },
    /// A VM's agent log ("[time] text": attach, detach, heartbeats missed, service events).
    #[command(after_help = AGENT_HELP)]
    AgentLog {
        /// VM id.
        vm: u32,
        /// First entry index.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep printing new entries (every 500 ms) until Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
}

/// Shown under every agent command's --help.
pub const AGENT_HELP: &str = "\
These commands go through the VM's guest agent (bm-agent); the node refuses
them for a VM that runs no agent or is not running (exit 5), and for the
landlord. An error reported by the agent exits 5. A full agent input queue
(\"input_bytes\") is backpressure: bmctl waits and resends.";

/// `bmctl tenant exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// VM id.
    pub vm: u32,
    /// The agent kills the command after this many seconds (bmctl then exits 124).
    /// The global --timeout stays the bound on waiting for the node.
    #[arg(long, value_name = "SECS")]
    pub cmd_timeout: Option<u32>,
    /// Extra environment variable (repeatable).
    #[arg(long, value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the VM.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Send bmctl's standard input to the command (else it reads /dev/null).
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// The command and its arguments (after --).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub argv: Vec<String>,
}

/// Restart policies on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RestartArg {
    /// Never restart.
    Never,
    /// Restart after a non-zero exit or a signal.
    OnFailure,
    /// Restart whenever it exits, unless stopped.
    Always,
}

/// `bmctl tenant service VM ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Define (or redefine) a service and start it.
    Define {
        /// Service name (1-32 of A-Z a-z 0-9 _ . -).
        name: String,
        /// Restart policy.
        #[arg(long, value_enum, default_value = "on-failure")]
        restart: RestartArg,
        /// Delay before a restart (doubled per consecutive restart, up to 30 s).
        #[arg(long, default_value_t = 500)]
        backoff_ms: u32,
        /// At most this many restarts within --window-secs, then the service is failed (0 = no limit).
        #[arg(long, default_value_t = 5)]
        max_restarts: u32,
        /// The window for --max-restarts.
        #[arg(long, default_value_t = 60)]
        window_secs: u32,
        /// Extra environment variable (repeatable).
        #[arg(long, value_name = "K=V", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// The command and its arguments (after --).
        #[arg(required = true, last = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Start a stopped service.
    Start {
        /// Service name.
        name: String,
    },
    /// Stop a service (SIGTERM, SIGKILL after 5 s).
    Stop {
        /// Service name.
        name: String,
    },
    /// Stop then start a service.
    Restart {
        /// Service name.
        name: String,
    },
    /// Stop and forget a service.
    Remove {
        /// Service name.
        name: String,
    },
    /// State of one service or all (NAME STATE PID RESTARTS LAST-EXIT POLICY).
    Status {
        /// Service name (default: all).
        name: Option<String>,
    },
    /// The last lines of a service's output.
    Logs {
        /// Service name.
        name: String,
        /// How many lines (at most 1000).
        #[arg(long, default_value_t = 100)]
        lines: u32,
    },
}

/// Parses `K=V`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected K=V")),
    }
}

/// Tenant rule commands.
#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// Add a rule ACTION:PROTO:NET[:PORTS]; it may only narrow the cluster boundary.
    Add {
        /// The rule.
        rule: String,
    },
    /// Remove a rule.
    Remove {
        /// Rule id.
        id: u32,
    },
}

/// Tenant key commands.
#[derive(Debug, Subcommand)]
pub enum TenantKeysCmd {
    /// Generate a new tenant key pair; the profile is updated with its public half.
    Rotate,
}

/// Parses `--timeout`: whole seconds, at least one, since 0 would let bmctl
/// hang forever on a dead node.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let n: u64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if n == 0 {
        return Err("0 would wait forever for a dead node: give at least 1 second".into());
    }
    Ok(Duration::from_secs(n))
}

/// Checks a VM, image or profile name against the node's naming rule, so a
/// bad name is a usage error (exit 2) before anything is sent.
fn name_arg(s: &str) -> Result<String, String> {
    if valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("a name {NAME_RULE}"))
    }
}

/// A command line wrong in a way clap cannot see (a name derived from a file
/// name breaking the rule): exit 2 like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A failed command: message and exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// Error, with causes.
    pub error: anyhow::Error,
}

impl Failure {
    /// Whether nothing should be printed: the exit code is a remote
    /// command's own status.
    pub fn silent(&self) -> bool {
        matches!(self.error.downcast_ref::<AgentFailure>(), Some(AgentFailure::Status(_)))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = if error.chain().any(|c| c.is::<UsageError>()) {
            2
        } else if let Some(a) = error.chain().find_map(|c| c.downcast_ref::<AgentFailure>()) {
            a.exit_code()
        } else {
            error.chain().find_map(|c| c.downcast_ref::<ClientError>()).map_or(1, ClientError::exit_code)
        };
        Failure { code, error }
    }
}

pub(crate) struct Ctx {
    cfg: Config,
    profile: Option<String>,
    pub(crate) json: bool,
    timeout: Duration,
}

impl Ctx {
    pub(crate) fn out(&self, value: Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            let h = human();
            if !h.is_empty() {
                println!("{h}");
            }
        }
    }

    pub(crate) fn connect(&self, landlord: bool) -> Result<(Profile, Client)> {
        let p = self.cfg.pick_profile(self.profile.as_deref(), landlord)?;
        if matches!(p.role()?, Role::Landlord) != landlord {
            bail!(
                "profile {:?} is for role {}, not {}",
                p.name,
                p.role,
                if landlord { "landlord" } else { "a tenant" }
            );
        }
        let c = self.open(&p)?;
        Ok((p, c))
    }

    /// For agent commands: a tenant profile, or whichever profile
    /// --profile names. A landlord is not refused here: the node's answer
    /// (Denied, exit 5) says why.
    pub(crate) fn connect_agent(&self) -> Result<Client> {
        let p = self.cfg.pick_profile(self.profile.as_deref(), false)?;
        self.open(&p)
    }

    fn open(&self, p: &Profile) -> Result<Client> {
        let key = self.cfg.load_key(&p.key)?;
        let c = Client::connect_profile(p, &key.secret, self.timeout).map_err(|e| {
            let named = e.names_node();
            let e = anyhow::Error::new(e);
            if named {
                e
            } else {
                e.context(format!("connecting to {} as {}", p.node, p.role))
            }
        })?;
        Ok(c)
    }

    fn call(&self, landlord: bool, req: Request) -> Result<(Profile, Response)> {
        let (p, mut c) = self.connect(landlord)?;
        let name = req.name();
        let r = c.call(req).with_context(|| format!("{name} failed"))?;
        Ok((p, r))
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx { cfg: Config::locate(cli.config_dir)?, profile: cli.profile, json: cli.json, timeout: cli.timeout };
    match cli.command {
        Command::Keygen { name, signing } => {
            if signing {
                let k = ctx.cfg.keygen_signing(&name)?;
                ctx.out(json!({"name": name, "signing_public_key": to_hex(&k)}), || {
                    format!("signing key {name} created\nverifying key: {}", to_hex(&k))
                });
            } else {
                let k = ctx.cfg.keygen(&name)?;
                ctx.out(json!({"name": name, "public_key": k.to_hex()}), || {
                    format!("console key {name} created\npublic key: {k}\n(give it to the landlord to register)")
                });
            }
        }
        Command::Profile(p) => profile_cmd(&ctx, p)?,
        Command::Landlord(l) => landlord_cmd(&ctx, l)?,
        Command::Tenant(t) => tenant_cmd(&ctx, t)?,
        Command::Watch(a) => watch_cmd(&ctx, a)?,
        Command::Facility(a) => crate::fleet::cmd::run(&ctx.cfg, ctx.timeout, ctx.json, *a)?,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "bmctl", &mut std::io::stdout());
        }
    }
    Ok(())
}

fn profile_cmd(ctx: &Ctx, cmd: ProfileCmd) -> Result<()> {
    match cmd {
        ProfileCmd::Add { name, node, node_key, role, key } => {
            let key = key.unwrap_or_else(|| name.clone());
            let p =
                Profile { name: name.clone(), node, node_key: node_key.trim().to_lowercase(), role, key: key.clone() };
            // Validate before touching any key file.
            p.role()?;
            p.node_key()?;
            p.addr()?;
            let generated = match ctx.cfg.load_key(&key) {
                Ok(_) => None,
                Err(_) => Some(ctx.cfg.keygen(&key)?),
            };
            ctx.cfg.save_profile(&p, false)?;
            let public = ctx.cfg.load_key(&key)?.public;
            ctx.out(
                json!({"profile": p, "console_public_key": public.to_hex(), "key_generated": generated.is_some()}),
                || {
                    let mut s =
                        format!("profile {name} added ({} at {})\nconsole public key: {public}", p.role, p.node);
                    if generated.is_some() {
                        s.push_str("\n(new key generated: have it registered with the node)");
                    }
                    s
                },
            );
        }
        ProfileCmd::List => {
            let all = ctx.cfg.list_profiles()?;
            ctx.out(json!(all), || {
                if all.is_empty() {
                    return "no profiles".into();
                }
                all.iter()
                    .map(|p| format!("{:<16} {:<12} {:<24} key={}", p.name, p.role, p.node, p.key))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        ProfileCmd::Remove { name } => {
            ctx.cfg.remove_profile(&name)?;
            ctx.out(json!({"removed": name}), || format!("profile {name} removed"));
        }
    }
    Ok(())
}

fn done(ctx: &Ctx, what: &str) {
    ctx.out(json!({"ok": true, "action": what}), || format!("{what}: done"));
}

fn vm_table(vms: &[VmInfo]) -> String {
    if vms.is_empty() {
        return "no VMs".into();
    }
    let mut s =
        format!("{:>5} {:<16} {:>6} {:<8} {:>5} {:>8} IMAGE", "ID", "NAME", "LEASE", "STATE", "VCPU", "MEM MiB");
    for v in vms {
        s.push_str(&format!(
            "\n{:>5} {:<16} {:>6} {:<8} {:>5} {:>8} {}",
            v.id.0,
            escape_control(&v.spec.name),
            v.spec.lease.0,
            format!("{:?}", v.state).to_lowercase(),
            v.spec.vcpus,
            v.spec.memory_mib,
            escape_control(&v.spec.image)
        ));
        if let Some(initrd) = &v.spec.initrd {
            s.push_str(&format!("\n      initrd: {}", escape_control(initrd)));
        }
        if !v.spec.cmdline.is_empty() {
            s.push_str(&format!("\n      cmdline: {}", escape_control(&v.spec.cmdline)));
        }
    }
    s
}

/// The image list as JSON, hashes in hex (as `sha256sum` prints them) so
/// scripts can compare them with the files they uploaded.
fn image_list_json(l: &ImageList) -> Value {
    let images: Vec<Value> = l
        .images
        .iter()
        .map(|i| json!({"name": i.name, "size": i.size, "sha256": to_hex(&i.sha256), "intact": i.intact}))
        .collect();
    json!({
        "images": images,
        "uploads": l.uploads,
        "used_bytes": l.used_bytes,
        "limit_bytes": l.limit_bytes,
        "max_image_bytes": l.max_image_bytes,
    })
}

fn image_list_text(l: &ImageList) -> String {
    let mut s = format!(
        "images: {} MiB of {} MiB used (largest image {} MiB)",
        l.used_bytes >> 20,
        l.limit_bytes >> 20,
        l.max_image_bytes >> 20
    );
    if l.images.is_empty() {
        s.push_str("\nno images");
    } else {
        s.push_str(&format!("\n{:<32} {:>12} {:<64} CHECK", "NAME", "BYTES", "SHA256"));
        for i in &l.images {
            let check = match i.intact {
                None => "-",
                Some(true) => "intact",
                Some(false) => "DAMAGED",
            };
            s.push_str(&format!("\n{:<32} {:>12} {:<64} {check}", escape_control(&i.name), i.size, to_hex(&i.sha256)));
        }
    }
    for u in &l.uploads {
        s.push_str(&format!(
            "\nunfinished upload {}: {} of {} bytes (resume by uploading again, or `bmctl landlord image cancel`)",
            escape_control(&u.name),
            u.received,
            u.size
        ));
    }
    s
}

fn audit_text(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no entries".into();
    }
    entries
        .iter()
        .map(|e| {
            let who = e.role.map_or_else(|| "-".to_string(), |r| role_string(&r));
            format!(
                "{:>6} t={:<8} {:<10} {:<22} {}",
                e.index,
                e.time_secs,
                who,
                escape_control(&e.action),
                escape_control(&e.outcome)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn unexpected(r: Response) -> anyhow::Error {
    anyhow!(ClientError::Unexpected(format!("{r:?}")))
}

fn parse_key(s: &str, what: &str) -> Result<PublicKey> {
    PublicKey::from_hex(s).ok_or_else(|| anyhow!("{what}: expected 64 hex digits"))
}

/// After a node key rotation, point the profile at the new key so the next
/// command still connects.
fn update_profile_key(ctx: &Ctx, mut p: Profile, key: &PublicKey) -> Result<()> {
    p.node_key = key.to_hex();
    ctx.cfg.save_profile(&p, true)
}

fn landlord_cmd(ctx: &Ctx, cmd: LandlordCmd) -> Result<()> {
    match cmd {
        LandlordCmd::Status => match ctx.call(true, Request::NodeStatus)?.1 {
            Response::Status(s) => ctx.out(serde_json::to_value(&s)?, || {
                let mut t = format!(
                    "BMonitor {} up {}s\ncpus {}  memory {}/{} MiB free  nic {}\nleases {}  vms {} ({} running)",
                    escape_control(&s.version),
                    s.uptime_secs,
                    s.cpus,
                    s.memory_free_mib,
                    s.memory_total_mib,
                    if s.nic_up { "up" } else { "down" },
                    s.leases,
                    s.vms_total,
                    s.vms_running
                );
                for d in &s.disks {
                    t.push_str(&format!("\ndisk {} {} MiB", escape_control(&d.name), d.value));
                }
                for c in &s.counters {
                    t.push_str(&format!("\n  {:<32} {}", escape_control(&c.name), c.value));
                }
                t
            }),
            r => return Err(unexpected(r)),
        },
        LandlordCmd::Reboot => {
            ctx.call(true, Request::Reboot)?;
            done(ctx, "reboot");
        }
        LandlordCmd::Shutdown => {
            ctx.call(true, Request::Shutdown)?;
            done(ctx, "shutdown");
        }
        LandlordCmd::Suspend => {
            ctx.call(true, Request::Suspend)?;
            done(ctx, "suspend");
        }
        LandlordCmd::Resume => {
            ctx.call(true, Request::Resume)?;
            done(ctx, "resume");
        }
        LandlordCmd::Lease(LeaseCmd::Create { tenant_key, cluster }) => {
            let key = parse_key(&tenant_key, "--tenant-key")?;
            match ctx.call(true, Request::CreateLease { tenant_console_key: key, cluster: ClusterId(cluster) })?.1 {
                Response::LeaseCreated { lease, tenant_node_key } => {
                    ctx.out(json!({"lease": lease.0, "tenant_node_key": tenant_node_key.to_hex()}), || {
                        format!(
                            "lease {} created\ntenant node key: {tenant_node_key}\ngive the tenant: --role tenant:{} --node-key {tenant_node_key}",
                            lease.0, lease.0
                        )
                    })
                }
                r => return Err(unexpected(r)),
            }
        }
        LandlordCmd::Lease(LeaseCmd::End { lease }) => {
            ctx.call(true, Request::EndLease { lease: LeaseId(lease) })?;
            done(ctx, "end lease");
        }
        LandlordCmd::Vm(VmCmd::Create { lease, name, image, vcpus, memory, disk, cluster, cmdline, ip, initrd }) => {
            let spec = VmSpec {
                lease: LeaseId(lease),
                name,
                vcpus,
                memory_mib: memory,
                disk_mib: disk,
                image,
                cluster: ClusterId(cluster),
                cmdline,
                ip: ip.map(|a| a.octets()),
                initrd,
            };
            match ctx.call(true, Request::CreateVm { spec })?.1 {
                Response::VmCreated { vm } => ctx.out(json!({"vm": vm.0}), || format!("VM {} created", vm.0)),
                r => return Err(unexpected(r)),
            }
        }
        LandlordCmd::Vm(VmCmd::Destroy { vm }) => {
            ctx.call(true, Request::DestroyVm { vm: VmId(vm) })?;
            done(ctx, "destroy VM");
        }
        LandlordCmd::Vm(VmCmd::List) => vms(ctx, true)?,
        LandlordCmd::Vm(VmCmd::Start { vm }) => {
            ctx.call(true, Request::StartVm { vm: VmId(vm) })?;
            done(ctx, "start VM");
        }
        LandlordCmd::Vm(VmCmd::Stop { vm }) => {
            ctx.call(true, Request::StopVm { vm: VmId(vm) })?;
            done(ctx, "stop VM");
        }
        LandlordCmd::Image(ImageCmd::Upload { file, name, lease, signature, chunk_kib, retries }) => {
            let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => {
                    let n = file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .map(str::to_string)
                        .ok_or_else(|| UsageError("--name: cannot derive from the file name".into()))?;
                    if !valid_name(&n) {
                        return Err(UsageError(format!(
                            "image name \"{}\" (from the file name) {NAME_RULE}: give --name",
                            escape_control(&n)
                        ))
                        .into());
                    }
                    n
                }
            };
            let signature = match signature {
                Some(p) => Some(read_signature(&p)?),
                None => None,
            };
            let opts = UploadOptions {
                name,
                lease: lease.map(LeaseId),
                signature,
                chunk: chunk_kib.saturating_mul(1024),
                retries,
                backoff: Duration::from_secs(1),
                cancel: Some(interrupt_flag(ctx.json)?),
            };
            let bar = if ctx.json { ProgressBar::hidden() } else { ProgressBar::new(data.len() as u64) };
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .map_err(|e| anyhow!("{e}"))?
                    .progress_chars("=> "),
            );
            bar.set_message(opts.name.clone());
            let mut connect = || {
                ctx.connect(true).map(|(_, c)| c).map_err(|e| match e.downcast::<ClientError>() {
                    Ok(ce) => ce,
                    Err(e) => ClientError::Local(format!("{e:#}")),
                })
            };
            let report = upload_image(&mut connect, &data, &opts, &bar)?;
            ctx.out(serde_json::to_value(&report)?, || {
                format!("image {} stored: {} bytes, sha256 {}", report.name, report.size, report.sha256)
            });
        }
        LandlordCmd::Image(ImageCmd::List { verify }) => match ctx.call(true, Request::ListImages { verify })?.1 {
            Response::Images(l) => ctx.out(image_list_json(&l), || image_list_text(&l)),
            r => return Err(unexpected(r)),
        },
        LandlordCmd::Image(ImageCmd::Cancel { name }) => {
            ctx.call(true, Request::CancelUpload { name: name.clone() })?;
            ctx.out(json!({"cancelled": name}), || {
                format!("upload of image {name} cancelled: the node freed the space it held")
            });
        }
        LandlordCmd::Boundary { cluster, rules } => {
            let rules = rules.iter().map(|r| parse_rule(r)).collect::<Result<Vec<_>>>()?;
            ctx.call(true, Request::SetClusterBoundary { cluster: ClusterId(cluster), rules })?;
            done(ctx, "set boundary");
        }
        LandlordCmd::Keys(LandlordKeysCmd::Rotate) => match ctx.call(true, Request::RotateLandlordKey)? {
            (p, Response::NodeKey { public }) => {
                update_profile_key(ctx, p, &public)?;
                ctx.out(json!({"landlord_node_key": public.to_hex()}), || {
                    format!("new landlord node key: {public} (profile updated)")
                });
            }
            (_, r) => return Err(unexpected(r)),
        },
        LandlordCmd::Keys(LandlordKeysCmd::RegenerateTenant { lease, tenant_key }) => {
            let tenant_console_key = tenant_key.map(|k| parse_key(&k, "--tenant-key")).transpose()?;
            match ctx.call(true, Request::RegenerateTenantKey { lease: LeaseId(lease), tenant_console_key })?.1 {
                Response::NodeKey { public } => ctx
                    .out(json!({"lease": lease, "tenant_node_key": public.to_hex()}), || {
                        format!("new tenant node key for lease {lease}: {public}")
                    }),
                r => return Err(unexpected(r)),
            }
        }
        LandlordCmd::Audit(a) => audit(ctx, true, &a)?,
        LandlordCmd::Policy(p) => policy_cmd(ctx, true, p)?,
    }
    Ok(())
}

/// The Ctrl-C flag of uploads, and whether the handler should stay quiet
/// (JSON output); the handler is installed once per process.
static INTERRUPT: std::sync::OnceLock<(Arc<AtomicBool>, Arc<AtomicBool>)> = std::sync::OnceLock::new();

/// Arms Ctrl-C for an upload: the first Ctrl-C sets the returned flag (the
/// upload stops after its current chunk and is cancelled on the node), a
/// second one exits at once.
fn interrupt_flag(quiet: bool) -> Result<Arc<AtomicBool>> {
    let (flag, hush) = match INTERRUPT.get() {
        Some(v) => v.clone(),
        None => {
            let (flag, hush) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(quiet)));
            let (f, h) = (flag.clone(), hush.clone());
            ctrlc::set_handler(move || {
                if f.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                if !h.load(Ordering::SeqCst) {
                    eprintln!("\ninterrupted: cancelling the upload on the node (Ctrl-C again to quit at once)");
                }
            })
            .context("installing the Ctrl-C handler")?;
            INTERRUPT.get_or_init(|| (flag, hush)).clone()
        }
    };
    flag.store(false, Ordering::SeqCst);
    hush.store(quiet, Ordering::SeqCst);
    Ok(flag)
}

fn vms(ctx: &Ctx, landlord: bool) -> Result<()> {
    match ctx.call(landlord, Request::ListVms)?.1 {
        Response::Vms(v) => ctx.out(serde_json::to_value(&v)?, || vm_table(&v)),
        r => return Err(unexpected(r)),
    }
    Ok(())
}

/// A tenant's view of the node: its lease and a count of its VMs by state
/// (the node's own status is the landlord's).
fn tenant_status(ctx: &Ctx) -> Result<()> {
    let (p, r) = ctx.call(false, Request::ListVms)?;
    let Response::Vms(v) = r else { return Err(unexpected(r)) };
    let count = |s: VmState| v.iter().filter(|i| i.state == s).count();
    let (running, stopped, faulted) = (count(VmState::Running), count(VmState::Stopped), count(VmState::Faulted));
    ctx.out(
        json!({"node": p.node, "role": p.role, "vms": v.len(), "running": running, "stopped": stopped, "faulted": faulted}),
        || {
            format!(
                "{} on node {}: {} VM(s): {running} running, {stopped} stopped, {faulted} faulted",
                p.role,
                p.node,
                v.len()
            )
        },
    );
    Ok(())
}

/// Reads the audit log from `a.from`, page by page ([`AUDIT_PAGE`] entries;
/// a shorter page is the end: stopping there rather than at an empty page
/// matters, as each read adds an audit entry a reader would chase forever),
/// until the end or
/// `a.limit` entries, on one session.
fn audit(ctx: &Ctx, landlord: bool, a: &AuditArgs) -> Result<()> {
    let limit = a.limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let (_, mut c) = ctx.connect(landlord)?;
    let mut all: Vec<AuditEntry> = Vec::new();
    let mut chain = ChainCheck::new(landlord);
    let mut from = a.from;
    let next = loop {
        if all.len() >= limit {
            break all.last().map_or(from, |e| e.index + 1);
        }
        let (entries, next, prev_chain) = match c.call(Request::ReadAudit { from }).context("read-audit failed")? {
            Response::Audit { entries, next, prev_chain } => (entries, next, prev_chain),
            r => return Err(unexpected(r)),
        };
        let last_page = entries.len() < AUDIT_PAGE || next <= from;
        let kept: Vec<AuditEntry> = entries.into_iter().take(limit - all.len()).collect();
        chain.check(&kept, prev_chain)?;
        all.extend(kept);
        if last_page {
            break if all.len() >= limit { all.last().map_or(next, |e| e.index + 1) } else { next };
        }
        from = next;
    };
    let head = all.last().map(|e| to_hex(&e.chain));
    ctx.out(json!({"entries": all, "next": next, "chain_verified": chain.verified, "chain_head": head}), || {
        let mut t = audit_text(&all);
        if chain.verified > 0 {
            t.push_str(&format!("\nchain: {} entries verified, head {}", chain.verified, head.unwrap_or_default()));
        }
        t
    });
    Ok(())
}

/// Checks the audit hash chain page by page. The landlord sees every
/// entry, so each page must follow from the chain value before it; a
/// tenant's view has gaps (other leases' entries), so only entries that
/// are next to each other are checked.
struct ChainCheck {
    complete: bool,
    last: Option<AuditEntry>,
    verified: u64,
}

impl ChainCheck {
    fn new(complete: bool) -> ChainCheck {
        ChainCheck { complete, last: None, verified: 0 }
    }

    fn check(&mut self, entries: &[AuditEntry], prev_chain: [u8; 32]) -> Result<()> {
        for e in entries {
            let prev = match &self.last {
                Some(p) if p.index + 1 == e.index => Some(p.chain),
                None if self.complete => Some(prev_chain),
                _ => None,
            };
            if let Some(prev) = prev {
                if !e.follows(&prev) {
                    return Err(ClientError::Unexpected(format!(
                        "audit chain broken at entry {}: it does not follow from the entry before it",
                        e.index
                    ))
                    .into());
                }
                self.verified += 1;
            }
            self.last = Some(e.clone());
        }
        Ok(())
    }
}

fn read_signature(p: &std::path::Path) -> Result<ImageSignature> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let t = text.trim();
    if t.len() != 128 {
        bail!("{}: expected 128 hex digits", p.display());
    }
    let r = from_hex32(t.get(..64).unwrap_or("")).ok_or_else(|| anyhow!("{}: not hex", p.display()))?;
    let s = from_hex32(t.get(64..).unwrap_or("")).ok_or_else(|| anyhow!("{}: not hex", p.display()))?;
    Ok(ImageSignature { r, s })
}

fn tenant_cmd(ctx: &Ctx, cmd: TenantCmd) -> Result<()> {
    let simple = |req: Request, what: &str| -> Result<()> {
        ctx.call(false, req)?;
        done(ctx, what);
        Ok(())
    };
    match cmd {
        TenantCmd::Status => tenant_status(ctx)?,
        TenantCmd::Vms => vms(ctx, false)?,
        TenantCmd::Start { vm } => simple(Request::StartVm { vm: VmId(vm) }, "start VM")?,
        TenantCmd::Stop { vm } => simple(Request::StopVm { vm: VmId(vm) }, "stop VM")?,
        TenantCmd::Restart { vm } => simple(Request::RestartVm { vm: VmId(vm) }, "restart VM")?,
        TenantCmd::Reload { vm } => simple(Request::ReloadImage { vm: VmId(vm) }, "reload image")?,
        TenantCmd::Console { vm, no_input } => console(ctx, VmId(vm), no_input)?,
        TenantCmd::Rule(RuleCmd::Add { rule }) => {
            let r = parse_rule(&rule)?;
            match ctx.call(false, Request::SetSubBoundary { rule: r })?.1 {
                Response::RuleAdded { id } => ctx.out(json!({"rule": id.0, "spec": format_rule(&r)}), || {
                    format!("rule {} added: {}", id.0, format_rule(&r))
                }),
                r => return Err(unexpected(r)),
            }
        }
        TenantCmd::Rule(RuleCmd::Remove { id }) => {
            simple(Request::RemoveSubBoundary { id: RuleId(id) }, "remove rule")?
        }
        TenantCmd::Keys(TenantKeysCmd::Rotate) => match ctx.call(false, Request::RotateTenantKey)? {
            (p, Response::NodeKey { public }) => {
                update_profile_key(ctx, p, &public)?;
                ctx.out(json!({"tenant_node_key": public.to_hex()}), || {
                    format!("new tenant node key: {public} (profile updated)")
                });
            }
            (_, r) => return Err(unexpected(r)),
        },
        TenantCmd::Counters { vm } => match ctx.call(false, Request::ReadCounters { vm: VmId(vm) })?.1 {
            Response::Counters(cs) => ctx.out(serde_json::to_value(&cs)?, || {
                cs.iter().map(|c| format!("{:<32} {}", escape_control(&c.name), c.value)).collect::<Vec<_>>().join("\n")
            }),
            r => return Err(unexpected(r)),
        },
        TenantCmd::Audit(a) => audit(ctx, false, &a)?,
        TenantCmd::Policy(p) => policy_cmd(ctx, false, p)?,
        TenantCmd::SignImage { file, key, out } => {
            let seed = ctx.cfg.load_signing(&key)?;
            let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let sig = sign_image(&seed, &data);
            let out = out.unwrap_or_else(|| {
                let mut s = file.clone().into_os_string();
                s.push(".sig");
                PathBuf::from(s)
            });
            let hex = to_hex(&sig.to_bytes());
            std::fs::write(&out, format!("{hex}\n")).with_context(|| format!("writing {}", out.display()))?;
            ctx.out(json!({"signature": hex, "file": out, "sha256": to_hex(&image_digest(&data))}), || {
                format!("signature written to {}", out.display())
            });
        }
        TenantCmd::ReplicaPartners { keys } => {
            let mut partners = Vec::with_capacity(keys.len());
            for k in &keys {
                let key = PublicKey::from_hex(k.trim())
                    .ok_or_else(|| UsageError(format!("{k:?}: a node key is 64 hex digits")))?;
                partners.push(key);
            }
            simple(Request::SetReplicaPartners { partners }, "set replica partners")?;
        }
        TenantCmd::SigningKey { key, clear } => {
            let key = match (key, clear) {
                (Some(_), true) => bail!("give a key name or --clear, not both"),
                (None, false) => bail!("give a signing key name, or --clear"),
                (None, true) => None,
                (Some(k), false) => Some(image_verify_key(&ctx.cfg.load_signing(&k)?)),
            };
            simple(Request::SetImageSigningKey { key }, "set image signing key")?;
        }
        TenantCmd::Exec(a) => crate::agent_cmd::exec(ctx, a)?,
        TenantCmd::Shell { vm, command } => crate::agent_cmd::shell(ctx, vm, command)?,
        TenantCmd::Cp { recursive, no_progress, src, dst } => {
            crate::agent_cmd::cp(ctx, recursive, no_progress, &src, &dst)?
        }
        TenantCmd::Ps { vm } => crate::agent_cmd::ps(ctx, vm)?,
        TenantCmd::Kill { vm, pid, signal } => crate::agent_cmd::kill(ctx, vm, pid, signal)?,
        TenantCmd::Service { vm, cmd } => crate::agent_cmd::service(ctx, vm, cmd)?,
        TenantCmd::Inventory { vm } => crate::agent_cmd::inventory(ctx, vm)?,
        TenantCmd::Agent { vm, wait, heartbeat_ms, timeout_ms } => {
            crate::agent_cmd::agent_status(ctx, vm, wait, heartbeat_ms.zip(timeout_ms))?
        }
        TenantCmd::AgentLog { vm, from, follow } => crate::agent_cmd::agent_log(ctx, vm, from, follow)?,
    }
    Ok(())
}

/// `bmctl watch`: resolves the profiles and keys, then runs
/// [`crate::watch::watch`] until a signal or --for.
fn watch_cmd(ctx: &Ctx, a: WatchArgs) -> Result<()> {
    let names: Vec<String> = if !a.profiles.is_empty() {
        a.profiles.clone()
    } else if let Some(p) = &ctx.profile {
        vec![p.clone()]
    } else {
        let all = ctx.cfg.list_profiles()?;
        match all.as_slice() {
            [one] => vec![one.name.clone()],
            [] => bail!("no profile; create one with `bmctl profile add`"),
            _ => {
                return Err(
                    UsageError("several profiles: name the ones to watch (bmctl watch PROFILE...)".into()).into()
                )
            }
        }
    };
    let mut targets = Vec::new();
    for n in &names {
        if targets.iter().any(|t: &crate::watch::Target| &t.name == n) {
            return Err(UsageError(format!("profile {n:?} named twice")).into());
        }
        let profile = ctx.cfg.load_profile(n)?;
        profile.role()?;
        profile.node_key()?;
        profile.addr()?;
        let secret = ctx.cfg.load_key(&profile.key)?.secret;
        targets.push(crate::watch::Target { name: n.clone(), profile, secret });
    }
    let opts = crate::watch::Options {
        interval_ms: a.interval_ms,
        json: ctx.json,
        notify: a.notify,
        listen: if a.no_listen { None } else { Some(a.listen) },
        run_for: a.run_for.map(Duration::from_secs),
        timeout: ctx.timeout,
    };
    crate::watch::handle_stop_signals();
    let stop = Arc::new(AtomicBool::new(false));
    crate::watch::watch(targets, opts, stop, |addr| {
        eprintln!(
            "bmctl watch: dashboard on http://{addr}/ (metrics: http://{addr}/metrics, state: http://{addr}/api/state)"
        );
    })
}

/// The cluster a policy command is about: --cluster, or for a tenant the
/// one cluster its VMs are in.
fn policy_cluster(ctx: &Ctx, landlord: bool, cluster: Option<u32>) -> Result<ClusterId> {
    if let Some(c) = cluster {
        return Ok(ClusterId(c));
    }
    if landlord {
        return Err(UsageError("give --cluster N".into()).into());
    }
    let Response::Vms(v) = ctx.call(false, Request::ListVms)?.1 else { bail!("unexpected answer to list-vms") };
    let mut clusters: Vec<u32> = v.iter().map(|i| i.spec.cluster.0).collect();
    clusters.sort_unstable();
    clusters.dedup();
    match clusters.as_slice() {
        [one] => Ok(ClusterId(*one)),
        [] => Err(UsageError("you have no VMs to take the cluster from: give --cluster N".into()).into()),
        _ => Err(UsageError(format!("your VMs are in clusters {clusters:?}: give --cluster N")).into()),
    }
}

fn policy_cmd(ctx: &Ctx, landlord: bool, cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Set { file, cluster, expect_version } => {
            let text = if file.as_os_str() == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                    .context("reading the policy from stdin")?;
                t
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let policy = crate::policy_file::parse_policy(&text)
                .map_err(|e| UsageError(format!("{}: {e:#}", file.display())))?;
            let cluster = policy_cluster(ctx, landlord, cluster)?;
            let rules = policy.rules.len();
            match ctx.call(landlord, Request::SetPolicy { cluster, expect_version, policy })?.1 {
                Response::PolicySet { version } => ctx
                    .out(json!({"cluster": cluster.0, "version": version, "rules": rules}), || {
                        format!("policy for cluster {} stored: version {version}, {rules} rule(s)", cluster.0)
                    }),
                r => return Err(unexpected(r)),
            }
        }
        PolicyCmd::Get { cluster } => {
            let cluster = policy_cluster(ctx, landlord, cluster)?;
            match ctx.call(landlord, Request::GetPolicy { cluster })? {
                (p, Response::Policy(v)) => {
                    let version = v.as_ref().map_or(0, |v| v.version);
                    let toml = v.as_ref().map(|v| crate::policy_file::format_policy(&v.policy)).unwrap_or_default();
                    ctx.out(
                        json!({"cluster": cluster.0, "version": version, "policy": v.as_ref().map(|v| &v.policy), "toml": toml}),
                        || match &v {
                            None => format!("# no policy of {} stored for cluster {} (version 0)", p.role, cluster.0),
                            Some(v) => format!(
                                "# policy of {} for cluster {}, version {} (set it back with --expect-version {})\n{}",
                                p.role,
                                cluster.0,
                                v.version,
                                v.version,
                                toml.trim_end()
                            ),
                        },
                    );
                }
                (_, r) => return Err(unexpected(r)),
            }
        }
    }
    Ok(())
}

/// Interactive console: a thread reads stdin lines; the main loop polls the
/// console output and sends typed lines.
fn console(ctx: &Ctx, vm: VmId, no_input: bool) -> Result<()> {
    let (_, mut c) = ctx.connect(false)?;
    let (tx, rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
    if !no_input {
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            loop {
                let mut line = Vec::new();
                match lock.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(_) => {
                        if tx.send(Some(line)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        if !ctx.json {
            eprintln!("[connected to VM {}; type lines to send, Ctrl-D to leave]", vm.0);
        }
    }
    let mut offset = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        match c.call(Request::ConsoleRead { vm, from_offset: offset })? {
            Response::ConsoleOutput { next_offset, bytes } => {
                stdout.write_all(&bytes)?;
                stdout.flush()?;
                let got_any = !bytes.is_empty();
                offset = next_offset;
                if no_input && !got_any {
                    return Ok(());
                }
                if got_any {
                    continue;
                }
            }
            r => return Err(unexpected(r)),
        }
        if no_input {
            continue;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(line)) => {
                for chunk in line.chunks(MAX_CONSOLE_BYTES) {
                    c.call(Request::ConsoleWrite { vm, bytes: chunk.to_vec() })?;
                }
            }
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod chain_tests {
    use super::*;

    fn log(from: u64, n: u64, prev: [u8; 32]) -> Vec<AuditEntry> {
        let mut prev = prev;
        (from..from + n)
            .map(|index| {
                let role = Some(Role::Tenant(LeaseId((index % 2) as u32)));
                let outcome = format!("ok {index}");
                let chain = AuditEntry::link(&prev, index, index, role, "act", &outcome);
                prev = chain;
                AuditEntry { index, time_secs: index, role, action: "act".into(), outcome, chain }
            })
            .collect()
    }

    #[test]
    fn a_complete_view_checks_every_link_across_pages() {
        let anchor = [7u8; 32];
        let all = log(40, 10, anchor);
        let mut c = ChainCheck::new(true);
        c.check(&all[..4], anchor).unwrap();
        c.check(&all[4..], all[3].chain).unwrap();
        assert_eq!(c.verified, 10);
        // A wrong anchor, a changed entry, a dropped entry: each refused.
        assert!(ChainCheck::new(true).check(&all, [0; 32]).is_err());
        let mut changed = all.clone();
        changed[5].outcome.push('!');
        assert!(ChainCheck::new(true).check(&changed, anchor).is_err());
        let mut dropped = all.clone();
        dropped.remove(5);
        for e in dropped.iter_mut().skip(5) {
            e.index -= 1;
        }
        assert!(ChainCheck::new(true).check(&dropped, anchor).is_err());
    }

    #[test]
    fn a_tenant_view_checks_adjacent_entries_only() {
        let all = log(0, 10, [0; 32]);
        // A tenant sees every other entry: nothing is adjacent, nothing fails.
        let mine: Vec<AuditEntry> = all.iter().filter(|e| e.index % 2 == 1).cloned().collect();
        let mut c = ChainCheck::new(false);
        c.check(&mine, [9; 32]).unwrap();
        assert_eq!(c.verified, 0);
        // Adjacent ones are checked.
        let mut c = ChainCheck::new(false);
        c.check(&all[2..6], [9; 32]).unwrap();
        assert_eq!(c.verified, 3);
    }
}
