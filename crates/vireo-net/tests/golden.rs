//! Golden tests for the pure renderers. `UPDATE_GOLDEN=1 cargo test -p vireo-net --test golden`
//! rewrites the files under tests/golden/.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use vireo_net::dnsmasq::{render_dnsmasq, tests_support, Upstream};
use vireo_net::nft::{
    render_ruleset, Action, Direction, FirewallRule, NetworkRules, PortForward, PortRange,
    Protocol, Ruleset, Uplink, VmPort, L4,
};
use vireo_net::{HostName, IfName};

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
