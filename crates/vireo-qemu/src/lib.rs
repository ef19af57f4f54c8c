//! The QEMU backend of Vireo:
//!
//! - [`argv`]: `VmSpec` + [`argv::LaunchContext`] → QEMU command line (pure, golden-tested);
//! - [`process`]: spawn QEMU detached from the daemon, re-attach after a restart, pidfd-based
//!   exit notification and reaping;
//! - [`hotplug`]: the machine's PCIe hotplug ports, free-port choice, and `DiskSpec`/`NicSpec`
//!   → QMP hotplug requests (pure);
//! - [`accel`]: KVM-or-TCG decision by actually booting a kernel under KVM, cached;
//! - [`ovmf`]: UEFI firmware lookup and per-VM variable stores;
//! - [`rundir`]: the fixed file layout of a VM's run directory.
//!
//! Protocol clients (QMP, guest agent) live in `vireo-qmp`.

pub mod accel;
pub mod argv;
pub mod hotplug;
pub mod ovmf;
pub mod process;
pub mod rundir;

pub use accel::{Accel, AccelPolicy, AccelProbe};
pub use argv::{build, build_with, LaunchContext, LaunchOptions};
pub use hotplug::{pick_free_port, HotplugPlacement, HotplugPort};
pub use ovmf::OvmfFiles;
pub use process::{ExitStatus, QemuProcess};
pub use rundir::RunPaths;
