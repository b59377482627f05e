//! Typed switching policy: the landlord's cluster boundary and the tenants' deny rules.
//!
//! The landlord says which cluster each address (MAC or IPv4) belongs to; frames between
//! addresses of different clusters are dropped both ways, always (a full block). Inside a
//! cluster the default is allow, and the tenant may add deny rules ([`Rule`]) that only
//! narrow that. There are no allow rules at all, so a tenant rule cannot widen anything by
//! construction; in addition [`Policy::add_rule`] refuses a rule that names any address
//! outside the tenant's own cluster (a rule reaching across the boundary), so one tenant's
//! rules can never touch another tenant's traffic. A refused rule leaves the policy unchanged.
//!
//! Addresses that the boundary does not assign (the facility's gateway, hosts beyond the
//! uplink) belong to no cluster: the boundary does not block traffic between them and a
//! cluster. The landlord assigns every VM's MAC and IPv4, and those of other nodes' VMs, so a
//! node enforces boundaries against remote VMs too.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;

use crate::frame::MacAddr;

/// A tenant cluster, as numbered by the landlord.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u32);

/// A switch port (a VM's virtual NIC or the uplink), as numbered by the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u32);

/// A tenant rule's identity, assigned by [`Policy::add_rule`] in increasing order; counters
/// and verdicts name rules by it. When several rules match, the lowest id wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster {}", self.0)
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}", self.0)
    }
}

/// One address a frame can carry: the unit the boundary assigns and rules index on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Address {
    /// An Ethernet MAC address.
    Mac(MacAddr),
    /// An IPv4 address (from the IPv4 header or ARP).
    Ip(Ipv4Addr),
}

impl Address {
    /// The address packed in one word (a tag above 48 address bits), for cheap hashing.
    fn packed(self) -> u64 {
        match self {
            Address::Mac(MacAddr([a, b, c, d, e, f])) => u64::from_be_bytes([0, 1, a, b, c, d, e, f]),
            Address::Ip(ip) => (2 << 48) | u64::from(ip.to_bits()),
        }
    }
}

impl core::hash::Hash for Address {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.packed());
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Mac(m) => write!(f, "{m}"),
            Address::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A rule endpoint: a machine named by its MAC, its IPv4 address, or both. A frame matches
/// the endpoint if any of its addresses on that side equals any address named here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The machine's MAC address, if named.
    pub mac: Option<MacAddr>,
    /// The machine's IPv4 address, if named.
    pub ip: Option<Ipv4Addr>,
}

impl Endpoint {
    /// An endpoint named by both addresses, the usual way to name a VM.
    pub fn new(mac: MacAddr, ip: Ipv4Addr) -> Self {
        Endpoint { mac: Some(mac), ip: Some(ip) }
    }

    /// The addresses this endpoint names (zero to two).
    pub fn addresses(&self) -> impl Iterator<Item = Address> {
        self.mac.map(Address::Mac).into_iter().chain(self.ip.map(Address::Ip))
    }
}

/// The landlord's cluster boundary: which cluster each address belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterBoundary {
    members: BTreeMap<Address, ClusterId>,
}

impl ClusterBoundary {
    /// An empty boundary: no address belongs to any cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `addr` in `cluster`; returns the cluster it was in before, if any.
    pub fn assign(&mut self, addr: Address, cluster: ClusterId) -> Option<ClusterId> {
        self.members.insert(addr, cluster)
    }

    /// Puts every address of `endpoint` (typically a VM's MAC and IPv4) in `cluster`.
    pub fn assign_endpoint(&mut self, endpoint: Endpoint, cluster: ClusterId) {
        for a in endpoint.addresses() {
            self.members.insert(a, cluster);
        }
    }

    /// Takes `addr` out of any cluster; returns the cluster it was in.
    pub fn unassign(&mut self, addr: Address) -> Option<ClusterId> {
        self.members.remove(&addr)
    }

    /// The cluster `addr` belongs to, if any.
    pub fn cluster_of(&self, addr: Address) -> Option<ClusterId> {
        self.members.get(&addr).copied()
    }

    /// Every assigned address with its cluster, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (Address, ClusterId)> + '_ {
        self.members.iter().map(|(a, c)| (*a, *c))
    }
}

/// Which way a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only frames from a `src` endpoint to a `dst` endpoint.
    OneWay,
    /// Also frames from a `dst` endpoint to a `src` endpoint (with the same service match,
    /// applied to that frame's own destination port).
    Both,
}

/// The protocol a rule's service match names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Every frame; with a port range, TCP and UDP on those ports.
    Any,
    /// IPv4 TCP.
    Tcp,
    /// IPv4 UDP.
    Udp,
    /// IPv4 ICMP.
    Icmp,
}

/// An inclusive range of destination ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port in the range.
    pub first: u16,
    /// Last port in the range (inclusive); must not be below `first`.
    pub last: u16,
}

impl PortRange {
    /// A range holding one port.
    pub fn single(port: u16) -> Self {
        PortRange { first: port, last: port }
    }
}

/// Whether a rule drops the traffic its service names, or everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Drop the named service (e.g. TCP/22).
    Only,
    /// Drop every frame except the named service, so "let only TCP/80 through" is one rule.
    /// ARP is never dropped by such a rule, so the permitted service can still resolve
    /// addresses.
    AllExcept,
}

/// What happens to a frame a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Drop silently.
    Drop,
    /// Drop and tell the sender: a TCP RST for TCP, ICMP "administratively prohibited" else.
    Refuse,
}

/// A tenant's deny rule, for frames inside its own cluster.
///
/// A non-first IPv4 fragment carries no ports, so it matches every port-restricted rule of
/// its protocol (fail closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Sending endpoints.
    pub src: Vec<Endpoint>,
    /// Receiving endpoints.
    pub dst: Vec<Endpoint>,
    /// One way, or both.
    pub direction: Direction,
    /// Protocol of the named service.
    pub protocol: Protocol,
    /// Destination ports of the named service (TCP/UDP only); `None` means all.
    pub dst_ports: Option<PortRange>,
    /// Drop the named service, or everything but it.
    pub matching: Match,
    /// Drop silently or refuse.
    pub action: Action,
}

impl Rule {
    /// A full block between two endpoint sets, both ways, dropped silently: a sub-boundary.
    pub fn block(src: Vec<Endpoint>, dst: Vec<Endpoint>) -> Self {
        Rule {
            src,
            dst,
            direction: Direction::Both,
            protocol: Protocol::Any,
            dst_ports: None,
            matching: Match::Only,
            action: Action::Drop,
        }
    }
}

/// Most endpoints on either side of one rule; bounds the index entries one rule can add.
pub const MAX_ENDPOINTS_PER_SIDE: usize = 64;
/// Most rules in a policy.
pub const MAX_RULES: usize = 1 << 20;

/// A side of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The `src` endpoints.
    Src,
    /// The `dst` endpoints.
    Dst,
}

/// The rule field an error is about, shown as e.g. `src[2].ip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// A whole endpoint list.
    Endpoints(Side),
    /// One endpoint of a list.
    Endpoint(Side, usize),
    /// The MAC of one endpoint.
    Mac(Side, usize),
    /// The IPv4 address of one endpoint.
    Ip(Side, usize),
    /// The `dst_ports` field.
    DstPorts,
    /// The `matching` field.
    Matching,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Side| match s {
            Side::Src => "src",
            Side::Dst => "dst",
        };
        match self {
            Field::Endpoints(s) => f.write_str(side(s)),
            Field::Endpoint(s, i) => write!(f, "{}[{i}]", side(s)),
            Field::Mac(s, i) => write!(f, "{}[{i}].mac", side(s)),
            Field::Ip(s, i) => write!(f, "{}[{i}].ip", side(s)),
            Field::DstPorts => f.write_str("dst_ports"),
            Field::Matching => f.write_str("matching"),
        }
    }
}

/// Why a tenant rule was refused (or could not be removed); the policy is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleError {
    /// An endpoint list is empty, so the rule would match nothing.
    NoEndpoints {
        /// The empty list.
        field: Field,
    },
    /// An endpoint names neither a MAC nor an IPv4 address.
    EmptyEndpoint {
        /// The empty endpoint.
        field: Field,
    },
    /// More endpoints than [`MAX_ENDPOINTS_PER_SIDE`].
    TooManyEndpoints {
        /// The overlong list.
        field: Field,
    },
    /// The address is in another cluster: the rule would reach across the boundary.
    CrossesBoundary {
        /// Where the address is named.
        field: Field,
        /// The address.
        address: Address,
        /// The cluster it belongs to.
        owner: ClusterId,
        /// The tenant's cluster.
        cluster: ClusterId,
    },
    /// The address belongs to no cluster, so it is not the tenant's to filter.
    OutsideCluster {
        /// Where the address is named.
        field: Field,
        /// The address.
        address: Address,
        /// The tenant's cluster.
        cluster: ClusterId,
    },
    /// `dst_ports.first` is above `dst_ports.last`.
    BadPortRange {
        /// The first port given.
        first: u16,
        /// The last port given.
        last: u16,
    },
    /// A port range with a protocol that has no ports (ICMP).
    PortsWithoutPorts,
    /// `AllExcept` everything: the rule would match nothing.
    MatchesNothing,
    /// The policy already holds [`MAX_RULES`] rules.
    TooManyRules,
    /// No rule with this id exists in the tenant's cluster.
    NoSuchRule(RuleId),
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::NoEndpoints { field } => write!(f, "{field}: names no endpoint, so the rule matches nothing"),
            RuleError::EmptyEndpoint { field } => write!(f, "{field}: names neither a MAC nor an IPv4 address"),
            RuleError::TooManyEndpoints { field } => {
                write!(f, "{field}: more than {MAX_ENDPOINTS_PER_SIDE} endpoints")
            }
            RuleError::CrossesBoundary { field, address, owner, cluster } => write!(
                f,
                "{field}: {address} belongs to {owner}; a rule of {cluster} may not cross its cluster boundary"
            ),
            RuleError::OutsideCluster { field, address, cluster } => {
                write!(f, "{field}: {address} is in no cluster; a rule of {cluster} may name only its own addresses")
            }
            RuleError::BadPortRange { first, last } => {
                write!(f, "{}: first port {first} is above last port {last}", Field::DstPorts)
            }
            RuleError::PortsWithoutPorts => write!(f, "{}: ICMP has no ports", Field::DstPorts),
            RuleError::MatchesNothing => {
                write!(f, "{}: all-except with protocol any and no ports matches nothing", Field::Matching)
            }
            RuleError::TooManyRules => write!(f, "policy already holds {MAX_RULES} rules"),
            RuleError::NoSuchRule(id) => write!(f, "{id}: no such rule in this cluster"),
        }
    }
}

/// A tenant rule as stored: the rule and the cluster that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRule {
    /// The tenant cluster that added the rule.
    pub cluster: ClusterId,
    /// The rule.
    pub rule: Rule,
}

/// The whole switching policy of a node: boundary plus validated tenant rules. This is the
/// editable form; [`crate::engine::CompiledPolicy::compile`] turns it into lookup tables.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    boundary: ClusterBoundary,
    rules: BTreeMap<RuleId, TenantRule>,
    next_id: u64,
}

impl Policy {
    /// A policy with this boundary and no tenant rules.
    pub fn new(boundary: ClusterBoundary) -> Self {
        Policy { boundary, rules: BTreeMap::new(), next_id: 1 }
    }

    /// The landlord's boundary.
    pub fn boundary(&self) -> &ClusterBoundary {
        &self.boundary
    }

    /// Every tenant rule, in id (priority) order.
    pub fn rules(&self) -> impl Iterator<Item = (RuleId, &TenantRule)> {
        self.rules.iter().map(|(id, r)| (*id, r))
    }

    /// Number of tenant rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Checks that `rule` is well formed and names only addresses of `cluster`, without
    /// adding it.
    pub fn validate(&self, cluster: ClusterId, rule: &Rule) -> Result<(), RuleError> {
        validate(&self.boundary, cluster, rule)
    }

    /// Adds a landlord rule for `cluster`: its sources must be the
    /// cluster's own addresses, its destinations may be anyone (a boundary
    /// drawn around the cluster against particular peers). Only the
    /// landlord's management path calls this; tenants use [`Self::add_rule`].
    pub fn add_landlord_rule(&mut self, cluster: ClusterId, rule: Rule) -> Result<RuleId, RuleError> {
        if self.rules.len() >= MAX_RULES {
            return Err(RuleError::TooManyRules);
        }
        validate_sides(&self.boundary, cluster, &rule, true)?;
        let id = RuleId(self.next_id.max(1));
        self.next_id = id.0.saturating_add(1);
        self.rules.insert(id, TenantRule { cluster, rule });
        Ok(id)
    }

    /// Adds a tenant rule for `cluster` after [`Policy::validate`]; returns its id.
    pub fn add_rule(&mut self, cluster: ClusterId, rule: Rule) -> Result<RuleId, RuleError> {
        if self.rules.len() >= MAX_RULES {
            return Err(RuleError::TooManyRules);
        }
        self.validate(cluster, &rule)?;
        let id = RuleId(self.next_id.max(1));
        self.next_id = id.0.saturating_add(1);
        self.rules.insert(id, TenantRule { cluster, rule });
        Ok(id)
    }

    /// Removes rule `id` if `cluster` owns it; a tenant cannot remove another's rules.
    pub fn remove_rule(&mut self, cluster: ClusterId, id: RuleId) -> Result<Rule, RuleError> {
        match self.rules.get(&id) {
            Some(r) if r.cluster == cluster => self.rules.remove(&id).map(|r| r.rule).ok_or(RuleError::NoSuchRule(id)),
            _ => Err(RuleError::NoSuchRule(id)),
        }
    }

    /// Replaces the boundary (the landlord moved addresses). Tenant rules that no longer
    /// validate against the new boundary are removed, so a tenant never keeps a rule over
    /// addresses that left its cluster; their ids are returned for the log.
    pub fn set_boundary(&mut self, boundary: ClusterBoundary) -> Vec<RuleId> {
        self.boundary = boundary;
        let stale: Vec<RuleId> = self
            .rules
            .iter()
            .filter(|(_, r)| validate(&self.boundary, r.cluster, &r.rule).is_err())
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            self.rules.remove(id);
        }
        stale
    }
}

fn validate(boundary: &ClusterBoundary, cluster: ClusterId, rule: &Rule) -> Result<(), RuleError> {
    validate_sides(boundary, cluster, rule, false)
}

/// As [`validate`]; with `landlord`, the destination side may name any
/// address (the landlord bounds a cluster against peers outside it).
fn validate_sides(
    boundary: &ClusterBoundary,
    cluster: ClusterId,
    rule: &Rule,
    landlord: bool,
) -> Result<(), RuleError> {
    for (side, list) in [(Side::Src, &rule.src), (Side::Dst, &rule.dst)] {
        if list.is_empty() {
            return Err(RuleError::NoEndpoints { field: Field::Endpoints(side) });
        }
        if list.len() > MAX_ENDPOINTS_PER_SIDE {
            return Err(RuleError::TooManyEndpoints { field: Field::Endpoints(side) });
        }
        for (i, ep) in list.iter().enumerate() {
            if ep.mac.is_none() && ep.ip.is_none() {
                return Err(RuleError::EmptyEndpoint { field: Field::Endpoint(side, i) });
            }
            if landlord && side == Side::Dst {
                continue;
            }
            for address in ep.addresses() {
                let field = match address {
                    Address::Mac(_) => Field::Mac(side, i),
                    Address::Ip(_) => Field::Ip(side, i),
                };
                match boundary.cluster_of(address) {
                    Some(c) if c == cluster => {}
                    Some(owner) => return Err(RuleError::CrossesBoundary { field, address, owner, cluster }),
                    None => return Err(RuleError::OutsideCluster { field, address, cluster }),
                }
            }
        }
    }
    if let Some(r) = rule.dst_ports {
        if r.first > r.last {
            return Err(RuleError::BadPortRange { first: r.first, last: r.last });
        }
        if rule.protocol == Protocol::Icmp {
            return Err(RuleError::PortsWithoutPorts);
        }
    }
    if rule.matching == Match::AllExcept && rule.protocol == Protocol::Any && rule.dst_ports.is_none() {
        return Err(RuleError::MatchesNothing);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    const C1: ClusterId = ClusterId(1);

    #[test]
    fn landlord_rules_may_name_peers_outside_the_cluster_tenants_may_not() {
        let mut b = ClusterBoundary::new();
        let own = Endpoint::new(MacAddr([2, 0, 0, 0, 0, 1]), core::net::Ipv4Addr::new(10, 0, 0, 1));
        b.assign_endpoint(own, C1);
        let peer = Endpoint { mac: None, ip: Some(core::net::Ipv4Addr::new(192, 0, 2, 9)) };
        let mut p = Policy::new(b);
        let rule = Rule::block(vec![own], vec![peer]);
        assert!(p.add_rule(C1, rule.clone()).is_err(), "a tenant may not name an outside peer");
        assert!(p.add_landlord_rule(C1, rule).is_ok());
        let stranger = Rule::block(vec![peer], vec![own]);
        assert!(p.add_landlord_rule(C1, stranger).is_err(), "sources must be the cluster's own");
    }
    const C2: ClusterId = ClusterId(2);

    fn ep(n: u8) -> Endpoint {
        Endpoint::new(MacAddr([2, 0, 0, 0, 0, n]), Ipv4Addr::new(10, 0, 0, n))
    }

    fn boundary() -> ClusterBoundary {
        let mut b = ClusterBoundary::new();
        b.assign_endpoint(ep(1), C1);
        b.assign_endpoint(ep(2), C1);
        b.assign_endpoint(ep(3), C2);
        b
    }

    #[test]
    fn accepts_rules_inside_the_cluster() {
        let mut p = Policy::new(boundary());
        let a = p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(2)])).unwrap();
        let b = p.add_rule(C1, Rule::block(vec![ep(2)], vec![ep(1)])).unwrap();
        assert!(a < b);
        assert_eq!(p.rule_count(), 2);
        assert_eq!(p.boundary().cluster_of(Address::Mac(ep(3).mac.unwrap())), Some(C2));
    }

    #[test]
    fn refuses_rules_crossing_the_boundary_and_leaves_policy_unchanged() {
        let mut p = Policy::new(boundary());
        let e = p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(3)])).unwrap_err();
        assert_eq!(
            e,
            RuleError::CrossesBoundary {
                field: Field::Mac(Side::Dst, 0),
                address: Address::Mac(ep(3).mac.unwrap()),
                owner: C2,
                cluster: C1
            }
        );
        assert!(e.to_string().starts_with("dst[0].mac: 02:00:00:00:00:03 belongs to cluster 2"), "{e}");
        let half = Endpoint { mac: ep(1).mac, ip: ep(3).ip };
        let e = p.add_rule(C1, Rule::block(vec![ep(2), half], vec![ep(1)])).unwrap_err();
        assert!(e.to_string().starts_with("src[1].ip: 10.0.0.3 belongs to cluster 2"), "{e}");
        let stranger = Endpoint { mac: None, ip: Some(Ipv4Addr::new(8, 8, 8, 8)) };
        let e = p.add_rule(C1, Rule::block(vec![ep(1)], vec![stranger])).unwrap_err();
        assert!(matches!(e, RuleError::OutsideCluster { field: Field::Ip(Side::Dst, 0), .. }));
        assert!(e.to_string().contains("8.8.8.8 is in no cluster"));
        assert_eq!(p.rule_count(), 0);
    }

    #[test]
    fn refuses_malformed_rules_naming_the_field() {
        let p = Policy::new(boundary());
        let check = |r: Rule, text: &str| {
            let e = p.validate(C1, &r).unwrap_err();
            assert!(e.to_string().starts_with(text), "{e} !~ {text}");
        };
        check(Rule::block(vec![], vec![ep(1)]), "src: names no endpoint");
        check(Rule::block(vec![ep(1)], vec![]), "dst: names no endpoint");
        check(Rule::block(vec![ep(1)], vec![Endpoint { mac: None, ip: None }]), "dst[0]: names neither");
        check(Rule::block(vec![ep(1); MAX_ENDPOINTS_PER_SIDE + 1], vec![ep(2)]), "src: more than 64");
        let mut r = Rule::block(vec![ep(1)], vec![ep(2)]);
        r.dst_ports = Some(PortRange { first: 90, last: 80 });
        check(r.clone(), "dst_ports: first port 90 is above last port 80");
        r.dst_ports = Some(PortRange::single(80));
        r.protocol = Protocol::Icmp;
        check(r.clone(), "dst_ports: ICMP has no ports");
        r.protocol = Protocol::Any;
        r.dst_ports = None;
        r.matching = Match::AllExcept;
        check(r, "matching: all-except");
    }

    #[test]
    fn only_the_owner_removes_a_rule() {
        let mut p = Policy::new(boundary());
        let id = p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(2)])).unwrap();
        assert_eq!(p.remove_rule(C2, id), Err(RuleError::NoSuchRule(id)));
        assert!(p.remove_rule(C1, id).is_ok());
        assert_eq!(p.remove_rule(C1, id), Err(RuleError::NoSuchRule(id)));
        assert_eq!(RuleError::NoSuchRule(id).to_string(), "rule 1: no such rule in this cluster");
    }

    #[test]
    fn moving_an_address_drops_rules_that_named_it() {
        let mut p = Policy::new(boundary());
        let stays = p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(1)])).unwrap();
        let goes = p.add_rule(C1, Rule::block(vec![ep(1)], vec![ep(2)])).unwrap();
        let mut b = boundary();
        b.assign_endpoint(ep(2), C2);
        assert_eq!(p.set_boundary(b), vec![goes]);
        assert_eq!(p.rules().map(|(id, _)| id).collect::<Vec<_>>(), vec![stays]);
        let mut b2 = p.boundary().clone();
        assert_eq!(b2.unassign(Address::Ip(ep(1).ip.unwrap())), Some(C1));
        assert_eq!(p.set_boundary(b2), vec![stays]);
    }
}
