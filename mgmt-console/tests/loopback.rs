#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! bmctl's client code against a loopback TCP server running `NodeSession`
//! and the in-memory `NodeState` from mgmt-proto (feature `sim`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bmctl::client::{Client, ClientError};
use bmctl::profile::{Config, OsEntropy, Profile};
use bmctl::upload::{upload_image, UploadOptions};
use clap::Parser;
use indicatif::ProgressBar;
use mgmt_proto::state::NodeState;
use mgmt_proto::*;

struct Server {
    addr: String,
    state: Arc<Mutex<NodeState>>,
    /// When set, the next connection is dropped after its third chunk.
    cut_upload: Arc<AtomicBool>,
}

fn serve_conn(mut s: TcpStream, state: Arc<Mutex<NodeState>>, cut: Arc<AtomicBool>) {
    let mut session = NodeSession::new(Box::new(OsEntropy));
    let mut buf = vec![0u8; 65536];
    let cut_here = cut.swap(false, Ordering::SeqCst);
    let mut chunks = 0;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut st = state.lock().unwrap();
        let before = st.audit.len();
        let r = st.serve(&mut session, &buf[..n]);
        chunks += st.audit[before..].iter().filter(|e| e.action == "upload-chunk").count();
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
    let (st, cut) = (state.clone(), cut_upload.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (st, cut) = (st.clone(), cut.clone());
            std::thread::spawn(move || serve_conn(conn, st, cut));
        }
    });
    Server { addr, state, cut_upload }
}

fn connect(addr: &str, role: Role, secret: &SecretKey, node_key: &PublicKey) -> Result<Client, ClientError> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Client::handshake(Box::new(s), role, secret, node_key)
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
        let o = UploadOptions {
            name: "img".into(),
            lease: None,
            signature: None,
            chunk: 1024,
            retries: 0,
            backoff: Duration::ZERO,
        };
        upload_image(&mut conn, b"image", &o, &ProgressBar::hidden()).unwrap();
        let spec = VmSpec {
            lease: a,
            name: "a1".into(),
            vcpus: 1,
            memory_mib: 64,
            disk_mib: 0,
            image: "img".into(),
            cluster: ClusterId(0),
            cmdline: String::new(),
            ip: None,
        };
        match l.call(Request::CreateVm { spec }).unwrap() {
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
