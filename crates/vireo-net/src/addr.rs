//! Validated network values: IPv4 CIDRs, MAC addresses, VLAN ids, MTUs and Vireo-owned
//! interface names.
//!
//! Invariants: every value of these types is valid by construction (the only constructors
//! parse or check), so renderers can print them into nftables rules, dnsmasq configs and `ip`
//! argv without escaping. In particular an [`IfName`] is 1..=15 bytes of `[A-Za-z0-9-]`,
//! starts with a Vireo prefix, and therefore can never inject syntax into a generated file.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Invalid network input; each variant names what was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("invalid CIDR {input:?}: expected A.B.C.D/N with N in 0..=32")]
    Cidr { input: String },
    #[error("CIDR {input:?} has host bits set (network address is {network})")]
    CidrHostBits { input: String, network: String },
    #[error("invalid MAC address {input:?}: expected six hex octets separated by ':'")]
    Mac { input: String },
    #[error("MAC address {mac} is multicast and cannot be a NIC address")]
    MacMulticast { mac: String },
    #[error("VLAN id {id} out of range 1..=4094")]
    Vlan { id: u32 },
    #[error("MTU {mtu} out of range {min}..={max}")]
    Mtu { mtu: u32, min: u32, max: u32 },
    #[error("invalid interface name {input:?}: need prefix {prefix:?}, at most 15 bytes of [A-Za-z0-9-]")]
    IfName { input: String, prefix: &'static str },
    #[error("subnets {a} and {b} overlap")]
    Overlap { a: Ipv4Cidr, b: Ipv4Cidr },
    #[error("invalid host name {input:?}: need DNS labels of [A-Za-z0-9-], at most 63 bytes each, 253 in all")]
    HostName { input: String },
}

/// An IPv4 network in CIDR notation whose host bits are zero (`10.0.3.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// Builds a CIDR; fails if `prefix > 32` or `addr` has host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, AddrError> {
        let input = format!("{addr}/{prefix}");
        if prefix > 32 {
            return Err(AddrError::Cidr { input });
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        if network != addr {
            return Err(AddrError::CidrHostBits {
                input,
                network: network.to_string(),
            });
        }
        Ok(Self { network, prefix })
    }

    /// The CIDR containing `addr` with `prefix` (host bits cleared); for route tables, where
    /// entries such as `10.0.0.5/24` are legitimate.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Result<Self, AddrError> {
        if prefix > 32 {
            return Err(AddrError::Cidr {
                input: format!("{addr}/{prefix}"),
            });
        }
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// Number of addresses in the network (2^(32-prefix)), as u64 so /0 fits.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `index`-th address of the network, if inside it (0 is the network address).
    pub fn nth(&self, index: u32) -> Option<Ipv4Addr> {
        if u64::from(index) >= self.size() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.network) + index))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    /// Two CIDRs overlap iff one contains the other's network address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrError::Cidr {
            input: s.chars().take(64).collect(),
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        // Reject "+8", "08" and friends: only canonical decimal prefixes.
        if prefix.is_empty()
            || prefix.len() > 2
            || !prefix.bytes().all(|b| b.is_ascii_digit())
            || (prefix.len() == 2 && prefix.starts_with('0'))
        {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Ipv4Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Fails with the first overlapping pair among `subnets`.
pub fn check_no_overlap(subnets: &[Ipv4Cidr]) -> Result<(), AddrError> {
    for (i, a) in subnets.iter().enumerate() {
        if let Some(b) = subnets[i + 1..].iter().find(|b| a.overlaps(b)) {
            return Err(AddrError::Overlap { a: *a, b: *b });
        }
    }
    Ok(())
}

/// A unicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// Fails for multicast addresses (low bit of the first octet), which no NIC may use.
    pub fn new(octets: [u8; 6]) -> Result<Self, AddrError> {
        if octets[0] & 1 == 1 {
            return Err(AddrError::MacMulticast {
                mac: MacAddr(octets).to_string(),
            });
        }
        Ok(Self(octets))
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Locally administered addresses (bit 1 of the first octet) are the ones Vireo generates.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 2 == 2
    }
}

impl FromStr for MacAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrError::Mac {
            input: s.chars().take(64).collect(),
        };
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in octets.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        MacAddr::new(octets)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

/// An 802.1Q VLAN id in 1..=4094 (0 means "untagged" and 4095 is reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

impl VlanId {
    pub fn new(id: u32) -> Result<Self, AddrError> {
        match u16::try_from(id) {
            Ok(v) if (1..=4094).contains(&v) => Ok(Self(v)),
            _ => Err(AddrError::Vlan { id }),
        }
    }

    pub fn get(&self) -> u16 {
        self.0
    }
}

/// A link MTU: at least 576 (the datagram size every IPv4 host must accept; smaller MTUs
/// break guests in practice) and at most 9000 (the usual jumbo-frame limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mtu(u32);

impl Mtu {
    pub const MIN: u32 = 576;
    pub const MAX: u32 = 9000;

    pub fn new(mtu: u32) -> Result<Self, AddrError> {
        if (Self::MIN..=Self::MAX).contains(&mtu) {
            Ok(Self(mtu))
        } else {
            Err(AddrError::Mtu {
                mtu,
                min: Self::MIN,
                max: Self::MAX,
            })
        }
    }

    pub fn get(&self) -> u32 {
        self.0
    }
}

/// Prefix of bridges Vireo creates.
pub const BRIDGE_PREFIX: &str = "vb-";
/// Prefix of tap devices (and veth ends standing in for them) Vireo creates.
pub const TAP_PREFIX: &str = "vt-";

/// A Linux interface name Vireo owns: `vb-…` or `vt-…`, at most 15 bytes (IFNAMSIZ - 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// A bridge name (`vb-` prefix).
    pub fn bridge(name: &str) -> Result<Self, AddrError> {
        Self::with_prefix(name, BRIDGE_PREFIX)
    }

    /// A tap name (`vt-` prefix).
    pub fn tap(name: &str) -> Result<Self, AddrError> {
        Self::with_prefix(name, TAP_PREFIX)
    }

    /// Any Vireo-owned name (either prefix).
    pub fn owned(name: &str) -> Result<Self, AddrError> {
        if name.starts_with(BRIDGE_PREFIX) {
            Self::bridge(name)
        } else {
            Self::tap(name)
        }
    }

    fn with_prefix(name: &str, prefix: &'static str) -> Result<Self, AddrError> {
        let ok = name.len() > prefix.len()
            && name.len() <= 15
            && name.starts_with(prefix)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(AddrError::IfName {
                input: name.chars().take(64).collect(),
                prefix,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with '-' mapped to '_': a valid nftables chain-name suffix. Injective because
    /// names never contain '_'.
    pub fn ident(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS host name (one or more labels), safe to print into dnsmasq configs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub fn new(name: &str) -> Result<Self, AddrError> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.len() <= 253 && name.split('.').all(label_ok) {
            Ok(Self(name.to_ascii_lowercase()))
        } else {
            Err(AddrError::HostName {
                input: name.chars().take(64).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_math() {
        let c: Ipv4Cidr = "10.1.2.0/24".parse().unwrap();
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(c.nth(1), Some(Ipv4Addr::new(10, 1, 2, 1)));
        assert_eq!(c.nth(256), None);
        assert!(c.contains(Ipv4Addr::new(10, 1, 2, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 1, 3, 1)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.size(), 1 << 32);
        assert!(all.overlaps(&c));
    }

    #[test]
    fn cidr_rejects_bad_input() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "10.0.0/8",
            "10.0.0.256/24",
            "",
            "/",
            "10.0.0.0/24/1",
            "a.b.c.d/8",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} accepted");
        }
        assert!(matches!(
            "10.0.0.1/24".parse::<Ipv4Cidr>(),
            Err(AddrError::CidrHostBits { .. })
        ));
        assert_eq!(
            Ipv4Cidr::containing(Ipv4Addr::new(10, 0, 0, 9), 24)
                .unwrap()
                .to_string(),
            "10.0.0.0/24"
        );
    }

    #[test]
    fn overlap_detection() {
        let a: Ipv4Cidr = "10.0.0.0/16".parse().unwrap();
        let b: Ipv4Cidr = "10.0.5.0/24".parse().unwrap();
        let c: Ipv4Cidr = "10.1.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert_eq!(check_no_overlap(&[a, c]), Ok(()));
        assert_eq!(
            check_no_overlap(&[c, a, b]),
            Err(AddrError::Overlap { a, b })
        );
    }

    #[test]
    fn mac_parse() {
        let m: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert!(m.is_locally_administered());
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52-54-00-ab-cd-01",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} accepted");
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(AddrError::MacMulticast { .. })
        ));
    }

    #[test]
    fn vlan_and_mtu_ranges() {
        assert!(VlanId::new(0).is_err());
        assert!(VlanId::new(5000).is_err());
        assert!(VlanId::new(4095).is_err());
        assert!(VlanId::new(70_000).is_err());
        assert_eq!(VlanId::new(1).unwrap().get(), 1);
        assert_eq!(VlanId::new(4094).unwrap().get(), 4094);
        assert!(Mtu::new(575).is_err());
        assert!(Mtu::new(9001).is_err());
        assert_eq!(Mtu::new(1500).unwrap().get(), 1500);
    }

    #[test]
    fn ifnames() {
        assert!(IfName::bridge("vb-default").is_ok());
        assert!(IfName::bridge("vb-").is_err());
        assert!(IfName::bridge("vt-x").is_err());
        assert!(IfName::bridge("vb-0123456789abc").is_err()); // 16 bytes
        assert!(IfName::bridge("vb-0123456789ab").is_ok()); // 15 bytes
        assert!(IfName::tap("vt-a b").is_err());
        assert!(IfName::tap("vt-a\"b").is_err());
        assert!(IfName::tap("vt-a_b").is_err());
        assert_eq!(IfName::tap("vt-web-0").unwrap().ident(), "vt_web_0");
        assert!(IfName::owned("eth0").is_err());
    }

    #[test]
    fn hostnames() {
        assert_eq!(HostName::new("Web1.vireo").unwrap().as_str(), "web1.vireo");
        for bad in [
            "",
            "a..b",
            "-a",
            "a-",
            "a b",
            "a\nb",
            "a,b",
            &"x".repeat(64),
        ] {
            assert!(HostName::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
