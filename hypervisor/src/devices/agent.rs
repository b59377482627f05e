//! The VM's side of the guest agent channel: the relay between the
//! tenant's console and the agent (pure logic in `agent_proto::relay`), the
//! address space that registered the shared region, and COM2, the agent's
//! doorbell: a 16550 whose receive buffer gets a byte when something waits
//! for the agent, so a stock Linux 8250 driver wakes the agent's poll(2).

use agent_proto::relay::{Relay, RelayLimits};
use pc_devices::bus::{BusDevice, Effect, Env};
use pc_devices::uart::Uart;

/// COM2's base port.
pub const COM2_BASE: u16 = vmm_config::hypercall::AGENT_DOORBELL_PORT;
/// COM2's ISA IRQ (and GSI).
pub const COM2_GSI: u32 = 3;

/// The byte the doorbell delivers (its value carries no meaning).
const RING: u8 = 0x07;

/// One VM's agent channel.
pub struct AgentChannel {
    /// Streams, queues, heartbeats and the agent log.
    pub relay: Relay,
    /// Page-table root (address bits of CR3) of the process that attached;
    /// kicks from any other address space are refused.
    pub owner_cr3: u64,
    /// Guest-virtual address of the registered region.
    pub region_va: u64,
}

impl AgentChannel {
    /// A channel with no agent attached.
    pub fn new() -> AgentChannel {
        AgentChannel { relay: Relay::new(RelayLimits::default()), owner_cr3: 0, region_va: 0 }
    }

    /// Rings the doorbell when the relay has something for the agent that
    /// it was not yet told about; returns whether it rang.
    pub fn ring_if_needed(&mut self, doorbell: &mut Doorbell) -> bool {
        if !self.relay.wants_doorbell() {
            return false;
        }
        // A full receive buffer already means "look": nothing is lost.
        let _ = doorbell.uart.push_input(&[RING]);
        doorbell.rings += 1;
        self.relay.doorbell_rung();
        true
    }
}

impl Default for AgentChannel {
    fn default() -> Self {
        AgentChannel::new()
    }
}

/// COM2 as the agent's doorbell. What the guest transmits on it is
/// discarded (counted), so it can never grow the node's memory or log.
pub struct Doorbell {
    uart: Uart,
    /// Times the node rang.
    pub rings: u64,
    /// Bytes the guest transmitted (discarded).
    pub discarded: u64,
    scratch: alloc::vec::Vec<u8>,
}

impl Doorbell {
    /// An idle doorbell.
    pub fn new() -> Doorbell {
        Doorbell { uart: Uart::new(), rings: 0, discarded: 0, scratch: alloc::vec::Vec::new() }
    }
}

impl Default for Doorbell {
    fn default() -> Self {
        Doorbell::new()
    }
}

impl BusDevice for Doorbell {
    fn read(&mut self, offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.uart.read((offset + i as u64) as u16);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], _env: &mut Env<'_>) -> Effect {
        for (i, &b) in data.iter().enumerate() {
            self.uart.write((offset + i as u64) as u16, b);
        }
        self.scratch.clear();
        self.uart.drain_output(&mut self.scratch);
        self.discarded += self.scratch.len() as u64;
        Effect::None
    }

    fn irq_level(&self) -> bool {
        self.uart.irq_level()
    }

    fn name(&self) -> &'static str {
        "com2-agent-doorbell"
    }
}
