//! IPv6 values for managed networks: CIDRs, the checks a network prefix must pass, and the
//! modified EUI-64 interface identifiers (RFC 4291 appendix A) Vireo derives VM addresses from.
//!
//! Invariants: an [`Ipv6Cidr`] has zero host bits and a prefix in 0..=128 (its only
//! constructors check both); [`eui64_address`] is a pure function of prefix and MAC, so the
//! SLAAC (or reserved DHCPv6) address of a VM NIC is known without asking the guest, and two
//! NICs with different MACs never get the same address in one /64.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::addr::MacAddr;

/// Invalid IPv6 input; each variant names what was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Addr6Error {
    #[error("invalid IPv6 CIDR {input:?}: expected ADDRESS/N with N in 0..=128")]
    Cidr { input: String },
    #[error("IPv6 CIDR {input:?} has host bits set (network address is {network})")]
    CidrHostBits { input: String, network: String },
    #[error("IPv6 subnet {cidr} must be a /64 (SLAAC and EUI-64 addresses need 64 host bits)")]
    NotSlash64 { cidr: Ipv6Cidr },
    #[error("IPv6 subnet {cidr} is neither unique local (fc00::/7) nor global unicast (2000::/3)")]
    NotUnicast { cidr: Ipv6Cidr },
    #[error("IPv6 subnets {a} and {b} overlap")]
    Overlap { a: Ipv6Cidr, b: Ipv6Cidr },
    #[error("IPv6 host address {addr} is not usable in {cidr}: {why}")]
    HostAddress {
        addr: Ipv6Addr,
        cidr: Ipv6Cidr,
        why: &'static str,
    },
}

/// An IPv6 network in CIDR notation whose host bits are zero (`fd00:1:2:3::/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Cidr {
    network: Ipv6Addr,
    prefix: u8,
}

fn mask(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl Ipv6Cidr {
    /// Builds a CIDR; fails if `prefix > 128` or `addr` has host bits set.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Result<Self, Addr6Error> {
        let input = format!("{addr}/{prefix}");
        if prefix > 128 {
            return Err(Addr6Error::Cidr { input });
        }
        let network = Ipv6Addr::from(u128::from(addr) & mask(prefix));
        if network != addr {
            return Err(Addr6Error::CidrHostBits {
                input,
                network: network.to_string(),
            });
        }
        Ok(Self { network, prefix })
    }

    /// The CIDR containing `addr` with `prefix` (host bits cleared); for route tables.
    pub fn containing(addr: Ipv6Addr, prefix: u8) -> Result<Self, Addr6Error> {
        if prefix > 128 {
            return Err(Addr6Error::Cidr {
                input: format!("{addr}/{prefix}"),
            });
        }
        Ok(Self {
            network: Ipv6Addr::from(u128::from(addr) & mask(prefix)),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv6Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & mask(self.prefix) == u128::from(self.network)
    }

    /// Two CIDRs overlap iff one contains the other's network address.
    pub fn overlaps(&self, other: &Ipv6Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The address `network + index`, if inside the network.
    pub fn nth(&self, index: u128) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(self.prefix);
        if host_bits < 128 && index >> host_bits != 0 {
            return None;
        }
        Some(Ipv6Addr::from(u128::from(self.network) | index))
    }

    /// Checks what a managed network's IPv6 subnet must be: a /64 (SLAAC needs 64 host bits),
    /// unique local (fc00::/7) or global unicast (2000::/3).
    pub fn check_managed(&self) -> Result<(), Addr6Error> {
        if self.prefix != 64 {
            return Err(Addr6Error::NotSlash64 { cidr: *self });
        }
        let first = self.network.octets()[0];
        let ula = first & 0xfe == 0xfc;
        let global = first & 0xe0 == 0x20;
        if !(ula || global) {
            return Err(Addr6Error::NotUnicast { cidr: *self });
        }
        Ok(())
    }

    /// Checks a host (bridge) address for this network: inside it, not the subnet-router
    /// anycast address (all host bits zero), and not shaped like an EUI-64 identifier
    /// (`…:xxff:fexx:…`), which is where VM addresses come from.
    pub fn check_host_address(&self, addr: Ipv6Addr) -> Result<(), Addr6Error> {
        let bad = |why| Addr6Error::HostAddress {
            addr,
            cidr: *self,
            why,
        };
        if !self.contains(addr) {
            return Err(bad("outside the subnet"));
        }
        if addr == self.network {
            return Err(bad("it is the subnet-router anycast address"));
        }
        let o = addr.octets();
        if self.prefix == 64 && o[11] == 0xff && o[12] == 0xfe {
            return Err(bad(
                "it has the form of an EUI-64 identifier, reserved for VM addresses",
            ));
        }
        Ok(())
    }
}

impl FromStr for Ipv6Cidr {
    type Err = Addr6Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Addr6Error::Cidr {
            input: s.chars().take(64).collect(),
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        // Only canonical decimal prefixes: no sign, no leading zero, at most three digits.
        if prefix.is_empty()
            || prefix.len() > 3
            || !prefix.bytes().all(|b| b.is_ascii_digit())
            || (prefix.len() > 1 && prefix.starts_with('0'))
        {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Ipv6Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl serde::Serialize for Ipv6Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv6Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Fails with the first overlapping pair among `subnets`.
pub fn check_no_overlap6(subnets: &[Ipv6Cidr]) -> Result<(), Addr6Error> {
    for (i, a) in subnets.iter().enumerate() {
        if let Some(b) = subnets[i + 1..].iter().find(|b| a.overlaps(b)) {
            return Err(Addr6Error::Overlap { a: *a, b: *b });
        }
    }
    Ok(())
}

/// The modified EUI-64 interface identifier of `mac`: the MAC split by `ff:fe`, with the
/// universal/local bit flipped (RFC 4291 appendix A).
pub fn eui64_interface_id(mac: MacAddr) -> u64 {
    let m = mac.octets();
    u64::from_be_bytes([m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
}

/// The SLAAC address a guest using EUI-64 identifiers forms for `mac` in the /64 `subnet`
/// (`None` for other prefix lengths).
pub fn eui64_address(subnet: Ipv6Cidr, mac: MacAddr) -> Option<Ipv6Addr> {
    (subnet.prefix() == 64)
        .then(|| Ipv6Addr::from(u128::from(subnet.network()) | u128::from(eui64_interface_id(mac))))
}

/// The link-local address (`fe80::/64`) of `mac` with an EUI-64 identifier.
pub fn eui64_link_local(mac: MacAddr) -> Ipv6Addr {
    Ipv6Addr::from((0xfe80u128 << 112) | u128::from(eui64_interface_id(mac)))
}

/// The MAC an EUI-64 address was formed from, if its identifier has the EUI-64 shape.
pub fn mac_of_eui64(addr: Ipv6Addr) -> Option<MacAddr> {
    let o = addr.octets();
    if o[11] != 0xff || o[12] != 0xfe {
        return None;
    }
    MacAddr::new([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv6Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_math() {
        let n = c("fd00:1:2:3::/64");
        assert_eq!(n.to_string(), "fd00:1:2:3::/64");
        assert!(n.contains("fd00:1:2:3::77".parse().unwrap()));
        assert!(!n.contains("fd00:1:2:4::1".parse().unwrap()));
        assert_eq!(n.nth(1), Some("fd00:1:2:3::1".parse().unwrap()));
        assert_eq!(n.nth(1 << 64), None);
        assert!(c("fd00::/8").overlaps(&n) && n.overlaps(&c("fd00::/8")));
        assert!(!n.overlaps(&c("fd00:1:2:4::/64")));
        assert_eq!(c("::/0").nth(u128::MAX), Some(Ipv6Addr::from(u128::MAX)));
        assert_eq!(
            Ipv6Cidr::containing("2001:db8::1".parse().unwrap(), 32)
                .unwrap()
                .to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "fd00::",
            "fd00::/129",
            "fd00::/064",
            "fd00::/+64",
            "fd00::/-1",
            "fd00::/",
            "/64",
            "10.0.0.0/8",
            "fd00::g/64",
            "",
            "fd00::/64/1",
        ] {
            assert!(bad.parse::<Ipv6Cidr>().is_err(), "{bad} accepted");
        }
        assert!(matches!(
            "fd00::1/64".parse::<Ipv6Cidr>(),
            Err(Addr6Error::CidrHostBits { .. })
        ));
    }

    #[test]
    fn managed_subnets_are_ula_or_global_slash_64() {
        assert_eq!(c("fd00:1:2:3::/64").check_managed(), Ok(()));
        assert_eq!(c("2001:db8:5::/64").check_managed(), Ok(()));
        for bad in ["fd00::/48", "fe80::/64", "ff02::/64", "::/64", "4000::/64"] {
            assert!(c(bad).check_managed().is_err(), "{bad} accepted");
        }
        assert!(matches!(
            c("fd00::/56").check_managed(),
            Err(Addr6Error::NotSlash64 { .. })
        ));
    }

    #[test]
    fn host_addresses() {
        let n = c("fd00:1::/64");
        assert_eq!(n.check_host_address("fd00:1::1".parse().unwrap()), Ok(()));
        for bad in ["fd00:1::", "fd00:2::1", "fd00:1::5054:ff:fe00:a"] {
            assert!(n.check_host_address(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap_list() {
        let (a, b, d) = (c("fd00::/16"), c("fd00:5::/64"), c("fd01::/64"));
        assert_eq!(check_no_overlap6(&[a, d]), Ok(()));
        assert_eq!(
            check_no_overlap6(&[d, a, b]),
            Err(Addr6Error::Overlap { a, b })
        );
    }

    #[test]
    fn eui64_round_trip() {
        // RFC 4291 example shape: 52:54:00:00:00:0a -> 5054:ff:fe00:a.
        let mac: MacAddr = "52:54:00:00:00:0a".parse().unwrap();
        let n = c("fd00:1::/64");
        let a = eui64_address(n, mac).unwrap();
        assert_eq!(a, "fd00:1::5054:ff:fe00:a".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            eui64_link_local(mac),
            "fe80::5054:ff:fe00:a".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(mac_of_eui64(a), Some(mac));
        assert_eq!(mac_of_eui64("fd00:1::1".parse().unwrap()), None);
        assert_eq!(eui64_address(c("fd00::/48"), mac), None);
        let other: MacAddr = "52:54:00:00:00:0b".parse().unwrap();
        assert_ne!(eui64_address(n, other), Some(a));
    }
}
