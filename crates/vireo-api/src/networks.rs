//! Managed-network bodies: `/v1/networks`, `/v1/networks/{name}/leases` and the NIC
//! sub-resource of VMs (`/v1/vms/{name}/nics`).
//!
//! Invariants: request bodies reject unknown fields; addresses and CIDRs travel as strings and
//! are validated by the engine (so a bad value is a 400 naming the field, not a decode error
//! without context); everything the engine stores about a network is echoed in
//! [`NetworkInfo`].
//!
//! IPv6 is optional on nat and isolated networks: `ipv6` is a /64 (ULA `fd…` or global
//! unicast), the bridge takes `ipv6_gateway` (default `…::1`), and every VM NIC's address is
//! the EUI-64 address of its MAC in that /64, whether the guest forms it by SLAAC
//! (`ipv6_dhcp: stateless`, the default) or gets it from DHCPv6 (`stateful`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vireo_types::{MacAddr, Name};

/// What a network connects VMs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkType {
    /// A Vireo bridge with a subnet, DHCP/DNS (dnsmasq) and masquerade to the host's uplink.
    Nat,
    /// VMs join an existing host bridge, or a Vireo bridge over a named uplink; addresses
    /// come from the outside network.
    Bridged,
    /// A Vireo bridge with no uplink (host-only); optional DHCP.
    Isolated,
    /// An Open vSwitch bridge (userspace datapath) with VLAN tags on VM ports.
    Ovs,
}

impl NetworkType {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Nat => "nat",
            NetworkType::Bridged => "bridged",
            NetworkType::Isolated => "isolated",
            NetworkType::Ovs => "ovs",
        }
    }
}

impl std::str::FromStr for NetworkType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nat" => Ok(NetworkType::Nat),
            "bridged" => Ok(NetworkType::Bridged),
            "isolated" => Ok(NetworkType::Isolated),
            "ovs" => Ok(NetworkType::Ovs),
            other => Err(format!(
                "network type must be nat, bridged, isolated or ovs (got {other:?})"
            )),
        }
    }
}

/// Firewall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirewallAction {
    #[default]
    Accept,
    Drop,
    Reject,
}

/// Which traffic a rule matches, seen from the VM (per-VM rules) or the network (network
/// rules): `in` = towards it, `out` = from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirewallDirection {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirewallProtocol {
    Tcp,
    Udp,
    Icmp,
    #[default]
    Any,
}

/// One firewall rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    pub direction: FirewallDirection,
    #[serde(default)]
    pub protocol: FirewallProtocol,
    /// Destination ports (`"22"` or `"8000-8080"`); tcp/udp only; empty = all.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The peer as an IPv4 or IPv6 CIDR (source for `in`, destination for `out`); absent =
    /// anywhere (both families).
    #[serde(default)]
    pub cidr: Option<String>,
    pub action: FirewallAction,
}

/// Default policies plus ordered rules (first match wins).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    #[serde(default)]
    pub default_in: FirewallAction,
    #[serde(default)]
    pub default_out: FirewallAction,
    #[serde(default)]
    pub rules: Vec<FirewallRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForwardProtocol {
    Tcp,
    Udp,
}

/// How guests on a network with IPv6 get their addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ipv6Dhcp {
    /// SLAAC from router advertisements; DNS settings over stateless DHCPv6 (router
    /// advertisements only when the network has DHCP off).
    #[default]
    Stateless,
    /// DHCPv6 hands out the addresses (router advertisements with the M flag, no SLAAC); needs
    /// DHCP on. Useful for guests that would otherwise pick privacy addresses.
    Stateful,
}

/// `Some(value)` for a present field, even when the value is `null` (so `null` can mean
/// "remove" and an absent field "leave unchanged").
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// host address:port → VM address:port (nat networks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub protocol: ForwardProtocol,
    /// Host address to match; absent = any of the host's addresses.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub host_address: Option<Ipv4Addr>,
    pub host_port: u16,
    /// Target address inside the network's subnet (e.g. a NIC's reserved address).
    #[schema(value_type = String)]
    pub target: Ipv4Addr,
    pub target_port: u16,
}

/// A static DHCP reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub mac: MacAddr,
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    /// Published in the network's DNS when set.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// `POST /v1/networks`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkRequest {
    pub name: Name,
    #[serde(rename = "type")]
    pub kind: NetworkType,
    /// IPv4 subnet (`10.20.0.0/24`) for nat and isolated networks; chosen to avoid the
    /// host's routes and other networks when absent.
    #[serde(default)]
    pub subnet: Option<String>,
    /// The bridge's address (DHCP/DNS server and gateway); default: the subnet's first host.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub gateway: Option<Ipv4Addr>,
    /// Serve DHCP (and DNS) with dnsmasq; default on for nat and isolated networks.
    #[serde(default)]
    pub dhcp: Option<bool>,
    /// Optional IPv6 /64 (`fd00:1:2:3::/64`; unique local or global unicast) for nat and
    /// isolated networks; must not overlap another network's or a host route's IPv6 subnet.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// The bridge's IPv6 address; default `<ipv6 prefix>::1`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// How guests get IPv6 addresses; default `stateless` (SLAAC).
    #[serde(default)]
    pub ipv6_dhcp: Option<Ipv6Dhcp>,
    /// nat: the interface to masquerade behind (default: the default route's interface).
    /// bridged: the host interface Vireo enslaves to its bridge. ovs: optional trunk port.
    #[serde(default)]
    pub uplink: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// DNS domain of VM names; default `vireo`.
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub reservations: Vec<Reservation>,
    #[serde(default)]
    pub firewall: Firewall,
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
    #[serde(default)]
    pub description: String,
}

/// `PATCH /v1/networks/{name}` (send `If-Match: <revision>` for optimistic concurrency).
/// Absent fields are left unchanged; present ones replace the whole value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNetworkRequest {
    /// A new IPv6 /64, or `null` to remove IPv6 from the network.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub ipv6: Option<Option<String>>,
    /// The bridge's IPv6 address (default `<prefix>::1` when `ipv6` changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ipv6_gateway: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_dhcp: Option<Ipv6Dhcp>,
    #[serde(default)]
    pub reservations: Option<Vec<Reservation>>,
    #[serde(default)]
    pub firewall: Option<Firewall>,
    #[serde(default)]
    pub port_forwards: Option<Vec<PortForward>>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `GET /v1/networks/{name}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkInfo {
    pub name: Name,
    #[serde(rename = "type")]
    pub kind: NetworkType,
    /// The Linux (or OVS) bridge VMs' taps join.
    pub bridge: String,
    pub subnet: Option<String>,
    #[schema(value_type = Option<String>)]
    pub gateway: Option<Ipv4Addr>,
    pub dhcp: bool,
    /// The IPv6 /64, if the network has IPv6.
    pub ipv6: Option<String>,
    /// The bridge's IPv6 address (DNS server; router advertisements come from its
    /// link-local address).
    #[schema(value_type = Option<String>)]
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// How guests get IPv6 addresses (absent without IPv6).
    pub ipv6_dhcp: Option<Ipv6Dhcp>,
    pub uplink: Option<String>,
    pub mtu: Option<u32>,
    pub domain: String,
    pub reservations: Vec<Reservation>,
    pub firewall: Firewall,
    pub port_forwards: Vec<PortForward>,
    pub description: String,
    /// The network Vireo created on first start.
    pub default: bool,
    pub created_at: DateTime<Utc>,
    /// VMs with a NIC on this network (`project/name`).
    pub used_by: Vec<String>,
    /// Store revision; send it back as `If-Match` to update.
    pub revision: u64,
}

/// `GET /v1/networks/{name}/leases`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    pub mac: MacAddr,
    /// IPv4 address, or IPv6 address of a DHCPv6 lease (`stateful` networks).
    #[schema(value_type = String)]
    pub ip: IpAddr,
    pub hostname: Option<String>,
    /// Unix time the lease expires (0 = never).
    pub expires: u64,
    /// `dynamic` (from the pool) or `reserved` (a reservation, possibly not handed out yet).
    pub kind: String,
}

/// `POST /v1/vms/{name}/nics`: attach a NIC (hot-plugged when the VM runs).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNicRequest {
    pub network: Name,
    /// Default `ethN`, the first free index.
    #[serde(default)]
    pub name: Option<Name>,
    /// Default: a generated locally administered address, unique on this host.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// VLAN tag (access port), 1-4094; ovs networks.
    #[serde(default)]
    pub vlan: Option<u32>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Link state; default up.
    #[serde(default)]
    pub link_up: Option<bool>,
    /// Fixed address (a DHCP reservation); default: allocated from the subnet on networks
    /// with DHCP.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Addr>,
    /// Per-VM firewall for this NIC.
    #[serde(default)]
    pub firewall: Option<Firewall>,
}

/// `PATCH /v1/vms/{name}/nics/{nic}`
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNicRequest {
    #[serde(default)]
    pub link_up: Option<bool>,
    #[serde(default)]
    pub firewall: Option<Firewall>,
}

/// A VM NIC on a managed network, with its network-side settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NicDetail {
    pub name: Name,
    pub mac: MacAddr,
    pub network: String,
    /// Host tap device (managed networks) while it exists.
    pub tap: Option<String>,
    pub vlan: Option<u32>,
    pub mtu: Option<u32>,
    pub link_up: bool,
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Addr>,
    /// The NIC's IPv6 address on networks with IPv6 (the EUI-64 address of its MAC).
    #[schema(value_type = Option<String>)]
    pub ipv6: Option<Ipv6Addr>,
    pub firewall: Firewall,
}

/// `GET /v1/host` network section: which VLAN back-ends this host can use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkSupport {
    /// Managed networks are enabled in the daemon's config.
    pub managed: bool,
    /// Linux bridges accept `vlan_filtering 1` (probed on a throwaway bridge).
    pub bridge_vlan_filtering: bool,
    /// Open vSwitch binaries are installed and Vireo's ovsdb-server/ovs-vswitchd run.
    pub ovs: bool,
    /// Why a back-end is unavailable.
    pub detail: Vec<String>,
}

impl CreateNetworkRequest {
    /// A request for network `name` of `kind` with every option at its default (subnet
    /// chosen by the daemon, DHCP on, no IPv6, no rules).
    pub fn new(name: Name, kind: NetworkType) -> Self {
        CreateNetworkRequest {
            name,
            kind,
            subnet: None,
            gateway: None,
            dhcp: None,
            ipv6: None,
            ipv6_gateway: None,
            ipv6_dhcp: None,
            uplink: None,
            mtu: None,
            domain: None,
            reservations: vec![],
            firewall: Firewall::default(),
            port_forwards: vec![],
            description: String::new(),
        }
    }
}

impl AddNicRequest {
    /// A NIC on `network` with every option at its default (generated MAC, next name).
    pub fn on(network: Name) -> Self {
        AddNicRequest {
            network,
            name: None,
            mac: None,
            vlan: None,
            mtu: None,
            link_up: None,
            ip: None,
            firewall: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_update_tells_null_from_absent() {
        let parse = |s: &str| serde_json::from_str::<UpdateNetworkRequest>(s);
        assert_eq!(parse("{}").unwrap().ipv6, None);
        assert_eq!(parse(r#"{"ipv6":null}"#).unwrap().ipv6, Some(None));
        assert_eq!(
            parse(r#"{"ipv6":"fd00::/64"}"#).unwrap().ipv6,
            Some(Some("fd00::/64".into()))
        );
        assert!(
            parse(r#"{"ipv7":null}"#).is_err(),
            "unknown fields are rejected"
        );
        // Round trip: "leave unchanged" is not sent as null.
        let text = serde_json::to_string(&UpdateNetworkRequest::default()).unwrap();
        assert!(!text.contains("ipv6"), "{text}");
        let remove = UpdateNetworkRequest {
            ipv6: Some(None),
            ..Default::default()
        };
        let text = serde_json::to_string(&remove).unwrap();
        assert_eq!(parse(&text).unwrap().ipv6, Some(None));
        let c: CreateNetworkRequest = serde_json::from_str(
            r#"{"name":"n","type":"nat","ipv6":"fd00::/64","ipv6_dhcp":"stateful"}"#,
        )
        .unwrap();
        assert_eq!(c.ipv6_dhcp, Some(Ipv6Dhcp::Stateful));
    }
}
