//! Tenant requests for a VM's guest agent: each goes to the relay of the
//! running VM (`devices::agent`), and the doorbell rings when the relay has
//! news for the agent. Authorization (tenant-only, own VMs) is done before.

use alloc::format;
use alloc::string::String;

use agent_proto::Op;
use mgmt_proto::msg::{ErrorCode, ErrorReply, Request, Response, VmId};

/// Largest poll answer, so a reply always fits one message.
const MAX_POLL_BYTES: usize = 48 * 1024;
/// Agent log entries per answer.
const LOG_PAGE: usize = 64;

fn now_ms() -> u64 {
    use crate::arch::x86_64::time;
    time::tsc_to_ns(time::rdtsc()) / 1_000_000
}

/// Whether a request is an agent request this module answers.
pub fn is_agent_request(req: &Request) -> bool {
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

/// Agent requests that succeed often and say nothing new: not audited or
/// logged one by one (their refusals are).
pub fn is_quiet(req: &Request) -> bool {
    matches!(
        req,
        Request::AgentSend { .. } | Request::AgentPoll { .. } | Request::AgentStatus { .. } | Request::AgentLog { .. }
    )
}

/// What an operation is, for the audit log (no file contents or stdin).
pub fn describe(op: &Op) -> String {
    use agent_proto::msg::ServiceOp;
    let s = match op {
        Op::Exec(e) if e.pty.is_some() => format!("shell {}", e.argv.first().map(String::as_str).unwrap_or("")),
        Op::Exec(e) => format!("exec {}", e.argv.first().map(String::as_str).unwrap_or("")),
        Op::Stat { path } => format!("stat {path}"),
        Op::ListTree { path } => format!("list {path}"),
        Op::ReadFile { path, .. } => format!("copy out {path}"),
        Op::WriteFile { path, size, .. } => format!("copy in {path} ({size} bytes)"),
        Op::MakeDir { path, .. } => format!("mkdir {path}"),
        Op::Processes => String::from("processes"),
        Op::Kill { pid, signal } => format!("kill {pid} signal {signal}"),
        Op::Service(ServiceOp::Define(s)) => format!("service define {}", s.name),
        Op::Service(ServiceOp::Remove { name }) => format!("service remove {name}"),
        Op::Service(ServiceOp::Start { name }) => format!("service start {name}"),
        Op::Service(ServiceOp::Stop { name }) => format!("service stop {name}"),
        Op::Service(ServiceOp::Restart { name }) => format!("service restart {name}"),
        Op::Service(ServiceOp::Status { .. }) => String::from("service status"),
        Op::Service(ServiceOp::Logs { name, .. }) => format!("service logs {name}"),
        Op::Inventory => String::from("inventory"),
    };
    s.chars().take(120).collect()
}

/// The running VM a console names, or why there is none.
fn running<'a>(
    state: &node_logic::NodeState,
    vms: &'a mut [crate::vm::Vm],
    vm: VmId,
) -> Result<&'a mut crate::vm::Vm, ErrorReply> {
    let w = state.vms.get(&vm).ok_or_else(|| ErrorReply::new(ErrorCode::NotFound, "no such VM"))?;
    let generation = w.starts;
    vms.iter_mut()
        .rev()
        .find(|v| v.managed == Some((vm.0, generation)) && v.is_running())
        .ok_or_else(|| ErrorReply::new(ErrorCode::Conflict, "VM is not running"))
}

/// Answers one agent request.
pub fn handle(state: &node_logic::NodeState, req: &Request, vms: &mut [crate::vm::Vm]) -> Result<Response, ErrorReply> {
    let now = now_ms();
    let reply = match req {
        Request::AgentOpen { vm, op } => {
            let real = running(state, vms, *vm)?;
            let stream = real.devices.agent.lock().relay.open(op.clone(), now).map_err(ErrorReply::from)?;
            real.devices.ring_agent();
            Response::AgentStream { stream }
        }
        Request::AgentSend { vm, stream, input } => {
            let real = running(state, vms, *vm)?;
            real.devices.agent.lock().relay.send(*stream, input.clone(), now).map_err(ErrorReply::from)?;
            real.devices.ring_agent();
            Response::Done
        }
        Request::AgentPoll { vm, stream, max_bytes } => {
            let real = running(state, vms, *vm)?;
            let max = (*max_bytes as usize).min(MAX_POLL_BYTES);
            let (events, finished) =
                real.devices.agent.lock().relay.poll(*stream, max, now).map_err(ErrorReply::from)?;
            real.devices.ring_agent();
            Response::AgentEvents { events, finished }
        }
        Request::AgentStatus { vm } => {
            let real = running(state, vms, *vm)?;
            Response::Agent(real.devices.agent.lock().relay.status(now))
        }
        Request::AgentLog { vm, from } => {
            let real = running(state, vms, *vm)?;
            let (entries, next) = real.devices.agent.lock().relay.log_since(*from, LOG_PAGE);
            Response::AgentLog { entries, next }
        }
        Request::AgentHeartbeat { vm, period_ms, timeout_ms } => {
            let real = running(state, vms, *vm)?;
            real.devices.agent.lock().relay.set_heartbeat(*period_ms, *timeout_ms).map_err(ErrorReply::from)?;
            real.devices.ring_agent();
            Response::Done
        }
        _ => return Err(ErrorReply::new(ErrorCode::Internal, "not an agent request")),
    };
    Ok(reply)
}

/// Time-driven relay work for every running VM (hung agents, idle
/// streams, pending credit), called from the node loop.
pub fn tick(vms: &mut [crate::vm::Vm]) {
    let now = now_ms();
    for vm in vms.iter_mut().filter(|v| v.is_running()) {
        vm.devices.agent.lock().relay.tick(now);
        vm.devices.ring_agent();
    }
}
