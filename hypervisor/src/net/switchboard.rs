//! The node's switch, built from the node config: each VM NIC is a port,
//! the uplink is another. Clusters become the landlord's boundary, tenant
//! `[[rule]]`s are added through the policy (which refuses any rule that
//! would reach outside its cluster), and the compiled policy drives the
//! learning switch from the `vswitch` crate.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use vmm_config::config::NodeConfig;
use vswitch::config::build_policy;
pub use vswitch::config::nic_identities;
use vswitch::engine::CompiledPolicy;
use vswitch::frame::MacAddr;
use vswitch::policy::{PortId, RuleId};
use vswitch::switch::{Outcome, Switch, SwitchConfig};

/// The uplink's switch port.
pub const UPLINK_PORT: PortId = PortId(0);

/// Switch port of VM number `id`.
pub use crate::vm::nic_port as vm_port;

/// The running switch.
pub struct Switchboard {
    switch: Switch,
    rule_ids: Vec<RuleId>,
    /// VM NICs plus the uplink, if any.
    pub ports: usize,
    /// Frames switched and dropped, for the log and status.
    pub switched: u64,
    pub dropped: u64,
}

/// One frame for one port.
pub struct Delivery {
    pub port: PortId,
    pub frame: Vec<u8>,
}

impl Switchboard {
    /// Builds the switch for the config's NICs; `uplink` adds the uplink port.
    pub fn new(config: &NodeConfig, uplink: bool) -> Result<Switchboard, String> {
        let nics = nic_identities(config);
        let (policy, rule_ids) = build_policy(config, &nics)?;
        let mut switch = Switch::new(SwitchConfig::default(), CompiledPolicy::compile(&policy));
        for n in &nics {
            switch
                .add_vm_port(vm_port(n.vm), MacAddr(n.mac), Ipv4Addr::from(n.ip))
                .map_err(|e| format!("vm[{}].nic: {e}", n.vm))?;
        }
        if uplink {
            switch.set_uplink(UPLINK_PORT).map_err(|e| format!("uplink: {e}"))?;
        }
        let ports = nics.len() + usize::from(uplink);
        Ok(Switchboard { switch, rule_ids, ports, switched: 0, dropped: 0 })
    }

    /// Switches one frame arriving on `ingress`; returns where it goes
    /// (including a refusal sent back to the sender).
    pub fn switch(&mut self, ingress: PortId, frame: &[u8], now: u64) -> Vec<Delivery> {
        match self.switch.process(ingress, frame, now) {
            Outcome::Deliver(list) => {
                self.switched += 1;
                list.into_iter().map(|d| Delivery { port: d.port, frame: d.frame.into_owned() }).collect()
            }
            Outcome::Drop { reply, .. } => {
                self.dropped += 1;
                reply.into_iter().map(|d| Delivery { port: d.port, frame: d.frame.into_owned() }).collect()
            }
        }
    }

    /// Ages learned MACs; `now` is in seconds.
    pub fn expire(&mut self, now: u64) {
        self.switch.expire(now);
    }

    /// A VM NIC that joins at run time.
    pub fn add_port(&mut self, port: PortId, mac: [u8; 6], ip: [u8; 4]) -> Result<(), String> {
        self.switch.add_vm_port(port, MacAddr(mac), Ipv4Addr::from(ip)).map_err(|e| format!("nic: {e}"))?;
        self.ports += 1;
        Ok(())
    }

    /// A VM NIC that leaves.
    pub fn remove_port(&mut self, port: PortId) {
        if self.switch.remove_port(port).is_ok() {
            self.ports = self.ports.saturating_sub(1);
        }
    }

    /// Installs a new compiled policy in one step (console rule changes).
    pub fn swap_policy(&mut self, policy: CompiledPolicy) {
        self.switch.swap_policy(policy);
    }

    /// Frames each config rule matched, in config order.
    pub fn rule_hits(&self) -> Vec<u64> {
        self.rule_ids.iter().map(|id| self.switch.engine().rule_counters(*id).map_or(0, |c| c.packets)).collect()
    }

    /// Frames dropped by the landlord's cluster boundaries.
    pub fn boundary_drops(&self) -> u64 {
        self.switch.engine().boundary_drops()
    }

    /// Per-port counters line for a VM's stop report.
    pub fn port_summary(&self, port: PortId) -> String {
        let c = self.switch.counters(port);
        format!("rx={} tx={} dropped={} spoofed={}", c.rx, c.tx, c.dropped, c.spoofed)
    }
}
