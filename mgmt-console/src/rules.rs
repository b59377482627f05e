//! Boundary rules on the command line: `ACTION:PROTO:NET[/PREFIX][:LO[-HI]]`,
//! e.g. `allow:tcp:10.0.0.0/8:80-443` or `deny:any:0.0.0.0/0`.

use anyhow::{bail, Context, Result};
use mgmt_proto::{Action, BoundaryRule, Ipv4Net, PortRange, Proto};

/// Parses one rule.
pub fn parse_rule(s: &str) -> Result<BoundaryRule> {
    let parts: Vec<&str> = s.split(':').collect();
    let (action, proto, net, ports) = match parts.as_slice() {
        [a, p, n] => (*a, *p, *n, None),
        [a, p, n, r] => (*a, *p, *n, Some(*r)),
        _ => bail!("rule {s:?}: expected ACTION:PROTO:NET[:PORTS], e.g. allow:tcp:10.0.0.0/8:80-443"),
    };
    let action = match action {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        _ => bail!("rule {s:?}: action must be allow or deny"),
    };
    let proto = match proto {
        "any" => Proto::Any,
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        _ => bail!("rule {s:?}: protocol must be any, tcp, udp or icmp"),
    };
    let (addr, prefix) = match net.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().with_context(|| format!("rule {s:?}: bad prefix length"))?),
        None => (net, 32),
    };
    if prefix > 32 {
        bail!("rule {s:?}: prefix length above 32");
    }
    let ip: std::net::Ipv4Addr = addr.parse().with_context(|| format!("rule {s:?}: bad IPv4 address"))?;
    let ports = match ports {
        None => None,
        Some(r) => {
            let (lo, hi) = match r.split_once('-') {
                Some((l, h)) => (l, h),
                None => (r, r),
            };
            let lo: u16 = lo.parse().with_context(|| format!("rule {s:?}: bad port"))?;
            let hi: u16 = hi.parse().with_context(|| format!("rule {s:?}: bad port"))?;
            if lo > hi {
                bail!("rule {s:?}: port range is reversed");
            }
            Some(PortRange { lo, hi })
        }
    };
    Ok(BoundaryRule { action, proto, peer: Ipv4Net { addr: ip.octets(), prefix }, ports })
}

/// Formats a rule in the same syntax.
pub fn format_rule(r: &BoundaryRule) -> String {
    let a = match r.action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    };
    let p = match r.proto {
        Proto::Any => "any",
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Icmp => "icmp",
    };
    let [x, y, z, w] = r.peer.addr;
    let mut s = format!("{a}:{p}:{x}.{y}.{z}.{w}/{}", r.peer.prefix);
    if let Some(pr) = r.ports {
        s.push_str(&format!(":{}-{}", pr.lo, pr.hi));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let r = parse_rule("allow:tcp:10.0.0.0/8:80-443").unwrap();
        assert_eq!(format_rule(&r), "allow:tcp:10.0.0.0/8:80-443");
        assert_eq!(format_rule(&parse_rule("deny:any:1.2.3.4").unwrap()), "deny:any:1.2.3.4/32");
        assert_eq!(parse_rule("allow:udp:10.0.0.0/8:53").unwrap().ports, Some(PortRange { lo: 53, hi: 53 }));
        for bad in [
            "allow",
            "permit:tcp:1.2.3.4",
            "allow:sctp:1.2.3.4",
            "allow:tcp:1.2.3.4/33",
            "allow:tcp:1.2.3:1",
            "allow:tcp:1.2.3.4:9-1",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }
}
