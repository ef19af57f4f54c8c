//! The host state Vireo wants for its managed networks, computed from the records (pure):
//! bridges, taps, VLAN and OVS ports, one nftables ruleset, dnsmasq configs, forwarding.
//! [`desired_state`] is deterministic for a given input (sorted maps, stable order).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use vireo_api::networks::{ForwardProtocol, Ipv6Dhcp, NetworkType};
use vireo_net::dnsmasq::{self, DnsmasqConfig, Ipv6Mode, Ipv6Settings, Upstream};
use vireo_net::host::{DesiredBridge, DesiredTap};
use vireo_net::nft::{self, NetworkRules, Ruleset, Uplink, VmPort, L4};
use vireo_net::ovs::DesiredOvsBridge;
use vireo_net::{HostName, IfName, Ipv4Cidr, Mtu, VlanId};
use vireo_types::{MacAddr, Name};

use super::model::*;

/// A tap that exists (its VM runs) with what the network layer needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNic {
    pub attachment: NicAttachment,
    pub vm: Name,
}

/// What the host should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// Linux bridges (nat, isolated, bridged networks).
    pub bridges: Vec<DesiredBridge>,
    /// Taps on Linux bridges.
    pub taps: Vec<DesiredTap>,
    /// Linux bridges that need `vlan_filtering` (a NIC on them has a VLAN tag).
    pub vlan_bridges: Vec<IfName>,
    /// Access VLAN of taps on Linux bridges.
    pub access_vlans: Vec<(IfName, VlanId)>,
    /// Host interfaces to enslave to a bridge (bridged networks): (interface, bridge).
    pub enslave: Vec<(String, IfName)>,
    /// OVS bridges and their ports: bridge → [(tap, vlan)] and optional trunk uplink.
    pub ovs: Vec<DesiredOvsBridge>,
    pub ruleset: Ruleset,
    /// dnsmasq config text per network with DHCP.
    pub dnsmasq: BTreeMap<String, String>,
    pub forwarding: bool,
    /// A nat network has IPv6: IPv6 forwarding must be on.
    pub forwarding6: bool,
}

/// Where a network's dnsmasq files live.
pub fn dnsmasq_paths(net_dir: &Path, network: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = net_dir.join(network);
    (
        d.join("dnsmasq.conf"),
        d.join("leases"),
        d.join("dnsmasq.pid"),
    )
}

/// Computes the desired host state (pure). `live` are the NICs whose taps exist; `reserved`
/// every VM NIC on every network, running or not (DHCP reservations and DNS names);
/// `uplink_of` resolves a nat network's masquerade interface when its record names none.
pub fn desired_state(
    networks: &[NetworkRecord],
    live: &[LiveNic],
    reserved: &[(Name, NicAttachment)],
    uplink_of: &dyn Fn(&NetworkRecord) -> Option<String>,
    net_dir: &Path,
    dnsmasq_user: &str,
) -> Result<DesiredState, ModelError> {
    let mut st = DesiredState {
        bridges: vec![],
        taps: vec![],
        vlan_bridges: vec![],
        access_vlans: vec![],
        enslave: vec![],
        ovs: vec![],
        ruleset: Ruleset::default(),
        dnsmasq: BTreeMap::new(),
        forwarding: false,
        forwarding6: false,
    };
    let by_name: BTreeMap<&str, &NetworkRecord> =
        networks.iter().map(|n| (n.name.as_str(), n)).collect();
    for n in networks {
        let bridge = IfName::bridge(&n.bridge).map_err(|e| bad("name", e.to_string()))?;
        let mtu = n
            .mtu
            .map(Mtu::new)
            .transpose()
            .map_err(|e| bad("mtu", e.to_string()))?;
        if n.kind == NetworkType::Ovs {
            st.ovs.push(DesiredOvsBridge {
                bridge,
                mtu,
                uplink: n.uplink.clone(),
                ports: vec![],
            });
            continue;
        }
        let address = match (n.subnet, n.gateway) {
            (Some(s), Some(g)) => Some((g, s)),
            _ => None,
        };
        let address6 = n.ipv6.zip(n.ipv6_gateway).map(|(s, g)| (g, s));
        st.bridges.push(DesiredBridge {
            name: bridge.clone(),
            mtu,
            address,
            address6,
        });
        let uplink = match n.kind {
            NetworkType::Nat => {
                st.forwarding = true;
                st.forwarding6 |= n.ipv6.is_some();
                match n.uplink.clone().or_else(|| uplink_of(n)) {
                    Some(interface) => Uplink::Nat { interface },
                    // No route out yet: VMs still reach each other and the host.
                    None => Uplink::Isolated,
                }
            }
            NetworkType::Isolated => Uplink::Isolated,
            _ => {
                if let Some(u) = &n.uplink {
                    st.enslave.push((u.clone(), bridge.clone()));
                }
                Uplink::Bridged
            }
        };
        st.ruleset.networks.push(NetworkRules {
            bridge: bridge.clone(),
            subnet: n.subnet.unwrap_or(
                Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0)
                    .map_err(|e| bad("subnet", e.to_string()))?,
            ),
            subnet6: n.ipv6,
            uplink,
            default_in: action(n.firewall.default_in),
            default_out: action(n.firewall.default_out),
            rules: firewall_rules(&n.firewall, "firewall")?,
        });
        for f in &n.port_forwards {
            st.ruleset.forwards.push(nft::PortForward {
                protocol: match f.protocol {
                    ForwardProtocol::Tcp => L4::Tcp,
                    ForwardProtocol::Udp => L4::Udp,
                },
                host_addr: f.host_address,
                host_port: f.host_port,
                bridge: bridge.clone(),
                vm_ip: f.target,
                vm_port: f.target_port,
            });
        }
        // dnsmasq serves DHCP and DNS, and sends IPv6 router advertisements.
        if n.dhcp || n.ipv6.is_some() {
            let (subnet, gateway) = match (n.subnet, n.gateway) {
                (Some(s), Some(g)) => (s, g),
                _ => return Err(bad("dhcp", "DHCP needs a subnet and a gateway")),
            };
            let ip6_of = |mac: MacAddr| n.ipv6.and_then(|s| nic_ipv6(s, mac)).map(|(_, g)| g);
            let (_, lease_file, pid_file) = dnsmasq_paths(net_dir, n.name.as_str());
            let mut reservations = vec![];
            for r in &n.reservations {
                reservations.push(dnsmasq::Reservation {
                    mac: net_mac(r.mac)?,
                    ip: r.ip,
                    hostname: r
                        .hostname
                        .as_deref()
                        .map(HostName::new)
                        .transpose()
                        .map_err(|e| bad("reservations", e.to_string()))?,
                    ip6: ip6_of(r.mac),
                });
            }
            // VM NICs: the VM's name is its DNS name on the first NIC it has here.
            let mut named = BTreeSet::new();
            let mut taken_names: BTreeSet<String> = reservations
                .iter()
                .filter_map(|r| r.hostname.as_ref().map(|h| h.to_string()))
                .collect();
            for (vm, a) in reserved.iter().filter(|(_, a)| a.network == n.name) {
                let Some(ip) = a.ip else { continue };
                let hostname = if named.insert(vm.clone()) && taken_names.insert(vm.to_string()) {
                    HostName::new(vm.as_str()).ok()
                } else {
                    None
                };
                reservations.push(dnsmasq::Reservation {
                    mac: net_mac(a.mac)?,
                    ip,
                    hostname,
                    ip6: ip6_of(a.mac),
                });
            }
            let size = subnet.size();
            let last = subnet.nth((size - 2) as u32);
            let first = subnet.nth(if size > 16 { (size / 2) as u32 } else { 2 });
            let cfg = DnsmasqConfig {
                network: HostName::new(n.name.as_str()).map_err(|e| bad("name", e.to_string()))?,
                bridge: bridge.clone(),
                subnet,
                gateway,
                dhcp4: n.dhcp,
                dhcp_range: first.zip(last),
                lease_secs: 3600,
                advertise_router: n.kind == NetworkType::Nat,
                domain: HostName::new(&n.domain).map_err(|e| bad("domain", e.to_string()))?,
                upstream: if n.kind == NetworkType::Nat {
                    Upstream::HostResolvConf
                } else {
                    Upstream::None
                },
                reservations,
                ipv6: n
                    .ipv6
                    .zip(n.ipv6_gateway)
                    .map(|(subnet, address)| Ipv6Settings {
                        subnet,
                        address,
                        mode: match (n.ipv6_dhcp, n.dhcp) {
                            (Ipv6Dhcp::Stateful, _) => Ipv6Mode::Stateful,
                            (Ipv6Dhcp::Stateless, true) => Ipv6Mode::Stateless,
                            (Ipv6Dhcp::Stateless, false) => Ipv6Mode::RaOnly,
                        },
                    }),
                lease_file,
                pid_file,
                user: dnsmasq_user.to_owned(),
            };
            let text =
                dnsmasq::render_dnsmasq(&cfg).map_err(|e| bad("reservations", e.to_string()))?;
            st.dnsmasq.insert(n.name.to_string(), text);
        }
    }
    for l in live {
        let a = &l.attachment;
        let Some(n) = by_name.get(a.network.as_str()) else {
            continue; // network deleted under a running NIC: leave the tap detached
        };
        let tap = IfName::tap(&a.tap).map_err(|e| bad("nic", e.to_string()))?;
        let bridge = IfName::bridge(&n.bridge).map_err(|e| bad("name", e.to_string()))?;
        let mtu = a
            .mtu
            .or(n.mtu)
            .map(Mtu::new)
            .transpose()
            .map_err(|e| bad("mtu", e.to_string()))?;
        if n.kind == NetworkType::Ovs {
            let vlan = a
                .vlan
                .map(VlanId::new)
                .transpose()
                .map_err(|e| bad("vlan", e.to_string()))?;
            if let Some(b) = st.ovs.iter_mut().find(|b| b.bridge == bridge) {
                b.ports.push((tap, vlan, mtu, a.link_up));
            }
            continue;
        }
        if let Some(v) = a.vlan {
            let v = VlanId::new(v).map_err(|e| bad("vlan", e.to_string()))?;
            st.access_vlans.push((tap.clone(), v));
            if !st.vlan_bridges.contains(&bridge) {
                st.vlan_bridges.push(bridge.clone());
            }
        }
        st.taps.push(DesiredTap {
            name: tap.clone(),
            bridge: bridge.clone(),
            mtu,
            up: a.link_up,
        });
        st.ruleset.ports.push(VmPort {
            tap,
            bridge,
            mac: net_mac(a.mac)?,
            ips: a.ip.into_iter().collect(),
            ips6: n
                .ipv6
                .and_then(|s| nic_ipv6(s, a.mac))
                .map(|(ll, g)| vec![ll, g])
                .unwrap_or_default(),
            // Bridged networks get their addresses from outside: Vireo cannot know them.
            anti_spoofing: n.kind != NetworkType::Bridged,
            default_in: action(a.firewall.default_in),
            default_out: action(a.firewall.default_out),
            rules: firewall_rules(&a.firewall, "firewall")?,
        });
    }
    st.ruleset
        .validate()
        .map_err(|e| bad("firewall", e.to_string()))?;
    Ok(st)
}

fn net_mac(m: MacAddr) -> Result<vireo_net::MacAddr, ModelError> {
    vireo_net::MacAddr::new(m.0).map_err(|e| bad("mac", e.to_string()))
}
