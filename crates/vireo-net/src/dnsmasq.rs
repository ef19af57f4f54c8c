//! dnsmasq per managed network: config rendering and lease-file parsing (both pure).
//!
//! Invariants: the rendered config binds only to the network's bridge (`bind-interfaces`,
//! `interface=`), never reads `/etc/hosts`, and reads no upstream `resolv.conf` when the
//! network is isolated or explicit upstream servers are given. Every value printed comes from
//! a validated type or is checked to hold no newline/comma, so input cannot add directives.
//! Lease parsing is bounded (line count and length) and skips malformed lines.
//!
//! IPv6 (optional per network): dnsmasq sends router advertisements (`enable-ra`) for the
//! network's /64 from the bridge. `Stateless` = SLAAC addresses plus stateless DHCPv6 for DNS
//! settings (`ra-stateless`); `RaOnly` = SLAAC and nothing else; `Stateful` = DHCPv6
//! addresses only (M flag, no SLAAC), from reservations alone (`static`): every VM NIC gets
//! the EUI-64 address of its MAC, the same address SLAAC would form, so the firewall and
//! anti-spoofing know it in every mode. dnsmasq advertises a router lifetime of zero unless
//! IPv6 forwarding is on; networks without a router (`advertise_router = false`) pin it to
//! zero with `ra-param` because forwarding may be on for other networks.

use crate::addr::{HostName, IfName, Ipv4Cidr, MacAddr};
use crate::addr6::{mac_of_eui64, Ipv6Cidr};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsmasqError {
    #[error("DHCP range {first}-{last} is not inside {subnet} or is reversed")]
    Range {
        first: Ipv4Addr,
        last: Ipv4Addr,
        subnet: Ipv4Cidr,
    },
    #[error("gateway {gateway} is not a host address of {subnet}")]
    Gateway { gateway: Ipv4Addr, subnet: Ipv4Cidr },
    #[error("reservation {mac} -> {ip} is outside {subnet}")]
    Reservation {
        mac: MacAddr,
        ip: Ipv4Addr,
        subnet: Ipv4Cidr,
    },
    #[error("MAC {mac} is reserved twice")]
    DuplicateMac { mac: MacAddr },
    #[error("address {ip} is reserved twice")]
    DuplicateIp { ip: Ipv4Addr },
    #[error("path {path:?} must be absolute and free of newlines and commas")]
    Path { path: PathBuf },
    #[error("invalid user name {user:?}")]
    User { user: String },
    #[error("lease time must be at least 120 seconds, got {secs}")]
    LeaseTime { secs: u32 },
    #[error("IPv6 settings: {source}")]
    Ipv6 {
        #[source]
        source: crate::addr6::Addr6Error,
    },
    #[error("IPv6 address {ip} of reservation {mac} is outside {subnet} or is the bridge's")]
    Reservation6 {
        mac: MacAddr,
        ip: Ipv6Addr,
        subnet: Ipv6Cidr,
    },
    #[error("IPv6 address {ip} of reservation {mac} needs IPv6 on the network")]
    NoIpv6 { mac: MacAddr, ip: Ipv6Addr },
    #[error("stateful DHCPv6 needs DHCP on the network")]
    StatefulWithoutDhcp,
}

/// A static DHCP reservation (also published in DNS when it has a host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<HostName>,
    /// The NIC's IPv6 address (its EUI-64 address on networks with IPv6): published in DNS
    /// with the name, and handed out by DHCPv6 in [`Ipv6Mode::Stateful`].
    pub ip6: Option<Ipv6Addr>,
}

/// How guests get IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// SLAAC, and nothing from DHCPv6 (`ra-only`).
    RaOnly,
    /// SLAAC plus stateless DHCPv6 for DNS settings (`ra-stateless`).
    Stateless,
    /// DHCPv6 addresses from reservations only (`static`; RA with the M flag, no SLAAC).
    Stateful,
}

/// A network's IPv6 side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Settings {
    /// A /64 (SLAAC needs 64 host bits).
    pub subnet: Ipv6Cidr,
    /// The bridge's address: DNS server; RAs come from the bridge's link-local address.
    pub address: Ipv6Addr,
    pub mode: Ipv6Mode,
}

/// Upstream DNS behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Answer only local names (isolated networks): `no-resolv`, no servers.
    None,
    /// Use the host's resolv.conf.
    HostResolvConf,
    /// Use these servers and ignore resolv.conf.
    Servers(Vec<Ipv4Addr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqConfig {
    pub network: HostName,
    pub bridge: IfName,
    pub subnet: Ipv4Cidr,
    /// The bridge's address: DHCP server, DNS server and (if `advertise_router`) gateway.
    pub gateway: Ipv4Addr,
    /// Serve DHCPv4 at all; `false` leaves dnsmasq for DNS and IPv6 router advertisements.
    pub dhcp4: bool,
    /// DHCP pool; `None` disables dynamic DHCP (reservations still answered).
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub lease_secs: u32,
    /// `false` on isolated networks: clients get no default route.
    pub advertise_router: bool,
    /// DNS domain for VM names (`web1.<domain>`), answered locally.
    pub domain: HostName,
    pub upstream: Upstream,
    pub reservations: Vec<Reservation>,
    /// IPv6 router advertisements and DHCPv6; `None` = IPv4 only.
    pub ipv6: Option<Ipv6Settings>,
    pub lease_file: PathBuf,
    pub pid_file: PathBuf,
    /// User dnsmasq drops to after binding (it must be able to write `lease_file`).
    pub user: String,
}

impl DnsmasqConfig {
    /// Checks the invariants rendering relies on.
    pub fn validate(&self) -> Result<(), DnsmasqError> {
        let s = self.subnet;
        let is_host = |ip: Ipv4Addr| s.contains(ip) && ip != s.network() && ip != s.broadcast();
        if !is_host(self.gateway) {
            return Err(DnsmasqError::Gateway {
                gateway: self.gateway,
                subnet: s,
            });
        }
        if let Some((first, last)) = self.dhcp_range {
            if !is_host(first) || !is_host(last) || u32::from(first) > u32::from(last) {
                return Err(DnsmasqError::Range {
                    first,
                    last,
                    subnet: s,
                });
            }
        }
        if self.lease_secs < 120 {
            return Err(DnsmasqError::LeaseTime {
                secs: self.lease_secs,
            });
        }
        for (i, r) in self.reservations.iter().enumerate() {
            if !is_host(r.ip) || r.ip == self.gateway {
                return Err(DnsmasqError::Reservation {
                    mac: r.mac,
                    ip: r.ip,
                    subnet: s,
                });
            }
            let earlier = &self.reservations[..i];
            if earlier.iter().any(|e| e.mac == r.mac) {
                return Err(DnsmasqError::DuplicateMac { mac: r.mac });
            }
            if earlier.iter().any(|e| e.ip == r.ip) {
                return Err(DnsmasqError::DuplicateIp { ip: r.ip });
            }
            if let Some(ip6) = r.ip6 {
                let Some(v6) = &self.ipv6 else {
                    return Err(DnsmasqError::NoIpv6 {
                        mac: r.mac,
                        ip: ip6,
                    });
                };
                if !v6.subnet.contains(ip6) || ip6 == v6.address || ip6 == v6.subnet.network() {
                    return Err(DnsmasqError::Reservation6 {
                        mac: r.mac,
                        ip: ip6,
                        subnet: v6.subnet,
                    });
                }
                if earlier.iter().any(|e| e.ip6 == Some(ip6)) {
                    return Err(DnsmasqError::DuplicateIp { ip: r.ip });
                }
            }
        }
        if let Some(v6) = &self.ipv6 {
            let e = |source| DnsmasqError::Ipv6 { source };
            v6.subnet.check_managed().map_err(e)?;
            v6.subnet.check_host_address(v6.address).map_err(e)?;
            if v6.mode == Ipv6Mode::Stateful && !self.dhcp4 {
                return Err(DnsmasqError::StatefulWithoutDhcp);
            }
        }
        for p in [&self.lease_file, &self.pid_file] {
            check_path(p)?;
        }
        let user_ok = !self.user.is_empty()
            && self.user.len() <= 32
            && self
                .user
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !user_ok {
            return Err(DnsmasqError::User {
                user: self.user.chars().take(64).collect(),
            });
        }
        Ok(())
    }
}

fn check_path(p: &Path) -> Result<(), DnsmasqError> {
    let text = p.to_string_lossy();
    if p.is_absolute() && !text.contains(['\n', '\r', ',', '\0', ' ']) && text.len() < 4096 {
        Ok(())
    } else {
        Err(DnsmasqError::Path {
            path: p.to_path_buf(),
        })
    }
}

/// Renders the dnsmasq config file (`--conf-file`).
pub fn render_dnsmasq(cfg: &DnsmasqConfig) -> Result<String, DnsmasqError> {
    cfg.validate()?;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "# Generated by Vireo for network {}. Do not edit.",
        cfg.network
    ));
    line(format!("interface={}", cfg.bridge));
    line("bind-interfaces".into());
    line("except-interface=lo".into());
    line(format!("listen-address={}", cfg.gateway));
    if let Some(v6) = &cfg.ipv6 {
        line(format!("listen-address={}", v6.address));
    }
    line(format!("user={}", cfg.user));
    line(format!("pid-file={}", cfg.pid_file.display()));
    line("no-hosts".into());
    line("strict-order".into());
    match &cfg.upstream {
        Upstream::None => line("no-resolv".into()),
        Upstream::HostResolvConf => {}
        Upstream::Servers(servers) => {
            line("no-resolv".into());
            for s in servers {
                line(format!("server={s}"));
            }
        }
    }
    line(format!("domain={}", cfg.domain));
    line(format!("local=/{}/", cfg.domain));
    line("domain-needed".into());
    line("expand-hosts".into());
    line(format!("dhcp-leasefile={}", cfg.lease_file.display()));
    if cfg.dhcp4 {
        line("dhcp-authoritative".into());
        line("dhcp-no-override".into());
        let mask = cfg.subnet.netmask();
        match cfg.dhcp_range {
            Some((first, last)) => line(format!(
                "dhcp-range={first},{last},{mask},{}",
                cfg.lease_secs
            )),
            // Reservations only: a static range answers known MACs and nobody else.
            None => line(format!(
                "dhcp-range={},static,{mask},{}",
                cfg.subnet.network(),
                cfg.lease_secs
            )),
        }
        if cfg.advertise_router {
            line(format!("dhcp-option=option:router,{}", cfg.gateway));
        } else {
            line("dhcp-option=option:router".into());
        }
        line(format!("dhcp-option=option:dns-server,{}", cfg.gateway));
    }
    if let Some(v6) = &cfg.ipv6 {
        line("enable-ra".into());
        let (net, secs) = (v6.subnet.network(), cfg.lease_secs);
        line(match v6.mode {
            Ipv6Mode::RaOnly => format!("dhcp-range={net},ra-only,64,{secs}"),
            Ipv6Mode::Stateless => format!("dhcp-range={net},ra-stateless,64,{secs}"),
            Ipv6Mode::Stateful => format!("dhcp-range={net},static,64,{secs}"),
        });
        if !cfg.advertise_router {
            // Prefix only, no default route via the bridge (default RA interval).
            line(format!("ra-param={},0,0", cfg.bridge));
        }
        if v6.mode != Ipv6Mode::RaOnly {
            line(format!("dhcp-option=option6:dns-server,[{}]", v6.address));
        }
    }
    let stateful = cfg
        .ipv6
        .as_ref()
        .is_some_and(|v6| v6.mode == Ipv6Mode::Stateful);
    for r in &cfg.reservations {
        let v6 = match r.ip6 {
            Some(a) if stateful => format!(",[{a}]"),
            _ => String::new(),
        };
        let record6 = r.ip6.map(|a| format!(",{a}")).unwrap_or_default();
        if cfg.dhcp4 {
            match &r.hostname {
                Some(h) => line(format!("dhcp-host={},{}{v6},{h}", r.mac, r.ip)),
                None => line(format!("dhcp-host={},{}{v6}", r.mac, r.ip)),
            }
        }
        if let Some(h) = &r.hostname {
            line(format!(
                "host-record={h}.{},{h},{}{record6}",
                cfg.domain, r.ip
            ));
        }
    }
    Ok(out)
}

/// One line of a dnsmasq lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Expiry as seconds since the epoch; 0 = infinite.
    pub expires: u64,
    /// The client's MAC; for DHCPv6 leases the MAC their EUI-64 address was formed from.
    pub mac: MacAddr,
    pub ip: IpAddr,
    pub hostname: Option<String>,
    /// DHCPv4 client id, or the DHCPv6 client's DUID.
    pub client_id: Option<String>,
    /// DHCPv6 identity association id (IPv6 leases only).
    pub iaid: Option<u32>,
}

/// At most this many leases are returned (a /16 worth), whatever the file holds.
pub const MAX_LEASES: usize = 65_536;
const MAX_LINE: usize = 1024;

/// Parses a dnsmasq lease file. IPv4 lines are `EXPIRY MAC IP HOSTNAME CLIENT-ID`; after the
/// `duid SERVER-DUID` line come DHCPv6 lines `EXPIRY IAID IPV6 HOSTNAME CLIENT-DUID` (`*` =
/// absent). DHCPv6 leases whose address is not an EUI-64 address (so no MAC is known; Vireo's
/// static ranges never hand those out) are skipped, as are lines that do not parse and lines
/// over 1 KiB.
pub fn parse_leases(text: &str) -> Vec<Lease> {
    let mut v6 = false;
    text.lines()
        .filter(|l| l.len() <= MAX_LINE)
        .filter_map(|l| {
            if l.starts_with("duid ") {
                v6 = true;
                return None;
            }
            if v6 {
                parse_lease6_line(l)
            } else {
                parse_lease_line(l)
            }
        })
        .take(MAX_LEASES)
        .collect()
}

fn opt_field(s: Option<&str>) -> Option<String> {
    s.filter(|v| *v != "*").map(str::to_owned)
}

fn parse_lease_line(line: &str) -> Option<Lease> {
    let mut f = line.split_ascii_whitespace();
    let expires = f.next()?.parse().ok()?;
    let mac = f.next()?.parse().ok()?;
    let ip: Ipv4Addr = f.next()?.parse().ok()?;
    Some(Lease {
        expires,
        mac,
        ip: IpAddr::V4(ip),
        hostname: opt_field(f.next()),
        client_id: opt_field(f.next()),
        iaid: None,
    })
}

fn parse_lease6_line(line: &str) -> Option<Lease> {
    let mut f = line.split_ascii_whitespace();
    let expires = f.next()?.parse().ok()?;
    // Temporary-address associations are written as `T<iaid>`.
    let iaid = f.next()?;
    let iaid: u32 = iaid.strip_prefix('T').unwrap_or(iaid).parse().ok()?;
    let ip: Ipv6Addr = f.next()?.parse().ok()?;
    Some(Lease {
        expires,
        mac: mac_of_eui64(ip)?,
        ip: IpAddr::V6(ip),
        hostname: opt_field(f.next()),
        client_id: opt_field(f.next()),
        iaid: Some(iaid),
    })
}

/// The server DUID [`render_leases`] writes before DHCPv6 leases.
pub const FAKE_SERVER_DUID: &str = "00:03:00:01:0a:76:72:00:00:01";

/// Renders `leases` back in dnsmasq's format (used by fakes and tests): IPv4 leases, then
/// (if any) the `duid` line and the DHCPv6 leases.
pub fn render_leases(leases: &[Lease]) -> String {
    let mut out = String::new();
    let star = |s: &Option<String>| s.clone().unwrap_or_else(|| "*".to_owned());
    for l in leases.iter().filter(|l| l.ip.is_ipv4()) {
        let _ = writeln!(
            out,
            "{} {} {} {} {}",
            l.expires,
            l.mac,
            l.ip,
            star(&l.hostname),
            star(&l.client_id)
        );
    }
    let v6: Vec<&Lease> = leases.iter().filter(|l| l.ip.is_ipv6()).collect();
    if !v6.is_empty() {
        let _ = writeln!(out, "duid {FAKE_SERVER_DUID}");
    }
    for l in v6 {
        let _ = writeln!(
            out,
            "{} {} {} {} {}",
            l.expires,
            l.iaid.unwrap_or(0),
            l.ip,
            star(&l.hostname),
            star(&l.client_id)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_parsing_is_defensive() {
        let text = "1700000000 52:54:00:12:34:56 10.0.0.10 web1 01:52:54:00:12:34:56\n\
                    0 52:54:00:12:34:57 10.0.0.11 * *\n\
                    duid 00:01:00:01:2c:1f:aa:bb\n\
                    garbage line\n\
                    1700000000 zz:54:00:12:34:56 10.0.0.12 x *\n\
                    1700000000 52:54:00:12:34:58 10.0.0.300 x *\n";
        let leases = parse_leases(text);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].hostname.as_deref(), Some("web1"));
        assert_eq!(leases[1].hostname, None);
        assert_eq!(leases[1].expires, 0);
        assert_eq!(parse_leases(&render_leases(&leases)), leases);
        let long = format!("1 52:54:00:12:34:56 10.0.0.1 {} *", "a".repeat(2000));
        assert!(parse_leases(&long).is_empty());
    }

    #[test]
    fn dhcpv6_leases_follow_the_duid_line() {
        let text = "1700000000 52:54:00:12:34:56 10.0.0.10 web1 *\n\
                    duid 00:01:00:01:2c:1f:aa:bb:0a:76:72:00:00:01\n\
                    1700003600 1234 fd00:1::5054:ff:fe12:3456 web1 00:03:00:01:52:54:00:12:34:56\n\
                    1700003600 T77 fd00:1::5054:ff:fe12:3457 * *\n\
                    1700003600 99 fd00:1::1234 x 00:01\n\
                    1700003600 nope fd00:1::5054:ff:fe12:3458 x *\n\
                    1700003600 5 10.0.0.3 x *\n";
        let leases = parse_leases(text);
        assert_eq!(leases.len(), 3, "{leases:?}");
        assert_eq!(
            leases[1].ip,
            "fd00:1::5054:ff:fe12:3456".parse::<IpAddr>().unwrap()
        );
        assert_eq!(leases[1].mac, "52:54:00:12:34:56".parse().unwrap());
        assert_eq!(leases[1].iaid, Some(1234));
        assert_eq!(leases[2].iaid, Some(77));
        assert_eq!(leases[2].hostname, None);
        assert_eq!(parse_leases(&render_leases(&leases)), leases);
    }

    #[test]
    fn config_validation() {
        let mut cfg = crate::dnsmasq::tests_support::sample();
        assert_eq!(cfg.validate(), Ok(()));
        cfg.dhcp_range = Some(("10.0.0.200".parse().unwrap(), "10.0.0.100".parse().unwrap()));
        assert!(matches!(cfg.validate(), Err(DnsmasqError::Range { .. })));
        cfg = tests_support::sample();
        cfg.gateway = "10.0.0.255".parse().unwrap();
        assert!(matches!(cfg.validate(), Err(DnsmasqError::Gateway { .. })));
        cfg = tests_support::sample();
        cfg.reservations.push(cfg.reservations[0].clone());
        assert!(matches!(
            cfg.validate(),
            Err(DnsmasqError::DuplicateMac { .. })
        ));
        cfg = tests_support::sample();
        cfg.lease_file = PathBuf::from("/tmp/x\ndhcp-script=/bin/sh");
        assert!(matches!(cfg.validate(), Err(DnsmasqError::Path { .. })));
        cfg = tests_support::sample();
        cfg.user = "nobody\nconf-file=/etc/x".into();
        assert!(cfg.validate().is_err());
    }
}

/// A sample config shared by unit tests and the golden tests.
#[doc(hidden)]
pub mod tests_support {
    use super::*;

    pub fn sample() -> DnsmasqConfig {
        let host = |s: &str| HostName::new(s).expect("valid sample host name");
        let mac = |s: &str| s.parse::<MacAddr>().expect("valid sample MAC");
        DnsmasqConfig {
            network: host("default"),
            bridge: IfName::bridge("vb-default").expect("valid sample bridge"),
            subnet: "10.0.0.0/24".parse().expect("valid sample subnet"),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            dhcp4: true,
            dhcp_range: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199))),
            lease_secs: 3600,
            advertise_router: true,
            domain: host("vireo"),
            upstream: Upstream::HostResolvConf,
            reservations: vec![
                Reservation {
                    mac: mac("52:54:00:00:00:0a"),
                    ip: Ipv4Addr::new(10, 0, 0, 10),
                    hostname: Some(host("web1")),
                    ip6: None,
                },
                Reservation {
                    mac: mac("52:54:00:00:00:0b"),
                    ip: Ipv4Addr::new(10, 0, 0, 11),
                    hostname: None,
                    ip6: None,
                },
            ],
            ipv6: None,
            lease_file: PathBuf::from("/var/lib/vireo/net/default/leases"),
            pid_file: PathBuf::from("/run/vireo/net/default/dnsmasq.pid"),
            user: "nobody".into(),
        }
    }
}
