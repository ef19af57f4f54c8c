//! What the engine persists in the state store, and the key layout.
//!
//! Keys: `/projects/<name>`, `/vms/<project>/<name>`, `/images/<name>`,
//! `/operations/<uuid>`. Values are JSON. A VM record holds the *observed* state and the
//! QEMU pid so that a restarted daemon can re-attach.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vireo_api::images::ImageInfo;
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
    /// Directory holding the VM's disks and runtime files.
    pub dir: PathBuf,
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
