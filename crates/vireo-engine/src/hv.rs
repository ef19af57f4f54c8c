//! The host-effects boundary of the engine: everything that touches QEMU goes through
//! [`Hypervisor`] (launch/adopt processes) and [`Machine`] (one running QEMU: QMP, guest
//! agent, serial console). The real implementation lives in [`crate::qemu_hv`]; a fake for
//! engine tests in [`crate::fake_hv`].
//!
//! Invariant: a `Machine` value corresponds to exactly one QEMU process; once its
//! [`MachineEvent::Exited`] was broadcast, every other method fails with
//! [`HvError::Gone`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use uuid::Uuid;
use vireo_qemu::hotplug::{HotplugPlacement, HotplugPort};
use vireo_types::{DiskSpec, Name, NicSpec, VmSpec};

use crate::console::Console;

/// What the engine asks the hypervisor layer to run.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub uuid: Uuid,
    pub name: String,
    pub spec: VmSpec,
    /// Per-VM directory for sockets, pidfile, logs, UEFI vars.
    pub run_dir: PathBuf,
    /// Which disks/NICs sit on hotplug ports (so they can be removed while running).
    pub placement: HotplugPlacement,
    /// Start with the vCPUs stopped (to load a memory snapshot before any guest code runs).
    pub start_paused: bool,
}

/// Something a running machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEvent {
    CpusStopped,
    CpusResumed,
    /// The guest or QEMU announced a shutdown (QMP `SHUTDOWN`); `guest` when the guest asked.
    ShutdownAnnounced {
        guest: bool,
    },
    /// The guest rebooted (QMP `RESET`).
    Reset,
    /// The QEMU process is gone.
    Exited,
}

/// Output of a command run through the guest agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

/// Guest facts from the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestFacts {
    pub agent_version: Option<String>,
    pub hostname: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel_release: Option<String>,
    /// (MAC, addresses) per interface.
    pub interfaces: Vec<(String, Vec<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("starting QEMU for {vm} failed: {detail}")]
    Launch { vm: String, detail: String },
    #[error("QEMU process {pid} is not the QEMU of VM {vm}")]
    AdoptMismatch { vm: String, pid: u32 },
    #[error("the QEMU process has exited")]
    Gone,
    #[error("the guest agent did not answer: {0}")]
    Agent(String),
    #[error("QEMU monitor command {command} failed: {detail}")]
    Monitor {
        command: &'static str,
        detail: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Launches and re-attaches QEMU processes.
#[async_trait]
pub trait Hypervisor: Send + Sync + std::fmt::Debug {
    /// Starts QEMU for `req` with the guest CPUs running.
    async fn launch(&self, req: &LaunchRequest) -> Result<Arc<dyn Machine>, HvError>;
    /// Re-attaches to a QEMU that survived a daemon restart.
    async fn adopt(&self, req: &LaunchRequest, pid: u32) -> Result<Arc<dyn Machine>, HvError>;
    /// Accelerator in use (`kvm` or `tcg`).
    fn accel_name(&self) -> String;
}

/// One running QEMU.
#[async_trait]
pub trait Machine: Send + Sync + std::fmt::Debug {
    fn pid(&self) -> u32;
    /// Events from now on.
    fn subscribe(&self) -> broadcast::Receiver<MachineEvent>;
    /// Whether the process has exited already (covers events missed before subscribing).
    fn has_exited(&self) -> bool;
    /// Whether the guest CPUs run (QMP `query-status`).
    async fn cpus_running(&self) -> Result<bool, HvError>;
    async fn pause(&self) -> Result<(), HvError>;
    async fn resume(&self) -> Result<(), HvError>;
    /// ACPI power button.
    async fn powerdown(&self) -> Result<(), HvError>;
    /// Hard reset.
    async fn reset(&self) -> Result<(), HvError>;
    /// Ends the process now (QMP `quit`, SIGKILL if that fails).
    async fn kill(&self) -> Result<(), HvError>;
    async fn agent_ping(&self, timeout: Duration) -> Result<(), HvError>;
    async fn agent_shutdown(&self, reboot: bool) -> Result<(), HvError>;
    async fn agent_facts(&self, timeout: Duration) -> Result<GuestFacts, HvError>;
    async fn agent_exec(
        &self,
        command: &[String],
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ExecOutput, HvError>;
    /// The serial console (output history, live output, input).
    fn console(&self) -> Console;

    // ---- storage while running --------------------------------------------------------

    /// Grows disk `disk` to `size` bytes (QMP `block_resize`); the guest sees the new size.
    async fn block_resize(&self, disk: &Name, size: u64) -> Result<(), HvError>;
    /// Hot-adds `disk` as a new virtio-blk device on hotplug port `port`.
    async fn hotplug_disk(&self, disk: &DiskSpec, port: HotplugPort) -> Result<(), HvError>;
    /// Hot-removes disk `disk`; the guest must release the device within `timeout`.
    async fn unplug_disk(&self, disk: &Name, timeout: Duration) -> Result<(), HvError>;
    /// Takes internal snapshot `tag` of all `disks` atomically (disk state only).
    async fn snapshot_disks(&self, tag: &str, disks: &[Name]) -> Result<(), HvError>;
    /// Deletes internal snapshot `tag` from all `disks`.
    async fn delete_disk_snapshots(&self, tag: &str, disks: &[Name]) -> Result<(), HvError>;
    /// Saves RAM, device state and `disks` as snapshot `tag`, the RAM into `vmstate_disk`.
    /// The guest keeps its run state (running or paused) afterwards.
    async fn save_snapshot(
        &self,
        tag: &str,
        vmstate_disk: &Name,
        disks: &[Name],
    ) -> Result<(), HvError>;
    /// Loads snapshot `tag` saved by [`Machine::save_snapshot`]; the guest CPUs are stopped
    /// afterwards (the caller resumes them when the snapshot was taken running).
    async fn load_snapshot(
        &self,
        tag: &str,
        vmstate_disk: &Name,
        disks: &[Name],
    ) -> Result<(), HvError>;
    /// Freezes the guest's filesystems through the agent; returns how many were frozen.
    async fn agent_fsfreeze(&self, timeout: Duration) -> Result<u32, HvError>;
    /// Thaws what [`Machine::agent_fsfreeze`] froze.
    async fn agent_fsthaw(&self, timeout: Duration) -> Result<(), HvError>;

    // ---- NICs while running -----------------------------------------------------------

    /// Hot-adds `nic` (its tap must exist) as a virtio-net device on hotplug port `port`.
    async fn hotplug_nic(&self, nic: &NicSpec, port: HotplugPort) -> Result<(), HvError>;
    /// Hot-removes NIC `nic`; the guest must release the device within `timeout`.
    async fn unplug_nic(&self, nic: &Name, timeout: Duration) -> Result<(), HvError>;
    /// Sets NIC `nic`'s link up or down (the guest sees carrier change).
    async fn set_nic_link(&self, nic: &Name, up: bool) -> Result<(), HvError>;
}
