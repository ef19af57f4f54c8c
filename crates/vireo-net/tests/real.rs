//! Real host-effect tests (root). Every test works only inside throwaway network namespaces it
//! creates (`vnt-<pid>-<n>-…`) and deletes on drop; no traffic leaves them and the host's own
//! interfaces, routes and nft tables are never touched.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use vireo_net::dnsmasq::{parse_leases, render_dnsmasq, Reservation, Upstream};
use vireo_net::host::{reconcile_links, reconcile_rules, DesiredBridge, DesiredTap};
use vireo_net::nft::{
    render_ruleset, Action, Direction, FirewallRule, NetworkRules, PortForward, Protocol, Ruleset,
    Uplink, VmPort, L4,
};
use vireo_net::tap::in_netns;
use vireo_net::{HostName, HostNet, IfName, IpHost, Ipv4Cidr, MacAddr};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("vnt-{}-{n}-{role}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    fn host(&self) -> IpHost {
        IpHost::new(Some(self.0.clone()))
    }

    fn exec(&self, argv: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .output()
            .expect("spawn ip netns exec")
    }

    fn ok(&self, argv: &[&str]) -> bool {
        self.exec(argv).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn b(s: &str) -> IfName {
    IfName::bridge(s).unwrap()
}

fn t(s: &str) -> IfName {
    IfName::tap(s).unwrap()
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

/// Creates bridge `bridge` with `gw` in `host_ns`.
fn bridge_with_gateway(host: &IpHost, bridge: &IfName, gw: Ipv4Addr, subnet: Ipv4Cidr) {
    reconcile_links(
        host,
        &[DesiredBridge {
            name: bridge.clone(),
            mtu: None,
            address: Some((gw, subnet)),
            address6: None,
        }],
        &[],
    )
    .unwrap();
}

/// A netns "VM" wired into `bridge` through veth `tap` (host side) <-> `eth0` (VM side).
fn vm_on_bridge(
    host_ns: &Netns,
    bridge: &IfName,
    tap: &IfName,
    mac: &str,
    ip: Option<(Ipv4Addr, Ipv4Cidr, Ipv4Addr)>,
) -> Netns {
    let vm = Netns::new("vm");
    let host = host_ns.host();
    let peer = format!("p{}", &tap.as_str()[3..]);
    host.create_veth(tap.as_str(), &peer).unwrap();
    host.move_to_netns(&peer, &vm.0).unwrap();
    host.set_master(tap.as_str(), bridge).unwrap();
    host.set_up(tap.as_str(), true).unwrap();
    sh(&["ip", "-n", &vm.0, "link", "set", &peer, "name", "eth0"]);
    sh(&["ip", "-n", &vm.0, "link", "set", "eth0", "address", mac]);
    let vmh = vm.host();
    vmh.set_up("eth0", true).unwrap();
    if let Some((addr, subnet, gw)) = ip {
        vmh.add_address("eth0", addr, subnet).unwrap();
        sh(&[
            "ip",
            "-n",
            &vm.0,
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ]);
    }
    vm
}

fn ping(from: &Netns, to: Ipv4Addr) -> bool {
    from.ok(&["busybox", "ping", "-c", "1", "-W", "1", &to.to_string()])
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn real_bridge_taps_and_reconcile() {
    let ns = Netns::new("br");
    let host = ns.host();
    host.create_veth("other0", "other1").unwrap();
    let bridges = [DesiredBridge {
        name: b("vb-t"),
        mtu: Some(vireo_net::Mtu::new(1400).unwrap()),
        address: Some((Ipv4Addr::new(10, 90, 0, 1), cidr("10.90.0.0/24"))),
        address6: None,
    }];
    let tap = |name: &str| DesiredTap {
        name: t(name),
        bridge: b("vb-t"),
        mtu: Some(vireo_net::Mtu::new(1400).unwrap()),
        up: true,
    };
    let report = reconcile_links(&host, &bridges, &[tap("vt-a"), tap("vt-b")]).unwrap();
    assert_eq!(report.created, ["vb-t", "vt-a", "vt-b"]);
    let links = host.list_links().unwrap();
    for name in ["vt-a", "vt-b"] {
        let l = links.iter().find(|l| l.name == name).unwrap();
        assert_eq!(l.kind.as_deref(), Some("tun"), "{name} is a tap");
        assert_eq!(l.master.as_deref(), Some("vb-t"));
        assert_eq!(l.mtu, 1400);
    }
    let br = links.iter().find(|l| l.name == "vb-t").unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert!(br.up);
    // The tap is persistent and root-owned.
    let tun_flags = sh(&["ip", "-n", &ns.0, "-d", "link", "show", "vt-a"]);
    assert!(
        tun_flags.contains("tap") && tun_flags.contains("persist"),
        "{tun_flags}"
    );
    assert!(tun_flags.contains("user root"), "{tun_flags}");
    let addr = sh(&["ip", "-n", &ns.0, "addr", "show", "vb-t"]);
    assert!(addr.contains("10.90.0.1/24"), "{addr}");

    // vt-b is no longer desired: removed; the non-Vireo veth survives.
    let report = reconcile_links(&host, &bridges, &[tap("vt-a")]).unwrap();
    assert_eq!(report.removed, ["vt-b"]);
    assert!(report.created.is_empty());
    let names: Vec<String> = host
        .list_links()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(names.contains(&"other0".to_owned()) && names.contains(&"vt-a".to_owned()));
    assert!(!names.contains(&"vt-b".to_owned()));
}

#[test]
fn real_golden_ruleset_applies_in_a_namespace() {
    let ns = Netns::new("gold");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/full.nft"
    ))
    .unwrap();
    let host = ns.host();
    host.nft_apply(&text).unwrap();
    let snap = host.nft_snapshot().unwrap();
    assert!(snap.chains("inet").contains(&"vm_vt_web1_0_in".to_owned()));
    assert!(snap.chains("bridge").contains(&"port_vt_db_0".to_owned()));
    host.nft_apply(&text).unwrap();
    assert_eq!(host.nft_snapshot().unwrap(), snap);
}

/// Host netns with a NAT network `vb-n` (10.91.0.0/24), a VM netns on it, and an "outside"
/// netns reached through veth uplink `up0` (10.92.0.1 <-> 10.92.0.2).
#[test]
fn real_nat_masquerade_port_forward_and_drift_repair() {
    let hostns = Netns::new("nath");
    let outside = Netns::new("out");
    let host = hostns.host();
    let subnet = cidr("10.91.0.0/24");
    let gw = Ipv4Addr::new(10, 91, 0, 1);
    let vm_ip = Ipv4Addr::new(10, 91, 0, 10);
    let up_host = Ipv4Addr::new(10, 92, 0, 1);
    let up_out = Ipv4Addr::new(10, 92, 0, 2);
    host.create_veth("up0", "out0").unwrap();
    host.move_to_netns("out0", &outside.0).unwrap();
    host.add_address("up0", up_host, cidr("10.92.0.0/24"))
        .unwrap();
    host.set_up("up0", true).unwrap();
    let out = outside.host();
    out.add_address("out0", up_out, cidr("10.92.0.0/24"))
        .unwrap();
    out.set_up("out0", true).unwrap();
    host.enable_ipv4_forwarding().unwrap();
    bridge_with_gateway(&host, &b("vb-n"), gw, subnet);
    let mac = "52:54:00:91:00:0a";
    let vm = vm_on_bridge(
        &hostns,
        &b("vb-n"),
        &t("vt-n1"),
        mac,
        Some((vm_ip, subnet, gw)),
    );

    let ruleset = Ruleset {
        networks: vec![NetworkRules {
            bridge: b("vb-n"),
            subnet,
            subnet6: None,
            uplink: Uplink::Nat {
                interface: "up0".into(),
            },
            default_in: Action::Drop,
            default_out: Action::Accept,
            rules: vec![],
        }],
        ports: vec![VmPort {
            tap: t("vt-n1"),
            bridge: b("vb-n"),
            mac: mac.parse().unwrap(),
            ips: vec![vm_ip],
            ips6: vec![],
            anti_spoofing: true,
            default_in: Action::Accept,
            default_out: Action::Accept,
            rules: vec![],
        }],
        forwards: vec![PortForward {
            protocol: L4::Tcp,
            host_addr: Some(up_host),
            host_port: 8080,
            bridge: b("vb-n"),
            vm_ip,
            vm_port: 8000,
        }],
    };
    let text = render_ruleset(&ruleset).unwrap();
    host.nft_apply(&text).unwrap();
    let applied = host.nft_snapshot().unwrap();
    assert!(applied.rule_count() > 5);
    // Idempotent: re-applying yields the identical table.
    host.nft_apply(&text).unwrap();
    assert_eq!(host.nft_snapshot().unwrap(), applied);

    // Masquerade: the outside sees the uplink address, and has no route back to the subnet.
    let listener = in_netns(&outside.0, || TcpListener::bind((up_out, 9000)).unwrap()).unwrap();
    let client = in_netns(&vm.0, || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((up_out, 9000)), Duration::from_secs(3))
                .unwrap();
        s.write_all(b"hi").unwrap();
    });
    let (mut conn, peer) = listener.accept().unwrap();
    client.unwrap();
    let mut buf = [0u8; 2];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(up_host),
        "source NATed to uplink"
    );

    // Port forward: outside connects to up_host:8080, the VM's listener on :8000 answers,
    // although the network's default inbound policy is drop.
    let vm_listener = in_netns(&vm.0, || TcpListener::bind((vm_ip, 8000)).unwrap()).unwrap();
    vm_listener.set_nonblocking(false).unwrap();
    let outside_client = std::thread::spawn({
        let ns = outside.0.clone();
        move || {
            in_netns(&ns, || {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((up_host, 8080)),
                    Duration::from_secs(3),
                )?;
                s.write_all(b"fw")?;
                let mut reply = [0u8; 2];
                s.read_exact(&mut reply)?;
                Ok::<_, std::io::Error>(reply)
            })
            .unwrap()
        }
    });
    let (mut c, from) = vm_listener.accept().unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"fw");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(up_out),
        "client address preserved"
    );
    c.write_all(b"ok").unwrap();
    assert_eq!(&outside_client.join().unwrap().unwrap(), b"ok");
    // Direct access to the VM from outside (no forward) is blocked by the default policy.
    sh(&[
        "ip",
        "-n",
        &outside.0,
        "route",
        "add",
        "10.91.0.0/24",
        "via",
        &up_host.to_string(),
    ]);
    let direct = in_netns(&outside.0, || {
        TcpStream::connect_timeout(&SocketAddr::from((vm_ip, 8000)), Duration::from_millis(700))
    })
    .unwrap();
    assert!(
        direct.is_err(),
        "default-in drop must block unforwarded traffic"
    );

    // Drift: delete the masquerade rule by hand; the snapshot differs; re-apply repairs it.
    let listing = sh(&[
        "ip",
        "netns",
        "exec",
        &hostns.0,
        "nft",
        "-a",
        "list",
        "chain",
        "inet",
        "vireo",
        "postrouting",
    ]);
    let handle = listing
        .lines()
        .find(|l| l.contains("masquerade") && !l.contains("ct status"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_owned();
    sh(&[
        "ip",
        "netns",
        "exec",
        &hostns.0,
        "nft",
        "delete",
        "rule",
        "inet",
        "vireo",
        "postrouting",
        "handle",
        &handle,
    ]);
    let drifted = host.nft_snapshot().unwrap();
    assert_ne!(drifted, applied);
    assert_eq!(drifted.rule_count() + 1, applied.rule_count());
    let repaired = reconcile_rules(&host, &ruleset, Some(&applied)).unwrap();
    assert!(repaired.applied);
    assert_eq!(repaired.snapshot, applied);
    assert_eq!(host.nft_snapshot().unwrap(), applied);
    // In sync now: the next pass only reads.
    assert!(
        !reconcile_rules(&host, &ruleset, Some(&applied))
            .unwrap()
            .applied
    );
}

#[test]
fn real_firewall_and_anti_spoofing_between_vms() {
    let hostns = Netns::new("fwh");
    let host = hostns.host();
    let subnet = cidr("10.93.0.0/24");
    let gw = Ipv4Addr::new(10, 93, 0, 1);
    let (ip1, ip2) = (Ipv4Addr::new(10, 93, 0, 11), Ipv4Addr::new(10, 93, 0, 12));
    bridge_with_gateway(&host, &b("vb-f"), gw, subnet);
    let (mac1, mac2) = ("52:54:00:93:00:11", "52:54:00:93:00:12");
    let vm1 = vm_on_bridge(
        &hostns,
        &b("vb-f"),
        &t("vt-f1"),
        mac1,
        Some((ip1, subnet, gw)),
    );
    let vm2 = vm_on_bridge(
        &hostns,
        &b("vb-f"),
        &t("vt-f2"),
        mac2,
        Some((ip2, subnet, gw)),
    );
    let port = |tap: &str, mac: &str, ip: Ipv4Addr, rules: Vec<FirewallRule>| VmPort {
        tap: t(tap),
        bridge: b("vb-f"),
        mac: mac.parse::<MacAddr>().unwrap(),
        ips: vec![ip],
        ips6: vec![],
        anti_spoofing: true,
        default_in: Action::Accept,
        default_out: Action::Accept,
        rules,
    };
    let with_rules = |rules: Vec<FirewallRule>| Ruleset {
        networks: vec![NetworkRules {
            bridge: b("vb-f"),
            subnet,
            subnet6: None,
            uplink: Uplink::Isolated,
            default_in: Action::Accept,
            default_out: Action::Accept,
            rules: vec![],
        }],
        ports: vec![
            port("vt-f1", mac1, ip1, rules),
            port("vt-f2", mac2, ip2, vec![]),
        ],
        forwards: vec![],
    };
    host.nft_apply(&render_ruleset(&with_rules(vec![])).unwrap())
        .unwrap();
    assert!(ping(&vm2, ip1), "baseline ping");

    let drop_icmp_in = FirewallRule {
        direction: Direction::In,
        protocol: Protocol::Icmp,
        ports: vec![],
        peer: None,
        action: Action::Drop,
    };
    host.nft_apply(&render_ruleset(&with_rules(vec![drop_icmp_in])).unwrap())
        .unwrap();
    assert!(!ping(&vm2, ip1), "ICMP to vm1 must be dropped");
    assert!(ping(&vm1, gw), "vm1 still reaches the host");

    host.nft_apply(&render_ruleset(&with_rules(vec![])).unwrap())
        .unwrap();
    assert!(ping(&vm2, ip1), "rule removed: ping works again");

    // Anti-spoofing: vm2 adds an address it does not own; traffic from it is dropped.
    sh(&[
        "ip",
        "-n",
        &vm2.0,
        "addr",
        "add",
        "10.93.0.99/24",
        "dev",
        "eth0",
    ]);
    assert!(!vm2.ok(&[
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "-I",
        "10.93.0.99",
        &ip1.to_string()
    ]));
    assert!(ping(&vm2, ip1));
}

#[test]
fn real_dnsmasq_serves_dhcp_and_dns_and_is_supervised() {
    let hostns = Netns::new("dh");
    let host = hostns.host();
    let subnet = cidr("10.94.0.0/24");
    let gw = Ipv4Addr::new(10, 94, 0, 1);
    bridge_with_gateway(&host, &b("vb-d"), gw, subnet);
    let mac = "52:54:00:94:00:32";
    let client = vm_on_bridge(&hostns, &b("vb-d"), &t("vt-d1"), mac, None);

    let dir = tempfile::tempdir().unwrap();
    let lease_file = dir.path().join("leases");
    let cfg = vireo_net::dnsmasq::DnsmasqConfig {
        network: HostName::new("dh").unwrap(),
        bridge: b("vb-d"),
        subnet,
        gateway: gw,
        dhcp4: true,
        dhcp_range: Some((Ipv4Addr::new(10, 94, 0, 100), Ipv4Addr::new(10, 94, 0, 150))),
        lease_secs: 600,
        advertise_router: true,
        domain: HostName::new("vireo").unwrap(),
        upstream: Upstream::None,
        reservations: vec![Reservation {
            mac: mac.parse().unwrap(),
            ip: Ipv4Addr::new(10, 94, 0, 50),
            hostname: Some(HostName::new("vm1").unwrap()),
            ip6: None,
        }],
        ipv6: None,
        lease_file: lease_file.clone(),
        pid_file: dir.path().join("dnsmasq.pid"),
        user: "root".into(),
    };
    let conf = dir.path().join("dnsmasq.conf");
    std::fs::write(&conf, render_dnsmasq(&cfg).unwrap()).unwrap();
    host.start_dnsmasq("dh", &conf).unwrap();

    let udhcpc = [
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-n",
        "-q",
        "-f",
        "-s",
        "/bin/true",
        "-t",
        "10",
        "-T",
        "1",
    ];
    let out = client.exec(&udhcpc);
    assert!(
        out.status.success(),
        "udhcpc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected_ip = Ipv4Addr::new(10, 94, 0, 50);
    assert!(wait_until(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&lease_file).unwrap_or_default();
        parse_leases(&text)
            .iter()
            .any(|l| l.mac.to_string() == mac && l.ip == std::net::IpAddr::V4(expected_ip))
    }));

    // DNS for the VM name, answered by the same dnsmasq.
    client
        .host()
        .add_address("eth0", expected_ip, subnet)
        .unwrap();
    let ns = client.exec(&["busybox", "nslookup", "vm1.vireo", &gw.to_string()]);
    let answer = String::from_utf8_lossy(&ns.stdout);
    assert!(answer.contains("10.94.0.50"), "nslookup: {answer}");

    // Supervision: kill it, it comes back with a new PID, and stop() ends it.
    let status = host.dnsmasq_status("dh").unwrap();
    let pid = status.pid.unwrap();
    // SAFETY: the supervisor's own child (ip netns exec execs dnsmasq in place).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(5), || host
        .dnsmasq_status("dh")
        .is_some_and(
            |s| s.restarts == 1 && s.pid.is_some_and(|p| p != pid)
        )));
    let new_pid = host.dnsmasq_status("dh").unwrap().pid.unwrap();
    assert!(wait_until(Duration::from_secs(5), || client
        .exec(&["busybox", "nslookup", "vm1.vireo", &gw.to_string()])
        .status
        .success()));
    host.stop_dnsmasq("dh");
    assert!(host.dnsmasq_status("dh").is_none());
    // SAFETY: signal 0 only probes; the child was reaped by stop.
    assert_ne!(unsafe { libc::kill(new_pid as i32, 0) }, 0);
}

#[test]
fn real_golden_ipv6_ruleset_applies_in_a_namespace() {
    let ns = Netns::new("gold6");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/ipv6.nft"
    ))
    .unwrap();
    let host = ns.host();
    host.nft_apply(&text).unwrap();
    let snap = host.nft_snapshot().unwrap();
    assert!(snap.chains("bridge").contains(&"port_vt_lab1_0".to_owned()));
    // Re-applying gives the same read-back (no false drift from the IPv6 sets).
    host.nft_apply(&text).unwrap();
    assert_eq!(host.nft_snapshot().unwrap(), snap);
}

fn sysctl6(ns: &Netns, path: &str) -> String {
    let out = ns.exec(&["cat", &format!("/proc/sys/net/ipv6/{path}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn real_bridge_ipv6_address_and_forwarding_guard() {
    let ns = Netns::new("six");
    let host = ns.host();
    let bridge = |a6: Option<(&str, &str)>| DesiredBridge {
        name: b("vb-six"),
        mtu: None,
        address: Some((Ipv4Addr::new(10, 95, 0, 1), cidr("10.95.0.0/24"))),
        address6: a6.map(|(a, s)| (a.parse().unwrap(), s.parse().unwrap())),
    };
    let addrs = || sh(&["ip", "-n", &ns.0, "-6", "addr", "show", "dev", "vb-six"]);
    reconcile_links(&host, &[bridge(Some(("fd00:95::1", "fd00:95::/64")))], &[]).unwrap();
    let a = addrs();
    // nodad: usable at once (the link-local address may still be tentative).
    let global = a.lines().find(|l| l.contains("fd00:95::1/64"));
    assert!(global.is_some_and(|l| !l.contains("tentative")), "{a}");
    assert_eq!(sysctl6(&ns, "conf/vb-six/accept_ra"), "0");
    // Renumbering replaces the address; None removes it.
    reconcile_links(&host, &[bridge(Some(("fd00:96::1", "fd00:96::/64")))], &[]).unwrap();
    let a = addrs();
    assert!(
        a.contains("fd00:96::1/64") && !a.contains("fd00:95::1"),
        "{a}"
    );
    reconcile_links(&host, &[bridge(None)], &[]).unwrap();
    assert!(!addrs().contains("scope global"), "{}", addrs());

    // A route learned from router advertisements on an interface with accept_ra = 1 would be
    // lost when forwarding goes on: refused, nothing changed.
    // (This kernel has no dummy links: a veth pair stands in for an uplink.)
    host.create_veth("d0", "d1").unwrap();
    host.set_up("d0", true).unwrap();
    host.set_up("d1", true).unwrap();
    sh(&[
        "ip",
        "-n",
        &ns.0,
        "-6",
        "route",
        "add",
        "2001:db8:7::/64",
        "dev",
        "d0",
        "proto",
        "ra",
    ]);
    assert_eq!(sysctl6(&ns, "conf/d0/accept_ra"), "1");
    match host.enable_ipv6_forwarding() {
        Err(vireo_net::HostError::Ipv6ForwardingUnsafe { interfaces }) => {
            assert_eq!(interfaces, ["d0"])
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(sysctl6(&ns, "conf/all/forwarding"), "0");
    assert!(ns.ok(&["sh", "-c", "echo 2 > /proc/sys/net/ipv6/conf/d0/accept_ra"]));
    host.enable_ipv6_forwarding().unwrap();
    assert_eq!(sysctl6(&ns, "conf/all/forwarding"), "1");
    host.enable_ipv6_forwarding().unwrap();
}

/// Stateful DHCPv6 for real: dnsmasq hands a client exactly the EUI-64 address of its MAC
/// (reservation by MAC on a directly connected link), and the lease parses back. Needs a
/// DHCPv6 client (ISC `dhclient`, Debian `isc-dhcp-client`); skips with the reason otherwise.
#[test]
fn real_dnsmasq_stateful_dhcpv6_reserves_the_eui64_address() {
    if Command::new("dhclient").arg("--version").output().is_err() {
        println!("skipping: no dhclient (apt-get install isc-dhcp-client) for a DHCPv6 client");
        return;
    }
    use vireo_net::addr6::eui64_address;
    use vireo_net::dnsmasq::{Ipv6Mode, Ipv6Settings};
    let hostns = Netns::new("d6");
    let host = hostns.host();
    let subnet = cidr("10.97.0.0/24");
    let gw = Ipv4Addr::new(10, 97, 0, 1);
    let subnet6: vireo_net::Ipv6Cidr = "fd00:97::/64".parse().unwrap();
    reconcile_links(
        &host,
        &[DesiredBridge {
            name: b("vb-d6"),
            mtu: None,
            address: Some((gw, subnet)),
            address6: Some(("fd00:97::1".parse().unwrap(), subnet6)),
        }],
        &[],
    )
    .unwrap();
    let mac = "52:54:00:97:00:05";
    let client = vm_on_bridge(&hostns, &b("vb-d6"), &t("vt-d6"), mac, None);
    let want = eui64_address(subnet6, mac.parse().unwrap()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let lease_file = dir.path().join("leases");
    let cfg = vireo_net::dnsmasq::DnsmasqConfig {
        network: HostName::new("d6").unwrap(),
        bridge: b("vb-d6"),
        subnet,
        gateway: gw,
        dhcp4: true,
        dhcp_range: None,
        lease_secs: 600,
        advertise_router: true,
        domain: HostName::new("vireo").unwrap(),
        upstream: Upstream::None,
        reservations: vec![Reservation {
            mac: mac.parse().unwrap(),
            ip: Ipv4Addr::new(10, 97, 0, 5),
            hostname: Some(HostName::new("vm6").unwrap()),
            ip6: Some(want),
        }],
        ipv6: Some(Ipv6Settings {
            subnet: subnet6,
            address: "fd00:97::1".parse().unwrap(),
            mode: Ipv6Mode::Stateful,
        }),
        lease_file: lease_file.clone(),
        pid_file: dir.path().join("dnsmasq.pid"),
        user: "root".into(),
    };
    let conf = dir.path().join("dnsmasq.conf");
    std::fs::write(&conf, render_dnsmasq(&cfg).unwrap()).unwrap();
    host.start_dnsmasq("d6", &conf).unwrap();

    // The client's link-local address must be usable before DHCPv6 can start.
    assert!(wait_until(Duration::from_secs(10), || {
        let out = client.exec(&["ip", "-6", "addr", "show", "dev", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("fe80::") && !text.contains("tentative")
    }));
    let (cl_leases, cl_pid) = (dir.path().join("cl.leases"), dir.path().join("cl.pid"));
    let out = client.exec(&[
        "timeout",
        "30",
        "dhclient",
        "-6",
        "-1",
        "-lf",
        cl_leases.to_str().unwrap(),
        "-pf",
        cl_pid.to_str().unwrap(),
        "-sf",
        "/bin/true",
        "eth0",
    ]);
    assert!(
        out.status.success(),
        "dhclient -6: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // dhclient stays in the background to renew: end it by its pid file (written by the
    // forked child, possibly just after the parent returned).
    let mut pid = None;
    assert!(wait_until(Duration::from_secs(5), || {
        pid = std::fs::read_to_string(&cl_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        pid.is_some()
    }));
    let pid = pid.unwrap();
    // SAFETY: plain signals to the dhclient this test started (0 only probes).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(5), || unsafe {
        libc::kill(pid, 0) != 0
    }));
    let got = std::fs::read_to_string(&cl_leases).unwrap_or_default();
    assert!(
        got.contains(&format!("iaaddr {want} ")),
        "client lease: {got}"
    );
    let leases = parse_leases(&std::fs::read_to_string(&lease_file).unwrap());
    let l6 = leases
        .iter()
        .find(|l| l.ip == std::net::IpAddr::V6(want))
        .unwrap_or_else(|| panic!("no DHCPv6 lease for {want}: {leases:?}"));
    assert_eq!(l6.mac.to_string(), mac);
    assert_eq!(l6.hostname.as_deref(), Some("vm6"));
    host.stop_dnsmasq("d6");
}
