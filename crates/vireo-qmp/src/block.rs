//! Block-layer operations on a running QEMU: what is attached (`query-block`,
//! `query-named-block-nodes`), online growth (`block_resize`) and internal qcow2 snapshots of
//! single nodes (`blockdev-snapshot-internal-sync`, `blockdev-snapshot-delete-internal-sync`).
//! Shapes follow QEMU 7.2's `qapi/block-core.json`.
//!
//! Vireo stacks two named nodes per disk (see `vireo_qemu::argv::disk_ids`): a `file` protocol
//! node `file_<disk>` and a format node `fmt_<disk>` (qcow2 or raw) on top of it, which the
//! guest device uses. Operations here address the **format** node by name.
//!
//! Invariants:
//! - a failed command is re-examined against `query-named-block-nodes`, so "no such node",
//!   "snapshot exists" and "no such snapshot" come back as their own [`BlockError`] variants
//!   instead of QEMU's free-form `GenericError` text;
//! - [`QmpClient::block_resize`] never shrinks a disk (QEMU would silently cut qcow2 data): a
//!   smaller size is refused before QEMU is asked;
//! - replies are decoded into owned types that ignore fields this crate does not use, so newer
//!   QEMU versions with extra fields still decode.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::qmp::{QmpClient, QmpError};

/// Disk image format of a format node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockFormat {
    Qcow2,
    Raw,
}

impl BlockFormat {
    /// QEMU's driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockFormat::Qcow2 => "qcow2",
            BlockFormat::Raw => "raw",
        }
    }
}

impl fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two node names of one Vireo disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockNodes {
    /// `file` protocol node (`file_<disk>`).
    pub file: String,
    /// Format node on top of `file` (`fmt_<disk>`); the guest device's `drive`.
    pub format: String,
}

/// Errors of the block-layer helpers.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block node {node} does not exist")]
    NodeNotFound { node: String },
    #[error("refusing to shrink block node {node} from {current} to {requested} bytes")]
    Shrink {
        node: String,
        current: u64,
        requested: u64,
    },
    #[error("internal snapshot {name:?} already exists on block node {node}")]
    SnapshotExists { node: String, name: String },
    #[error("internal snapshot {name:?} does not exist on block node {node}")]
    SnapshotNotFound { node: String, name: String },
    #[error("{operation} on block node {node} failed")]
    Qmp {
        operation: &'static str,
        node: String,
        #[source]
        source: QmpError,
    },
    #[error("{operation} failed")]
    Query {
        operation: &'static str,
        #[source]
        source: QmpError,
    },
}

/// One internal snapshot as QEMU reports it (`SnapshotInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfo {
    /// QEMU's numeric id, as a string.
    pub id: String,
    pub name: String,
    /// Bytes of VM state stored with the snapshot (0 for disk-only snapshots).
    #[serde(default)]
    pub vm_state_size: u64,
    #[serde(default)]
    pub date_sec: i64,
    #[serde(default)]
    pub date_nsec: i64,
    #[serde(default)]
    pub vm_clock_sec: i64,
    #[serde(default)]
    pub vm_clock_nsec: i64,
}

/// The image below a node (`ImageInfo`, the fields Vireo uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    /// Driver name of the node the info describes (`qcow2`, `raw`, `file`).
    pub format: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host, when known.
    #[serde(default)]
    pub actual_size: Option<u64>,
    #[serde(default)]
    pub backing_filename: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
}

/// One block node (`BlockDeviceInfo`): an entry of `query-named-block-nodes`, or the medium of
/// a `query-block` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockNodeInfo {
    /// Node name; QEMU gives auto-generated names (`#block123`) to unnamed nodes.
    #[serde(default)]
    pub node_name: String,
    /// Filename (or JSON description) of the node's image.
    pub file: PathBuf,
    /// Driver (`qcow2`, `raw`, `file`, …).
    pub drv: String,
    /// Opened read-only.
    pub ro: bool,
    pub image: ImageInfo,
}

/// One `query-block` entry: a block backend and the node inserted into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Legacy drive name; empty for `-blockdev`/`blockdev-add` disks.
    #[serde(default)]
    pub device: String,
    /// QOM path of the guest device using the backend
    /// (`/machine/peripheral/<id>/virtio-backend` for virtio-blk).
    #[serde(default)]
    pub qdev: Option<String>,
    #[serde(default)]
    pub removable: bool,
    #[serde(default)]
    pub locked: bool,
    /// The root node of the backend; absent for an empty drive.
    #[serde(default)]
    pub inserted: Option<BlockNodeInfo>,
}

impl BlockInfo {
    /// The id of the guest device (`/machine/peripheral/<id>/…`), if it has a user id.
    pub fn device_id(&self) -> Option<&str> {
        let rest = self.qdev.as_deref()?.strip_prefix("/machine/peripheral/")?;
        Some(rest.split('/').next().unwrap_or(rest))
    }
}

impl QmpClient {
    /// `query-block`: every block backend with its guest device and root node.
    pub async fn query_block(&self) -> Result<Vec<BlockInfo>, BlockError> {
        self.execute_typed("query-block", None)
            .await
            .map_err(|source| BlockError::Query {
                operation: "query-block",
                source,
            })
    }

    /// `query-named-block-nodes` with `flat: true`: every node once, without its backing
    /// chain repeated inside.
    pub async fn query_named_block_nodes(&self) -> Result<Vec<BlockNodeInfo>, BlockError> {
        self.execute_typed("query-named-block-nodes", Some(json!({"flat": true})))
            .await
            .map_err(|source| BlockError::Query {
                operation: "query-named-block-nodes",
                source,
            })
    }

    /// The node called `node`, or `None` if QEMU has no such node.
    pub async fn block_node(&self, node: &str) -> Result<Option<BlockNodeInfo>, BlockError> {
        Ok(self
            .query_named_block_nodes()
            .await?
            .into_iter()
            .find(|n| n.node_name == node))
    }

    async fn require_node(&self, node: &str) -> Result<BlockNodeInfo, BlockError> {
        self.block_node(node)
            .await?
            .ok_or_else(|| BlockError::NodeNotFound {
                node: node.to_string(),
            })
    }

    /// Grows the format node `node` to `size` bytes.
    ///
    /// QMP contract: `block_resize {"node-name": node, "size": size}`; QEMU resizes the image
    /// and the guest device sees the new capacity (virtio-blk raises a config-change
    /// interrupt; Linux logs "detected capacity change"). A size equal to the current one is
    /// a no-op success; a smaller one is [`BlockError::Shrink`] and QEMU is not asked. For
    /// qcow2 the size must be a multiple of 512 (QEMU's error is returned otherwise).
    pub async fn block_resize(&self, node: &str, size: u64) -> Result<(), BlockError> {
        let current = self.require_node(node).await?.image.virtual_size;
        if size < current {
            return Err(BlockError::Shrink {
                node: node.to_string(),
                current,
                requested: size,
            });
        }
        if size == current {
            return Ok(());
        }
        match self
            .execute(
                "block_resize",
                Some(json!({"node-name": node, "size": size})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => Err(self.explain(node, "block_resize", None, source).await),
        }
    }

    /// Takes an internal snapshot `name` of the format node `node` while the VM runs.
    ///
    /// QMP contract: `blockdev-snapshot-internal-sync {"device": node, "name": name}`; `device`
    /// accepts the node name of a root node (a node attached to a device, such as
    /// `fmt_<disk>`). Synchronous and atomic for that one node; the node's driver must support
    /// internal snapshots (qcow2). Disk-only: no VM state is stored. For crash-consistency
    /// across several disks, pause the VM (or freeze the guest filesystems) around the calls.
    pub async fn snapshot_internal_create(&self, node: &str, name: &str) -> Result<(), BlockError> {
        match self
            .execute(
                "blockdev-snapshot-internal-sync",
                Some(json!({"device": node, "name": name})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => Err(self
                .explain(
                    node,
                    "blockdev-snapshot-internal-sync",
                    Some((name, true)),
                    source,
                )
                .await),
        }
    }

    /// Takes an internal snapshot `name` of every node in `nodes` atomically: all or none.
    ///
    /// QMP contract: `transaction {"actions": [{"type": "blockdev-snapshot-internal-sync",
    /// "data": {"device": node, "name": name}}, …]}`; QEMU drains I/O of all nodes, takes every
    /// snapshot, and on any failure deletes the ones already taken. So the disks of a running
    /// VM are captured at one instant (crash-consistent across disks, without pausing).
    pub async fn snapshot_internal_create_all(
        &self,
        nodes: &[String],
        name: &str,
    ) -> Result<(), BlockError> {
        let actions: Vec<_> = nodes
            .iter()
            .map(|node| {
                json!({"type": "blockdev-snapshot-internal-sync",
                       "data": {"device": node, "name": name}})
            })
            .collect();
        match self
            .execute("transaction", Some(json!({"actions": actions})))
            .await
        {
            Ok(_) => Ok(()),
            Err(mut source) => {
                // Name the first node that explains the failure; else QEMU's error.
                for node in nodes {
                    match self
                        .explain(node, "transaction", Some((name, true)), source)
                        .await
                    {
                        BlockError::Qmp { source: back, .. } => source = back,
                        typed => return Err(typed),
                    }
                }
                Err(BlockError::Qmp {
                    operation: "transaction",
                    node: nodes.join(","),
                    source,
                })
            }
        }
    }

    /// Deletes the internal snapshot `name` of the format node `node` and returns what it
    /// was.
    ///
    /// QMP contract: `blockdev-snapshot-delete-internal-sync {"device": node, "name": name}`
    /// returns the deleted `SnapshotInfo`. Works on snapshots taken by
    /// [`QmpClient::snapshot_internal_create`] and on the per-node parts of `snapshot-save`.
    pub async fn snapshot_internal_delete(
        &self,
        node: &str,
        name: &str,
    ) -> Result<SnapshotInfo, BlockError> {
        const CMD: &str = "blockdev-snapshot-delete-internal-sync";
        match self
            .execute_typed(CMD, Some(json!({"device": node, "name": name})))
            .await
        {
            Ok(info) => Ok(info),
            Err(source) => Err(self.explain(node, CMD, Some((name, false)), source).await),
        }
    }

    /// Internal snapshots currently stored in the image of `node`.
    pub async fn snapshot_internal_list(
        &self,
        node: &str,
    ) -> Result<Vec<SnapshotInfo>, BlockError> {
        Ok(self.require_node(node).await?.image.snapshots)
    }

    /// Turns a failed command into a typed error by looking at the node afterwards.
    /// `snapshot` is the snapshot name and whether the command wanted to create it.
    async fn explain(
        &self,
        node: &str,
        operation: &'static str,
        snapshot: Option<(&str, bool)>,
        source: QmpError,
    ) -> BlockError {
        let generic = |source| BlockError::Qmp {
            operation,
            node: node.to_string(),
            source,
        };
        if source.class().is_none() {
            // Transport failure: there is nothing to re-examine.
            return generic(source);
        }
        match self.block_node(node).await {
            Ok(None) => BlockError::NodeNotFound {
                node: node.to_string(),
            },
            Ok(Some(info)) => {
                let Some((name, creating)) = snapshot else {
                    return generic(source);
                };
                let exists = info.image.snapshots.iter().any(|s| s.name == name);
                match (creating, exists) {
                    (true, true) => BlockError::SnapshotExists {
                        node: node.to_string(),
                        name: name.to_string(),
                    },
                    (false, false) => BlockError::SnapshotNotFound {
                        node: node.to_string(),
                        name: name.to_string(),
                    },
                    _ => generic(source),
                }
            }
            Err(e) => {
                tracing::debug!(node, error = %e, "cannot re-examine block node after a failure");
                generic(source)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_block_entry_decodes_and_names_its_device() {
        let v = json!([{"io-status": "ok", "device": "", "locked": false, "removable": false,
            "inserted": {"iops_rd": 0, "image": {"virtual-size": 67108864,
                "filename": "/tmp/d1.qcow2", "cluster-size": 65536, "format": "qcow2",
                "actual-size": 200704, "dirty-flag": false,
                "snapshots": [{"id": "1", "name": "s1", "vm-state-size": 0, "date-sec": 5,
                    "date-nsec": 6, "vm-clock-sec": 0, "vm-clock-nsec": 0}]},
                "ro": false, "node-name": "fmt_d1", "drv": "qcow2", "file": "/tmp/d1.qcow2"},
            "qdev": "/machine/peripheral/d1/virtio-backend", "type": "unknown"},
            {"device": "", "locked": false, "removable": true,
             "qdev": "/machine/unattached/device[3]"}]);
        let infos: Vec<BlockInfo> = serde_json::from_value(v).unwrap();
        assert_eq!(infos[0].device_id(), Some("d1"));
        let node = infos[0].inserted.as_ref().unwrap();
        assert_eq!(node.node_name, "fmt_d1");
        assert_eq!(node.image.virtual_size, 64 << 20);
        assert_eq!(node.image.snapshots[0].name, "s1");
        assert_eq!(infos[1].device_id(), None);
        assert!(infos[1].inserted.is_none());
    }

    #[test]
    fn formats_use_qemu_driver_names() {
        assert_eq!(BlockFormat::Qcow2.as_str(), "qcow2");
        assert_eq!(BlockFormat::Raw.to_string(), "raw");
    }
}
