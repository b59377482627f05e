#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! bmctl's client code against a loopback TCP server running `NodeSession`
//! and the node's `NodeState` (crate node-logic) served with its in-memory
//! backend (`SimNode`, feature `sim`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bmctl::client::{Client, ClientError, Link};
use bmctl::profile::{Config, OsEntropy, Profile};
use bmctl::upload::{upload_image, UploadOptions};
use clap::Parser;
use indicatif::ProgressBar;
use mgmt_proto::*;
use node_logic::sim::SimNode;
use node_logic::{NodeState, Vm};

struct Server {
    addr: String,
    state: Arc<Mutex<NodeState>>,
    /// When set, the next connection is dropped after its third chunk.
    cut_upload: Arc<AtomicBool>,
    knobs: Arc<Knobs>,
}

/// How the test node misbehaves, and what it saw.
#[derive(Default)]
struct Knobs {
    /// Connections accepted.
    conns: AtomicUsize,
    /// The next this many connections get a Busy refusal, as a full node does.
    busy: AtomicUsize,
    /// Milliseconds to wait before serving each read (a slow node).
    delay_ms: AtomicU64,
    /// The running node the state asks for status, console and counters.
    node: Mutex<SimNode>,
}

fn serve_conn(mut s: TcpStream, state: Arc<Mutex<NodeState>>, cut: Arc<AtomicBool>, knobs: Arc<Knobs>) {
    knobs.conns.fetch_add(1, Ordering::SeqCst);
    if knobs.busy.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1)).is_ok() {
        let _ = s.write_all(&busy_frame("all console slots are in use"));
        return;
    }
    let mut session = NodeSession::new(Box::new(OsEntropy));
    let mut buf = vec![0u8; 65536];
    let cut_here = cut.swap(false, Ordering::SeqCst);
    let mut chunks = 0;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        std::thread::sleep(Duration::from_millis(knobs.delay_ms.load(Ordering::SeqCst)));
        let mut st = state.lock().unwrap();
        // (By index: the log may be trimmed meanwhile.)
        let before = st.audit_base + st.audit.len() as u64;
        // When cutting, feed the read in pieces smaller than one chunk's
        // frame, so the cut falls after exactly the third chunk even when
        // several pipelined chunks arrived in one read.
        let piece = if cut_here { 1024 } else { n.max(1) };
        let mut r = Ok(());
        let mut here = 0;
        for part in buf[..n].chunks(piece) {
            r = st.serve(&mut session, part, &mut *knobs.node.lock().unwrap());
            here = st.audit.iter().filter(|e| e.index >= before && e.action == "upload-chunk").count();
            if r.is_err() || (cut_here && chunks + here >= 3) {
                break;
            }
        }
        chunks += here;
        drop(st);
        if cut_here && chunks >= 3 {
            // Simulate a broken link: the chunk was stored, its reply is lost.
            return;
        }
        if s.write_all(&session.take_output()).is_err() || r.is_err() {
            return;
        }
    }
}

fn start(landlord_console: PublicKey) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state = Arc::new(Mutex::new(NodeState::provision(Box::new(OsEntropy), landlord_console).unwrap()));
    let cut_upload = Arc::new(AtomicBool::new(false));
    let knobs = Arc::new(Knobs::default());
    let (st, cut, kn) = (state.clone(), cut_upload.clone(), knobs.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (st, cut, kn) = (st.clone(), cut.clone(), kn.clone());
            std::thread::spawn(move || serve_conn(conn, st, cut, kn));
        }
    });
    Server { addr, state, cut_upload, knobs }
}

fn connect(addr: &str, role: Role, secret: &SecretKey, node_key: &PublicKey) -> Result<Client, ClientError> {
    let timeout = Duration::from_secs(20);
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    Client::handshake(Box::new(s), Link { node: addr.to_string(), timeout }, role, secret, node_key)
}

struct Setup {
    _dir: tempfile::TempDir,
    cfg: Config,
    server: Server,
    landlord: KeyPair,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { dir: dir.path().to_path_buf() };
    cfg.keygen("ll").unwrap();
    let landlord = cfg.load_key("ll").unwrap();
    let server = start(landlord.public);
    Setup { _dir: dir, cfg, server, landlord }
}

impl Setup {
    fn landlord_key(&self) -> PublicKey {
        self.server.state.lock().unwrap().landlord_key
    }

    fn landlord(&self) -> Client {
        connect(&self.server.addr, Role::Landlord, &self.landlord.secret, &self.landlord_key()).unwrap()
    }

    /// Creates a lease for a fresh tenant console key; returns the lease,
    /// the tenant's key pair and U_T.
    fn lease(&self) -> (LeaseId, KeyPair, PublicKey) {
        let tenant = KeyPair::generate(&mut OsEntropy).unwrap();
        match self
            .landlord()
            .call(Request::CreateLease { tenant_console_key: tenant.public, cluster: ClusterId(0) })
            .unwrap()
        {
            Response::LeaseCreated { lease, tenant_node_key } => (lease, tenant, tenant_node_key),
            r => panic!("{r:?}"),
        }
    }
}

#[test]
fn handshake_and_landlord_status() {
    let s = setup();
    let mut c = s.landlord();
    match c.call(Request::NodeStatus).unwrap() {
        Response::Status(st) => assert_eq!(st.version, "in-memory"),
        r => panic!("{r:?}"),
    }
    // Several requests on one session.
    assert!(matches!(c.call(Request::ListVms).unwrap(), Response::Vms(v) if v.is_empty()));
}

#[test]
fn tenant_refused_landlord_op() {
    let s = setup();
    let (lease, tenant, ut) = s.lease();
    let mut t = connect(&s.server.addr, Role::Tenant(lease), &tenant.secret, &ut).unwrap();
    let e = t.call(Request::Reboot).unwrap_err();
    assert!(matches!(&e, ClientError::Node(ErrorReply { code: ErrorCode::Denied, .. })), "{e}");
    assert_eq!(e.exit_code(), 5);
    assert!(!s.server.state.lock().unwrap().reboot_requested);
    // The session stays usable after a policy refusal.
    assert!(matches!(t.call(Request::ListVms).unwrap(), Response::Vms(_)));
}

#[test]
fn unknown_key_refused() {
    let s = setup();
    let stranger = KeyPair::generate(&mut OsEntropy).unwrap();
    let e = connect(&s.server.addr, Role::Landlord, &stranger.secret, &s.landlord_key()).err().unwrap();
    assert!(matches!(&e, ClientError::Refused(ErrorReply { code: ErrorCode::UnknownKey, .. })), "{e}");
    assert_eq!(e.exit_code(), 4);
    let st = s.server.state.lock().unwrap();
    assert!(st.audit.iter().any(|a| a.outcome.contains("not registered")));
}

#[test]
fn replayed_message_refused() {
    let s = setup();
    let mut c = s.landlord();
    c.call(Request::NodeStatus).unwrap();
    let e = c.call_with_seq(1, Request::Shutdown).unwrap_err();
    assert!(
        matches!(&e, ClientError::Protocol(SessionError::Remote(ErrorReply { code: ErrorCode::Replay, .. }))),
        "{e}"
    );
    assert!(!s.server.state.lock().unwrap().shutdown_requested);
}

#[test]
fn image_upload_resumes_after_interruption() {
    let s = setup();
    let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    s.server.cut_upload.store(true, Ordering::SeqCst);
    let opts = UploadOptions {
        name: "disk.img".into(),
        lease: None,
        signature: None,
        chunk: 16 * 1024,
        retries: 3,
        backoff: Duration::from_millis(10),
        cancel: None,
    };
    let mut connects = 0;
    let mut conn = || {
        connects += 1;
        connect(&s.server.addr, Role::Landlord, &s.landlord.secret, &s.landlord_key())
    };
    let report = upload_image(&mut conn, &image, &opts, &ProgressBar::hidden()).unwrap();
    assert_eq!(connects, 2);
    assert_eq!(report.started_at, vec![0, 3 * 16 * 1024]);
    let mut st = s.server.state.lock().unwrap();
    assert_eq!(st.image_bytes("disk.img").unwrap(), image);
    assert!(st.uploads.is_empty());
}

#[test]
fn signed_image_enforced() {
    let s = setup();
    let (lease, tenant, ut) = s.lease();
    let seed = [5u8; 32];
    let mut t = connect(&s.server.addr, Role::Tenant(lease), &tenant.secret, &ut).unwrap();
    t.call(Request::SetImageSigningKey { key: Some(image_verify_key(&seed)) }).unwrap();
    let image = b"tenant kernel".to_vec();
    let opts = |sig| UploadOptions {
        name: "k".into(),
        lease: Some(lease),
        signature: sig,
        chunk: 4,
        retries: 0,
        backoff: Duration::ZERO,
        cancel: None,
    };
    let mut conn = || connect(&s.server.addr, Role::Landlord, &s.landlord.secret, &s.landlord_key());
    let e = upload_image(&mut conn, &image, &opts(Some(sign_image(&[6u8; 32], &image))), &ProgressBar::hidden())
        .unwrap_err();
    assert!(matches!(e, ClientError::Node(ErrorReply { code: ErrorCode::BadSignature, .. })), "{e}");
    s.server.state.lock().unwrap().uploads.clear();
    upload_image(&mut conn, &image, &opts(Some(sign_image(&seed, &image))), &ProgressBar::hidden()).unwrap();
}

#[test]
fn tenant_cannot_see_other_lease_and_old_tenant_refused_after_regeneration() {
    let s = setup();
    let (a, ka, ua) = s.lease();
    let (b, kb, ub) = s.lease();
    let mut l = s.landlord();
    let vm_a = {
        let mut conn = || connect(&s.server.addr, Role::Landlord, &s.landlord.secret, &s.landlord_key());
        upload_image(&mut conn, b"image", &plain_upload("img"), &ProgressBar::hidden()).unwrap();
        match l.call(Request::CreateVm { spec: vm_spec(a, "a1") }).unwrap() {
            Response::VmCreated { vm } => vm,
            r => panic!("{r:?}"),
        }
    };
    let mut tb = connect(&s.server.addr, Role::Tenant(b), &kb.secret, &ub).unwrap();
    let e = tb.call(Request::StartVm { vm: vm_a }).unwrap_err();
    assert!(matches!(e, ClientError::Node(ErrorReply { code: ErrorCode::NotFound, .. })), "{e}");
    assert!(matches!(tb.call(Request::ListVms).unwrap(), Response::Vms(v) if v.is_empty()));
    let mut ta = connect(&s.server.addr, Role::Tenant(a), &ka.secret, &ua).unwrap();
    ta.call(Request::StartVm { vm: vm_a }).unwrap();
    ta.call(Request::ConsoleWrite { vm: vm_a, bytes: b"hi\n".to_vec() }).unwrap();
    match ta.call(Request::ConsoleRead { vm: vm_a, from_offset: 0 }).unwrap() {
        Response::ConsoleOutput { bytes, .. } => assert!(bytes.ends_with(b"hi\n")),
        r => panic!("{r:?}"),
    }
    // The landlord regenerates lease a's pair: the old U_T no longer works.
    l.call(Request::RegenerateTenantKey { lease: a, tenant_console_key: None }).unwrap();
    let e = connect(&s.server.addr, Role::Tenant(a), &ka.secret, &ua).err().unwrap();
    assert!(matches!(e, ClientError::Refused(ErrorReply { code: ErrorCode::Handshake, .. })), "{e}");
}

/// A small VM of `lease` booting the image "img".
fn vm_spec(lease: LeaseId, name: &str) -> VmSpec {
    VmSpec {
        lease,
        name: name.into(),
        vcpus: 1,
        memory_mib: 64,
        disk_mib: 0,
        image: "img".into(),
        cluster: ClusterId(0),
        cmdline: String::new(),
        ip: None,
        initrd: None,
    }
}

fn bmctl(cfg: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bmctl")).arg("--config-dir").arg(cfg).args(args).output().unwrap()
}

#[test]
fn cli_end_to_end() {
    let s = setup();
    let dir = s.cfg.dir.clone();
    let ul = s.landlord_key().to_hex();
    // Through the library entry point.
    let run = |args: &[&str]| {
        let mut v = vec!["bmctl", "--config-dir", dir.to_str().unwrap()];
        v.extend_from_slice(args);
        bmctl::cli::run(bmctl::cli::Cli::try_parse_from(v).unwrap())
    };
    run(&["profile", "add", "node1", "--node", &s.server.addr, "--node-key", &ul, "--role", "landlord", "--key", "ll"])
        .unwrap();
    run(&["landlord", "status"]).unwrap();
    // Through the binary: JSON output and exit codes.
    let out = bmctl(&dir, &["--json", "landlord", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "in-memory");
    let img = dir.join("img.bin");
    std::fs::write(&img, vec![3u8; 100_000]).unwrap();
    let out = bmctl(&dir, &["--json", "landlord", "image", "upload", img.to_str().unwrap(), "--chunk-kib", "8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.server.state.lock().unwrap().images.contains_key("img.bin"));
    // A tenant profile with a key the node does not know: exit code 4.
    let out = bmctl(&dir, &["keygen", "t1"]);
    assert!(out.status.success());
    run(&["profile", "add", "ten", "--node", &s.server.addr, "--node-key", &ul, "--role", "tenant:1", "--key", "t1"])
        .unwrap();
    let out = bmctl(&dir, &["tenant", "vms"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tenant of lease 1"));
    // Landlord key rotation updates the profile; the next command connects.
    run(&["landlord", "keys", "rotate"]).unwrap();
    let p: Profile = s.cfg.load_profile("node1").unwrap();
    assert_eq!(p.node_key, s.landlord_key().to_hex());
    run(&["landlord", "status"]).unwrap();
    // Usage errors exit 2; unknown profile exits 1.
    assert_eq!(bmctl(&dir, &["landlord", "frobnicate"]).status.code(), Some(2));
    assert_eq!(bmctl(&dir, &["--profile", "nope", "landlord", "status"]).status.code(), Some(1));
    // Completions.
    let out = bmctl(&dir, &["completions", "bash"]);
    assert!(out.status.success() && !out.stdout.is_empty());
}

#[cfg(unix)]
#[test]
fn private_keys_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { dir: dir.path().to_path_buf() };
    cfg.keygen("k").unwrap();
    cfg.keygen_signing("s").unwrap();
    for p in [cfg.key_path("k", "x25519").unwrap(), cfg.key_path("s", "ed25519").unwrap()] {
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
    }
    assert!(cfg.keygen("k").is_err(), "never overwrite a key");
    assert!(cfg.keygen("../evil").is_err());
}

#[test]
fn sign_image_cli_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(bmctl(d, &["keygen", "--signing", "sk"]).status.success());
    let img = d.join("k.img");
    std::fs::write(&img, b"kernel").unwrap();
    let out = bmctl(d, &["tenant", "sign-image", img.to_str().unwrap(), "--key", "sk"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sig_hex = std::fs::read_to_string(d.join("k.img.sig")).unwrap();
    let b: Vec<u8> = (0..64).map(|i| u8::from_str_radix(&sig_hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let sig = ImageSignature::from_bytes(&b.try_into().unwrap());
    let cfg = Config { dir: d.to_path_buf() };
    let key = image_verify_key(&cfg.load_signing("sk").unwrap());
    assert_eq!(verify_image(&key, b"kernel", &sig), Ok(()));
    assert!(verify_image(&key, b"kernel!", &sig).is_err());
}

// ---- dead, silent, busy and refusing nodes; cancel; audit paging; names; escaping ----

/// A landlord profile `name` in `s`'s config pointing at `addr`.
fn add_profile(s: &Setup, name: &str, addr: &str) {
    let p = Profile {
        name: name.into(),
        node: addr.into(),
        node_key: s.landlord_key().to_hex(),
        role: "landlord".into(),
        key: "ll".into(),
    };
    s.cfg.save_profile(&p, true).unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A listener that answers every connection as a full node does: a Busy
/// refusal, then close. Returns its address and the connection count.
fn busy_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(&busy_frame("all 4 console slots are in use"));
        }
    });
    (addr, conns)
}

#[test]
fn busy_node_is_retried_then_exit_7() {
    let s = setup();
    let (addr, conns) = busy_listener();
    add_profile(&s, "full", &addr);
    let t0 = Instant::now();
    let out = bmctl(&s.cfg.dir, &["-p", "full", "--timeout", "1", "landlord", "status"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains(&format!("node {addr} is busy (all console slots in use): retry later")), "{err}");
    for bad in ["reset", "protocol", "the node closed the connection"] {
        assert!(!err.contains(bad), "a Busy answer shown as {bad:?}: {err}");
    }
    // Retried with backoff (0.05, 0.1, 0.2, 0.4 s; 0.8 s more would pass
    // the 1 s timeout).
    assert_eq!(conns.load(Ordering::SeqCst), 5);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // JSON errors carry the code too.
    let out = bmctl(&s.cfg.dir, &["-p", "full", "--timeout", "1", "--json", "landlord", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(v["exit_code"], 7);
}

#[test]
fn node_closing_before_the_handshake_reply_counts_as_busy() {
    let s = setup();
    // Accepts and hangs up at once, as a full node whose refusal was lost.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || listener.incoming().flatten().for_each(drop));
    add_profile(&s, "drop", &addr);
    let out = bmctl(&s.cfg.dir, &["-p", "drop", "--timeout", "1", "landlord", "status"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("node {addr} is busy")), "{}", stderr(&out));
}

#[test]
fn busy_node_that_frees_a_slot_is_served() {
    let s = setup();
    add_profile(&s, "n", &s.server.addr);
    s.server.knobs.busy.store(2, Ordering::SeqCst);
    let out = bmctl(&s.cfg.dir, &["-p", "n", "landlord", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("BMonitor in-memory up"), "{}", stdout(&out));
    assert_eq!(s.server.knobs.conns.load(Ordering::SeqCst), 3);
}

#[test]
fn silent_node_times_out_naming_it() {
    let s = setup();
    // Accepts and then never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().flatten().collect();
        drop(held);
    });
    add_profile(&s, "mute", &addr);
    let t0 = Instant::now();
    let out = bmctl(&s.cfg.dir, &["-p", "mute", "--timeout", "1", "landlord", "status"]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("node {addr} did not answer within 1 s")), "{}", stderr(&out));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The same through the environment.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bmctl"))
        .env("BMCTL_TIMEOUT", "1")
        .arg("--config-dir")
        .arg(&s.cfg.dir)
        .args(["-p", "mute", "landlord", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not answer within 1 s"), "{}", stderr(&out));
    // 0 would wait forever: a usage error.
    let out = bmctl(&s.cfg.dir, &["-p", "mute", "--timeout", "0", "landlord", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at least 1 second"), "{}", stderr(&out));
}

#[test]
fn closed_port_is_unreachable_exit_3() {
    let s = setup();
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    add_profile(&s, "gone", &addr);
    let out = bmctl(&s.cfg.dir, &["-p", "gone", "landlord", "status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("cannot connect to node {addr}: connection refused")), "{}", stderr(&out));
}

/// Upload options for `name`: 1 KiB chunks, no signature, no retries.
fn plain_upload(name: &str) -> UploadOptions {
    UploadOptions {
        name: name.into(),
        lease: None,
        signature: None,
        chunk: 1024,
        retries: 0,
        backoff: Duration::ZERO,
        cancel: None,
    }
}

/// Leaves a partial upload of `name` on the node (the link breaks after
/// three chunks and no retry is allowed).
fn partial_upload(s: &Setup, name: &str) {
    s.server.cut_upload.store(true, Ordering::SeqCst);
    let mut conn = || connect(&s.server.addr, Role::Landlord, &s.landlord.secret, &s.landlord_key());
    let e = upload_image(&mut conn, &[7u8; 10_000], &plain_upload(name), &ProgressBar::hidden()).unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(s.server.state.lock().unwrap().uploads.len(), 1);
}

#[test]
fn image_cancel_frees_a_partial_upload() {
    let s = setup();
    add_profile(&s, "n", &s.server.addr);
    partial_upload(&s, "half.img");
    let out = bmctl(&s.cfg.dir, &["-p", "n", "landlord", "image", "cancel", "half.img"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("upload of image half.img cancelled"), "{}", stdout(&out));
    assert!(s.server.state.lock().unwrap().uploads.is_empty());
    // Nothing left to cancel: the node's NotFound, exit 5.
    let out = bmctl(&s.cfg.dir, &["-p", "n", "landlord", "image", "cancel", "half.img"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
}

#[test]
fn image_list_shows_images_and_unfinished_uploads() {
    let s = setup();
    add_profile(&s, "n", &s.server.addr);
    let img = s.cfg.dir.join("k.img");
    std::fs::write(&img, b"kernel bytes").unwrap();
    // In process, twice: the Ctrl-C handler is installed once and re-armed.
    for _ in 0..2 {
        let args = ["bmctl", "--config-dir", s.cfg.dir.to_str().unwrap(), "-p", "n", "--json"];
        let args = args.iter().copied().chain(["landlord", "image", "upload", img.to_str().unwrap()]);
        bmctl::cli::run(bmctl::cli::Cli::try_parse_from(args).unwrap()).unwrap();
    }
    partial_upload(&s, "half.img");
    let out = bmctl(&s.cfg.dir, &["-p", "n", "--json", "landlord", "image", "list", "--verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"][0]["name"], "k.img");
    assert_eq!(v["images"][0]["sha256"], mgmt_proto::crypto::to_hex(&image_digest(b"kernel bytes")));
    assert_eq!(v["images"][0]["intact"], true);
    assert_eq!(v["uploads"][0]["name"], "half.img");
    let out = bmctl(&s.cfg.dir, &["-p", "n", "landlord", "image", "list"]);
    let text = stdout(&out);
    assert!(text.contains("k.img") && text.contains("unfinished upload half.img"), "{text}");
}

#[test]
fn cancel_flag_stops_the_upload_and_cancels_it_on_the_node() {
    let s = setup();
    let flag = Arc::new(AtomicBool::new(true));
    let opts = UploadOptions { cancel: Some(flag), ..plain_upload("big.img") };
    let mut conn = || connect(&s.server.addr, Role::Landlord, &s.landlord.secret, &s.landlord_key());
    let e = upload_image(&mut conn, &[1u8; 50_000], &opts, &ProgressBar::hidden()).unwrap_err();
    assert_eq!(e.exit_code(), 130);
    assert!(e.to_string().contains("cancelled on the node"), "{e}");
    let st = s.server.state.lock().unwrap();
    assert!(st.uploads.is_empty() && !st.images.contains_key("big.img"));
    assert!(st.audit.iter().any(|a| a.action == "cancel-upload" && a.outcome == "ok"));
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_upload_cancels_it_on_the_node() {
    let s = setup();
    add_profile(&s, "n", &s.server.addr);
    s.server.knobs.delay_ms.store(30, Ordering::SeqCst);
    let img = s.cfg.dir.join("slow.img");
    std::fs::write(&img, vec![9u8; 256 * 1024]).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_bmctl"))
        .arg("--config-dir")
        .arg(&s.cfg.dir)
        .args(["-p", "n", "landlord", "image", "upload", img.to_str().unwrap(), "--chunk-kib", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.server.state.lock().unwrap().uploads.values().any(|u| u.received >= 8 * 1024) {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let t0 = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("the partial upload was cancelled on the node"), "{}", stderr(&out));
    let st = s.server.state.lock().unwrap();
    assert!(st.uploads.is_empty(), "the partial upload is still on the node");
    assert!(!st.images.contains_key("slow.img"));
}

#[test]
fn audit_pages_through_the_whole_log() {
    let s = setup();
    add_profile(&s, "n", &s.server.addr);
    let before = {
        let mut st = s.server.state.lock().unwrap();
        let before = st.audit.len();
        for i in 0..250 - before {
            st.log(None, "test", format!("entry {}", i + before));
        }
        before
    };
    assert!(before < 10);
    let out = bmctl(&s.cfg.dir, &["-p", "n", "--json", "landlord", "audit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert!(entries.len() >= 250, "{}", entries.len());
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["index"], i as u64);
    }
    assert_eq!(v["next"], entries.len() as u64);
    // A window across a page boundary.
    let out = bmctl(&s.cfg.dir, &["-p", "n", "--json", "landlord", "audit", "--from", "120", "--limit", "130"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 130);
    assert_eq!(entries[0]["index"], 120);
    assert_eq!(entries[129]["index"], 249);
    assert_eq!(v["next"], 250);
    // The hash chain is checked across the pages.
    assert_eq!(v["chain_verified"], 130);
    // Text output shows each entry's index, then the chain check.
    let out = bmctl(&s.cfg.dir, &["-p", "n", "landlord", "audit", "--from", "200", "--limit", "3"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[3].starts_with("chain: 3 entries verified, head "), "{text}");
    assert!(lines[0].trim_start().starts_with("200 ") && lines[0].ends_with("entry 200"), "{text}");
    assert!(lines[2].trim_start().starts_with("202 "), "{text}");
    // Entries the node trimmed are skipped: reading from 0 starts at the oldest kept.
    {
        let mut st = s.server.state.lock().unwrap();
        st.limits.max_audit = 64;
        st.log(None, "test", "trim".into());
    }
    let out = bmctl(&s.cfg.dir, &["-p", "n", "--json", "landlord", "audit", "--limit", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let base = s.server.state.lock().unwrap().audit_base;
    assert!(base > 0);
    assert_eq!(v["entries"][0]["index"], base);
}

#[test]
fn bad_names_fail_locally_with_exit_2() {
    let s = setup();
    add_profile(&s, "n", &s.server.addr);
    let d = &s.cfg.dir;
    let bad_file = d.join("bad name.img");
    std::fs::write(&bad_file, b"x").unwrap();
    for args in [
        vec!["-p", "n", "landlord", "vm", "create", "--lease", "1", "--name", "web vm", "--image", "img"],
        vec!["-p", "n", "landlord", "vm", "create", "--lease", "1", "--name", "web", "--image", "a\nb"],
        vec!["-p", "n", "landlord", "image", "cancel", "../etc"],
        vec!["-p", "n", "landlord", "image", "upload", bad_file.to_str().unwrap()],
        vec!["-p", "n", "landlord", "image", "upload", bad_file.to_str().unwrap(), "--name", &"x".repeat(33)],
        vec!["profile", "add", "bad/name", "--node", "h:1", "--node-key", &"0".repeat(64), "--role", "landlord"],
    ] {
        let out = bmctl(d, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(vmm_config::text::NAME_RULE), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(s.server.knobs.conns.load(Ordering::SeqCst), 0, "a bad name reached the node");
    // A good name goes through.
    let good = d.join("good.img");
    std::fs::write(&good, b"kernel").unwrap();
    let out = bmctl(d, &["-p", "n", "landlord", "image", "upload", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn node_strings_are_escaped_in_text_output() {
    let s = setup();
    add_profile(&s, "n", &s.server.addr);
    {
        let mut st = s.server.state.lock().unwrap();
        let spec = VmSpec {
            image: "img\x1b[2J".into(),
            cmdline: "console=ttyS0\rquiet".into(),
            ..vm_spec(LeaseId(1), "evil\nvm 9 forged")
        };
        let vm = Vm { spec, state: VmState::Stopped, starts: 0, autostart: false };
        st.vms.insert(VmId(9), vm);
        st.log(None, "forge\nline", "ok\x07".into());
    }
    let out = bmctl(&s.cfg.dir, &["-p", "n", "landlord", "vm", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("evil\\nvm 9 forged"), "{text}");
    assert!(text.contains("img\\u{1b}[2J"), "{text}");
    assert!(text.contains("console=ttyS0\\rquiet"), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\r') && !text.contains("evil\n"), "{text:?}");
    let out = bmctl(&s.cfg.dir, &["-p", "n", "landlord", "audit"]);
    let text = stdout(&out);
    assert!(text.contains("forge\\nline") && text.contains("ok\\u{7}"), "{text}");
    assert!(!text.contains('\x07') && !text.contains("forge\n"), "{text:?}");
    // JSON keeps the real strings (serde_json escapes them itself).
    let out = bmctl(&s.cfg.dir, &["-p", "n", "--json", "landlord", "vm", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["spec"]["name"], "evil\nvm 9 forged");
}

#[test]
fn help_lists_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = bmctl(dir.path(), &["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for (code, what) in [
        ("0", "success"),
        ("1", "local problem"),
        ("2", "usage error"),
        ("3", "node unreachable"),
        ("4", "session refused"),
        ("5", "request refused"),
        ("6", "protocol error"),
        ("7", "node busy"),
        ("130", "interrupted"),
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(&format!("{code} ")) && l.contains(what)),
            "exit code {code} ({what}) missing from --help:\n{text}"
        );
    }
    assert!(text.contains("--timeout <SECS>") && text.contains("BMCTL_TIMEOUT"), "{text}");
}

#[test]
fn tenant_status_counts_the_leases_vms() {
    let s = setup();
    s.cfg.keygen("t").unwrap();
    let t = s.cfg.load_key("t").unwrap();
    let mut l = s.landlord();
    let (lease, ut) =
        match l.call(Request::CreateLease { tenant_console_key: t.public, cluster: ClusterId(0) }).unwrap() {
            Response::LeaseCreated { lease, tenant_node_key } => (lease, tenant_node_key),
            r => panic!("{r:?}"),
        };
    let mut conn = || connect(&s.server.addr, Role::Landlord, &s.landlord.secret, &s.landlord_key());
    upload_image(&mut conn, b"image", &plain_upload("img"), &ProgressBar::hidden()).unwrap();
    for name in ["a", "b"] {
        l.call(Request::CreateVm { spec: vm_spec(lease, name) }).unwrap();
    }
    let p = Profile {
        name: "ten".into(),
        node: s.server.addr.clone(),
        node_key: ut.to_hex(),
        role: format!("tenant:{}", lease.0),
        key: "t".into(),
    };
    s.cfg.save_profile(&p, true).unwrap();
    let out = bmctl(&s.cfg.dir, &["-p", "ten", "tenant", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = format!("tenant:{} on node {}: 2 VM(s): 0 running, 2 stopped, 0 faulted", lease.0, s.server.addr);
    assert_eq!(stdout(&out).trim(), want);
    let out = bmctl(&s.cfg.dir, &["-p", "ten", "--json", "tenant", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vms"], 2);
    assert_eq!(v["stopped"], 2);
}

#[test]
fn vm_create_with_initrd_checks_the_image_and_lists_it() {
    let s = setup();
    add_profile(&s, "n", &s.server.addr);
    let (lease, _, _) = s.lease();
    let mut conn = || connect(&s.server.addr, Role::Landlord, &s.landlord.secret, &s.landlord_key());
    upload_image(&mut conn, b"kernel", &plain_upload("img"), &ProgressBar::hidden()).unwrap();
    let l = lease.0.to_string();
    let create = |initrd: &str| {
        bmctl(
            &s.cfg.dir,
            &[
                "-p", "n", "landlord", "vm", "create", "--lease", &l, "--name", "rd", "--image", "img", "--initrd",
                initrd,
            ],
        )
    };
    let out = create("initramfs");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("initrd: no image named \"initramfs\""), "{}", stderr(&out));
    upload_image(&mut conn, b"cpio archive", &plain_upload("initramfs"), &ProgressBar::hidden()).unwrap();
    let out = create("initramfs");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = bmctl(&s.cfg.dir, &["-p", "n", "landlord", "vm", "list"]);
    assert!(stdout(&out).contains("initrd: initramfs"), "{}", stdout(&out));
    let out = bmctl(&s.cfg.dir, &["-p", "n", "--json", "landlord", "vm", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["spec"]["initrd"], "initramfs");
}

#[test]
fn the_facility_driver_sets_a_stopped_vms_boot_and_reads_its_health() {
    use bmctl::fleet::driver::ConsoleDriver;
    use facility::driver::{BootImage, DriverError, NodeDriver};
    use facility::model::{NodeAddr, Resources, VmPlacementSpec};
    use mgmt_proto::fleet::{ServiceHealthReport, VmHealthReport};

    let s = setup();
    let images = tempfile::tempdir().unwrap();
    for (name, bytes) in [("k1", &b"kernel one"[..]), ("k2", b"kernel two"), ("rd", b"an initrd")] {
        std::fs::write(images.path().join(name), bytes).unwrap();
    }
    let timeout = Duration::from_secs(20);
    let driver = ConsoleDriver::new(s.landlord.secret.clone(), timeout, timeout, images.path().to_path_buf(), 0);
    let node =
        NodeAddr { name: "n1".into(), addr: s.server.addr.parse().unwrap(), node_key: s.landlord_key().to_hex() };
    let tenant = KeyPair::generate(&mut OsEntropy).unwrap();
    let vm = VmPlacementSpec {
        name: "web".into(),
        tenant: "t".into(),
        tenant_console_key: tenant.public.to_hex(),
        cluster: 1,
        res: Resources { vcpus: 1, memory_mib: 16, disk_mib: 0 },
        image: "k1".into(),
        initrd: None,
        cmdline: String::new(),
        ip: None,
        mac: [2, 0, 0, 0, 0, 1],
        protected: false,
        service: None,
        domain: None,
        version: None,
    };
    driver.create_vm(&node, &vm, 7, 1).unwrap();
    let id = |s: &Setup| *s.server.state.lock().unwrap().vms.keys().next().unwrap();
    let vm_id = id(&s);
    let spec = |s: &Setup| s.server.state.lock().unwrap().vms[&vm_id].spec.clone();

    // Stopped: no health but that; a new boot is uploaded, then set.
    let h = driver.vm_health(&node, "web").unwrap();
    assert!(!h.running && h.services.is_empty());
    let boot = BootImage { image: "k2".into(), initrd: Some("rd".into()), cmdline: "v=2".into() };
    driver.set_vm_image(&node, "web", &boot).unwrap();
    let now = spec(&s);
    assert_eq!((now.image.as_str(), now.initrd.as_deref(), now.cmdline.as_str()), ("k2", Some("rd"), "v=2"));
    driver.set_vm_image(&node, "web", &boot).unwrap();

    // Running: what the agent says; a new boot is refused.
    driver.start_vm(&node, "web", 1).unwrap();
    let report = VmHealthReport {
        running: true,
        agent_attached: true,
        agent_hung: false,
        since_heartbeat_ms: Some(15),
        heartbeats: 4,
        services: vec![ServiceHealthReport {
            name: "api".into(),
            last_event: "exited with status 1".into(),
            up: false,
        }],
    };
    s.server.knobs.node.lock().unwrap().health.insert(vm_id, report);
    let h = driver.vm_health(&node, "web").unwrap();
    assert!(h.running && h.agent_attached && h.heartbeats == 4);
    assert_eq!(h.service("api").map(|x| x.up), Some(false));
    let back = BootImage { image: "k1".into(), initrd: None, cmdline: String::new() };
    assert!(
        matches!(driver.set_vm_image(&node, "web", &back), Err(DriverError::Refused(m)) if m.contains("stop the VM"))
    );
    assert!(matches!(driver.vm_health(&node, "nope"), Err(DriverError::Refused(_))));
}
