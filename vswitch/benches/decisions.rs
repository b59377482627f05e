//! Decisions per second of the compiled engine at 10, 1,000 and 100,000 tenant rules.
//!
//! Run: `cargo bench -p vswitch`. Each iteration decides a batch of 1,024 pre-parsed TCP/UDP
//! frames between machines of one cluster, about a third of which match a rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vswitch::frame::{build, TCP_SYN};
use vswitch::{
    parse, Action, ClusterBoundary, ClusterId, CompiledPolicy, Direction, Endpoint, Engine, FrameInfo, Ipv4Addr,
    MacAddr, Match, Policy, PortId, PortRange, Protocol, Rule,
};

const MACHINES: u32 = 1000;
const BATCH: usize = 1024;

fn mac(n: u32) -> MacAddr {
    let [_, a, b, c] = n.to_be_bytes();
    MacAddr([2, 0, 0, a, b, c])
}
fn ip(n: u32) -> Ipv4Addr {
    let [_, a, b, c] = n.to_be_bytes();
    Ipv4Addr::new(10, a, b, c)
}

/// A small deterministic generator, so every run measures the same policy and frames.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

fn policy(rules: usize) -> Policy {
    let mut b = ClusterBoundary::new();
    for n in 0..MACHINES {
        b.assign_endpoint(Endpoint::new(mac(n), ip(n)), ClusterId(1));
    }
    let mut p = Policy::new(b);
    let mut rng = Lcg(1);
    for k in 0..rules {
        let (s, d) = (rng.next() % MACHINES, rng.next() % MACHINES);
        let port = (rng.next() % 1000) as u16;
        let ep = |n: u32, by_mac: bool| {
            if by_mac {
                Endpoint { mac: Some(mac(n)), ip: None }
            } else {
                Endpoint { mac: None, ip: Some(ip(n)) }
            }
        };
        let rule = Rule {
            src: vec![ep(s, k % 3 == 0)],
            dst: vec![ep(d, k % 5 == 0)],
            direction: if k % 2 == 0 { Direction::OneWay } else { Direction::Both },
            protocol: if k % 4 == 0 { Protocol::Udp } else { Protocol::Tcp },
            dst_ports: Some(PortRange { first: port, last: port + (k % 10) as u16 }),
            matching: if k % 7 == 0 { Match::AllExcept } else { Match::Only },
            action: if k % 2 == 0 { Action::Drop } else { Action::Refuse },
        };
        p.add_rule(ClusterId(1), rule).expect("valid rule");
    }
    p
}

fn frames() -> Vec<FrameInfo> {
    let mut rng = Lcg(7);
    (0..BATCH)
        .map(|i| {
            let (s, d) = (rng.next() % MACHINES, rng.next() % MACHINES);
            let port = (rng.next() % 1000) as u16;
            let bytes = if i % 4 == 0 {
                build::udp_frame((mac(s), ip(s), 40000), (mac(d), ip(d), port))
            } else {
                build::tcp_frame((mac(s), ip(s), 40000), (mac(d), ip(d), port), TCP_SYN)
            };
            parse(&bytes).unwrap()
        })
        .collect()
}

fn decisions(c: &mut Criterion) {
    let frames = frames();
    let mut group = c.benchmark_group("decide");
    group.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    group.throughput(Throughput::Elements(BATCH as u64));
    for rules in [10usize, 1_000, 100_000] {
        let mut engine = Engine::new(CompiledPolicy::compile(&policy(rules)));
        let forwarded = frames.iter().filter(|f| engine.evaluate(f) == vswitch::Verdict::Forward).count();
        eprintln!("{rules} rules: {forwarded}/{BATCH} frames forwarded");
        group.bench_function(format!("{rules}_rules"), |b| {
            b.iter(|| {
                for f in &frames {
                    black_box(engine.decide(black_box(f), PortId(1)));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
