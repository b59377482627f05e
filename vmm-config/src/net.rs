//! Network vocabulary of the node config: typed addresses (written as text
//! in TOML, so `"10.1.0.11"` or `"52:54:00:00:00:01"`), the uplink, clusters
//! (the landlord's boundaries), per-VM NICs and tenant rules (sub-boundaries
//! that only narrow). Parsing is the validation: a value that deserializes
//! is well-formed; cross-references are checked by `NodeConfig::validate`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements Serialize/Deserialize as text via Display/FromStr.
macro_rules! serde_as_text {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(|e: AddrError| E::custom(e))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// Why an address or range did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrError(pub String);

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4(pub [u8; 4]);

impl FromStr for Ipv4 {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let bad = || AddrError(format!("\"{s}\" is not an IPv4 address (a.b.c.d)"));
        let mut out = [0u8; 4];
        let mut parts = s.split('.');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            *byte = p.parse().map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Ipv4(out))
    }
}

impl fmt::Display for Ipv4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}
serde_as_text!(Ipv4, "an IPv4 address such as \"10.1.0.11\"");

/// An IPv4 address with its prefix length (`10.0.2.15/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4,
    pub prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let (a, p) =
            s.split_once('/').ok_or_else(|| AddrError(format!("\"{s}\" needs a prefix length (a.b.c.d/n)")))?;
        let prefix: u8 = p.parse().map_err(|_| AddrError(format!("\"{p}\" is not a prefix length")))?;
        if prefix > 32 {
            return Err(AddrError(format!("prefix length {prefix} is over 32")));
        }
        Ok(Ipv4Cidr { addr: a.parse()?, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
serde_as_text!(Ipv4Cidr, "an IPv4 address with prefix such as \"10.0.2.15/24\"");

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let bad = || AddrError(format!("\"{s}\" is not a MAC address (xx:xx:xx:xx:xx:xx)"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}
serde_as_text!(Mac, "a MAC address such as \"52:54:00:00:00:01\"");

/// A console's X25519 public key (64 hex digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsoleKey(pub [u8; 32]);

impl FromStr for ConsoleKey {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let bad = || AddrError(format!("\"{s}\" is not a console key (64 hex digits)"));
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = s.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(ConsoleKey(out))
    }
}

impl fmt::Display for ConsoleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
serde_as_text!(ConsoleKey, "a console public key (64 hex digits)");

/// Who a rule or cluster names: a VM of this node (by name) or a peer
/// anywhere by address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Vm(String),
    Ip(Ipv4),
    Mac(Mac),
}

impl FromStr for Endpoint {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        if let Ok(ip) = s.parse() {
            return Ok(Endpoint::Ip(ip));
        }
        if let Ok(mac) = s.parse() {
            return Ok(Endpoint::Mac(mac));
        }
        if !s.is_empty()
            && s.len() <= crate::config::MAX_NAME_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Ok(Endpoint::Vm(String::from(s)));
        }
        Err(AddrError(format!("\"{s}\" is neither a VM name, an IPv4 address nor a MAC address")))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Vm(n) => f.write_str(n),
            Endpoint::Ip(ip) => write!(f, "{ip}"),
            Endpoint::Mac(m) => write!(f, "{m}"),
        }
    }
}
serde_as_text!(Endpoint, "a VM name, an IPv4 address or a MAC address");

/// An inclusive TCP/UDP port range (`"80"` or `"8000-8080"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| AddrError(format!("\"{p}\" is not a port (0-65535)")));
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(AddrError(format!("port range \"{s}\" is reversed")));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}
serde_as_text!(PortRange, "a port or port range such as \"80\" or \"8000-8080\"");

/// How the node's management address is obtained (`[uplink]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Static address; DHCP when absent.
    #[serde(default)]
    pub address: Option<Ipv4Cidr>,
    /// Default gateway for a static address.
    #[serde(default)]
    pub gateway: Option<Ipv4>,
    /// A TCP port where the node accepts and throws away bytes (the RFC 863
    /// discard service), one connection at a time, to measure the raw
    /// link throughput to the node against console uploads. Off by default.
    #[serde(default)]
    pub discard_port: Option<u16>,
}

/// A tenant cluster (`[[cluster]]`): the landlord's boundary. Frames between
/// different clusters are dropped both ways.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name, referenced by VMs and rules.
    pub name: String,
    /// Addresses of this cluster's VMs on other nodes, so the boundary also
    /// holds across the uplink.
    #[serde(default)]
    pub remote: Vec<Endpoint>,
    /// The tenant has a key (K_T): its disks are encrypted under K_L and
    /// K_T combined, not K_L alone.
    #[serde(default)]
    pub tenant_key: bool,
    /// Raising it regenerates K_T: this tenant's volumes are crypto-erased.
    #[serde(default)]
    pub tenant_key_epoch: u32,
}

/// A VM's virtual NIC (`[vm.nic]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// The only IPv4 source address this VM may send from.
    pub ip: Ipv4,
    /// MAC address; BMonitor assigns one when absent.
    #[serde(default)]
    pub mac: Option<Mac>,
}

/// Which way a tenant rule blocks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Both `from -> to` and `to -> from`.
    #[default]
    Both,
    /// Only `from -> to`.
    OneWay,
}

/// Which traffic a tenant rule matches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

/// What happens to matched frames.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Dropped silently.
    #[default]
    Drop,
    /// Dropped, and the sender told (ICMP administratively prohibited, or
    /// TCP RST).
    Refuse,
}

/// A tenant sub-boundary (`[[rule]]`): blocks matching traffic inside its
/// cluster. Rules can only narrow what the cluster allows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The tenant cluster the rule belongs to.
    pub cluster: String,
    /// Sources (VM names or addresses in the cluster).
    pub from: Vec<Endpoint>,
    /// Destinations (VM names or addresses in the cluster).
    pub to: Vec<Endpoint>,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub protocol: Protocol,
    /// Destination ports (TCP/UDP only); all ports when absent.
    #[serde(default)]
    pub ports: Option<PortRange>,
    /// Blocks everything *except* the matched traffic between `from` and
    /// `to` (a partial rule such as "only TCP/80").
    #[serde(default)]
    pub except: bool,
    #[serde(default)]
    pub action: Action,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_and_prints_addresses() {
        assert_eq!("10.1.0.11".parse::<Ipv4>().unwrap(), Ipv4([10, 1, 0, 11]));
        assert_eq!("10.0.2.15/24".parse::<Ipv4Cidr>().unwrap().to_string(), "10.0.2.15/24");
        assert_eq!("52:54:00:AB:cd:01".parse::<Mac>().unwrap().to_string(), "52:54:00:ab:cd:01");
        assert_eq!("8000-8080".parse::<PortRange>().unwrap(), PortRange { first: 8000, last: 8080 });
        assert_eq!("web-1".parse::<Endpoint>().unwrap(), Endpoint::Vm("web-1".into()));
        assert_eq!("10.0.0.1".parse::<Endpoint>().unwrap(), Endpoint::Ip(Ipv4([10, 0, 0, 1])));
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1..2.3", "+1.2.3.4", "01234.1.1.1"] {
            assert!(bad.parse::<Ipv4>().is_err(), "{bad}");
        }
        for bad in ["10.0.0.1", "10.0.0.1/33", "10.0.0.1/x"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        for bad in ["52:54:00:00:00", "52:54:00:00:00:0g", "525400000001"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        for bad in ["90-80", "70000", "a"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        for bad in ["", "1.2.3.999", "has space"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        assert!("ab".parse::<ConsoleKey>().is_err());
        assert!("zz".repeat(32).parse::<ConsoleKey>().is_err());
        let k = "0f".repeat(32).parse::<ConsoleKey>().unwrap();
        assert_eq!(k.to_string(), "0f".repeat(32));
    }

    proptest::proptest! {
        #[test]
        fn text_round_trips(a: [u8; 4], m: [u8; 6], p in 0u8..=32, lo: u16, hi: u16) {
            let ip = Ipv4(a);
            proptest::prop_assert_eq!(ip.to_string().parse::<Ipv4>().unwrap(), ip);
            let c = Ipv4Cidr { addr: ip, prefix: p };
            proptest::prop_assert_eq!(c.to_string().parse::<Ipv4Cidr>().unwrap(), c);
            let mac = Mac(m);
            proptest::prop_assert_eq!(mac.to_string().parse::<Mac>().unwrap(), mac);
            let r = PortRange { first: lo.min(hi), last: lo.max(hi) };
            proptest::prop_assert_eq!(r.to_string().parse::<PortRange>().unwrap(), r);
        }

        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Ipv4>();
            let _ = s.parse::<Ipv4Cidr>();
            let _ = s.parse::<Mac>();
            let _ = s.parse::<Endpoint>();
            let _ = s.parse::<PortRange>();
        }
    }
}
