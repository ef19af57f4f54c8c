//! Managed-network records and the pure functions that turn them into the host state Vireo
//! wants (bridges, taps, one nftables ruleset, dnsmasq configs).
//!
//! Invariants:
//! - a [`NetworkRecord`] in the store always passed [`validate_network`]: its subnet,
//!   gateway, reservations, firewall and port forwards render without error;
//! - bridge names are `vb-…` and tap names `vt-` + the NIC's 12 hex MAC digits, so every host
//!   object Vireo creates carries its prefix and a tap name is unique exactly when its MAC is;
//! - [`desired_state`] is deterministic for a given input (sorted maps, stable order);
//! - on a network with IPv6 every NIC's IPv6 addresses are functions of its MAC (EUI-64
//!   link-local, EUI-64 address in the network's /64: [`nic_ipv6`]), so DNS, DHCPv6
//!   reservations, anti-spoofing and firewall chains agree without storing anything.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vireo_api::networks::{
    Firewall, FirewallAction, FirewallDirection, FirewallProtocol, Ipv6Dhcp, NetworkType,
    PortForward, Reservation,
};
use vireo_net::addr6::{eui64_address, eui64_link_local};
use vireo_net::nft::{self, PortRange};
use vireo_net::{HostName, IfName, Ipv4Cidr, Ipv6Cidr, Mtu};
use vireo_types::{MacAddr, Name};

pub use super::desired::{desired_state, dnsmasq_paths, DesiredState, LiveNic};

/// A managed network as stored under `/networks/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub uuid: Uuid,
    pub name: Name,
    pub kind: NetworkType,
    pub bridge: String,
    pub subnet: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub dhcp: bool,
    /// Optional IPv6 /64 (nat and isolated networks).
    #[serde(default)]
    pub ipv6: Option<Ipv6Cidr>,
    /// The bridge's IPv6 address (set exactly when `ipv6` is).
    #[serde(default)]
    pub ipv6_gateway: Option<Ipv6Addr>,
    #[serde(default)]
    pub ipv6_dhcp: Ipv6Dhcp,
    /// nat: masquerade interface (resolved at apply time when `None`); bridged: enslaved
    /// interface; ovs: trunk port.
    pub uplink: Option<String>,
    pub mtu: Option<u32>,
    pub domain: String,
    pub reservations: Vec<Reservation>,
    pub firewall: Firewall,
    pub port_forwards: Vec<PortForward>,
    pub description: String,
    pub default: bool,
    pub created_at: DateTime<Utc>,
}

/// One NIC of a VM on a managed network (stored per VM under `/nics/<vm uuid>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicAttachment {
    pub nic: Name,
    pub network: Name,
    pub mac: MacAddr,
    pub tap: String,
    pub vlan: Option<u32>,
    pub mtu: Option<u32>,
    pub link_up: bool,
    pub ip: Option<Ipv4Addr>,
    pub firewall: Firewall,
}

/// Every managed NIC of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNics {
    pub vm_uuid: Uuid,
    pub project: Name,
    pub vm: Name,
    pub nics: Vec<NicAttachment>,
}

/// Invalid network input: `field` names the request field, `message` says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    pub field: &'static str,
    pub message: String,
}

pub(super) fn bad(field: &'static str, message: impl Into<String>) -> ModelError {
    ModelError {
        field,
        message: message.into(),
    }
}

/// The tap of a NIC: `vt-` + the MAC's 12 hex digits (15 bytes, IFNAMSIZ - 1).
pub fn tap_name(mac: MacAddr) -> String {
    let hex: String = mac.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("vt-{hex}")
}

/// The bridge of a network: `vb-<name>` when that fits in 15 bytes, else the name's first
/// seven characters, '-', and four hex digits of a hash of the whole name.
pub fn bridge_name(network: &Name) -> String {
    let n = network.as_str();
    if n.len() <= 12 {
        return format!("vb-{n}");
    }
    // FNV-1a: stable across releases (std's hasher is not).
    let mut h: u32 = 0x811c_9dc5;
    for b in n.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let head = n[..7].trim_end_matches('-');
    format!("vb-{head}-{:04x}", h & 0xffff)
}

/// A NIC's IPv6 addresses on a network with the /64 `subnet`: (link-local, global), both
/// EUI-64 addresses of `mac`.
pub fn nic_ipv6(subnet: Ipv6Cidr, mac: MacAddr) -> Option<(Ipv6Addr, Ipv6Addr)> {
    let mac = vireo_net::MacAddr::new(mac.0).ok()?;
    Some((eui64_link_local(mac), eui64_address(subnet, mac)?))
}

/// Parses `"80"` or `"8000-8080"`.
pub fn parse_port_range(s: &str) -> Option<PortRange> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let first: u16 = a.trim().parse().ok()?;
    let last: u16 = b.trim().parse().ok()?;
    (first > 0 && first <= last).then_some(PortRange { first, last })
}

pub(super) fn action(a: FirewallAction) -> nft::Action {
    match a {
        FirewallAction::Accept => nft::Action::Accept,
        FirewallAction::Drop => nft::Action::Drop,
        FirewallAction::Reject => nft::Action::Reject,
    }
}

/// Converts API firewall rules to the renderer's model (`field` prefixes error fields).
pub fn firewall_rules(
    fw: &Firewall,
    field: &'static str,
) -> Result<Vec<nft::FirewallRule>, ModelError> {
    fw.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ports = r
                .ports
                .iter()
                .map(|p| {
                    parse_port_range(p).ok_or_else(|| {
                        bad(
                            field,
                            format!(
                                "rule {i}: invalid port or range {p:?} (1-65535, first <= last)"
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let protocol = match r.protocol {
                FirewallProtocol::Tcp => nft::Protocol::Tcp,
                FirewallProtocol::Udp => nft::Protocol::Udp,
                FirewallProtocol::Icmp => nft::Protocol::Icmp,
                FirewallProtocol::Any => nft::Protocol::Any,
            };
            if !ports.is_empty() && !matches!(protocol, nft::Protocol::Tcp | nft::Protocol::Udp) {
                return Err(bad(
                    field,
                    format!("rule {i}: ports need protocol tcp or udp"),
                ));
            }
            let peer = match &r.cidr {
                Some(c) => Some(
                    c.parse::<nft::Cidr>()
                        .map_err(|e| bad(field, format!("rule {i}: {e}")))?,
                ),
                None => None,
            };
            Ok(nft::FirewallRule {
                direction: match r.direction {
                    FirewallDirection::In => nft::Direction::In,
                    FirewallDirection::Out => nft::Direction::Out,
                },
                protocol,
                ports,
                peer,
                action: action(r.action),
            })
        })
        .collect()
}

/// Checks a network record on its own (not against other networks or the host): subnet,
/// gateway, reservations, firewall and port forwards per type.
pub fn validate_network(n: &NetworkRecord) -> Result<(), ModelError> {
    IfName::bridge(&n.bridge).map_err(|e| bad("name", e.to_string()))?;
    if let Some(m) = n.mtu {
        Mtu::new(m).map_err(|e| bad("mtu", e.to_string()))?;
    }
    HostName::new(&n.domain).map_err(|e| bad("domain", e.to_string()))?;
    match n.kind {
        NetworkType::Nat | NetworkType::Isolated => {
            let subnet = n
                .subnet
                .ok_or_else(|| bad("subnet", "nat and isolated networks need a subnet"))?;
            if subnet.prefix() > 29 || subnet.prefix() < 8 {
                return Err(bad(
                    "subnet",
                    format!("subnet {subnet} must have a prefix between /8 and /29"),
                ));
            }
            let gw = n.gateway.ok_or_else(|| bad("gateway", "missing gateway"))?;
            if !subnet.contains(gw) || gw == subnet.network() || gw == subnet.broadcast() {
                return Err(bad(
                    "gateway",
                    format!("gateway {gw} is not a host address of {subnet}"),
                ));
            }
            if let Some(u) = &n.uplink {
                if n.kind == NetworkType::Isolated {
                    return Err(bad("uplink", "isolated networks have no uplink"));
                }
                check_ifname(u, "uplink")?;
            }
            if let Some(s6) = n.ipv6 {
                s6.check_managed().map_err(|e| bad("ipv6", e.to_string()))?;
                let gw6 = n
                    .ipv6_gateway
                    .ok_or_else(|| bad("ipv6_gateway", "missing IPv6 gateway"))?;
                s6.check_host_address(gw6)
                    .map_err(|e| bad("ipv6_gateway", e.to_string()))?;
                if n.ipv6_dhcp == Ipv6Dhcp::Stateful && !n.dhcp {
                    return Err(bad(
                        "ipv6_dhcp",
                        "stateful DHCPv6 needs DHCP on the network",
                    ));
                }
            } else if n.ipv6_gateway.is_some() {
                return Err(bad("ipv6_gateway", "an IPv6 gateway needs an ipv6 subnet"));
            }
        }
        NetworkType::Bridged | NetworkType::Ovs => {
            if n.ipv6.is_some() || n.ipv6_gateway.is_some() {
                return Err(bad(
                    "ipv6",
                    format!(
                        "{} networks take addresses from outside: no ipv6 subnet",
                        n.kind.as_str()
                    ),
                ));
            }
            if n.subnet.is_some() || n.gateway.is_some() || n.dhcp {
                return Err(bad(
                    "subnet",
                    format!(
                        "{} networks take addresses from outside: no subnet, gateway or DHCP",
                        n.kind.as_str()
                    ),
                ));
            }
            match &n.uplink {
                Some(u) => check_ifname(u, "uplink")?,
                None if n.kind == NetworkType::Bridged => {
                    return Err(bad("uplink", "bridged networks need an uplink interface"))
                }
                None => {}
            }
            if !n.reservations.is_empty() {
                return Err(bad("reservations", "reservations need a network with DHCP"));
            }
        }
    }
    if !n.port_forwards.is_empty() && n.kind != NetworkType::Nat {
        return Err(bad("port_forwards", "port forwards need a nat network"));
    }
    if n.kind == NetworkType::Ovs
        && (!n.firewall.rules.is_empty() || n.firewall != Firewall::default())
    {
        return Err(bad(
            "firewall",
            "ovs networks carry no Vireo firewall (use a nat or isolated network)",
        ));
    }
    // Render this network alone: catches every renderer invariant.
    desired_state(
        std::slice::from_ref(n),
        &[],
        &[],
        &|_| None,
        Path::new("/var/lib/vireo/net"),
        "root",
    )
    .map(drop)
}

fn check_ifname(name: &str, field: &'static str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.starts_with('-')
        && !name.starts_with("vb-")
        && !name.starts_with("vt-")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{name:?} is not a host interface name Vireo may use"),
        ))
    }
}

/// The lowest host address of `subnet` that is not the gateway, not in `taken` and below the
/// dynamic DHCP pool (the pool starts at the middle of the subnet), or `None` when full.
pub fn allocate_ip(
    subnet: Ipv4Cidr,
    gateway: Ipv4Addr,
    taken: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let size = subnet.size();
    let end = if size > 16 { size / 2 } else { size - 1 };
    (1..end)
        .filter_map(|i| subnet.nth(i as u32))
        .find(|ip| *ip != gateway && !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_api::networks::ForwardProtocol;

    fn nat(name: &str, subnet: &str) -> NetworkRecord {
        let s: Ipv4Cidr = subnet.parse().unwrap();
        NetworkRecord {
            uuid: Uuid::nil(),
            name: Name::new(name).unwrap(),
            kind: NetworkType::Nat,
            bridge: bridge_name(&Name::new(name).unwrap()),
            subnet: Some(s),
            gateway: s.nth(1),
            dhcp: true,
            ipv6: None,
            ipv6_gateway: None,
            ipv6_dhcp: Ipv6Dhcp::Stateless,
            uplink: None,
            mtu: None,
            domain: "vireo".into(),
            reservations: vec![],
            firewall: Firewall::default(),
            port_forwards: vec![],
            description: String::new(),
            default: false,
            created_at: DateTime::<Utc>::from_timestamp(0, 0).unwrap(),
        }
    }

    #[test]
    fn names_fit_ifnamsiz_and_carry_prefixes() {
        assert_eq!(bridge_name(&Name::new("lan").unwrap()), "vb-lan");
        let long = bridge_name(&Name::new("a-very-long-network-name").unwrap());
        assert!(long.len() <= 15 && long.starts_with("vb-a-very"), "{long}");
        assert_ne!(
            long,
            bridge_name(&Name::new("a-very-long-network-nam2").unwrap())
        );
        let mac: MacAddr = "0a:76:72:01:02:03".parse().unwrap();
        assert_eq!(tap_name(mac), "vt-0a7672010203");
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("22"), Some(PortRange::single(22)));
        assert_eq!(
            parse_port_range("8000-8080"),
            Some(PortRange {
                first: 8000,
                last: 8080
            })
        );
        for bad in ["0", "9-8", "x", "70000", ""] {
            assert_eq!(parse_port_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_rejects_bad_input() {
        assert!(validate_network(&nat("lan", "10.9.0.0/24")).is_ok());
        let mut n = nat("lan", "10.9.0.0/24");
        n.gateway = Some("10.9.1.1".parse().unwrap());
        assert_eq!(validate_network(&n).unwrap_err().field, "gateway");
        let mut n = nat("lan", "10.9.0.0/24");
        n.firewall.rules.push(vireo_api::networks::FirewallRule {
            direction: FirewallDirection::In,
            protocol: FirewallProtocol::Icmp,
            ports: vec!["22".into()],
            cidr: None,
            action: FirewallAction::Drop,
        });
        assert_eq!(validate_network(&n).unwrap_err().field, "firewall");
        let mut n = nat("lan", "10.9.0.0/24");
        n.kind = NetworkType::Isolated;
        n.port_forwards.push(PortForward {
            protocol: ForwardProtocol::Tcp,
            host_address: None,
            host_port: 8080,
            target: "10.9.0.5".parse().unwrap(),
            target_port: 80,
        });
        assert_eq!(validate_network(&n).unwrap_err().field, "port_forwards");
        let mut n = nat("lan", "10.9.0.0/24");
        let mac: MacAddr = "0a:76:72:01:02:03".parse().unwrap();
        n.reservations = vec![
            Reservation {
                mac,
                ip: "10.9.0.5".parse().unwrap(),
                hostname: None,
            },
            Reservation {
                mac,
                ip: "10.9.0.6".parse().unwrap(),
                hostname: None,
            },
        ];
        assert_eq!(validate_network(&n).unwrap_err().field, "reservations");
    }

    #[test]
    fn ipv6_validation() {
        let with6 = |subnet: &str, gw: &str| {
            let mut n = nat("lan", "10.9.0.0/24");
            n.ipv6 = Some(subnet.parse().unwrap());
            n.ipv6_gateway = Some(gw.parse().unwrap());
            n
        };
        assert_eq!(validate_network(&with6("fd00:9::/64", "fd00:9::1")), Ok(()));
        let field = |n: &NetworkRecord| validate_network(n).unwrap_err().field;
        assert_eq!(field(&with6("fd00:9::/56", "fd00:9::1")), "ipv6");
        assert_eq!(field(&with6("fe80::/64", "fe80::1")), "ipv6");
        assert_eq!(field(&with6("fd00:9::/64", "fd00:8::1")), "ipv6_gateway");
        assert_eq!(field(&with6("fd00:9::/64", "fd00:9::")), "ipv6_gateway");
        let mut n = with6("fd00:9::/64", "fd00:9::1");
        n.ipv6_gateway = None;
        assert_eq!(field(&n), "ipv6_gateway");
        let mut n = with6("fd00:9::/64", "fd00:9::1");
        (n.dhcp, n.ipv6_dhcp) = (false, Ipv6Dhcp::Stateful);
        assert_eq!(field(&n), "ipv6_dhcp");
        n.ipv6_dhcp = Ipv6Dhcp::Stateless;
        assert_eq!(validate_network(&n), Ok(()), "RA without DHCP");
        let mut n = with6("fd00:9::/64", "fd00:9::1");
        (n.kind, n.subnet, n.gateway, n.dhcp) = (NetworkType::Ovs, None, None, false);
        assert_eq!(field(&n), "ipv6");
        let mut n = nat("lan", "10.9.0.0/24");
        n.ipv6_gateway = Some("fd00:9::1".parse().unwrap());
        assert_eq!(field(&n), "ipv6_gateway");
        // IPv6 firewall peers parse; garbage does not.
        let mut n = with6("fd00:9::/64", "fd00:9::1");
        n.firewall.rules.push(vireo_api::networks::FirewallRule {
            direction: FirewallDirection::In,
            protocol: FirewallProtocol::Tcp,
            ports: vec!["22".into()],
            cidr: Some("2001:db8::/32".into()),
            action: FirewallAction::Accept,
        });
        assert_eq!(validate_network(&n), Ok(()));
        n.firewall.rules[0].cidr = Some("2001:db8::1/32".into());
        assert_eq!(field(&n), "firewall");
    }

    #[test]
    fn nic_ipv6_is_the_eui64_address() {
        let mac: MacAddr = "0a:76:72:01:02:03".parse().unwrap();
        let (ll, g) = nic_ipv6("fd00:9::/64".parse().unwrap(), mac).unwrap();
        assert_eq!(ll, "fe80::876:72ff:fe01:203".parse::<Ipv6Addr>().unwrap());
        assert_eq!(g, "fd00:9::876:72ff:fe01:203".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn desired_state_has_bridges_taps_rules_and_dnsmasq() {
        let n = nat("lan", "10.9.0.0/24");
        let mac: MacAddr = "0a:76:72:01:02:03".parse().unwrap();
        let a = NicAttachment {
            nic: Name::new("eth0").unwrap(),
            network: n.name.clone(),
            mac,
            tap: tap_name(mac),
            vlan: None,
            mtu: None,
            link_up: true,
            ip: Some("10.9.0.2".parse().unwrap()),
            firewall: Firewall::default(),
        };
        let vm = Name::new("web1").unwrap();
        let st = desired_state(
            &[n],
            &[LiveNic {
                attachment: a.clone(),
                vm: vm.clone(),
            }],
            &[(vm, a)],
            &|_| Some("eth0".into()),
            Path::new("/var/lib/vireo/net"),
            "root",
        )
        .unwrap();
        assert_eq!(st.bridges.len(), 1);
        assert_eq!(st.taps[0].name.as_str(), "vt-0a7672010203");
        assert!(st.forwarding);
        let conf = &st.dnsmasq["lan"];
        assert!(
            conf.contains("dhcp-host=0a:76:72:01:02:03,10.9.0.2,web1"),
            "{conf}"
        );
        assert!(conf.contains("dhcp-range=10.9.0.128,10.9.0.254"), "{conf}");
        let rules = nft::render_ruleset(&st.ruleset).unwrap();
        assert!(
            rules.contains("oifname eth0 masquerade") || rules.contains("masquerade"),
            "{rules}"
        );
    }

    #[test]
    fn allocation_skips_gateway_and_taken() {
        let s: Ipv4Cidr = "10.0.0.0/24".parse().unwrap();
        let gw: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let mut taken = BTreeSet::new();
        assert_eq!(
            allocate_ip(s, gw, &taken),
            Some("10.0.0.2".parse().unwrap())
        );
        taken.insert("10.0.0.2".parse().unwrap());
        assert_eq!(
            allocate_ip(s, gw, &taken),
            Some("10.0.0.3".parse().unwrap())
        );
        let small: Ipv4Cidr = "10.0.0.0/30".parse().unwrap();
        let mut t2 = BTreeSet::new();
        t2.insert("10.0.0.2".parse().unwrap());
        assert_eq!(allocate_ip(small, gw, &t2), None);
    }
}
