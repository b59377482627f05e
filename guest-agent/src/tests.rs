//! Host tests: the engine runs real operations on this Linux machine, and
//! one test drives it through the node's real relay over a ring in memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_proto::msg::{decode, encode, ExecSpec, RestartPolicy, ServiceOp, ServiceSpec, WinSize};
use agent_proto::ring::{Layout, MIN_DATA};
use agent_proto::{Event, FromAgent, Input, Op, Relay, RelayLimits, ToAgent, MAX_DATA, MAX_RECORD};
use sha2::{Digest, Sha256};

use crate::engine::{Config, Engine};
use crate::transport::{exchange, KickError, Link};

fn engine() -> Engine {
    Engine::new(Config::default())
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bm-agent-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: None,
        timeout_ms: 0,
        stdin: false,
        pty: None,
    }
}

/// Drains the engine's output, crediting data back when `credit`.
fn drain(e: &mut Engine, credit: bool, all: &mut Vec<FromAgent>) {
    while let Some(m) = e.pop_front() {
        if let (true, FromAgent::Event { stream, event }) = (credit, &m) {
            e.handle(ToAgent::Credit { stream: *stream, bytes: event.weight() as u32 });
        }
        all.push(m);
    }
}

fn events_of(all: &[FromAgent], s: u32) -> Vec<Event> {
    all.iter()
        .filter_map(|m| match m {
            FromAgent::Event { stream, event } if *stream == s => Some(event.clone()),
            _ => None,
        })
        .collect()
}

/// Runs until stream `s` ends; all its events.
fn run(e: &mut Engine, s: u32, limit: Duration) -> Vec<Event> {
    run_keeping(e, s, limit, &mut Vec::new())
}

/// Like `run`, but every message drained on the way (service events too) stays in `all`.
fn run_keeping(e: &mut Engine, s: u32, limit: Duration, all: &mut Vec<FromAgent>) -> Vec<Event> {
    let start = Instant::now();
    loop {
        drain(e, true, all);
        let ev = events_of(all, s);
        if ev.last().is_some_and(Event::is_terminal) {
            return ev;
        }
        assert!(start.elapsed() < limit, "stream {s} did not end: {ev:?}");
        e.run_once(None, Duration::from_millis(10));
    }
}

fn open(e: &mut Engine, s: u32, op: Op) -> Vec<Event> {
    e.handle(ToAgent::Open { stream: s, op });
    run(e, s, Duration::from_secs(10))
}

fn stdout(ev: &[Event]) -> Vec<u8> {
    ev.iter().flat_map(|e| if let Event::Stdout(d) = e { d.clone() } else { vec![] }).collect()
}

fn stderr(ev: &[Event]) -> Vec<u8> {
    ev.iter().flat_map(|e| if let Event::Stderr(d) = e { d.clone() } else { vec![] }).collect()
}

#[test]
fn exec_echo() {
    let mut e = engine();
    let ev = open(&mut e, 1, Op::Exec(spec(&["echo", "hello", "world"])));
    assert_eq!(stdout(&ev), b"hello world\n");
    assert_eq!(ev.last(), Some(&Event::Exited { code: Some(0), signal: None, timed_out: false }));
    assert_eq!(e.active(), 0);
}

#[test]
fn exec_exit_code_and_stderr() {
    let mut e = engine();
    let ev = open(&mut e, 1, Op::Exec(spec(&["sh", "-c", "echo out; echo err >&2; exit 3"])));
    assert_eq!(stdout(&ev), b"out\n");
    assert_eq!(stderr(&ev), b"err\n");
    assert_eq!(ev.last(), Some(&Event::Exited { code: Some(3), signal: None, timed_out: false }));
}

#[test]
fn exec_env_cwd_and_path_lookup() {
    let mut e = engine();
    let d = tmpdir("cwd");
    let mut s = spec(&["sh", "-c", "echo $FOO; pwd"]);
    s.env = vec![("FOO".into(), "bar".into())];
    s.cwd = Some(d.to_string_lossy().into_owned());
    let ev = open(&mut e, 1, Op::Exec(s));
    assert_eq!(String::from_utf8(stdout(&ev)).unwrap(), format!("bar\n{}\n", d.display()));
}

#[test]
fn exec_missing_program() {
    let mut e = engine();
    let ev = open(&mut e, 1, Op::Exec(spec(&["/no/such/program"])));
    assert!(matches!(&ev[..], [Event::Error(m)] if m.starts_with("cannot run /no/such/program")), "{ev:?}");
}

#[test]
fn exec_timeout_kills_the_group() {
    let mut e = engine();
    let mut s = spec(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
    s.timeout_ms = 300;
    let t = Instant::now();
    let ev = open(&mut e, 1, Op::Exec(s));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(ev.last(), Some(&Event::Exited { code: None, signal: Some(9), timed_out: true }));
    assert!(stdout(&ev).is_empty());
}

#[test]
fn exec_stdin_piping() {
    let mut e = engine();
    let mut s = spec(&["sh", "-c", "tr a-z A-Z; echo done"]);
    s.stdin = true;
    e.handle(ToAgent::Open { stream: 4, op: Op::Exec(s) });
    e.handle(ToAgent::Input { stream: 4, input: Input::Data(b"hello ".to_vec()) });
    e.handle(ToAgent::Input { stream: 4, input: Input::Data(b"agent\n".to_vec()) });
    e.handle(ToAgent::Input { stream: 4, input: Input::End });
    let ev = run(&mut e, 4, Duration::from_secs(10));
    assert_eq!(stdout(&ev), b"HELLO AGENT\ndone\n");
    assert!(matches!(ev.last(), Some(Event::Exited { code: Some(0), .. })));
}

#[test]
fn exec_cancel_and_signal() {
    let mut e = engine();
    e.handle(ToAgent::Open { stream: 1, op: Op::Exec(spec(&["sleep", "30"])) });
    e.run_once(None, Duration::from_millis(10));
    e.handle(ToAgent::Input { stream: 1, input: Input::Cancel });
    let ev = run(&mut e, 1, Duration::from_secs(5));
    assert_eq!(ev.last(), Some(&Event::Exited { code: None, signal: Some(9), timed_out: false }));

    e.handle(ToAgent::Open { stream: 2, op: Op::Exec(spec(&["sleep", "30"])) });
    e.run_once(None, Duration::from_millis(10));
    e.handle(ToAgent::Input { stream: 2, input: Input::Signal(libc::SIGTERM) });
    let ev = run(&mut e, 2, Duration::from_secs(5));
    assert_eq!(ev.last(), Some(&Event::Exited { code: None, signal: Some(libc::SIGTERM), timed_out: false }));
}

#[test]
fn exec_on_a_pty_with_resize() {
    let mut e = engine();
    let mut s = spec(&["sh", "-c", "stty size; read x; stty size; tty"]);
    s.pty = Some(WinSize { rows: 24, cols: 80 });
    e.handle(ToAgent::Open { stream: 1, op: Op::Exec(s) });
    let start = Instant::now();
    let mut all = Vec::new();
    while !String::from_utf8_lossy(&stdout(&events_of(&all, 1))).contains("24 80") {
        assert!(start.elapsed() < Duration::from_secs(5), "{all:?}");
        e.run_once(None, Duration::from_millis(10));
        drain(&mut e, true, &mut all);
    }
    e.handle(ToAgent::Input { stream: 1, input: Input::Resize(WinSize { rows: 40, cols: 120 }) });
    e.handle(ToAgent::Input { stream: 1, input: Input::Data(b"go\n".to_vec()) });
    let mut ev = events_of(&all, 1);
    ev.extend(run(&mut e, 1, Duration::from_secs(5)));
    let text = String::from_utf8_lossy(&stdout(&ev)).into_owned();
    assert!(text.contains("40 120"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(matches!(ev.last(), Some(Event::Exited { code: Some(0), .. })), "{ev:?}");
}

#[test]
fn window_stalls_until_credit() {
    let mut e = engine();
    let total = 1_000_000usize;
    e.handle(ToAgent::Open { stream: 9, op: Op::Exec(spec(&["head", "-c", &total.to_string(), "/dev/zero"])) });
    let window = RelayLimits::default().stream_window;
    let mut all = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        e.run_once(None, Duration::from_millis(10));
        drain(&mut e, false, &mut all);
    }
    let ev = events_of(&all, 9);
    let weight: usize = ev.iter().map(Event::weight).sum();
    assert!(weight <= window, "{weight} > window");
    assert!(weight + 64 + MAX_DATA > window, "stalled early at {weight}");
    assert!(!ev.iter().any(Event::is_terminal), "ended without credit");
    // Credit what was received: the rest flows and nothing is lost.
    e.handle(ToAgent::Credit { stream: 9, bytes: weight as u32 });
    let mut rest = run(&mut e, 9, Duration::from_secs(10));
    let mut ev = ev;
    ev.append(&mut rest);
    assert_eq!(stdout(&ev).len(), total);
    assert!(matches!(ev.last(), Some(Event::Exited { code: Some(0), .. })));
    for x in &ev {
        if let Event::Stdout(d) = x {
            assert!(d.len() <= MAX_DATA);
        }
    }
}

fn write_file(e: &mut Engine, s: u32, path: &str, data: &[u8], offset: u64, end: bool) -> Vec<Event> {
    e.handle(ToAgent::Open {
        stream: s,
        op: Op::WriteFile { path: path.into(), mode: 0o640, offset, size: data.len() as u64 },
    });
    for c in data[offset as usize..].chunks(MAX_DATA) {
        e.handle(ToAgent::Input { stream: s, input: Input::Data(c.to_vec()) });
    }
    if end {
        e.handle(ToAgent::Input { stream: s, input: Input::End });
        return run(e, s, Duration::from_secs(10));
    }
    let mut all = Vec::new();
    drain(e, true, &mut all);
    events_of(&all, s)
}

#[test]
fn file_write_read_round_trip_and_resume() {
    let mut e = engine();
    let d = tmpdir("files");
    let path = d.join("blob.bin").to_string_lossy().into_owned();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha: [u8; 32] = Sha256::digest(&data).into();

    // A copy dropped half way leaves only the part file.
    assert!(write_file(&mut e, 1, &path, &data[..100_000], 0, false).is_empty());
    e.handle(ToAgent::Open { stream: 1, op: Op::Stat { path: path.clone() } }); // replaces stream 1
    let ev = run(&mut e, 1, Duration::from_secs(5));
    assert!(matches!(&ev[..], [Event::Stat(s)] if !s.exists && s.partial == 100_000), "{ev:?}");

    // Resume from 100000 (after rewinding a bit: 90000).
    let ev = write_file(&mut e, 2, &path, &data, 90_000, true);
    assert_eq!(ev, vec![Event::Done { sha256: sha, size: data.len() as u64, mode: 0o640 }]);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(!Path::new(&format!("{path}.bm-part")).exists());

    // Read it back whole, then from an offset: the hash covers the whole file.
    let ev = open(&mut e, 3, Op::ReadFile { path: path.clone(), offset: 0 });
    let got: Vec<u8> = ev.iter().flat_map(|x| if let Event::Data(d) = x { d.clone() } else { vec![] }).collect();
    assert_eq!(got, data);
    assert_eq!(ev.last(), Some(&Event::Done { sha256: sha, size: data.len() as u64, mode: 0o640 }));
    let ev = open(&mut e, 4, Op::ReadFile { path: path.clone(), offset: 250_000 });
    let got: Vec<u8> = ev.iter().flat_map(|x| if let Event::Data(d) = x { d.clone() } else { vec![] }).collect();
    assert_eq!(got, &data[250_000..]);
    assert_eq!(ev.last(), Some(&Event::Done { sha256: sha, size: data.len() as u64, mode: 0o640 }));
}

#[test]
fn file_write_errors() {
    let mut e = engine();
    let d = tmpdir("ferr");
    let path = d.join("f").to_string_lossy().into_owned();
    // Resume without a part file.
    let ev = write_file(&mut e, 1, &path, b"abcdef", 3, true);
    assert!(matches!(&ev[..], [Event::Error(m)] if m.starts_with("cannot resume")), "{ev:?}");
    // Short data: error, part file kept.
    e.handle(ToAgent::Open { stream: 2, op: Op::WriteFile { path: path.clone(), mode: 0o600, offset: 0, size: 10 } });
    e.handle(ToAgent::Input { stream: 2, input: Input::Data(b"abc".to_vec()) });
    e.handle(ToAgent::Input { stream: 2, input: Input::End });
    let ev = run(&mut e, 2, Duration::from_secs(5));
    assert!(matches!(&ev[..], [Event::Error(m)] if m.contains("expected 10")), "{ev:?}");
    assert!(Path::new(&format!("{path}.bm-part")).exists());
    // Cancel removes it.
    e.handle(ToAgent::Open { stream: 3, op: Op::WriteFile { path: path.clone(), mode: 0o600, offset: 3, size: 10 } });
    e.handle(ToAgent::Input { stream: 3, input: Input::Cancel });
    let ev = run(&mut e, 3, Duration::from_secs(5));
    assert_eq!(ev, vec![Event::Error("cancelled".into())]);
    assert!(!Path::new(&format!("{path}.bm-part")).exists());
    // Missing parent directory.
    let ev = write_file(&mut e, 4, &d.join("nodir/f").to_string_lossy(), b"x", 0, true);
    assert!(matches!(&ev[..], [Event::Error(m)] if m.contains("does not exist")), "{ev:?}");
    // Missing file to read.
    let ev = open(&mut e, 5, Op::ReadFile { path: d.join("nope").to_string_lossy().into_owned(), offset: 0 });
    assert!(matches!(&ev[..], [Event::Error(m)] if m.starts_with("cannot read")), "{ev:?}");
}

#[test]
fn make_dir_and_list_tree() {
    let mut e = engine();
    let d = tmpdir("tree");
    let root = d.to_string_lossy().into_owned();
    let ev = open(&mut e, 1, Op::MakeDir { path: format!("{root}/a/b"), mode: 0o750 });
    assert_eq!(ev, vec![Event::Ok]);
    std::fs::write(d.join("a/b/f.txt"), b"12345").unwrap();
    std::fs::write(d.join("z.txt"), b"").unwrap();
    std::os::unix::fs::symlink("/etc", d.join("link")).unwrap();
    let ev = open(&mut e, 2, Op::ListTree { path: root.clone() });
    let Some(Event::Tree(t)) = ev.last() else { panic!("{ev:?}") };
    let names: Vec<&str> = t.iter().map(|x| x.path.as_str()).collect();
    assert_eq!(names, vec!["a", "z.txt", "a/b", "a/b/f.txt"]);
    assert!(t[0].dir && t[2].dir && t[2].mode == 0o750);
    assert_eq!(t[3].size, 5);
    let ev = open(&mut e, 3, Op::Stat { path: format!("{root}/a") });
    assert!(matches!(&ev[..], [Event::Stat(s)] if s.exists && s.dir), "{ev:?}");
}

#[test]
fn processes_and_kill() {
    let mut e = engine();
    let ev = open(&mut e, 1, Op::Processes);
    let Some(Event::Processes(p)) = ev.last() else { panic!("{ev:?}") };
    let me = p.iter().find(|x| x.pid == std::process::id()).expect("own pid listed");
    assert!(me.rss_kib > 0 && !me.cmd.is_empty());
    let ev = open(&mut e, 2, Op::Kill { pid: 0x3fff_fff0, signal: 0 });
    assert!(matches!(&ev[..], [Event::Error(_)]), "{ev:?}");
    let ev = open(&mut e, 3, Op::Kill { pid: std::process::id(), signal: 0 });
    assert_eq!(ev, vec![Event::Ok]);
}

fn service_events(all: &[FromAgent], name: &str) -> Vec<String> {
    all.iter()
        .filter_map(|m| match m {
            FromAgent::ServiceEvent { name: n, what } if n == name => Some(what.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn service_restarts_on_failure_then_fails() {
    let dir = tmpdir("svc");
    let mut e = Engine::new(Config { state_dir: Some(dir.clone()) });
    let def = ServiceSpec {
        name: "flaky-1".into(),
        argv: vec!["sh".into(), "-c".into(), "echo starting; echo oops >&2; exit 1".into()],
        env: vec![],
        restart: RestartPolicy::OnFailure,
        backoff_ms: 20,
        max_restarts: 3,
        window_secs: 60,
    };
    let mut all = Vec::new();
    e.handle(ToAgent::Open { stream: 1, op: Op::Service(ServiceOp::Define(def.clone())) });
    // The service may exit (and be rescheduled) before the Define's answer is drained: keep those events.
    assert_eq!(run_keeping(&mut e, 1, Duration::from_secs(10), &mut all), vec![Event::Ok]);
    let start = Instant::now();
    while !service_events(&all, "flaky-1").iter().any(|w| w.starts_with("failed")) {
        assert!(start.elapsed() < Duration::from_secs(10), "{all:?}");
        e.run_once(None, Duration::from_millis(10));
        drain(&mut e, true, &mut all);
    }
    let ev = service_events(&all, "flaky-1");
    assert_eq!(ev.iter().filter(|w| w.starts_with("started pid ")).count(), 4, "{ev:?}");
    assert!(ev.contains(&"exited with status 1".to_string()));
    assert!(ev.contains(&"restarting in 20 ms (restart 1)".to_string()), "{ev:?}");
    assert!(ev.contains(&"restarting in 40 ms (restart 2)".to_string()), "{ev:?}");
    assert!(ev.contains(&"restarting in 80 ms (restart 3)".to_string()), "{ev:?}");
    assert_eq!(ev.last().unwrap(), "failed: 3 restarts in 60 s (max_restarts)");
    let st = open(&mut e, 2, Op::Service(ServiceOp::Status { name: None }));
    let Some(Event::Services(v)) = st.last() else { panic!("{st:?}") };
    assert_eq!((v[0].state.as_str(), v[0].restarts, v[0].last_exit.as_deref()), ("failed", 3, Some("exit 1")));
    let logs = open(&mut e, 3, Op::Service(ServiceOp::Logs { name: "flaky-1".into(), lines: 2 }));
    assert!(matches!(&logs[..], [Event::Logs(l)] if l.len() == 2 && l[1] == "oops"), "{logs:?}");
    // Definitions persist: a new agent reads them back (and starts them).
    let e2 = Engine::new(Config { state_dir: Some(dir.clone()) });
    drop(e2);
    assert!(dir.join("services").exists());
    // Bad names are refused.
    let bad = ServiceSpec { name: "no/slash".into(), ..def };
    let ev = open(&mut e, 4, Op::Service(ServiceOp::Define(bad)));
    assert!(matches!(&ev[..], [Event::Error(m)] if m.contains("invalid service name")), "{ev:?}");
}

#[test]
fn service_stop_start_remove() {
    let mut e = engine();
    let def = ServiceSpec {
        name: "sleeper".into(),
        argv: vec!["sleep".into(), "30".into()],
        env: vec![],
        restart: RestartPolicy::Always,
        backoff_ms: 10,
        max_restarts: 0,
        window_secs: 0,
    };
    assert_eq!(open(&mut e, 1, Op::Service(ServiceOp::Define(def))), vec![Event::Ok]);
    let mut all = Vec::new();
    e.handle(ToAgent::Open { stream: 2, op: Op::Service(ServiceOp::Stop { name: "sleeper".into() }) });
    assert_eq!(run_keeping(&mut e, 2, Duration::from_secs(10), &mut all), vec![Event::Ok]);
    let start = Instant::now();
    while !service_events(&all, "sleeper").contains(&"stopped".to_string()) {
        assert!(start.elapsed() < Duration::from_secs(5), "{all:?}");
        e.run_once(None, Duration::from_millis(10));
        drain(&mut e, true, &mut all);
    }
    assert!(service_events(&all, "sleeper").contains(&"killed by signal 15 (stop requested)".to_string()));
    let st = open(&mut e, 3, Op::Service(ServiceOp::Status { name: Some("sleeper".into()) }));
    assert!(matches!(&st[..], [Event::Services(v)] if v[0].state == "stopped" && v[0].restarts == 0), "{st:?}");
    assert_eq!(open(&mut e, 4, Op::Service(ServiceOp::Start { name: "sleeper".into() })), vec![Event::Ok]);
    let st = open(&mut e, 5, Op::Service(ServiceOp::Status { name: Some("sleeper".into()) }));
    assert!(matches!(&st[..], [Event::Services(v)] if v[0].state == "running" && v[0].pid.is_some()), "{st:?}");
    e.handle(ToAgent::Open { stream: 6, op: Op::Service(ServiceOp::Remove { name: "sleeper".into() }) });
    assert_eq!(run_keeping(&mut e, 6, Duration::from_secs(10), &mut all), vec![Event::Ok]);
    let start = Instant::now();
    while !service_events(&all, "sleeper").contains(&"removed".to_string()) {
        assert!(start.elapsed() < Duration::from_secs(5), "{all:?}");
        e.run_once(None, Duration::from_millis(10));
        drain(&mut e, true, &mut all);
    }
    let st = open(&mut e, 7, Op::Service(ServiceOp::Status { name: Some("sleeper".into()) }));
    assert!(matches!(&st[..], [Event::Error(m)] if m.contains("no service")), "{st:?}");
}

#[test]
fn inventory_and_heartbeat() {
    let mut e = engine();
    let ev = open(&mut e, 1, Op::Inventory);
    let Some(Event::Inventory(inv)) = ev.last() else { panic!("{ev:?}") };
    assert!(!inv.kernel.is_empty() && !inv.hostname.is_empty());
    assert_eq!(inv.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(inv.mem_total_kib > 0);
    assert!(["dpkg", "apk", "none"].contains(&inv.package_source.as_str()));
    e.handle(ToAgent::Configure { heartbeat_ms: 100 });
    std::thread::sleep(Duration::from_millis(120));
    assert!(e.heartbeat(Instant::now()));
    assert!(!e.heartbeat(Instant::now()));
    let Some(FromAgent::Heartbeat { seq: 1, load, .. }) = e.pop_front() else { panic!() };
    assert!(load.processes > 0 && load.mem_available_kib > 0);
    e.restart_session();
    assert!(matches!(e.pop_front(), Some(FromAgent::Hello { protocol: 1, .. })));
}

#[test]
fn parsers() {
    let dpkg = "Package: a\nStatus: install ok installed\nVersion: 1.0\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\n\nPackage: c\nVersion: 3\nStatus: install ok installed\n";
    assert_eq!(crate::inventory::dpkg_packages(dpkg), vec!["a 1.0", "c 3"]);
    assert_eq!(
        crate::inventory::apk_packages("P:musl\nV:1.2\n\nP:busybox\nV:1.36\n"),
        vec!["musl 1.2", "busybox 1.36"]
    );
    assert_eq!(
        crate::inventory::pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );
    assert!(crate::services::valid_name("a.b-c_9"));
    assert!(!crate::services::valid_name("") && !crate::services::valid_name(&"x".repeat(33)));
}

/// The whole path through the node's real relay: ring records both ways,
/// the console polling slowly, credit returned by the relay. 2 MB of output
/// arrives complete and the relay never sees a window overrun.
#[test]
fn through_the_relay() {
    let layout = Layout::new(u64::from(MIN_DATA)).unwrap();
    let mut mem = vec![0u8; layout.total() as usize];
    layout.init(&mut mem[..]).unwrap();
    let mut relay = Relay::new(RelayLimits::default());
    relay.attach(layout, 0);
    let mut e = engine();
    e.restart_session();
    let (mut g2h_head, mut h2g_tail) = (0u32, 0u32);
    let total = 2_000_000usize;
    let s = relay.open(Op::Exec(spec(&["head", "-c", &total.to_string(), "/dev/urandom"])), 0).unwrap();
    let mut got = 0usize;
    let mut end = None;
    let mut rec = Vec::new();
    let start = Instant::now();
    while end.is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "got {got}");
        e.run_once(None, Duration::from_millis(5));
        while let Some(m) = e.front() {
            let b = encode(m, MAX_RECORD).unwrap();
            if !layout.guest_to_host().produce(&mut mem[..], &mut g2h_head, &b).unwrap() {
                break;
            }
            e.pop_front();
        }
        relay.kick(&mut mem[..], 0).unwrap();
        while layout.host_to_guest().consume(&mut mem[..], &mut h2g_tail, &mut rec).unwrap() {
            e.handle(decode::<ToAgent>(&rec, MAX_RECORD).unwrap());
        }
        // A slow console: at most 100 KB per turn.
        let (ev, _) = relay.poll(s, 100_000, 0).unwrap();
        for x in ev {
            match x {
                Event::Stdout(d) => got += d.len(),
                Event::Error(m) => panic!("relay error: {m}"),
                other => end = Some(other),
            }
        }
    }
    assert_eq!(got, total);
    assert!(matches!(end, Some(Event::Exited { code: Some(0), .. })));
    assert!(relay.status(0).load.is_none() && relay.status(0).hostname.is_some());
}

/// The node's relay over a ring in plain memory, as a [`Link`].
struct RelayLink {
    layout: Layout,
    mem: Vec<u8>,
    relay: Relay,
    g2h_head: u32,
    h2g_tail: u32,
    kicks: usize,
}

impl RelayLink {
    fn new() -> RelayLink {
        let layout = Layout::new(u64::from(MIN_DATA)).unwrap();
        let mut mem = vec![0u8; layout.total() as usize];
        layout.init(&mut mem[..]).unwrap();
        let mut relay = Relay::new(RelayLimits::default());
        relay.attach(layout, 0);
        RelayLink { layout, mem, relay, g2h_head: 0, h2g_tail: 0, kicks: 0 }
    }
}

impl Link for RelayLink {
    fn push(&mut self, msg: &FromAgent) -> Result<bool, agent_proto::RingFault> {
        let b = encode(msg, MAX_RECORD).unwrap();
        self.layout.guest_to_host().produce(&mut self.mem[..], &mut self.g2h_head, &b)
    }
    fn kick(&mut self) -> Result<bool, KickError> {
        self.kicks += 1;
        if !self.relay.attached() {
            return Err(KickError::Detached(vmm_config::hypercall::status::NOT_ATTACHED));
        }
        self.relay.kick(&mut self.mem[..], 0).map(|o| o.more).map_err(KickError::Ring)
    }
    fn pop(&mut self) -> Result<Option<ToAgent>, agent_proto::RingFault> {
        let mut rec = Vec::new();
        if !self.layout.host_to_guest().consume(&mut self.mem[..], &mut self.h2g_tail, &mut rec)? {
            return Ok(None);
        }
        Ok(Some(decode(&rec, MAX_RECORD).unwrap()))
    }
    fn reattach(&mut self) -> Result<(), String> {
        self.layout.init(&mut self.mem[..]).unwrap();
        self.g2h_head = 0;
        self.h2g_tail = 0;
        self.relay.attach(self.layout, 0);
        Ok(())
    }
}

/// `exchange` (the main loop's kick cycle) against the relay: hello,
/// operations, and a re-attach with a fresh hello after the node drops us.
#[test]
fn exchange_hello_ops_and_reattach() {
    let mut link = RelayLink::new();
    let mut e = engine();
    e.restart_session();
    exchange(&mut link, &mut e);
    assert!(link.relay.status(0).hostname.is_some(), "hello delivered");
    let s = link.relay.open(Op::Stat { path: "/".into() }, 0).unwrap();
    // One exchange takes the request and, in the same turn, delivers the answer.
    exchange(&mut link, &mut e);
    assert!(e.front().is_none());
    let (ev, done) = link.relay.poll(s, 10_000, 0).unwrap();
    assert!(done && matches!(&ev[..], [Event::Stat(st)] if st.exists && st.dir), "{ev:?}");

    // The node detaches us: the next exchange re-attaches and says hello again.
    link.relay.detach("test detach", 0);
    let before = link.relay.status(0).kicks;
    e.handle(ToAgent::Open { stream: 77, op: Op::Exec(spec(&["sleep", "30"])) });
    exchange(&mut link, &mut e);
    assert!(link.relay.attached());
    assert_eq!(e.active(), 0, "operations of the old session ended");
    assert!(link.relay.status(0).hostname.is_some());
    assert!(link.relay.status(0).kicks > before);
    let (log, _) = link.relay.log_since(0, 100);
    assert!(log.iter().any(|l| l.text.contains("agent hello")), "{log:?}");
}
