//! OVF envelopes (DMTF DSP0243): parsing into an [`OvfDescriptor`] and rendering one back.
//!
//! Parsing ([`parse()`], in `parse.rs`) is a single streaming pass with quick-xml over untrusted
//! input:
//! - the document is at most `Limits::max_descriptor_bytes` long and at most [`MAX_DEPTH`]
//!   elements deep, with at most [`MAX_ITEMS`] hardware items;
//! - a DTD (`<!DOCTYPE …>`) is refused outright, so no entity can be declared: "billion
//!   laughs" and external entities fail on the first event; the only references accepted are
//!   the five predefined entities and character references;
//! - element and attribute names are matched by *local* name (prefixes vary between
//!   producers), and sections marked `ovf:required="true"` that Vireo does not understand are
//!   refused rather than silently dropped;
//! - numbers are parsed with overflow checks, allocation units per DSP0004 (`byte * 2^20`) and
//!   the legacy names (`MegaBytes`) ([`allocation_unit_bytes`], in `units.rs`).
//!
//! [`render()`] (in `render.rs`) is the inverse for the subset Vireo exports (OVF 1.0 in VMware's
//! dialect: rasd elements in schema order, `vmw:Config` for the firmware); it is golden-tested.
//!
//! This file holds the descriptor types every part shares.

mod parse;
mod render;
mod units;

pub use parse::parse;
pub use render::{render, with_export_defaults};
pub use units::allocation_unit_bytes;

use crate::error::ImageError;

/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most `Item`s in the hardware section accepted.
pub const MAX_ITEMS: usize = 4096;

/// Guest firmware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Efi,
}

/// Guest operating system as the package describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OsInfo {
    /// CIM operating system number (`OperatingSystemSection/@ovf:id`, e.g. 101 = Linux 64-bit).
    pub cim_id: Option<u32>,
    /// VMware guest id (`vmw:osType`, e.g. `debian11_64Guest`).
    pub vmware_os_type: Option<String>,
    pub description: Option<String>,
}

/// A file of the package (`References/File`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OvfFile {
    pub id: String,
    pub href: String,
    pub size: Option<u64>,
    /// `ovf:compression` (e.g. `gzip`), if any.
    pub compression: Option<String>,
}

/// Storage controller a disk hangs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerKind {
    Ide,
    Scsi,
    Sata,
    Nvme,
}

/// A virtual disk (`DiskSection/Disk` joined with its hardware item).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OvfDisk {
    pub disk_id: String,
    /// Id of the file holding the disk image (`None` for a blank disk to create).
    pub file_ref: Option<String>,
    pub capacity_bytes: u64,
    pub populated_size: Option<u64>,
    /// Format URI (e.g. VMware's `…vmdk.html#streamOptimized`).
    pub format: Option<String>,
    pub controller: Option<ControllerKind>,
    /// Controller model (`ResourceSubType`: lsilogic, VirtualSCSI, AHCI…).
    pub controller_model: Option<String>,
    pub address_on_parent: Option<u32>,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OvfNic {
    /// Logical network name (`Connection`).
    pub network: Option<String>,
    /// Adapter model (`ResourceSubType`: E1000, VmxNet3, virtio…).
    pub model: Option<String>,
    /// MAC address, if the package fixes one.
    pub mac: Option<String>,
}

/// What Vireo needs from an OVF envelope to build a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OvfDescriptor {
    pub name: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    pub os: OsInfo,
    /// `vssd:VirtualSystemType` (e.g. `vmx-13`).
    pub virtual_system_type: Option<String>,
    pub files: Vec<OvfFile>,
    pub disks: Vec<OvfDisk>,
    pub nics: Vec<OvfNic>,
    /// Logical networks of the `NetworkSection`.
    pub networks: Vec<String>,
}

impl OvfDescriptor {
    /// The file a disk's image is stored in.
    pub fn disk_file(&self, disk: &OvfDisk) -> Option<&OvfFile> {
        let r = disk.file_ref.as_deref()?;
        self.files.iter().find(|f| f.id == r)
    }
}

fn invalid(detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format: "ovf",
        detail: detail.into(),
    }
}
