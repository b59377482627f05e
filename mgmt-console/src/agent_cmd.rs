//! The `bmctl tenant` agent commands: each connects once and runs through
//! [`crate::agent`] and [`crate::cp`]; `cli` only parses and dispatches.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use agent_proto::msg::{ExecSpec, RestartPolicy, ServiceOp, ServiceSpec};
use agent_proto::{Event, Op};
use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mgmt_proto::{Request, Response};
use serde_json::json;
use vmm_config::text::escape_control;

use crate::agent::{self, Agent, AgentFailure, CpPath, ExecReport, ExecRequest};
use crate::cli::{Ctx, ExecArgs, RestartArg, ServiceCmd, UsageError};
use crate::client::ClientError;
use crate::cp::{copy_in, copy_out, CpOptions};

fn connect(ctx: &Ctx, vm: u32) -> Result<Agent> {
    Ok(Agent::new(ctx.connect_agent()?, vm))
}

fn unexpected_event(e: Event) -> anyhow::Error {
    ClientError::Unexpected(format!("{e:?}")).into()
}

/// Prints the JSON report (in JSON mode) and passes the command's status on.
fn finish(ctx: &Ctx, report: &ExecReport) -> Result<()> {
    if ctx.json {
        println!("{}", serde_json::to_value(report)?);
    }
    if report.exit_status != 0 {
        return Err(AgentFailure::Status(report.exit_status).into());
    }
    Ok(())
}

/// `bmctl tenant exec`.
pub(crate) fn exec(ctx: &Ctx, a: ExecArgs) -> Result<()> {
    let mut agent = connect(ctx, a.vm)?;
    let spec = ExecSpec {
        argv: a.argv,
        env: a.env,
        cwd: a.cwd,
        timeout_ms: a.cmd_timeout.map_or(0, |s| s.saturating_mul(1000)),
        stdin: a.stdin,
        pty: None,
    };
    let input = a.stdin.then(|| agent::spawn_reader(std::io::stdin()));
    let req = ExecRequest { spec, json: ctx.json };
    let report = agent::run_exec(&mut agent, &req, input, agent::ctrl_c_counter(), || None)?;
    finish(ctx, &report)
}

/// `bmctl tenant shell`.
pub(crate) fn shell(ctx: &Ctx, vm: u32, command: Option<String>) -> Result<()> {
    let mut agent = connect(ctx, vm)?;
    let argv = match command {
        Some(c) => vec!["/bin/sh".to_string(), "-c".to_string(), c],
        None => vec!["/bin/sh".to_string(), "-l".to_string()],
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".to_string());
    let spec = ExecSpec {
        argv,
        env: vec![("TERM".to_string(), term)],
        cwd: None,
        timeout_ms: 0,
        stdin: true,
        pty: Some(agent::local_winsize()),
    };
    let input = agent::spawn_reader(std::io::stdin());
    let req = ExecRequest { spec, json: false };
    let report = {
        // Restored when this block ends, whichever way.
        let _raw = agent::RawMode::enter();
        agent::run_exec(&mut agent, &req, Some(input), None, agent::watch_resize())
    }?;
    finish(ctx, &ExecReport { stdout: None, stderr: None, ..report })
}

fn progress_bar(ctx: &Ctx, no_progress: bool) -> Result<ProgressBar> {
    if ctx.json || no_progress || !std::io::stderr().is_terminal() {
        return Ok(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("[{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .map_err(|e| anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    Ok(bar)
}

/// `bmctl tenant cp`.
pub(crate) fn cp(ctx: &Ctx, recursive: bool, no_progress: bool, src: &str, dst: &str) -> Result<()> {
    let s = agent::parse_cp_path(src).map_err(UsageError)?;
    let d = agent::parse_cp_path(dst).map_err(UsageError)?;
    let opts = CpOptions { recursive, notes: !ctx.json, bar: progress_bar(ctx, no_progress)? };
    let report = match (s, d) {
        (CpPath::Local(l), CpPath::Remote { vm, path }) => {
            copy_in(&mut connect(ctx, vm)?, Path::new(&l), &path, &opts)?
        }
        (CpPath::Remote { vm, path }, CpPath::Local(l)) => {
            copy_out(&mut connect(ctx, vm)?, &path, Path::new(&l), &opts)?
        }
        _ => return Err(UsageError("exactly one of SRC and DST must be VM:PATH (e.g. 3:/root/f)".into()).into()),
    };
    ctx.out(serde_json::to_value(&report)?, || report.summary());
    Ok(())
}

/// `bmctl tenant ps`.
pub(crate) fn ps(ctx: &Ctx, vm: u32) -> Result<()> {
    match connect(ctx, vm)?.run(Op::Processes)? {
        Event::Processes(v) => ctx.out(serde_json::to_value(&v)?, || agent::process_table(&v)),
        e => return Err(unexpected_event(e)),
    }
    Ok(())
}

/// `bmctl tenant kill`.
pub(crate) fn kill(ctx: &Ctx, vm: u32, pid: u32, signal: i32) -> Result<()> {
    match connect(ctx, vm)?.run(Op::Kill { pid, signal })? {
        Event::Ok => ctx.out(json!({"ok": true, "pid": pid, "signal": signal}), || {
            format!("signal {signal} sent to process {pid}")
        }),
        e => return Err(unexpected_event(e)),
    }
    Ok(())
}

fn policy(r: RestartArg) -> RestartPolicy {
    match r {
        RestartArg::Never => RestartPolicy::Never,
        RestartArg::OnFailure => RestartPolicy::OnFailure,
        RestartArg::Always => RestartPolicy::Always,
    }
}

/// `bmctl tenant service VM ...`.
pub(crate) fn service(ctx: &Ctx, vm: u32, cmd: ServiceCmd) -> Result<()> {
    let (op, what) = match cmd {
        ServiceCmd::Define { name, restart, backoff_ms, max_restarts, window_secs, env, argv } => {
            let what = format!("service {} defined and started", escape_control(&name));
            let spec = ServiceSpec { name, argv, env, restart: policy(restart), backoff_ms, max_restarts, window_secs };
            (ServiceOp::Define(spec), what)
        }
        ServiceCmd::Start { name } => (ServiceOp::Start { name: name.clone() }, format!("service {name} started")),
        ServiceCmd::Stop { name } => (ServiceOp::Stop { name: name.clone() }, format!("service {name} stopped")),
        ServiceCmd::Restart { name } => {
            (ServiceOp::Restart { name: name.clone() }, format!("service {name} restarted"))
        }
        ServiceCmd::Remove { name } => (ServiceOp::Remove { name: name.clone() }, format!("service {name} removed")),
        ServiceCmd::Status { name } => (ServiceOp::Status { name }, String::new()),
        ServiceCmd::Logs { name, lines } => (ServiceOp::Logs { name, lines }, String::new()),
    };
    match connect(ctx, vm)?.run(Op::Service(op))? {
        Event::Ok => ctx.out(json!({"ok": true}), || escape_control(&what)),
        Event::Services(v) => ctx.out(serde_json::to_value(&v)?, || agent::service_table(&v)),
        Event::Logs(lines) => {
            ctx.out(json!({"lines": lines}), || lines.iter().map(|l| escape_control(l)).collect::<Vec<_>>().join("\n"))
        }
        e => return Err(unexpected_event(e)),
    }
    Ok(())
}

/// `bmctl tenant inventory`.
pub(crate) fn inventory(ctx: &Ctx, vm: u32) -> Result<()> {
    match connect(ctx, vm)?.run(Op::Inventory)? {
        Event::Inventory(i) => ctx.out(serde_json::to_value(&i)?, || agent::inventory_text(&i)),
        e => return Err(unexpected_event(e)),
    }
    Ok(())
}

/// `bmctl tenant agent`.
pub(crate) fn agent_status(ctx: &Ctx, vm: u32, wait: Option<u64>, heartbeat: Option<(u32, u64)>) -> Result<()> {
    let mut agent = connect(ctx, vm)?;
    if let Some((period_ms, timeout_ms)) = heartbeat {
        match agent.client().call(Request::AgentHeartbeat { vm: mgmt_proto::VmId(vm), period_ms, timeout_ms })? {
            Response::Done => {}
            r => return Err(agent::unexpected(r).into()),
        }
    }
    let st = match wait {
        Some(secs) => agent::wait_ready(&mut agent, Duration::from_secs(secs))?,
        None => agent::status(&mut agent)?,
    };
    ctx.out(serde_json::to_value(&st)?, || agent::status_text(vm, &st));
    Ok(())
}

/// `bmctl tenant agent-log`.
pub(crate) fn agent_log(ctx: &Ctx, vm: u32, from: u64, follow: bool) -> Result<()> {
    let mut agent = connect(ctx, vm)?;
    let mut from = from;
    loop {
        let (entries, next) = match agent.client().call(Request::AgentLog { vm: mgmt_proto::VmId(vm), from })? {
            Response::AgentLog { entries, next } => (entries, next),
            r => return Err(agent::unexpected(r).into()),
        };
        if ctx.json && !follow {
            println!("{}", json!({"entries": entries, "next": next}));
            return Ok(());
        }
        for e in &entries {
            if ctx.json {
                println!("{}", serde_json::to_value(e)?);
            } else {
                println!("{}", agent::log_line(e));
            }
        }
        if !follow {
            return Ok(());
        }
        if entries.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
        from = next.max(from);
    }
}
