//! Tier-2 tests of IPv6 on managed networks: the engine over the fake hypervisor and
//! vireo-net's in-memory FakeHost. Checks what an IPv6 /64 changes in the host state Vireo asks
//! for (bridge address, dnsmasq RA/DHCPv6, nft rules, NIC addresses) and that bad IPv6 input
//! changes nothing.

use vireo_api::networks::{CreateNetworkRequest, Ipv6Dhcp, NetworkType, UpdateNetworkRequest};
use vireo_api::operations::OperationStatus;
use vireo_engine::EngineError;
use vireo_types::VmAction;

mod common;
use common::net::*;
use common::*;

fn v6_req(n: &str, kind: NetworkType, subnet: &str, ipv6: &str) -> CreateNetworkRequest {
    let mut r = net_req(n, kind, Some(subnet));
    r.ipv6 = Some(ipv6.into());
    r
}

fn invalid_field<T: std::fmt::Debug>(r: Result<T, EngineError>) -> String {
    match r {
        Err(EngineError::Invalid { field, .. }) => field.unwrap_or_default(),
        other => panic!("expected invalid_request, got {other:?}"),
    }
}

#[tokio::test]
async fn ipv6_on_a_nat_network_reaches_bridge_dnsmasq_rules_and_nics() {
    let env = setup_net().await;
    let e = &env.engine;
    let info = e
        .create_network(
            v6_req("six", NetworkType::Nat, "10.70.0.0/24", "fd00:70::/64"),
            "t",
        )
        .await
        .unwrap();
    assert_eq!(info.ipv6.as_deref(), Some("fd00:70::/64"));
    assert_eq!(info.ipv6_gateway, Some("fd00:70::1".parse().unwrap()));
    assert_eq!(info.ipv6_dhcp, Some(Ipv6Dhcp::Stateless));
    assert_eq!(e.get_network("six").await.unwrap(), info);
    let st = env.host.state();
    assert_eq!(
        st.addresses6["vb-six"],
        vec![("fd00:70::1".parse().unwrap(), 64)]
    );
    assert!(st.forwarding6, "nat with IPv6 turns IPv6 forwarding on");
    let conf = std::fs::read_to_string(&st.dnsmasq["six"]).unwrap();
    for line in [
        "enable-ra\n",
        "dhcp-range=fd00:70::,ra-stateless,64,3600\n",
        "listen-address=fd00:70::1\n",
    ] {
        assert!(conf.contains(line), "{line:?} missing: {conf}");
    }
    assert!(
        !conf.contains("ra-param="),
        "nat networks advertise a router"
    );
    let rules = nft(&st);
    assert!(
        rules.contains(
            "ip6 saddr fd00:70::/64 ip6 daddr != fd00:70::/64 oifname \"eth0\" masquerade"
        ),
        "{rules}"
    );
    // The default network has no IPv6: no IPv6 address on its bridge.
    assert!(!st.addresses6.contains_key("vb-default"));

    // A VM on it: EUI-64 address in the API, DNS, anti-spoofing and its firewall chains.
    let mut req = create_req("web6", false);
    req.networks = Some(vec![name("six")]);
    let op = e.create_vm(None, req, "test").await.unwrap();
    assert_eq!(wait(e, &op).await.status, OperationStatus::Succeeded);
    let nic = e.list_nics(None, "web6").await.unwrap().remove(0);
    let m = nic.mac.0;
    let expected: std::net::Ipv6Addr = format!(
        "fd00:70::{:x}:{:x}ff:fe{:02x}:{:x}",
        u16::from_be_bytes([m[0] ^ 2, m[1]]),
        m[2],
        m[3],
        u16::from_be_bytes([m[4], m[5]])
    )
    .parse()
    .unwrap();
    assert_eq!(nic.ipv6, Some(expected));
    let conf = std::fs::read_to_string(&env.host.state().dnsmasq["six"]).unwrap();
    assert!(
        conf.contains(&format!(
            "host-record=web6.vireo,web6,{},{expected}\n",
            nic.ip.unwrap()
        )),
        "{conf}"
    );
    act(e, "web6", VmAction::Start).await;
    let rules = nft(&env.host.state());
    assert!(
        rules.contains("ip6 saddr != { fe80::") && rules.contains(&expected.to_string()),
        "{rules}"
    );
    assert!(rules.contains("ip6 saddr { fe80::"), "{rules}");

    // Stateful DHCPv6: reservation by MAC, leases list the IPv6 address as reserved.
    let upd = UpdateNetworkRequest {
        ipv6_dhcp: Some(Ipv6Dhcp::Stateful),
        ..Default::default()
    };
    e.update_network("six", upd, None, "t").await.unwrap();
    let conf = std::fs::read_to_string(&env.host.state().dnsmasq["six"]).unwrap();
    assert!(
        conf.contains("dhcp-range=fd00:70::,static,64,3600\n"),
        "{conf}"
    );
    assert!(
        conf.contains(&format!(
            "dhcp-host={},{},[{expected}],web6",
            nic.mac,
            nic.ip.unwrap()
        )),
        "{conf}"
    );
    let leases = e.network_leases("six").await.unwrap();
    assert!(
        leases
            .iter()
            .any(|l| l.ip == std::net::IpAddr::V6(expected) && l.kind == "reserved"),
        "{leases:?}"
    );
    // A DHCPv6 lease dnsmasq wrote shows up as the NIC's (kind reserved, with its expiry).
    let lease_file = env._dir.path().join("net/six/leases");
    std::fs::write(
        &lease_file,
        format!("duid 00:01:00:01\n1900000000 7 {expected} web6 00:03:00:01\n"),
    )
    .unwrap();
    let leases = e.network_leases("six").await.unwrap();
    let l6 = leases.iter().find(|l| l.ip.is_ipv6()).unwrap();
    assert_eq!((l6.expires, l6.mac), (1_900_000_000, nic.mac));

    // Removing IPv6 takes the address off the bridge and IPv6 out of the rules.
    let upd = UpdateNetworkRequest {
        ipv6: Some(None),
        ..Default::default()
    };
    let info = e.update_network("six", upd, None, "t").await.unwrap();
    assert_eq!((info.ipv6, info.ipv6_dhcp), (None, None));
    let st = env.host.state();
    assert!(!st.addresses6.contains_key("vb-six"));
    assert!(!nft(&st).contains("ip6 saddr fd00:70::"), "{}", nft(&st));
    assert_eq!(e.list_nics(None, "web6").await.unwrap()[0].ipv6, None);
    // And adding it back (edit) works while the VM runs.
    let upd = UpdateNetworkRequest {
        ipv6: Some(Some("fd00:71::/64".into())),
        ..Default::default()
    };
    let info = e.update_network("six", upd, None, "t").await.unwrap();
    assert_eq!(info.ipv6_gateway, Some("fd00:71::1".parse().unwrap()));
    assert!(nft(&env.host.state()).contains("fd00:71::"));
}

#[tokio::test]
async fn bad_ipv6_input_is_rejected_and_changes_nothing() {
    let env = setup_net().await;
    let e = &env.engine;
    env.host.edit(|st| {
        st.routes6 = vec![vireo_net::Route6Info {
            dst: "2001:db8:5::/48".parse().unwrap(),
            dev: Some("eth0".into()),
            from_ra: false,
        }]
    });
    e.create_network(
        v6_req(
            "iso6",
            NetworkType::Isolated,
            "10.80.0.0/24",
            "fd00:80::/64",
        ),
        "t",
    )
    .await
    .unwrap();
    let conf = std::fs::read_to_string(&env.host.state().dnsmasq["iso6"]).unwrap();
    assert!(
        conf.contains("ra-param=vb-iso6,0,0\n"),
        "isolated: no default route: {conf}"
    );
    assert!(
        !env.host.state().forwarding6,
        "isolated networks need no forwarding"
    );
    let before = env.host.state();
    let nets_before = e.list_networks().await.unwrap();
    let cases: Vec<(&str, CreateNetworkRequest)> = vec![
        (
            "ipv6",
            v6_req("a", NetworkType::Nat, "10.81.0.0/24", "fd00:80::/48"),
        ),
        (
            "ipv6",
            v6_req("a", NetworkType::Nat, "10.81.0.0/24", "2001:db8:5:1::/64"),
        ),
        (
            "ipv6",
            v6_req("a", NetworkType::Nat, "10.81.0.0/24", "fd00:81::/56"),
        ),
        (
            "ipv6",
            v6_req("a", NetworkType::Nat, "10.81.0.0/24", "fe80::/64"),
        ),
        (
            "ipv6",
            v6_req("a", NetworkType::Nat, "10.81.0.0/24", "fd00:81::1/64"),
        ),
        (
            "ipv6",
            v6_req("a", NetworkType::Nat, "10.81.0.0/24", "10.0.0.0/8"),
        ),
        ("ipv6", {
            let mut r = v6_req("a", NetworkType::Bridged, "10.81.0.0/24", "fd00:81::/64");
            r.subnet = None;
            r.uplink = Some("eth0".into());
            r
        }),
        ("ipv6_gateway", {
            let mut r = v6_req("a", NetworkType::Nat, "10.81.0.0/24", "fd00:81::/64");
            r.ipv6_gateway = Some("fd00:82::1".parse().unwrap());
            r
        }),
        ("ipv6_gateway", {
            let mut r = net_req("a", NetworkType::Nat, Some("10.81.0.0/24"));
            r.ipv6_gateway = Some("fd00:82::1".parse().unwrap());
            r
        }),
        ("ipv6_dhcp", {
            let mut r = v6_req("a", NetworkType::Nat, "10.81.0.0/24", "fd00:81::/64");
            r.dhcp = Some(false);
            r.ipv6_dhcp = Some(Ipv6Dhcp::Stateful);
            r
        }),
    ];
    for (want, req) in cases {
        let what = format!("{:?}", req.ipv6);
        assert_eq!(
            invalid_field(e.create_network(req, "t").await),
            want,
            "{what}"
        );
    }
    let upd = UpdateNetworkRequest {
        ipv6_dhcp: Some(Ipv6Dhcp::Stateful),
        ..Default::default()
    };
    assert_eq!(
        invalid_field(e.update_network("default", upd, None, "t").await),
        "ipv6_dhcp"
    );
    // The host learned its IPv6 routes from router advertisements (accept_ra = 1): turning
    // forwarding on would lose them, so a nat network with IPv6 is refused with the reason.
    env.host.edit(|st| {
        st.routes6.push(vireo_net::Route6Info {
            dst: "::/0".parse().unwrap(),
            dev: Some("eth0".into()),
            from_ra: true,
        });
        st.accept_ra_1 = vec!["eth0".into()];
    });
    match e
        .create_network(
            v6_req("n6", NetworkType::Nat, "10.82.0.0/24", "fd00:82::/64"),
            "t",
        )
        .await
    {
        Err(EngineError::Unavailable(m)) => assert!(m.contains("accept_ra=2"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    let after = env.host.state();
    assert_eq!(after.calls, before.calls);
    assert_eq!(after.nft, before.nft);
    assert_eq!(e.list_networks().await.unwrap(), nets_before);
    // With accept_ra = 2 the same request succeeds.
    env.host.edit(|st| st.accept_ra_1.clear());
    e.create_network(
        v6_req("n6", NetworkType::Nat, "10.82.0.0/24", "fd00:82::/64"),
        "t",
    )
    .await
    .unwrap();
    assert!(env.host.state().forwarding6);
}
