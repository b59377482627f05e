//! Property tests of the switch's security invariants, through the public API only.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use proptest::prelude::*;
use vswitch::frame::{build, TCP_SYN};
use vswitch::{
    parse, Action, Address, ClusterBoundary, ClusterId, CompiledPolicy, Direction, Endpoint, Engine, Ipv4Addr, MacAddr,
    Match, Outcome, Policy, PortId, PortRange, Protocol, Rule, Switch, SwitchConfig, Verdict,
};

const MACHINES: u8 = 10;

fn mac(n: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, 1, n])
}
fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, n)
}

/// A tenant rule as random choices, turned into a [`Rule`] by [`make_rule`].
#[derive(Clone, Debug)]
struct RuleSpec {
    cluster: u32,
    src: Vec<(u8, u8)>,
    dst: Vec<(u8, u8)>,
    both: bool,
    protocol: u8,
    ports: Option<(u16, u16)>,
    all_except: bool,
    refuse: bool,
    /// Move endpoints onto machines of the rule's cluster, so most rules are accepted;
    /// otherwise endpoints are wherever they fall, so many are refused.
    honest: bool,
}

/// `naming`: 0 = MAC only, 1 = IPv4 only, 2 = both.
fn endpoint((n, naming): (u8, u8)) -> Endpoint {
    Endpoint { mac: (naming != 1).then(|| mac(n)), ip: (naming != 0).then(|| ip(n)) }
}

fn make_rule(s: &RuleSpec) -> Rule {
    Rule {
        src: s.src.iter().copied().map(endpoint).collect(),
        dst: s.dst.iter().copied().map(endpoint).collect(),
        direction: if s.both { Direction::Both } else { Direction::OneWay },
        protocol: [Protocol::Any, Protocol::Tcp, Protocol::Udp, Protocol::Icmp][usize::from(s.protocol % 4)],
        dst_ports: s.ports.map(|(a, b)| PortRange { first: a, last: b }),
        matching: if s.all_except { Match::AllExcept } else { Match::Only },
        action: if s.refuse { Action::Refuse } else { Action::Drop },
    }
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    let ep = (0..MACHINES, 0u8..3);
    (
        0u32..3,
        proptest::collection::vec(ep.clone(), 0..3),
        proptest::collection::vec(ep, 0..3),
        any::<bool>(),
        any::<u8>(),
        proptest::option::of((0u16..200, 0u16..200)),
        any::<bool>(),
        any::<bool>(),
        proptest::bool::weighted(0.8),
    )
        .prop_map(|(cluster, src, dst, both, protocol, ports, all_except, refuse, honest)| RuleSpec {
            cluster,
            src,
            dst,
            both,
            protocol,
            ports,
            all_except,
            refuse,
            honest,
        })
}

/// A boundary: for each machine, the cluster of its MAC and of its IPv4 (3 = unassigned);
/// usually the same, sometimes not, to exercise inconsistent naming.
fn boundary_spec() -> impl Strategy<Value = Vec<(u32, u32)>> {
    proptest::collection::vec((0u32..4, 0u32..4, any::<bool>()), MACHINES as usize)
        .prop_map(|v| v.into_iter().map(|(a, b, same)| (a, if same { a } else { b })).collect())
}

fn make_boundary(spec: &[(u32, u32)]) -> ClusterBoundary {
    let mut b = ClusterBoundary::new();
    for (n, &(mc, ic)) in (0u8..).zip(spec) {
        if mc < 3 {
            b.assign(Address::Mac(mac(n)), ClusterId(mc));
        }
        if ic < 3 {
            b.assign(Address::Ip(ip(n)), ClusterId(ic));
        }
    }
    b
}

/// Moves each endpoint of `r` to the next machine wholly in the rule's cluster, if any.
fn make_honest(boundary: &[(u32, u32)], r: &RuleSpec) -> RuleSpec {
    let mut r = r.clone();
    let members: Vec<u8> =
        (0u8..).zip(boundary).filter(|(_, &(m, i))| m == r.cluster && i == r.cluster).map(|(n, _)| n).collect();
    if !members.is_empty() {
        for e in r.src.iter_mut().chain(r.dst.iter_mut()) {
            e.0 = members[usize::from(e.0) % members.len()];
        }
    }
    r
}

fn make_policy(boundary: &[(u32, u32)], rules: &[RuleSpec]) -> Policy {
    let mut p = Policy::new(make_boundary(boundary));
    for r in rules {
        let r = &if r.honest { make_honest(boundary, r) } else { r.clone() };
        let before = p.rule_count();
        if p.add_rule(ClusterId(r.cluster), make_rule(r)).is_err() {
            assert_eq!(p.rule_count(), before, "a refused rule changed the policy");
        }
    }
    p
}

/// A frame from machine `a`'s MAC and `a2`'s IPv4 to machine `b`'s MAC and `b2`'s IPv4.
fn make_frame(kind: u8, (a, a2): (u8, u8), (b, b2): (u8, u8), port: u16) -> Vec<u8> {
    match kind % 4 {
        0 => build::tcp_frame((mac(a), ip(a2), 40000), (mac(b), ip(b2), port), TCP_SYN),
        1 => build::udp_frame((mac(a), ip(a2), 40000), (mac(b), ip(b2), port)),
        2 => build::ping_frame((mac(a), ip(a2)), (mac(b), ip(b2))),
        _ => build::arp_request((mac(a), ip(a2)), ip(b2)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No accepted tenant rule widens a landlord boundary: whatever the boundary and the
    /// rules, a frame whose addresses name two different clusters is never forwarded.
    #[test]
    fn no_tenant_rule_widens_a_boundary(
        boundary in boundary_spec(),
        rules in proptest::collection::vec(rule_spec(), 0..12),
        frames in proptest::collection::vec((any::<u8>(), (0..MACHINES, 0..MACHINES), (0..MACHINES, 0..MACHINES), 0u16..200, any::<bool>()), 1..30),
    ) {
        let policy = make_policy(&boundary, &rules);
        let b = policy.boundary().clone();
        let mut engine = Engine::new(CompiledPolicy::compile(&policy));
        for (kind, mut src, mut dst, port, inside) in frames {
            if inside {
                src = (src.0, src.0);
                // Aim at the sender's own cluster, where tenant rules apply.
                let same: Vec<u8> = (0..MACHINES).filter(|&n| boundary[usize::from(n)] == boundary[usize::from(src.0)]).collect();
                let n = same[usize::from(dst.0) % same.len()];
                dst = (n, n);
            }
            let bytes = make_frame(kind, src, dst, port);
            let info = parse(&bytes).unwrap();
            let mut clusters: Vec<ClusterId> = [
                Some(Address::Mac(info.src_mac)),
                info.src_ip().map(Address::Ip),
                Some(Address::Mac(info.dst_mac)),
                info.dst_ip().map(Address::Ip),
            ]
            .into_iter()
            .flatten()
            .filter_map(|a| b.cluster_of(a))
            .collect();
            clusters.sort_unstable();
            clusters.dedup();
            let verdict = engine.decide(&info, PortId(1));
            if clusters.len() > 1 {
                prop_assert_ne!(verdict, Verdict::Forward, "crossed {:?}", clusters);
            }
        }
    }

    /// Through the switch: a VM's frame is never delivered to a VM of another cluster.
    #[test]
    fn switch_never_delivers_across_clusters(
        clusters in proptest::collection::vec(0u32..4, MACHINES as usize),
        rules in proptest::collection::vec(rule_spec(), 0..8),
        frames in proptest::collection::vec((any::<u8>(), 0..MACHINES, 0..MACHINES, any::<bool>(), 0u16..200), 1..30),
    ) {
        let spec: Vec<(u32, u32)> = clusters.iter().map(|&c| (c, c)).collect();
        let policy = make_policy(&spec, &rules);
        let mut sw = Switch::new(SwitchConfig::default(), CompiledPolicy::compile(&policy));
        for n in 0..MACHINES {
            sw.add_vm_port(PortId(u32::from(n)), mac(n), ip(n)).unwrap();
        }
        sw.set_uplink(PortId(100)).unwrap();
        for (kind, a, b, broadcast, port) in frames {
            let mut bytes = make_frame(kind, (a, a), (b, b), port);
            if broadcast {
                bytes[..6].copy_from_slice(&MacAddr::BROADCAST.0);
            }
            if let Outcome::Deliver(d) = sw.process(PortId(u32::from(a)), &bytes, 0) {
                let from = clusters[usize::from(a)];
                prop_assert!(from < 3, "an unassigned VM sent a frame");
                for del in d {
                    if del.port != PortId(100) {
                        let to = clusters[usize::try_from(del.port.0).unwrap()];
                        prop_assert_eq!(from, to, "delivered {} -> {:?}", a, del.port);
                    }
                }
            }
        }
    }

    /// Anti-spoofing: a VM port never forwards a frame whose source MAC is not its own, or
    /// whose source IPv4 is neither its own nor 0.0.0.0.
    #[test]
    fn vm_port_never_forwards_spoofed_frames(
        frames in proptest::collection::vec((any::<u8>(), 0..4u8, 0..4u8, 0..4u8, 0u16..200, proptest::collection::vec(any::<u8>(), 0..80)), 1..40),
    ) {
        let mut b = ClusterBoundary::new();
        for n in 0..4 {
            b.assign_endpoint(Endpoint::new(mac(n), ip(n)), ClusterId(1));
        }
        let mut sw = Switch::new(SwitchConfig::default(), CompiledPolicy::compile(&Policy::new(b)));
        for n in 0..4 {
            sw.add_vm_port(PortId(u32::from(n)), mac(n), ip(n)).unwrap();
        }
        sw.set_uplink(PortId(100)).unwrap();
        let me = 0u8;
        for (kind, src_mac, src_ip, dst, port, raw) in frames {
            // Half structured frames with random source addresses, half mutated raw bytes.
            let bytes = if kind & 0x80 == 0 {
                make_frame(kind, (src_mac, src_ip), (dst, dst), port)
            } else {
                let mut f = make_frame(kind, (me, me), (dst, dst), port);
                for (i, v) in raw.chunks(2).filter_map(|c| c.first().zip(c.get(1))) {
                    let len = f.len();
                    f[usize::from(*i) % len] = *v;
                }
                f
            };
            if let Outcome::Deliver(_) = sw.process(PortId(u32::from(me)), &bytes, 0) {
                let info = parse(&bytes).unwrap();
                prop_assert_eq!(info.src_mac, mac(me));
                if let Some(s) = info.src_ip() {
                    prop_assert!(s == ip(me) || s.is_unspecified(), "forwarded source ip {}", s);
                }
                if let vswitch::Network::Arp(a) = info.network {
                    prop_assert_eq!(a.sender_mac, mac(me));
                }
            }
        }
        let c = sw.counters(PortId(u32::from(me)));
        prop_assert!(c.spoofed <= c.dropped && c.dropped <= c.rx);
    }

    /// The parser never panics on arbitrary bytes, of any length up to a jumbo frame.
    #[test]
    fn parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse(&bytes);
    }
}
