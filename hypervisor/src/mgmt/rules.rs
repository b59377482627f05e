//! Tenant sub-boundaries set through the console, applied to the switch:
//! a deny rule of lease L on peer network N becomes a switch rule from
//! every NIC of L's cluster to the addresses of N (both ways), added to the
//! policy the node config defines. The switch's policy refuses a rule that
//! names addresses outside the tenant's cluster, so a console rule can only
//! narrow. The compiled policy replaces the running one in one step.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mgmt_proto::msg::{Action, BoundaryRule, LeaseId, Proto, RuleId};
use node_logic::Lease;
use vmm_config::config::NodeConfig;
use vswitch::config::{build_policy_with, nic_identities, ExtraNic};
use vswitch::engine::CompiledPolicy;
use vswitch::frame::MacAddr;
use vswitch::policy::{self, ClusterId, Match, Rule};

/// Largest peer network a console rule may name (/26: the switch takes at
/// most 64 endpoints per side).
const MIN_PREFIX: u8 = 26;

/// The switch rule for one console rule of cluster `cluster`, or why it
/// cannot be applied.
fn switch_rule(
    config: &NodeConfig,
    extra: &[ExtraNic],
    cluster: u32,
    rule: &BoundaryRule,
) -> Result<Option<(ClusterId, Rule)>, String> {
    if rule.action == Action::Allow {
        // Traffic a boundary does not deny flows already: an allow rule
        // changes nothing.
        return Ok(None);
    }
    if cluster == 0 || cluster as usize > config.clusters.len() {
        return Err(format!("lease cluster {cluster} is not a cluster of this node"));
    }
    if rule.peer.prefix < MIN_PREFIX || rule.peer.prefix > 32 {
        return Err(format!("peer: networks from /{MIN_PREFIX} to /32 only"));
    }
    let nics = nic_identities(config);
    let name = config.clusters.get(cluster as usize - 1).map(|c| c.name.as_str()).unwrap_or_default();
    let src: Vec<policy::Endpoint> = config
        .vms
        .iter()
        .enumerate()
        .filter(|(_, v)| v.cluster.as_deref() == Some(name))
        .filter_map(|(i, _)| nics.iter().find(|n| usize::from(n.vm) == i))
        .map(|n| policy::Endpoint::new(MacAddr(n.mac), Ipv4Addr::from(n.ip)))
        .chain(
            extra
                .iter()
                .filter(|e| e.cluster == cluster)
                .map(|e| policy::Endpoint::new(MacAddr(e.mac), Ipv4Addr::from(e.ip))),
        )
        .collect();
    if src.is_empty() {
        return Err(String::from("the lease's cluster has no VM NICs on this node"));
    }
    let base =
        u32::from_be_bytes(rule.peer.addr) & (u32::MAX.checked_shl(32 - u32::from(rule.peer.prefix)).unwrap_or(0));
    let count = 1u32 << (32 - u32::from(rule.peer.prefix));
    let dst = (0..count).map(|i| policy::Endpoint { mac: None, ip: Some(Ipv4Addr::from(base + i)) }).collect();
    let r = Rule {
        src,
        dst,
        direction: policy::Direction::Both,
        protocol: match rule.proto {
            Proto::Any => policy::Protocol::Any,
            Proto::Tcp => policy::Protocol::Tcp,
            Proto::Udp => policy::Protocol::Udp,
            Proto::Icmp => policy::Protocol::Icmp,
        },
        dst_ports: rule.ports.map(|p| policy::PortRange { first: p.lo, last: p.hi }),
        matching: Match::Only,
        action: policy::Action::Drop,
    };
    Ok(Some((ClusterId(cluster), r)))
}

/// What the consoles set: landlord boundaries per cluster (deny rules may
/// name any peer) and tenant sub-boundaries (which only narrow).
pub struct ConsoleRules<'a> {
    pub leases: &'a BTreeMap<LeaseId, Lease>,
    pub boundaries: &'a BTreeMap<mgmt_proto::msg::ClusterId, Vec<BoundaryRule>>,
    pub sub_rules: &'a BTreeMap<RuleId, (LeaseId, BoundaryRule)>,
    /// NICs of running console-created VMs.
    pub nics: &'a [ExtraNic],
    /// The facility's members of each cluster on other nodes.
    pub members: &'a BTreeMap<mgmt_proto::msg::ClusterId, Vec<[u8; 4]>>,
}

/// The node config with the facility's cluster members added to each
/// cluster's `remote` list (addresses of this node's own NICs skipped:
/// those are members already, where they run now).
fn with_members(config: &NodeConfig, rules: &ConsoleRules<'_>) -> NodeConfig {
    let mut config = config.clone();
    let local: Vec<[u8; 4]> =
        nic_identities(&config).iter().map(|n| n.ip).chain(rules.nics.iter().map(|n| n.ip)).collect();
    for (cluster, members) in rules.members {
        let Some(c) = (cluster.0 as usize).checked_sub(1).and_then(|i| config.clusters.get_mut(i)) else { continue };
        for ip in members.iter().filter(|ip| !local.contains(ip)) {
            c.remote.push(vmm_config::net::Endpoint::Ip(vmm_config::net::Ipv4(*ip)));
        }
    }
    config
}

/// The node config's policy plus every console rule, compiled; the error
/// names the rule that cannot apply.
pub fn compile(config: &NodeConfig, rules: &ConsoleRules<'_>) -> Result<CompiledPolicy, String> {
    let full;
    let config = if rules.members.is_empty() {
        config
    } else {
        full = with_members(config, rules);
        &full
    };
    let nics = nic_identities(config);
    let (mut policy, _) = build_policy_with(config, &nics, rules.nics)?;
    for (cluster, list) in rules.boundaries {
        for rule in list {
            if let Some((c, r)) = switch_rule(config, rules.nics, cluster.0, rule)? {
                policy.add_landlord_rule(c, r).map_err(|e| format!("boundary: {e}"))?;
            }
        }
    }
    for (lease, rule) in rules.sub_rules.values() {
        let l = rules.leases.get(lease).ok_or("no such lease")?;
        if let Some((cluster, r)) = switch_rule(config, rules.nics, l.cluster.0, rule)? {
            policy.add_rule(cluster, r).map_err(|e| format!("rule: {e}"))?;
        }
    }
    Ok(CompiledPolicy::compile(&policy))
}
