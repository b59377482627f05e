//! The TOML file format of corrective-action policies (`bmctl ... policy
//! set FILE`, printed back by `policy get`), so operators keep policies in
//! files under version control instead of on the command line.
//!
//! ```toml
//! [[rule]]
//! name = "restart-hung"                       # unique in the policy
//! when = { heartbeat-missed = { secs = 10 } } # the condition, one of:
//! #   { heartbeat-missed = { secs = N } }
//! #   { probe-failing = { probe = "disk", count = 3 } }      (landlord)
//! #   { service-failing = { service = "web", count = 2, window-secs = 60 } }  (tenant; "*" = any)
//! #   { vm-stopped-abnormally = {} }
//! action = "restart-vm"  # notify | restart-service | restart-vm | reload-image | reboot-node
//! notify = true          # also ask `bmctl watch --notify` to run (default false)
//! backoff-secs = 5       # base backoff, doubled per repeat (default 10)
//! max-repeats = 3        # per target per window (default 3)
//! window-secs = 300      # (default 300)
//! vm = 12                # only this VM (default: all of the owner's VMs in the cluster)
//! ```
//!
//! Unknown keys are refused; errors name the line and the field. The node
//! validates ranges and powers; this module only checks what it can say
//! better (unique names, probe names).

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use mgmt_proto::monitor::{Condition, Policy, PolicyAction, PolicyRule, Probe};
use mgmt_proto::VmId;
use serde::{Deserialize, Serialize};

/// Default base backoff of a rule that does not say.
pub const DEFAULT_BACKOFF_SECS: u32 = 10;
/// Default repeat limit of a rule that does not say.
pub const DEFAULT_MAX_REPEATS: u32 = 3;
/// Default repeat window of a rule that does not say.
pub const DEFAULT_WINDOW_SECS: u32 = 300;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    rule: Vec<RuleToml>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RuleToml {
    name: String,
    when: WhenToml,
    action: ActionToml,
    #[serde(default)]
    notify: bool,
    #[serde(default = "default_backoff")]
    backoff_secs: u32,
    #[serde(default = "default_repeats")]
    max_repeats: u32,
    #[serde(default = "default_window")]
    window_secs: u32,
    #[serde(default)]
    vm: Option<u32>,
}

fn default_backoff() -> u32 {
    DEFAULT_BACKOFF_SECS
}
fn default_repeats() -> u32 {
    DEFAULT_MAX_REPEATS
}
fn default_window() -> u32 {
    DEFAULT_WINDOW_SECS
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum WhenToml {
    HeartbeatMissed {
        secs: u32,
    },
    ProbeFailing {
        probe: String,
        count: u32,
    },
    #[serde(rename_all = "kebab-case")]
    ServiceFailing {
        service: String,
        count: u32,
        window_secs: u32,
    },
    VmStoppedAbnormally {},
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
enum ActionToml {
    Notify,
    RestartService,
    RestartVm,
    ReloadImage,
    RebootNode,
}

impl From<ActionToml> for PolicyAction {
    fn from(a: ActionToml) -> Self {
        match a {
            ActionToml::Notify => PolicyAction::Notify,
            ActionToml::RestartService => PolicyAction::RestartService,
            ActionToml::RestartVm => PolicyAction::RestartVm,
            ActionToml::ReloadImage => PolicyAction::ReloadImage,
            ActionToml::RebootNode => PolicyAction::RebootNode,
        }
    }
}

/// Parses a policy file. Errors say where (`TOML parse error at line L,
/// column C` and the field) or which rule.
pub fn parse_policy(text: &str) -> Result<Policy> {
    let file: FileToml = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut names = BTreeSet::new();
    let mut rules = Vec::with_capacity(file.rule.len());
    for (i, r) in file.rule.into_iter().enumerate() {
        let at = format!("rule {} ({:?})", i + 1, r.name);
        if r.name.is_empty() {
            bail!("rule {}: name is empty", i + 1);
        }
        if !names.insert(r.name.clone()) {
            bail!("{at}: the name is used by an earlier rule; names must be unique");
        }
        let when = match r.when {
            WhenToml::HeartbeatMissed { secs } => Condition::HeartbeatMissed { secs },
            WhenToml::ProbeFailing { probe, count } => {
                let Some(p) = Probe::from_name(&probe) else {
                    let known: Vec<&str> = Probe::ALL.iter().map(|p| p.name()).collect();
                    bail!("{at}: when.probe-failing.probe: unknown probe {probe:?} (one of {})", known.join(", "));
                };
                Condition::ProbeFailing { probe: p, count }
            }
            WhenToml::ServiceFailing { service, count, window_secs } => {
                Condition::ServiceFailing { service, count, window_secs }
            }
            WhenToml::VmStoppedAbnormally {} => Condition::VmStoppedAbnormally,
        };
        rules.push(PolicyRule {
            name: r.name,
            vm: r.vm.map(VmId),
            when,
            action: r.action.into(),
            notify: r.notify,
            backoff_secs: r.backoff_secs,
            max_repeats: r.max_repeats,
            window_secs: r.window_secs,
        });
    }
    Ok(Policy { rules })
}

/// A TOML string literal (quoted and escaped as the format wants).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The policy in the file format [`parse_policy`] reads, every field
/// spelled out, so `policy get > f; edit f; policy set f` round-trips.
pub fn format_policy(policy: &Policy) -> String {
    let mut out = String::new();
    for r in &policy.rules {
        if !out.is_empty() {
            out.push('\n');
        }
        let when = match &r.when {
            Condition::HeartbeatMissed { secs } => format!("{{ heartbeat-missed = {{ secs = {secs} }} }}"),
            Condition::ProbeFailing { probe, count } => {
                format!("{{ probe-failing = {{ probe = {}, count = {count} }} }}", quoted(probe.name()))
            }
            Condition::ServiceFailing { service, count, window_secs } => format!(
                "{{ service-failing = {{ service = {}, count = {count}, window-secs = {window_secs} }} }}",
                quoted(service)
            ),
            Condition::VmStoppedAbnormally => "{ vm-stopped-abnormally = {} }".to_string(),
        };
        out.push_str(&format!(
            "[[rule]]\nname = {}\nwhen = {when}\naction = {}\nnotify = {}\nbackoff-secs = {}\nmax-repeats = {}\nwindow-secs = {}\n",
            quoted(&r.name),
            quoted(r.action.name()),
            r.notify,
            r.backoff_secs,
            r.max_repeats,
            r.window_secs
        ));
        if let Some(vm) = r.vm {
            out.push_str(&format!("vm = {}\n", vm.0));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[rule]]
name = "restart-hung"
when = { heartbeat-missed = { secs = 10 } }   # a comment
action = "restart-vm"
notify = true
backoff-secs = 5
max-repeats = 3
window-secs = 300
vm = 12

[[rule]]
name = "disk"
when = { probe-failing = { probe = "disk", count = 3 } }
action = "reboot-node"

[[rule]]
name = "web \"quoted\""
when = { service-failing = { service = "web", count = 2, window-secs = 60 } }
action = "restart-service"

[[rule]]
name = "crash"
when = { vm-stopped-abnormally = {} }
action = "notify"
"#;

    #[test]
    fn parses_every_condition_with_defaults() {
        let p = parse_policy(SAMPLE).unwrap();
        assert_eq!(p.rules.len(), 4);
        let r = &p.rules[0];
        assert_eq!(r.name, "restart-hung");
        assert_eq!(r.when, Condition::HeartbeatMissed { secs: 10 });
        assert_eq!(r.action, PolicyAction::RestartVm);
        assert!(r.notify);
        assert_eq!((r.backoff_secs, r.max_repeats, r.window_secs, r.vm), (5, 3, 300, Some(VmId(12))));
        let d = &p.rules[1];
        assert_eq!(d.when, Condition::ProbeFailing { probe: Probe::Disk, count: 3 });
        assert_eq!(
            (d.notify, d.backoff_secs, d.max_repeats, d.window_secs, d.vm),
            (false, DEFAULT_BACKOFF_SECS, DEFAULT_MAX_REPEATS, DEFAULT_WINDOW_SECS, None)
        );
        assert_eq!(p.rules[2].when, Condition::ServiceFailing { service: "web".into(), count: 2, window_secs: 60 });
        assert_eq!(p.rules[3].when, Condition::VmStoppedAbnormally);
        assert_eq!(p.rules[3].action, PolicyAction::Notify);
        assert_eq!(parse_policy("").unwrap(), Policy::default());
    }

    #[test]
    fn round_trips_through_the_printed_form() {
        let p = parse_policy(SAMPLE).unwrap();
        let text = format_policy(&p);
        assert_eq!(parse_policy(&text).unwrap(), p, "{text}");
        assert!(text.contains("when = { heartbeat-missed = { secs = 10 } }"), "{text}");
        assert!(text.contains(r#"name = 'web "quoted"'"#), "{text}");
        assert_eq!(format_policy(&Policy::default()), "");
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let e = parse_policy("[[rule]]\nname = \"a\"\nwhen = { heartbeat-missed = { secs = 10 } }\naction = \"restart-vm\"\ncolour = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("colour"), "{e}");
        let e = parse_policy(
            "[[rule]]\nname = \"a\"\nwhen = { heartbeat-missed = { secs = \"x\" } }\naction = \"notify\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3"), "{e}");
        let e =
            parse_policy("[[rule]]\nname = \"a\"\nwhen = { heartbeat-missed = { secs = 1 } }\naction = \"explode\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("line 4") && e.contains("explode"), "{e}");
        let e = parse_policy("[[rule]]\nname = \"a\"\nwhen = { heart = { secs = 1 } }\naction = \"notify\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("heart"), "{e}");
        let e = parse_policy("[[rule]]\nname = \"a\"\naction = \"notify\"\n").unwrap_err().to_string();
        assert!(e.contains("when"), "{e}");
        let e = parse_policy("[[rules]]\nname = \"a\"\n").unwrap_err().to_string();
        assert!(e.contains("rules"), "{e}");
        let e = parse_policy(
            "[[rule]]\nname = \"a\"\nwhen = { probe-failing = { probe = \"fan\", count = 1 } }\naction = \"notify\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown probe \"fan\"") && e.contains("nic-link"), "{e}");
        let dup = "[[rule]]\nname = \"a\"\nwhen = { vm-stopped-abnormally = {} }\naction = \"notify\"\n";
        let e = parse_policy(&format!("{dup}{dup}")).unwrap_err().to_string();
        assert!(e.contains("rule 2") && e.contains("unique"), "{e}");
    }
}
