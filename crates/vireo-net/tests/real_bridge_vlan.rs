//! Linux-bridge VLANs for real, inside a throwaway network namespace: a bridge gets
//! `vlan_filtering` and a port becomes an access port of VLAN 10 through Vireo's own rtnetlink
//! messages. Kernels without CONFIG_BRIDGE_VLAN_FILTERING (the build machines) refuse the
//! first message; the test then prints why and stops (the messages themselves are checked
//! byte for byte by the unit tests in `bridge_vlan.rs`).

use std::process::Command;

use vireo_net::bridge_vlan::{access_port_msgs, vlan_filtering_msg, NetlinkSocket, VlanError};
use vireo_net::tap::in_netns;
use vireo_net::VlanId;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ifindex(ns: &str, dev: &str) -> i32 {
    let json = sh(&["ip", "-n", ns, "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["ifindex"].as_i64().unwrap() as i32
}

#[test]
fn access_port_on_a_vlan_filtering_bridge() {
    let ns = Ns(format!("vnv{}", std::process::id() % 100_000));
    sh(&["ip", "netns", "add", &ns.0]);
    sh(&[
        "ip", "-n", &ns.0, "link", "add", "vb-vlan", "type", "bridge",
    ]);
    sh(&[
        "ip", "-n", &ns.0, "link", "add", "vt-p1", "type", "veth", "peer", "name", "p1-peer",
    ]);
    sh(&[
        "ip", "-n", &ns.0, "link", "set", "vt-p1", "master", "vb-vlan",
    ]);
    let (br, port) = (ifindex(&ns.0, "vb-vlan"), ifindex(&ns.0, "vt-p1"));
    let res = in_netns(&ns.0, || -> Result<(), VlanError> {
        let sock = NetlinkSocket::open()?;
        sock.request(&vlan_filtering_msg(1, br, true)?)?;
        for m in access_port_msgs(2, port, VlanId::new(10).unwrap())? {
            sock.request(&m)?;
        }
        Ok(())
    })
    .unwrap();
    match res {
        Err(VlanError::Kernel(e)) => {
            eprintln!("skipping: this kernel refuses bridge vlan_filtering ({e}); Vireo uses Open vSwitch for VLANs here");
            return;
        }
        Err(e) => panic!("{e}"),
        Ok(()) => {}
    }
    let details = sh(&[
        "ip", "-n", &ns.0, "-d", "-j", "link", "show", "dev", "vb-vlan",
    ]);
    assert!(details.contains("\"vlan_filtering\":1"), "{details}");
    let vlans = sh(&[
        "ip", "netns", "exec", &ns.0, "bridge", "-j", "vlan", "show", "dev", "vt-p1",
    ]);
    let v: serde_json::Value = serde_json::from_str(&vlans).unwrap();
    let entries = v[0]["vlans"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{vlans}");
    assert_eq!(entries[0]["vlan"], 10, "{vlans}");
    let flags = entries[0]["flags"].to_string();
    assert!(
        flags.contains("PVID") && flags.contains("Egress Untagged"),
        "{vlans}"
    );
}
