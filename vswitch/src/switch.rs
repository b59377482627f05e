//! The learning L2 switch: VM ports and one uplink, anti-spoofing, and forwarding under the
//! engine's policy.
//!
//! - Every VM port has a MAC and IPv4 assigned by the hypervisor. A VM port only accepts
//!   untagged frames whose source MAC (and ARP sender MAC) is its own, and whose source IPv4
//!   (or ARP sender IP) is its own, or 0.0.0.0 for DHCP and ARP probes. Anything else is
//!   dropped and counted as spoofed.
//! - The uplink may not claim a local VM's MAC or IPv4 as its source either.
//! - VM MACs are static entries of the MAC table; MACs seen on the uplink are learned, up to
//!   a capacity, and age out after `max_age` ticks of a caller-supplied clock.
//! - Broadcast and multicast are flooded to every port the policy allows for that receiver.
//!   Unknown unicast goes to the uplink only: every local VM's MAC is a static entry, so an
//!   unknown MAC cannot be behind a VM port, and VMs never see other hosts' unicast.

use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;

use crate::engine::{CompiledPolicy, Engine, RuleRef, Verdict};
use crate::frame::{parse, FrameError, FrameInfo, MacAddr, Network, Transport};
use crate::policy::{Address, PortId, RuleId};
use crate::refuse::refusal;

/// Sizing of the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Most learned (uplink) MACs held at once; beyond it new MACs are not learned, so a
    /// flood of random source MACs cannot grow memory.
    pub mac_table_capacity: usize,
    /// Ticks after which a learned MAC is forgotten if not seen again.
    pub max_age: u64,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig { mac_table_capacity: 4096, max_age: 300 }
    }
}

/// What is attached to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortKind {
    Vm { mac: MacAddr, ip: Ipv4Addr },
    Uplink,
}

/// A MAC table entry.
#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortId,
    last_seen: u64,
    /// A VM's own MAC: never ages, never moves.
    pinned: bool,
}

/// Why a port could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortError {
    /// The port id is already in use.
    DuplicatePort(PortId),
    /// Another VM port has this MAC.
    MacInUse(MacAddr),
    /// Another VM port has this IPv4 address.
    IpInUse(Ipv4Addr),
    /// A group or all-zero MAC cannot be a VM's.
    BadMac(MacAddr),
    /// The switch already has an uplink.
    UplinkExists(PortId),
    /// No such port.
    NoSuchPort(PortId),
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortError::DuplicatePort(p) => write!(f, "port {}: already exists", p.0),
            PortError::MacInUse(m) => write!(f, "mac {m}: already assigned to another VM port"),
            PortError::IpInUse(ip) => write!(f, "ip {ip}: already assigned to another VM port"),
            PortError::BadMac(m) => write!(f, "mac {m}: group or zero address cannot be a VM's"),
            PortError::UplinkExists(p) => write!(f, "uplink: port {} is already the uplink", p.0),
            PortError::NoSuchPort(p) => write!(f, "port {}: no such port", p.0),
        }
    }
}

/// Why the switch dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The ingress port does not exist.
    UnknownPort,
    /// The frame did not parse.
    Malformed(FrameError),
    /// Source MAC is a group or zero address.
    BadSourceMac,
    /// A VM sent a VLAN-tagged frame (it could hop VLANs on the physical network).
    Tagged,
    /// Source MAC (or ARP sender MAC) is not the port's own.
    SpoofedMac,
    /// Source IPv4 (or ARP sender IP) is not the port's own.
    SpoofedIp,
    /// The VM's addresses are in no cluster; an unassigned VM is isolated.
    UnassignedVm,
    /// Dropped by the landlord boundary or a tenant rule.
    Policy(RuleRef),
    /// Refused by a tenant rule; the reply (if any) goes back to the ingress port.
    Refused(RuleId),
    /// No port may receive it (unknown unicast from the uplink, hairpin, flood with no
    /// allowed receiver).
    NoDestination,
}

/// One frame to hand to a port's transmit path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<'f> {
    /// The receiving port.
    pub port: PortId,
    /// The bytes: the input frame itself, or a refusal built for it.
    pub frame: Cow<'f, [u8]>,
}

/// The result of switching one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<'f> {
    /// Deliver the frame to these ports (never empty).
    Deliver(Vec<Delivery<'f>>),
    /// The frame was dropped; `reply` is a refusal to send back out of the ingress port.
    Drop {
        /// Why.
        reason: DropReason,
        /// The refusal, for [`DropReason::Refused`] where one applies.
        reply: Option<Delivery<'f>>,
    },
}

/// Per-port switch counters (the engine keeps per-rule and per-port decision counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Frames received from the port.
    pub rx: u64,
    /// Frames delivered to the port (including refusals).
    pub tx: u64,
    /// Received frames dropped, for any reason.
    pub dropped: u64,
    /// Of those, dropped for a spoofed source MAC or IPv4.
    pub spoofed: u64,
    /// Of those, dropped as malformed.
    pub malformed: u64,
}

/// The learning switch.
#[derive(Clone, Debug)]
pub struct Switch {
    config: SwitchConfig,
    ports: BTreeMap<PortId, PortKind>,
    uplink: Option<PortId>,
    table: BTreeMap<MacAddr, Entry>,
    vm_ips: BTreeMap<Ipv4Addr, PortId>,
    learned: usize,
    not_learned: u64,
    counters: BTreeMap<PortId, SwitchCounters>,
    engine: Engine,
}

impl Switch {
    /// A switch with no ports, deciding with `policy`.
    pub fn new(config: SwitchConfig, policy: CompiledPolicy) -> Self {
        Switch {
            config,
            ports: BTreeMap::new(),
            uplink: None,
            table: BTreeMap::new(),
            vm_ips: BTreeMap::new(),
            learned: 0,
            not_learned: 0,
            counters: BTreeMap::new(),
            engine: Engine::new(policy),
        }
    }

    /// Attaches a VM's NIC with the MAC and IPv4 the hypervisor assigned it.
    pub fn add_vm_port(&mut self, id: PortId, mac: MacAddr, ip: Ipv4Addr) -> Result<(), PortError> {
        if self.ports.contains_key(&id) {
            return Err(PortError::DuplicatePort(id));
        }
        if mac.is_multicast() || mac.is_zero() {
            return Err(PortError::BadMac(mac));
        }
        if self.table.get(&mac).is_some_and(|e| e.pinned) {
            return Err(PortError::MacInUse(mac));
        }
        if self.vm_ips.contains_key(&ip) {
            return Err(PortError::IpInUse(ip));
        }
        if let Some(old) = self.table.insert(mac, Entry { port: id, last_seen: 0, pinned: true }) {
            if !old.pinned {
                self.learned = self.learned.saturating_sub(1);
            }
        }
        self.vm_ips.insert(ip, id);
        self.ports.insert(id, PortKind::Vm { mac, ip });
        Ok(())
    }

    /// Attaches the uplink (the physical NIC).
    pub fn set_uplink(&mut self, id: PortId) -> Result<(), PortError> {
        if let Some(u) = self.uplink {
            return Err(PortError::UplinkExists(u));
        }
        if self.ports.contains_key(&id) {
            return Err(PortError::DuplicatePort(id));
        }
        self.ports.insert(id, PortKind::Uplink);
        self.uplink = Some(id);
        Ok(())
    }

    /// Detaches a port and forgets every MAC behind it.
    pub fn remove_port(&mut self, id: PortId) -> Result<(), PortError> {
        match self.ports.remove(&id).ok_or(PortError::NoSuchPort(id))? {
            PortKind::Vm { ip, .. } => {
                self.vm_ips.remove(&ip);
            }
            PortKind::Uplink => self.uplink = None,
        }
        self.table.retain(|_, e| e.port != id);
        self.learned = self.table.values().filter(|e| !e.pinned).count();
        self.counters.remove(&id);
        Ok(())
    }

    /// Forgets learned MACs not seen for `max_age` ticks; call it from a periodic timer.
    pub fn expire(&mut self, now: u64) {
        let max_age = self.config.max_age;
        self.table.retain(|_, e| e.pinned || now.saturating_sub(e.last_seen) <= max_age);
        self.learned = self.table.values().filter(|e| !e.pinned).count();
    }

    /// Puts a new compiled policy in force in one step; returns the old one.
    pub fn swap_policy(&mut self, next: CompiledPolicy) -> CompiledPolicy {
        self.engine.swap(next)
    }

    /// The decision engine, for its per-rule and per-port counters.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Switch counters of `port` (zero if it has seen nothing).
    pub fn counters(&self, port: PortId) -> SwitchCounters {
        self.counters.get(&port).copied().unwrap_or_default()
    }

    /// Learned (not pinned) MACs currently held.
    pub fn learned_macs(&self) -> usize {
        self.learned
    }

    /// MACs not learned because the table was full.
    pub fn not_learned(&self) -> u64 {
        self.not_learned
    }

    /// The port `mac` is known behind at tick `now`, if any.
    pub fn lookup(&self, mac: MacAddr, now: u64) -> Option<PortId> {
        let e = self.table.get(&mac)?;
        (e.pinned || now.saturating_sub(e.last_seen) <= self.config.max_age).then_some(e.port)
    }

    /// Switches one frame received on `ingress` at tick `now`.
    pub fn process<'f>(&mut self, ingress: PortId, frame: &'f [u8], now: u64) -> Outcome<'f> {
        let Some(&kind) = self.ports.get(&ingress) else {
            return Outcome::Drop { reason: DropReason::UnknownPort, reply: None };
        };
        let c = self.counters.entry(ingress).or_default();
        c.rx = c.rx.wrapping_add(1);
        let outcome = self.switch(ingress, kind, frame, now);
        let mut tx = Vec::new();
        match &outcome {
            Outcome::Deliver(d) => tx.extend(d.iter().map(|d| d.port)),
            Outcome::Drop { reason, reply } => {
                let c = self.counters.entry(ingress).or_default();
                c.dropped = c.dropped.wrapping_add(1);
                match reason {
                    DropReason::SpoofedMac | DropReason::SpoofedIp => c.spoofed = c.spoofed.wrapping_add(1),
                    DropReason::Malformed(_) => c.malformed = c.malformed.wrapping_add(1),
                    _ => {}
                }
                tx.extend(reply.iter().map(|d| d.port));
            }
        }
        for p in tx {
            let c = self.counters.entry(p).or_default();
            c.tx = c.tx.wrapping_add(1);
        }
        outcome
    }

    fn switch<'f>(&mut self, ingress: PortId, kind: PortKind, frame: &'f [u8], now: u64) -> Outcome<'f> {
        let drop = |reason| Outcome::Drop { reason, reply: None };
        let info = match parse(frame) {
            Ok(i) => i,
            Err(e) => return drop(DropReason::Malformed(e)),
        };
        if info.src_mac.is_multicast() || info.src_mac.is_zero() {
            return drop(DropReason::BadSourceMac);
        }
        if let Err(reason) = self.check_source(ingress, kind, &info) {
            return drop(reason);
        }
        if kind == PortKind::Uplink {
            self.learn(info.src_mac, ingress, now);
        }
        match self.engine.evaluate(&info) {
            Verdict::Forward => {}
            v @ Verdict::Drop { rule } => {
                self.engine.record(ingress, v);
                return drop(DropReason::Policy(rule));
            }
            v @ Verdict::Refuse { rule } => {
                self.engine.record(ingress, v);
                let reply = refusal(frame, &info).map(|f| Delivery { port: ingress, frame: Cow::Owned(f) });
                return Outcome::Drop { reason: DropReason::Refused(rule), reply };
            }
        }
        let ports = if info.dst_mac.is_multicast() {
            self.flood_targets(ingress, &info)
        } else {
            self.unicast_target(ingress, info.dst_mac, now).into_iter().collect()
        };
        if ports.is_empty() {
            self.engine.record_port(ingress, true);
            return drop(DropReason::NoDestination);
        }
        self.engine.record(ingress, Verdict::Forward);
        Outcome::Deliver(ports.into_iter().map(|port| Delivery { port, frame: Cow::Borrowed(frame) }).collect())
    }

    /// Anti-spoofing: the frame's source addresses must be the port's own (VM port), or not
    /// a local VM's (uplink).
    fn check_source(&self, ingress: PortId, kind: PortKind, info: &FrameInfo) -> Result<(), DropReason> {
        match kind {
            PortKind::Vm { mac, ip } => {
                if info.vlan_tci.is_some() {
                    return Err(DropReason::Tagged);
                }
                if info.src_mac != mac {
                    return Err(DropReason::SpoofedMac);
                }
                match info.network {
                    Network::Ipv4(p) if p.src != ip && !(p.src.is_unspecified() && is_dhcp_request(p.transport)) => {
                        return Err(DropReason::SpoofedIp)
                    }
                    Network::Arp(a) if a.sender_mac != mac => return Err(DropReason::SpoofedMac),
                    Network::Arp(a) if a.sender_ip != ip && !a.sender_ip.is_unspecified() => {
                        return Err(DropReason::SpoofedIp)
                    }
                    _ => {}
                }
                if self.engine.policy().cluster_of(Address::Mac(mac)).is_none() {
                    return Err(DropReason::UnassignedVm);
                }
                Ok(())
            }
            PortKind::Uplink => {
                if self.table.get(&info.src_mac).is_some_and(|e| e.pinned && e.port != ingress) {
                    return Err(DropReason::SpoofedMac);
                }
                if let Network::Arp(a) = info.network {
                    if self.table.get(&a.sender_mac).is_some_and(|e| e.pinned) {
                        return Err(DropReason::SpoofedMac);
                    }
                }
                if info.src_ip().is_some_and(|ip| self.vm_ips.contains_key(&ip)) {
                    return Err(DropReason::SpoofedIp);
                }
                Ok(())
            }
        }
    }

    fn learn(&mut self, mac: MacAddr, port: PortId, now: u64) {
        match self.table.get_mut(&mac) {
            Some(e) if e.pinned => {}
            Some(e) => {
                e.port = port;
                e.last_seen = now;
            }
            None if self.learned < self.config.mac_table_capacity => {
                self.table.insert(mac, Entry { port, last_seen: now, pinned: false });
                self.learned = self.learned.saturating_add(1);
            }
            None => self.not_learned = self.not_learned.wrapping_add(1),
        }
    }

    /// A VM port may receive only if its VM is in a cluster.
    fn vm_assigned(&self, mac: MacAddr) -> bool {
        self.engine.policy().cluster_of(Address::Mac(mac)).is_some()
    }

    fn unicast_target(&self, ingress: PortId, dst: MacAddr, now: u64) -> Option<PortId> {
        let port = match self.lookup(dst, now) {
            Some(p) => p,
            None if self.uplink != Some(ingress) => self.uplink?,
            None => return None,
        };
        match self.ports.get(&port)? {
            _ if port == ingress => None,
            PortKind::Vm { mac, .. } if !self.vm_assigned(*mac) => None,
            _ => Some(port),
        }
    }

    fn flood_targets(&mut self, ingress: PortId, info: &FrameInfo) -> Vec<PortId> {
        let mut out = Vec::new();
        let mut refused = Vec::new();
        for (&port, &kind) in &self.ports {
            if port == ingress {
                continue;
            }
            match kind {
                PortKind::Uplink => out.push(port),
                PortKind::Vm { mac, ip } if self.vm_assigned(mac) => {
                    match self.engine.evaluate_toward(info, mac, Some(ip)) {
                        Verdict::Forward => out.push(port),
                        v => refused.push(v),
                    }
                }
                PortKind::Vm { .. } => {}
            }
        }
        for v in refused {
            self.engine.count_rule(v);
        }
        out
    }
}

/// A DHCP client message (UDP 68 -> 67), the one thing a VM may send from 0.0.0.0.
fn is_dhcp_request(t: Transport) -> bool {
    matches!(t, Transport::Udp { src_port: 68, dst_port: 67 })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::frame::{build, TCP_SYN};
    use crate::policy::{Action, ClusterBoundary, ClusterId, Endpoint, Policy, PortRange, Protocol, Rule};
    use alloc::vec;

    const UPLINK: PortId = PortId(0);
    const GW: u8 = 200;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }
    fn ep(n: u8) -> Endpoint {
        Endpoint::new(mac(n), ip(n))
    }
    fn port(n: u8) -> PortId {
        PortId(u32::from(n))
    }

    /// VMs 1, 2 in cluster 1; 3 in cluster 2; 9 attached but assigned to no cluster.
    fn policy() -> Policy {
        let mut b = ClusterBoundary::new();
        b.assign_endpoint(ep(1), ClusterId(1));
        b.assign_endpoint(ep(2), ClusterId(1));
        b.assign_endpoint(ep(3), ClusterId(2));
        Policy::new(b)
    }

    fn switch_with(p: &Policy, config: SwitchConfig) -> Switch {
        let mut s = Switch::new(config, CompiledPolicy::compile(p));
        for n in [1, 2, 3, 9] {
            s.add_vm_port(port(n), mac(n), ip(n)).unwrap();
        }
        s.set_uplink(UPLINK).unwrap();
        s
    }

    fn switch() -> Switch {
        switch_with(&policy(), SwitchConfig::default())
    }

    fn ports_of(o: &Outcome<'_>) -> Vec<PortId> {
        match o {
            Outcome::Deliver(d) => d.iter().map(|d| d.port).collect(),
            Outcome::Drop { .. } => vec![],
        }
    }

    fn reason(o: &Outcome<'_>) -> Option<DropReason> {
        match o {
            Outcome::Drop { reason, .. } => Some(*reason),
            Outcome::Deliver(_) => None,
        }
    }

    fn tcp(a: u8, b: u8) -> Vec<u8> {
        build::tcp_frame((mac(a), ip(a), 40000), (mac(b), ip(b), 80), TCP_SYN)
    }

    #[test]
    fn unicast_inside_a_cluster_and_blocked_across() {
        let mut s = switch();
        let f = tcp(1, 2);
        let o = s.process(port(1), &f, 0);
        assert_eq!(o, Outcome::Deliver(vec![Delivery { port: port(2), frame: Cow::Borrowed(&f[..]) }]));
        assert_eq!(reason(&s.process(port(1), &tcp(1, 3), 0)), Some(DropReason::Policy(RuleRef::Boundary)));
        assert_eq!(reason(&s.process(port(3), &tcp(3, 1), 0)), Some(DropReason::Policy(RuleRef::Boundary)));
        assert_eq!(s.counters(port(1)), SwitchCounters { rx: 2, tx: 0, dropped: 1, spoofed: 0, malformed: 0 });
        assert_eq!(s.counters(port(2)).tx, 1);
        assert_eq!(s.engine().boundary_drops(), 2);
    }

    #[test]
    fn broadcast_floods_only_to_allowed_ports() {
        let mut s = switch();
        let arp = build::arp_request((mac(1), ip(1)), ip(2));
        assert_eq!(ports_of(&s.process(port(1), &arp, 0)), vec![UPLINK, port(2)]);
        // An external ARP request reaches the clusters of the address it asks for.
        let ext = build::arp_request((mac(GW), ip(GW)), ip(1));
        assert_eq!(ports_of(&s.process(UPLINK, &ext, 0)), vec![port(1), port(2)]);
        // A general broadcast reaches every assigned VM, not the unassigned one.
        let dhcp = build::udp_frame((mac(GW), ip(GW), 67), (MacAddr::BROADCAST, Ipv4Addr::BROADCAST, 68));
        assert_eq!(ports_of(&s.process(UPLINK, &dhcp, 0)), vec![port(1), port(2), port(3)]);
    }

    #[test]
    fn tenant_rules_apply_to_floods_and_refusals_reply_to_sender() {
        let mut p = policy();
        p.add_rule(ClusterId(1), Rule::block(vec![ep(1)], vec![ep(2)])).unwrap();
        let mut s = switch_with(&p, SwitchConfig::default());
        let arp = build::arp_request((mac(1), ip(1)), ip(GW));
        assert_eq!(ports_of(&s.process(port(1), &arp, 0)), vec![UPLINK]);

        let mut p2 = p.clone();
        p2.remove_rule(ClusterId(1), RuleId(1)).unwrap();
        let mut r = Rule::block(vec![ep(1)], vec![ep(2)]);
        r.protocol = Protocol::Tcp;
        r.dst_ports = Some(PortRange::single(80));
        r.action = Action::Refuse;
        let id = p2.add_rule(ClusterId(1), r).unwrap();
        s.swap_policy(CompiledPolicy::compile(&p2));
        let f = tcp(1, 2);
        let Outcome::Drop { reason, reply: Some(reply) } = s.process(port(1), &f, 0) else { panic!("no reply") };
        assert_eq!((reason, reply.port), (DropReason::Refused(id), port(1)));
        let r = parse(&reply.frame).unwrap();
        assert_eq!((r.src_mac, r.dst_mac), (mac(2), mac(1)));
        assert_eq!(s.engine().rule_counters(id).unwrap().packets, 1);
        assert_eq!(s.counters(port(1)).tx, 1);
    }

    #[test]
    fn anti_spoofing_on_vm_ports() {
        let mut s = switch();
        let spoof = |s: &mut Switch, f: &[u8]| reason(&s.process(port(1), f, 0));
        assert_eq!(spoof(&mut s, &tcp(2, 1)), Some(DropReason::SpoofedMac));
        let wrong_ip = build::tcp_frame((mac(1), ip(2), 1), (mac(2), ip(2), 80), TCP_SYN);
        assert_eq!(spoof(&mut s, &wrong_ip), Some(DropReason::SpoofedIp));
        let arp_ip = build::arp_request((mac(1), ip(7)), ip(2));
        assert_eq!(spoof(&mut s, &arp_ip), Some(DropReason::SpoofedIp));
        let mut arp_mac = build::arp_request((mac(1), ip(1)), ip(2));
        arp_mac[22..28].copy_from_slice(&mac(2).0);
        assert_eq!(spoof(&mut s, &arp_mac), Some(DropReason::SpoofedMac));
        let mut tagged = tcp(1, 2)[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0, 0, 5]);
        tagged.extend_from_slice(&tcp(1, 2)[12..]);
        assert_eq!(spoof(&mut s, &tagged), Some(DropReason::Tagged));
        let mut group_src = tcp(1, 2);
        group_src[6] = 1;
        assert_eq!(spoof(&mut s, &group_src), Some(DropReason::BadSourceMac));
        assert_eq!(spoof(&mut s, &[0u8; 5]), Some(DropReason::Malformed(FrameError::TooShortForEthernet)));
        assert_eq!(s.counters(port(1)), SwitchCounters { rx: 7, tx: 0, dropped: 7, spoofed: 4, malformed: 1 });
        // DHCP discover and ARP probe from 0.0.0.0 are allowed.
        let zero = Ipv4Addr::UNSPECIFIED;
        let discover = build::udp_frame((mac(1), zero, 68), (MacAddr::BROADCAST, Ipv4Addr::BROADCAST, 67));
        assert!(matches!(s.process(port(1), &discover, 0), Outcome::Deliver(_)));
        let probe = build::arp_request((mac(1), zero), ip(1));
        assert!(matches!(s.process(port(1), &probe, 0), Outcome::Deliver(_)));
        let not_dhcp = build::udp_frame((mac(1), zero, 5), (MacAddr::BROADCAST, Ipv4Addr::BROADCAST, 67));
        assert_eq!(spoof(&mut s, &not_dhcp), Some(DropReason::SpoofedIp));
    }

    #[test]
    fn uplink_may_not_impersonate_local_vms() {
        let mut s = switch();
        assert_eq!(reason(&s.process(UPLINK, &tcp(1, 2), 0)), Some(DropReason::SpoofedMac));
        let f = build::tcp_frame((mac(GW), ip(1), 1), (mac(2), ip(2), 80), TCP_SYN);
        assert_eq!(reason(&s.process(UPLINK, &f, 0)), Some(DropReason::SpoofedIp));
        assert_eq!(s.lookup(mac(1), 0), Some(port(1)));
    }

    #[test]
    fn unassigned_vm_is_isolated_and_unknown_ports_dropped() {
        let mut s = switch();
        assert_eq!(reason(&s.process(port(9), &tcp(9, 1), 0)), Some(DropReason::UnassignedVm));
        assert_eq!(reason(&s.process(port(1), &tcp(1, 9), 0)), Some(DropReason::NoDestination));
        assert_eq!(reason(&s.process(port(77), &tcp(1, 2), 0)), Some(DropReason::UnknownPort));
        assert_eq!(s.engine().boundary_drops(), 0);
        assert_eq!(s.engine().port_counters(port(1)), crate::PortCounters { packets: 1, drops: 1 });
    }

    #[test]
    fn learning_with_capacity_and_aging() {
        let mut s = switch_with(&policy(), SwitchConfig { mac_table_capacity: 2, max_age: 10 });
        // Unknown unicast from a VM goes to the uplink only.
        assert_eq!(ports_of(&s.process(port(1), &tcp(1, 50), 0)), vec![UPLINK]);
        // Unknown unicast from the uplink has nowhere to go.
        assert_eq!(reason(&s.process(UPLINK, &tcp(50, 51), 0)), Some(DropReason::NoDestination));
        assert_eq!(s.lookup(mac(50), 0), Some(UPLINK));
        s.process(UPLINK, &tcp(51, 1), 5);
        s.process(UPLINK, &tcp(52, 1), 5);
        assert_eq!((s.learned_macs(), s.not_learned()), (2, 1));
        assert_eq!(s.lookup(mac(52), 5), None);
        assert_eq!(s.lookup(mac(50), 11), None, "aged out");
        assert_eq!(s.lookup(mac(51), 11), Some(UPLINK));
        s.expire(11);
        assert_eq!(s.learned_macs(), 1);
        s.process(UPLINK, &tcp(52, 1), 12);
        assert_eq!(s.lookup(mac(52), 12), Some(UPLINK));
        assert_eq!(s.lookup(mac(1), 1_000_000), Some(port(1)), "VM MACs never age");
        s.remove_port(UPLINK).unwrap();
        assert_eq!((s.learned_macs(), s.lookup(mac(52), 12)), (0, None));
        assert_eq!(reason(&s.process(port(1), &tcp(1, 50), 0)), Some(DropReason::NoDestination));
    }

    #[test]
    fn port_management_errors() {
        let mut s = switch();
        assert_eq!(s.add_vm_port(port(1), mac(40), ip(40)), Err(PortError::DuplicatePort(port(1))));
        assert_eq!(s.add_vm_port(port(40), mac(1), ip(40)), Err(PortError::MacInUse(mac(1))));
        assert_eq!(s.add_vm_port(port(40), mac(40), ip(1)), Err(PortError::IpInUse(ip(1))));
        assert_eq!(s.add_vm_port(port(40), MacAddr::BROADCAST, ip(40)), Err(PortError::BadMac(MacAddr::BROADCAST)));
        assert_eq!(s.set_uplink(PortId(99)), Err(PortError::UplinkExists(UPLINK)));
        assert_eq!(s.remove_port(PortId(99)), Err(PortError::NoSuchPort(PortId(99))));
        s.remove_port(port(2)).unwrap();
        assert_eq!(s.lookup(mac(2), 0), None);
        s.add_vm_port(port(2), mac(2), ip(2)).unwrap();
        assert_eq!(alloc::format!("{}", PortError::IpInUse(ip(1))), "ip 10.0.0.1: already assigned to another VM port");
    }
}
