//! `GET /v1/host`

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccelInfo {
    /// Accelerator VMs use: `kvm` or `tcg`.
    pub chosen: String,
    /// Configured policy: `auto`, `kvm` or `tcg`.
    pub configured: String,
    pub kvm_device_present: bool,
    /// A probe guest actually booted under KVM.
    pub kvm_boots_guest: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostInfo {
    pub node: String,
    pub hostname: String,
    pub vireo_version: String,
    pub qemu_version: Option<String>,
    pub accel: AccelInfo,
    pub cpus: u32,
    pub memory_total_mib: u64,
    pub memory_available_mib: u64,
    pub storage_total_bytes: u64,
    pub storage_available_bytes: u64,
    pub vms_total: u32,
    pub vms_running: u32,
    pub uptime_s: u64,
    /// Managed networks and the VLAN back-ends this host supports.
    #[serde(default)]
    pub network: crate::networks::NetworkSupport,
}
