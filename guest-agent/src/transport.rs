//! The agent's end of the ring: attach, produce `FromAgent` records, kick,
//! consume `ToAgent` records. Owns the cursors; knows nothing of operations.

use agent_proto::msg::{decode, encode};
use agent_proto::ring::{Layout, RingFault, CTRL_SIZE, FLAG_MORE};
use agent_proto::{FromAgent, ToAgent, MAX_RECORD};
use vmm_config::hypercall::{nr, status};

use std::time::Duration;

use crate::engine::Engine;
use crate::hypercall::Hypervisor;
use crate::region::Region;

/// Data bytes per direction.
pub const DATA: u32 = 256 * 1024;

/// Why a kick failed.
#[derive(Debug)]
pub enum KickError {
    /// The node dropped our attachment (NOT_ATTACHED or RING_FAULT): re-attach.
    Detached(u64),
    /// Any other status.
    Status(u64),
    /// Our own view of the region is broken.
    Ring(RingFault),
}

impl std::fmt::Display for KickError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KickError::Detached(s) => write!(f, "detached by the node (status {s})"),
            KickError::Status(s) => write!(f, "agent_kick failed with status {s}"),
            KickError::Ring(r) => write!(f, "{r}"),
        }
    }
}

/// Kicks at most per wake-up, so a flood cannot starve the local work.
const MAX_KICKS_PER_TURN: usize = 64;

/// The agent's link to the node: the real [`Transport`], or the node's
/// relay in memory for host tests.
pub trait Link {
    /// Puts one record in the agent-to-node ring; `Ok(false)` when full.
    fn push(&mut self, msg: &FromAgent) -> Result<bool, RingFault>;
    /// Lets the node move records; `Ok(true)` when more waits for us.
    fn kick(&mut self) -> Result<bool, KickError>;
    /// The next message from the node.
    fn pop(&mut self) -> Result<Option<ToAgent>, RingFault>;
    /// Re-initialises the region and attaches again.
    fn reattach(&mut self) -> Result<(), String>;
}

impl Link for Transport {
    fn push(&mut self, msg: &FromAgent) -> Result<bool, RingFault> {
        Transport::push(self, msg)
    }
    fn kick(&mut self) -> Result<bool, KickError> {
        Transport::kick(self)
    }
    fn pop(&mut self) -> Result<Option<ToAgent>, RingFault> {
        Transport::pop(self)
    }
    fn reattach(&mut self) -> Result<(), String> {
        Transport::reattach(self)
    }
}

/// The attached region and our cursors in it.
pub struct Transport {
    hv: Hypervisor,
    region: Region,
    layout: Layout,
    g2h_head: u32,
    h2g_tail: u32,
    scratch: Vec<u8>,
}

impl Transport {
    /// Maps the region and attaches it.
    pub fn attach(hv: Hypervisor) -> Result<Transport, String> {
        let layout = Layout::new(u64::from(DATA)).map_err(|e| format!("ring layout: {e}"))?;
        let region = Region::new((CTRL_SIZE + 2 * DATA) as usize).map_err(|e| format!("cannot map the ring: {e}"))?;
        let mut t = Transport { hv, region, layout, g2h_head: 0, h2g_tail: 0, scratch: Vec::new() };
        t.reattach()?;
        Ok(t)
    }

    /// (Re)initialises the region and registers it with the node.
    pub fn reattach(&mut self) -> Result<(), String> {
        self.layout.init(&mut self.region).map_err(|e| format!("ring init: {e}"))?;
        self.g2h_head = 0;
        self.h2g_tail = 0;
        let r = self.hv.call(nr::AGENT_ATTACH, self.region.addr(), u64::from(DATA), 0);
        if r.status != status::OK {
            return Err(format!("agent_attach failed with status {}", r.status));
        }
        Ok(())
    }

    /// Puts one record in the guest-to-host ring; `Ok(false)` when full now.
    /// A message too large to encode is an internal error (the engine
    /// checks sizes) and is dropped with `Ok(true)` after logging.
    pub fn push(&mut self, msg: &FromAgent) -> Result<bool, RingFault> {
        let b = match encode(msg, MAX_RECORD) {
            Ok(b) => b,
            Err(e) => {
                crate::log(&format!("dropping an unencodable record ({e:?})"));
                return Ok(true);
            }
        };
        self.layout.guest_to_host().produce(&mut self.region, &mut self.g2h_head, &b)
    }

    /// The `agent_kick` hypercall; `Ok(true)` when more waits for us.
    pub fn kick(&mut self) -> Result<bool, KickError> {
        let r = self.hv.call(nr::AGENT_KICK, 0, 0, 0);
        match r.status {
            status::OK => {}
            status::NOT_ATTACHED | status::RING_FAULT => return Err(KickError::Detached(r.status)),
            s => return Err(KickError::Status(s)),
        }
        let flags = self.layout.flags(&self.region).map_err(KickError::Ring)?;
        Ok(r.rdx == 1 || flags & FLAG_MORE != 0)
    }

    /// The next message from the node, if any. Records that do not decode
    /// are logged and skipped (the node only sends what it encoded).
    pub fn pop(&mut self) -> Result<Option<ToAgent>, RingFault> {
        loop {
            let h2g = self.layout.host_to_guest();
            if !h2g.consume(&mut self.region, &mut self.h2g_tail, &mut self.scratch)? {
                return Ok(None);
            }
            match decode::<ToAgent>(&self.scratch, MAX_RECORD) {
                Ok(m) => return Ok(Some(m)),
                Err(e) => crate::log(&format!("skipping a malformed record from the node ({e:?})")),
            }
        }
    }

    /// Tells the node we are leaving (best effort).
    pub fn detach(&mut self) {
        let _ = self.hv.call(nr::AGENT_DETACH, 0, 0, 0);
    }
}

/// Re-attaches until the node takes us back.
fn reattach(t: &mut impl Link, engine: &mut Engine, why: &str) {
    crate::log(&format!("{why}; re-attaching"));
    loop {
        match t.reattach() {
            Ok(()) => {
                crate::log("re-attached");
                engine.restart_session();
                return;
            }
            Err(e) => {
                crate::log(&format!("{e}; retrying in 1 s"));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Moves records both ways until nothing waits (bounded); re-attaches
/// (and restarts the engine's session) when the node dropped us.
pub fn exchange(t: &mut impl Link, engine: &mut Engine) {
    let mut retried = false;
    for _ in 0..MAX_KICKS_PER_TURN {
        let mut produced = false;
        while let Some(m) = engine.front() {
            match t.push(m) {
                Ok(true) => {
                    engine.pop_front();
                    produced = true;
                }
                Ok(false) => break,
                Err(e) => {
                    reattach(t, engine, &format!("ring broken ({e})"));
                    break;
                }
            }
        }
        let more = match t.kick() {
            Ok(more) => more,
            Err(KickError::Detached(s)) => {
                reattach(t, engine, &format!("the node detached us (status {s})"));
                continue;
            }
            Err(e) => {
                crate::log(&format!("kick failed: {e}"));
                return;
            }
        };
        let mut took = false;
        loop {
            match t.pop() {
                Ok(Some(m)) => {
                    engine.handle(m);
                    took = true;
                }
                Ok(None) => break,
                Err(e) => {
                    reattach(t, engine, &format!("ring broken ({e})"));
                    break;
                }
            }
        }
        if !more && !took && engine.front().is_none() {
            return;
        }
        // Nothing moved: the kick may have freed ring space, so try once
        // more, then leave it to the next turn.
        if !more && !took && !produced {
            if retried {
                return;
            }
            retried = true;
        } else {
            retried = false;
        }
    }
}
