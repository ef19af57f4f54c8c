//! dnsmasq per managed network: config rendering and lease-file parsing (both pure).
//!
//! Invariants: the rendered config binds only to the network's bridge (`bind-interfaces`,
//! `interface=`), never reads `/etc/hosts`, and reads no upstream `resolv.conf` when the
//! network is isolated or explicit upstream servers are given. Every value printed comes from
//! a validated type or is checked to hold no newline/comma, so input cannot add directives.
//! Lease parsing is bounded (line count and length) and skips malformed lines.

use crate::addr::{HostName, IfName, Ipv4Cidr, MacAddr};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
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
}

/// A static DHCP reservation (also published in DNS when it has a host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<HostName>,
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
    /// DHCP pool; `None` disables dynamic DHCP (reservations still answered).
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub lease_secs: u32,
    /// `false` on isolated networks: clients get no default route.
    pub advertise_router: bool,
    /// DNS domain for VM names (`web1.<domain>`), answered locally.
    pub domain: HostName,
    pub upstream: Upstream,
    pub reservations: Vec<Reservation>,
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
    for r in &cfg.reservations {
        match &r.hostname {
            Some(h) => {
                line(format!("dhcp-host={},{},{h}", r.mac, r.ip));
                line(format!("host-record={h}.{},{h},{}", cfg.domain, r.ip));
            }
            None => line(format!("dhcp-host={},{}", r.mac, r.ip)),
        }
    }
    Ok(out)
}

/// One line of a dnsmasq lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Expiry as seconds since the epoch; 0 = infinite.
    pub expires: u64,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    pub client_id: Option<String>,
}

/// At most this many leases are returned (a /16 worth), whatever the file holds.
pub const MAX_LEASES: usize = 65_536;
const MAX_LINE: usize = 1024;

/// Parses a dnsmasq lease file (`EXPIRY MAC IP HOSTNAME CLIENT-ID`; `*` = absent). Lines that
/// do not parse (including IPv6 `duid` lines and lines over 1 KiB) are skipped.
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter(|l| l.len() <= MAX_LINE)
        .filter_map(parse_lease_line)
        .take(MAX_LEASES)
        .collect()
}

fn parse_lease_line(line: &str) -> Option<Lease> {
    let mut f = line.split_ascii_whitespace();
    let expires = f.next()?.parse().ok()?;
    let mac = f.next()?.parse().ok()?;
    let ip = f.next()?.parse().ok()?;
    let opt = |s: Option<&str>| s.filter(|v| *v != "*").map(str::to_owned);
    let hostname = opt(f.next());
    let client_id = opt(f.next());
    Some(Lease {
        expires,
        mac,
        ip,
        hostname,
        client_id,
    })
}

/// Renders `leases` back in dnsmasq's format (used by fakes and tests).
pub fn render_leases(leases: &[Lease]) -> String {
    let mut out = String::new();
    for l in leases {
        let _ = writeln!(
            out,
            "{} {} {} {} {}",
            l.expires,
            l.mac,
            l.ip,
            l.hostname.as_deref().unwrap_or("*"),
            l.client_id.as_deref().unwrap_or("*")
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
                },
                Reservation {
                    mac: mac("52:54:00:00:00:0b"),
                    ip: Ipv4Addr::new(10, 0, 0, 11),
                    hostname: None,
                },
            ],
            lease_file: PathBuf::from("/var/lib/vireo/net/default/leases"),
            pid_file: PathBuf::from("/run/vireo/net/default/dnsmasq.pid"),
            user: "nobody".into(),
        }
    }
}
