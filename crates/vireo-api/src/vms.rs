//! VM bodies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vireo_types::{DiskFormat, Firmware, MacAddr, Name, VmSpec, VmState};

/// Built-in network name: QEMU user-mode NAT private to the VM (no host set-up needed).
pub const USER_NETWORK: &str = "user";

/// Most VMs one create request may make (`count`).
pub const MAX_CREATE_COUNT: u32 = 100;

/// `POST /v1/vms`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Name of the VM; with `count`, the prefix of the names (`web` → `web1`, `web2`, …).
    pub name: Name,
    /// Image to create the VM from (e.g. `tiny`); exactly one of `image` and `template`.
    #[serde(default)]
    pub image: Option<Name>,
    /// Template (a VM made immutable with `POST /v1/vms/{name}/template`) to make a linked
    /// clone of.
    #[serde(default)]
    pub template: Option<Name>,
    /// Create this many VMs at once (1-100), in parallel, as one operation.
    #[serde(default)]
    pub count: Option<u32>,
    /// Default 1.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Default 256.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Size of the VM's data disk in MiB (kernel images) or root disk (disk images); default
    /// from the image.
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// Networks to attach one NIC each to; default `["user"]`. `[]` gives no NIC.
    #[serde(default)]
    pub networks: Option<Vec<Name>>,
    /// Firmware for disk images; default from the image.
    #[serde(default)]
    pub firmware: Option<Firmware>,
    /// Storage pool for the VM's disks; default `default`.
    #[serde(default)]
    pub pool: Option<Name>,
    /// Extra kernel command-line arguments (kernel images only).
    #[serde(default)]
    pub kernel_args: Option<String>,
    /// First-boot configuration through a cloud-init NoCloud seed (a `cidata` CD-ROM).
    #[serde(default)]
    pub cloud_init: Option<CloudInitConfig>,
    /// An Ignition config (JSON, Fedora CoreOS/Flatcar) passed through QEMU fw_cfg.
    #[serde(default)]
    pub ignition: Option<String>,
    /// Start the VM once created.
    #[serde(default)]
    pub start: bool,
}

/// cloud-init NoCloud settings; Vireo writes the seed (meta-data with a per-VM instance-id
/// and the host name, user-data, network-config derived from the NICs unless given, vendor-data)
/// as an ISO 9660 volume labelled `cidata`. Each file is at most 1 MiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitConfig {
    /// user-data as given (`#cloud-config` YAML, a `#!` script, MIME multipart…).
    #[serde(default)]
    pub user_data: Option<String>,
    /// `authorized_keys` lines for the default user (merged into the user-data).
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Host name; default: the VM's name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// network-config (v1 or v2 YAML); default: DHCP on every NIC, matched by MAC.
    #[serde(default)]
    pub network_config: Option<String>,
    #[serde(default)]
    pub vendor_data: Option<String>,
}

/// A disk as shown by the API.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskInfo {
    pub name: Name,
    pub format: DiskFormat,
    pub virtual_size_bytes: u64,
    pub read_only: bool,
    pub boot_index: Option<u32>,
}

/// A NIC as shown by the API.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NicInfo {
    pub name: Name,
    pub mac: MacAddr,
    pub network: String,
    /// Addresses reported by the guest agent, when it runs.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// What the guest agent reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GuestInfo {
    pub agent_version: Option<String>,
    pub hostname: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel_release: Option<String>,
}

/// `GET /v1/vms/{name}`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmInfo {
    pub name: Name,
    pub uuid: Uuid,
    pub project: Name,
    pub state: VmState,
    /// The guest agent answers pings.
    pub guest_ready: bool,
    /// Host the VM is placed on.
    pub node: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub image: Option<Name>,
    /// The template this VM is a linked clone of.
    #[serde(default)]
    pub template_source: Option<Name>,
    /// The VM is an immutable template (it cannot start; clones are made from it).
    #[serde(default)]
    pub template: bool,
    /// The snapshot the VM's current state descends from.
    #[serde(default)]
    pub current_snapshot: Option<Name>,
    pub created_at: DateTime<Utc>,
    /// QEMU process id while the VM has one.
    pub pid: Option<u32>,
    /// Accelerator the running QEMU uses (`kvm` or `tcg`).
    pub accel: Option<String>,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicInfo>,
    pub guest: Option<GuestInfo>,
    /// cloud-init settings, when the VM has a seed.
    #[serde(default)]
    pub cloud_init: Option<CloudInitConfig>,
    /// The full QEMU-level specification.
    pub spec: VmSpec,
    /// Store revision of the VM record; send it back as `If-Match` to update.
    pub revision: u64,
}

/// `POST /v1/vms/{name}/stop`
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Skip the graceful shutdown and terminate QEMU at once.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for a graceful shutdown before forcing; default 30, at most 3600.
    #[serde(default)]
    pub timeout_s: Option<u32>,
}

/// `PATCH /v1/vms/{name}` (stopped VMs; send `If-Match: <revision>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVmRequest {
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Replaces the cloud-init settings (the seed is regenerated with a new instance-id, so
    /// cloud-init runs its first-boot modules again).
    #[serde(default)]
    pub cloud_init: Option<CloudInitConfig>,
}

/// `POST /v1/vms/{name}/exec`: run a command in the guest through qemu-guest-agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in the guest's PATH.
    pub command: Vec<String>,
    /// Standard input, base64.
    #[serde(default)]
    pub stdin_base64: Option<String>,
    /// Seconds to wait for the command; default 60, at most 3600.
    #[serde(default)]
    pub timeout_s: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecResult {
    pub exit_code: i32,
    /// Set when the command was killed by a signal.
    pub signal: Option<i32>,
    pub stdout_base64: String,
    pub stderr_base64: String,
    /// The agent truncated the output (it keeps a bounded amount).
    pub truncated: bool,
}

/// Console websocket query.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    pub project: Option<Name>,
    /// Bytes of recent console output to replay on connect (default 4096, at most 65536).
    pub history: Option<u32>,
}

/// `POST /v1/vms/import`: the request body is an OVA package (a tar archive).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    pub project: Option<Name>,
    /// Name of the VM to create.
    pub name: Name,
    /// Start the VM once imported.
    #[serde(default)]
    pub start: Option<bool>,
}
