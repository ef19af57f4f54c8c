//! VM specification: what QEMU is asked to run. The engine stores a [`VmSpec`] per VM and the
//! QEMU backend turns it into an argv (pure function, golden-tested in `vireo-qemu`).
//!
//! Invariants: a spec that passed [`VmSpec::validate`] has vCPUs and memory within
//! [`limits`], unique disk and NIC names, unique MACs, and only absolute paths.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::name::Name;

/// Bounds accepted for VM sizing.
pub mod limits {
    /// q35 without an IOMMU addresses at most 255 CPUs.
    pub const MAX_VCPUS: u32 = 255;
    pub const MIN_MEMORY_MIB: u64 = 32;
    /// 4 TiB.
    pub const MAX_MEMORY_MIB: u64 = 4 << 20;
    pub const MAX_DISKS: usize = 16;
    pub const MAX_NICS: usize = 8;
    pub const MAX_CMDLINE_LEN: usize = 2048;
}

/// Firmware used for disk boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    #[default]
    Bios,
    /// OVMF (UEFI); a per-VM copy of the variable store is kept in the VM directory.
    Uefi,
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BootSource {
    /// Direct kernel boot (QEMU `-kernel/-initrd/-append`).
    Kernel {
        #[schema(value_type = String)]
        kernel: PathBuf,
        #[schema(value_type = Option<String>)]
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Boot from the disk with the lowest boot index through the firmware.
    Disk { firmware: Firmware },
}

/// On-disk format of a disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// A disk attached to the VM as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Device name, also the serial number the guest sees (`/dev/disk/by-id/virtio-NAME`).
    pub name: Name,
    /// Absolute path of the disk file (managed by Vireo, inside the state directory).
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub format: DiskFormat,
    #[serde(default)]
    pub read_only: bool,
    /// Firmware boot order; lowest boots first. `None` = not bootable.
    #[serde(default)]
    pub boot_index: Option<u32>,
}

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Vireo's prefix: `0a:76:72` — locally administered (bit 1 of the first octet set) and
    /// unicast (bit 0 clear), so it never collides with a vendor-assigned address.
    pub const PREFIX: [u8; 3] = [0x0a, 0x76, 0x72];

    /// A MAC in Vireo's prefix whose last three octets come from `seed` (e.g. random bytes).
    pub fn generated(seed: [u8; 3]) -> Self {
        let p = Self::PREFIX;
        MacAddr([p[0], p[1], p[2], seed[0], seed[1], seed[2]])
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "MAC address {s:?} must be six hex octets separated by ':'"
            ));
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("MAC address {s:?} has a malformed octet {p:?}"));
            }
            out[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("MAC address {s:?} has a malformed octet {p:?}"))?;
        }
        let mac = MacAddr(out);
        if !mac.is_unicast() {
            return Err(format!("MAC address {s:?} is a multicast address"));
        }
        Ok(mac)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for MacAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^([0-9a-f]{2}:){5}[0-9a-f]{2}$"))
            .examples([serde_json::json!("0a:76:72:12:34:56")])
            .into()
    }
}
impl utoipa::ToSchema for MacAddr {}

/// How a NIC reaches a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NicBackend {
    /// QEMU user-mode networking: a private NAT inside the QEMU process with its own DHCP
    /// server; needs no host privileges and exposes nothing.
    User,
    /// An existing tap device (created by the network layer).
    Tap { ifname: String },
}

/// A virtio-net NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub name: Name,
    pub mac: MacAddr,
    pub backend: NicBackend,
}

/// Everything QEMU needs to run the VM (not its identity or runtime state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: BootSource,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Read-only CD-ROMs (e.g. the cloud-init `cidata` seed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdroms: Vec<CdromSpec>,
    /// Files handed to the guest firmware through QEMU `fw_cfg` (e.g. an Ignition config).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fw_cfg: Vec<FwCfgFile>,
}

/// A read-only CD-ROM image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CdromSpec {
    pub name: Name,
    #[schema(value_type = String)]
    pub path: PathBuf,
}

/// A file exposed as `fw_cfg` entry `name` (e.g. `opt/com.coreos/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FwCfgFile {
    /// Entry name: `opt/` followed by letters, digits, `.`, `_`, `-` and `/`.
    pub name: String,
    #[schema(value_type = String)]
    pub path: PathBuf,
}

/// Whether `name` is a fw_cfg entry name guests may be given (QEMU reserves everything
/// outside `opt/`; the rest keeps the argv free of separators).
pub fn valid_fw_cfg_name(name: &str) -> bool {
    name.len() <= 55
        && name.strip_prefix("opt/").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        })
}

/// A spec that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("vcpus must be between 1 and {max} (got {got})", max = limits::MAX_VCPUS)]
    Vcpus { got: u32 },
    #[error(
        "memory_mib must be between {min} and {max} (got {got})",
        min = limits::MIN_MEMORY_MIB,
        max = limits::MAX_MEMORY_MIB
    )]
    Memory { got: u64 },
    #[error("at most {max} {what} are allowed (got {got})")]
    TooMany {
        what: &'static str,
        max: usize,
        got: usize,
    },
    #[error("{what} name {name:?} is used twice")]
    DuplicateName { what: &'static str, name: String },
    #[error("MAC address {0} is used by two NICs")]
    DuplicateMac(MacAddr),
    #[error("path {0:?} must be absolute and must not contain '..'")]
    BadPath(PathBuf),
    #[error("kernel command line is longer than {max} bytes or contains a control character", max = limits::MAX_CMDLINE_LEN)]
    Cmdline,
    #[error("tap interface name {0:?} must be 1-15 characters of letters, digits, '-' or '_'")]
    TapName(String),
    #[error("disk boot needs at least one disk with a boot_index")]
    NoBootDisk,
    #[error("fw_cfg entry name {0:?} must start with opt/ and use letters, digits, . _ - /")]
    FwCfgName(String),
}

fn check_path(p: &std::path::Path) -> Result<(), SpecError> {
    let ok = p.is_absolute()
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadPath(p.to_path_buf()))
    }
}

impl VmSpec {
    /// Checks every rule in the module docs.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(1..=limits::MAX_VCPUS).contains(&self.vcpus) {
            return Err(SpecError::Vcpus { got: self.vcpus });
        }
        if !(limits::MIN_MEMORY_MIB..=limits::MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::Memory {
                got: self.memory_mib,
            });
        }
        if self.disks.len() > limits::MAX_DISKS {
            return Err(SpecError::TooMany {
                what: "disks",
                max: limits::MAX_DISKS,
                got: self.disks.len(),
            });
        }
        if self.nics.len() > limits::MAX_NICS {
            return Err(SpecError::TooMany {
                what: "NICs",
                max: limits::MAX_NICS,
                got: self.nics.len(),
            });
        }
        match &self.boot {
            BootSource::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                check_path(kernel)?;
                if let Some(i) = initrd {
                    check_path(i)?;
                }
                if cmdline.len() > limits::MAX_CMDLINE_LEN
                    || cmdline.chars().any(|c| c.is_control())
                {
                    return Err(SpecError::Cmdline);
                }
            }
            BootSource::Disk { .. } => {
                if !self.disks.iter().any(|d| d.boot_index.is_some()) {
                    return Err(SpecError::NoBootDisk);
                }
            }
        }
        let mut names = HashSet::new();
        // Disks and CD-ROMs share QEMU's block node and device id name space.
        for (name, path) in self
            .disks
            .iter()
            .map(|d| (&d.name, &d.path))
            .chain(self.cdroms.iter().map(|c| (&c.name, &c.path)))
        {
            check_path(path)?;
            if !names.insert(name.as_str()) {
                return Err(SpecError::DuplicateName {
                    what: "disk",
                    name: name.to_string(),
                });
            }
        }
        let mut entries = HashSet::new();
        for f in &self.fw_cfg {
            check_path(&f.path)?;
            if !valid_fw_cfg_name(&f.name) {
                return Err(SpecError::FwCfgName(f.name.clone()));
            }
            if !entries.insert(f.name.as_str()) {
                return Err(SpecError::DuplicateName {
                    what: "fw_cfg entry",
                    name: f.name.clone(),
                });
            }
        }
        let mut names = HashSet::new();
        let mut macs = HashSet::new();
        for n in &self.nics {
            if !names.insert(n.name.as_str()) {
                return Err(SpecError::DuplicateName {
                    what: "NIC",
                    name: n.name.to_string(),
                });
            }
            if !macs.insert(n.mac) {
                return Err(SpecError::DuplicateMac(n.mac));
            }
            if let NicBackend::Tap { ifname } = &n.backend {
                let ok = (1..=15).contains(&ifname.len())
                    && ifname
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !ok {
                    return Err(SpecError::TapName(ifname.clone()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmSpec {
        VmSpec {
            vcpus: 1,
            memory_mib: 256,
            boot: BootSource::Kernel {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: "console=ttyS0".into(),
            },
            disks: vec![],
            nics: vec![],
            cdroms: vec![],
            fw_cfg: vec![],
        }
    }

    #[test]
    fn cdroms_and_fw_cfg_are_checked() {
        let mut s = base();
        s.cdroms.push(CdromSpec {
            name: Name::new("cidata").unwrap(),
            path: "/v/cidata.iso".into(),
        });
        s.fw_cfg.push(FwCfgFile {
            name: "opt/com.coreos/config".into(),
            path: "/v/ign.json".into(),
        });
        assert!(s.validate().is_ok());
        let mut dup = s.clone();
        dup.disks.push(DiskSpec {
            name: Name::new("cidata").unwrap(),
            path: "/v/d.qcow2".into(),
            format: DiskFormat::Qcow2,
            read_only: false,
            boot_index: None,
        });
        assert!(matches!(
            dup.validate(),
            Err(SpecError::DuplicateName { .. })
        ));
        for bad in ["etc/x", "opt/", "opt/a,b", "opt/a b", "opt/x=y"] {
            let mut b = s.clone();
            b.fw_cfg[0].name = bad.into();
            assert_eq!(b.validate(), Err(SpecError::FwCfgName(bad.into())), "{bad}");
        }
        let mut rel = s.clone();
        rel.cdroms[0].path = "../x.iso".into();
        assert!(matches!(rel.validate(), Err(SpecError::BadPath(_))));
    }

    #[test]
    fn validates_sizes() {
        assert!(base().validate().is_ok());
        let mut s = base();
        s.vcpus = 0;
        assert_eq!(s.validate(), Err(SpecError::Vcpus { got: 0 }));
        s.vcpus = 1000;
        assert_eq!(s.validate(), Err(SpecError::Vcpus { got: 1000 }));
        let mut s = base();
        s.memory_mib = 1 << 40;
        assert!(matches!(s.validate(), Err(SpecError::Memory { .. })));
    }

    #[test]
    fn rejects_relative_and_parent_paths() {
        let mut s = base();
        s.boot = BootSource::Kernel {
            kernel: "k".into(),
            initrd: None,
            cmdline: String::new(),
        };
        assert!(matches!(s.validate(), Err(SpecError::BadPath(_))));
        s.boot = BootSource::Kernel {
            kernel: "/a/../k".into(),
            initrd: None,
            cmdline: String::new(),
        };
        assert!(matches!(s.validate(), Err(SpecError::BadPath(_))));
    }

    #[test]
    fn rejects_duplicate_macs_and_names() {
        let mut s = base();
        let mac: MacAddr = "0a:76:72:00:00:01".parse().unwrap();
        let nic = NicSpec {
            name: Name::new("eth0").unwrap(),
            mac,
            backend: NicBackend::User,
        };
        s.nics = vec![
            nic.clone(),
            NicSpec {
                name: Name::new("eth1").unwrap(),
                ..nic.clone()
            },
        ];
        assert_eq!(s.validate(), Err(SpecError::DuplicateMac(mac)));
        s.nics = vec![nic.clone(), nic];
        assert!(matches!(s.validate(), Err(SpecError::DuplicateName { .. })));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            MacAddr::generated([1, 2, 3]).to_string(),
            "0a:76:72:01:02:03"
        );
        assert!("01:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("zz:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("0a:00:00:00:00".parse::<MacAddr>().is_err());
    }

    #[test]
    fn spec_rejects_unknown_fields() {
        let j = serde_json::json!({"vcpus":1,"memory_mib":64,"boot":{"kind":"disk","firmware":"bios"},"bogus":1});
        assert!(serde_json::from_value::<VmSpec>(j).is_err());
    }
}
