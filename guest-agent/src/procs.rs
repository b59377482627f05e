//! The guest's processes and load, read from /proc.

use std::fs;

use agent_proto::msg::ProcessInfo;

/// Longest command line reported per process, so a listing fits a record.
const MAX_CMD: usize = 200;

/// `Op::Processes`: every process in /proc, by pid.
pub fn list() -> Vec<ProcessInfo> {
    let page_kib = crate::sys::page_size() / 1024;
    let mut v: Vec<ProcessInfo> = pids().into_iter().filter_map(|pid| one(pid, page_kib)).collect();
    v.sort_by_key(|p| p.pid);
    v
}

fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// How many processes run (for the heartbeat).
pub fn count() -> u32 {
    pids().len() as u32
}

fn one(pid: u32, page_kib: u64) -> Option<ProcessInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.to_string();
    let ppid = rest.next()?.parse().ok()?;
    let rss_pages: u64 = fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = if raw.is_empty() {
        format!("[{comm}]")
    } else {
        let s: String = String::from_utf8_lossy(&raw).replace('\0', " ").trim_end().to_string();
        s.chars().take(MAX_CMD).collect()
    };
    Some(ProcessInfo { pid, ppid, state, rss_kib: rss_pages * page_kib, cmd })
}

/// Load averages times 1000, from /proc/loadavg.
pub fn loadavg() -> [u32; 3] {
    let s = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0u32; 3];
    for (slot, f) in out.iter_mut().zip(s.split_whitespace()) {
        *slot = f.parse::<f64>().map(|x| (x * 1000.0) as u32).unwrap_or(0);
    }
    out
}

/// (MemTotal, MemAvailable) in KiB from /proc/meminfo.
pub fn meminfo() -> (u64, u64) {
    let s = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// Guest uptime in milliseconds, from /proc/uptime.
pub fn uptime_ms() -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|x| (x * 1000.0) as u64)
        .unwrap_or(0)
}
