//! Tier 4, IPv6 on a managed nat network for real: `vireod` runs inside a throwaway network
//! namespace ("daemon") whose uplink is a veth pair into a second throwaway namespace
//! ("outside", 192.0.2.1 and 2001:db8:ff::1, with no route back to any VM subnet, so a reply
//! proves masquerade). Two real tiny guests (TCG; Debian's cloud kernel has IPv6 built in,
//! busybox has no DHCPv6 client, so addresses come by SLAAC) get their EUI-64 addresses from
//! dnsmasq's router advertisements, reach each other over IPv6 by address and name, reach a
//! TCP listener outside through masquerade, and are held to their own addresses by
//! anti-spoofing and to their firewall rules; a guest on an isolated network gets the prefix
//! but no default route, and everything survives a daemon restart. Nothing here touches the
//! host's own namespace.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_testkit::{DaemonOptions, TestDaemon};

const OUTSIDE6: &str = "2001:db8:ff::1";

/// Two namespaces joined by a veth pair, and the listener running outside; all removed on
/// drop.
struct NetLab {
    daemon_ns: String,
    outside_ns: String,
    uplink: String,
    listener: Option<Child>,
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetLab {
    fn new() -> NetLab {
        let id = std::process::id() % 100_000;
        let lab = NetLab {
            daemon_ns: format!("v6d{id}"),
            outside_ns: format!("v6o{id}"),
            uplink: format!("v6x{id}"),
            listener: None,
        };
        let peer = format!("v6p{id}");
        let (d, o, up) = (
            lab.daemon_ns.as_str(),
            lab.outside_ns.as_str(),
            lab.uplink.as_str(),
        );
        must(&["ip", "netns", "add", d]);
        must(&["ip", "netns", "add", o]);
        must(&[
            "ip", "link", "add", up, "netns", d, "type", "veth", "peer", "name", &peer, "netns", o,
        ]);
        for (ns, dev, v4, v6) in [
            (d, up, "192.0.2.2/24", "2001:db8:ff::2/64"),
            (o, peer.as_str(), "192.0.2.1/24", "2001:db8:ff::1/64"),
        ] {
            must(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
            must(&["ip", "-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad"]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        must(&["ip", "-n", d, "route", "add", "default", "via", "192.0.2.1"]);
        must(&[
            "ip", "-n", d, "-6", "route", "add", "default", "via", OUTSIDE6,
        ]);
        lab
    }

    /// A TCP listener on [OUTSIDE6]:7777 in the outside namespace answering `hello-v6`.
    fn start_listener(&mut self) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.outside_ns,
                "busybox",
                "nc",
                "-ll",
                "-p",
                "7777",
            ])
            .args(["-e", "echo", "hello-v6"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the outside listener");
        self.listener = Some(child);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if let Some(mut c) = self.listener.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.daemon_ns, &self.outside_ns] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

fn exec(d: &TestDaemon, vm: &str, script: &str) -> (bool, String) {
    let out = d.cli(&["vm", "exec", vm, "--", "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + limit;
    loop {
        let (ok, detail) = f();
        if ok {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what} did not happen within {limit:?}: {detail}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn real_net_v6_slaac_masquerade_and_anti_spoofing() {
    let started = Instant::now();
    let mut lab = NetLab::new();
    let d = TestDaemon::start_with(DaemonOptions {
        netns: Some(lab.daemon_ns.clone()),
        network_config: format!("uplink = \"{}\"\ndefault_network = false", lab.uplink),
        ..Default::default()
    })
    .unwrap();
    d.ensure_tiny();

    // Bad IPv6 input is refused (not a /64, link-local, overlapping the uplink's route).
    for bad in ["fd00:66::/48", "fe80::/64", "2001:db8:ff::/64"] {
        let out = d.cli(&["network", "create", "bad", "--type", "nat", "--ipv6", bad]);
        assert!(!out.status.success(), "--ipv6 {bad} accepted");
    }
    let net = d.json(&[
        "network",
        "create",
        "six",
        "--type",
        "nat",
        "--subnet",
        "10.66.0.0/24",
        "--ipv6",
        "fd00:66::/64",
    ]);
    assert_eq!(net["ipv6"], "fd00:66::/64", "{net}");
    assert_eq!(net["ipv6_gateway"], "fd00:66::1", "{net}");
    assert_eq!(net["ipv6_dhcp"], "stateless", "{net}");
    let shown = d.json(&["network", "show", "six"]);
    assert_eq!(shown["ipv6"], "fd00:66::/64", "{shown}");
    let daemon_ns = lab.daemon_ns.clone();
    let ip6 = |args: &[&str]| {
        String::from_utf8_lossy(&sh(&[&["ip", "-n", daemon_ns.as_str()][..], args].concat()).stdout)
            .into_owned()
    };
    assert!(
        ip6(&["-6", "addr", "show", "dev", "vb-six"]).contains("fd00:66::1/64"),
        "bridge address"
    );

    for vm in ["a", "b"] {
        d.ok(&[
            "vm",
            "create",
            vm,
            "--image",
            "tiny",
            "--network",
            "six",
            "--memory",
            "192MiB",
            "--start",
            "--wait",
        ]);
    }
    let addr6 = |vm: &str| {
        let nics = d.json(&["vm", "nic", "list", vm]);
        nics[0]["ipv6"]
            .as_str()
            .unwrap_or_else(|| panic!("no ipv6 for {vm}: {nics}"))
            .to_string()
    };
    let (a6, b6) = (addr6("a"), addr6("b"));
    for (vm, want) in [("a", &a6), ("b", &b6)] {
        eventually(
            &format!("SLAAC address {want} in {vm}"),
            Duration::from_secs(60),
            || {
                let (ok, out) = exec(&d, vm, "ip -6 -o addr show dev eth0; ip -6 route");
                let dad_done = !out.contains("tentative");
                (
                    ok && dad_done
                        && out.contains(&format!("{want}/64"))
                        && out.contains("default via fe80::"),
                    out,
                )
            },
        );
    }

    // VM to VM over IPv6, by address and by name (dnsmasq publishes the EUI-64 address).
    eventually("a pings b over IPv6", Duration::from_secs(20), || {
        exec(&d, "a", &format!("ping -6 -c 1 -W 3 {b6}"))
    });
    let (ok, out) = exec(&d, "a", "nslookup -type=AAAA b");
    assert!(ok && out.contains(&b6), "AAAA of b: {out}");

    // Out through masquerade: the outside has no route to fd00:66::/64, so an answer proves
    // the source was rewritten to the uplink's address.
    lab.start_listener();
    let (ok, out) = exec(&d, "a", &format!("ping -6 -c 1 -W 5 {OUTSIDE6}"));
    assert!(ok, "a cannot ping the outside over IPv6: {out}");
    eventually(
        "TCP over IPv6 to the outside",
        Duration::from_secs(20),
        || {
            let (_, out) = exec(&d, "a", &format!("nc -w 3 {OUTSIDE6} 7777 </dev/null"));
            (out.contains("hello-v6"), out)
        },
    );
    let rules = String::from_utf8_lossy(
        &sh(&[
            "ip",
            "netns",
            "exec",
            &lab.daemon_ns,
            "nft",
            "list",
            "table",
            "inet",
            "vireo",
        ])
        .stdout,
    )
    .into_owned();
    assert!(
        rules.contains("ip6 saddr fd00:66::/64 ip6 daddr != fd00:66::/64"),
        "{rules}"
    );

    // Anti-spoofing: a source address that is not a's own goes nowhere...
    let (ok, out) = exec(&d, "a", "ip -6 addr add fd00:66::bad/64 dev eth0");
    assert!(ok, "adding a second address in the guest: {out}");
    // Usable once duplicate address detection is over (busybox ip has no nodad).
    eventually("DAD of the extra address", Duration::from_secs(20), || {
        let (ok, out) = exec(&d, "a", "ip -6 -o addr show dev eth0");
        (
            ok && out.contains("fd00:66::bad/64") && !out.contains("tentative"),
            out,
        )
    });
    let (ok, out) = exec(&d, "a", &format!("ping -6 -c 2 -W 2 -I fd00:66::bad {b6}"));
    assert!(!ok, "a spoofed IPv6 source got through: {out}");
    // ... while a's own address still works.
    let (ok, out) = exec(&d, "a", "ip -6 addr del fd00:66::bad/64 dev eth0");
    assert!(ok, "{out}");
    eventually("a pings b again", Duration::from_secs(20), || {
        exec(&d, "a", &format!("ping -6 -c 1 -W 3 -I {a6} {b6}"))
    });

    // Per-VM firewall rules cover IPv6: ICMP to b blocked, then allowed again; an IPv6 CIDR
    // as peer only matches IPv6.
    d.ok(&[
        "vm",
        "nic",
        "set",
        "b",
        "eth0",
        "--rule",
        "in:icmp::[fd00:66::/64]:drop",
    ]);
    let (ok, out) = exec(&d, "a", &format!("ping -6 -c 1 -W 3 {b6}"));
    assert!(!ok, "IPv6 firewall rule not enforced: {out}");
    let b4 = d.json(&["vm", "nic", "list", "b"])[0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out) = exec(&d, "a", &format!("ping -c 1 -W 3 {b4}"));
    assert!(ok, "an IPv6 rule blocked IPv4: {out}");
    d.ok(&["vm", "nic", "set", "b", "eth0", "--clear-rules"]);
    eventually("access restored", Duration::from_secs(20), || {
        exec(&d, "a", &format!("ping -6 -c 1 -W 3 {b6}"))
    });

    // An isolated network with IPv6: the prefix is advertised, a default route is not (so
    // the guest has no IPv6 route off its own /64).
    d.ok(&[
        "network",
        "create",
        "iso6",
        "--type",
        "isolated",
        "--subnet",
        "10.67.0.0/24",
        "--ipv6",
        "fd00:67::/64",
    ]);
    d.ok(&[
        "vm",
        "create",
        "c",
        "--image",
        "tiny",
        "--network",
        "iso6",
        "--memory",
        "192MiB",
        "--start",
        "--wait",
    ]);
    let c6 = addr6("c");
    eventually(
        &format!("SLAAC address {c6} in c"),
        Duration::from_secs(60),
        || {
            let (ok, out) = exec(&d, "c", "ip -6 -o addr show dev eth0");
            (
                ok && out.contains(&format!("{c6}/64")) && !out.contains("tentative"),
                out,
            )
        },
    );
    let (_, routes) = exec(&d, "c", "ip -6 route");
    assert!(
        !routes.contains("default"),
        "isolated network advertised a router: {routes}"
    );
    let (ok, out) = exec(&d, "c", "ping -6 -c 1 -W 3 fd00:67::1");
    assert!(ok, "c cannot reach its bridge over IPv6: {out}");
    let (ok, out) = exec(&d, "c", &format!("ping -6 -c 1 -W 3 {a6}"));
    assert!(!ok, "isolated VM reached another network over IPv6: {out}");

    // Daemon restart (SIGKILL): the new daemon re-applies addresses, dnsmasq and rules.
    let mut d = d;
    d.restart().unwrap();
    assert!(ip6(&["-6", "addr", "show", "dev", "vb-six"]).contains("fd00:66::1/64"));
    eventually(
        "IPv6 after a daemon restart",
        Duration::from_secs(30),
        || {
            exec(
                &d,
                "a",
                &format!("ping -6 -c 1 -W 3 {b6} && ping -6 -c 1 -W 3 {OUTSIDE6}"),
            )
        },
    );

    // Removing IPv6 from the network takes it off the bridge and out of the rules.
    for vm in ["a", "b", "c"] {
        d.ok(&["vm", "kill", vm]);
        d.ok(&["vm", "delete", vm]);
    }
    d.ok(&["network", "edit", "six", "--no-ipv6"]);
    assert!(
        !ip6(&["-6", "addr", "show", "dev", "vb-six"]).contains("fd00:66::1"),
        "address left on the bridge"
    );
    d.ok(&["network", "delete", "six"]);
    d.ok(&["network", "delete", "iso6"]);
    println!("real_net_v6 took {:?}", started.elapsed());
}
