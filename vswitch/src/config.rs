//! From the node config's network vocabulary (clusters, VM NICs, tenant
//! rules) to a [`Policy`]. Shared by the image builder, which refuses a bad
//! policy before anything boots, and the hypervisor, which checks it again.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use vmm_config::config::NodeConfig;
use vmm_config::net::{Action, Direction, Endpoint, Protocol};

use crate::frame::MacAddr;
use crate::policy::{self, ClusterBoundary, ClusterId, Match, Policy, Rule, RuleId};

/// MAC address BMonitor assigns to VM `id` when the config names none:
/// locally administered, "BM", then the VM number.
pub fn assigned_mac(id: u16) -> [u8; 6] {
    let [hi, lo] = id.to_be_bytes();
    [0x02, 0x42, 0x4D, 0x00, hi, lo]
}

/// A VM's NIC identity as the switch knows it.
#[derive(Clone, Copy, Debug)]
pub struct NicIdentity {
    /// VM number (position in the config).
    pub vm: u16,
    /// Its MAC, configured or assigned.
    pub mac: [u8; 6],
    /// Its only permitted source IPv4.
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
/// Also returns each config rule's id in the policy, in config order.
pub fn build_policy(config: &NodeConfig, nics: &[NicIdentity]) -> Result<(Policy, Vec<RuleId>), String> {
    build_policy_with(config, nics, &[])
}

/// A NIC that joined at run time (a VM the consoles created): its cluster
/// number (1-based, config order), MAC and IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtraNic {
    /// Cluster number.
    pub cluster: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// IPv4 address.
    pub ip: [u8; 4],
}

/// As [`build_policy`], with NICs that joined at run time as members of
/// their clusters.
pub fn build_policy_with(
    config: &NodeConfig,
    nics: &[NicIdentity],
    extra: &[ExtraNic],
) -> Result<(Policy, Vec<RuleId>), String> {
    let mut boundary = ClusterBoundary::new();
    for e in extra {
        if e.cluster == 0 || e.cluster as usize > config.clusters.len() {
            return Err(format!("cluster {}: not a cluster of this node", e.cluster));
        }
        boundary.assign_endpoint(policy::Endpoint::new(MacAddr(e.mac), Ipv4Addr::from(e.ip)), ClusterId(e.cluster));
    }
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
    let mut ids = Vec::new();
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
        ids.push(policy.add_rule(cluster, rule).map_err(|e| format!("rule[{i}]: {e}"))?);
    }
    Ok((policy, ids))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use vmm_config::config::VmConfig;
    use vmm_config::net::{ClusterConfig, Ipv4, NicConfig, RuleConfig};

    fn node() -> NodeConfig {
        let vm = |name: &str, cluster: &str, ip: u8| VmConfig {
            name: name.into(),
            memory_mib: 8,
            kernel: "k".into(),
            cluster: Some(cluster.into()),
            nic: Some(NicConfig { ip: Ipv4([10, 0, 0, ip]), mac: None }),
            ..Default::default()
        };
        NodeConfig {
            vms: alloc::vec![vm("a1", "a", 1), vm("a2", "a", 2), vm("b1", "b", 3)],
            clusters: alloc::vec![
                ClusterConfig { name: "a".into(), remote: alloc::vec![], ..Default::default() },
                ClusterConfig {
                    name: "b".into(),
                    remote: alloc::vec!["10.9.9.9".parse().unwrap()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn rule(from: &str, to: &str) -> RuleConfig {
        RuleConfig {
            cluster: "a".into(),
            from: alloc::vec![from.parse().unwrap()],
            to: alloc::vec![to.parse().unwrap()],
            direction: Default::default(),
            protocol: Default::default(),
            ports: None,
            except: false,
            action: Default::default(),
        }
    }

    #[test]
    fn assigns_macs_and_builds_rules() {
        let mut c = node();
        c.rules.push(rule("a1", "a2"));
        let nics = nic_identities(&c);
        assert_eq!(nics[2].mac, [0x02, 0x42, 0x4D, 0, 0, 2]);
        let (policy, ids) = build_policy(&c, &nics).unwrap();
        assert_eq!((policy.rule_count(), ids.len()), (1, 1));
    }

    #[test]
    fn rules_reaching_outside_the_cluster_are_refused_with_the_rule_named() {
        let c = node();
        let nics = nic_identities(&c);
        let mut bad = c.clone();
        bad.rules.push(rule("a1", "10.0.0.3"));
        let e = build_policy(&bad, &nics).unwrap_err();
        assert!(e.starts_with("rule[0]: dst[0]"), "{e}");
        let mut remote = c.clone();
        remote.rules.push(rule("10.9.9.9", "a2"));
        assert!(build_policy(&remote, &nics).unwrap_err().starts_with("rule[0]: src[0]"));
        let mut outside = c;
        outside.rules.push(rule("a1", "192.168.1.1"));
        assert!(build_policy(&outside, &nics).is_err());
    }
}
