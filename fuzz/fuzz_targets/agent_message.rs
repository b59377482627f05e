//! Fuzzes the guest agent's message decoders: what crosses the ring
//! (`ToAgent`, which the agent decodes, and `FromAgent`, which the node
//! decodes), their parts (`Op`, `Input`, `Event`), and the management
//! protocol's agent requests and replies. Whatever decodes must re-encode
//! within the same limit and decode to the same value; an agent request
//! authorizes for the VM's own tenant only (the landlord and other
//! tenants are refused).
//!
//! Input layout: the bytes every decoder sees (no mode byte).
#![no_main]

use agent_proto::msg::{decode, encode};
use agent_proto::{Event, FromAgent, Input, Op, ToAgent, MAX_RECORD};
use libfuzzer_sys::fuzz_target;
use mgmt_proto::{authorize, LeaseId, Request, Response, Role, MAX_FRAME, MAX_MESSAGE};
#[path = "common/mgmt.rs"]
mod mgmt;
use mgmt::Owners;

fuzz_target!(|data: &[u8]| {
    round_trip::<ToAgent>(data);
    round_trip::<FromAgent>(data);
    round_trip::<Op>(data);
    round_trip::<Input>(data);
    if let Some(e) = round_trip::<Event>(data) {
        let _ = (e.is_terminal(), e.weight());
    }
    if let Some(req) = mgmt_round_trip::<Request>(data) {
        if is_agent(&req) {
            // VM 1 belongs to lease 1 (Owners): only its tenant may.
            assert!(authorize(&Role::Landlord, &req, &Owners).is_err(), "the landlord reached an agent: {req:?}");
            let own = authorize(&Role::Tenant(LeaseId(1)), &req, &Owners).is_ok();
            let other = authorize(&Role::Tenant(LeaseId(2)), &req, &Owners).is_ok();
            assert!(!other || !own, "two tenants reached one VM's agent: {req:?}");
            assert!(!other, "tenant 2 reached VM {:?}'s agent", vm_of(&req));
        }
    }
    mgmt_round_trip::<Response>(data);
});

fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + core::fmt::Debug,
{
    let v = decode::<T>(data, MAX_RECORD).ok()?;
    let again = encode(&v, MAX_RECORD).expect("a decoded message re-encodes within the record limit");
    assert_eq!(decode::<T>(&again, MAX_RECORD).expect("a re-encoded message decodes"), v);
    Some(v)
}

fn mgmt_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + core::fmt::Debug,
{
    let v = mgmt_proto::msg::decode::<T>(data, MAX_MESSAGE).ok()?;
    let again = mgmt_proto::msg::encode(&v, MAX_FRAME).expect("a decoded value re-encodes");
    assert_eq!(mgmt_proto::msg::decode::<T>(&again, MAX_FRAME).expect("a re-encoded value decodes"), v);
    Some(v)
}

fn is_agent(r: &Request) -> bool {
    vm_of(r).is_some()
}

fn vm_of(r: &Request) -> Option<u64> {
    match r {
        Request::AgentOpen { vm, .. }
        | Request::AgentSend { vm, .. }
        | Request::AgentPoll { vm, .. }
        | Request::AgentStatus { vm }
        | Request::AgentLog { vm, .. }
        | Request::AgentHeartbeat { vm, .. } => Some(u64::from(vm.0)),
        _ => None,
    }
}
