#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
//! bmctl's agent commands through the real binary against a loopback node:
//! the real `NodeSession` and `NodeState` (crate node-logic, with its
//! in-memory backend `SimNode`), with agent requests
//! served from a real `agent_proto::Relay` and a small fake agent (test code)
//! speaking the shared-memory ring.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_proto::msg::{
    decode, encode, ExecSpec, FileStat, FromAgent, Inventory, ProcessInfo, ServiceOp, ServiceStatus, ToAgent, TreeEntry,
};
use agent_proto::relay::RelayLimits;
use agent_proto::ring::{Layout, MIN_DATA};
use agent_proto::{Event, Input, Op, Relay, RelayError, MAX_DATA, MAX_RECORD};
use bmctl::profile::{Config, OsEntropy, Profile};
use mgmt_proto::*;
use node_logic::sim::SimNode;
use node_logic::NodeState;
use sha2::{Digest, Sha256};

fn now_ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

// ---- the fake agent ----

#[derive(Default)]
struct Fs {
    files: HashMap<String, (Vec<u8>, u32)>,
    partials: HashMap<String, Vec<u8>>,
    dirs: BTreeMap<String, u32>,
    services: BTreeMap<String, ServiceStatus>,
}

enum Work {
    /// A command waiting for input, a signal or its timeout.
    Exec {
        argv: Vec<String>,
        deadline: Option<Instant>,
    },
    Write {
        path: String,
        mode: u32,
        size: u64,
    },
    Other,
}

struct Stream {
    work: Work,
    out: VecDeque<Event>,
    credit: usize,
}

struct FakeAgent {
    layout: Layout,
    mem: Vec<u8>,
    g2h_head: u32,
    h2g_tail: u32,
    streams: BTreeMap<u32, Stream>,
    fs: Arc<Mutex<Fs>>,
    window: usize,
}

fn sha(d: &[u8]) -> [u8; 32] {
    Sha256::digest(d).into()
}

impl FakeAgent {
    fn send(&mut self, m: &FromAgent) -> bool {
        let b = encode(m, MAX_RECORD).unwrap();
        self.layout.guest_to_host().produce(&mut self.mem[..], &mut self.g2h_head, &b).unwrap()
    }

    fn recv(&mut self) -> Vec<ToAgent> {
        let mut v = Vec::new();
        let mut rec = Vec::new();
        while self.layout.host_to_guest().consume(&mut self.mem[..], &mut self.h2g_tail, &mut rec).unwrap() {
            v.push(decode(&rec, MAX_RECORD).unwrap());
        }
        v
    }

    fn push(&mut self, id: u32, e: Event) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.out.push_back(e);
        }
    }

    fn open(&mut self, id: u32, op: Op) {
        let mut work = Work::Other;
        let mut out = VecDeque::new();
        let mut fs = self.fs.lock().unwrap();
        match op {
            Op::Exec(spec) => {
                let ExecSpec { argv, timeout_ms, pty, .. } = spec;
                let arg = |i: usize| argv.get(i).cloned().unwrap_or_default();
                match arg(0).as_str() {
                    "echo" => {
                        out.push_back(Event::Stdout(format!("{}\n", argv[1..].join(" ")).into_bytes()));
                        out.push_back(Event::Exited { code: Some(0), signal: None, timed_out: false });
                    }
                    "fail" => {
                        out.push_back(Event::Stderr(b"failing\n".to_vec()));
                        out.push_back(Event::Exited { code: arg(1).parse().ok(), signal: None, timed_out: false });
                    }
                    "killed" => {
                        out.push_back(Event::Exited { code: None, signal: arg(1).parse().ok(), timed_out: false })
                    }
                    "/bin/sh" if arg(1) == "-c" => {
                        let code = arg(2).strip_prefix("exit ").and_then(|c| c.parse().ok()).unwrap_or(0);
                        out.push_back(Event::Exited { code: Some(code), signal: None, timed_out: false });
                    }
                    "nosuch" => out.push_back(Event::Error("nosuch: command not found".into())),
                    _ => {
                        // cat, sleep, shells: wait for input, signals or the timeout.
                        if let Some(ws) = pty {
                            out.push_back(Event::Stdout(format!("pty {}x{}\r\n", ws.rows, ws.cols).into_bytes()));
                        }
                        let deadline =
                            (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)));
                        work = Work::Exec { argv, deadline };
                    }
                }
            }
            Op::Stat { path } => {
                let partial = fs.partials.get(&path).map_or(0, |p| p.len() as u64);
                let st = if let Some((d, m)) = fs.files.get(&path) {
                    FileStat { exists: true, dir: false, mode: *m, size: d.len() as u64, partial }
                } else if let Some(m) = fs.dirs.get(&path) {
                    FileStat { exists: true, dir: true, mode: *m, size: 0, partial }
                } else {
                    FileStat { exists: false, dir: false, mode: 0, size: 0, partial }
                };
                out.push_back(Event::Stat(st));
            }
            Op::WriteFile { path, mode, offset, size } => {
                let part = fs.partials.entry(path.clone()).or_default();
                if offset > part.len() as u64 {
                    out.push_back(Event::Error(format!("offset {offset} beyond the partial file")));
                } else {
                    part.truncate(offset as usize);
                    work = Work::Write { path, mode, size };
                }
            }
            Op::ReadFile { path, offset } => match fs.files.get(&path) {
                Some((d, m)) => {
                    for c in d[(offset as usize).min(d.len())..].chunks(MAX_DATA) {
                        out.push_back(Event::Data(c.to_vec()));
                    }
                    out.push_back(Event::Done { sha256: sha(d), size: d.len() as u64, mode: *m });
                }
                None => out.push_back(Event::Error(format!("{path}: no such file"))),
            },
            Op::ListTree { path } => {
                let prefix = format!("{}/", path.trim_end_matches('/'));
                let mut v: Vec<TreeEntry> = fs
                    .dirs
                    .iter()
                    .filter_map(|(p, m)| {
                        p.strip_prefix(&prefix).map(|r| TreeEntry { path: r.into(), dir: true, mode: *m, size: 0 })
                    })
                    .collect();
                v.extend(fs.files.iter().filter_map(|(p, (d, m))| {
                    p.strip_prefix(&prefix).map(|r| TreeEntry {
                        path: r.into(),
                        dir: false,
                        mode: *m,
                        size: d.len() as u64,
                    })
                }));
                out.push_back(Event::Tree(v));
            }
            Op::MakeDir { path, mode } => {
                let mut p = String::new();
                for part in path.split('/').filter(|s| !s.is_empty()) {
                    p.push('/');
                    p.push_str(part);
                    fs.dirs.entry(p.clone()).or_insert(mode);
                }
                fs.dirs.insert(path, mode);
                out.push_back(Event::Ok);
            }
            Op::Processes => out.push_back(Event::Processes(vec![
                ProcessInfo { pid: 1, ppid: 0, state: "S".into(), rss_kib: 1200, cmd: "/sbin/init".into() },
                ProcessInfo { pid: 42, ppid: 1, state: "S".into(), rss_kib: 800, cmd: "sleep 1000".into() },
            ])),
            Op::Kill { pid, signal } => out.push_back(if pid == 1 || pid == 42 {
                Event::Ok
            } else {
                Event::Error(format!("kill {pid} {signal}: no such process"))
            }),
            Op::Service(s) => out.push_back(service(&mut fs, s)),
            Op::Inventory => out.push_back(Event::Inventory(Inventory {
                kernel: "6.1.0-test".into(),
                os_release: Some("Test Linux".into()),
                hostname: "guest".into(),
                agent_version: "0.1.0".into(),
                packages: vec!["busybox 1.36".into()],
                package_source: "apk".into(),
                services: fs.services.values().cloned().collect(),
                mem_total_kib: 65536,
                mem_available_kib: 32768,
                uptime_secs: 12,
            })),
        }
        drop(fs);
        self.streams.insert(id, Stream { work, out, credit: self.window });
    }

    fn input(&mut self, id: u32, input: Input) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let mut fs = self.fs.lock().unwrap();
        match (&s.work, input) {
            (Work::Write { path, .. }, Input::Data(d)) => fs.partials.entry(path.clone()).or_default().extend(d),
            (Work::Write { path, mode, size }, Input::End) => {
                let data = fs.partials.remove(path).unwrap_or_default();
                if data.len() as u64 != *size {
                    s.out.push_back(Event::Error(format!("got {} of {size} bytes", data.len())));
                } else {
                    s.out.push_back(Event::Done { sha256: sha(&data), size: *size, mode: *mode });
                    fs.files.insert(path.clone(), (data, *mode));
                }
                s.work = Work::Other;
            }
            (Work::Write { path, .. }, Input::Cancel) => {
                fs.partials.remove(path);
                s.out.push_back(Event::Error("cancelled".into()));
                s.work = Work::Other;
            }
            (Work::Exec { .. }, Input::Data(d)) => s.out.push_back(Event::Stdout(d)),
            (Work::Exec { .. }, Input::Resize(ws)) => {
                s.out.push_back(Event::Stdout(format!("resized {}x{}\r\n", ws.rows, ws.cols).into_bytes()))
            }
            (Work::Exec { argv, .. }, Input::End) if argv.first().is_some_and(|a| a != "sleep") => {
                s.out.push_back(Event::Exited { code: Some(0), signal: None, timed_out: false });
                s.work = Work::Other;
            }
            (Work::Exec { .. }, Input::Signal(n)) => {
                s.out.push_back(Event::Exited { code: None, signal: Some(n), timed_out: false });
                s.work = Work::Other;
            }
            (Work::Exec { .. }, Input::Cancel) => {
                s.out.push_back(Event::Exited { code: None, signal: Some(9), timed_out: false });
                s.work = Work::Other;
            }
            _ => {}
        }
    }

    /// One round: take what the node sent, run timers, send what fits.
    fn step(&mut self) {
        for m in self.recv() {
            match m {
                ToAgent::Open { stream, op } => self.open(stream, op),
                ToAgent::Input { stream, input } => self.input(stream, input),
                ToAgent::Credit { stream, bytes } => {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        s.credit += bytes as usize;
                    }
                }
                ToAgent::Configure { .. } => {}
            }
        }
        let now = Instant::now();
        let timed_out: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| matches!(s.work, Work::Exec { deadline: Some(d), .. } if d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            self.push(id, Event::Exited { code: None, signal: Some(9), timed_out: true });
            if let Some(s) = self.streams.get_mut(&id) {
                s.work = Work::Other;
            }
        }
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        'outer: for id in ids {
            loop {
                let s = self.streams.get_mut(&id).unwrap();
                let Some(e) = s.out.front() else { break };
                if e.weight() > s.credit {
                    break;
                }
                let e = e.clone();
                if !self.send(&FromAgent::Event { stream: id, event: e.clone() }) {
                    break 'outer;
                }
                let s = self.streams.get_mut(&id).unwrap();
                s.credit -= e.weight();
                s.out.pop_front();
                if e.is_terminal() {
                    self.streams.remove(&id);
                    break;
                }
            }
        }
    }
}

fn service(fs: &mut Fs, op: ServiceOp) -> Event {
    let status = |name: &str, spec_restart| ServiceStatus {
        name: name.into(),
        state: "running".into(),
        pid: Some(100),
        restarts: 0,
        last_exit: None,
        restart: spec_restart,
    };
    match op {
        ServiceOp::Define(spec) => {
            fs.services.insert(spec.name.clone(), status(&spec.name, spec.restart));
            Event::Ok
        }
        ServiceOp::Status { name: None } => Event::Services(fs.services.values().cloned().collect()),
        ServiceOp::Status { name: Some(n) } => match fs.services.get(&n) {
            Some(s) => Event::Services(vec![s.clone()]),
            None => Event::Error(format!("no service {n}")),
        },
        ServiceOp::Logs { name, lines } => {
            Event::Logs((1..=lines.min(3)).map(|i| format!("{name} line {i}")).collect())
        }
        ServiceOp::Stop { name } => match fs.services.get_mut(&name) {
            Some(s) => {
                s.state = "stopped".into();
                s.pid = None;
                s.last_exit = Some("signal 15".into());
                Event::Ok
            }
            None => Event::Error(format!("no service {name}")),
        },
        ServiceOp::Start { name } | ServiceOp::Restart { name } => match fs.services.get_mut(&name) {
            Some(s) => {
                s.state = "running".into();
                s.pid = Some(101);
                Event::Ok
            }
            None => Event::Error(format!("no service {name}")),
        },
        ServiceOp::Remove { name } => match fs.services.remove(&name) {
            Some(_) => Event::Ok,
            None => Event::Error(format!("no service {name}")),
        },
    }
}

/// Runs a fake agent for `relay` on its own thread until `stop`.
fn spawn_agent(relay: Arc<Mutex<Relay>>, fs: Arc<Mutex<Fs>>, t0: Instant, knobs: Arc<Knobs>) {
    let layout = Layout::new(u64::from(MIN_DATA)).unwrap();
    let mut mem = vec![0u8; layout.total() as usize];
    layout.init(&mut mem[..]).unwrap();
    let window = RelayLimits::default().stream_window;
    let mut a = FakeAgent { layout, mem, g2h_head: 0, h2g_tail: 0, streams: BTreeMap::new(), fs, window };
    relay.lock().unwrap().attach(layout, now_ms(t0));
    a.send(&FromAgent::Hello {
        protocol: 1,
        agent_version: "0.1.0".into(),
        hostname: "guest".into(),
        kernel: "6.1.0-test".into(),
    });
    std::thread::spawn(move || loop {
        if knobs.stop.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut r = relay.lock().unwrap();
            let _ = r.kick(&mut a.mem[..], now_ms(t0));
            r.tick(now_ms(t0));
        }
        a.step();
        {
            let mut r = relay.lock().unwrap();
            let _ = r.kick(&mut a.mem[..], now_ms(t0));
        }
        std::thread::sleep(Duration::from_micros(knobs.agent_pause_us.load(Ordering::SeqCst)));
    });
}

// ---- the node ----

#[derive(Default)]
struct Knobs {
    stop: AtomicBool,
    agent_pause_us: AtomicU64,
    /// Backpressure refusals served.
    input_full: AtomicUsize,
    /// The running node the state asks for status, console and counters.
    node: Mutex<SimNode>,
}

struct Node {
    addr: String,
    state: Arc<Mutex<NodeState>>,
    relays: Arc<Mutex<HashMap<VmId, Arc<Mutex<Relay>>>>>,
    knobs: Arc<Knobs>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.knobs.stop.store(true, Ordering::SeqCst);
    }
}

/// Serves an agent request as the node does (hypervisor/src/mgmt/agent.rs).
fn agent_request(node: &NodeCtx, req: &Request) -> Result<Response, ErrorReply> {
    let now = now_ms(node.t0);
    let vm = match req {
        Request::AgentOpen { vm, .. }
        | Request::AgentSend { vm, .. }
        | Request::AgentPoll { vm, .. }
        | Request::AgentStatus { vm }
        | Request::AgentLog { vm, .. }
        | Request::AgentHeartbeat { vm, .. } => *vm,
        _ => unreachable!(),
    };
    if node.state.lock().unwrap().vms.get(&vm).map(|v| v.state) != Some(VmState::Running) {
        return Err(ErrorReply::new(ErrorCode::Conflict, "VM is not running"));
    }
    let relay = node.relays.lock().unwrap().get(&vm).cloned();
    let Some(relay) = relay else {
        return Err(ErrorReply::from(RelayError::NoAgent(None)));
    };
    let mut r = relay.lock().unwrap();
    Ok(match req {
        Request::AgentOpen { op, .. } => {
            Response::AgentStream { stream: r.open(op.clone(), now).map_err(ErrorReply::from)? }
        }
        Request::AgentSend { stream, input, .. } => {
            let res = r.send(*stream, input.clone(), now);
            if matches!(res, Err(RelayError::InputFull(_))) {
                node.knobs.input_full.fetch_add(1, Ordering::SeqCst);
            }
            res.map_err(ErrorReply::from)?;
            Response::Done
        }
        Request::AgentPoll { stream, max_bytes, .. } => {
            let (events, finished) =
                r.poll(*stream, (*max_bytes as usize).min(48 * 1024), now).map_err(ErrorReply::from)?;
            Response::AgentEvents { events, finished }
        }
        Request::AgentStatus { .. } => Response::Agent(r.status(now)),
        Request::AgentLog { from, .. } => {
            let (entries, next) = r.log_since(*from, 64);
            Response::AgentLog { entries, next }
        }
        Request::AgentHeartbeat { period_ms, timeout_ms, .. } => {
            r.set_heartbeat(*period_ms, *timeout_ms).map_err(ErrorReply::from)?;
            Response::Done
        }
        _ => unreachable!(),
    })
}

#[derive(Clone)]
struct NodeCtx {
    state: Arc<Mutex<NodeState>>,
    relays: Arc<Mutex<HashMap<VmId, Arc<Mutex<Relay>>>>>,
    knobs: Arc<Knobs>,
    t0: Instant,
}

fn is_agent(req: &Request) -> bool {
    matches!(
        req,
        Request::AgentOpen { .. }
            | Request::AgentSend { .. }
            | Request::AgentPoll { .. }
            | Request::AgentStatus { .. }
            | Request::AgentLog { .. }
            | Request::AgentHeartbeat { .. }
    )
}

fn serve_conn(mut s: TcpStream, node: NodeCtx) {
    let mut session = NodeSession::new(Box::new(OsEntropy));
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let events = {
            let st = node.state.lock().unwrap();
            match session.receive(&buf[..n], &st.keys) {
                Ok(ev) => ev,
                Err(_) => {
                    let _ = s.write_all(&session.take_output());
                    return;
                }
            }
        };
        for ev in events {
            if let mgmt_proto::session::NodeEvent::Request(env) = ev {
                let role = session.role().unwrap();
                let result = if is_agent(&env.body) {
                    let st = node.state.lock().unwrap();
                    let auth = authorize(&role, &env.body, &*st).map_err(|d| d.to_error());
                    drop(st);
                    auth.and_then(|()| agent_request(&node, &env.body))
                } else {
                    node.state.lock().unwrap().handle(role, &env.body, &mut *node.knobs.node.lock().unwrap())
                };
                if session.reply(env.seq, result).is_err() {
                    return;
                }
            }
        }
        if s.write_all(&session.take_output()).is_err() {
            return;
        }
    }
}

fn start_node(landlord_console: PublicKey, limits: RelayLimits) -> (Node, NodeCtx, RelayLimits) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ctx = NodeCtx {
        state: Arc::new(Mutex::new(NodeState::provision(Box::new(OsEntropy), landlord_console).unwrap())),
        relays: Arc::new(Mutex::new(HashMap::new())),
        knobs: Arc::new(Knobs::default()),
        t0: Instant::now(),
    };
    let c = ctx.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let c = c.clone();
            std::thread::spawn(move || serve_conn(conn, c));
        }
    });
    let node = Node { addr, state: ctx.state.clone(), relays: ctx.relays.clone(), knobs: ctx.knobs.clone() };
    (node, ctx, limits)
}

struct Setup {
    dir: tempfile::TempDir,
    node: Node,
    vm: VmId,
    fs: Arc<Mutex<Fs>>,
}

impl Setup {
    fn cfg(&self) -> &Path {
        self.dir.path()
    }

    fn bmctl(&self, args: &[&str]) -> std::process::Output {
        self.bmctl_in(args, None)
    }

    fn bmctl_in(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bmctl"));
        c.arg("--config-dir").arg(self.cfg()).args(args);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        c.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
        let mut child = c.spawn().unwrap();
        if let Some(data) = stdin {
            let mut si = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = si.write_all(&data);
            });
        }
        child.wait_with_output().unwrap()
    }

    fn vm(&self) -> String {
        self.vm.0.to_string()
    }
}

/// A node with one running VM of a tenant lease whose agent is attached;
/// profiles "t" (tenant) and "ll" (landlord).
fn setup_with(limits: RelayLimits) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { dir: dir.path().to_path_buf() };
    cfg.keygen("ll").unwrap();
    cfg.keygen("t").unwrap();
    let ll = cfg.load_key("ll").unwrap();
    let t = cfg.load_key("t").unwrap();
    let (node, ctx, limits) = start_node(ll.public, limits);
    let vm = {
        let mut st = node.state.lock().unwrap();
        let Ok(Response::LeaseCreated { lease, tenant_node_key }) = st.handle(
            Role::Landlord,
            &Request::CreateLease { tenant_console_key: t.public, cluster: ClusterId(0) },
            &mut SimNode::default(),
        ) else {
            panic!()
        };
        st.images.insert(
            "img".into(),
            node_logic::Image { extent: node_logic::images::Extent { start: 0, blocks: 1 }, size: 16, sha256: [0; 32] },
        );
        let spec = VmSpec {
            lease,
            name: "g".into(),
            vcpus: 1,
            memory_mib: 64,
            disk_mib: 0,
            image: "img".into(),
            cluster: ClusterId(0),
            cmdline: String::new(),
            ip: None,
            initrd: None,
        };
        let Ok(Response::VmCreated { vm }) =
            st.handle(Role::Landlord, &Request::CreateVm { spec }, &mut SimNode::default())
        else {
            panic!()
        };
        st.vms.get_mut(&vm).unwrap().state = VmState::Running;
        let save = |name: &str, role: String, key: &PublicKey| {
            let p =
                Profile { name: name.into(), node: node.addr.clone(), node_key: key.to_hex(), role, key: name.into() };
            cfg.save_profile(&p, true).unwrap();
        };
        save("t", format!("tenant:{}", lease.0), &tenant_node_key);
        save("ll", "landlord".into(), &st.landlord_key);
        vm
    };
    let relay = Arc::new(Mutex::new(Relay::new(limits)));
    ctx.relays.lock().unwrap().insert(vm, relay.clone());
    let fs = Arc::new(Mutex::new(Fs::default()));
    fs.lock().unwrap().dirs.extend([("/".to_string(), 0o755), ("/root".to_string(), 0o700)]);
    spawn_agent(relay, fs.clone(), ctx.t0, ctx.knobs.clone());
    Setup { dir, node, vm, fs }
}

fn setup() -> Setup {
    setup_with(RelayLimits::default())
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8).collect()
}

#[cfg(unix)]
fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
fn set_mode(p: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

// ---- tests ----

#[test]
fn exec_passes_output_and_exit_statuses() {
    let s = setup();
    let vm = s.vm();
    let o = s.bmctl(&["-p", "t", "tenant", "exec", &vm, "--", "echo", "hello", "world"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello world\n");
    let o = s.bmctl(&["-p", "t", "tenant", "exec", &vm, "--", "fail", "3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stderr(&o), "failing\n", "the command's own stderr only");
    let o = s.bmctl(&["-p", "t", "tenant", "exec", &vm, "--", "killed", "9"]);
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    let t0 = Instant::now();
    let o = s.bmctl(&["-p", "t", "tenant", "exec", &vm, "--cmd-timeout", "1", "--", "sleep", "100"]);
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(5));
    // JSON: one object with the output and the status.
    let o = s.bmctl(&["-p", "t", "--json", "tenant", "exec", &vm, "--", "fail", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["code"], 2);
    assert_eq!(v["stderr"], "failing\n");
    // The agent's error: exit 5.
    let o = s.bmctl(&["-p", "t", "tenant", "exec", &vm, "--", "nosuch"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("command not found"), "{}", stderr(&o));
}

#[test]
fn exec_passes_stdin_in_chunks() {
    let s = setup();
    let input = data(200_000, 7);
    let o = s.bmctl_in(&["-p", "t", "tenant", "exec", &s.vm(), "-i", "--", "cat"], Some(&input));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(o.stdout.len(), input.len());
    assert!(o.stdout == input);
}

#[cfg(unix)]
#[test]
fn ctrl_c_signals_the_command() {
    let s = setup();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_bmctl"))
        .arg("--config-dir")
        .arg(s.cfg())
        .args(["-p", "t", "tenant", "exec", &s.vm(), "--", "sleep", "100"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.node.relays.lock().unwrap()[&s.vm].lock().unwrap().status(0).streams == 0 {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "128 + SIGINT: {}", stderr(&o));
}

#[test]
fn shell_without_a_terminal() {
    let s = setup();
    let o = s.bmctl_in(&["-p", "t", "tenant", "shell", &s.vm()], Some(b"ls /\n"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "pty 24x80\r\nls /\n");
    let o = s.bmctl(&["-p", "t", "tenant", "shell", &s.vm(), "--command", "exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

fn cp(s: &Setup, args: &[&str]) -> std::process::Output {
    let mut v = vec!["-p", "t", "tenant", "cp", "--no-progress"];
    v.extend_from_slice(args);
    s.bmctl(&v)
}

#[cfg(unix)]
#[test]
fn cp_in_and_out_with_checksums_and_modes() {
    let s = setup();
    let d = s.cfg();
    let src = d.join("big.bin");
    let content = data(3 * 1024 * 1024 + 123, 1);
    std::fs::write(&src, &content).unwrap();
    set_mode(&src, 0o640);
    let remote = format!("{}:/root", s.vm());
    let o = cp(&s, &[src.to_str().unwrap(), &remote]);
    assert!(o.status.success(), "{}", stderr(&o));
    let hex = mgmt_proto::crypto::to_hex(&sha(&content));
    let line = stdout(&o);
    assert!(line.starts_with(&format!("copied {} bytes in ", content.len())), "{line}");
    assert!(line.trim_end().ends_with(&format!("sha256 {hex}")), "{line}");
    {
        let fs = s.fs.lock().unwrap();
        let (got, mode) = &fs.files["/root/big.bin"];
        assert!(*got == content);
        assert_eq!(*mode, 0o640);
    }
    // And back out, to a new name.
    let back = d.join("back.bin");
    let o = cp(&s, &[&format!("{}:/root/big.bin", s.vm()), back.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&back).unwrap() == content);
    assert_eq!(mode_of(&back), 0o640);
    assert!(!d.join("back.bin.bm-part").exists());
    // JSON report.
    let o = s.bmctl(&["-p", "t", "--json", "tenant", "cp", &format!("{}:/root/big.bin", s.vm()), d.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sha256"], hex);
    assert!(std::fs::read(d.join("big.bin")).unwrap() == content);
    // Missing source in the VM: the agent's refusal is exit 5; two local sides: usage.
    let o = cp(&s, &[&format!("{}:/root/none", s.vm()), back.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let o = cp(&s, &[src.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = cp(&s, &[src.to_str().unwrap(), &format!("{}:relative", s.vm())]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[cfg(unix)]
#[test]
fn cp_recursive_keeps_the_tree_and_modes() {
    let s = setup();
    let d = s.cfg();
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha").unwrap();
    std::fs::write(tree.join("sub/b.bin"), data(100_000, 3)).unwrap();
    std::fs::write(tree.join("sub/deeper/run.sh"), b"#!/bin/sh\n").unwrap();
    set_mode(&tree.join("sub/deeper/run.sh"), 0o755);
    set_mode(&tree.join("a.txt"), 0o600);
    set_mode(&tree.join("sub"), 0o750);
    let o = cp(&s, &["-r", tree.to_str().unwrap(), &format!("{}:/root", s.vm())]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(3 files, 3 directories)"), "{}", stdout(&o));
    {
        let fs = s.fs.lock().unwrap();
        assert_eq!(fs.files["/root/tree/a.txt"], (b"alpha".to_vec(), 0o600));
        assert_eq!(fs.files["/root/tree/sub/deeper/run.sh"].1, 0o755);
        assert_eq!(fs.dirs["/root/tree/sub"], 0o750);
    }
    // A directory without -r is a usage error.
    let o = cp(&s, &[tree.to_str().unwrap(), &format!("{}:/root", s.vm())]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Back out into a new directory.
    let out = d.join("out");
    let o = cp(&s, &["-r", &format!("{}:/root/tree", s.vm()), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(out.join("sub/b.bin")).unwrap(), data(100_000, 3));
    assert_eq!(mode_of(&out.join("sub/deeper/run.sh")), 0o755);
    assert_eq!(mode_of(&out.join("a.txt")), 0o600);
    assert_eq!(mode_of(&out.join("sub")), 0o750);
}

#[test]
fn cp_resumes_after_a_cut_both_ways() {
    let s = setup();
    let d = s.cfg();
    let content = data(1_000_000, 9);
    let src = d.join("f.bin");
    std::fs::write(&src, &content).unwrap();
    // Into the VM: the agent holds the first 300000 bytes of an earlier copy.
    s.fs.lock().unwrap().partials.insert("/root/f.bin".into(), content[..300_000].to_vec());
    let o = cp(&s, &[src.to_str().unwrap(), &format!("{}:/root/f.bin", s.vm())]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming at 300000 bytes"), "{}", stderr(&o));
    assert!(s.fs.lock().unwrap().files["/root/f.bin"].0 == content);
    // A partial copy that does not match the source: caught by the hash, exit 6.
    let mut bad = content[..1000].to_vec();
    bad[10] ^= 1;
    s.fs.lock().unwrap().partials.insert("/root/g.bin".into(), bad);
    let o = cp(&s, &[src.to_str().unwrap(), &format!("{}:/root/g.bin", s.vm())]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("sha256 mismatch"), "{}", stderr(&o));
    // Out of the VM: a local .bm-part from an earlier copy.
    let dst = d.join("g.out");
    std::fs::write(d.join("g.out.bm-part"), &content[..500_000]).unwrap();
    let o = cp(&s, &[&format!("{}:/root/f.bin", s.vm()), dst.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming at 500000 bytes"), "{}", stderr(&o));
    assert!(std::fs::read(&dst).unwrap() == content);
    let o = s.bmctl(&["-p", "t", "--json", "tenant", "cp", &format!("{}:/root/f.bin", s.vm()), dst.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["transferred"], content.len() as u64, "no partial left: a whole copy");
}

#[test]
fn cp_waits_out_backpressure() {
    // Room for one data input at a time, and a slow agent.
    let s = setup_with(RelayLimits { input_bytes: 60 * 1024, ..RelayLimits::default() });
    s.node.knobs.agent_pause_us.store(50_000, Ordering::SeqCst);
    let d = s.cfg();
    let content = data(1_500_000, 5);
    let src = d.join("bp.bin");
    std::fs::write(&src, &content).unwrap();
    let o = s.bmctl(&["-p", "t", "--json", "tenant", "cp", src.to_str().unwrap(), &format!("{}:/root/bp.bin", s.vm())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["backpressure_retries"].as_u64().unwrap() > 0, "{v} {}", s.node.knobs.input_full.load(Ordering::SeqCst));
    assert!(s.node.knobs.input_full.load(Ordering::SeqCst) > 0);
    assert!(s.fs.lock().unwrap().files["/root/bp.bin"].0 == content);
    // stdin under backpressure too.
    let o = s.bmctl_in(&["-p", "t", "tenant", "exec", &s.vm(), "-i", "--", "cat"], Some(&content));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout == content);
}

#[test]
fn ps_kill_services_inventory_agent_and_log() {
    let s = setup();
    let vm = s.vm();
    let o = s.bmctl(&["-p", "t", "tenant", "ps", &vm]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.lines().next().unwrap().contains("PID") && text.contains("sleep 1000"), "{text}");
    let o = s.bmctl(&["-p", "t", "tenant", "kill", &vm, "42", "--signal", "9"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.bmctl(&["-p", "t", "tenant", "kill", &vm, "7"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let o =
        s.bmctl(&["-p", "t", "tenant", "service", &vm, "define", "web", "--restart", "always", "--", "httpd", "-f"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.bmctl(&["-p", "t", "tenant", "service", &vm, "stop", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.bmctl(&["-p", "t", "tenant", "service", &vm, "status"]);
    let text = stdout(&o);
    assert!(text.contains("LAST-EXIT") && text.contains("web") && text.contains("signal 15"), "{text}");
    assert!(text.contains("always"), "{text}");
    let o = s.bmctl(&["-p", "t", "tenant", "service", &vm, "logs", "web", "--lines", "2"]);
    assert_eq!(stdout(&o), "web line 1\nweb line 2\n");
    let o = s.bmctl(&["-p", "t", "tenant", "service", &vm, "start", "nope"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let o = s.bmctl(&["-p", "t", "tenant", "inventory", &vm]);
    assert!(stdout(&o).contains("Test Linux") && stdout(&o).contains("6.1.0-test"), "{}", stdout(&o));
    let o = s.bmctl(&["-p", "t", "--json", "tenant", "inventory", &vm]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["packages"][0], "busybox 1.36");
    let o =
        s.bmctl(&["-p", "t", "tenant", "agent", &vm, "--wait", "5", "--heartbeat-ms", "500", "--timeout-ms", "2000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("attached") && stdout(&o).contains("period 500 ms"), "{}", stdout(&o));
    let o = s.bmctl(&["-p", "t", "--json", "tenant", "agent", &vm]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["agent_version"], "0.1.0");
    let o = s.bmctl(&["-p", "t", "tenant", "agent", &vm, "--heartbeat-ms", "50", "--timeout-ms", "2000"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let o = s.bmctl(&["-p", "t", "tenant", "agent-log", &vm]);
    assert!(stdout(&o).contains("] agent attached"), "{}", stdout(&o));
    assert!(stdout(&o).contains("agent hello: bm-agent 0.1.0"), "{}", stdout(&o));
}

#[test]
fn agent_not_ready_and_vm_not_running() {
    let s = setup();
    // Another VM of the lease, running but without an agent.
    let other = {
        let mut st = s.node.state.lock().unwrap();
        let spec = VmSpec { name: "h".into(), ..st.vms[&s.vm].spec.clone() };
        let Ok(Response::VmCreated { vm }) =
            st.handle(Role::Landlord, &Request::CreateVm { spec }, &mut SimNode::default())
        else {
            panic!()
        };
        st.vms.get_mut(&vm).unwrap().state = VmState::Running;
        vm
    };
    s.node.relays.lock().unwrap().insert(other, Arc::new(Mutex::new(Relay::new(RelayLimits::default()))));
    let t0 = Instant::now();
    let o = s.bmctl(&["-p", "t", "tenant", "agent", &other.0.to_string(), "--wait", "1"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("agent not ready after 1 s"), "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let o = s.bmctl(&["-p", "t", "tenant", "exec", &other.0.to_string(), "--", "echo"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("no agent is attached"), "{}", stderr(&o));
    s.node.state.lock().unwrap().vms.get_mut(&s.vm).unwrap().state = VmState::Stopped;
    let o = s.bmctl(&["-p", "t", "tenant", "ps", &s.vm()]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("VM is not running"), "{}", stderr(&o));
}

#[test]
fn the_landlord_is_refused_every_agent_command() {
    let s = setup();
    let vm = s.vm();
    let f = s.cfg().join("x");
    std::fs::write(&f, b"x").unwrap();
    let remote = format!("{vm}:/root/x");
    let cmds: Vec<Vec<&str>> = vec![
        vec!["exec", &vm, "--", "echo", "hi"],
        vec!["shell", &vm, "--command", "true"],
        vec!["cp", f.to_str().unwrap(), &remote],
        vec!["cp", &remote, f.to_str().unwrap()],
        vec!["ps", &vm],
        vec!["kill", &vm, "1"],
        vec!["service", &vm, "status"],
        vec!["service", &vm, "define", "x", "--", "true"],
        vec!["inventory", &vm],
        vec!["agent", &vm],
        vec!["agent", &vm, "--heartbeat-ms", "500", "--timeout-ms", "2000"],
        vec!["agent-log", &vm],
    ];
    for c in cmds {
        let mut args = vec!["-p", "ll", "tenant"];
        args.extend_from_slice(&c);
        let o = s.bmctl(&args);
        assert_eq!(o.status.code(), Some(5), "{c:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("Denied"), "{c:?}: {}", stderr(&o));
    }
}

#[test]
fn agent_help_documents_the_exit_statuses() {
    let s = setup();
    let o = s.bmctl(&["tenant", "exec", "--help"]);
    let text = stdout(&o);
    assert!(text.contains("124") && text.contains("128+N") && text.contains("--cmd-timeout"), "{text}");
    let o = s.bmctl(&["tenant", "cp", "--help"]);
    assert!(stdout(&o).contains("resuming at N bytes"), "{}", stdout(&o));
}
