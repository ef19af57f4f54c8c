//! `VmSpec` → QEMU command line. Pure and deterministic: same inputs, same argv (golden tests
//! in `tests/golden/`).
//!
//! Invariants of the produced command line:
//! - no implicit devices (`-nodefaults`, `-no-user-config`, `-display none`) and a seccomp
//!   sandbox that forbids spawning, privilege changes and resource control;
//! - QMP, serial console and guest agent are unix sockets in the run directory where QEMU is
//!   the server and does not wait for a client, so QEMU runs unattended and the daemon can
//!   (re)connect at any time; console output is also appended to `console.log`;
//! - device and node names are stable functions of the spec's names ([`disk_ids`],
//!   [`nic_ids`]) so hotplug code can address them; internal devices use ids with `_`, which a
//!   [`vireo_types::Name`] can never contain, so they never collide with user devices;
//! - every value that goes through QEMU's option parser has its commas doubled; values of
//!   raw options (`-kernel`, `-initrd`, `-append`, `-pidfile`) are passed verbatim;
//! - disks use `aio=threads` and QEMU's default cache mode (O_DIRECT is not available on
//!   every filesystem);
//! - every machine has the [`HOTPLUG_PORT_COUNT`](crate::hotplug::HOTPLUG_PORT_COUNT) empty PCIe root ports of
//!   [`crate::hotplug`] at fixed addresses; devices without a placement are cold-plugged on
//!   `pcie.0` at the addresses they always had, devices with one (hot-added earlier) sit on
//!   their root port (`bus=vireo_hpN`).

use std::path::{Path, PathBuf};

use uuid::Uuid;
use vireo_types::{BootSource, DiskSpec, Firmware, Name, NicBackend, NicSpec, SpecError, VmSpec};

use crate::accel::Accel;
use crate::hotplug::{HotplugPlacement, HotplugPort, PlacementError};
use crate::ovmf::OvmfFiles;
use crate::rundir::RunPaths;

/// Everything besides the spec that the command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchContext {
    /// Path of `qemu-system-x86_64`; becomes `argv[0]`.
    pub qemu_binary: PathBuf,
    pub uuid: Uuid,
    /// VM name shown by QEMU (`-name guest=…`) and in thread names.
    pub name: String,
    /// The VM's run directory (see [`crate::rundir`]).
    pub run_dir: PathBuf,
    /// Resolved accelerator.
    pub accel: Accel,
    /// Firmware images for UEFI disk boot: OVMF code (opened read-only) and this VM's own
    /// copy of the variable store (see [`crate::ovmf::prepare_vars`]). Unused otherwise.
    pub ovmf: Option<OvmfFiles>,
}

/// Why no command line could be built.
#[derive(Debug, thiserror::Error)]
pub enum ArgvError {
    #[error("VM spec is invalid")]
    InvalidSpec(#[source] SpecError),
    #[error("UEFI boot needs OVMF firmware files, but none were given")]
    MissingOvmf,
    #[error("hotplug placement does not fit the VM spec")]
    Placement(#[source] PlacementError),
    #[error("{what} path {path:?} is not valid UTF-8")]
    NonUtf8Path { what: &'static str, path: PathBuf },
}

/// QEMU identifiers of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIds {
    /// `-device … id=`: the disk name itself (for `device_del`).
    pub device: String,
    /// Format-driver block node (what the device's `drive=` points at).
    pub format_node: String,
    /// `file` protocol block node below the format node.
    pub file_node: String,
}

/// QEMU identifiers of one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicIds {
    pub device: String,
    pub netdev: String,
}

/// QEMU limits block node names to 31 bytes; longer disk names are shortened to a prefix plus
/// a hash of the full name, which keeps the mapping stable and injective in practice.
const NODE_KEY_MAX: usize = 26;

fn fnv1a32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Stable QEMU ids for the disk called `name`.
pub fn disk_ids(name: &Name) -> DiskIds {
    let n = name.as_str();
    // Names are ASCII, so byte slicing is on character boundaries.
    let key = if n.len() <= NODE_KEY_MAX {
        n.to_string()
    } else {
        format!("{}-{:08x}", &n[..NODE_KEY_MAX - 9], fnv1a32(n))
    };
    DiskIds {
        device: n.to_string(),
        format_node: format!("fmt_{key}"),
        file_node: format!("file_{key}"),
    }
}

/// Stable QEMU ids for the NIC called `name`.
pub fn nic_ids(name: &Name) -> NicIds {
    NicIds {
        device: format!("nic_{name}"),
        netdev: format!("net_{name}"),
    }
}

/// Doubles commas so `s` is taken literally inside a QEMU `key=value,…` option.
pub fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

fn utf8<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, ArgvError> {
    p.to_str().ok_or_else(|| ArgvError::NonUtf8Path {
        what,
        path: p.to_path_buf(),
    })
}

fn opt_path(what: &'static str, p: &Path) -> Result<String, ArgvError> {
    utf8(what, p).map(escape_opt)
}

/// Launch choices besides the spec and the context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    /// The hotplug port of every device hot-added in an earlier run (or meant to stay
    /// removable); the others are cold-plugged on `pcie.0`.
    pub placement: HotplugPlacement,
    /// Start with the vCPUs stopped (`-S`): QEMU stays in `prelaunch` until QMP `cont`. This is
    /// how a memory snapshot is restored into a VM that is not running: start paused,
    /// `snapshot-load`, `cont` (no guest code runs before the load).
    pub start_paused: bool,
}

/// Builds the full argv (including `argv[0]`) for `spec` in `ctx` with default
/// [`LaunchOptions`]: every device cold-plugged on `pcie.0`, vCPUs running.
pub fn build(spec: &VmSpec, ctx: &LaunchContext) -> Result<Vec<String>, ArgvError> {
    build_with(spec, ctx, &LaunchOptions::default())
}

/// Builds the full argv (including `argv[0]`) for `spec` in `ctx` with `options`.
pub fn build_with(
    spec: &VmSpec,
    ctx: &LaunchContext,
    options: &LaunchOptions,
) -> Result<Vec<String>, ArgvError> {
    let placement = &options.placement;
    spec.validate().map_err(ArgvError::InvalidSpec)?;
    placement.validate(spec).map_err(ArgvError::Placement)?;
    let run = RunPaths::new(&ctx.run_dir);
    let mut a = Argv::default();
    a.push1(utf8("QEMU binary", &ctx.qemu_binary)?);
    a.push2(
        "-name",
        format!("guest={},debug-threads=on", escape_opt(&ctx.name)),
    );
    a.push2("-uuid", ctx.uuid.hyphenated().to_string());

    let uefi = match &spec.boot {
        BootSource::Disk {
            firmware: Firmware::Uefi,
        } => Some(ctx.ovmf.as_ref().ok_or(ArgvError::MissingOvmf)?),
        _ => None,
    };
    let mut machine = format!("q35,accel={}", ctx.accel.as_str());
    if uefi.is_some() {
        machine.push_str(",pflash0=fw_code,pflash1=fw_vars");
    }
    a.push2("-machine", machine);
    a.push2(
        "-cpu",
        match ctx.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        },
    );
    a.push2("-smp", spec.vcpus.to_string());
    a.push2("-m", format!("{}M", spec.memory_mib));
    a.push1("-nodefaults");
    a.push1("-no-user-config");
    a.push2("-display", "none");
    if options.start_paused {
        a.push1("-S");
    }
    a.push2(
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    );
    a.push2("-pidfile", utf8("pidfile", &run.pidfile())?);

    // Control channels.
    a.push2(
        "-chardev",
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            opt_path("QMP socket", &run.qmp_socket())?
        ),
    );
    a.push2("-mon", "chardev=qmp,mode=control");
    a.push2(
        "-chardev",
        format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            opt_path("serial socket", &run.serial_socket())?,
            opt_path("console log", &run.console_log())?
        ),
    );
    a.push2("-serial", "chardev:serial0");
    a.push2("-device", "virtio-serial-pci,id=vireo_vserial");
    a.push2(
        "-chardev",
        format!(
            "socket,id=qga0,path={},server=on,wait=off",
            opt_path("guest agent socket", &run.qga_socket())?
        ),
    );
    a.push2(
        "-device",
        "virtserialport,id=vireo_qga,bus=vireo_vserial.0,chardev=qga0,name=org.qemu.guest_agent.0",
    );
    a.push2("-object", "rng-random,id=rng0,filename=/dev/urandom");
    a.push2("-device", "virtio-rng-pci,id=vireo_rng,rng=rng0");
    // Hotplug ports: before any device that may sit on one.
    for port in HotplugPort::all() {
        a.push2("-device", port.device_option());
    }

    // Firmware / boot.
    if let Some(ovmf) = uefi {
        a.push2(
            "-blockdev",
            format!(
                "driver=file,node-name=fw_code_file,filename={},read-only=on",
                opt_path("OVMF code", &ovmf.code)?
            ),
        );
        a.push2(
            "-blockdev",
            "driver=raw,node-name=fw_code,file=fw_code_file,read-only=on",
        );
        a.push2(
            "-blockdev",
            format!(
                "driver=file,node-name=fw_vars_file,filename={}",
                opt_path("OVMF variable store", &ovmf.vars)?
            ),
        );
        a.push2(
            "-blockdev",
            "driver=raw,node-name=fw_vars,file=fw_vars_file",
        );
    }
    if let BootSource::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &spec.boot
    {
        a.push2("-kernel", utf8("kernel", kernel)?);
        if let Some(initrd) = initrd {
            a.push2("-initrd", utf8("initrd", initrd)?);
        }
        if !cmdline.is_empty() {
            a.push2("-append", cmdline.as_str());
        }
    }

    for disk in &spec.disks {
        push_disk(&mut a, disk, placement.disk_port(&disk.name))?;
    }
    for nic in &spec.nics {
        push_nic(&mut a, nic, placement.nic_port(&nic.name));
    }
    // After disks and NICs, so adding a seed never moves their PCI addresses.
    if !spec.cdroms.is_empty() {
        a.push2("-device", "virtio-scsi-pci,id=vireo_scsi");
        for cd in &spec.cdroms {
            let ids = disk_ids(&cd.name);
            a.push2(
                "-blockdev",
                format!(
                    "driver=file,node-name={},filename={},read-only=on",
                    ids.file_node,
                    opt_path("cdrom", &cd.path)?
                ),
            );
            a.push2(
                "-blockdev",
                format!(
                    "driver=raw,node-name={},file={},read-only=on",
                    ids.format_node, ids.file_node
                ),
            );
            a.push2(
                "-device",
                format!(
                    "scsi-cd,bus=vireo_scsi.0,id={},drive={}",
                    ids.device, ids.format_node
                ),
            );
        }
    }
    for f in &spec.fw_cfg {
        // The name was validated (opt/ and [A-Za-z0-9._/-]): only the path needs escaping.
        a.push2(
            "-fw_cfg",
            format!("name={},file={}", f.name, opt_path("fw_cfg", &f.path)?),
        );
    }
    Ok(a.0)
}

fn push_disk(a: &mut Argv, disk: &DiskSpec, port: Option<HotplugPort>) -> Result<(), ArgvError> {
    let ids = disk_ids(&disk.name);
    let ro = if disk.read_only { ",read-only=on" } else { "" };
    a.push2(
        "-blockdev",
        format!(
            "driver=file,node-name={},filename={},aio=threads{ro}",
            ids.file_node,
            opt_path("disk", &disk.path)?
        ),
    );
    a.push2(
        "-blockdev",
        format!(
            "driver={},node-name={},file={}{ro}",
            disk.format.as_str(),
            ids.format_node,
            ids.file_node
        ),
    );
    let mut dev = format!(
        "virtio-blk-pci,id={},drive={},serial={}",
        ids.device, ids.format_node, disk.name
    );
    if let Some(port) = port {
        dev.push_str(&format!(",bus={}", port.id()));
    }
    if let Some(index) = disk.boot_index {
        dev.push_str(&format!(",bootindex={index}"));
    }
    a.push2("-device", dev);
    Ok(())
}

fn push_nic(a: &mut Argv, nic: &NicSpec, port: Option<HotplugPort>) {
    let ids = nic_ids(&nic.name);
    let netdev = match &nic.backend {
        NicBackend::User => format!("user,id={}", ids.netdev),
        // The tap name was validated as [A-Za-z0-9_-]{1,15}: no escaping needed.
        NicBackend::Tap { ifname } => format!(
            "tap,id={},ifname={ifname},script=no,downscript=no",
            ids.netdev
        ),
    };
    a.push2("-netdev", netdev);
    let mut dev = format!(
        "virtio-net-pci,id={},netdev={},mac={}",
        ids.device, ids.netdev, nic.mac
    );
    if let Some(port) = port {
        dev.push_str(&format!(",bus={}", port.id()));
    }
    a.push2("-device", dev);
}

#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    fn push1(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }

    fn push2(&mut self, opt: &str, value: impl Into<String>) {
        self.0.push(opt.to_string());
        self.0.push(value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_disk_names_get_short_stable_node_names() {
        let short = Name::new("data").unwrap();
        assert_eq!(
            disk_ids(&short),
            DiskIds {
                device: "data".into(),
                format_node: "fmt_data".into(),
                file_node: "file_data".into()
            }
        );
        let a = Name::new(format!("a{}", "x".repeat(40))).unwrap();
        let b = Name::new(format!("a{}y", "x".repeat(39))).unwrap();
        let (ia, ib) = (disk_ids(&a), disk_ids(&b));
        assert!(ia.file_node.len() <= 31 && ia.format_node.len() <= 31);
        assert_ne!(ia.format_node, ib.format_node);
        assert_eq!(ia, disk_ids(&a));
        assert_eq!(ia.device, a.as_str());
    }

    #[test]
    fn commas_are_doubled() {
        assert_eq!(escape_opt("/a,b/c"), "/a,,b/c");
        assert_eq!(nic_ids(&Name::new("eth0").unwrap()).netdev, "net_eth0");
    }
}
