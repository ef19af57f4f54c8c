//! NoCloud `network-config`: version 2 (netplan-style) derived from the VM's NICs, or the
//! user's own document validated.
//!
//! Rendering rules (one `ethernets` entry per NIC, in the given order, keyed by the NIC name):
//! - `match: {macaddress: …}` (lower-case MAC); the interface is not renamed;
//! - `dhcp4: true` when the NIC has no static addresses, else `dhcp4: false` and
//!   `addresses: [a.b.c.d/len, …]`;
//! - default gateways as `gateway4` / `gateway6`. netplan calls these deprecated in favour of
//!   `routes: [{to: default, …}]`, but they are what every cloud-init release converts
//!   correctly for its non-netplan renderers (ifupdown, networkd, sysconfig): cloud-init
//!   22.4 (Debian 12) rejects `to: default` and turns `to: ::/0` into `::/64` while
//!   normalising routes twice (found with the cloud-init oracle test);
//! - `nameservers: {addresses: […]}` when DNS servers are given (with or without DHCP).
//!
//! Invariants: NIC names and MACs are unique, MACs are unicast, prefix lengths fit their
//! family, a gateway needs a static address of its family; every text scalar is quoted.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Deserialize;

use crate::yaml::{self, quote, YamlError};
use crate::MAX_SEED_FILE_BYTES;

/// Most NICs one seed describes.
pub const MAX_NICS: usize = 32;
/// Most static addresses or DNS servers per NIC.
pub const MAX_ADDRESSES_PER_NIC: usize = 64;
/// Longest NIC name (Linux interface names are at most 15 bytes).
pub const MAX_NIC_NAME_LEN: usize = 15;

/// An address with its prefix length, e.g. `192.0.2.10/24` or `2001:db8::10/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpPrefix {
    /// Whether `prefix_len` fits the address family (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub fn is_valid(&self) -> bool {
        self.prefix_len <= if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A string that is not `ADDRESS/PREFIX-LENGTH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an address with a prefix length (like 192.0.2.10/24)")]
pub struct IpPrefixParseError {
    pub text: String,
}

impl FromStr for IpPrefix {
    type Err = IpPrefixParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpPrefixParseError { text: s.into() };
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let prefix = IpPrefix {
            addr: addr.parse().map_err(|_| err())?,
            prefix_len: len.parse().map_err(|_| err())?,
        };
        prefix.is_valid().then_some(prefix).ok_or_else(err)
    }
}

/// One guest NIC as the seed describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSeed {
    /// Identifier of the entry in network-config (e.g. the VM's NIC name `net0`): 1–15
    /// characters of `a-z A-Z 0-9 _ . -`.
    pub name: String,
    pub mac: [u8; 6],
    /// Static addresses; empty means DHCPv4.
    pub addresses: Vec<IpPrefix>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub dns: Vec<IpAddr>,
}

/// Why network configuration cannot be rendered or accepted.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{count} NICs given, at most {MAX_NICS} are supported")]
    TooManyNics { count: usize },
    #[error("NIC name {name:?} must be 1 to {MAX_NIC_NAME_LEN} characters of a-z, A-Z, 0-9, '_', '.' and '-'")]
    NicName { name: String },
    #[error("two NICs are named {name:?}")]
    DuplicateName { name: String },
    #[error("NICs {first:?} and {second:?} have the same MAC address {mac}")]
    DuplicateMac {
        first: String,
        second: String,
        mac: String,
    },
    #[error("NIC {nic:?} has multicast MAC address {mac}")]
    MulticastMac { nic: String, mac: String },
    #[error("NIC {nic:?}: address {prefix} has a prefix length too long for its family")]
    PrefixLength { nic: String, prefix: IpPrefix },
    #[error("NIC {nic:?}: {count} {what} given, at most {MAX_ADDRESSES_PER_NIC}")]
    TooManyAddresses {
        nic: String,
        what: &'static str,
        count: usize,
    },
    #[error("NIC {nic:?}: gateway {gateway} needs a static {family} address on the NIC")]
    GatewayWithoutAddress {
        nic: String,
        gateway: IpAddr,
        family: &'static str,
    },
    #[error("network-config is {size} bytes, more than the {MAX_SEED_FILE_BYTES} allowed")]
    TooLarge { size: usize },
    #[error("network-config is not valid")]
    Yaml {
        #[source]
        source: YamlError,
    },
    #[error("network-config must set `version: 1` or `version: 2` (at the top level or under `network:`), found {found}")]
    Version { found: String },
}

/// `52:54:00:12:34:56` form of a MAC address.
pub fn mac_string(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Validates `nics` and renders them as network-config v2; `None` when there are no NICs
/// (cloud-init then falls back to DHCP on the first interface).
pub fn render_network_config(nics: &[NicSeed]) -> Result<Option<String>, NetworkError> {
    validate_nics(nics)?;
    if nics.is_empty() {
        return Ok(None);
    }
    let mut out = String::from("version: 2\nethernets:\n");
    for nic in nics {
        let _ = writeln!(out, "  {}:", quote(&nic.name));
        let _ = writeln!(
            out,
            "    match:\n      macaddress: {}",
            quote(&mac_string(nic.mac))
        );
        if nic.addresses.is_empty() {
            out.push_str("    dhcp4: true\n");
        } else {
            out.push_str("    dhcp4: false\n    addresses:\n");
            for a in &nic.addresses {
                let _ = writeln!(out, "      - {}", quote(&a.to_string()));
            }
        }
        if let Some(g) = nic.gateway4 {
            let _ = writeln!(out, "    gateway4: {}", quote(&g.to_string()));
        }
        if let Some(g) = nic.gateway6 {
            let _ = writeln!(out, "    gateway6: {}", quote(&g.to_string()));
        }
        if !nic.dns.is_empty() {
            out.push_str("    nameservers:\n      addresses:\n");
            for d in &nic.dns {
                let _ = writeln!(out, "        - {}", quote(&d.to_string()));
            }
        }
    }
    Ok(Some(out))
}

fn validate_nics(nics: &[NicSeed]) -> Result<(), NetworkError> {
    if nics.len() > MAX_NICS {
        return Err(NetworkError::TooManyNics { count: nics.len() });
    }
    for (i, nic) in nics.iter().enumerate() {
        let name_ok = (1..=MAX_NIC_NAME_LEN).contains(&nic.name.len())
            && nic
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(NetworkError::NicName {
                name: nic.name.clone(),
            });
        }
        if let Some(other) = nics[..i].iter().find(|o| o.name == nic.name) {
            return Err(NetworkError::DuplicateName {
                name: other.name.clone(),
            });
        }
        if let Some(other) = nics[..i].iter().find(|o| o.mac == nic.mac) {
            return Err(NetworkError::DuplicateMac {
                first: other.name.clone(),
                second: nic.name.clone(),
                mac: mac_string(nic.mac),
            });
        }
        if nic.mac[0] & 1 == 1 {
            return Err(NetworkError::MulticastMac {
                nic: nic.name.clone(),
                mac: mac_string(nic.mac),
            });
        }
        for (what, count) in [
            ("addresses", nic.addresses.len()),
            ("DNS servers", nic.dns.len()),
        ] {
            if count > MAX_ADDRESSES_PER_NIC {
                return Err(NetworkError::TooManyAddresses {
                    nic: nic.name.clone(),
                    what,
                    count,
                });
            }
        }
        if let Some(prefix) = nic.addresses.iter().find(|a| !a.is_valid()) {
            return Err(NetworkError::PrefixLength {
                nic: nic.name.clone(),
                prefix: *prefix,
            });
        }
        let gateways = [
            nic.gateway4.map(IpAddr::V4).map(|g| (g, "IPv4")),
            nic.gateway6.map(IpAddr::V6).map(|g| (g, "IPv6")),
        ];
        for (gateway, family) in gateways.into_iter().flatten() {
            let has_family = nic
                .addresses
                .iter()
                .any(|a| a.addr.is_ipv4() == gateway.is_ipv4());
            if !has_family {
                return Err(NetworkError::GatewayWithoutAddress {
                    nic: nic.name.clone(),
                    gateway,
                    family,
                });
            }
        }
    }
    Ok(())
}

/// The fields of a user's network-config this module checks; everything else is the
/// guest's business (cloud-init validates the rest against its schema).
#[derive(Deserialize)]
struct VersionProbe {
    #[serde(default)]
    version: Option<VersionValue>,
    #[serde(default)]
    network: Option<NestedProbe>,
}

/// `network:` as a mapping with a version, or anything else (then it holds no version).
#[derive(Deserialize)]
#[serde(untagged)]
enum NestedProbe {
    Mapping {
        #[serde(default)]
        version: Option<VersionValue>,
    },
    Other(serde::de::IgnoredAny),
}

/// Any scalar (to report what was found instead of a type error).
#[derive(Deserialize)]
#[serde(untagged)]
enum VersionValue {
    Int(i64),
    Other(serde::de::IgnoredAny),
}

/// Validates a user-supplied network-config: size, one YAML mapping, and `version` 1 or 2
/// either at the top level or under `network:` (both forms are accepted by cloud-init).
pub fn validate_network_config(text: &str) -> Result<(), NetworkError> {
    if text.len() > MAX_SEED_FILE_BYTES {
        return Err(NetworkError::TooLarge { size: text.len() });
    }
    match yaml::expect_mapping_or_empty(text).map_err(|source| NetworkError::Yaml { source })? {
        yaml::TopLevel::Mapping => {}
        _ => {
            return Err(NetworkError::Version {
                found: "an empty document".into(),
            })
        }
    }
    let probe: VersionProbe =
        yaml::from_str(text).map_err(|source| NetworkError::Yaml { source })?;
    let version = probe.version.or(match probe.network {
        Some(NestedProbe::Mapping { version }) => version,
        _ => None,
    });
    match version {
        Some(VersionValue::Int(1 | 2)) => Ok(()),
        Some(VersionValue::Int(v)) => Err(NetworkError::Version {
            found: format!("version {v}"),
        }),
        Some(VersionValue::Other(_)) => Err(NetworkError::Version {
            found: "a version that is not an integer".into(),
        }),
        None => Err(NetworkError::Version {
            found: "no version".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str, last: u8) -> NicSeed {
        NicSeed {
            name: name.into(),
            mac: [0x52, 0x54, 0, 0, 0, last],
            addresses: vec![],
            gateway4: None,
            gateway6: None,
            dns: vec![],
        }
    }

    #[test]
    fn prefixes_parse_and_check_their_family() {
        let p: IpPrefix = "192.0.2.1/24".parse().unwrap();
        assert_eq!(p.to_string(), "192.0.2.1/24");
        assert!("2001:db8::1/128".parse::<IpPrefix>().is_ok());
        for bad in [
            "192.0.2.1",
            "192.0.2.1/33",
            "2001:db8::/129",
            "x/1",
            "1.2.3.4/-1",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn no_nics_means_no_file() {
        assert_eq!(render_network_config(&[]).unwrap(), None);
    }

    #[test]
    fn rejects_inconsistent_nics() {
        let msg = |nics: &[NicSeed]| render_network_config(nics).unwrap_err().to_string();
        assert_eq!(msg(&[nic("a", 1), nic("a", 2)]), "two NICs are named \"a\"");
        assert_eq!(
            msg(&[nic("a", 1), nic("b", 1)]),
            "NICs \"a\" and \"b\" have the same MAC address 52:54:00:00:00:01"
        );
        let mut multicast = nic("m", 1);
        multicast.mac[0] = 0x01;
        assert!(msg(&[multicast]).contains("multicast"));
        assert!(msg(&[nic("way-too-long-name", 1)]).contains("must be 1 to 15"));
        assert!(msg(&[nic("", 1)]).contains("must be 1 to 15"));
        let mut gw = nic("g", 1);
        gw.gateway4 = Some(Ipv4Addr::new(192, 0, 2, 1));
        gw.addresses = vec!["2001:db8::2/64".parse().unwrap()];
        assert_eq!(
            msg(&[gw]),
            "NIC \"g\": gateway 192.0.2.1 needs a static IPv4 address on the NIC"
        );
        let mut bad_prefix = nic("p", 1);
        bad_prefix.addresses = vec![IpPrefix {
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            prefix_len: 40,
        }];
        assert!(msg(&[bad_prefix]).contains("prefix length too long"));
        let many: Vec<NicSeed> = (0..=MAX_NICS as u8)
            .map(|i| nic(&format!("n{i}"), i))
            .collect();
        assert!(msg(&many).contains("at most 32"));
    }

    #[test]
    fn user_network_config_needs_a_known_version() {
        for ok in [
            "version: 2\nethernets: {}\n",
            "network:\n  version: 1\n  config: []\n",
            "network: {version: 2}\n",
        ] {
            assert!(validate_network_config(ok).is_ok(), "{ok}");
        }
        let msg = |text: &str| validate_network_config(text).unwrap_err().to_string();
        assert!(msg("ethernets: {}\n").ends_with("found no version"));
        assert!(msg("version: 3\n").ends_with("found version 3"));
        assert!(msg("version: \"2\"\n").ends_with("found a version that is not an integer"));
        assert!(msg("network: 5\n").ends_with("found no version"));
        assert!(msg("").ends_with("found an empty document"));
        assert_eq!(msg("- a\n"), "network-config is not valid");
        assert_eq!(msg("version: [2\n"), "network-config is not valid");
    }
}
