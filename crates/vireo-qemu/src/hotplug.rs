//! PCIe hotplug ports of Vireo's q35 machines, and the mapping from `DiskSpec`/`NicSpec` to
//! the QMP hotplug requests of `vireo_qmp::hotplug`. Pure.
//!
//! q35's root bus (`pcie.0`) does not support hotplug; devices can only be hot-added below a
//! `pcie-root-port`, one device per port. Every Vireo machine gets [`HOTPLUG_PORT_COUNT`]
//! empty root ports, ids `vireo_hp0`… (the `_` keeps them out of the user-name space), packed
//! as the functions of one multifunction slot ([`HOTPLUG_PORT_SLOT`]) so they occupy a single
//! slot on `pcie.0`.
//!
//! Devices on `pcie.0` cannot be hot-removed (QMP `device_del` answers that the bus does not
//! support hotplugging; `vireo_qmp` reports `HotplugError::NotHotpluggable`). A disk or NIC
//! that should stay removable while the VM runs can be given a port in the
//! [`HotplugPlacement`] even when it is attached while the VM is stopped.
//!
//! Invariants:
//! - port ids, PCI addresses, chassis and port numbers are fixed functions of the port index,
//!   so a port is the same hardware location on every boot;
//! - the root ports have explicit addresses in a slot that automatic slot assignment reaches
//!   only after 27 other devices, so cold-plugged devices keep the addresses they had before
//!   ports existed;
//! - a device hot-added on port N is re-created at the next boot with `bus=vireo_hpN`
//!   ([`HotplugPlacement`] in `argv::LaunchOptions`), so the guest finds it at the
//!   same PCI location; a placement never puts two devices on one port.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use vireo_qmp::{BlockFormat, BlockNodes, DiskHotplug, NetdevBackend, NicHotplug};
use vireo_types::{DiskFormat, DiskSpec, Name, NicBackend, NicSpec, VmSpec};

use crate::argv::{disk_ids, nic_ids};

/// Number of hotplug root ports in every machine.
pub const HOTPLUG_PORT_COUNT: u8 = 8;

/// Slot on `pcie.0` whose functions 0..[`HOTPLUG_PORT_COUNT`] are the root ports (0x1c is
/// where real q35 chipsets put their root ports).
pub const HOTPLUG_PORT_SLOT: u8 = 0x1c;

/// One hotplug root port, by index (`0..HOTPLUG_PORT_COUNT`). Persisted as its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct HotplugPort(u8);

/// A port index outside `0..HOTPLUG_PORT_COUNT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hotplug port index {0} is out of range (0..{HOTPLUG_PORT_COUNT})")]
pub struct PortOutOfRange(pub u8);

impl TryFrom<u8> for HotplugPort {
    type Error = PortOutOfRange;

    fn try_from(index: u8) -> Result<Self, Self::Error> {
        if index < HOTPLUG_PORT_COUNT {
            Ok(HotplugPort(index))
        } else {
            Err(PortOutOfRange(index))
        }
    }
}

impl From<HotplugPort> for u8 {
    fn from(port: HotplugPort) -> u8 {
        port.0
    }
}

impl HotplugPort {
    /// Every port, in index order.
    pub fn all() -> impl Iterator<Item = HotplugPort> {
        (0..HOTPLUG_PORT_COUNT).map(HotplugPort)
    }

    pub fn index(self) -> u8 {
        self.0
    }

    /// The root port's qdev id, which is also the `bus` of the device plugged into it.
    pub fn id(self) -> String {
        format!("vireo_hp{}", self.0)
    }

    /// The port with qdev id `id`, if it is one of Vireo's.
    pub fn from_id(id: &str) -> Option<HotplugPort> {
        let digits = id.strip_prefix("vireo_hp")?;
        // Only the canonical spelling (no sign, no leading zeros).
        if digits.len() != 1 {
            return None;
        }
        HotplugPort::try_from(digits.parse::<u8>().ok()?).ok()
    }

    /// `-device` value of this root port (the first function carries `multifunction=on`).
    pub fn device_option(self) -> String {
        let i = self.0;
        let multifunction = if i == 0 { ",multifunction=on" } else { "" };
        format!(
            "pcie-root-port,id={},bus=pcie.0,addr={HOTPLUG_PORT_SLOT:#04x}.{i}{multifunction},chassis={},port={:#04x}",
            self.id(),
            u32::from(i) + 1,
            0x10 + u32::from(i),
        )
    }
}

impl fmt::Display for HotplugPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vireo_hp{}", self.0)
    }
}

/// The lowest-numbered port not in `used`, or `None` when all are taken.
pub fn pick_free_port(used: impl IntoIterator<Item = HotplugPort>) -> Option<HotplugPort> {
    let mut taken = [false; HOTPLUG_PORT_COUNT as usize];
    for port in used {
        taken[usize::from(port.0)] = true;
    }
    HotplugPort::all().find(|p| !taken[usize::from(p.0)])
}

/// Which hotplug port each hot-added (or otherwise removable) disk and NIC of a VM sits on;
/// the engine persists it. Devices not listed are cold-plugged on `pcie.0`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugPlacement {
    #[serde(default)]
    pub disks: BTreeMap<Name, HotplugPort>,
    #[serde(default)]
    pub nics: BTreeMap<Name, HotplugPort>,
}

/// A placement that does not fit its VM spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("hotplug placement names disk {0}, which the VM does not have")]
    UnknownDisk(Name),
    #[error("hotplug placement names NIC {0}, which the VM does not have")]
    UnknownNic(Name),
    #[error("hotplug port {port} is assigned to both {first} and {second}")]
    PortShared {
        port: HotplugPort,
        first: String,
        second: String,
    },
}

impl HotplugPlacement {
    /// Ports in use, in no particular order.
    pub fn used_ports(&self) -> impl Iterator<Item = HotplugPort> + '_ {
        self.disks.values().chain(self.nics.values()).copied()
    }

    /// The port the next hot-added device should use (see [`pick_free_port`]).
    pub fn free_port(&self) -> Option<HotplugPort> {
        pick_free_port(self.used_ports())
    }

    /// The port of disk `name`, if it was hot-added.
    pub fn disk_port(&self, name: &Name) -> Option<HotplugPort> {
        self.disks.get(name).copied()
    }

    /// The port of NIC `name`, if it was hot-added.
    pub fn nic_port(&self, name: &Name) -> Option<HotplugPort> {
        self.nics.get(name).copied()
    }

    /// Checks that every placed device exists in `spec` and no port is used twice.
    pub fn validate(&self, spec: &VmSpec) -> Result<(), PlacementError> {
        for name in self.disks.keys() {
            if !spec.disks.iter().any(|d| &d.name == name) {
                return Err(PlacementError::UnknownDisk(name.clone()));
            }
        }
        for name in self.nics.keys() {
            if !spec.nics.iter().any(|n| &n.name == name) {
                return Err(PlacementError::UnknownNic(name.clone()));
            }
        }
        let mut owners: BTreeMap<HotplugPort, String> = BTreeMap::new();
        let placed = self
            .disks
            .iter()
            .map(|(n, p)| (format!("disk {n}"), *p))
            .chain(self.nics.iter().map(|(n, p)| (format!("NIC {n}"), *p)));
        for (owner, port) in placed {
            if let Some(first) = owners.insert(port, owner.clone()) {
                return Err(PlacementError::PortShared {
                    port,
                    first,
                    second: owner,
                });
            }
        }
        Ok(())
    }
}

/// The QMP hot-add request for `disk` on `port`: same node names, options and device
/// properties as the cold-plug command line (`argv::build`), plus `bus`.
pub fn disk_hotplug(disk: &DiskSpec, port: HotplugPort) -> DiskHotplug {
    let ids = disk_ids(&disk.name);
    DiskHotplug {
        device_id: ids.device,
        nodes: BlockNodes {
            file: ids.file_node,
            format: ids.format_node,
        },
        path: disk.path.clone(),
        format: match disk.format {
            DiskFormat::Qcow2 => BlockFormat::Qcow2,
            DiskFormat::Raw => BlockFormat::Raw,
        },
        read_only: disk.read_only,
        serial: Some(disk.name.to_string()),
        port: port.id(),
    }
}

/// The node names of `disk` (for hot-remove, resize and snapshots).
pub fn disk_nodes(name: &Name) -> BlockNodes {
    let ids = disk_ids(name);
    BlockNodes {
        file: ids.file_node,
        format: ids.format_node,
    }
}

/// The QMP hot-add request for `nic` on `port`: same ids, backend and MAC as the cold-plug
/// command line, plus `bus`.
pub fn nic_hotplug(nic: &NicSpec, port: HotplugPort) -> NicHotplug {
    let ids = nic_ids(&nic.name);
    NicHotplug {
        device_id: ids.device,
        netdev_id: ids.netdev,
        mac: nic.mac.to_string(),
        backend: match &nic.backend {
            NicBackend::User => NetdevBackend::User,
            NicBackend::Tap { ifname } => NetdevBackend::Tap {
                ifname: ifname.clone(),
            },
        },
        port: port.id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(i: u8) -> HotplugPort {
        HotplugPort::try_from(i).unwrap()
    }

    #[test]
    fn ports_have_fixed_ids_and_addresses() {
        assert_eq!(
            port(0).device_option(),
            "pcie-root-port,id=vireo_hp0,bus=pcie.0,addr=0x1c.0,multifunction=on,chassis=1,port=0x10"
        );
        assert_eq!(
            port(7).device_option(),
            "pcie-root-port,id=vireo_hp7,bus=pcie.0,addr=0x1c.7,chassis=8,port=0x17"
        );
        for p in HotplugPort::all() {
            assert_eq!(HotplugPort::from_id(&p.id()), Some(p));
            assert_eq!(p.to_string(), p.id());
        }
        for bad in [
            "vireo_hp8",
            "vireo_hp01",
            "vireo_hp+1",
            "vireo_hp",
            "data",
            "vireo_hp-1",
        ] {
            assert_eq!(HotplugPort::from_id(bad), None, "{bad}");
        }
        assert_eq!(HotplugPort::try_from(8), Err(PortOutOfRange(8)));
    }

    #[test]
    fn free_port_is_the_lowest_unused() {
        assert_eq!(pick_free_port([]), Some(port(0)));
        assert_eq!(pick_free_port([port(0), port(2)]), Some(port(1)));
        assert_eq!(pick_free_port([port(1), port(1)]), Some(port(0)));
        assert_eq!(pick_free_port(HotplugPort::all()), None);
    }

    #[test]
    fn ports_persist_as_indices_and_reject_out_of_range() {
        let mut placement = HotplugPlacement::default();
        placement.disks.insert(Name::new("data").unwrap(), port(3));
        let json = serde_json::to_string(&placement).unwrap();
        assert_eq!(json, r#"{"disks":{"data":3},"nics":{}}"#);
        assert_eq!(
            serde_json::from_str::<HotplugPlacement>(&json).unwrap(),
            placement
        );
        assert!(serde_json::from_str::<HotplugPlacement>(r#"{"disks":{"data":9}}"#).is_err());
        assert_eq!(placement.free_port(), Some(port(0)));
    }
}
