//! bm-agent: BMonitor's in-guest agent. Runs as root in a tenant's Linux
//! VM, talks to the node only through hypercalls and a shared-memory ring
//! (agent-proto), and carries out the tenant's remote operations.

mod bootconf;
mod engine;
mod exec;
mod files;
mod hypercall;
mod inventory;
mod probe;
mod procs;
mod pty;
mod region;
mod services;
mod sys;
#[cfg(test)]
mod tests;
mod transport;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use engine::{Config, Engine};
use transport::{exchange, Transport};

/// Writes one diagnostic line to stderr (init forwards it to the console).
pub fn log(msg: &str) {
    eprintln!("bm-agent: {msg}");
}

/// Set by SIGTERM/SIGINT: detach and exit.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_handler() {
    let handler: extern "C" fn(libc::c_int) = on_stop;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: on_stop only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Kick period when there is no doorbell.
const FALLBACK_KICK: Duration = Duration::from_millis(50);

struct Args {
    doorbell: String,
    state_dir: PathBuf,
    services: PathBuf,
    probe: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        doorbell: "/dev/ttyS1".into(),
        state_dir: PathBuf::from("/var/lib/bm-agent"),
        services: PathBuf::from("/etc/bm-agent/services.conf"),
        probe: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--version" | "-V" => {
                println!("bm-agent {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--help" | "-h" => {
                println!("usage: bm-agent [--doorbell /dev/ttyS1] [--state-dir /var/lib/bm-agent] [--services /etc/bm-agent/services.conf] [--version]");
                println!(
                    "       bm-agent --probe-unprivileged   (checks that a process without I/O permission is refused)"
                );
                std::process::exit(0);
            }
            "--doorbell" => a.doorbell = it.next().ok_or("--doorbell needs a path")?,
            "--state-dir" => a.state_dir = PathBuf::from(it.next().ok_or("--state-dir needs a path")?),
            "--services" => a.services = PathBuf::from(it.next().ok_or("--services needs a path")?),
            "--probe-unprivileged" => a.probe = true,
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

/// Opens the doorbell UART raw and non-blocking.
fn open_doorbell(path: &str) -> std::io::Result<File> {
    let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK).open(path)?;
    // SAFETY: termios is plain old data; tcgetattr fills it from our fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: t is a valid termios; the fd is open.
    if unsafe { libc::tcgetattr(f.as_raw_fd(), &mut t) } == 0 {
        // SAFETY: as above; cfmakeraw only edits t.
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    Ok(f)
}

fn drain_doorbell(f: &File) {
    let mut buf = [0u8; 256];
    while let Ok(sys::Read::Data(_)) = sys::read_some(f.as_raw_fd(), &mut buf) {}
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            log(&e);
            std::process::exit(2);
        }
    };
    let Some(hv) = hypercall::detect() else {
        log("not running under BMonitor");
        std::process::exit(2);
    };
    if args.probe {
        std::process::exit(probe::unprivileged(&hv));
    }
    if let Err(e) = hypercall::request_io_permission() {
        log(&format!(
            "cannot get I/O permission for port {:#06x} ({e}); bm-agent must run as root (CAP_SYS_RAWIO)",
            vmm_config::hypercall::AGENT_IO_PORT
        ));
        std::process::exit(2);
    }
    let mut t = match Transport::attach(hv) {
        Ok(t) => t,
        Err(e) => {
            log(&e);
            std::process::exit(1);
        }
    };
    log("ready");
    let doorbell = match open_doorbell(&args.doorbell) {
        Ok(f) => Some(f),
        Err(e) => {
            log(&format!("cannot open doorbell {} ({e}); kicking every 50 ms instead", args.doorbell));
            None
        }
    };
    let mut engine = Engine::new(Config { state_dir: Some(args.state_dir) });
    install_stop_handler();
    engine.restart_session();
    let (specs, mut errors) = bootconf::read(&args.services);
    errors.extend(engine.define_boot_services(specs));
    for e in errors {
        log(&e);
    }
    exchange(&mut t, &mut engine);
    while !STOP.load(Ordering::SeqCst) {
        let now = Instant::now();
        let mut wait = engine.next_heartbeat().saturating_duration_since(now);
        if doorbell.is_none() || engine.front().is_some() {
            wait = wait.min(FALLBACK_KICK);
        }
        let rung = engine.run_once(doorbell.as_ref().map(|f| f.as_raw_fd()), wait);
        if let (true, Some(f)) = (rung, &doorbell) {
            drain_doorbell(f);
        }
        let beat = engine.heartbeat(Instant::now());
        if rung || beat || engine.front().is_some() || doorbell.is_none() {
            exchange(&mut t, &mut engine);
        }
    }
    log("stopping; detaching");
    t.detach();
}
