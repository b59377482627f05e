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
use vmm_config::net::{Action, Direction, Endpoint, Protocol};
use vswitch::engine::CompiledPolicy;
use vswitch::frame::MacAddr;
use vswitch::policy::{self, ClusterBoundary, ClusterId, Match, Policy, PortId, Rule};
use vswitch::switch::{Outcome, Switch, SwitchConfig};

/// The uplink's switch port.
pub const UPLINK_PORT: PortId = PortId(0);

/// Switch port of VM number `id`.
pub fn vm_port(id: u16) -> PortId {
    PortId(u32::from(id) + 1)
}

/// MAC address BMonitor assigns to VM `id` when the config names none:
/// locally administered, "BM", then the VM number.
pub fn assigned_mac(id: u16) -> [u8; 6] {
    let [hi, lo] = id.to_be_bytes();
    [0x02, 0x42, 0x4D, 0x00, hi, lo]
}

/// A VM's NIC identity as the switch knows it.
#[derive(Clone, Copy, Debug)]
pub struct NicIdentity {
    pub vm: u16,
    pub mac: [u8; 6],
    pub ip: [u8; 4],
}

/// The NIC of every VM that has one, in VM order.
pub fn nic_identities(config: &NodeConfig) -> Vec<NicIdentity> {
    config
        .vms
        .iter()
        .enumerate()
        .filter_map(|(i, vm)| {
            let nic = vm.nic.as_ref()?;
            let id = i as u16;
            Some(NicIdentity { vm: id, mac: nic.mac.map_or_else(|| assigned_mac(id), |m| m.0), ip: nic.ip.0 })
        })
        .collect()
}

fn cluster_id(config: &NodeConfig, name: &str) -> Option<ClusterId> {
    config.clusters.iter().position(|c| c.name == name).map(|i| ClusterId(i as u32 + 1))
}

fn endpoint(config: &NodeConfig, nics: &[NicIdentity], e: &Endpoint) -> policy::Endpoint {
    match e {
        Endpoint::Ip(ip) => policy::Endpoint { mac: None, ip: Some(Ipv4Addr::from(ip.0)) },
        Endpoint::Mac(m) => policy::Endpoint { mac: Some(MacAddr(m.0)), ip: None },
        Endpoint::Vm(name) => {
            let nic = config
                .vms
                .iter()
                .position(|v| &v.name == name)
                .and_then(|i| nics.iter().find(|n| usize::from(n.vm) == i));
            match nic {
                Some(n) => policy::Endpoint::new(MacAddr(n.mac), Ipv4Addr::from(n.ip)),
                // Validation guarantees named VMs have NICs; an empty endpoint
                // is refused by the policy if it ever happens.
                None => policy::Endpoint { mac: None, ip: None },
            }
        }
    }
}

/// Builds the policy from the config; an error names the offending rule.
pub fn build_policy(config: &NodeConfig, nics: &[NicIdentity]) -> Result<Policy, String> {
    let mut boundary = ClusterBoundary::new();
    for (i, vm) in config.vms.iter().enumerate() {
        let (Some(cluster), Some(nic)) = (vm.cluster.as_deref(), nics.iter().find(|n| usize::from(n.vm) == i)) else {
            continue;
        };
        let id = cluster_id(config, cluster).ok_or_else(|| format!("vm[{i}].cluster: unknown cluster"))?;
        boundary.assign_endpoint(policy::Endpoint::new(MacAddr(nic.mac), Ipv4Addr::from(nic.ip)), id);
    }
    for (i, c) in config.clusters.iter().enumerate() {
        let id = ClusterId(i as u32 + 1);
        for e in &c.remote {
            for addr in endpoint(config, nics, e).addresses() {
                boundary.assign(addr, id);
            }
        }
    }
    let mut policy = Policy::new(boundary);
    for (i, r) in config.rules.iter().enumerate() {
        let cluster = cluster_id(config, &r.cluster).ok_or_else(|| format!("rule[{i}].cluster: unknown cluster"))?;
        let rule = Rule {
            src: r.from.iter().map(|e| endpoint(config, nics, e)).collect(),
            dst: r.to.iter().map(|e| endpoint(config, nics, e)).collect(),
            direction: match r.direction {
                Direction::Both => policy::Direction::Both,
                Direction::OneWay => policy::Direction::OneWay,
            },
            protocol: match r.protocol {
                Protocol::Any => policy::Protocol::Any,
                Protocol::Tcp => policy::Protocol::Tcp,
                Protocol::Udp => policy::Protocol::Udp,
                Protocol::Icmp => policy::Protocol::Icmp,
            },
            dst_ports: r.ports.map(|p| policy::PortRange { first: p.first, last: p.last }),
            matching: if r.except { Match::AllExcept } else { Match::Only },
            action: match r.action {
                Action::Drop => policy::Action::Drop,
                Action::Refuse => policy::Action::Refuse,
            },
        };
        policy.add_rule(cluster, rule).map_err(|e| format!("rule[{i}]: {e}"))?;
    }
    Ok(policy)
}

/// The running switch.
pub struct Switchboard {
    switch: Switch,
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
        let policy = build_policy(config, &nics)?;
        let mut switch = Switch::new(SwitchConfig::default(), CompiledPolicy::compile(&policy));
        for n in &nics {
            switch
                .add_vm_port(vm_port(n.vm), MacAddr(n.mac), Ipv4Addr::from(n.ip))
                .map_err(|e| format!("vm[{}].nic: {e}", n.vm))?;
        }
        if uplink {
            switch.set_uplink(UPLINK_PORT).map_err(|e| format!("uplink: {e}"))?;
        }
        Ok(Switchboard { switch, switched: 0, dropped: 0 })
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

    /// Per-port counters line for a VM's stop report.
    pub fn port_summary(&self, port: PortId) -> String {
        let c = self.switch.counters(port);
        format!("rx={} tx={} dropped={} spoofed={}", c.rx, c.tx, c.dropped, c.spoofed)
    }
}
