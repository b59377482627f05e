//! The live dashboard of `bmctl facility serve --listen ADDR`: `/` is one
//! self-contained page, `/api/facility` the facility's state JSON (the same
//! document as `bmctl facility status --json`).
//!
//! It runs on the watch's bounded server ([`crate::http`]): fixed workers,
//! queue limit, head size limit, IO timeouts, no request bodies. The serve
//! loop publishes the state after each round; it is serialized once then
//! (not per request), cut to [`MAX_STATE_BYTES`] by leaving out the oldest
//! runs and audit entries, and handed to requests under a lock held only to
//! clone a pointer, so neither many clients nor a slow one hold up the
//! controller.
//!
//! The page treats the JSON generically: the state types keep growing, and
//! older stores have no `runs`, `services` or `audit`, so every field may be
//! missing and enums may be strings or one-key objects. Every string from the
//! state goes into the page through `textContent` only: names come from
//! operators and tenants and must never become markup.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::http::{HttpServer, Pages};

/// Largest `/api/facility` body: a facility's history (runs, audit) grows
/// without bound in the store, a browser polling every second must not.
pub const MAX_STATE_BYTES: usize = 4 << 20;

/// The pages of the facility dashboard and the last published state.
pub struct FacilityPages {
    /// The serialized state, replaced whole by [`FacilityPages::publish`].
    state: Mutex<Arc<Vec<u8>>>,
}

impl Default for FacilityPages {
    fn default() -> Self {
        Self::new()
    }
}

impl FacilityPages {
    /// Pages with an empty state (`{}`) until the first round publishes one,
    /// so the server can listen before the controller has loaded the store.
    pub fn new() -> Self {
        FacilityPages { state: Mutex::new(Arc::new(b"{}".to_vec())) }
    }

    /// Replaces the state the pages show (call after each controller round).
    /// Serializing here, once, keeps requests cheap; a state over
    /// [`MAX_STATE_BYTES`] loses its oldest runs and audit entries (counted
    /// in a top-level `truncated` object) rather than growing the answer.
    pub fn publish(&self, state: Value) {
        let bytes = Arc::new(snapshot(state, MAX_STATE_BYTES));
        match self.state.lock() {
            Ok(mut s) => *s = bytes,
            Err(p) => *p.into_inner() = bytes,
        }
    }

    /// The body `/api/facility` answers with now.
    fn current(&self) -> Arc<Vec<u8>> {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl Pages for FacilityPages {
    fn get(&self, path: &str) -> Option<(&'static str, Vec<u8>)> {
        match path {
            "/api/facility" => Some(("application/json", self.current().as_ref().clone())),
            "/" | "/index.html" => Some(("text/html; charset=utf-8", FACILITY_DASHBOARD.as_bytes().to_vec())),
            _ => None,
        }
    }
}

/// Starts the dashboard on `addr` (port 0 picks one: see
/// [`HttpServer::addr`]) until `stop` is set; the caller keeps `pages` to
/// publish each round's state.
pub fn start(addr: &str, pages: Arc<FacilityPages>, stop: Arc<AtomicBool>) -> std::io::Result<HttpServer> {
    HttpServer::start_pages(addr, pages, stop)
}

/// Serializes `state`, leaving out the oldest halves of `runs` and `audit`
/// until it fits in `limit` bytes; a state too large even without them is
/// answered with an error object the page shows.
fn snapshot(mut state: Value, limit: usize) -> Vec<u8> {
    let (mut runs, mut audit) = (0usize, 0usize);
    loop {
        let bytes = serde_json::to_vec(&state).unwrap_or_else(|_| b"{}".to_vec());
        if bytes.len() <= limit {
            return bytes;
        }
        let (r, a) = (drop_oldest_half(&mut state, "runs"), drop_oldest_half(&mut state, "audit"));
        if r == 0 && a == 0 {
            let msg = format!("facility state of {} bytes is over the dashboard's {limit}-byte limit", bytes.len());
            return serde_json::json!({ "error": msg }).to_string().into_bytes();
        }
        runs += r;
        audit += a;
        if let Some(o) = state.as_object_mut() {
            o.insert("truncated".into(), serde_json::json!({ "runs": runs, "audit": audit }));
        }
    }
}

/// Removes the first (oldest: both lists are appended to) half of the list
/// `key`, rounded up; how many went.
fn drop_oldest_half(state: &mut Value, key: &str) -> usize {
    let Some(Value::Array(list)) = state.get_mut(key) else { return 0 };
    let n = list.len().div_ceil(2);
    list.drain(..n);
    n
}

/// The dashboard page: no external resources; it polls `/api/facility`
/// every second and rebuilds its sections with `createElement` and
/// `textContent` only. Each section renders on its own, so a field of an
/// unexpected shape spoils one section, not the page.
pub const FACILITY_DASHBOARD: &str = r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>BMonitor facility</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;margin:.3em 0;min-width:40em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eee} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17692b;font-weight:600} .bad{color:#b00020;font-weight:600} .warn{color:#a35c00;font-weight:600}
.muted{color:#888} .mono{font-family:ui-monospace,monospace;font-size:12px}
.run{margin:.5em 0;padding:.3em .7em;border:1px solid #ddd;background:#fff}
.run summary{cursor:pointer;padding:.2em 0}
.run.live{border-color:#e0a800}
tr.running td{background:#fff5c2}
tr.running td:first-child{box-shadow:inset 4px 0 #e0a800}
.log{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;margin:.2em 0 .2em 1em;color:#444}
#status{color:#666} #status.bad{color:#b00020}
</style></head><body>
<h1>BMonitor facility</h1>
<div id="status">loading…</div>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>node</th><th>address</th><th>state</th><th>deaths</th></tr></thead><tbody></tbody></table>
<h2>VMs</h2>
<table id="vms"><thead><tr><th>VM</th><th>node</th><th>partner</th><th>epoch</th><th>state</th><th>version</th><th>service</th><th>domain</th></tr></thead><tbody></tbody></table>
<h2>Runs (newest first)</h2>
<div id="runs"></div>
<h2>Services and rollouts</h2>
<table id="services"><thead><tr><th>service</th><th>version</th><th>versions</th><th>checks</th><th>rollout</th><th>domain</th><th>rollout state</th></tr></thead><tbody></tbody></table>
<h2>Audit (last 50, newest first)</h2>
<table id="audit"><thead><tr><th>time (UTC)</th><th>who</th><th>what</th><th>outcome</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
var MAX_RUNS = 50, MAX_AUDIT = 50, MAX_LOG = 50;
var openRuns = {}; // run id -> open or closed, as the operator last chose
function el(tag, text, cls) {
  var e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
// Plain text for any JSON value, enums ("Running", {"Failed": {...}}) included.
function txt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "object") return String(v);
  if (Array.isArray(v)) return v.map(txt).join(", ");
  var ks = Object.keys(v);
  if (ks.length === 1) { var inner = txt(v[ks[0]]); return inner === "" ? ks[0] : ks[0] + ": " + inner; }
  return ks.map(function (k) { return k + "=" + txt(v[k]); }).join(", ");
}
// An enum's variant name.
function tag(v) {
  if (v && typeof v === "object" && !Array.isArray(v)) { var ks = Object.keys(v); return ks.length ? ks[0] : ""; }
  return v === null || v === undefined ? "" : String(v);
}
function cls(v) {
  switch (tag(v)) {
    case "Active": case "Running": case "Succeeded": case "Done": case "Healthy": case "Ok": case "Allowed": return "ok";
    case "Failed": case "Refused": case "Dead": case "Faulted": case "Denied": return "bad";
    case "Warned": case "Waiting": case "Draining": case "Requested": case "Moving": case "Paused": return "warn";
    case "Pending": case "Skipped": case "Removed": return "muted";
    default: return "";
  }
}
function live(v) { var t = tag(v); return t === "Running" || t === "Requested"; }
// [key, value] pairs of a map (object) or a list (keyed by .name, else index).
function entries(m) {
  if (Array.isArray(m)) return m.map(function (v, i) { return [v && v.name !== undefined ? v.name : String(i), v]; });
  if (m && typeof m === "object") return Object.keys(m).map(function (k) { return [k, m[k]]; });
  return [];
}
function obj(v) { return v && typeof v === "object" ? v : {}; }
function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
function when(ms) { return num(ms) === null ? "" : new Date(ms).toISOString().replace("T", " ").slice(0, 23); }
function clock(ms) { return num(ms) === null ? "" : new Date(ms).toISOString().slice(11, 23); }
function secs(ms) {
  if (num(ms) === null) return "";
  var s = Math.max(ms, 0) / 1000;
  if (s < 60) return s.toFixed(1) + "s";
  var m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? h + "h " + (m % 60) + "m" : m + "m " + Math.floor(s % 60) + "s";
}
// A row: each cell a value (shown as text), [value, class], or a DOM node.
function tr(cells, rowCls) {
  var r = el("tr", null, rowCls);
  cells.forEach(function (c) {
    var td = el("td");
    if (c instanceof Node) td.appendChild(c);
    else if (Array.isArray(c)) { td.textContent = txt(c[0]); if (c[1]) td.className = c[1]; }
    else td.textContent = txt(c);
    r.appendChild(td);
  });
  return r;
}
function fill(parent, children, none) {
  while (parent.firstChild) parent.removeChild(parent.firstChild);
  if (!children.length && none) {
    var cols = parent.parentNode ? parent.parentNode.querySelectorAll("th").length : 1;
    var td = el("td", none, "muted"); td.colSpan = Math.max(cols, 1);
    var r = el("tr"); r.appendChild(td); children = [r];
  }
  children.forEach(function (c) { parent.appendChild(c); });
}
function renderNodes(st) {
  fill(document.querySelector("#nodes tbody"), entries(st.nodes).map(function (e) {
    var n = obj(e[1]), a = n.addr, addr = a && typeof a === "object" ? a.addr : a;
    return tr([e[0], [addr, "mono"], [n.state, cls(n.state)], [n.deaths, "num"]]);
  }), "no nodes");
}
function renderVms(st) {
  fill(document.querySelector("#vms tbody"), entries(st.vms).map(function (e) {
    var v = obj(e[1]);
    return tr([e[0], v.node, v.partner, [v.epoch, "num"], [v.state, cls(v.state)], v.version, v.service, [v.domain, "num"]]);
  }), "no VMs");
}
function runDuration(r) {
  var start = num(r.requested_ms), end = num(r.finished_ms);
  if (start === null) return "";
  if (end !== null) return "took " + secs(end - start);
  return live(r.state) ? secs(Date.now() - start) + " so far" : "";
}
function renderRun(r, i) {
  r = obj(r);
  var id = txt(r.id), isLive = live(r.state);
  var d = el("details", null, isLive ? "run live" : "run");
  d.id = "run-" + id;
  d.open = Object.prototype.hasOwnProperty.call(openRuns, id) ? openRuns[id] : (isLive || i < 3);
  var s = el("summary");
  s.addEventListener("click", function () { openRuns[id] = !d.open; });
  s.appendChild(el("b", "run " + id));
  s.appendChild(el("span", " " + [r.action, r.service].map(txt).join(" ") + " by " + txt(r.operator) + " "));
  s.appendChild(el("span", txt(r.state), cls(r.state)));
  var extra = [], w = Array.isArray(r.warnings) ? r.warnings.length : num(r.warnings);
  var dd = runDuration(r); if (dd) extra.push(dd);
  if (w) extra.push(w + " warning(s)");
  if (num(r.requested_ms) !== null) extra.push("requested " + when(r.requested_ms) + " UTC");
  var p = entries(r.params).map(function (e) { return e[0] + "=" + txt(e[1]); }).join(" ");
  if (p) extra.push(p);
  if (extra.length) s.appendChild(el("span", " — " + extra.join(" — "), "muted"));
  d.appendChild(s);
  var t = el("table"), h = el("thead"), hr = el("tr"), tb = el("tbody");
  ["#", "step", "on failure", "status", "attempts", "started", "ended", "took", "detail"].forEach(function (x) { hr.appendChild(el("th", x)); });
  h.appendChild(hr); t.appendChild(h); t.appendChild(tb);
  fill(tb, (Array.isArray(r.steps) ? r.steps : []).map(function (st, j) {
    st = obj(st);
    var running = tag(st.status) === "Running", from = num(st.started_ms), to = num(st.ended_ms);
    var took = from === null ? "" : to !== null ? secs(to - from) : running ? secs(Date.now() - from) + "…" : "";
    return tr([[j + 1, "num"], st.step, st.on_failure, [st.status, cls(st.status)], [st.attempts, "num"],
               [clock(from), "mono"], [clock(to), "mono"], [took, "num"], st.detail], running ? "running" : "");
  }), "no steps");
  d.appendChild(t);
  return d;
}
function renderRuns(st) {
  var runs = Array.isArray(st.runs) ? st.runs.slice() : [];
  runs.sort(function (a, b) { return (num(obj(b).id) || 0) - (num(obj(a).id) || 0); });
  var box = document.getElementById("runs");
  fill(box, runs.slice(0, MAX_RUNS).map(renderRun));
  if (!runs.length) box.appendChild(el("div", "no runs", "muted"));
}
function position(ro) {
  var p = num(ro.position), ds = ro.domains;
  if (Array.isArray(ds) && p !== null) {
    if (p >= ds.length) return "all " + ds.length + " domain(s) done";
    return "domain " + txt(ds[p]) + " (" + (p + 1) + " of " + ds.length + ")";
  }
  if (num(ds) !== null && p !== null) return p >= ds ? "all " + ds + " domain(s) done" : (p + 1) + " of " + ds;
  return txt(ro.position);
}
function logLine(l) {
  if (l && typeof l === "object" && !Array.isArray(l) && l.text !== undefined) {
    var at = l.at_ms !== undefined ? l.at_ms : l.at;
    return (num(at) !== null ? clock(at) + " " : "") + txt(l.text);
  }
  return txt(l);
}
function renderServices(st) {
  var rows = [];
  entries(st.services).forEach(function (e) {
    var s = obj(e[1]), ro = s.rollout && typeof s.rollout === "object" ? s.rollout : null;
    var vs = s.versions, names = Array.isArray(vs)
      ? vs.map(function (v) { return v && typeof v === "object" ? (v.name !== undefined ? v.name : v.version) : v; })
      : vs && typeof vs === "object" ? Object.keys(vs) : [];
    rows.push(tr([e[0], s.version, names.map(txt).join(", "), txt(s.checks),
                  ro ? txt(ro.from) + " → " + txt(ro.to) : "none", ro ? position(ro) : "",
                  ro ? [ro.state, cls(ro.state)] : ""], ro && live(ro.state) ? "running" : ""));
    var log = ro && Array.isArray(ro.log) ? ro.log.slice(-MAX_LOG) : [];
    if (log.length) {
      var td = el("td"), box = el("div", null, "log"), r = el("tr");
      td.colSpan = 7;
      log.forEach(function (l) { box.appendChild(el("div", logLine(l))); });
      td.appendChild(box); r.appendChild(td); rows.push(r);
    }
  });
  fill(document.querySelector("#services tbody"), rows, "no services");
}
function renderAudit(st) {
  var a = Array.isArray(st.audit) ? st.audit.slice(-MAX_AUDIT).reverse() : [];
  fill(document.querySelector("#audit tbody"), a.map(function (x) {
    x = obj(x);
    return tr([[when(x.at_ms), "mono"], x.who, x.what, [x.outcome, cls(x.outcome)]]);
  }), "no audit entries");
}
function render(st) {
  st = obj(st);
  var errors = [];
  [renderNodes, renderVms, renderRuns, renderServices, renderAudit].forEach(function (f) {
    try { f(st); } catch (e) { errors.push(f.name + ": " + e.message); }
  });
  var runs = Array.isArray(st.runs) ? st.runs : [];
  var running = runs.filter(function (r) { return live(obj(r).state); }).length;
  var t = "updated " + clock(Date.now()) + " UTC — " + entries(st.nodes).length + " node(s), " +
          entries(st.vms).length + " VM(s), " + runs.length + " run(s)" + (running ? ", " + running + " in progress" : "");
  if (st.truncated) t += " — oldest left out: " + txt(st.truncated);
  if (st.error) errors.unshift(txt(st.error));
  if (errors.length) t += " — " + errors.join("; ");
  var s = document.getElementById("status");
  s.textContent = t; s.className = errors.length ? "bad" : "";
}
function tick() {
  fetch("/api/facility", {cache: "no-store"}).then(function (r) {
    if (!r.ok) throw new Error("HTTP " + r.status); return r.json();
  }).then(render).catch(function (e) {
    var s = document.getElementById("status");
    s.textContent = "cannot reach the controller: " + e.message + " (showing the last state)"; s.className = "bad";
  }).finally(function () { setTimeout(tick, 1000); });
}
tick();
</script></body></html>
"##;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::http::tests::get;
    use std::sync::atomic::Ordering;

    fn body(resp: &str) -> &str {
        resp.split_once("\r\n\r\n").unwrap().1
    }

    /// A state as `bmctl facility status --json` prints it, with one
    /// finished and one running run, a rollout and a tenant-chosen name that
    /// looks like markup.
    fn sample() -> Value {
        serde_json::json!({
            "nodes": {
                "n1": {"addr": {"name": "n1", "addr": "10.0.0.1:7000", "node_key": "ab"}, "capacity": {"vcpus": 4, "memory_mib": 4096, "disk_mib": 10000}, "state": "Active", "dead_since_ms": null, "deaths": 0},
                "n2": {"addr": {"name": "n2", "addr": "10.0.0.2:7000", "node_key": "cd"}, "capacity": {"vcpus": 4, "memory_mib": 4096, "disk_mib": 10000}, "state": "Dead", "dead_since_ms": 1700000000000u64, "deaths": 1}
            },
            "vms": {
                "db-0": {"spec": {"name": "db-0"}, "node": "n1", "partner": "n2", "instance": 1, "epoch": 3, "state": "Running", "version": "v1", "service": "db", "domain": 0},
                "<img src=x onerror=alert(1)>": {"spec": {}, "node": "n1", "partner": null, "instance": 2, "epoch": 1, "state": {"Waiting": "n2 is dead; awaiting takeover"}}
            },
            "locks": {}, "intents": [], "next_instance": 3, "next_intent": 1,
            "runs": [
                {"id": 6, "service": "db", "action": "migrate", "operator": "alice", "params": {"to": "n2"},
                 "state": {"Refused": {"gate": 1, "why": "operator mallory is not on db's allow-list"}},
                 "steps": [], "requested_ms": 1700000000000u64, "finished_ms": 1700000000001u64, "warnings": 0},
                {"id": 7, "service": "db", "action": "migrate", "operator": "alice", "params": {"to": "n1"}, "state": "Running",
                 "steps": [
                    {"step": "replicate", "on_failure": "retry 2 then die", "status": "Done", "attempts": 1, "started_ms": 1700000001000u64, "ended_ms": 1700000001400u64, "detail": "in sync"},
                    {"step": "switch_lock", "on_failure": "die", "status": "Running", "attempts": 1, "started_ms": 1700000001400u64, "ended_ms": null, "detail": null},
                    {"step": "notify", "on_failure": "warn", "status": "Pending", "attempts": 0, "started_ms": null, "ended_ms": null, "detail": null}
                 ],
                 "requested_ms": 1700000000900u64, "finished_ms": null, "warnings": 0}
            ],
            "services": {
                "web": {"versions": {"v1": {}, "v2": {}}, "version": "v1", "checks": ["web"],
                        "rollout": {"from": "v1", "to": "v2", "domains": [0, 1], "position": 1, "state": "Running",
                                    "log": ["rollout web v1 -> v2: domain 0 healthy in 14.2s"]}}
            },
            "audit": [{"at_ms": 1700000000001u64, "who": "mallory", "what": "run 6 migrate db", "outcome": "refused at gate 1"}]
        })
    }

    #[test]
    fn serves_the_state_the_page_and_nothing_else() {
        let pages = Arc::new(FacilityPages::new());
        let stop = Arc::new(AtomicBool::new(false));
        let srv = start("127.0.0.1:0", pages.clone(), stop.clone()).unwrap();

        // Before the first round: an empty object, not an error.
        let r = get(srv.addr, "GET /api/facility HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && body(&r) == "{}", "{r}");

        pages.publish(sample());
        let r = get(srv.addr, "GET /api/facility?x=1 HTTP/1.1\r\n\r\n");
        assert!(r.contains("Content-Type: application/json\r\n"), "{r}");
        let v: Value = serde_json::from_str(body(&r)).unwrap();
        assert_eq!(v, sample());
        assert_eq!(v["runs"][1]["steps"][1]["step"], "switch_lock");

        // A newer round replaces it whole; older states without runs are fine.
        pages.publish(serde_json::json!({"nodes": {}, "vms": {}}));
        let v: Value = serde_json::from_str(body(&get(srv.addr, "GET /api/facility HTTP/1.0\r\n\r\n"))).unwrap();
        assert!(v.get("runs").is_none());

        let page = get(srv.addr, "GET / HTTP/1.1\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n") && page.contains("text/html"), "{page}");
        let html = body(&page);
        assert_eq!(html, FACILITY_DASHBOARD);
        for needed in
            ["<title>BMonitor facility</title>", "fetch(\"/api/facility\"", "function render(", "function renderRun("]
        {
            assert!(html.contains(needed), "page lacks {needed}");
        }
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "http:",
            "https:",
            "src=",
            "<link",
            "@import",
            "url(",
        ] {
            assert!(!html.contains(banned), "page contains {banned}");
        }

        for p in ["/nope", "/api/state", "/metrics", "/api/facility/x"] {
            let r = get(srv.addr, &format!("GET {p} HTTP/1.1\r\n\r\n"));
            assert!(r.starts_with("HTTP/1.1 404"), "{p}: {r}");
        }
        assert!(get(srv.addr, "POST /api/facility HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").starts_with("HTTP/1.1 413"));
        assert!(get(srv.addr, "PUT / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(srv.addr, "HEAD /api/facility HTTP/1.1\r\n\r\n").ends_with("\r\n\r\n"));

        stop.store(true, Ordering::SeqCst);
        srv.join();
    }

    #[test]
    fn oversized_states_lose_their_oldest_history() {
        let audit: Vec<Value> =
            (0..200).map(|i| serde_json::json!({"at_ms": i, "who": "w", "what": "x".repeat(50)})).collect();
        let runs: Vec<Value> = (0..20).map(|i| serde_json::json!({"id": i, "steps": []})).collect();
        let st = serde_json::json!({"nodes": {}, "runs": runs, "audit": audit});
        let full = serde_json::to_vec(&st).unwrap();
        assert_eq!(snapshot(st.clone(), full.len()), full);

        let cut = snapshot(st, 4000);
        assert!(cut.len() <= 4000);
        let v: Value = serde_json::from_slice(&cut).unwrap();
        let (runs, audit) = (v["runs"].as_array().unwrap(), v["audit"].as_array().unwrap());
        assert_eq!(runs.last().unwrap()["id"], 19, "the newest run stays");
        assert_eq!(audit.last().unwrap()["at_ms"], 199, "the newest audit entry stays");
        assert_eq!(v["truncated"]["runs"].as_u64().unwrap() + runs.len() as u64, 20);
        assert_eq!(v["truncated"]["audit"].as_u64().unwrap() + audit.len() as u64, 200);

        // Too large without any history: an error object, still bounded.
        let huge = serde_json::json!({"vms": {"a": "y".repeat(5000)}});
        let v: Value = serde_json::from_slice(&snapshot(huge, 4000)).unwrap();
        assert!(v["error"].as_str().unwrap().contains("over the dashboard"), "{v}");
    }

    /// Renders the page in headless Chromium and checks the run's steps were
    /// drawn, as text. Not in CI (needs a browser):
    /// `cargo test -p mgmt-console dashboard -- --ignored`.
    #[test]
    #[ignore = "needs chromium"]
    fn chromium_renders_the_steps() {
        let pages = Arc::new(FacilityPages::new());
        pages.publish(sample());
        let stop = Arc::new(AtomicBool::new(false));
        let srv = start("127.0.0.1:0", pages, stop.clone()).unwrap();
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=3000",
                "--dump-dom",
                &format!("http://{}/", srv.addr),
            ])
            .output()
            .unwrap();
        stop.store(true, Ordering::SeqCst);
        srv.join();
        let dom = String::from_utf8_lossy(&out.stdout);
        for shown in ["replicate", "switch_lock", "notify", "retry 2 then die", "alice", "10.0.0.1:7000", "v1 → v2"] {
            assert!(dom.contains(shown), "{shown} not rendered:\n{dom}");
        }
        assert!(dom.contains(r#"<tr class="running"><td class="num">2</td><td>switch_lock</td>"#), "{dom}");
        assert!(dom.contains("Refused: gate=1, why=operator mallory"), "{dom}");
        // The tenant's name is text, not an element.
        assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;") && !dom.contains("<img"), "{dom}");
    }
}
