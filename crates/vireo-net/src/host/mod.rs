//! Host effects behind one trait: links (bridges, taps, veths), addresses, nftables and dnsmasq.
//!
//! [`IpHost`] is the real implementation: `ip` (iproute2) for links and addresses, the
//! TUNSETIFF ioctl for taps, `nft -f -` / `nft -j list` for rules, supervised `dnsmasq`
//! processes. Constructed with a network-namespace name, every effect happens inside that
//! namespace (tests use throwaway namespaces; the daemon uses `None`). [`FakeHost`] keeps the
//! same state in memory for engine tests without root.
//!
//! Invariants: destructive operations (`delete_link`, reconcile removal) only accept
//! Vireo-owned names ([`IfName`]: `vb-`/`vt-` prefixes), so nothing outside Vireo's objects
//! can be removed. Calls are blocking (they spawn short-lived processes); async callers should
//! use `spawn_blocking`.
//!
//! IPv6: addresses go on Vireo bridges only ([`HostNet::set_bridge_ipv6`], `nodad` so dnsmasq
//! can bind at once), and that call also turns off router-advertisement acceptance on the
//! bridge (the host is the router of that segment). [`HostNet::enable_ipv6_forwarding`] is the
//! IPv6 twin of the IPv4 forwarding switch (the namespace-wide `all.forwarding`, which the
//! kernel requires for forwarding); because it makes interfaces with `accept_ra = 1` ignore
//! router advertisements, it refuses while such an interface holds routes learned from them
//! rather than silently cutting the host off (set `accept_ra = 2` there first).

use crate::addr::{IfName, Ipv4Cidr, Mtu, VlanId, BRIDGE_PREFIX, TAP_PREFIX};
use crate::addr6::Ipv6Cidr;
use crate::bridge_vlan::{self, NetlinkSocket, VlanError};
use crate::nft::{NftSnapshot, SnapshotError};
use crate::supervise::{ChildStatus, SuperviseError, Supervisor};
use crate::tap::{self, TapError};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

mod fake;
mod ip;
pub use fake::{FakeHost, FakeState};
pub use ip::{parse_ip_links, IpHost};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid link name {name:?}")]
    LinkName { name: String },
    #[error("run {argv}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{argv} failed ({status}): {stderr}")]
    Command {
        argv: String,
        status: String,
        stderr: String,
    },
    #[error("tap or namespace operation")]
    Tap(#[source] TapError),
    #[error("parse `ip -j link` output")]
    LinkJson(#[source] serde_json::Error),
    #[error("parse nft listing")]
    Snapshot(#[source] SnapshotError),
    #[error("enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
    #[error("{what} (IPv6 sysctl)")]
    Sysctl6 {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "enabling IPv6 forwarding would make {} ignore router advertisements and lose the routes learned from them; set net.ipv6.conf.<interface>.accept_ra=2 there first",
        interfaces.join(", ")
    )]
    Ipv6ForwardingUnsafe { interfaces: Vec<String> },
    #[error("start dnsmasq for network {network}")]
    Dnsmasq {
        network: String,
        #[source]
        source: SuperviseError,
    },
    #[error("bridge VLAN configuration of {link}")]
    Vlan {
        link: String,
        #[source]
        source: VlanError,
    },
    #[error("fake host: {what}")]
    Fake { what: String },
}

/// A link as listed by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    /// `bridge`, `veth`, `tun`, … (`None` for plain devices such as `lo`).
    pub kind: Option<String>,
    pub master: Option<String>,
    pub mtu: u32,
    pub up: bool,
}

/// Every host side effect the network layer needs.
pub trait HostNet: Send + Sync {
    /// Creates bridge `name` with br_netfilter hooks on (see `nft` module semantics).
    fn create_bridge(&self, name: &IfName) -> Result<(), HostError>;
    /// Creates a persistent root-owned tap.
    fn create_tap(&self, name: &IfName) -> Result<(), HostError>;
    /// Creates a veth pair `a` <-> `b` (either may be a non-Vireo name, e.g. an uplink).
    fn create_veth(&self, a: &str, b: &str) -> Result<(), HostError>;
    /// Deletes a Vireo-owned link (a veth deletes its peer too).
    fn delete_link(&self, name: &IfName) -> Result<(), HostError>;
    fn set_master(&self, link: &str, bridge: &IfName) -> Result<(), HostError>;
    fn set_mtu(&self, link: &str, mtu: Mtu) -> Result<(), HostError>;
    fn set_up(&self, link: &str, up: bool) -> Result<(), HostError>;
    /// Adds (or replaces) `addr` with the prefix of `subnet` on `link`.
    fn add_address(&self, link: &str, addr: Ipv4Addr, subnet: Ipv4Cidr) -> Result<(), HostError>;
    /// Moves `link` into the named network namespace.
    fn move_to_netns(&self, link: &str, netns: &str) -> Result<(), HostError>;
    fn list_links(&self) -> Result<Vec<LinkInfo>, HostError>;
    /// Applies a rendered ruleset in one `nft -f -` transaction.
    fn nft_apply(&self, ruleset: &str) -> Result<(), HostError>;
    /// Reads Vireo's tables back (empty snapshot if absent).
    fn nft_snapshot(&self) -> Result<NftSnapshot, HostError>;
    fn enable_ipv4_forwarding(&self) -> Result<(), HostError>;
    /// Turns IPv6 forwarding on (namespace-wide, as for IPv4) unless that would drop routes
    /// learned from router advertisements (see the module docs); no-op when already on.
    fn enable_ipv6_forwarding(&self) -> Result<(), HostError>;
    /// Makes `address` (with its subnet's prefix, `nodad`) the only global IPv6 address of
    /// the Vireo bridge `bridge`, or removes every global one (`None`). With an address the
    /// bridge also stops accepting router advertisements and has IPv6 enabled.
    fn set_bridge_ipv6(
        &self,
        bridge: &IfName,
        address: Option<(Ipv6Addr, Ipv6Cidr)>,
    ) -> Result<(), HostError>;
    /// The IPv6 routes of every table.
    fn list_routes6(&self) -> Result<Vec<Route6Info>, HostError>;
    /// Starts (or restarts with a new config) supervised dnsmasq for `network`.
    fn start_dnsmasq(&self, network: &str, conf_file: &Path) -> Result<(), HostError>;
    /// Stops dnsmasq for `network`; no-op if not running.
    fn stop_dnsmasq(&self, network: &str);
    fn dnsmasq_status(&self, network: &str) -> Option<ChildStatus>;
    /// The IPv4 routes of every table (`None` destination prefix 0 = a default route).
    fn list_routes(&self) -> Result<Vec<RouteInfo>, HostError>;
    /// Whether a Linux bridge accepts `vlan_filtering 1`: creates and deletes the throwaway
    /// bridge `vb-vlanprobe`.
    fn probe_bridge_vlan_filtering(&self) -> Result<bool, HostError>;
    /// Turns `vlan_filtering` on for a Vireo bridge (rtnetlink, see [`crate::bridge_vlan`]).
    fn set_vlan_filtering(&self, bridge: &IfName) -> Result<(), HostError>;
    /// Makes `port` an access port of `vlan` on its vlan-filtering bridge (idempotent).
    fn set_access_vlan(&self, port: &IfName, vlan: VlanId) -> Result<(), HostError>;
}

/// An IPv4 route as listed by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination; `0.0.0.0/0` for default routes.
    pub dst: Ipv4Cidr,
    /// Output interface, when the route names one.
    pub dev: Option<String>,
}

/// An IPv6 route as listed by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6Info {
    /// Destination; `::/0` for default routes.
    pub dst: Ipv6Cidr,
    pub dev: Option<String>,
    /// Learned from a router advertisement (`proto ra`).
    pub from_ra: bool,
}

#[derive(Deserialize)]
struct IpRoute6 {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
}

/// Parses `ip -j -6 route show table all` output (pure). Host routes parse as /128;
/// unparsable entries are skipped.
pub fn parse_ip_routes6(json: &str) -> Result<Vec<Route6Info>, serde_json::Error> {
    // `ip` prints nothing at all where the kernel has no IPv6.
    if json.trim().is_empty() {
        return Ok(vec![]);
    }
    let routes: Vec<IpRoute6> = serde_json::from_str(json)?;
    Ok(routes
        .into_iter()
        .filter_map(|r| {
            let dst = if r.dst == "default" {
                Ipv6Cidr::new(Ipv6Addr::UNSPECIFIED, 0).ok()?
            } else if let Some((a, p)) = r.dst.split_once('/') {
                Ipv6Cidr::containing(a.parse().ok()?, p.parse().ok()?).ok()?
            } else {
                Ipv6Cidr::new(r.dst.parse().ok()?, 128).ok()?
            };
            Some(Route6Info {
                dst,
                dev: r.dev,
                from_ra: r.protocol.as_deref() == Some("ra"),
            })
        })
        .collect())
}

/// Interfaces that would lose routes if IPv6 forwarding went on (pure): those holding a
/// route learned from a router advertisement whose `accept_ra` (as `accept_ra_of` reads it)
/// is not 2 ("accept even when forwarding"). Sorted, without duplicates.
pub fn ra_forwarding_conflicts(
    routes: &[Route6Info],
    accept_ra_of: &dyn Fn(&str) -> Option<u8>,
) -> Vec<String> {
    let devs: BTreeSet<&str> = routes
        .iter()
        .filter(|r| r.from_ra)
        .filter_map(|r| r.dev.as_deref())
        .collect();
    devs.into_iter()
        .filter(|d| accept_ra_of(d) != Some(2))
        .map(str::to_owned)
        .collect()
}

#[derive(Deserialize)]
struct IpAddrList {
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

/// The global IPv6 addresses in `ip -j -6 addr show dev X` output (pure; empty output, which
/// `ip` prints for a link without IPv6, is no addresses).
pub fn parse_global_ipv6(json: &str) -> Result<Vec<(Ipv6Addr, u8)>, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(vec![]);
    }
    let links: Vec<IpAddrList> = serde_json::from_str(json)?;
    Ok(links
        .into_iter()
        .flat_map(|l| l.addr_info)
        .filter(|a| a.family == "inet6" && a.scope == "global")
        .filter_map(|a| Some((a.local.parse().ok()?, a.prefixlen)))
        .collect())
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
}

/// Parses `ip -j -4 route show table all` output (pure). Entries whose destination is not an
/// IPv4 network (`broadcast`/`local` host routes parse as /32) are kept; unparsable ones are
/// skipped.
pub fn parse_ip_routes(json: &str) -> Result<Vec<RouteInfo>, serde_json::Error> {
    let routes: Vec<IpRoute> = serde_json::from_str(json)?;
    Ok(routes
        .into_iter()
        .filter_map(|r| {
            let dst = if r.dst == "default" {
                Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).ok()?
            } else if let Some((a, p)) = r.dst.split_once('/') {
                Ipv4Cidr::containing(a.parse().ok()?, p.parse().ok()?).ok()?
            } else {
                Ipv4Cidr::new(r.dst.parse().ok()?, 32).ok()?
            };
            Some(RouteInfo { dst, dev: r.dev })
        })
        .collect())
}

/// Any link name we pass to `ip`: 1..=15 bytes of `[A-Za-z0-9._-]`, not starting with '-'.
fn check_link(name: &str) -> Result<(), HostError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(HostError::LinkName {
            name: name.chars().take(64).collect(),
        })
    }
}

/// A bridge Vireo wants to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredBridge {
    pub name: IfName,
    pub mtu: Option<Mtu>,
    /// Gateway address and subnet (`None` for bridges without a host address).
    pub address: Option<(Ipv4Addr, Ipv4Cidr)>,
    /// The bridge's IPv6 address and /64. `None` on a bridge with an IPv4 `address`: no global
    /// IPv6 address on the bridge (stale ones are removed); `None` on a bridge without any
    /// address (bridged networks): its IPv6 addresses are left alone.
    pub address6: Option<(Ipv6Addr, Ipv6Cidr)>,
}

/// A tap Vireo wants to exist, attached to `bridge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTap {
    pub name: IfName,
    pub bridge: IfName,
    pub mtu: Option<Mtu>,
    pub up: bool,
}

/// What a reconcile pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub created: Vec<String>,
    pub removed: Vec<String>,
}

/// Lists the host's Vireo-owned links (`vb-`/`vt-` names that pass [`IfName`] validation).
pub fn owned_links(host: &dyn HostNet) -> Result<Vec<LinkInfo>, HostError> {
    Ok(host
        .list_links()?
        .into_iter()
        .filter(|l| IfName::owned(&l.name).is_ok())
        .collect())
}

/// Makes the host's Vireo links match `bridges` + `taps`: creates missing ones, (re)applies
/// master/MTU/address/up state, and deletes Vireo-owned links not in the desired set. Links
/// without a Vireo prefix are never touched.
pub fn reconcile_links(
    host: &dyn HostNet,
    bridges: &[DesiredBridge],
    taps: &[DesiredTap],
) -> Result<ReconcileReport, HostError> {
    reconcile_links_keeping(host, bridges, taps, &[])
}

/// [`reconcile_links`] that also leaves the Vireo-named links in `keep` alone (objects another
/// back-end manages, such as Open vSwitch bridges and their ports).
pub fn reconcile_links_keeping(
    host: &dyn HostNet,
    bridges: &[DesiredBridge],
    taps: &[DesiredTap],
    keep: &[&str],
) -> Result<ReconcileReport, HostError> {
    let existing: BTreeSet<String> = owned_links(host)?.into_iter().map(|l| l.name).collect();
    let desired: BTreeSet<&str> = bridges
        .iter()
        .map(|b| b.name.as_str())
        .chain(taps.iter().map(|t| t.name.as_str()))
        .collect();
    let mut report = ReconcileReport::default();
    // Taps first, so removing a bridge never races with its ports.
    let mut stale: Vec<&String> = existing
        .iter()
        .filter(|n| !desired.contains(n.as_str()) && !keep.contains(&n.as_str()))
        .collect();
    stale.sort_by_key(|n| !n.starts_with(TAP_PREFIX));
    for name in stale {
        let ifname = IfName::owned(name).map_err(|_| HostError::LinkName { name: name.clone() })?;
        host.delete_link(&ifname)?;
        report.removed.push(name.clone());
    }
    for b in bridges {
        if !existing.contains(b.name.as_str()) {
            host.create_bridge(&b.name)?;
            report.created.push(b.name.to_string());
        }
        if let Some(mtu) = b.mtu {
            host.set_mtu(b.name.as_str(), mtu)?;
        }
        if let Some((addr, subnet)) = b.address {
            host.add_address(b.name.as_str(), addr, subnet)?;
        }
        host.set_up(b.name.as_str(), true)?;
        // Only bridges Vireo addresses itself: a bridge over a host uplink (bridged networks)
        // may carry addresses the host autoconfigured from the outside network.
        if b.address.is_some() || b.address6.is_some() {
            host.set_bridge_ipv6(&b.name, b.address6)?;
        }
    }
    for t in taps {
        if !existing.contains(t.name.as_str()) {
            host.create_tap(&t.name)?;
            report.created.push(t.name.to_string());
        }
        host.set_master(t.name.as_str(), &t.bridge)?;
        if let Some(mtu) = t.mtu {
            host.set_mtu(t.name.as_str(), mtu)?;
        }
        host.set_up(t.name.as_str(), t.up)?;
    }
    debug_assert!(report
        .created
        .iter()
        .chain(&report.removed)
        .all(|n| n.starts_with(BRIDGE_PREFIX) || n.starts_with(TAP_PREFIX)));
    Ok(report)
}

/// Could not bring Vireo's nftables tables to the desired state.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("render ruleset")]
    Render(#[source] crate::nft::RulesetError),
    #[error("apply or read back ruleset")]
    Host(#[source] HostError),
}

/// Outcome of [`reconcile_rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesReport {
    /// What the kernel holds after this call; keep it as `last` for the next pass.
    pub snapshot: NftSnapshot,
    /// Whether the ruleset was (re)applied: no previous snapshot, or drift was found.
    pub applied: bool,
}

/// Ensures Vireo's tables hold `ruleset`. With `last` (the snapshot taken after the previous
/// apply of the same ruleset) it first reads the tables back and re-applies only if they
/// drifted; without it, it applies unconditionally. Applying is one atomic transaction.
pub fn reconcile_rules(
    host: &dyn HostNet,
    ruleset: &crate::nft::Ruleset,
    last: Option<&NftSnapshot>,
) -> Result<RulesReport, RulesError> {
    let text = crate::nft::render_ruleset(ruleset).map_err(RulesError::Render)?;
    if let Some(last) = last {
        let current = host.nft_snapshot().map_err(RulesError::Host)?;
        if &current == last {
            return Ok(RulesReport {
                snapshot: current,
                applied: false,
            });
        }
        tracing::warn!("nftables drift in Vireo's tables; re-applying");
    }
    host.nft_apply(&text).map_err(RulesError::Host)?;
    let snapshot = host.nft_snapshot().map_err(RulesError::Host)?;
    Ok(RulesReport {
        snapshot,
        applied: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_rules_reapplies_only_on_drift() {
        let host = FakeHost::new();
        let rs = crate::nft::Ruleset::default();
        let first = reconcile_rules(&host, &rs, None).unwrap();
        assert!(first.applied);
        let second = reconcile_rules(&host, &rs, Some(&first.snapshot)).unwrap();
        assert!(!second.applied);
        // Someone edits the tables behind Vireo's back.
        host.nft_apply("table inet vireo {}").unwrap();
        let third = reconcile_rules(&host, &rs, Some(&first.snapshot)).unwrap();
        assert!(third.applied);
        assert_eq!(third.snapshot, first.snapshot);
        assert_eq!(
            host.state()
                .calls
                .iter()
                .filter(|c| *c == "nft_apply")
                .count(),
            3
        );
    }

    #[test]
    fn parses_ip_route_json() {
        let json = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0"},
            {"dst":"10.1.2.0/24","dev":"vb-x","prefsrc":"10.1.2.1"},
            {"type":"local","dst":"127.0.0.1","table":"local","dev":"lo"},
            {"dst":"fe80::/64"}]"#;
        let routes = parse_ip_routes(json).unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].dst.prefix(), 0);
        assert_eq!(routes[0].dev.as_deref(), Some("eth0"));
        assert_eq!(routes[1].dst, "10.1.2.0/24".parse().unwrap());
        assert_eq!(routes[2].dst, "127.0.0.1/32".parse().unwrap());
        assert!(parse_ip_routes("[").is_err());
    }

    #[test]
    fn parses_ipv6_routes_and_addresses() {
        let json = r#"[{"dst":"default","gateway":"fe80::1","dev":"eth0","protocol":"ra"},
            {"dst":"2001:db8:1::/64","dev":"eth0","protocol":"ra"},
            {"dst":"fd00:5::/64","dev":"vb-x","protocol":"kernel"},
            {"type":"local","dst":"fd00:5::1","table":"local","dev":"vb-x","protocol":"kernel"},
            {"dst":"fe80::/64","dev":"wlan0","protocol":"ra"},
            {"dst":"10.0.0.0/8"}]"#;
        let routes = parse_ip_routes6(json).unwrap();
        assert_eq!(routes.len(), 5);
        assert_eq!(routes[0].dst.prefix(), 0);
        assert!(routes[0].from_ra && !routes[2].from_ra);
        assert_eq!(routes[3].dst, "fd00:5::1/128".parse().unwrap());
        let accept_ra = |d: &str| match d {
            "eth0" => Some(1),
            "wlan0" => Some(2),
            _ => None,
        };
        assert_eq!(ra_forwarding_conflicts(&routes, &accept_ra), vec!["eth0"]);
        assert!(ra_forwarding_conflicts(&routes[2..4], &accept_ra).is_empty());
        assert!(parse_ip_routes6("").unwrap().is_empty());
        let addrs = r#"[{"ifindex":4,"ifname":"vb-x","addr_info":[
            {"family":"inet6","local":"fd00:5::1","prefixlen":64,"scope":"global"},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;
        assert_eq!(
            parse_global_ipv6(addrs).unwrap(),
            vec![("fd00:5::1".parse().unwrap(), 64)]
        );
        assert!(parse_global_ipv6("[]").unwrap().is_empty());
        assert!(parse_global_ipv6("\n").unwrap().is_empty());
        assert!(parse_global_ipv6("[{").is_err());
    }

    #[test]
    fn parses_ip_link_json() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536},
            {"ifindex":5,"ifname":"vt-a","flags":["BROADCAST","MULTICAST"],"mtu":1500,"master":"vb-x",
             "linkinfo":{"info_kind":"tun","info_data":{"type":"tap"}}}]"#;
        let links = parse_ip_links(json).unwrap();
        assert_eq!(links.len(), 2);
        assert!(links[0].up && links[0].kind.is_none());
        assert_eq!(links[1].kind.as_deref(), Some("tun"));
        assert_eq!(links[1].master.as_deref(), Some("vb-x"));
        assert!(parse_ip_links("{").is_err());
    }

    #[test]
    fn reconcile_creates_missing_and_removes_only_own_leftovers() {
        let host = FakeHost::new();
        host.create_veth("eth0", "uplink-peer").unwrap();
        host.create_bridge(&IfName::bridge("vb-old").unwrap())
            .unwrap();
        host.create_tap(&IfName::tap("vt-old").unwrap()).unwrap();
        host.create_bridge(&IfName::bridge("vb-keep").unwrap())
            .unwrap();
        let subnet: Ipv4Cidr = "10.0.0.0/24".parse().unwrap();
        let bridges = [DesiredBridge {
            name: IfName::bridge("vb-keep").unwrap(),
            mtu: Some(Mtu::new(1400).unwrap()),
            address: Some((Ipv4Addr::new(10, 0, 0, 1), subnet)),
            address6: Some(("fd00:1::1".parse().unwrap(), "fd00:1::/64".parse().unwrap())),
        }];
        let taps = [DesiredTap {
            name: IfName::tap("vt-new").unwrap(),
            bridge: IfName::bridge("vb-keep").unwrap(),
            mtu: None,
            up: true,
        }];
        let report = reconcile_links(&host, &bridges, &taps).unwrap();
        assert_eq!(report.created, vec!["vt-new".to_owned()]);
        assert_eq!(
            report.removed,
            vec!["vt-old".to_owned(), "vb-old".to_owned()]
        );
        let st = host.state();
        let names: Vec<&str> = st.links.keys().map(String::as_str).collect();
        assert_eq!(names, ["eth0", "uplink-peer", "vb-keep", "vt-new"]);
        assert_eq!(st.links["vt-new"].master.as_deref(), Some("vb-keep"));
        assert!(st.links["vt-new"].up && st.links["vb-keep"].up);
        assert_eq!(st.links["vb-keep"].mtu, 1400);
        assert_eq!(
            st.addresses["vb-keep"],
            vec![(Ipv4Addr::new(10, 0, 0, 1), 24)]
        );
        assert_eq!(
            st.addresses6["vb-keep"],
            vec![("fd00:1::1".parse::<Ipv6Addr>().unwrap(), 64)]
        );
        // A second pass changes nothing structurally.
        let again = reconcile_links(&host, &bridges, &taps).unwrap();
        assert_eq!(again, ReconcileReport::default());
        // A bridge without addresses (a bridged network's) keeps the IPv6 address the host
        // autoconfigured on it; an addressed one loses a stale address.
        let net6: Ipv6Cidr = "2001:db8:1::/64".parse().unwrap();
        let slaac = Some(("2001:db8:1::5054:ff:fe00:1".parse().unwrap(), net6));
        let mut bridged = bridges[0].clone();
        (bridged.address, bridged.address6) = (None, None);
        host.set_bridge_ipv6(&bridged.name, slaac).unwrap();
        reconcile_links(&host, &[bridged], &taps).unwrap();
        assert_eq!(host.state().addresses6["vb-keep"].len(), 1);
        let mut no_v6 = bridges[0].clone();
        no_v6.address6 = None;
        reconcile_links(&host, &[no_v6], &taps).unwrap();
        assert!(!host.state().addresses6.contains_key("vb-keep"));
    }

    #[test]
    fn link_names_are_checked_before_reaching_ip() {
        let host = IpHost::new(Some("does-not-matter".into()));
        assert!(matches!(
            host.set_up("-rf", true),
            Err(HostError::LinkName { .. })
        ));
        assert!(matches!(
            host.set_up("a b", true),
            Err(HostError::LinkName { .. })
        ));
    }
}
