//! Storage pools and their volumes (`/v1/storage-pools`, `/v1/storage-pools/{pool}/volumes`).
//!
//! A pool is a place that stores volumes through one driver (today `dir`: a directory of qcow2
//! files, thin-provisioned). A volume is one virtual disk. Volumes made for a VM belong to it
//! (`owner`) and are deleted with it; volumes created on their own ("custom" volumes) can be
//! attached to and detached from VMs and outlive them.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vireo_types::Name;

/// Name of the pool every installation has.
pub const DEFAULT_POOL: &str = "default";

/// Smallest and largest volume size the API accepts.
pub const MIN_VOLUME_BYTES: u64 = 1 << 20;
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolDriverKind {
    /// A directory on a local filesystem holding qcow2 files.
    Dir,
}

impl PoolDriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolDriverKind::Dir => "dir",
        }
    }
}

/// `POST /v1/storage-pools`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePoolRequest {
    pub name: Name,
    pub driver: PoolDriverKind,
    /// Absolute directory for a `dir` pool; created when missing, must be empty otherwise.
    /// Default: `<state dir>/pools/<name>`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
}

/// `GET /v1/storage-pools/{pool}`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolInfo {
    pub name: Name,
    pub uuid: Uuid,
    pub driver: PoolDriverKind,
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub created_at: DateTime<Utc>,
    /// Size of the filesystem holding the pool.
    pub capacity_bytes: u64,
    /// Bytes in use on that filesystem (by anything).
    pub used_bytes: u64,
    /// Bytes still free for the pool.
    pub available_bytes: u64,
    /// Bytes the pool's volumes occupy on the host.
    pub allocated_bytes: u64,
    /// Sum of the volumes' virtual sizes (thin provisioning can exceed the capacity).
    pub provisioned_bytes: u64,
    pub volumes: u32,
}

/// What a volume is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeKind {
    /// A VM's disk, created with the VM and deleted with it.
    Vm,
    /// Created on its own; attachable to VMs; outlives them.
    Custom,
    /// A read-only base other volumes are linked clones of (a template's disk).
    Base,
}

/// Where a volume is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeAttachment {
    pub project: Name,
    pub vm: Name,
    /// Disk name inside the VM.
    pub disk: Name,
}

/// Reference to a volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeRef {
    pub pool: Name,
    pub volume: Name,
}

impl std::fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.volume)
    }
}

/// `GET /v1/storage-pools/{pool}/volumes/{volume}`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeInfo {
    pub name: Name,
    pub pool: Name,
    pub uuid: Uuid,
    pub kind: VolumeKind,
    pub format: String,
    pub virtual_size_bytes: u64,
    /// Bytes the volume's file occupies on the host.
    pub allocated_bytes: u64,
    pub created_at: DateTime<Utc>,
    /// The volume this one is a copy-on-write overlay of.
    pub backing: Option<VolumeRef>,
    /// An image file this one is an overlay of (images live outside pools).
    pub backing_image: Option<Name>,
    pub attached_to: Option<VolumeAttachment>,
    /// Volumes that are overlays of this one.
    pub dependants: Vec<VolumeRef>,
    pub read_only: bool,
}

/// `POST /v1/storage-pools/{pool}/volumes`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    pub name: Name,
    /// Virtual size in bytes: a multiple of 512 between 1 MiB and 64 TiB.
    pub size_bytes: u64,
}

/// `POST /v1/storage-pools/{pool}/volumes/{volume}/resize`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolumeRequest {
    /// New virtual size in bytes; volumes only grow.
    pub size_bytes: u64,
}

/// Query of `POST /v1/storage-pools/{pool}/volumes/import` (the body is the disk image).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportVolumeQuery {
    /// Name of the new volume.
    pub name: Name,
}

/// `POST /v1/vms/{name}/disks`: attach a custom volume (hotplug when the VM runs).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDiskRequest {
    pub pool: Name,
    pub volume: Name,
    /// Disk name inside the VM; default: the volume's name.
    #[serde(default)]
    pub disk: Option<Name>,
}

/// Checks a requested volume size; the error text names the rule.
pub fn check_volume_size(bytes: u64) -> Result<(), String> {
    if !(MIN_VOLUME_BYTES..=MAX_VOLUME_BYTES).contains(&bytes) {
        return Err(format!(
            "size must be between {MIN_VOLUME_BYTES} bytes (1 MiB) and {MAX_VOLUME_BYTES} bytes (64 TiB), got {bytes}"
        ));
    }
    if !bytes.is_multiple_of(512) {
        return Err(format!("size must be a multiple of 512 bytes, got {bytes}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_sizes() {
        assert!(check_volume_size(1 << 20).is_ok());
        assert!(check_volume_size(64 << 40).is_ok());
        assert!(check_volume_size((1 << 20) - 512).is_err());
        assert!(check_volume_size((64 << 40) + 512).is_err());
        assert!(check_volume_size((1 << 20) + 1).is_err());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_str::<CreateVolumeRequest>(
            r#"{"name":"a","size_bytes":1048576,"sise":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"));
        assert!(
            serde_json::from_str::<CreatePoolRequest>(r#"{"name":"../x","driver":"dir"}"#).is_err()
        );
    }
}
