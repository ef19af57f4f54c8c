//! Async clients for QEMU's two JSON control channels, used by the Vireo engine:
//!
//! - [`QmpClient`]: the QEMU Machine Protocol monitor (lifecycle commands, events, EOF as the
//!   signal that QEMU went away);
//! - [`GuestAgent`]: qemu-guest-agent inside the guest, reached through the host end of its
//!   virtio-serial chardev socket (readiness, exec, shutdown, guest information, filesystem
//!   freeze).
//!
//! Typed QMP operations on top of [`QmpClient`], one module per area:
//! - [`block`]: attached disks and nodes, online resize, internal snapshots of one node;
//! - [`hotplug`]: disk and NIC hot-add/remove through PCIe root ports, NIC link state;
//! - [`jobs`]: background jobs and the VM (memory) snapshot jobs.
//!
//! `fake` holds test doubles that speak the real protocols over unix sockets (enabled for
//! other crates with the `testing` feature).
//!
//! Invariants: every read from either channel is bounded in size (see [`framing`]); every
//! request has a timeout; no call can be confused by replies meant for another request.

pub mod block;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod framing;
pub mod ga;
pub mod hotplug;
pub mod jobs;
pub mod qmp;

pub use block::{
    BlockError, BlockFormat, BlockInfo, BlockNodeInfo, BlockNodes, ImageInfo, SnapshotInfo,
};
pub use ga::{
    ExecRequest, ExecStatus, FreezeError, FsFreezeStatus, GuestAgent, GuestAgentError, GuestInfo,
    GuestIpAddress, GuestIpAddressType, GuestNetworkInterface, GuestOsInfo, ShutdownMode,
};
pub use hotplug::{DiskHotplug, HotplugError, NetdevBackend, NicHotplug};
pub use jobs::{JobError, JobInfo, JobStatus, VmSnapshot};
pub use qmp::{
    Greeting, QemuVersion, QmpClient, QmpError, QmpEvent, QmpOptions, QmpTimestamp, RunState,
    StatusInfo, VersionTriple,
};
