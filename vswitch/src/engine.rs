//! The compiled decision engine.
//!
//! [`CompiledPolicy::compile`] turns a [`Policy`] into hash indexes:
//! - address -> cluster, for the landlord boundary;
//! - (source address, destination address) -> a bucket holding, per traffic class (TCP by
//!   port, UDP by port, ICMP, other IPv4, ARP, non-IPv4), the highest-priority rule that
//!   matches. Port ranges are flattened into sorted disjoint segments, so a bucket lookup
//!   is a binary search.
//!
//! A decision is therefore at most four hash lookups (two addresses per side) plus one binary
//! search, whatever the number of rules.
//!
//! [`Engine`] holds one compiled policy plus the counters. A new policy is compiled off to the
//! side and put in place by [`Engine::swap`], which replaces the whole compiled value in one
//! step, so a decision sees either the old policy or the new, never a mix. The engine is
//! single-threaded (`&mut self` to decide, for the counters); a multi-core caller keeps one
//! engine per core or wraps it in its own lock.

use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::net::Ipv4Addr;

use crate::frame::{FrameInfo, MacAddr, Network, Transport, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use crate::hash::FxHashMap;
use crate::policy::{Action, Address, ClusterId, Direction, Match, Policy, PortId, PortRange, Protocol, RuleId};

/// Which rule decided a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleRef {
    /// The landlord's cluster boundary (including a frame whose own addresses disagree about
    /// their cluster).
    Boundary,
    /// A tenant rule.
    Tenant(RuleId),
}

/// The engine's decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Forward,
    /// Drop it silently.
    Drop {
        /// The deciding rule.
        rule: RuleRef,
    },
    /// Drop it and send the sender a refusal (see [`crate::refuse`]).
    Refuse {
        /// The deciding tenant rule.
        rule: RuleId,
    },
}

/// Counters of one tenant rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    /// Frames the rule matched (each one dropped or refused).
    pub packets: u64,
}

/// Counters of one ingress port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames decided for this port.
    pub packets: u64,
    /// Of those, frames dropped or refused.
    pub drops: u64,
}

/// "No rule" in a bucket slot; real slots are below [`crate::policy::MAX_RULES`].
const NONE: u32 = u32::MAX;

/// The traffic classes a rule's service match is split into.
#[derive(Clone, Copy)]
enum Class {
    Tcp(u16),
    Udp(u16),
    TcpFragment,
    UdpFragment,
    Icmp,
    OtherIp,
    Arp,
    NonIp,
}

fn class_of(f: &FrameInfo) -> Class {
    match f.network {
        Network::Ipv4(ip) => match ip.transport {
            Transport::Tcp(t) => Class::Tcp(t.dst_port),
            Transport::Udp { dst_port, .. } => Class::Udp(dst_port),
            Transport::Icmp { .. } => Class::Icmp,
            Transport::Fragment => match ip.protocol {
                IPPROTO_TCP => Class::TcpFragment,
                IPPROTO_UDP => Class::UdpFragment,
                IPPROTO_ICMP => Class::Icmp,
                _ => Class::OtherIp,
            },
            Transport::Other => Class::OtherIp,
        },
        Network::Arp(_) => Class::Arp,
        Network::Other => Class::NonIp,
    }
}

/// Port segments: sorted `(start, slot)`; a segment runs to the next one's start.
#[derive(Clone, Debug, Default)]
struct Ports {
    segments: Vec<(u16, u32)>,
    /// The best slot over all segments, for fragments that carry no port.
    any: u32,
}

impl Ports {
    fn lookup(&self, port: u16) -> u32 {
        let i = self.segments.partition_point(|s| s.0 <= port);
        i.checked_sub(1).and_then(|i| self.segments.get(i)).map_or(NONE, |s| s.1)
    }

    /// Flattens possibly overlapping `(first, last, slot)` ranges into disjoint segments
    /// where each carries the lowest slot covering it: a sweep with a heap, O(n log n).
    fn build(mut ranges: Vec<(u16, u16, u32)>) -> Ports {
        if ranges.is_empty() {
            return Ports { segments: Vec::new(), any: NONE };
        }
        let any = ranges.iter().map(|r| r.2).min().unwrap_or(NONE);
        let mut points: Vec<u32> = ranges.iter().flat_map(|r| [u32::from(r.0), u32::from(r.1) + 1]).collect();
        points.sort_unstable();
        points.dedup();
        ranges.sort_unstable_by_key(|r| r.0);
        let mut heap: BinaryHeap<Reverse<(u32, u16)>> = BinaryHeap::new();
        let mut next = ranges.iter().peekable();
        let mut segments: Vec<(u16, u32)> = Vec::new();
        for p in points {
            let Ok(start) = u16::try_from(p) else { break };
            while let Some(r) = next.next_if(|r| r.0 <= start) {
                heap.push(Reverse((r.2, r.1)));
            }
            while heap.peek().is_some_and(|Reverse((_, last))| *last < start) {
                heap.pop();
            }
            let slot = heap.peek().map_or(NONE, |Reverse((s, _))| *s);
            if segments.last().map(|s| s.1) != Some(slot) {
                segments.push((start, slot));
            }
        }
        segments.shrink_to_fit();
        Ports { segments, any }
    }
}

/// Rules for one (source address, destination address) pair, by traffic class.
#[derive(Clone, Debug, Default)]
struct Bucket {
    tcp: Ports,
    udp: Ports,
    icmp: u32,
    other_ip: u32,
    arp: u32,
    non_ip: u32,
}

impl Bucket {
    fn lookup(&self, c: Class) -> u32 {
        match c {
            Class::Tcp(p) => self.tcp.lookup(p),
            Class::Udp(p) => self.udp.lookup(p),
            Class::TcpFragment => self.tcp.any,
            Class::UdpFragment => self.udp.any,
            Class::Icmp => self.icmp,
            Class::OtherIp => self.other_ip,
            Class::Arp => self.arp,
            Class::NonIp => self.non_ip,
        }
    }
}

/// A bucket under construction.
struct BucketBuilder {
    tcp: Vec<(u16, u16, u32)>,
    udp: Vec<(u16, u16, u32)>,
    icmp: u32,
    other_ip: u32,
    arp: u32,
    non_ip: u32,
}

impl Default for BucketBuilder {
    fn default() -> Self {
        BucketBuilder { tcp: Vec::new(), udp: Vec::new(), icmp: NONE, other_ip: NONE, arp: NONE, non_ip: NONE }
    }
}

/// What one rule matches, per class, whatever its endpoints.
#[derive(Clone, Default)]
struct Service {
    tcp: Vec<(u16, u16)>,
    udp: Vec<(u16, u16)>,
    icmp: bool,
    other_ip: bool,
    arp: bool,
    non_ip: bool,
}

const ALL_PORTS: (u16, u16) = (0, u16::MAX);

fn complement(r: PortRange) -> Vec<(u16, u16)> {
    let mut v = Vec::new();
    if let Some(before) = r.first.checked_sub(1) {
        v.push((0, before));
    }
    if let Some(after) = r.last.checked_add(1) {
        v.push((after, u16::MAX));
    }
    v
}

fn service_of(protocol: Protocol, ports: Option<PortRange>, matching: Match) -> Service {
    let named = ports.map_or(ALL_PORTS, |r| (r.first, r.last));
    match matching {
        Match::Only => match protocol {
            Protocol::Any if ports.is_some() => {
                Service { tcp: [named].into(), udp: [named].into(), ..Service::default() }
            }
            Protocol::Any => Service {
                tcp: [ALL_PORTS].into(),
                udp: [ALL_PORTS].into(),
                icmp: true,
                other_ip: true,
                arp: true,
                non_ip: true,
            },
            Protocol::Tcp => Service { tcp: [named].into(), ..Service::default() },
            Protocol::Udp => Service { udp: [named].into(), ..Service::default() },
            Protocol::Icmp => Service { icmp: true, ..Service::default() },
        },
        Match::AllExcept => {
            let rest = |p: Protocol| match (ports, p == protocol || protocol == Protocol::Any) {
                (_, false) => [ALL_PORTS].into(),
                (Some(r), true) => complement(r),
                (None, true) => Vec::new(),
            };
            Service {
                tcp: rest(Protocol::Tcp),
                udp: rest(Protocol::Udp),
                icmp: protocol != Protocol::Icmp,
                other_ip: true,
                arp: false,
                non_ip: true,
            }
        }
    }
}

/// A policy compiled into lookup tables; built off to the side, then given to
/// [`Engine::swap`].
#[derive(Clone, Debug, Default)]
pub struct CompiledPolicy {
    clusters: FxHashMap<Address, ClusterId>,
    index: FxHashMap<(Address, Address), Bucket>,
    /// Slot -> (rule id, action), in ascending id order (slot order is priority order).
    rules: Vec<(RuleId, Action)>,
    counters: Vec<RuleCounters>,
}

impl CompiledPolicy {
    /// Compiles `policy`. The policy was validated as rules were added, so this cannot fail.
    pub fn compile(policy: &Policy) -> CompiledPolicy {
        let clusters: FxHashMap<Address, ClusterId> = policy.boundary().iter().collect();
        let mut builders: FxHashMap<(Address, Address), BucketBuilder> = FxHashMap::default();
        let mut rules = Vec::with_capacity(policy.rule_count());
        for (slot, (id, tr)) in policy.rules().enumerate() {
            let Ok(slot) = u32::try_from(slot) else { break };
            rules.push((id, tr.rule.action));
            let r = &tr.rule;
            let svc = service_of(r.protocol, r.dst_ports, r.matching);
            let mut add = |from: &[crate::policy::Endpoint], to: &[crate::policy::Endpoint]| {
                for s in from.iter().flat_map(|e| e.addresses()) {
                    for d in to.iter().flat_map(|e| e.addresses()) {
                        let b = builders.entry((s, d)).or_default();
                        b.tcp.extend(svc.tcp.iter().map(|&(a, z)| (a, z, slot)));
                        b.udp.extend(svc.udp.iter().map(|&(a, z)| (a, z, slot)));
                        for (on, field) in [
                            (svc.icmp, &mut b.icmp),
                            (svc.other_ip, &mut b.other_ip),
                            (svc.arp, &mut b.arp),
                            (svc.non_ip, &mut b.non_ip),
                        ] {
                            if on {
                                *field = (*field).min(slot);
                            }
                        }
                    }
                }
            };
            add(&r.src, &r.dst);
            if r.direction == Direction::Both {
                add(&r.dst, &r.src);
            }
        }
        let index = builders
            .into_iter()
            .map(|(k, b)| {
                let bucket = Bucket {
                    tcp: Ports::build(b.tcp),
                    udp: Ports::build(b.udp),
                    icmp: b.icmp,
                    other_ip: b.other_ip,
                    arp: b.arp,
                    non_ip: b.non_ip,
                };
                (k, bucket)
            })
            .collect();
        let counters = alloc::vec![RuleCounters::default(); rules.len()];
        CompiledPolicy { clusters, index, rules, counters }
    }

    /// The cluster `addr` belongs to under this policy's boundary.
    pub fn cluster_of(&self, addr: Address) -> Option<ClusterId> {
        self.clusters.get(&addr).copied()
    }

    /// Number of tenant rules compiled in.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The one cluster all `addrs` that are assigned agree on; `Err` if they disagree.
    fn cluster_of_all(&self, addrs: &[Option<Address>]) -> Result<Option<ClusterId>, ()> {
        let mut found = None;
        for c in addrs.iter().flatten().filter_map(|a| self.cluster_of(*a)) {
            match found {
                Some(f) if f != c => return Err(()),
                _ => found = Some(c),
            }
        }
        Ok(found)
    }

    /// Decides `f` on addresses alone, with the destination side's addresses `dst`.
    fn evaluate_with(&self, f: &FrameInfo, dst: &[Option<Address>]) -> Verdict {
        let src = [Some(Address::Mac(f.src_mac)), f.src_ip().map(Address::Ip)];
        let boundary = Verdict::Drop { rule: RuleRef::Boundary };
        let (Ok(sc), Ok(dc)) = (self.cluster_of_all(&src), self.cluster_of_all(dst)) else { return boundary };
        if let (Some(s), Some(d)) = (sc, dc) {
            if s != d {
                return boundary;
            }
        }
        if self.index.is_empty() {
            return Verdict::Forward;
        }
        let class = class_of(f);
        let mut best = NONE;
        for s in src.iter().flatten() {
            for d in dst.iter().flatten() {
                if let Some(b) = self.index.get(&(*s, *d)) {
                    best = best.min(b.lookup(class));
                }
            }
        }
        match usize::try_from(best).ok().and_then(|i| self.rules.get(i)) {
            None => Verdict::Forward,
            Some((id, Action::Drop)) => Verdict::Drop { rule: RuleRef::Tenant(*id) },
            Some((id, Action::Refuse)) => Verdict::Refuse { rule: *id },
        }
    }

    fn slot_of(&self, id: RuleId) -> Option<usize> {
        self.rules.binary_search_by_key(&id, |r| r.0).ok()
    }
}

/// The decision engine: a compiled policy plus counters.
#[derive(Clone, Debug, Default)]
pub struct Engine {
    policy: CompiledPolicy,
    ports: BTreeMap<PortId, PortCounters>,
    boundary_drops: u64,
    generation: u64,
}

impl Engine {
    /// An engine running `policy`.
    pub fn new(policy: CompiledPolicy) -> Self {
        Engine { policy, ..Engine::default() }
    }

    /// The policy in force.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// How many times [`Engine::swap`] has run, so the caller can log which policy decided.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Puts `next` in force in one step and returns the old policy. Counters of rules that
    /// exist in both (same [`RuleId`]) carry over; port counters are kept.
    pub fn swap(&mut self, mut next: CompiledPolicy) -> CompiledPolicy {
        for (i, (id, _)) in next.rules.iter().enumerate() {
            let old = self.policy.slot_of(*id).and_then(|s| self.policy.counters.get(s));
            if let (Some(old), Some(new)) = (old, next.counters.get_mut(i)) {
                *new = *old;
            }
        }
        self.generation = self.generation.wrapping_add(1);
        core::mem::replace(&mut self.policy, next)
    }

    /// Decides a frame arriving on `ingress` by its own addresses, and counts the decision.
    pub fn decide(&mut self, f: &FrameInfo, ingress: PortId) -> Verdict {
        let v = self.evaluate(f);
        self.record(ingress, v);
        v
    }

    /// Decides a frame by its own addresses, without counting.
    pub fn evaluate(&self, f: &FrameInfo) -> Verdict {
        let dst = [Some(Address::Mac(f.dst_mac)), f.dst_ip().map(Address::Ip)];
        self.policy.evaluate_with(f, &dst)
    }

    /// Decides a flooded frame (broadcast/multicast) for one receiving VM, without counting;
    /// the switch calls this per port. The destination is that VM's addresses plus the
    /// frame's own destination IPv4, so a broadcast aimed at one cluster's address (an ARP
    /// request) does not reach another cluster's VM.
    pub fn evaluate_toward(&self, f: &FrameInfo, mac: MacAddr, ip: Option<Ipv4Addr>) -> Verdict {
        let dst = [Some(Address::Mac(mac)), ip.map(Address::Ip), f.dst_ip().map(Address::Ip)];
        self.policy.evaluate_with(f, &dst)
    }

    /// Counts a decision against its rule and, once per frame, against the ingress port.
    pub fn record(&mut self, ingress: PortId, v: Verdict) {
        self.record_port(ingress, v != Verdict::Forward);
        self.count_rule(v);
    }

    /// Counts a frame against its ingress port only; `dropped` for a frame that went nowhere
    /// for a reason other than a rule (the switch found no receiver).
    pub fn record_port(&mut self, ingress: PortId, dropped: bool) {
        let port = self.ports.entry(ingress).or_default();
        port.packets = port.packets.wrapping_add(1);
        if dropped {
            port.drops = port.drops.wrapping_add(1);
        }
    }

    /// Counts a decision against its rule only (for per-port decisions of a flood).
    pub fn count_rule(&mut self, v: Verdict) {
        let id = match v {
            Verdict::Forward => return,
            Verdict::Drop { rule: RuleRef::Boundary } => {
                self.boundary_drops = self.boundary_drops.wrapping_add(1);
                return;
            }
            Verdict::Drop { rule: RuleRef::Tenant(id) } | Verdict::Refuse { rule: id } => id,
        };
        if let Some(c) = self.policy.slot_of(id).and_then(|s| self.policy.counters.get_mut(s)) {
            c.packets = c.packets.wrapping_add(1);
        }
    }

    /// Counters of tenant rule `id`, if it is in force.
    pub fn rule_counters(&self, id: RuleId) -> Option<RuleCounters> {
        self.policy.slot_of(id).and_then(|s| self.policy.counters.get(s)).copied()
    }

    /// Counters of ingress port `port` (zero if it has seen nothing).
    pub fn port_counters(&self, port: PortId) -> PortCounters {
        self.ports.get(&port).copied().unwrap_or_default()
    }

    /// Frames dropped by the landlord boundary.
    pub fn boundary_drops(&self) -> u64 {
        self.boundary_drops
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::frame::{build, parse, TCP_SYN};
    use crate::policy::{ClusterBoundary, Endpoint, Rule};
    use alloc::vec;
    use proptest::prelude::*;

    const C1: ClusterId = ClusterId(1);
    const C2: ClusterId = ClusterId(2);
    const P: PortId = PortId(7);

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }
    fn ep(n: u8) -> Endpoint {
        Endpoint::new(mac(n), ip(n))
    }
    fn tcp(a: u8, b: u8, port: u16) -> FrameInfo {
        parse(&build::tcp_frame((mac(a), ip(a), 40000), (mac(b), ip(b), port), TCP_SYN)).unwrap()
    }
    fn udp(a: u8, b: u8, port: u16) -> FrameInfo {
        parse(&build::udp_frame((mac(a), ip(a), 40000), (mac(b), ip(b), port))).unwrap()
    }
    fn ping(a: u8, b: u8) -> FrameInfo {
        parse(&build::ping_frame((mac(a), ip(a)), (mac(b), ip(b)))).unwrap()
    }
    fn arp(a: u8, b: u8) -> FrameInfo {
        parse(&build::arp_request((mac(a), ip(a)), ip(b))).unwrap()
    }

    /// VMs 1, 2, 3 in cluster 1; 4, 5 in cluster 2.
    fn policy() -> Policy {
        let mut b = ClusterBoundary::new();
        for n in 1..=3 {
            b.assign_endpoint(ep(n), C1);
        }
        for n in 4..=5 {
            b.assign_endpoint(ep(n), C2);
        }
        Policy::new(b)
    }

    fn engine(p: &Policy) -> Engine {
        Engine::new(CompiledPolicy::compile(p))
    }

    const BOUNDARY: Verdict = Verdict::Drop { rule: RuleRef::Boundary };

    #[test]
    fn boundary_blocks_both_ways_and_allows_inside() {
        let mut e = engine(&policy());
        assert_eq!(e.decide(&tcp(1, 2, 80), P), Verdict::Forward);
        assert_eq!(e.decide(&tcp(1, 4, 80), P), BOUNDARY);
        assert_eq!(e.decide(&tcp(4, 1, 80), P), BOUNDARY);
        assert_eq!(e.decide(&arp(1, 4), P), BOUNDARY);
        assert_eq!(e.decide(&arp(4, 5), P), Verdict::Forward);
        assert_eq!(e.boundary_drops(), 3);
        assert_eq!(e.port_counters(P), PortCounters { packets: 5, drops: 3 });
    }

    #[test]
    fn unassigned_peers_pass_but_mixed_addresses_do_not() {
        let e = engine(&policy());
        // A gateway outside every cluster.
        assert_eq!(e.evaluate(&tcp(1, 99, 80)), Verdict::Forward);
        // Routed through a gateway MAC to a VM of another cluster: the IP names cluster 2.
        let mut routed = tcp(1, 4, 80);
        routed.dst_mac = mac(99);
        assert_eq!(e.evaluate(&routed), BOUNDARY);
        // A frame whose source MAC and IP name different clusters.
        let mut mixed = tcp(1, 2, 80);
        mixed.src_mac = mac(4);
        assert_eq!(e.evaluate(&mixed), BOUNDARY);
    }

    #[test]
    fn tenant_full_block_both_ways() {
        let mut p = policy();
        let id = p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(2)])).unwrap();
        let mut e = engine(&p);
        let dropped = Verdict::Drop { rule: RuleRef::Tenant(id) };
        assert_eq!(e.decide(&tcp(1, 2, 80), P), dropped);
        assert_eq!(e.decide(&ping(2, 1), P), dropped);
        assert_eq!(e.decide(&arp(1, 2), P), dropped);
        assert_eq!(e.decide(&tcp(1, 3, 80), P), Verdict::Forward);
        assert_eq!(e.rule_counters(id), Some(RuleCounters { packets: 3 }));
    }

    #[test]
    fn one_way_partial_rule_by_ip_only() {
        let mut p = policy();
        let rule = Rule {
            src: vec![Endpoint { mac: None, ip: Some(ip(1)) }],
            dst: vec![Endpoint { mac: None, ip: Some(ip(2)) }],
            direction: Direction::OneWay,
            protocol: Protocol::Tcp,
            dst_ports: Some(PortRange { first: 20, last: 23 }),
            matching: Match::Only,
            action: Action::Refuse,
        };
        let id = p.add_rule(C1, rule).unwrap();
        let e = engine(&p);
        assert_eq!(e.evaluate(&tcp(1, 2, 22)), Verdict::Refuse { rule: id });
        assert_eq!(e.evaluate(&tcp(1, 2, 24)), Verdict::Forward);
        assert_eq!(e.evaluate(&udp(1, 2, 22)), Verdict::Forward);
        assert_eq!(e.evaluate(&tcp(2, 1, 22)), Verdict::Forward);
        assert_eq!(e.evaluate(&ping(1, 2)), Verdict::Forward);
    }

    #[test]
    fn all_except_lets_only_tcp_80_and_arp_through() {
        let mut p = policy();
        let rule = Rule {
            src: vec![ep(1)],
            dst: vec![ep(2)],
            direction: Direction::Both,
            protocol: Protocol::Tcp,
            dst_ports: Some(PortRange::single(80)),
            matching: Match::AllExcept,
            action: Action::Drop,
        };
        let id = p.add_rule(C1, rule).unwrap();
        let e = engine(&p);
        let dropped = Verdict::Drop { rule: RuleRef::Tenant(id) };
        assert_eq!(e.evaluate(&tcp(1, 2, 80)), Verdict::Forward);
        assert_eq!(e.evaluate(&tcp(2, 1, 80)), Verdict::Forward);
        assert_eq!(e.evaluate(&arp(1, 2)), Verdict::Forward);
        assert_eq!(e.evaluate(&tcp(1, 2, 79)), dropped);
        assert_eq!(e.evaluate(&tcp(1, 2, 81)), dropped);
        assert_eq!(e.evaluate(&udp(1, 2, 80)), dropped);
        assert_eq!(e.evaluate(&ping(2, 1)), dropped);
    }

    #[test]
    fn fragments_fail_closed_on_port_rules() {
        let mut p = policy();
        let mut rule = Rule::block(vec![ep(1)], vec![ep(2)]);
        rule.protocol = Protocol::Udp;
        rule.dst_ports = Some(PortRange::single(53));
        let id = p.add_rule(C1, rule).unwrap();
        let e = engine(&p);
        let mut frag = udp(1, 2, 9999);
        if let Network::Ipv4(ref mut i) = frag.network {
            i.transport = Transport::Fragment;
            i.fragment_offset = 3;
        }
        assert_eq!(e.evaluate(&frag), Verdict::Drop { rule: RuleRef::Tenant(id) });
    }

    #[test]
    fn lowest_rule_id_wins_on_overlap() {
        let mut p = policy();
        let mut refuse = Rule::block(vec![ep(1)], vec![ep(2)]);
        refuse.protocol = Protocol::Tcp;
        refuse.dst_ports = Some(PortRange { first: 100, last: 200 });
        refuse.action = Action::Refuse;
        let first = p.add_rule(C1, refuse).unwrap();
        let second = p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(2)])).unwrap();
        let e = engine(&p);
        assert_eq!(e.evaluate(&tcp(1, 2, 150)), Verdict::Refuse { rule: first });
        assert_eq!(e.evaluate(&tcp(1, 2, 99)), Verdict::Drop { rule: RuleRef::Tenant(second) });
    }

    #[test]
    fn flood_evaluation_uses_the_receiving_vm() {
        let mut p = policy();
        p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(3)])).unwrap();
        let e = engine(&p);
        let bcast = arp(1, 2);
        assert_eq!(e.evaluate(&bcast), Verdict::Forward);
        assert_eq!(e.evaluate_toward(&bcast, mac(2), Some(ip(2))), Verdict::Forward);
        assert!(matches!(e.evaluate_toward(&bcast, mac(3), Some(ip(3))), Verdict::Drop { .. }));
        assert_eq!(e.evaluate_toward(&bcast, mac(4), Some(ip(4))), BOUNDARY);
    }

    #[test]
    fn swap_is_whole_and_keeps_counters() {
        let mut p = policy();
        let id = p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(2)])).unwrap();
        let mut e = engine(&p);
        e.decide(&tcp(1, 2, 80), P);
        let mut p2 = p.clone();
        let id2 = p2.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(3)])).unwrap();
        let old = e.swap(CompiledPolicy::compile(&p2));
        assert_eq!((old.rule_count(), e.policy().rule_count(), e.generation()), (1, 2, 1));
        assert_eq!(e.rule_counters(id), Some(RuleCounters { packets: 1 }));
        assert_eq!(e.rule_counters(id2), Some(RuleCounters { packets: 0 }));
        assert!(matches!(e.decide(&tcp(1, 3, 80), P), Verdict::Drop { .. }));
        p2.remove_rule(C1, id).unwrap();
        e.swap(CompiledPolicy::compile(&p2));
        assert_eq!(e.rule_counters(id), None);
        assert_eq!(e.decide(&tcp(1, 2, 80), P), Verdict::Forward);
        assert_eq!(e.port_counters(P), PortCounters { packets: 3, drops: 2 });
    }

    #[test]
    fn port_segments_flatten_overlaps() {
        let ports = Ports::build(vec![(10, 20, 5), (15, 30, 2), (25, 25, 1), (0, 65535, 9)]);
        let want = [(0, 9), (9, 9), (10, 5), (14, 5), (15, 2), (24, 2), (25, 1), (26, 2), (30, 2), (31, 9), (65535, 9)];
        for (port, slot) in want {
            assert_eq!(ports.lookup(port), slot, "port {port}");
        }
        assert_eq!(ports.any, 1);
        let top = Ports::build(vec![(65535, 65535, 3)]);
        assert_eq!((top.lookup(65534), top.lookup(65535)), (NONE, 3));
        assert_eq!(Ports::build(vec![]).lookup(0), NONE);
    }

    proptest! {
        /// Segment lookup agrees with a linear scan of the ranges.
        #[test]
        fn segments_match_linear_scan(
            ranges in proptest::collection::vec((any::<u16>(), any::<u16>(), 0u32..50), 0..20),
            probes in proptest::collection::vec(any::<u16>(), 1..50),
        ) {
            let ranges: Vec<(u16, u16, u32)> = ranges.into_iter().map(|(a, b, s)| (a.min(b), a.max(b), s)).collect();
            let ports = Ports::build(ranges.clone());
            for p in probes {
                let want = ranges.iter().filter(|r| r.0 <= p && p <= r.1).map(|r| r.2).min().unwrap_or(NONE);
                prop_assert_eq!(ports.lookup(p), want);
            }
        }
    }
}
