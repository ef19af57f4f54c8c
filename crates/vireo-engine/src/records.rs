//! What the engine persists in the state store, and the key layout.
//!
//! Keys: `/projects/<name>`, `/vms/<project>/<name>`, `/images/<name>`,
//! `/operations/<uuid>`, `/storage-pools/<name>`, `/volumes/<pool>/<name>`. Values are JSON. A VM record holds the *observed* state and the
//! QEMU pid so that a restarted daemon can re-attach.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vireo_api::images::ImageInfo;
use vireo_api::storage::{PoolDriverKind, VolumeAttachment, VolumeKind, VolumeRef};
use vireo_types::{Name, VmSpec, VmState};

pub fn project_key(name: &str) -> String {
    format!("/projects/{name}")
}
pub fn vm_key(project: &str, name: &str) -> String {
    format!("/vms/{project}/{name}")
}
pub fn vm_prefix(project: Option<&str>) -> String {
    match project {
        Some(p) => format!("/vms/{p}/"),
        None => "/vms/".to_string(),
    }
}
pub fn image_key(name: &str) -> String {
    format!("/images/{name}")
}
pub fn operation_key(id: Uuid) -> String {
    format!("/operations/{id}")
}
pub fn snapshot_key(project: &str, vm: &str, name: &str) -> String {
    format!("/snapshots/{project}/{vm}/{name}")
}
pub fn snapshot_prefix(project: &str, vm: &str) -> String {
    format!("/snapshots/{project}/{vm}/")
}

/// One VM snapshot: the same-named internal snapshot in each listed disk's volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: Name,
    pub created_at: DateTime<Utc>,
    pub parent: Option<Name>,
    pub memory: bool,
    /// Disk holding the RAM and device state (memory snapshots).
    pub vmstate_disk: Option<Name>,
    pub vm_state: VmState,
    pub fs_frozen: bool,
    pub disks: Vec<Name>,
    pub description: String,
    /// vCPUs and memory at snapshot time (a memory restore needs the same machine).
    pub vcpus: u32,
    pub memory_mib: u64,
}

pub fn pool_key(name: &str) -> String {
    format!("/storage-pools/{name}")
}
pub fn volume_key(pool: &str, name: &str) -> String {
    format!("/volumes/{pool}/{name}")
}
pub fn volume_prefix(pool: Option<&str>) -> String {
    match pool {
        Some(p) => format!("/volumes/{p}/"),
        None => "/volumes/".to_string(),
    }
}

/// A storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub uuid: Uuid,
    pub name: Name,
    pub driver: PoolDriverKind,
    pub path: PathBuf,
    pub created_at: DateTime<Utc>,
}

/// A volume. Its data lives in the pool's driver under `uuid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub uuid: Uuid,
    pub name: Name,
    pub pool: Name,
    pub kind: VolumeKind,
    pub created_at: DateTime<Utc>,
    /// Virtual size as last set by Vireo (create, import, resize).
    pub size_bytes: u64,
    pub backing: Option<VolumeRef>,
    pub backing_image: Option<Name>,
    pub attached: Option<VolumeAttachment>,
    pub read_only: bool,
}

impl VolumeRecord {
    pub fn reference(&self) -> VolumeRef {
        VolumeRef {
            pool: self.pool.clone(),
            volume: self.name.clone(),
        }
    }
}

/// Which volume backs a VM disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskVolume {
    pub disk: Name,
    pub pool: Name,
    pub volume: Name,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub uuid: Uuid,
    pub name: Name,
    pub project: Name,
    pub image: Option<Name>,
    pub created_at: DateTime<Utc>,
    pub spec: VmSpec,
    /// Network name per NIC, in `spec.nics` order.
    pub networks: Vec<String>,
    pub state: VmState,
    /// QEMU pid while a process exists.
    pub pid: Option<u32>,
    pub accel: Option<String>,
    pub node: String,
    /// Directory holding the VM's runtime files (and the disks of VMs made before pools).
    pub dir: PathBuf,
    /// The pool volume behind each disk (disks not listed are files in `dir`).
    #[serde(default)]
    pub volumes: Vec<DiskVolume>,
    /// An immutable template: never starts; its volumes are read-only bases.
    #[serde(default)]
    pub template: bool,
    /// The template this VM is a linked clone of.
    #[serde(default)]
    pub template_source: Option<Name>,
    /// The snapshot the current state descends from.
    #[serde(default)]
    pub current_snapshot: Option<Name>,
    /// Disks and NICs on hotplug ports (hot-added, or attached to stay removable).
    #[serde(default)]
    pub placement: vireo_qemu::hotplug::HotplugPlacement,
    /// cloud-init settings; the seed CD-ROM in `spec.cdroms` is generated from them.
    #[serde(default)]
    pub cloud_init: Option<vireo_api::vms::CloudInitConfig>,
}

impl VmRecord {
    pub fn target(&self) -> String {
        format!("vm/{}/{}", self.project, self.name)
    }
}

/// Files behind an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageFiles {
    Kernel { kernel: PathBuf, initrd: PathBuf },
    Disk { path: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub info: ImageInfo,
    pub dir: PathBuf,
    pub files: ImageFiles,
}
