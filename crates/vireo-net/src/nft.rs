//! The nftables ruleset Vireo owns, rendered from a typed model (pure), and the read-back
//! snapshot used for drift detection.
//!
//! Invariants of the rendered text:
//! - It touches only `table inet vireo` and `table bridge vireo`. It starts with the
//!   `table X` + `delete table X` idiom for both, so one `nft -f -` transaction replaces
//!   whatever is there (or nothing) atomically: re-applying is idempotent and repairs drift.
//! - Every base chain has policy `accept`, and per-network / per-VM chains only ever `return`
//!   (allow) or `drop`/`reject`, so Vireo's table never accepts on behalf of other tables and
//!   a packet passes only if *every* applicable Vireo chain lets it through (the source VM's
//!   `out` chain, the destination VM's `in` chain, and the network perimeter chains).
//! - Interface names and addresses come from validated types, so nothing needs escaping.
//!
//! Semantics:
//! - Bridged VM-to-VM traffic reaches the `inet` forward hook because Vireo bridges are
//!   created with `nf_call_iptables 1` (br_netfilter); there the input/output interface is
//!   the bridge, so per-VM chains are keyed on the VM's IPv4 addresses, which the
//!   anti-spoofing chains (bridge family, per tap) make trustworthy.
//! - Network rules are perimeter rules: `out` = leaving the bridge for another interface,
//!   `in` = arriving from another interface. Traffic between a VM and the host itself is not
//!   filtered (DHCP and DNS must keep working).
//! - `ct state established,related` is accepted first, so rules decide new flows only.
//! - IPv6 exists only on networks with an IPv6 subnet. There a VM's IPv6 addresses are its
//!   EUI-64 link-local address and its EUI-64 address in the subnet (derived from its MAC, see
//!   [`crate::addr6`]); anti-spoofing admits only those as sources (plus `::` for duplicate
//!   address detection, router solicitation and MLD), drops router advertisements, redirects
//!   and DHCPv6 server messages from VMs and neighbour advertisements for addresses that are
//!   not the VM's, and the per-VM chains are keyed on those addresses too. Neighbour
//!   discovery and MLD are accepted in the forward hook before the per-VM chains (they are
//!   link-local plumbing, not flows a firewall rule means). Anti-spoofed ports on networks
//!   without IPv6 drop every IPv6 frame and anything that is not IPv4/ARP.
//! - Masquerade covers the IPv6 subnet of a nat network like its IPv4 subnet; port forwards
//!   are IPv4 only.

use crate::addr::{IfName, Ipv4Cidr, MacAddr};
use crate::addr6::Ipv6Cidr;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

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
    fn name(self) -> &'static str {
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

    fn network(&self, bridge: &IfName) -> Option<&NetworkRules> {
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

/// Renders the whole ruleset as one `nft -f` transaction (see module invariants).
pub fn render_ruleset(rs: &Ruleset) -> Result<String, RulesetError> {
    rs.validate()?;
    let mut out = String::new();
    out.push_str("# Generated by Vireo; applied atomically with `nft -f -`. Do not edit.\n");
    for family in ["inet", "bridge"] {
        let _ = writeln!(out, "table {family} vireo\ndelete table {family} vireo");
    }
    render_inet(rs, &mut out);
    render_bridge(rs, &mut out);
    Ok(out)
}

fn render_inet(rs: &Ruleset, out: &mut String) {
    out.push_str("\ntable inet vireo {\n");

    // Filter: dispatch to per-network perimeter chains and per-VM chains.
    let mut forward = vec!["ct state established,related accept".to_owned()];
    if rs.networks.iter().any(|n| n.subnet6.is_some()) {
        forward.push(format!("icmpv6 type {ND_AND_MLD} accept"));
    }
    for net in &rs.networks {
        let b = &net.bridge;
        match net.uplink {
            Uplink::Isolated => {
                forward.push(format!("iifname \"{b}\" oifname != \"{b}\" drop"));
                forward.push(format!("oifname \"{b}\" iifname != \"{b}\" drop"));
            }
            Uplink::Nat { .. } | Uplink::Bridged => {
                let id = b.ident();
                forward.push(format!(
                    "iifname \"{b}\" oifname != \"{b}\" jump net_{id}_out"
                ));
                forward.push(format!(
                    "oifname \"{b}\" iifname != \"{b}\" jump net_{id}_in"
                ));
            }
        }
    }
    for port in rs.ports.iter().filter(|p| has_chains(p)) {
        let id = port.tap.ident();
        if !port.ips.is_empty() {
            let ips = addr_set(&port.ips);
            forward.push(format!("ip saddr {ips} jump vm_{id}_out"));
            forward.push(format!("ip daddr {ips} jump vm_{id}_in"));
        }
        if !port.ips6.is_empty() {
            let ips = addr_set(&port.ips6);
            forward.push(format!("ip6 saddr {ips} jump vm_{id}_out"));
            forward.push(format!("ip6 daddr {ips} jump vm_{id}_in"));
        }
    }
    chain(
        out,
        "forward",
        Some("type filter hook forward priority filter; policy accept;"),
        &forward,
    );

    for net in rs
        .networks
        .iter()
        .filter(|n| !matches!(n.uplink, Uplink::Isolated))
    {
        let id = net.bridge.ident();
        for dir in [Direction::In, Direction::Out] {
            let mut body = Vec::new();
            if dir == Direction::In {
                // Explicit port forwards pass the perimeter; VM chains still apply.
                body.push("ct status dnat return".to_owned());
            }
            body.extend(rules_for(&net.rules, dir));
            body.extend(default_verdict(
                match dir {
                    Direction::In => net.default_in,
                    Direction::Out => net.default_out,
                },
                None,
            ));
            chain(out, &format!("net_{id}_{}", dir_name(dir)), None, &body);
        }
    }
    for port in rs.ports.iter().filter(|p| has_chains(p)) {
        let id = port.tap.ident();
        for dir in [Direction::In, Direction::Out] {
            let mut body = rules_for(&port.rules, dir);
            body.extend(default_verdict(
                match dir {
                    Direction::In => port.default_in,
                    Direction::Out => port.default_out,
                },
                None,
            ));
            chain(out, &format!("vm_{id}_{}", dir_name(dir)), None, &body);
        }
    }

    // NAT: port forwards (prerouting for remote clients, output for the host itself) and
    // masquerade (uplink egress, plus the hairpin reply path of forwarded connections).
    let mut dnat = Vec::new();
    for f in &rs.forwards {
        let dst = match f.host_addr {
            Some(a) => format!("ip daddr {a}"),
            None => "fib daddr type local".to_owned(),
        };
        dnat.push(format!(
            "{dst} {p} dport {hp} dnat ip to {ip}:{vp}",
            p = f.protocol.name(),
            hp = f.host_port,
            ip = f.vm_ip,
            vp = f.vm_port
        ));
    }
    chain(
        out,
        "prerouting",
        Some("type nat hook prerouting priority dstnat; policy accept;"),
        &dnat,
    );
    chain(
        out,
        "output",
        Some("type nat hook output priority -100; policy accept;"),
        &dnat,
    );
    let mut post = Vec::new();
    for net in &rs.networks {
        if let Uplink::Nat { interface } = &net.uplink {
            let s = net.subnet;
            // The uplink is arbitrary host input; quote it safely for nft.
            post.push(format!(
                "ip saddr {s} ip daddr != {s} oifname {} masquerade",
                nft_string(interface)
            ));
            if let Some(s6) = net.subnet6 {
                post.push(format!(
                    "ip6 saddr {s6} ip6 daddr != {s6} oifname {} masquerade",
                    nft_string(interface)
                ));
            }
        }
    }
    for f in &rs.forwards {
        if let Some(net) = rs.network(&f.bridge) {
            post.push(format!(
                "ip saddr {s} ip daddr {ip} {p} dport {vp} ct status dnat masquerade",
                s = net.subnet,
                ip = f.vm_ip,
                p = f.protocol.name(),
                vp = f.vm_port
            ));
        }
    }
    chain(
        out,
        "postrouting",
        Some("type nat hook postrouting priority srcnat; policy accept;"),
        &post,
    );
    out.push_str("}\n");
}

fn render_bridge(rs: &Ruleset, out: &mut String) {
    out.push_str("\ntable bridge vireo {\n");
    let spoofed: Vec<&VmPort> = rs.ports.iter().filter(|p| p.anti_spoofing).collect();
    let dispatch: Vec<String> = spoofed
        .iter()
        .map(|p| format!("iifname \"{}\" jump port_{}", p.tap, p.tap.ident()))
        .collect();
    chain(
        out,
        "prerouting",
        Some("type filter hook prerouting priority filter; policy accept;"),
        &dispatch,
    );
    for p in spoofed {
        let mac = p.mac;
        let mut ips = p.ips.clone();
        let mut body = vec![
            format!("ether saddr != {mac} drop"),
            format!("ether type arp arp saddr ether != {mac} drop"),
        ];
        // ARP probes (RFC 5227) come from 0.0.0.0.
        ips.push(Ipv4Addr::UNSPECIFIED);
        body.push(format!(
            "ether type arp arp saddr ip != {} drop",
            addr_set(&ips)
        ));
        // DHCP before the VM has an address.
        body.push(
            "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 return"
                .to_owned(),
        );
        if p.ips.is_empty() {
            body.push("ether type ip drop".to_owned());
        } else {
            body.push(format!(
                "ether type ip ip saddr != {} drop",
                addr_set(&p.ips)
            ));
        }
        if p.ips6.is_empty() {
            body.push("ether type != { ip, arp } drop".to_owned());
        } else {
            let ips6 = addr_set(&p.ips6);
            // Before an address is usable (duplicate address detection) these come from ::.
            body.push(format!(
                "ether type ip6 ip6 saddr :: icmpv6 type {UNSPECIFIED_SOURCE_OK} return"
            ));
            body.push(format!("ether type ip6 ip6 saddr != {ips6} drop"));
            // VMs are neither routers nor DHCPv6 servers.
            body.push(
                "ether type ip6 icmpv6 type { nd-router-advert, nd-redirect } drop".to_owned(),
            );
            body.push("ether type ip6 udp sport 547 drop".to_owned());
            // A neighbour advertisement's target (the 128 bits after type, code, checksum
            // and flags) must be the VM's own address: the IPv6 form of ARP spoofing.
            let targets: Vec<String> = p
                .ips6
                .iter()
                .map(|a| format!("0x{:032x}", u128::from(*a)))
                .collect();
            body.push(format!(
                "ether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != {{ {} }} drop",
                targets.join(", ")
            ));
            body.push("ether type != { ip, arp, ip6 } drop".to_owned());
        }
        chain(out, &format!("port_{}", p.tap.ident()), None, &body);
    }
    out.push_str("}\n");
}

/// Neighbour discovery and multicast listener messages (accepted in the forward hook).
const ND_AND_MLD: &str = "{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query, mld-listener-report, mld2-listener-report }";

/// What a VM may send from `::` (RFC 4862 DAD, RFC 4861 router solicitation, RFC 3590 MLD).
const UNSPECIFIED_SOURCE_OK: &str =
    "{ nd-router-solicit, nd-neighbor-solicit, mld-listener-report, mld2-listener-report }";

/// Whether `ip` is in fe80::/64, where link-local addresses are formed.
fn is_link_local64(ip: Ipv6Addr) -> bool {
    ip.segments()[..4] == [0xfe80, 0, 0, 0]
}

/// Ports with a known address of either family get per-VM chains.
fn has_chains(p: &VmPort) -> bool {
    !p.ips.is_empty() || !p.ips6.is_empty()
}

fn chain(out: &mut String, name: &str, header: Option<&str>, body: &[String]) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(h) = header {
        let _ = writeln!(out, "\t\t{h}");
    }
    for line in body {
        let _ = writeln!(out, "\t\t{line}");
    }
    out.push_str("\t}\n");
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

fn rules_for(rules: &[FirewallRule], dir: Direction) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.direction == dir)
        .map(|r| {
            let mut parts = Vec::new();
            if let Some(peer) = r.peer {
                let field = match dir {
                    Direction::In => "saddr",
                    Direction::Out => "daddr",
                };
                let family = match peer {
                    Cidr::V4(_) => "ip",
                    Cidr::V6(_) => "ip6",
                };
                parts.push(format!("{family} {field} {peer}"));
            }
            match r.protocol {
                Protocol::Tcp | Protocol::Udp => {
                    let name = if r.protocol == Protocol::Tcp {
                        "tcp"
                    } else {
                        "udp"
                    };
                    parts.push(format!("meta l4proto {name}"));
                    if !r.ports.is_empty() {
                        parts.push(format!("th dport {}", port_set(&r.ports)));
                    }
                }
                // ICMP of the peer's family; without a peer, both.
                Protocol::Icmp => parts.push(match r.peer {
                    Some(Cidr::V4(_)) => "meta l4proto icmp".to_owned(),
                    Some(Cidr::V6(_)) => "meta l4proto ipv6-icmp".to_owned(),
                    None => "meta l4proto { icmp, ipv6-icmp }".to_owned(),
                }),
                Protocol::Any => {}
            }
            parts.extend(default_verdict(r.action, Some(r.protocol)));
            parts.join(" ")
        })
        .collect()
}

/// The verdict text for `action`; `None` for an accepting default (fall through = return).
fn default_verdict(action: Action, protocol: Option<Protocol>) -> Option<String> {
    match (action, protocol) {
        (Action::Accept, None) => None,
        (Action::Accept, Some(_)) => Some("return".to_owned()),
        (Action::Drop, _) => Some("drop".to_owned()),
        (Action::Reject, Some(Protocol::Tcp)) => Some("reject with tcp reset".to_owned()),
        (Action::Reject, _) => Some("reject with icmpx type admin-prohibited".to_owned()),
    }
}

fn addr_set<A: fmt::Display>(ips: &[A]) -> String {
    let items: Vec<String> = ips.iter().map(|a| a.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

fn port_set(ports: &[PortRange]) -> String {
    let items: Vec<String> = ports
        .iter()
        .map(|r| {
            if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            }
        })
        .collect();
    format!("{{ {} }}", items.join(", "))
}

/// An nft double-quoted string; characters nft cannot carry in one are dropped, so arbitrary
/// input can never break out of the string.
fn nft_string(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(15)
        .collect();
    format!("\"{clean}\"")
}

/// Could not interpret `nft -j` output.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("nft -j output is not JSON")]
    Json(#[source] serde_json::Error),
    #[error("nft -j output has no \"nftables\" array")]
    Shape,
}

/// The content of Vireo's tables as listed by `nft -j`, with kernel-assigned handles removed,
/// so two snapshots are equal iff the tables hold the same chains and rules in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSnapshot {
    /// Chain and rule objects (as JSON without `handle`), in listing order.
    pub objects: Vec<Value>,
}

impl NftSnapshot {
    /// Parses one or more concatenated `nft -j list table …` outputs.
    pub fn parse(listing: &str) -> Result<Self, SnapshotError> {
        let mut objects = Vec::new();
        for doc in serde_json::Deserializer::from_str(listing).into_iter::<Value>() {
            let doc = doc.map_err(SnapshotError::Json)?;
            let items = doc
                .get("nftables")
                .and_then(Value::as_array)
                .ok_or(SnapshotError::Shape)?;
            for item in items {
                let Some(obj) = item.as_object() else {
                    continue;
                };
                if obj.contains_key("metainfo") {
                    continue;
                }
                let mut item = item.clone();
                strip_handles(&mut item);
                objects.push(item);
            }
        }
        Ok(Self { objects })
    }

    /// Number of rules in the snapshot.
    pub fn rule_count(&self) -> usize {
        self.objects
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count()
    }

    /// Names of the chains in `family`.
    pub fn chains(&self, family: &str) -> Vec<String> {
        self.objects
            .iter()
            .filter_map(|o| o.get("chain"))
            .filter(|c| c.get("family").and_then(Value::as_str) == Some(family))
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }
}

fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            map.values_mut().for_each(strip_handles);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str) -> NetworkRules {
        NetworkRules {
            bridge: IfName::bridge(bridge).unwrap(),
            subnet: subnet.parse().unwrap(),
            subnet6: None,
            uplink: Uplink::Isolated,
            default_in: Action::Accept,
            default_out: Action::Accept,
            rules: vec![],
        }
    }

    fn port(tap: &str, bridge: &str, ip: &str) -> VmPort {
        VmPort {
            tap: IfName::tap(tap).unwrap(),
            bridge: IfName::bridge(bridge).unwrap(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            ips: vec![ip.parse().unwrap()],
            ips6: vec![],
            anti_spoofing: true,
            default_in: Action::Accept,
            default_out: Action::Accept,
            rules: vec![],
        }
    }

    #[test]
    fn validation_catches_bad_references() {
        let mut rs = Ruleset {
            networks: vec![net("vb-a", "10.0.0.0/24")],
            ports: vec![port("vt-x", "vb-b", "10.0.0.2")],
            forwards: vec![],
        };
        assert!(matches!(
            rs.validate(),
            Err(RulesetError::UnknownBridge { .. })
        ));
        rs.ports[0] = port("vt-x", "vb-a", "10.0.1.2");
        assert!(matches!(
            rs.validate(),
            Err(RulesetError::AddressOutsideSubnet { .. })
        ));
        rs.ports[0] = port("vt-x", "vb-a", "10.0.0.2");
        rs.ports[0].rules.push(FirewallRule {
            direction: Direction::In,
            protocol: Protocol::Icmp,
            ports: vec![PortRange::single(1)],
            peer: None,
            action: Action::Drop,
        });
        assert!(matches!(
            rs.validate(),
            Err(RulesetError::PortsWithoutL4 { .. })
        ));
        rs.ports[0].rules[0].protocol = Protocol::Tcp;
        rs.ports[0].rules[0].ports = vec![PortRange {
            first: 90,
            last: 80,
        }];
        assert!(matches!(
            rs.validate(),
            Err(RulesetError::BadPortRange { .. })
        ));
        rs.ports[0].rules.clear();
        rs.networks.push(net("vb-a", "10.9.0.0/24"));
        assert!(matches!(
            rs.validate(),
            Err(RulesetError::DuplicateNetwork { .. })
        ));
    }

    #[test]
    fn forwards_on_any_address_clash_with_specific_ones() {
        let fwd = |addr: Option<&str>| PortForward {
            protocol: L4::Tcp,
            host_addr: addr.map(|a| a.parse().unwrap()),
            host_port: 8080,
            bridge: IfName::bridge("vb-a").unwrap(),
            vm_ip: "10.0.0.2".parse().unwrap(),
            vm_port: 80,
        };
        let mut rs = Ruleset {
            networks: vec![net("vb-a", "10.0.0.0/24")],
            ports: vec![],
            forwards: vec![fwd(Some("192.0.2.1")), fwd(Some("192.0.2.2"))],
        };
        assert_eq!(rs.validate(), Ok(()));
        rs.forwards.push(fwd(None));
        assert!(matches!(
            rs.validate(),
            Err(RulesetError::DuplicateForward { .. })
        ));
        rs.forwards.pop();
        rs.forwards[1].protocol = L4::Udp;
        rs.forwards.push(fwd(None));
        // tcp any vs tcp 192.0.2.1 clashes.
        assert!(rs.validate().is_err());
    }

    #[test]
    fn uplink_names_cannot_break_out_of_strings() {
        assert_eq!(nft_string("eth0\" accept; #"), "\"eth0accept;#\"");
    }

    #[test]
    fn snapshot_ignores_handles_and_metainfo() {
        let a = r#"{"nftables":[{"metainfo":{"version":"1"}},{"chain":{"family":"inet","table":"vireo","name":"forward","handle":1}},{"rule":{"family":"inet","chain":"forward","handle":4,"expr":[{"accept":null}]}}]}"#;
        let b = a.replace("\"handle\":4", "\"handle\":9");
        let sa = NftSnapshot::parse(a).unwrap();
        assert_eq!(sa, NftSnapshot::parse(&b).unwrap());
        assert_eq!(sa.rule_count(), 1);
        assert_eq!(sa.chains("inet"), vec!["forward".to_owned()]);
        let two = format!("{a}\n{a}");
        assert_eq!(NftSnapshot::parse(&two).unwrap().rule_count(), 2);
        assert!(NftSnapshot::parse("{}").is_err());
        assert!(NftSnapshot::parse("not json").is_err());
    }
}
