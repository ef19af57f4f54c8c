//! Golden tests for the pure renderers. `UPDATE_GOLDEN=1 cargo test -p vireo-net --test golden`
//! rewrites the files under tests/golden/.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use vireo_net::addr6::{eui64_address, eui64_link_local};
use vireo_net::dnsmasq::{render_dnsmasq, tests_support, Ipv6Mode, Ipv6Settings, Upstream};
use vireo_net::nft::{
    render_ruleset, Action, Direction, FirewallRule, NetworkRules, PortForward, PortRange,
    Protocol, Ruleset, Uplink, VmPort, L4,
};
use vireo_net::{HostName, IfName, Ipv6Cidr, MacAddr};

fn check_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "{name} differs from golden file");
}

/// A host with one NAT network (two VMs, firewall rules, port forwards) and one isolated
/// network: exercises every rule shape the renderer emits.
pub fn sample_ruleset() -> Ruleset {
    let b = |s: &str| IfName::bridge(s).unwrap();
    let t = |s: &str| IfName::tap(s).unwrap();
    Ruleset {
        networks: vec![
            NetworkRules {
                bridge: b("vb-default"),
                subnet: "10.0.0.0/24".parse().unwrap(),
                subnet6: None,
                uplink: Uplink::Nat {
                    interface: "eth0".into(),
                },
                default_in: Action::Drop,
                default_out: Action::Accept,
                rules: vec![
                    FirewallRule {
                        direction: Direction::Out,
                        protocol: Protocol::Tcp,
                        ports: vec![PortRange::single(25)],
                        peer: None,
                        action: Action::Reject,
                    },
                    FirewallRule {
                        direction: Direction::In,
                        protocol: Protocol::Any,
                        ports: vec![],
                        peer: Some("192.0.2.0/24".parse().unwrap()),
                        action: Action::Accept,
                    },
                ],
            },
            NetworkRules {
                bridge: b("vb-lab"),
                subnet: "10.0.1.0/24".parse().unwrap(),
                subnet6: None,
                uplink: Uplink::Isolated,
                default_in: Action::Accept,
                default_out: Action::Accept,
                rules: vec![],
            },
        ],
        ports: vec![
            VmPort {
                tap: t("vt-web1-0"),
                bridge: b("vb-default"),
                mac: "52:54:00:00:00:0a".parse().unwrap(),
                ips: vec![Ipv4Addr::new(10, 0, 0, 10)],
                ips6: vec![],
                anti_spoofing: true,
                default_in: Action::Reject,
                default_out: Action::Accept,
                rules: vec![
                    FirewallRule {
                        direction: Direction::In,
                        protocol: Protocol::Tcp,
                        ports: vec![
                            PortRange::single(80),
                            PortRange {
                                first: 8000,
                                last: 8099,
                            },
                        ],
                        peer: None,
                        action: Action::Accept,
                    },
                    FirewallRule {
                        direction: Direction::In,
                        protocol: Protocol::Icmp,
                        ports: vec![],
                        peer: Some("10.0.0.0/24".parse().unwrap()),
                        action: Action::Accept,
                    },
                    FirewallRule {
                        direction: Direction::Out,
                        protocol: Protocol::Udp,
                        ports: vec![PortRange::single(123)],
                        peer: Some("0.0.0.0/0".parse().unwrap()),
                        action: Action::Drop,
                    },
                ],
            },
            VmPort {
                tap: t("vt-db-0"),
                bridge: b("vb-default"),
                mac: "52:54:00:00:00:0b".parse().unwrap(),
                ips: vec![],
                ips6: vec![],
                anti_spoofing: true,
                default_in: Action::Accept,
                default_out: Action::Accept,
                rules: vec![],
            },
            VmPort {
                tap: t("vt-lab1-0"),
                bridge: b("vb-lab"),
                mac: "52:54:00:00:00:0c".parse().unwrap(),
                ips: vec![Ipv4Addr::new(10, 0, 1, 5)],
                ips6: vec![],
                anti_spoofing: false,
                default_in: Action::Accept,
                default_out: Action::Drop,
                rules: vec![],
            },
        ],
        forwards: vec![
            PortForward {
                protocol: L4::Tcp,
                host_addr: Some(Ipv4Addr::new(192, 0, 2, 1)),
                host_port: 8080,
                bridge: b("vb-default"),
                vm_ip: Ipv4Addr::new(10, 0, 0, 10),
                vm_port: 80,
            },
            PortForward {
                protocol: L4::Udp,
                host_addr: None,
                host_port: 5353,
                bridge: b("vb-default"),
                vm_ip: Ipv4Addr::new(10, 0, 0, 10),
                vm_port: 53,
            },
        ],
    }
}

#[test]
fn nft_full_ruleset() {
    check_golden("full.nft", &render_ruleset(&sample_ruleset()).unwrap());
}

#[test]
fn nft_empty_ruleset_still_replaces_both_tables() {
    let text = render_ruleset(&Ruleset::default()).unwrap();
    check_golden("empty.nft", &text);
    assert!(text.contains("delete table inet vireo\n"));
    assert!(text.contains("delete table bridge vireo\n"));
}

#[test]
fn nft_rendering_is_deterministic() {
    let rs = sample_ruleset();
    assert_eq!(
        render_ruleset(&rs).unwrap(),
        render_ruleset(&rs.clone()).unwrap()
    );
}

#[test]
fn dnsmasq_nat_network() {
    check_golden(
        "nat.dnsmasq.conf",
        &render_dnsmasq(&tests_support::sample()).unwrap(),
    );
}

#[test]
fn dnsmasq_isolated_network() {
    let mut cfg = tests_support::sample();
    cfg.network = HostName::new("lab").unwrap();
    cfg.bridge = IfName::bridge("vb-lab").unwrap();
    cfg.advertise_router = false;
    cfg.upstream = Upstream::None;
    cfg.dhcp_range = None;
    check_golden("isolated.dnsmasq.conf", &render_dnsmasq(&cfg).unwrap());
    cfg.upstream = Upstream::Servers(vec![Ipv4Addr::new(192, 0, 2, 53)]);
    let text = render_dnsmasq(&cfg).unwrap();
    assert!(text.contains("no-resolv\nserver=192.0.2.53\n"));
}

fn v6(s: &str) -> Ipv6Cidr {
    s.parse().unwrap()
}

/// A NAT and an isolated network, both with IPv6, one VM port on each (and one v4-only
/// network's port next to them): every IPv6 rule shape.
fn sample_ruleset_v6() -> Ruleset {
    let b = |s: &str| IfName::bridge(s).unwrap();
    let t = |s: &str| IfName::tap(s).unwrap();
    let mac_a: MacAddr = "52:54:00:00:00:0a".parse().unwrap();
    let mac_c: MacAddr = "52:54:00:00:00:0c".parse().unwrap();
    let (nat6, lab6) = (v6("fd00:10::/64"), v6("fd00:11::/64"));
    Ruleset {
        networks: vec![
            NetworkRules {
                bridge: b("vb-default"),
                subnet: "10.0.0.0/24".parse().unwrap(),
                subnet6: Some(nat6),
                uplink: Uplink::Nat {
                    interface: "eth0".into(),
                },
                default_in: Action::Drop,
                default_out: Action::Accept,
                rules: vec![FirewallRule {
                    direction: Direction::In,
                    protocol: Protocol::Tcp,
                    ports: vec![PortRange::single(22)],
                    peer: Some("2001:db8::/32".parse().unwrap()),
                    action: Action::Accept,
                }],
            },
            NetworkRules {
                bridge: b("vb-lab"),
                subnet: "10.0.1.0/24".parse().unwrap(),
                subnet6: Some(lab6),
                uplink: Uplink::Isolated,
                default_in: Action::Accept,
                default_out: Action::Accept,
                rules: vec![],
            },
        ],
        ports: vec![
            VmPort {
                tap: t("vt-web1-0"),
                bridge: b("vb-default"),
                mac: mac_a,
                ips: vec![Ipv4Addr::new(10, 0, 0, 10)],
                ips6: vec![eui64_link_local(mac_a), eui64_address(nat6, mac_a).unwrap()],
                anti_spoofing: true,
                default_in: Action::Reject,
                default_out: Action::Accept,
                rules: vec![
                    FirewallRule {
                        direction: Direction::In,
                        protocol: Protocol::Icmp,
                        ports: vec![],
                        peer: None,
                        action: Action::Accept,
                    },
                    FirewallRule {
                        direction: Direction::In,
                        protocol: Protocol::Icmp,
                        ports: vec![],
                        peer: Some("fd00:10::/64".parse().unwrap()),
                        action: Action::Drop,
                    },
                ],
            },
            VmPort {
                tap: t("vt-lab1-0"),
                bridge: b("vb-lab"),
                mac: mac_c,
                ips: vec![],
                ips6: vec![eui64_link_local(mac_c), eui64_address(lab6, mac_c).unwrap()],
                anti_spoofing: true,
                default_in: Action::Accept,
                default_out: Action::Drop,
                rules: vec![],
            },
        ],
        forwards: vec![],
    }
}

#[test]
fn nft_ipv6_ruleset() {
    let text = render_ruleset(&sample_ruleset_v6()).unwrap();
    check_golden("ipv6.nft", &text);
    // Masquerade for the nat network's /64 only, not for the isolated one.
    assert!(text
        .contains("ip6 saddr fd00:10::/64 ip6 daddr != fd00:10::/64 oifname \"eth0\" masquerade"));
    assert!(!text.contains("ip6 saddr fd00:11::/64 ip6 daddr"));
}

#[test]
fn nft_ipv6_addresses_outside_the_subnet_are_refused() {
    let mut rs = sample_ruleset_v6();
    rs.ports[0]
        .ips6
        .push("fd00:99::1".parse::<Ipv6Addr>().unwrap());
    assert!(render_ruleset(&rs).is_err());
    let mut rs = sample_ruleset_v6();
    rs.networks[1].subnet6 = None;
    assert!(
        render_ruleset(&rs).is_err(),
        "IPv6 port on a network without IPv6"
    );
}

fn sample_v6(mode: Ipv6Mode) -> vireo_net::dnsmasq::DnsmasqConfig {
    let mut cfg = tests_support::sample();
    let subnet = v6("fd00:10::/64");
    cfg.ipv6 = Some(Ipv6Settings {
        subnet,
        address: "fd00:10::1".parse().unwrap(),
        mode,
    });
    for r in &mut cfg.reservations {
        r.ip6 = eui64_address(subnet, r.mac);
    }
    cfg
}

#[test]
fn dnsmasq_nat_network_with_slaac() {
    let text = render_dnsmasq(&sample_v6(Ipv6Mode::Stateless)).unwrap();
    check_golden("nat-ipv6.dnsmasq.conf", &text);
    let ra_only = render_dnsmasq(&sample_v6(Ipv6Mode::RaOnly)).unwrap();
    assert!(ra_only.contains("dhcp-range=fd00:10::,ra-only,64,3600\n"));
    assert!(!ra_only.contains("option6:dns-server"));
}

#[test]
fn dnsmasq_isolated_network_with_stateful_dhcpv6() {
    let mut cfg = sample_v6(Ipv6Mode::Stateful);
    cfg.network = HostName::new("lab").unwrap();
    cfg.bridge = IfName::bridge("vb-lab").unwrap();
    cfg.advertise_router = false;
    cfg.upstream = Upstream::None;
    cfg.dhcp_range = None;
    check_golden(
        "isolated-dhcpv6.dnsmasq.conf",
        &render_dnsmasq(&cfg).unwrap(),
    );
    // Stateful DHCPv6 without DHCP is refused; RA without DHCPv4 is fine.
    cfg.dhcp4 = false;
    assert!(render_dnsmasq(&cfg).is_err());
    let mut ra = sample_v6(Ipv6Mode::RaOnly);
    ra.dhcp4 = false;
    let text = render_dnsmasq(&ra).unwrap();
    assert!(
        !text.contains("dhcp-host=") && !text.contains("dhcp-range=10."),
        "{text}"
    );
    assert!(text.contains("host-record=web1.vireo,web1,10.0.0.10,fd00:10::5054:ff:fe00:a\n"));
}

#[test]
fn dnsmasq_ipv6_input_is_validated() {
    let mut cfg = sample_v6(Ipv6Mode::Stateless);
    cfg.ipv6.as_mut().unwrap().subnet = v6("fd00:10::/48");
    assert!(render_dnsmasq(&cfg).is_err(), "not a /64");
    let mut cfg = sample_v6(Ipv6Mode::Stateless);
    cfg.ipv6.as_mut().unwrap().address = "fd00:99::1".parse().unwrap();
    assert!(render_dnsmasq(&cfg).is_err(), "bridge address outside");
    let mut cfg = sample_v6(Ipv6Mode::Stateless);
    cfg.reservations[1].ip6 = cfg.reservations[0].ip6;
    assert!(render_dnsmasq(&cfg).is_err(), "duplicate IPv6 reservation");
    let mut cfg = sample_v6(Ipv6Mode::Stateless);
    cfg.reservations[0].ip6 = Some("fd00:10::1".parse().unwrap());
    assert!(
        render_dnsmasq(&cfg).is_err(),
        "reservation on the bridge address"
    );
    let mut cfg = tests_support::sample();
    cfg.reservations[0].ip6 = Some("fd00:10::5".parse().unwrap());
    assert!(
        render_dnsmasq(&cfg).is_err(),
        "IPv6 reservation without IPv6"
    );
}
