//! Images: bootable artefacts VMs are created from.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vireo_types::{Firmware, Name};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageContent {
    /// Direct kernel boot: kernel + initramfs (+ an empty data disk per VM).
    Kernel {
        kernel_version: String,
        cmdline: String,
        /// Line the guest prints on its serial console when ready.
        ready_marker: Option<String>,
        default_data_disk_mib: u64,
    },
    /// A bootable disk that VMs get a copy-on-write overlay of.
    Disk {
        firmware: Firmware,
        virtual_size_bytes: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageInfo {
    pub name: Name,
    pub uuid: Uuid,
    pub created_at: DateTime<Utc>,
    pub content: ImageContent,
    /// Bytes the image's files use on the host.
    pub size_bytes: u64,
    /// Where it came from, e.g. `build:tiny`.
    pub source: String,
}

/// `POST /v1/images/build`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImageRequest {
    /// Builder to run; `tiny` is the built-in minimal guest.
    pub builder: Name,
    /// Name to register the image under (default: the builder's name).
    #[serde(default)]
    pub name: Option<Name>,
    /// Builder options; a builder refuses the ones it does not take. `debian`: the Debian
    /// release (suite) to install, default `bookworm`.
    #[serde(default)]
    pub release: Option<String>,
    /// `debian`: virtual size of the disk in MiB (default 4096; 2048 to 2097152).
    #[serde(default)]
    pub size_mib: Option<u64>,
    /// `debian`: Debian packages installed on top of the base set (at most 64).
    #[serde(default)]
    pub packages: Vec<String>,
}

impl BuildImageRequest {
    /// A request for `builder` with no name and no options.
    pub fn new(builder: Name) -> Self {
        BuildImageRequest {
            builder,
            name: None,
            release: None,
            size_mib: None,
            packages: Vec::new(),
        }
    }
}

/// Query of `POST /v1/images/import` (the body is a disk image in any supported format).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportImageQuery {
    /// Name to register the image under.
    pub name: Name,
    /// Firmware VMs made from it boot with; default `bios`.
    #[serde(default)]
    pub firmware: Option<Firmware>,
}
