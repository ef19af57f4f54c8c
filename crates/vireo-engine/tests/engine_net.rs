//! Tier-2 tests of managed networks: the engine over the fake hypervisor and vireo-net's
//! in-memory FakeHost (no host effects). Checks the host state Vireo asks for (links,
//! dnsmasq configs, the nft ruleset) and that rejected requests change nothing.

use std::time::Duration;

use vireo_api::images::BuildImageRequest;
use vireo_api::networks::{
    Firewall, FirewallAction, FirewallDirection, FirewallProtocol, FirewallRule, ForwardProtocol,
    NetworkType, PortForward, UpdateNetworkRequest, UpdateNicRequest,
};
use vireo_api::operations::OperationStatus;
use vireo_engine::fake_hv::FakeHypervisor;
use vireo_engine::EngineError;
use vireo_net::{HostNet, IfName};
use vireo_types::{NicBackend, VmAction, VmState};

mod common;
use common::net::*;
use common::*;

#[tokio::test]
async fn default_network_avoids_host_routes_and_is_created_once() {
    let env = setup_net().await;
    let e = &env.engine;
    let nets = e.list_networks().await.unwrap();
    assert_eq!(nets.len(), 1);
    let d = &nets[0];
    assert_eq!(
        (d.name.as_str(), d.kind, d.default),
        ("default", NetworkType::Nat, true)
    );
    assert_eq!(d.subnet.as_deref(), Some("10.0.1.0/24"));
    assert_eq!(d.bridge, "vb-default");
    let st = env.host.state();
    assert!(st.links["vb-default"].up);
    assert_eq!(
        st.addresses["vb-default"],
        vec![("10.0.1.1".parse().unwrap(), 24)]
    );
    assert!(st.forwarding);
    assert!(st.dnsmasq.contains_key("default"));
    assert!(
        nft(&st)
            .contains("ip saddr 10.0.1.0/24 ip daddr != 10.0.1.0/24 oifname \"eth0\" masquerade"),
        "{}",
        nft(&st)
    );

    // Deleted by the user, it does not come back on the next start.
    e.delete_network("default", "test").await.unwrap();
    assert!(!env.host.state().links.contains_key("vb-default"));
    assert!(!env.host.state().dnsmasq.contains_key("default"));
    e.start_networks().await.unwrap();
    assert!(e.list_networks().await.unwrap().is_empty());
}

#[tokio::test]
async fn vm_nic_gets_tap_reservation_and_rules_while_running() {
    let env = setup_net().await;
    let e = &env.engine;
    let op = e
        .create_vm(None, create_req("web1", false), "test")
        .await
        .unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    let vm = e.get_vm(None, "web1").await.unwrap();
    assert_eq!(vm.nics.len(), 1);
    assert_eq!(vm.nics[0].network, "default");
    let mac = vm.nics[0].mac;
    assert_eq!(&mac.0[..3], &[0x0a, 0x76, 0x72]);
    let tap = match &vm.spec.nics[0].backend {
        NicBackend::Tap { ifname } => ifname.clone(),
        other => panic!("expected a tap backend, got {other:?}"),
    };
    assert_eq!(tap.len(), 15);
    // Stopped: no tap yet, but the reservation and DNS name are there.
    let st = env.host.state();
    assert!(!st.links.contains_key(&tap));
    let conf = std::fs::read_to_string(&st.dnsmasq["default"]).unwrap();
    assert!(
        conf.contains(&format!("dhcp-host={mac},10.0.1.2,web1")),
        "{conf}"
    );
    let leases = e.network_leases("default").await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].ip.to_string().as_str(), leases[0].kind.as_str()),
        ("10.0.1.2", "reserved")
    );

    act(e, "web1", VmAction::Start).await;
    let st = env.host.state();
    assert_eq!(st.links[&tap].master.as_deref(), Some("vb-default"));
    assert!(st.links[&tap].up);
    let rules = nft(&st);
    assert!(rules.contains(&tap), "anti-spoofing for the tap: {rules}");
    assert!(rules.contains("10.0.1.2"), "{rules}");
    let nics = e.list_nics(None, "web1").await.unwrap();
    assert_eq!(nics[0].tap.as_deref(), Some(tap.as_str()));
    assert_eq!(nics[0].ip, Some("10.0.1.2".parse().unwrap()));

    act(e, "web1", VmAction::Stop).await;
    // The reconcile after the stop removes the tap, then re-applies the ruleset without it.
    until("tap and its rules removal", || {
        let st = env.host.state();
        !st.links.contains_key(&tap) && !nft(&st).contains(&tap)
    })
    .await;

    // In use: the network cannot go; after the VM is deleted it can, and the reservation
    // went with the VM.
    let err = e.delete_network("default", "t").await.unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");
    act(e, "web1", VmAction::Delete).await;
    for _ in 0..100 {
        if e.get_vm(None, "web1").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(e.network_leases("default").await.unwrap().is_empty());
    e.delete_network("default", "t").await.unwrap();
}

#[tokio::test]
async fn bad_input_is_rejected_and_changes_nothing() {
    let env = setup_net().await;
    let e = &env.engine;
    e.create_network(
        net_req("lan", NetworkType::Isolated, Some("10.50.0.0/24")),
        "t",
    )
    .await
    .unwrap();
    let op = e
        .create_vm(None, create_req("vm1", true), "test")
        .await
        .unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    let before = env.host.state();
    let nets_before = e.list_networks().await.unwrap();

    fn field<T>(r: Result<T, EngineError>) -> String {
        match r {
            Err(EngineError::Invalid { field, .. }) => field.unwrap_or_default(),
            Err(other) => panic!("expected invalid_request, got {other}"),
            Ok(_) => panic!("accepted bad input"),
        }
    }
    // Overlapping subnets: another network, and the host's own route.
    assert_eq!(
        field(
            e.create_network(net_req("b", NetworkType::Nat, Some("10.50.0.128/25")), "t")
                .await
        ),
        "subnet"
    );
    assert_eq!(
        field(
            e.create_network(net_req("c", NetworkType::Nat, Some("10.0.0.0/16")), "t")
                .await
        ),
        "subnet"
    );
    // Invalid CIDRs.
    for bad in ["10.1.2.3/24", "10.1.2.0/33", "banana", "10.1.2.0"] {
        assert_eq!(
            field(
                e.create_network(net_req("d", NetworkType::Nat, Some(bad)), "t")
                    .await
            ),
            "subnet",
            "{bad}"
        );
    }
    // VLAN 0 / 5000, and VLAN on a Linux-bridge network.
    for v in [0, 5000, 10] {
        let mut r = nic_req("lan");
        r.vlan = Some(v);
        assert_eq!(
            field(e.add_nic(None, "vm1", r, "t").await.map(drop)),
            "vlan",
            "vlan {v}"
        );
    }
    // Duplicate MAC (of vm1's first NIC).
    let mac = e.get_vm(None, "vm1").await.unwrap().nics[0].mac;
    let mut r = nic_req("lan");
    r.mac = Some(mac);
    assert_eq!(field(e.add_nic(None, "vm1", r, "t").await.map(drop)), "mac");
    // A port forward on an isolated network, a firewall rule with ports but no L4.
    let mut r = net_req("f", NetworkType::Isolated, Some("10.60.0.0/24"));
    r.port_forwards.push(PortForward {
        protocol: ForwardProtocol::Tcp,
        host_address: None,
        host_port: 8080,
        target: "10.60.0.5".parse().unwrap(),
        target_port: 80,
    });
    assert_eq!(field(e.create_network(r, "t").await), "port_forwards");
    let bad_fw = Firewall {
        rules: vec![FirewallRule {
            direction: FirewallDirection::In,
            protocol: FirewallProtocol::Icmp,
            ports: vec!["22".into()],
            cidr: None,
            action: FirewallAction::Drop,
        }],
        ..Default::default()
    };
    let upd = UpdateNetworkRequest {
        firewall: Some(bad_fw),
        ..Default::default()
    };
    assert_eq!(
        field(e.update_network("lan", upd, None, "t").await),
        "firewall"
    );
    // In use.
    assert!(matches!(
        e.delete_network("default", "t").await,
        Err(EngineError::Conflict(_))
    ));
    // Nothing changed: same networks, same host calls.
    let after = env.host.state();
    assert_eq!(after.calls, before.calls);
    assert_eq!(after.nft, before.nft);
    let nets_after = e.list_networks().await.unwrap();
    assert_eq!(nets_after, nets_before);
    assert_eq!(e.list_nics(None, "vm1").await.unwrap().len(), 1);
}

#[tokio::test]
async fn nic_hotplug_on_a_running_vm() {
    let env = setup_net().await;
    let e = &env.engine;
    e.create_network(
        net_req("lan", NetworkType::Isolated, Some("10.50.0.0/24")),
        "t",
    )
    .await
    .unwrap();
    let op = e
        .create_vm(None, create_req("vm1", true), "test")
        .await
        .unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    let uuid = e.get_vm(None, "vm1").await.unwrap().uuid;
    let mut r = nic_req("lan");
    r.ip = Some("10.50.0.9".parse().unwrap());
    let nic = e.add_nic(None, "vm1", r, "t").await.unwrap();
    assert_eq!(nic.name.as_str(), "eth1");
    let tap = nic.tap.clone().expect("a live tap");
    let m = env.hv.machine(uuid).unwrap();
    assert_eq!(
        m.nic_log(),
        vec![format!("add eth1 {} {tap} vireo_hp0", nic.mac)]
    );
    let st = env.host.state();
    assert_eq!(st.links[&tap].master.as_deref(), Some("vb-lan"));
    let conf = std::fs::read_to_string(&st.dnsmasq["lan"]).unwrap();
    assert!(
        conf.contains(&format!("dhcp-host={},10.50.0.9,vm1", nic.mac)),
        "{conf}"
    );
    let vm = e.get_vm(None, "vm1").await.unwrap();
    assert_eq!(vm.spec.nics.len(), 2);
    let placed = e.list_nics(None, "vm1").await.unwrap();
    assert_eq!(placed.len(), 2);
    assert_eq!(vm.nics[1].network, "lan");

    // Link down and a per-VM firewall, live.
    let fw = Firewall {
        rules: vec![FirewallRule {
            direction: FirewallDirection::In,
            protocol: FirewallProtocol::Tcp,
            ports: vec!["22".into()],
            cidr: Some("10.50.0.0/24".into()),
            action: FirewallAction::Drop,
        }],
        ..Default::default()
    };
    let n = e
        .update_nic(
            None,
            "vm1",
            "eth1",
            UpdateNicRequest {
                link_up: Some(false),
                firewall: Some(fw),
            },
        )
        .await
        .unwrap();
    assert!(!n.link_up);
    assert!(m.nic_log().contains(&"link eth1 false".to_string()));
    let st = env.host.state();
    assert!(!st.links[&tap].up);
    assert!(
        nft(&st).contains("ip saddr 10.50.0.0/24 meta l4proto tcp th dport { 22 } drop"),
        "{}",
        nft(&st)
    );

    // eth0 was plugged at boot: it cannot leave a running VM.
    assert!(matches!(
        e.remove_nic(None, "vm1", "eth0", "t").await,
        Err(EngineError::Conflict(_))
    ));
    e.remove_nic(None, "vm1", "eth1", "t").await.unwrap();
    assert!(m.nic_log().contains(&"remove eth1".to_string()));
    assert!(!env.host.state().links.contains_key(&tap));
    assert_eq!(e.get_vm(None, "vm1").await.unwrap().spec.nics.len(), 1);
    assert!(e.network_leases("lan").await.unwrap().is_empty());
    assert_eq!(e.get_vm(None, "vm1").await.unwrap().state, VmState::Running);
}

#[tokio::test]
async fn reconcile_recreates_missing_and_removes_only_own_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let hv = FakeHypervisor::new();
    let host = fake_host();
    host.create_bridge(&IfName::bridge("vb-stale").unwrap())
        .unwrap();
    host.create_tap(&IfName::tap("vt-stale").unwrap()).unwrap();
    host.create_veth("eth9", "eth9-peer").unwrap();
    let e = open_net(dir.path(), hv.clone(), host.clone()).await;
    let st = host.state();
    assert!(!st.links.contains_key("vb-stale") && !st.links.contains_key("vt-stale"));
    assert!(st.links.contains_key("eth9") && st.links.contains_key("eth0"));
    // Someone deletes Vireo's bridge and flushes its rules: the next pass repairs both.
    host.delete_link(&IfName::bridge("vb-default").unwrap())
        .unwrap();
    host.nft_apply("table inet vireo {}").unwrap();
    e.network_manager().unwrap().apply().await.unwrap();
    let st = host.state();
    assert!(st.links.contains_key("vb-default"));
    assert!(nft(&st).contains("masquerade"), "{}", nft(&st));
    // Port forwards and network firewall rules land in the one ruleset.
    let upd = UpdateNetworkRequest {
        port_forwards: Some(vec![PortForward {
            protocol: ForwardProtocol::Tcp,
            host_address: None,
            host_port: 2222,
            target: "10.0.1.5".parse().unwrap(),
            target_port: 22,
        }]),
        firewall: Some(Firewall {
            default_in: FirewallAction::Drop,
            ..Default::default()
        }),
        ..Default::default()
    };
    let rev = e.get_network("default").await.unwrap().revision;
    let n = e
        .update_network("default", upd.clone(), Some(rev), "t")
        .await
        .unwrap();
    assert_eq!(n.port_forwards.len(), 1);
    let rules = nft(&host.state());
    assert!(
        rules.contains("tcp dport 2222 dnat ip to 10.0.1.5:22"),
        "{rules}"
    );
    // A stale revision is refused.
    assert!(matches!(
        e.update_network("default", upd, Some(rev), "t").await,
        Err(EngineError::Precondition { .. })
    ));
}

#[tokio::test]
async fn linux_bridge_vlans_where_the_kernel_has_vlan_filtering() {
    let dir = tempfile::tempdir().unwrap();
    let hv = FakeHypervisor::new();
    let host = fake_host();
    host.edit(|st| st.vlan_filtering = true);
    let e = open_net(dir.path(), hv.clone(), host.clone()).await;
    let op = e
        .build_image(BuildImageRequest::new(name("tiny")), "test")
        .await
        .unwrap();
    assert_eq!(wait(&e, &op).await.status, OperationStatus::Succeeded);
    e.create_network(
        net_req("lan", NetworkType::Isolated, Some("10.50.0.0/24")),
        "t",
    )
    .await
    .unwrap();
    let mut req = create_req("vm1", false);
    req.networks = Some(vec![]);
    let op = e.create_vm(None, req, "test").await.unwrap();
    assert_eq!(wait(&e, &op).await.status, OperationStatus::Succeeded);
    let mut r = nic_req("lan");
    r.vlan = Some(10);
    let nic = e.add_nic(None, "vm1", r, "t").await.unwrap();
    assert_eq!(nic.vlan, Some(10));
    act(&e, "vm1", VmAction::Start).await;
    let st = host.state();
    let tap = e.list_nics(None, "vm1").await.unwrap()[0]
        .tap
        .clone()
        .unwrap();
    assert!(
        st.calls.contains(&"set_vlan_filtering vb-lan".to_string()),
        "{:?}",
        st.calls
    );
    assert_eq!(st.access_vlans.get(&tap), Some(&10));
    // VLAN 0 and 5000 stay invalid here too.
    for v in [0, 5000] {
        let mut r = nic_req("lan");
        r.vlan = Some(v);
        assert!(matches!(
            e.add_nic(None, "vm1", r, "t").await,
            Err(EngineError::Invalid { .. })
        ));
    }
}

/// The tap of a VM's first NIC.
fn first_tap(vm: &vireo_api::vms::VmInfo) -> String {
    match &vm.spec.nics[0].backend {
        NicBackend::Tap { ifname } => ifname.clone(),
        other => panic!("expected a tap backend, got {other:?}"),
    }
}

#[tokio::test]
async fn clones_get_their_own_nic_on_the_sources_network() {
    let env = setup_net().await;
    let e = &env.engine;
    let op = e
        .create_vm(None, create_req("base", false), "t")
        .await
        .unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    let base = e.get_vm(None, "base").await.unwrap();
    let base_ip = e.list_nics(None, "base").await.unwrap()[0].ip;

    // `vm clone` of the stopped VM, then two clones of it as a template, started.
    let req = vireo_api::snapshots::CloneVmRequest {
        name: name("c1"),
        mode: vireo_api::snapshots::CloneMode::Linked,
        snapshot: None,
        pool: None,
        start: false,
    };
    let op = e.clone_vm(None, "base", req, "t").await.unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    e.template_vm(None, "base", "t").await.unwrap();
    let mut req = create_req("w", true);
    req.image = None;
    req.template = Some(name("base"));
    req.vcpus = None;
    req.memory_mib = None;
    req.count = Some(2);
    let op = e.create_vm(None, req, "t").await.unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);

    let mut seen = vec![(first_tap(&base), base.nics[0].mac, base_ip)];
    let conf = || std::fs::read_to_string(&env.host.state().dnsmasq["default"]).unwrap();
    for vm in ["c1", "w1", "w2"] {
        let info = e.get_vm(None, vm).await.unwrap();
        let nic = &e.list_nics(None, vm).await.unwrap()[0];
        let tap = first_tap(&info);
        assert_eq!(info.nics[0].network, "default", "{vm}");
        assert_eq!(nic.mac, info.nics[0].mac, "{vm}: record and spec agree");
        assert!(nic.ip.is_some(), "{vm} has no reserved address");
        let mine = (tap.clone(), nic.mac, nic.ip);
        assert!(!seen.contains(&mine), "{vm} shares {mine:?}: {seen:?}");
        assert!(seen
            .iter()
            .all(|s| s.0 != mine.0 && s.1 != mine.1 && s.2 != mine.2));
        seen.push(mine);
        let conf = conf();
        assert!(
            conf.contains(&format!("dhcp-host={},{},{vm}", nic.mac, nic.ip.unwrap())),
            "{conf}"
        );
        if info.state == VmState::Running {
            assert_eq!(
                env.host.state().links[&tap].master.as_deref(),
                Some("vb-default"),
                "{vm}'s tap is on the bridge"
            );
        }
    }
    // Deleting a clone releases its reservation.
    act(e, "c1", VmAction::Delete).await;
    until("c1's reservation to go", || !conf().contains(",c1\n")).await;
}
