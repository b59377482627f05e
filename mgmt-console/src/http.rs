//! The small HTTP server of `bmctl watch --listen`: `/metrics` for
//! Prometheus, `/api/state` as JSON, `/` a self-contained dashboard. The
//! same bounded server serves any other set of [`Pages`] (the facility
//! dashboard of `bmctl facility serve --listen`).
//!
//! Written on std rather than an HTTP crate so every bound is ours: a fixed
//! pool of [`WORKERS`] threads, a [`QUEUE`] of accepted connections
//! (beyond it a connection is closed at once), request heads of at most
//! [`MAX_HEAD`] bytes read within [`IO_TIMEOUT`], no request bodies. The
//! pages are asked for a body only once a whole request head was read (the
//! view is locked only to render it), so a slow client cannot hold up the
//! threads that update what the pages show.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::view::View;

/// Request-handling threads.
pub const WORKERS: usize = 4;
/// Accepted connections waiting for a worker.
pub const QUEUE: usize = 16;
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8192;
/// Bound on reading a request and on writing its answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a server answers `GET` and `HEAD` with, so one bounded server
/// (pool, queue, limits) serves both the watch and the facility dashboard.
pub trait Pages: Send + Sync {
    /// The content type and body for `path` (query removed), or `None` for
    /// a 404. Called from a worker thread once per request, so it should
    /// only take short locks.
    fn get(&self, path: &str) -> Option<(&'static str, Vec<u8>)>;
}

/// The watch's pages, rendered from its view under a short lock.
impl Pages for Mutex<View> {
    fn get(&self, path: &str) -> Option<(&'static str, Vec<u8>)> {
        let render = |f: &dyn Fn(&View) -> String| match self.lock() {
            Ok(v) => f(&v),
            Err(p) => f(&p.into_inner()),
        };
        match path {
            "/metrics" => Some(("text/plain; version=0.0.4; charset=utf-8", render(&|v| v.metrics()).into_bytes())),
            "/api/state" => Some(("application/json", render(&|v| v.state_json(now_ms()).to_string()).into_bytes())),
            "/" | "/index.html" => Some(("text/html; charset=utf-8", DASHBOARD.as_bytes().to_vec())),
            _ => None,
        }
    }
}

/// A running server: its address and threads.
pub struct HttpServer {
    /// The address it listens on (with the port chosen when 0 was asked).
    pub addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` and serves `view` until `stop` is set.
    pub fn start(addr: &str, view: Arc<Mutex<View>>, stop: Arc<AtomicBool>) -> std::io::Result<HttpServer> {
        Self::start_pages(addr, view, stop)
    }

    /// Binds `addr` and serves `pages` until `stop` is set, with the same
    /// bounds as the watch (so another page set needs no server of its own).
    pub fn start_pages(addr: &str, pages: Arc<dyn Pages>, stop: Arc<AtomicBool>) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        // Non-blocking accept, so the acceptor sees `stop` within 50 ms.
        listener.set_nonblocking(true)?;
        let (tx, rx) = sync_channel::<TcpStream>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for _ in 0..WORKERS {
            let (rx, pages) = (rx.clone(), pages.clone());
            threads.push(std::thread::spawn(move || worker(&rx, &*pages)));
        }
        let st = stop;
        threads.push(std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if s.set_nonblocking(false).is_err() {
                            continue;
                        }
                        match tx.try_send(s) {
                            Ok(()) => {}
                            // All workers busy and the queue full: close it.
                            Err(TrySendError::Full(_)) => {}
                            Err(TrySendError::Disconnected(_)) => return,
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            // Dropping `tx` ends the workers.
        }));
        Ok(HttpServer { addr: local, threads })
    }

    /// Waits for the threads (after `stop` was set).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn worker(rx: &Mutex<Receiver<TcpStream>>, pages: &dyn Pages) {
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(s) = next else { return };
        let _ = serve(s, pages);
    }
}

/// A parsed request: method and path (query removed).
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The request announces a body (refused).
    pub has_body: bool,
}

/// Parses a request head (everything before the blank line).
pub fn parse_head(head: &str) -> Option<RequestHead> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut has_body = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if (k == "content-length" && v != "0") || k == "transfer-encoding" {
            has_body = true;
        }
    }
    Some(RequestHead { method, path, has_body })
}

/// Status, content type and body for a request.
pub fn route(head: &RequestHead, pages: &dyn Pages) -> (u16, &'static str, Vec<u8>) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if head.has_body {
        return (413, TEXT, b"request bodies are not accepted\n".to_vec());
    }
    if head.method != "GET" && head.method != "HEAD" {
        return (405, TEXT, b"only GET and HEAD\n".to_vec());
    }
    match pages.get(&head.path) {
        Some((ctype, body)) => (200, ctype, body),
        None => (404, TEXT, b"not found\n".to_vec()),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

fn serve(mut s: TcpStream, pages: &dyn Pages) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let end = loop {
        let Some(room) = buf.get_mut(len..) else { break None };
        if room.is_empty() {
            break None;
        }
        let n = s.read(room)?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let got = buf.get(..len).unwrap_or(&[]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i);
        }
    };
    let (code, ctype, body, head_only) = match end {
        None => (431, "text/plain", b"request head too large\n".to_vec(), false),
        Some(i) => match parse_head(&String::from_utf8_lossy(buf.get(..i).unwrap_or(&[]))) {
            None => (400, "text/plain", b"bad request\n".to_vec(), false),
            Some(h) => {
                let (c, t, b) = route(&h, pages);
                (c, t, b, h.method == "HEAD")
            }
        },
    };
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    if !head_only {
        s.write_all(&body)?;
    }
    s.flush()
}

/// The dashboard: one page, no external resources; it polls `/api/state`
/// every second and updates its tables in place (text only through
/// `textContent`, so nothing a node sends can become markup).
pub const DASHBOARD: &str = r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>BMonitor watch</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;margin:.3em 0;min-width:40em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eee} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17692b;font-weight:600} .bad{color:#b00020;font-weight:600} .warn{color:#a35c00;font-weight:600}
#status{color:#666} .mono{font-family:ui-monospace,monospace;font-size:12px}
</style></head><body>
<h1>BMonitor watch</h1>
<div id="status">loading…</div>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>node</th><th>address</th><th>role</th><th>connection</th><th>uptime</th><th>free MiB</th><th>exits/s</th><th>lost</th><th>reconnects</th></tr></thead><tbody></tbody></table>
<h2>VMs</h2>
<table id="vms"><thead><tr><th>node</th><th>id</th><th>name</th><th>state</th><th>health</th><th>CPU s</th><th>exits/s</th><th>starts</th><th>agent / heartbeat</th><th>load</th><th>services</th></tr></thead><tbody></tbody></table>
<h2>Probes</h2>
<table id="probes"><thead><tr><th>node</th><th>probe</th><th>result</th><th>failures</th><th>detail</th></tr></thead><tbody></tbody></table>
<h2>Recent events</h2>
<table id="events"><thead><tr><th>time</th><th>node</th><th>scope</th><th>kind</th><th>text</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
function row(tbody, key, id, n) {
  var r = null;
  for (var i = 0; i < tbody.rows.length; i++) { if (tbody.rows[i].dataset.key === key) { r = tbody.rows[i]; break; } }
  if (!r) { r = tbody.insertRow(-1); r.dataset.key = key; if (id) r.id = id; }
  while (r.cells.length < n) r.insertCell(-1);
  r.dataset.seen = "1";
  return r;
}
function cell(r, i, text, cls) {
  var c = r.cells[i], t = (text === null || text === undefined) ? "" : String(text);
  if (c.textContent !== t) c.textContent = t;
  var k = cls || "";
  if (c.className !== k) c.className = k;
}
function sweep(tbody) {
  for (var i = tbody.rows.length - 1; i >= 0; i--) {
    var r = tbody.rows[i];
    if (r.dataset.seen !== "1") tbody.deleteRow(i); else r.dataset.seen = "";
  }
}
function dur(ms) { var s = Math.floor(ms / 1000); var d = Math.floor(s / 86400); s -= d * 86400;
  var h = Math.floor(s / 3600); s -= h * 3600; var m = Math.floor(s / 60); s -= m * 60;
  return (d ? d + "d " : "") + h + "h " + m + "m " + s + "s"; }
function vmHealth(v) {
  if (v.state === "faulted") return ["faulted", "bad"];
  if (v.agent && v.agent.hung) return ["agent hung", "bad"];
  if (v.agent && v.agent.services.some(function (s) { return s.state === "failed"; })) return ["service failed", "warn"];
  if (v.state === "running") return ["ok", "ok"];
  return [v.state, ""];
}
function render(st) {
  var nodes = document.querySelector("#nodes tbody"), vms = document.querySelector("#vms tbody"),
      probes = document.querySelector("#probes tbody"), events = document.querySelector("#events tbody");
  st.nodes.forEach(function (n) {
    var h = n.health, land = n.role === "landlord";
    var r = row(nodes, n.name, "node-" + n.name, 9);
    cell(r, 0, n.name); cell(r, 1, n.addr); cell(r, 2, n.role);
    cell(r, 3, n.connected ? "connected" : ("down" + (n.last_error ? ": " + n.last_error : "")), n.connected ? "ok" : "bad");
    cell(r, 4, h ? dur(h.uptime_ms) : "", "num"); cell(r, 5, h && land ? h.memory_free_mib : "", "num");
    cell(r, 6, h && land ? h.exits_per_sec : "", "num"); cell(r, 7, n.lost_total, "num"); cell(r, 8, n.reconnects_total, "num");
    if (!h) return;
    h.vms.forEach(function (v) {
      var r = row(vms, n.name + "/" + v.vm, "vm-" + v.name, 11), hl = vmHealth(v), a = v.agent;
      r.dataset.node = n.name;
      cell(r, 0, n.name); cell(r, 1, v.vm, "num"); cell(r, 2, v.name); cell(r, 3, v.state);
      cell(r, 4, n.connected ? hl[0] : "unknown (node down)", n.connected ? "health " + hl[1] : "health warn");
      cell(r, 5, (v.cpu_ms / 1000).toFixed(1), "num"); cell(r, 6, v.exits_per_sec, "num"); cell(r, 7, v.starts, "num");
      cell(r, 8, !a ? "" : !a.attached ? "not attached" : a.hung ? "HUNG" : (a.since_heartbeat_ms === null ? "attached" : a.since_heartbeat_ms + " ms ago"),
           a && a.hung ? "bad" : "");
      cell(r, 9, a && a.load1 !== null ? a.load1.toFixed(2) : "", "num");
      cell(r, 10, a ? a.services.map(function (s) { return s.name + ":" + s.state + (s.failures ? " (" + s.failures + " failures)" : ""); }).join(", ") : "");
    });
    h.probes.forEach(function (p) {
      var r = row(probes, n.name + "/" + p.probe, "probe-" + n.name + "-" + p.probe, 5);
      cell(r, 0, n.name); cell(r, 1, p.probe);
      cell(r, 2, p.ok === null ? "n/a" : p.ok ? "ok" : "FAILING", p.ok === null ? "" : p.ok ? "ok" : "bad");
      cell(r, 3, p.failures, "num"); cell(r, 4, p.detail);
    });
  });
  sweep(nodes); sweep(vms); sweep(probes);
  var evs = st.events.slice(-50).reverse();
  while (events.rows.length > evs.length) events.deleteRow(-1);
  evs.forEach(function (e, i) {
    var r = events.rows[i] || events.insertRow(-1);
    while (r.cells.length < 5) r.insertCell(-1);
    cell(r, 0, e.time, "mono"); cell(r, 1, e.node); cell(r, 2, e.scope); cell(r, 3, e.detail, "mono"); cell(r, 4, e.text);
  });
  var up = st.nodes.filter(function (n) { return n.connected; }).length;
  document.getElementById("status").textContent = st.time + " — " + up + " of " + st.nodes.length + " node(s) connected";
}
function tick() {
  fetch("/api/state", {cache: "no-store"}).then(function (r) {
    if (!r.ok) throw new Error("HTTP " + r.status); return r.json();
  }).then(render).catch(function (e) {
    document.getElementById("status").textContent = "cannot reach the watch: " + e.message;
  }).finally(function () { setTimeout(tick, 1000); });
}
tick();
</script></body></html>
"##;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub(crate) mod tests {
    use super::*;

    /// Sends one raw request, returns the whole answer (the dashboard's tests use it too).
    pub(crate) fn get(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn heads_parse_and_bodies_are_refused() {
        let h = parse_head("GET /metrics?x=1 HTTP/1.1\r\nHost: a").unwrap();
        assert_eq!(h, RequestHead { method: "GET".into(), path: "/metrics".into(), has_body: false });
        assert!(parse_head("POST / HTTP/1.1\r\nContent-Length: 5").unwrap().has_body);
        assert!(parse_head("GET / HTTP/1.1\r\ntransfer-encoding: chunked").unwrap().has_body);
        assert!(parse_head("GET /").is_none());
        assert!(parse_head("GET / SPDY").is_none());
    }

    #[test]
    fn serves_routes_and_refuses_the_rest() {
        let view = Arc::new(Mutex::new(View::default()));
        view.lock().unwrap().add_node("n1", "h:1", "landlord");
        let stop = Arc::new(AtomicBool::new(false));
        let srv = HttpServer::start("127.0.0.1:0", view, stop.clone()).unwrap();
        let m = get(srv.addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("Content-Type: text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("bmonitor_up{node=\"n1\"} 0"), "{m}");
        let j = get(srv.addr, "GET /api/state HTTP/1.0\r\n\r\n");
        let body = j.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["nodes"][0]["name"], "n1");
        let d = get(srv.addr, "GET / HTTP/1.1\r\n\r\n");
        assert!(d.contains("<title>BMonitor watch</title>") && !d.contains("innerHTML"), "{d}");
        assert!(get(srv.addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(srv.addr, "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").starts_with("HTTP/1.1 413"));
        assert!(get(srv.addr, "DELETE / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let head = get(srv.addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        // Exactly MAX_HEAD bytes without the blank line (all read: a clean close).
        let start = "GET / HTTP/1.1\r\nX: ";
        let big = format!("{start}{}", "a".repeat(MAX_HEAD - start.len()));
        assert!(get(srv.addr, &big).starts_with("HTTP/1.1 431"));
        // A silent client holds one worker; the others still answer.
        let _silent: Vec<TcpStream> = (0..WORKERS - 1).map(|_| TcpStream::connect(srv.addr).unwrap()).collect();
        assert!(get(srv.addr, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        stop.store(true, Ordering::SeqCst);
        drop(_silent);
        srv.join();
    }
}
