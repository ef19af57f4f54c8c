//! Hotplug of disks and NICs into a running QEMU through PCIe root ports, and NIC link state.
//! Shapes follow QEMU 7.2's `qapi/block-core.json` (`blockdev-add`, `blockdev-del`),
//! `qapi/qdev.json` (`device_add`, `device_del`, `DEVICE_DELETED`) and `qapi/net.json`
//! (`netdev_add`, `netdev_del`, `set_link`).
//!
//! The machine provides empty `pcie-root-port` devices (see `vireo_qemu::hotplug`); every
//! hot-added device goes onto one of them (`bus=<port id>`), one device per port.
//!
//! Invariants:
//! - a hot-add either completes or leaves nothing behind: when a later step fails, the
//!   earlier ones are undone (`blockdev-del` of the nodes added, `netdev_del` of the backend);
//! - hot-remove returns only once QEMU reported `DEVICE_DELETED` for the device (the guest
//!   released it), then deletes the backend; if the guest does not cooperate within the
//!   timeout, [`HotplugError::GuestDidNotRelease`] says so and the backend is kept (it is still
//!   in use). Calling the removal again later is safe: a pending unplug is waited for, a
//!   device that is already gone goes straight to backend deletion, and backends that are
//!   already gone count as deleted, so removal is idempotent;
//! - identifiers already in use, missing ports and occupied ports are detected with QOM
//!   queries and reported as their own variants, not as QEMU's free-form text;
//! - the event subscription is taken before `device_del` is sent, so a fast
//!   `DEVICE_DELETED` cannot be missed; QOM is also polled, so a lagging subscriber cannot
//!   stall removal either.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::block::{BlockError, BlockFormat, BlockNodes};
use crate::qmp::{QmpClient, QmpError};

/// QOM container of devices created with a user-chosen id.
const PERIPHERAL: &str = "/machine/peripheral";
/// How often removal re-checks QOM while waiting for `DEVICE_DELETED`.
const REMOVAL_POLL: Duration = Duration::from_millis(500);

/// A disk to hot-add: its image, the node names to create and the guest device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHotplug {
    /// qdev id of the `virtio-blk-pci` device (Vireo: the disk name).
    pub device_id: String,
    pub nodes: BlockNodes,
    pub path: PathBuf,
    pub format: BlockFormat,
    pub read_only: bool,
    /// Serial number the guest sees (`/sys/block/vdX/serial`); Vireo uses the disk name.
    pub serial: Option<String>,
    /// Id of the free `pcie-root-port` to plug into.
    pub port: String,
}

/// Host side of a hot-added NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetdevBackend {
    /// QEMU user-mode networking (slirp).
    User,
    /// An existing tap device (created by the daemon); QEMU runs no scripts.
    Tap { ifname: String },
}

/// A NIC to hot-add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicHotplug {
    /// qdev id of the `virtio-net-pci` device (Vireo: `nic_<name>`).
    pub device_id: String,
    /// Id of the netdev backend (Vireo: `net_<name>`).
    pub netdev_id: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub backend: NetdevBackend,
    /// Id of the free `pcie-root-port` to plug into.
    pub port: String,
}

/// Errors of hotplug operations.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("a device with id {id} already exists")]
    DeviceIdInUse { id: String },
    #[error("block node name {node} is already in use")]
    NodeNameInUse { node: String },
    #[error("a network backend with id {id} already exists")]
    NetdevIdInUse { id: String },
    #[error("hotplug port {port} does not exist in this machine")]
    PortNotFound { port: String },
    #[error("hotplug port {port} is occupied by device {device}")]
    PortOccupied { port: String, device: String },
    #[error("device {id} does not exist")]
    DeviceNotFound { id: String },
    #[error(
        "device {id} sits on bus {bus}, which has no hotplug; only devices on a hotplug port \
         can be removed from a running VM"
    )]
    NotHotpluggable { id: String, bus: String },
    #[error(
        "the guest did not release device {id} within {timeout:?} (the guest OS must be running \
         and support PCI hotplug); the unplug request stays pending"
    )]
    GuestDidNotRelease { id: String, timeout: Duration },
    #[error("cannot list the block nodes")]
    Block(#[from] BlockError),
    #[error("{command} for {id} failed")]
    Qmp {
        command: &'static str,
        id: String,
        #[source]
        source: QmpError,
    },
    #[error("{command} for {id} failed, and undoing the earlier steps failed too ({undo})")]
    RollbackFailed {
        command: &'static str,
        id: String,
        /// What could not be undone and why (the undo's own error).
        undo: String,
        #[source]
        source: QmpError,
    },
}

/// `blockdev-add` arguments of the `file` node of `disk` (pure).
pub fn file_node_arguments(disk: &DiskHotplug) -> Value {
    let mut args = json!({
        "driver": "file",
        "node-name": disk.nodes.file,
        "filename": disk.path,
        // Same as the cold-plug command line: thread pool AIO, default cache mode.
        "aio": "threads",
    });
    if disk.read_only {
        args["read-only"] = json!(true);
    }
    args
}

/// `blockdev-add` arguments of the format node of `disk`, stacked on its file node (pure).
pub fn format_node_arguments(disk: &DiskHotplug) -> Value {
    let mut args = json!({
        "driver": disk.format.as_str(),
        "node-name": disk.nodes.format,
        "file": disk.nodes.file,
    });
    if disk.read_only {
        args["read-only"] = json!(true);
    }
    args
}

/// `device_add` arguments of the guest device of `disk` (pure).
pub fn disk_device_arguments(disk: &DiskHotplug) -> Value {
    let mut args = json!({
        "driver": "virtio-blk-pci",
        "id": disk.device_id,
        "drive": disk.nodes.format,
        "bus": disk.port,
    });
    if let Some(serial) = &disk.serial {
        args["serial"] = json!(serial);
    }
    args
}

/// `netdev_add` arguments of `nic`'s backend (pure).
pub fn netdev_arguments(nic: &NicHotplug) -> Value {
    match &nic.backend {
        NetdevBackend::User => json!({"type": "user", "id": nic.netdev_id}),
        NetdevBackend::Tap { ifname } => json!({
            "type": "tap",
            "id": nic.netdev_id,
            "ifname": ifname,
            "script": "no",
            "downscript": "no",
        }),
    }
}

/// `device_add` arguments of `nic`'s guest device (pure).
pub fn nic_device_arguments(nic: &NicHotplug) -> Value {
    json!({
        "driver": "virtio-net-pci",
        "id": nic.device_id,
        "netdev": nic.netdev_id,
        "mac": nic.mac,
        "bus": nic.port,
    })
}

#[derive(Deserialize)]
struct QomProperty {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

/// Devices on a bus appear as `child[N]` link properties of the bus object.
fn bus_child_links(props: &[QomProperty]) -> impl Iterator<Item = &str> {
    props
        .iter()
        .filter(|p| p.name.starts_with("child[") && p.kind.starts_with("link<"))
        .map(|p| p.name.as_str())
}

/// Whether a `DEVICE_DELETED` event is about the device `id` (virtio devices also report
/// their internal backend, without a `device` field).
fn is_deleted_event(name: &str, data: &Value, id: &str) -> bool {
    name == "DEVICE_DELETED" && data.get("device").and_then(Value::as_str) == Some(id)
}

impl QmpClient {
    async fn qom_list(&self, path: &str) -> Result<Option<Vec<QomProperty>>, QmpError> {
        match self
            .execute_typed::<Vec<QomProperty>>("qom-list", Some(json!({"path": path})))
            .await
        {
            Ok(props) => Ok(Some(props)),
            Err(e) if e.class() == Some("DeviceNotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ids of the devices created with a user-chosen id (`-device id=…`, `device_add`),
    /// from QOM's `/machine/peripheral`.
    pub async fn peripheral_device_ids(&self) -> Result<Vec<String>, HotplugError> {
        let props = self
            .qom_list(PERIPHERAL)
            .await
            .map_err(|source| HotplugError::Qmp {
                command: "qom-list",
                id: PERIPHERAL.into(),
                source,
            })?
            .unwrap_or_default();
        Ok(props
            .into_iter()
            .filter(|p| p.kind.starts_with("child<"))
            .map(|p| p.name)
            .collect())
    }

    /// Whether a device with user id `id` exists.
    pub async fn device_exists(&self, id: &str) -> Result<bool, HotplugError> {
        Ok(self.peripheral_device_ids().await?.iter().any(|d| d == id))
    }

    /// The id of the device plugged into the root port `port`, `Ok(None)` for an empty
    /// port, [`HotplugError::PortNotFound`] if there is no such port.
    ///
    /// QOM contract: a `pcie-root-port` with id P has a child bus at
    /// `/machine/peripheral/P/P` whose `child[N]` link properties point at the devices on it.
    pub async fn port_occupant(&self, port: &str) -> Result<Option<String>, HotplugError> {
        let bus = format!("{PERIPHERAL}/{port}/{port}");
        let qmp_err = |command, source| HotplugError::Qmp {
            command,
            id: port.to_string(),
            source,
        };
        let props = self
            .qom_list(&bus)
            .await
            .map_err(|e| qmp_err("qom-list", e))?
            .ok_or_else(|| HotplugError::PortNotFound {
                port: port.to_string(),
            })?;
        let Some(link) = bus_child_links(&props).next() else {
            return Ok(None);
        };
        let target = self
            .execute("qom-get", Some(json!({"path": bus, "property": link})))
            .await
            .map_err(|e| qmp_err("qom-get", e))?;
        let path = target.as_str().unwrap_or_default();
        Ok(Some(path.rsplit('/').next().unwrap_or(path).to_string()))
    }

    /// Checks that `device_id` is free and `port` exists and is empty.
    async fn check_device_slot(&self, device_id: &str, port: &str) -> Result<(), HotplugError> {
        if self.device_exists(device_id).await? {
            return Err(HotplugError::DeviceIdInUse {
                id: device_id.to_string(),
            });
        }
        if let Some(device) = self.port_occupant(port).await? {
            return Err(HotplugError::PortOccupied {
                port: port.to_string(),
                device,
            });
        }
        Ok(())
    }

    /// Hot-adds a disk: `blockdev-add` of the file node, `blockdev-add` of the format node,
    /// `device_add virtio-blk-pci` on `disk.port`.
    ///
    /// QMP contract: `blockdev-add` takes `BlockdevOptions` (`driver`, `node-name`,
    /// driver options; the format node names its file node in `file`); `device_add` takes
    /// `driver`, `id`, `bus` and the device's properties (`drive` = format node, `serial`).
    /// The guest sees a new virtio disk (`/dev/vdX`) once its PCI hotplug driver handled the
    /// insertion. On failure every node added is deleted again.
    pub async fn hot_add_disk(&self, disk: &DiskHotplug) -> Result<(), HotplugError> {
        self.check_device_slot(&disk.device_id, &disk.port).await?;
        let existing = self.query_named_block_nodes().await?;
        for node in [&disk.nodes.file, &disk.nodes.format] {
            if existing.iter().any(|n| &n.node_name == node) {
                return Err(HotplugError::NodeNameInUse { node: node.clone() });
            }
        }

        self.execute("blockdev-add", Some(file_node_arguments(disk)))
            .await
            .map_err(|source| HotplugError::Qmp {
                command: "blockdev-add",
                id: disk.nodes.file.clone(),
                source,
            })?;
        if let Err(source) = self
            .execute("blockdev-add", Some(format_node_arguments(disk)))
            .await
        {
            return Err(self
                .undo_nodes(
                    "blockdev-add",
                    &disk.nodes.format,
                    &[&disk.nodes.file],
                    source,
                )
                .await);
        }
        if let Err(source) = self
            .execute("device_add", Some(disk_device_arguments(disk)))
            .await
        {
            return Err(self
                .undo_nodes(
                    "device_add",
                    &disk.device_id,
                    &[&disk.nodes.format, &disk.nodes.file],
                    source,
                )
                .await);
        }
        tracing::info!(device = %disk.device_id, port = %disk.port, "disk hot-added");
        Ok(())
    }

    /// Deletes `nodes` (top first) after `command` failed; returns the error to report.
    async fn undo_nodes(
        &self,
        command: &'static str,
        id: &str,
        nodes: &[&String],
        source: QmpError,
    ) -> HotplugError {
        let mut failures = Vec::new();
        for node in nodes {
            if let Err(e) = self
                .execute("blockdev-del", Some(json!({"node-name": node})))
                .await
            {
                tracing::warn!(node = %node, error = %e, "cannot undo blockdev-add");
                failures.push(format!("blockdev-del {node}: {e}"));
            }
        }
        if failures.is_empty() {
            HotplugError::Qmp {
                command,
                id: id.to_string(),
                source,
            }
        } else {
            HotplugError::RollbackFailed {
                command,
                id: id.to_string(),
                undo: failures.join("; "),
                source,
            }
        }
    }

    /// Hot-removes a disk: `device_del`, wait for the guest to release it
    /// (`DEVICE_DELETED`), then `blockdev-del` of the format node and of the file node.
    ///
    /// QMP contract: `device_del {"id"}` only *requests* removal; QEMU signals the guest
    /// (ACPI or PCIe hotplug) and emits `DEVICE_DELETED {"device": id, "path"}` once the guest
    /// ejected the device. `blockdev-del {"node-name"}` fails while a node is still in use.
    /// See the module invariants for timeouts and idempotence.
    pub async fn hot_remove_disk(
        &self,
        device_id: &str,
        nodes: &BlockNodes,
        timeout: Duration,
    ) -> Result<(), HotplugError> {
        self.device_del_and_wait(device_id, timeout).await?;
        for node in [&nodes.format, &nodes.file] {
            match self
                .execute("blockdev-del", Some(json!({"node-name": node})))
                .await
            {
                Ok(_) => {}
                // Already deleted by an earlier, interrupted removal.
                Err(e) if self.block_node(node).await.is_ok_and(|n| n.is_none()) => {
                    tracing::debug!(node = %node, error = %e, "block node already gone");
                }
                Err(source) => {
                    return Err(HotplugError::Qmp {
                        command: "blockdev-del",
                        id: node.clone(),
                        source,
                    })
                }
            }
        }
        tracing::info!(device = %device_id, "disk hot-removed");
        Ok(())
    }

    /// Requests removal of device `id` and waits until QEMU reports it deleted.
    ///
    /// QMP contract: `device_del {"id"}`, then the `DEVICE_DELETED` event whose `device` is
    /// `id`. A device that does not exist is already removed (`Ok`); an unplug that is
    /// already pending (QEMU: "already in the process of unplug") is waited for.
    pub async fn device_del_and_wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<(), HotplugError> {
        let mut events = self.events();
        match self.execute("device_del", Some(json!({"id": id}))).await {
            Ok(_) => {}
            Err(e) if e.class() == Some("DeviceNotFound") => {
                tracing::debug!(device = id, "device_del: device already gone");
                return Ok(());
            }
            // QEMU 7.2 has no error class for a pending unplug; its message is the only sign.
            Err(QmpError::Command { desc, .. }) if desc.contains("in the process of unplug") => {
                tracing::debug!(device = id, "device_del: unplug already pending");
            }
            Err(source) => return Err(self.explain_device_del(id, source).await),
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = tokio::time::interval(REMOVAL_POLL);
        poll.tick().await;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(ev) if is_deleted_event(&ev.name, &ev.data, id) => return Ok(()),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        return Err(HotplugError::Qmp {
                            command: "device_del",
                            id: id.to_string(),
                            source: QmpError::Closed { command: "device_del".into() },
                        })
                    }
                },
                _ = poll.tick() => {
                    if !self.device_exists(id).await? {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    // A last look: the event may have been lost to a lagging receiver.
                    if !self.device_exists(id).await? {
                        return Ok(());
                    }
                    return Err(HotplugError::GuestDidNotRelease { id: id.to_string(), timeout });
                }
            }
        }
    }

    /// Maps a rejected `device_del` to [`HotplugError::NotHotpluggable`] when the device sits
    /// on a bus without hotplug (QOM property `parent_bus`), else to the QMP error.
    async fn explain_device_del(&self, id: &str, source: QmpError) -> HotplugError {
        let bus = self
            .execute(
                "qom-get",
                Some(json!({"path": format!("{PERIPHERAL}/{id}"), "property": "parent_bus"})),
            )
            .await;
        match bus {
            Ok(Value::String(bus)) if !bus.starts_with(&format!("{PERIPHERAL}/")) => {
                HotplugError::NotHotpluggable {
                    id: id.to_string(),
                    bus,
                }
            }
            _ => HotplugError::Qmp {
                command: "device_del",
                id: id.to_string(),
                source,
            },
        }
    }

    /// Hot-adds a NIC: `netdev_add` of the backend, then `device_add virtio-net-pci` on
    /// `nic.port`.
    ///
    /// QMP contract: `netdev_add` takes a `Netdev` (`type` = `user` | `tap`, `id`, and for tap
    /// `ifname`, `script: "no"`, `downscript: "no"` so QEMU opens the existing device and runs
    /// nothing); `device_add` takes `driver`, `id`, `bus`, `netdev`, `mac`. If `device_add`
    /// fails the backend is deleted again.
    pub async fn hot_add_nic(&self, nic: &NicHotplug) -> Result<(), HotplugError> {
        self.check_device_slot(&nic.device_id, &nic.port).await?;
        if let Err(source) = self
            .execute("netdev_add", Some(netdev_arguments(nic)))
            .await
        {
            // netdev ids are not QOM objects in 7.2 (and `query-netdev` does not exist yet):
            // QEMU's message is the only sign of a duplicate.
            if matches!(&source, QmpError::Command { desc, .. } if desc.starts_with("Duplicate ID"))
            {
                return Err(HotplugError::NetdevIdInUse {
                    id: nic.netdev_id.clone(),
                });
            }
            return Err(HotplugError::Qmp {
                command: "netdev_add",
                id: nic.netdev_id.clone(),
                source,
            });
        }
        if let Err(source) = self
            .execute("device_add", Some(nic_device_arguments(nic)))
            .await
        {
            return Err(
                match self
                    .execute("netdev_del", Some(json!({"id": nic.netdev_id})))
                    .await
                {
                    Ok(_) => HotplugError::Qmp {
                        command: "device_add",
                        id: nic.device_id.clone(),
                        source,
                    },
                    Err(undo) => HotplugError::RollbackFailed {
                        command: "device_add",
                        id: nic.device_id.clone(),
                        undo: format!("netdev_del {}: {undo}", nic.netdev_id),
                        source,
                    },
                },
            );
        }
        tracing::info!(device = %nic.device_id, port = %nic.port, "NIC hot-added");
        Ok(())
    }

    /// Hot-removes a NIC: `device_del` and wait for `DEVICE_DELETED` (see
    /// [`QmpClient::device_del_and_wait`]), then `netdev_del {"id": netdev_id}`. A backend
    /// that no longer exists counts as deleted.
    pub async fn hot_remove_nic(
        &self,
        device_id: &str,
        netdev_id: &str,
        timeout: Duration,
    ) -> Result<(), HotplugError> {
        self.device_del_and_wait(device_id, timeout).await?;
        match self
            .execute("netdev_del", Some(json!({"id": netdev_id})))
            .await
        {
            Ok(_) => {}
            Err(e) if e.class() == Some("DeviceNotFound") => {
                tracing::debug!(netdev = netdev_id, "netdev already gone");
            }
            Err(source) => {
                return Err(HotplugError::Qmp {
                    command: "netdev_del",
                    id: netdev_id.to_string(),
                    source,
                })
            }
        }
        tracing::info!(device = %device_id, "NIC hot-removed");
        Ok(())
    }

    /// Sets the link state the guest sees on NIC `device_id` (carrier up or down).
    ///
    /// QMP contract: `set_link {"name": device_id, "up": bool}`; an unknown name is
    /// [`HotplugError::DeviceNotFound`].
    pub async fn set_link(&self, device_id: &str, up: bool) -> Result<(), HotplugError> {
        match self
            .execute("set_link", Some(json!({"name": device_id, "up": up})))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.class() == Some("DeviceNotFound") => Err(HotplugError::DeviceNotFound {
                id: device_id.to_string(),
            }),
            Err(source) => Err(HotplugError::Qmp {
                command: "set_link",
                id: device_id.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(read_only: bool) -> DiskHotplug {
        DiskHotplug {
            device_id: "data".into(),
            nodes: BlockNodes {
                file: "file_data".into(),
                format: "fmt_data".into(),
            },
            path: "/var/lib/vireo/a,b.qcow2".into(),
            format: BlockFormat::Qcow2,
            read_only,
            serial: Some("data".into()),
            port: "vireo_hp2".into(),
        }
    }

    #[test]
    fn disk_arguments_match_the_cold_plug_shape() {
        let d = disk(false);
        assert_eq!(
            file_node_arguments(&d),
            json!({"driver": "file", "node-name": "file_data",
                   "filename": "/var/lib/vireo/a,b.qcow2", "aio": "threads"})
        );
        assert_eq!(
            format_node_arguments(&d),
            json!({"driver": "qcow2", "node-name": "fmt_data", "file": "file_data"})
        );
        assert_eq!(
            disk_device_arguments(&d),
            json!({"driver": "virtio-blk-pci", "id": "data", "drive": "fmt_data",
                   "bus": "vireo_hp2", "serial": "data"})
        );
        let ro = disk(true);
        assert_eq!(file_node_arguments(&ro)["read-only"], json!(true));
        assert_eq!(format_node_arguments(&ro)["read-only"], json!(true));
    }

    #[test]
    fn nic_arguments() {
        let mut nic = NicHotplug {
            device_id: "nic_eth1".into(),
            netdev_id: "net_eth1".into(),
            mac: "0a:76:72:00:00:05".into(),
            backend: NetdevBackend::Tap {
                ifname: "vt-web1-1".into(),
            },
            port: "vireo_hp0".into(),
        };
        assert_eq!(
            netdev_arguments(&nic),
            json!({"type": "tap", "id": "net_eth1", "ifname": "vt-web1-1",
                   "script": "no", "downscript": "no"})
        );
        nic.backend = NetdevBackend::User;
        assert_eq!(
            netdev_arguments(&nic),
            json!({"type": "user", "id": "net_eth1"})
        );
        assert_eq!(
            nic_device_arguments(&nic),
            json!({"driver": "virtio-net-pci", "id": "nic_eth1", "netdev": "net_eth1",
                   "mac": "0a:76:72:00:00:05", "bus": "vireo_hp0"})
        );
    }

    #[test]
    fn deleted_events_match_only_the_device_itself() {
        let backend = json!({"path": "/machine/peripheral/data/virtio-backend"});
        let device = json!({"device": "data", "path": "/machine/peripheral/data"});
        assert!(!is_deleted_event("DEVICE_DELETED", &backend, "data"));
        assert!(is_deleted_event("DEVICE_DELETED", &device, "data"));
        assert!(!is_deleted_event("DEVICE_DELETED", &device, "other"));
        assert!(!is_deleted_event("RESET", &device, "data"));
    }

    #[test]
    fn bus_children_are_link_properties() {
        let props: Vec<QomProperty> = serde_json::from_value(json!([
            {"name": "type", "type": "string"},
            {"name": "realized", "type": "bool"},
            {"name": "child[0]", "type": "link<virtio-net-pci>"},
            {"name": "hotplug-handler", "type": "link<hotplug-handler>"}
        ]))
        .unwrap();
        assert_eq!(
            bus_child_links(&props).collect::<Vec<_>>(),
            vec!["child[0]"]
        );
    }
}
