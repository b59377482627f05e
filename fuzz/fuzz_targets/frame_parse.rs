//! Fuzzes the vswitch frame parser on arbitrary bytes, and everything downstream that reads
//! frame bytes: the refusal builder and the switch (as from a VM port and from the uplink).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vswitch::{
    parse, refuse::refusal, ClusterBoundary, ClusterId, CompiledPolicy, Endpoint, Ipv4Addr, MacAddr, Outcome, Policy,
    PortId, Rule, Switch, SwitchConfig,
};

fn policy() -> &'static CompiledPolicy {
    static P: OnceLock<CompiledPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let vm = |n: u8| Endpoint::new(MacAddr([2, 0, 0, 0, 0, n]), Ipv4Addr::new(10, 0, 0, n));
        let mut b = ClusterBoundary::new();
        b.assign_endpoint(vm(1), ClusterId(1));
        b.assign_endpoint(vm(2), ClusterId(1));
        b.assign_endpoint(vm(3), ClusterId(2));
        let mut p = Policy::new(b);
        let mut r = Rule::block(vec![vm(1)], vec![vm(2)]);
        r.action = vswitch::Action::Refuse;
        r.protocol = vswitch::Protocol::Tcp;
        let _ = p.add_rule(ClusterId(1), r);
        CompiledPolicy::compile(&p)
    })
}

/// Three VM ports and the uplink, set up once; each input gets a copy.
fn switch() -> &'static Switch {
    static S: OnceLock<Switch> = OnceLock::new();
    S.get_or_init(|| {
        let mut sw = Switch::new(SwitchConfig { mac_table_capacity: 4, max_age: 10 }, policy().clone());
        for n in 1..=3u8 {
            sw.add_vm_port(PortId(u32::from(n)), MacAddr([2, 0, 0, 0, 0, n]), Ipv4Addr::new(10, 0, 0, n))
                .expect("vm port");
        }
        sw.set_uplink(PortId(0)).expect("uplink");
        sw
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = parse(data) {
        assert!(info.l3_offset <= data.len());
        if let Some(reply) = refusal(data, &info) {
            // A reply must itself be a well-formed frame.
            assert!(parse(&reply).is_ok());
        }
    }
    let mut sw = switch().clone();
    for port in [PortId(1), PortId(0)] {
        if let Outcome::Deliver(d) = sw.process(port, data, 0) {
            assert!(!d.is_empty());
            if port == PortId(1) {
                assert_eq!(parse(data).map(|i| i.src_mac).ok(), Some(MacAddr([2, 0, 0, 0, 0, 1])));
            }
        }
    }
});
