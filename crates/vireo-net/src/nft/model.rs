//! The typed model the ruleset is rendered from (networks, VM ports, firewall rules, port
//! forwards) and its validation: [`Ruleset::validate`] rejects every model the renderer could
//! not render faithfully, so rendering itself cannot fail afterwards.

use super::*;

/// A ruleset model that breaks an invariant the renderer relies on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesetError {
    #[error("network bridge {bridge} appears twice")]
    DuplicateNetwork { bridge: String },
    #[error("VM port {tap} appears twice")]
    DuplicatePort { tap: String },
    #[error("VM port {tap} is on bridge {bridge}, which is not a network in the ruleset")]
    UnknownBridge { tap: String, bridge: String },
    #[error("address {addr} of {owner} is outside network subnet {subnet}")]
    AddressOutsideSubnet {
        owner: String,
        addr: Ipv4Addr,
        subnet: Ipv4Cidr,
    },
    #[error("rule {index} of {owner}: ports need protocol tcp or udp")]
    PortsWithoutL4 { owner: String, index: usize },
    #[error("rule {index} of {owner}: port range {first}-{last} is empty or starts at 0")]
    BadPortRange {
        owner: String,
        index: usize,
        first: u16,
        last: u16,
    },
    #[error("port forward {protocol} {host_port} on {host_addr} is defined twice")]
    DuplicateForward {
        protocol: &'static str,
        host_addr: String,
        host_port: u16,
    },
    #[error("port forward to {vm_ip} uses port 0")]
    ForwardPortZero { vm_ip: Ipv4Addr },
    #[error("IPv6 address {addr} of {owner} is neither link-local nor in the network's IPv6 subnet ({subnet})")]
    Address6OutsideSubnet {
        owner: String,
        addr: Ipv6Addr,
        subnet: String,
    },
}

/// Everything Vireo enforces on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub networks: Vec<NetworkRules>,
    pub ports: Vec<VmPort>,
    pub forwards: Vec<PortForward>,
}

/// How a network reaches the rest of the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uplink {
    /// Masquerade the subnet behind `interface` (any interface name; not Vireo-owned).
    Nat { interface: String },
    /// Host-only: nothing is forwarded in or out of the bridge.
    Isolated,
    /// Addresses come from outside; Vireo neither NATs nor blocks forwarding.
    Bridged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules {
    pub bridge: IfName,
    pub subnet: Ipv4Cidr,
    /// The network's IPv6 /64, if it has IPv6.
    pub subnet6: Option<Ipv6Cidr>,
    pub uplink: Uplink,
    pub default_in: Action,
    pub default_out: Action,
    pub rules: Vec<FirewallRule>,
}

/// A VM NIC (tap) on a managed network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPort {
    pub tap: IfName,
    pub bridge: IfName,
    pub mac: MacAddr,
    /// The VM's IPv4 addresses on this network: the anti-spoofing allow-list and the key of
    /// its firewall chains. Empty means "not known yet": the port may only do DHCP.
    pub ips: Vec<Ipv4Addr>,
    /// The VM's IPv6 addresses (link-local and in the network's IPv6 subnet), the same role
    /// as `ips`; empty on networks without IPv6 (the port may not send IPv6 at all).
    pub ips6: Vec<Ipv6Addr>,
    pub anti_spoofing: bool,
    pub default_in: Action,
    pub default_out: Action,
    pub rules: Vec<FirewallRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Towards the VM / into the network.
    In,
    /// From the VM / out of the network.
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Reject,
}

/// An inclusive port range; `first == last` is a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallRule {
    pub direction: Direction,
    pub protocol: Protocol,
    /// Destination ports (tcp/udp only); empty = all.
    pub ports: Vec<PortRange>,
    /// The peer: source for `In`, destination for `Out`; `None` = anywhere (either family).
    pub peer: Option<Cidr>,
    pub action: Action,
}

/// A firewall peer of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4(Ipv4Cidr),
    V6(Ipv6Cidr),
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    /// `A.B.C.D/N` or `IPV6/N`; the error keeps the more helpful of the two parse errors.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse().map(Cidr::V6).map_err(CidrError::V6)
        } else {
            s.parse().map(Cidr::V4).map_err(CidrError::V4)
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cidr::V4(c) => c.fmt(f),
            Cidr::V6(c) => c.fmt(f),
        }
    }
}

/// A firewall peer that is neither an IPv4 nor an IPv6 CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error(transparent)]
    V4(crate::addr::AddrError),
    #[error(transparent)]
    V6(crate::addr6::Addr6Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    pub(super) fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// host address:port → VM ip:port on a NAT network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    pub protocol: L4,
    /// `None` = any local address of the host.
    pub host_addr: Option<Ipv4Addr>,
    pub host_port: u16,
    pub bridge: IfName,
    pub vm_ip: Ipv4Addr,
    pub vm_port: u16,
}

impl Ruleset {
    /// Checks the cross-references the renderer relies on.
    pub fn validate(&self) -> Result<(), RulesetError> {
        let mut bridges = BTreeSet::new();
        for net in &self.networks {
            if !bridges.insert(&net.bridge) {
                return Err(RulesetError::DuplicateNetwork {
                    bridge: net.bridge.to_string(),
                });
            }
            check_rules(&format!("network {}", net.bridge), &net.rules)?;
        }
        let mut taps = BTreeSet::new();
        for port in &self.ports {
            if !taps.insert(&port.tap) {
                return Err(RulesetError::DuplicatePort {
                    tap: port.tap.to_string(),
                });
            }
            let net = self
                .network(&port.bridge)
                .ok_or(RulesetError::UnknownBridge {
                    tap: port.tap.to_string(),
                    bridge: port.bridge.to_string(),
                })?;
            if let Some(&addr) = port.ips.iter().find(|ip| !net.subnet.contains(**ip)) {
                return Err(RulesetError::AddressOutsideSubnet {
                    owner: format!("port {}", port.tap),
                    addr,
                    subnet: net.subnet,
                });
            }
            if let Some(&addr) = port
                .ips6
                .iter()
                .find(|ip| !is_link_local64(**ip) && !net.subnet6.is_some_and(|s| s.contains(**ip)))
            {
                return Err(RulesetError::Address6OutsideSubnet {
                    owner: format!("port {}", port.tap),
                    addr,
                    subnet: net
                        .subnet6
                        .map_or_else(|| "none".to_owned(), |s| s.to_string()),
                });
            }
            check_rules(&format!("port {}", port.tap), &port.rules)?;
        }
        let mut seen = BTreeSet::new();
        for fwd in &self.forwards {
            let net = self
                .network(&fwd.bridge)
                .ok_or(RulesetError::UnknownBridge {
                    tap: format!("port forward to {}", fwd.vm_ip),
                    bridge: fwd.bridge.to_string(),
                })?;
            if !net.subnet.contains(fwd.vm_ip) {
                return Err(RulesetError::AddressOutsideSubnet {
                    owner: "port forward".into(),
                    addr: fwd.vm_ip,
                    subnet: net.subnet,
                });
            }
            if fwd.host_port == 0 || fwd.vm_port == 0 {
                return Err(RulesetError::ForwardPortZero { vm_ip: fwd.vm_ip });
            }
            // "Any address" collides with every specific address on the same port.
            let key = (fwd.protocol.name(), fwd.host_port);
            let clash = seen
                .iter()
                .any(|(p, port, addr): &(&str, u16, Option<Ipv4Addr>)| {
                    (*p, *port) == key
                        && (addr.is_none() || fwd.host_addr.is_none() || *addr == fwd.host_addr)
                });
            if clash {
                return Err(RulesetError::DuplicateForward {
                    protocol: fwd.protocol.name(),
                    host_addr: fwd
                        .host_addr
                        .map_or_else(|| "any".to_owned(), |a| a.to_string()),
                    host_port: fwd.host_port,
                });
            }
            seen.insert((key.0, key.1, fwd.host_addr));
        }
        Ok(())
    }

    pub(super) fn network(&self, bridge: &IfName) -> Option<&NetworkRules> {
        self.networks.iter().find(|n| &n.bridge == bridge)
    }
}

fn check_rules(owner: &str, rules: &[FirewallRule]) -> Result<(), RulesetError> {
    for (index, rule) in rules.iter().enumerate() {
        if !rule.ports.is_empty() && !matches!(rule.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(RulesetError::PortsWithoutL4 {
                owner: owner.to_owned(),
                index,
            });
        }
        if let Some(r) = rule.ports.iter().find(|r| r.first == 0 || r.first > r.last) {
            return Err(RulesetError::BadPortRange {
                owner: owner.to_owned(),
                index,
                first: r.first,
                last: r.last,
            });
        }
    }
    Ok(())
}
