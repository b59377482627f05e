//! Services the tenant's image defines (`bmimage guest --service`), read
//! from /etc/bm-agent/services.conf at start: one per line,
//! `NAME<TAB>POLICY<TAB>COMMAND ARGS` with POLICY `never`, `on-failure` or
//! `always`; `#` starts a comment. A service already defined by the tenant
//! at run time (saved in the state directory) keeps that definition.

use agent_proto::msg::{RestartPolicy, ServiceSpec};

/// Largest file read.
const MAX_CONF: u64 = 64 * 1024;

/// Parses the file's text; bad lines are reported, not fatal.
pub fn parse(text: &str) -> (Vec<ServiceSpec>, Vec<String>) {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (Some(name), Some(policy), Some(cmd)) = (parts.next(), parts.next(), parts.next()) else {
            errors.push(format!("services.conf line {}: want NAME<TAB>POLICY<TAB>COMMAND", n + 1));
            continue;
        };
        let restart = match policy.trim() {
            "never" => RestartPolicy::Never,
            "on-failure" => RestartPolicy::OnFailure,
            "always" => RestartPolicy::Always,
            other => {
                errors.push(format!("services.conf line {}: unknown policy {other:?}", n + 1));
                continue;
            }
        };
        let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        if argv.is_empty() || !crate::services::valid_name(name.trim()) {
            errors.push(format!("services.conf line {}: bad name or empty command", n + 1));
            continue;
        }
        specs.push(ServiceSpec {
            name: name.trim().to_string(),
            argv,
            env: Vec::new(),
            restart,
            backoff_ms: 500,
            max_restarts: 5,
            window_secs: 60,
        });
    }
    (specs, errors)
}

/// Reads and parses `path`; a missing file is no services.
pub fn read(path: &std::path::Path) -> (Vec<ServiceSpec>, Vec<String>) {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(path) else { return (Vec::new(), Vec::new()) };
    let mut text = String::new();
    if let Err(e) = f.take(MAX_CONF).read_to_string(&mut text) {
        return (Vec::new(), vec![format!("{}: {e}", path.display())]);
    }
    parse(&text)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_reports_bad_ones() {
        let (s, e) = parse("# demo\nweb\ton-failure\thttpd -f -p 8080\nbad line\nx\tsometimes\ttrue\n\n");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "web");
        assert_eq!(s[0].argv, ["httpd", "-f", "-p", "8080"]);
        assert_eq!(s[0].restart, RestartPolicy::OnFailure);
        assert_eq!(e.len(), 2);
    }
}
