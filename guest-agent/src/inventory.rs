//! What the guest runs (`Op::Inventory`): kernel, OS, packages, memory.

use std::fs;

use agent_proto::msg::{Inventory, ServiceStatus};

use crate::{procs, sys};

/// PRETTY_NAME from an os-release file's text.
pub fn pretty_name(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
}

/// Installed packages from a dpkg status file's text (`name version`).
pub fn dpkg_packages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| para.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
        let installed = field("Status:").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(p), Some(v)) = (installed, field("Package:"), field("Version:")) {
            out.push(format!("{p} {v}"));
        }
    }
    out
}

/// Installed packages from an apk database's text (`name version`).
pub fn apk_packages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| para.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
        if let (Some(p), Some(v)) = (field("P:"), field("V:")) {
            out.push(format!("{p} {v}"));
        }
    }
    out
}

/// Gathers the inventory from the running system.
pub fn collect(services: Vec<ServiceStatus>) -> Inventory {
    let (hostname, kernel) = sys::uname();
    let os_release = fs::read_to_string("/etc/os-release")
        .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
        .ok()
        .and_then(|t| pretty_name(&t));
    let (packages, package_source) = if let Ok(t) = fs::read_to_string("/var/lib/dpkg/status") {
        (dpkg_packages(&t), "dpkg")
    } else if let Ok(t) = fs::read_to_string("/lib/apk/db/installed") {
        (apk_packages(&t), "apk")
    } else {
        (Vec::new(), "none")
    };
    let (mem_total_kib, mem_available_kib) = procs::meminfo();
    Inventory {
        kernel,
        os_release,
        hostname,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        packages,
        package_source: package_source.to_string(),
        services,
        mem_total_kib,
        mem_available_kib,
        uptime_secs: procs::uptime_ms() / 1000,
    }
}
