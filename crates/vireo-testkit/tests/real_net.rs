//! Tier 4, managed networks for real: `vireod` runs INSIDE a throwaway network namespace
//! ("daemon"), whose uplink is a veth pair into a second throwaway namespace ("outside") that
//! plays the world (192.0.2.1, no route back to any VM subnet, so a reply proves masquerade).
//! Real tiny guests (TCG) get DHCP leases from dnsmasq, resolve each other by name, are
//! firewalled by nftables, reached through a port forward, get a hot-added NIC, and are kept
//! apart by VLAN tags on Vireo's Open vSwitch (userspace datapath). Nothing here touches the
//! host's own namespace: every link, rule and process lives in the two namespaces, which
//! are deleted at the end.

use std::process::Command;
use std::time::{Duration, Instant};

use vireo_testkit::{DaemonOptions, TestDaemon};

/// Two namespaces joined by a veth pair; deleted (with everything in them) on drop.
struct NetLab {
    daemon_ns: String,
    outside_ns: String,
    uplink: String,
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl NetLab {
    fn new() -> NetLab {
        let id = std::process::id() % 100_000;
        let lab = NetLab {
            daemon_ns: format!("vnd{id}"),
            outside_ns: format!("vno{id}"),
            uplink: format!("vxd{id}"),
        };
        let peer = format!("vxo{id}");
        let (d, o) = (lab.daemon_ns.as_str(), lab.outside_ns.as_str());
        must(&["ip", "netns", "add", d]);
        must(&["ip", "netns", "add", o]);
        must(&[
            "ip",
            "link",
            "add",
            &lab.uplink,
            "netns",
            d,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            o,
        ]);
        must(&[
            "ip",
            "-n",
            d,
            "addr",
            "add",
            "192.0.2.2/24",
            "dev",
            &lab.uplink,
        ]);
        must(&["ip", "-n", d, "link", "set", &lab.uplink, "up"]);
        must(&["ip", "-n", d, "link", "set", "lo", "up"]);
        must(&["ip", "-n", d, "route", "add", "default", "via", "192.0.2.1"]);
        must(&["ip", "-n", o, "addr", "add", "192.0.2.1/24", "dev", &peer]);
        must(&["ip", "-n", o, "link", "set", &peer, "up"]);
        must(&["ip", "-n", o, "link", "set", "lo", "up"]);
        lab
    }

    /// Links and nft ruleset of the daemon's namespace (what "nothing changed" compares).
    fn snapshot(&self) -> (String, String) {
        let links = must(&["ip", "-n", &self.daemon_ns, "-br", "link"]);
        let rules = must(&[
            "ip",
            "netns",
            "exec",
            &self.daemon_ns,
            "nft",
            "list",
            "ruleset",
        ]);
        (links, rules)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
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

/// The guest interface with `mac`.
fn iface_of(d: &TestDaemon, vm: &str, mac: &str) -> String {
    let script = format!(
        "for i in /sys/class/net/*; do [ \"$(cat $i/address)\" = {mac} ] && echo ${{i##*/}}; done; true"
    );
    let mut name = String::new();
    eventually(
        &format!("NIC {mac} in {vm}"),
        Duration::from_secs(30),
        || {
            let (ok, out) = exec(d, vm, &script);
            name = out.trim().to_string();
            (ok && !name.is_empty(), out)
        },
    );
    name
}

fn nic_json(d: &TestDaemon, vm: &str, nic: &str) -> serde_json::Value {
    let nics = d.json(&["vm", "nic", "list", vm]);
    nics.as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == nic)
        .cloned()
        .unwrap_or_else(|| panic!("{vm} has no NIC {nic}: {nics}"))
}

fn fails(d: &TestDaemon, args: &[&str]) -> String {
    let out = d.cli(args);
    assert!(
        !out.status.success(),
        "vireo {} was accepted: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn real_net_managed_networks_end_to_end() {
    let started = Instant::now();
    let lab = NetLab::new();
    let d = TestDaemon::start_with(DaemonOptions {
        netns: Some(lab.daemon_ns.clone()),
        network_config: format!("uplink = \"{}\"", lab.uplink),
        ..Default::default()
    })
    .unwrap();
    d.ensure_tiny();

    // The default nat network exists and avoided the uplink's 192.0.2.0/24.
    let def = d.json(&["network", "show", "default"]);
    assert_eq!(def["type"], "nat", "{def}");
    assert_eq!(def["subnet"], "10.0.0.0/24", "{def}");
    let host = d.json(&["host", "show"]);
    assert_eq!(host["network"]["managed"], true, "{host}");
    println!("VLAN back-ends: {}", host["network"]);

    // Bad input: 4xx, nothing changed in the namespace.
    let before = lab.snapshot();
    for args in [
        vec![
            "network",
            "create",
            "x1",
            "--type",
            "nat",
            "--subnet",
            "10.0.0.128/25",
        ],
        vec![
            "network",
            "create",
            "x2",
            "--type",
            "nat",
            "--subnet",
            "192.0.2.0/24",
        ],
        vec![
            "network",
            "create",
            "x3",
            "--type",
            "nat",
            "--subnet",
            "10.5.0.1/24",
        ],
        vec![
            "network",
            "create",
            "x4",
            "--type",
            "isolated",
            "--subnet",
            "10.5.0.0/33",
        ],
        vec![
            "network",
            "create",
            "x5",
            "--type",
            "bridged",
            "--uplink",
            "nonexistent0",
        ],
    ] {
        fails(&d, &args);
    }
    assert_eq!(
        lab.snapshot(),
        before,
        "a rejected request changed the host"
    );

    d.ok(&[
        "network",
        "create",
        "iso",
        "--type",
        "isolated",
        "--subnet",
        "10.88.0.0/24",
    ]);
    let ovs_ok = host["network"]["ovs"] == true;
    if ovs_ok {
        d.ok(&["network", "create", "sw", "--type", "ovs"]);
    } else {
        println!("skipping the OVS VLAN part: {}", host["network"]["detail"]);
    }

    for (vm, net) in [("a", "default"), ("b", "default"), ("c", "iso")] {
        d.ok(&[
            "vm",
            "create",
            vm,
            "--image",
            "tiny",
            "--network",
            net,
            "--memory",
            "192MiB",
            "--start",
            "--wait",
        ]);
    }
    let ip_of = |vm: &str| nic_json(&d, vm, "eth0")["ip"].as_str().unwrap().to_string();
    let (ip_a, ip_b, ip_c) = (ip_of("a"), ip_of("b"), ip_of("c"));
    for (vm, ip) in [("a", &ip_a), ("b", &ip_b), ("c", &ip_c)] {
        eventually(
            &format!("DHCP lease of {vm}"),
            Duration::from_secs(60),
            || {
                let (ok, out) = exec(&d, vm, "ip -4 -o addr show dev eth0");
                (ok && out.contains(&format!("{ip}/")), out)
            },
        );
    }
    let leases = d.json(&["network", "leases", "default"]);
    for ip in [&ip_a, &ip_b] {
        assert!(
            leases
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["ip"] == ip.as_str() && l["expires"] != 0),
            "no dynamic lease for {ip}: {leases}"
        );
    }

    // By name through dnsmasq, and to the outside through masquerade.
    let (ok, out) = exec(&d, "a", "nslookup b");
    assert!(ok && out.contains(&ip_b), "nslookup b: {out}");
    let (ok, out) = exec(&d, "a", "ping -c 1 -W 5 b");
    assert!(ok, "a cannot ping b by name: {out}");
    let (ok, out) = exec(&d, "a", "ping -c 1 -W 5 192.0.2.1");
    assert!(ok, "a cannot reach the outside through NAT: {out}");
    // Isolated: no way out.
    let (ok, out) = exec(&d, "c", "ping -c 1 -W 3 192.0.2.1");
    assert!(!ok, "isolated VM reached the outside: {out}");

    // Per-VM firewall: ICMP to a blocked, then allowed again.
    d.ok(&["vm", "nic", "set", "a", "eth0", "--rule", "in:icmp:::drop"]);
    let (ok, out) = exec(&d, "b", &format!("ping -c 1 -W 3 {ip_a}"));
    assert!(!ok, "firewall rule not enforced: {out}");
    d.ok(&["vm", "nic", "set", "a", "eth0", "--clear-rules"]);
    let (ok, out) = exec(&d, "b", &format!("ping -c 1 -W 5 {ip_a}"));
    assert!(ok, "access not restored after removing the rule: {out}");

    // Port forward: outside -> 192.0.2.2:8080 -> a:80.
    let (ok, out) = exec(
        &d,
        "a",
        "nc -ll -p 80 -e echo hello-from-a </dev/null >/dev/null 2>&1 & echo started",
    );
    assert!(ok, "{out}");
    d.ok(&[
        "network",
        "edit",
        "default",
        "--forward",
        &format!("tcp:8080:{ip_a}:80"),
    ]);
    eventually("port forward", Duration::from_secs(20), || {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &lab.outside_ns,
            "busybox",
            "nc",
            "-w",
            "3",
            "192.0.2.2",
            "8080",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.contains("hello-from-a"), text)
    });

    // NIC hot-add: appears in the guest and gets its lease.
    let nic = d.json(&["vm", "nic", "add", "c", "--network", "iso"]);
    let (mac, ip) = (
        nic["mac"].as_str().unwrap().to_string(),
        nic["ip"].as_str().unwrap().to_string(),
    );
    let ifname = iface_of(&d, "c", &mac);
    eventually(
        "lease on the hot-added NIC",
        Duration::from_secs(60),
        || {
            exec(
            &d,
            "c",
            &format!(
                "ip link set {ifname} up; udhcpc -i {ifname} -n -q -t 5 -T 1 -s /etc/vireo/dhcp >/dev/null 2>&1; ip -4 -o addr show dev {ifname} | grep -q ' {ip}/' && echo ok"
            ),
        )
        },
    );

    // ... and leaves again while the VM runs (device gone from the guest, tap gone).
    let nic_name = nic["name"].as_str().unwrap().to_string();
    let tap = nic["tap"].as_str().unwrap().to_string();
    d.ok(&["vm", "nic", "remove", "c", &nic_name]);
    eventually(
        "hot-removed NIC leaves the guest",
        Duration::from_secs(30),
        || {
            let (ok, out) = exec(
                &d,
                "c",
                &format!("test ! -e /sys/class/net/{ifname} && echo gone"),
            );
            (ok, out)
        },
    );
    assert!(
        !lab.snapshot().0.contains(&tap),
        "tap {tap} survived the NIC"
    );

    // More bad input now that VMs exist: VLAN 0/5000, duplicate MAC, network in use.
    let before = lab.snapshot();
    let a_mac = nic_json(&d, "a", "eth0")["mac"]
        .as_str()
        .unwrap()
        .to_string();
    fails(
        &d,
        &[
            "vm",
            "nic",
            "add",
            "b",
            "--network",
            "default",
            "--vlan",
            "0",
        ],
    );
    fails(
        &d,
        &[
            "vm",
            "nic",
            "add",
            "b",
            "--network",
            "default",
            "--vlan",
            "5000",
        ],
    );
    fails(
        &d,
        &[
            "vm",
            "nic",
            "add",
            "b",
            "--network",
            "default",
            "--mac",
            &a_mac,
        ],
    );
    let err = fails(&d, &["network", "delete", "iso"]);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(
        lab.snapshot(),
        before,
        "a rejected request changed the host"
    );

    // VLANs on Open vSwitch: a and b on VLAN 10 talk; c on VLAN 20 is cut off.
    if ovs_ok {
        let mut addrs = vec![];
        for (vm, vlan, addr) in [
            ("a", "10", "10.77.0.1"),
            ("b", "10", "10.77.0.2"),
            ("c", "20", "10.77.0.3"),
        ] {
            let nic = d.json(&["vm", "nic", "add", vm, "--network", "sw", "--vlan", vlan]);
            let ifname = iface_of(&d, vm, nic["mac"].as_str().unwrap());
            let (ok, out) = exec(
                &d,
                vm,
                &format!("ip link set {ifname} up && ip addr add {addr}/24 dev {ifname}"),
            );
            assert!(ok, "{out}");
            addrs.push(addr);
        }
        let (ok, out) = exec(
            &d,
            "a",
            "ping -c 1 -W 5 10.77.0.2 || ping -c 1 -W 5 10.77.0.2",
        );
        assert!(ok, "VLAN 10 peers cannot talk: {out}");
        let (ok, out) = exec(&d, "a", "ping -c 2 -W 2 10.77.0.3");
        assert!(!ok, "VLAN 10 reached VLAN 20: {out}");
    }

    // Daemon restart (SIGKILL): VMs keep running, the new daemon re-attaches them, replaces
    // the old dnsmasq and Open vSwitch processes and re-applies links and rules.
    let mut d = d;
    d.restart().unwrap();
    let (_, rules) = lab.snapshot();
    assert!(
        rules.contains("table inet vireo") && rules.contains("masquerade"),
        "{rules}"
    );
    eventually(
        "networking after a daemon restart",
        Duration::from_secs(30),
        || exec(&d, "a", "ping -c 1 -W 5 b && ping -c 1 -W 5 192.0.2.1"),
    );
    if ovs_ok {
        eventually("VLAN 10 after restart", Duration::from_secs(20), || {
            exec(&d, "a", "ping -c 1 -W 2 10.77.0.2")
        });
    }

    // Deleting the VMs frees the networks; deleting a network removes its bridge.
    for vm in ["a", "b", "c"] {
        d.ok(&["vm", "kill", vm]);
        d.ok(&["vm", "delete", vm]);
    }
    d.ok(&["network", "delete", "iso"]);
    let links = lab.snapshot().0;
    assert!(
        !links.contains("vb-iso") && !links.contains("vt-"),
        "{links}"
    );
    println!("real_net end-to-end took {:?}", started.elapsed());
}
