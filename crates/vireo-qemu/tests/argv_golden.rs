//! Golden tests for `argv::build`: each case's argv (one argument per line) must equal
//! `tests/golden/<case>.argv` exactly. Run with `UPDATE_GOLDEN=1` to rewrite the files after an
//! intended change, then review the diff.

use std::path::{Path, PathBuf};

use uuid::Uuid;
use vireo_qemu::argv::{build, build_with, ArgvError, LaunchContext, LaunchOptions};
use vireo_qemu::hotplug::{HotplugPlacement, HotplugPort, PlacementError};
use vireo_qemu::{Accel, OvmfFiles};
use vireo_types::{BootSource, DiskFormat, DiskSpec, Firmware, Name, NicBackend, NicSpec, VmSpec};

fn ctx(accel: Accel, ovmf: bool) -> LaunchContext {
    LaunchContext {
        qemu_binary: "/usr/bin/qemu-system-x86_64".into(),
        uuid: Uuid::parse_str("0191c7a4-1f3e-7c2a-9d1e-2b3c4d5e6f70").unwrap(),
        name: "web1".into(),
        run_dir: "/run/vireo/vms/0191c7a4".into(),
        accel,
        ovmf: ovmf.then(|| OvmfFiles {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/run/vireo/vms/0191c7a4/uefi-vars.fd".into(),
        }),
    }
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn disk(
    n: &str,
    path: &str,
    format: DiskFormat,
    read_only: bool,
    boot_index: Option<u32>,
) -> DiskSpec {
    DiskSpec {
        name: name(n),
        path: path.into(),
        format,
        read_only,
        boot_index,
    }
}

fn nic(n: &str, mac: &str, backend: NicBackend) -> NicSpec {
    NicSpec {
        name: name(n),
        mac: mac.parse().unwrap(),
        backend,
    }
}

fn check(case: &str, argv: Vec<String>) {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{case}.argv"));
    let mut text = argv.join("\n");
    text.push('\n');
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        want == text,
        "argv for {case} differs from {}; run with UPDATE_GOLDEN=1 and review the diff.\n--- want\n{want}\n--- got\n{text}",
        path.display()
    );
}

#[test]
fn kernel_boot_tcg() {
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 256,
        boot: BootSource::Kernel {
            kernel: "/var/lib/vireo/images/tiny/vmlinuz".into(),
            initrd: Some("/var/lib/vireo/images/tiny/initrd.img".into()),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
        },
        disks: vec![disk(
            "data",
            "/var/lib/vireo/vms/web1/data.qcow2",
            DiskFormat::Qcow2,
            false,
            None,
        )],
        nics: vec![nic("eth0", "0a:76:72:00:00:01", NicBackend::User)],
        cdroms: vec![],
        fw_cfg: vec![],
    };
    check(
        "kernel_boot_tcg",
        build(&spec, &ctx(Accel::Tcg, false)).unwrap(),
    );
}

#[test]
fn disk_boot_bios_kvm() {
    let spec = VmSpec {
        vcpus: 4,
        memory_mib: 4096,
        boot: BootSource::Disk {
            firmware: Firmware::Bios,
        },
        disks: vec![disk(
            "root",
            "/var/lib/vireo/vms/web1/root.qcow2",
            DiskFormat::Qcow2,
            false,
            Some(0),
        )],
        nics: vec![nic(
            "eth0",
            "0a:76:72:00:00:02",
            NicBackend::Tap {
                ifname: "vt-web1-0".into(),
            },
        )],
        cdroms: vec![],
        fw_cfg: vec![],
    };
    check(
        "disk_boot_bios_kvm",
        build(&spec, &ctx(Accel::Kvm, false)).unwrap(),
    );
}

#[test]
fn uefi_two_disks_two_nics() {
    let spec = VmSpec {
        vcpus: 2,
        memory_mib: 1024,
        boot: BootSource::Disk {
            firmware: Firmware::Uefi,
        },
        disks: vec![
            disk(
                "root",
                "/var/lib/vireo/vms/web1/root.qcow2",
                DiskFormat::Qcow2,
                false,
                Some(1),
            ),
            disk(
                "scratch",
                "/var/lib/vireo/vms/web1/scratch.raw",
                DiskFormat::Raw,
                false,
                None,
            ),
        ],
        nics: vec![
            nic("eth0", "0a:76:72:00:00:03", NicBackend::User),
            nic(
                "eth1",
                "0a:76:72:00:00:04",
                NicBackend::Tap {
                    ifname: "vt-web1-1".into(),
                },
            ),
        ],
        cdroms: vec![],
        fw_cfg: vec![],
    };
    check(
        "uefi_two_disks_two_nics",
        build(&spec, &ctx(Accel::Tcg, true)).unwrap(),
    );
}

#[test]
fn read_only() {
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 512,
        boot: BootSource::Disk {
            firmware: Firmware::Bios,
        },
        disks: vec![
            disk(
                "root",
                "/var/lib/vireo/vms/web1/root.qcow2",
                DiskFormat::Qcow2,
                false,
                Some(0),
            ),
            disk(
                "seed",
                "/var/lib/vireo/vms/web1/seed,v1.iso",
                DiskFormat::Raw,
                true,
                None,
            ),
        ],
        nics: vec![],
        cdroms: vec![],
        fw_cfg: vec![],
    };
    check("read_only", build(&spec, &ctx(Accel::Tcg, false)).unwrap());
}

#[test]
fn uefi_without_firmware_and_invalid_specs_are_rejected() {
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 256,
        boot: BootSource::Disk {
            firmware: Firmware::Uefi,
        },
        disks: vec![disk("root", "/r.qcow2", DiskFormat::Qcow2, false, Some(0))],
        nics: vec![],
        cdroms: vec![],
        fw_cfg: vec![],
    };
    assert!(matches!(
        build(&spec, &ctx(Accel::Tcg, false)),
        Err(ArgvError::MissingOvmf)
    ));
    let bad = VmSpec { vcpus: 0, ..spec };
    assert!(matches!(
        build(&bad, &ctx(Accel::Tcg, true)),
        Err(ArgvError::InvalidSpec(_))
    ));
}

#[test]
fn option_values_with_commas_are_escaped() {
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 256,
        boot: BootSource::Disk {
            firmware: Firmware::Bios,
        },
        disks: vec![disk(
            "root",
            "/a,b/root.qcow2",
            DiskFormat::Qcow2,
            false,
            Some(0),
        )],
        nics: vec![],
        cdroms: vec![],
        fw_cfg: vec![],
    };
    let mut c = ctx(Accel::Tcg, false);
    c.run_dir = "/run/x,y".into();
    c.name = "a,b".into();
    let argv = build(&spec, &c).unwrap();
    assert!(argv.contains(&"guest=a,,b,debug-threads=on".to_string()));
    assert!(argv.contains(
        &"driver=file,node-name=file_root,filename=/a,,b/root.qcow2,aio=threads".to_string()
    ));
    assert!(argv.contains(&"socket,id=qmp,path=/run/x,,y/qmp.sock,server=on,wait=off".to_string()));
    // -pidfile is not parsed as key=value: verbatim.
    let pid = argv.iter().position(|a| a == "-pidfile").unwrap();
    assert_eq!(argv[pid + 1], "/run/x,y/qemu.pid");
}

fn port(i: u8) -> HotplugPort {
    HotplugPort::try_from(i).unwrap()
}

fn hotplugged_spec() -> VmSpec {
    VmSpec {
        vcpus: 1,
        memory_mib: 256,
        boot: BootSource::Kernel {
            kernel: "/var/lib/vireo/images/tiny/vmlinuz".into(),
            initrd: Some("/var/lib/vireo/images/tiny/initrd.img".into()),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
        },
        disks: vec![
            disk(
                "data",
                "/var/lib/vireo/vms/web1/data.qcow2",
                DiskFormat::Qcow2,
                false,
                None,
            ),
            disk(
                "extra",
                "/var/lib/vireo/vms/web1/extra.qcow2",
                DiskFormat::Qcow2,
                false,
                None,
            ),
        ],
        nics: vec![
            nic("eth0", "0a:76:72:00:00:01", NicBackend::User),
            nic(
                "eth1",
                "0a:76:72:00:00:05",
                NicBackend::Tap {
                    ifname: "vt-web1-1".into(),
                },
            ),
        ],
        cdroms: vec![],
        fw_cfg: vec![],
    }
}

/// Devices hot-added in an earlier run come back on the ports they were plugged into;
/// cold-plugged devices keep their lines unchanged.
#[test]
fn hotplugged_devices_on_their_ports() {
    let mut placement = HotplugPlacement::default();
    placement.disks.insert(name("extra"), port(0));
    placement.nics.insert(name("eth1"), port(1));
    let options = LaunchOptions {
        placement,
        start_paused: false,
    };
    let argv = build_with(&hotplugged_spec(), &ctx(Accel::Tcg, false), &options).unwrap();
    check("hotplugged_devices_on_their_ports", argv.clone());
    let cold = build(&hotplugged_spec(), &ctx(Accel::Tcg, false)).unwrap();
    let differing: Vec<_> = argv
        .iter()
        .zip(&cold)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.as_str())
        .collect();
    assert_eq!(
        differing,
        vec![
            "virtio-blk-pci,id=extra,drive=fmt_extra,serial=extra,bus=vireo_hp0",
            "virtio-net-pci,id=nic_eth1,netdev=net_eth1,mac=0a:76:72:00:00:05,bus=vireo_hp1",
        ]
    );
}

fn placed(placement: HotplugPlacement) -> LaunchOptions {
    LaunchOptions {
        placement,
        start_paused: false,
    }
}

/// `-S` exactly when asked for, right after the display option; nothing else changes.
#[test]
fn start_paused_adds_only_dash_s() {
    let spec = hotplugged_spec();
    let c = ctx(Accel::Tcg, false);
    let running = build(&spec, &c).unwrap();
    let paused = build_with(
        &spec,
        &c,
        &LaunchOptions {
            start_paused: true,
            ..LaunchOptions::default()
        },
    )
    .unwrap();
    assert!(!running.iter().any(|a| a == "-S"));
    let at = paused.iter().position(|a| a == "-S").unwrap();
    assert_eq!(paused[at - 2..at], ["-display", "none"]);
    let mut without = paused.clone();
    without.remove(at);
    assert_eq!(without, running);
}

#[test]
fn placements_that_do_not_fit_are_rejected() {
    let spec = hotplugged_spec();
    let c = ctx(Accel::Tcg, false);
    let mut unknown = HotplugPlacement::default();
    unknown.disks.insert(name("nosuch"), port(0));
    assert!(matches!(
        build_with(&spec, &c, &placed(unknown)),
        Err(ArgvError::Placement(PlacementError::UnknownDisk(n))) if n.as_str() == "nosuch"
    ));
    let mut unknown_nic = HotplugPlacement::default();
    unknown_nic.nics.insert(name("eth9"), port(0));
    assert!(matches!(
        build_with(&spec, &c, &placed(unknown_nic)),
        Err(ArgvError::Placement(PlacementError::UnknownNic(_)))
    ));
    let mut shared = HotplugPlacement::default();
    shared.disks.insert(name("extra"), port(2));
    shared.nics.insert(name("eth1"), port(2));
    assert!(matches!(
        build_with(&spec, &c, &placed(shared)),
        Err(ArgvError::Placement(PlacementError::PortShared { port: p, .. })) if p == port(2)
    ));
}

#[test]
fn cloud_init_seed_and_ignition() {
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 512,
        boot: BootSource::Disk {
            firmware: Firmware::Bios,
        },
        disks: vec![disk(
            "root",
            "/var/lib/vireo/pools/default/root.qcow2",
            DiskFormat::Qcow2,
            false,
            Some(1),
        )],
        nics: vec![nic("eth0", "0a:76:72:00:00:01", NicBackend::User)],
        cdroms: vec![vireo_types::CdromSpec {
            name: name("cidata"),
            path: "/run/vireo/vms/0191c7a4/cidata,1.iso".into(),
        }],
        fw_cfg: vec![vireo_types::FwCfgFile {
            name: "opt/com.coreos/config".into(),
            path: "/run/vireo/vms/0191c7a4/ignition.json".into(),
        }],
    };
    check(
        "cloud_init_seed_and_ignition",
        build(&spec, &ctx(Accel::Tcg, false)).unwrap(),
    );
}
