//! Hotplug, resize and snapshot operations of `vireo_qmp` against real qemu-system-x86_64 7.2
//! (TCG), started with Vireo's own command line (`argv::build`: sandbox on, hotplug root
//! ports). The machine boots SeaBIOS with nothing to boot, so no guest OS answers hotplug
//! requests: hot-add and block operations work, hot-remove must time out cleanly. Guest-side
//! checks are in `real_hotplug_guest.rs`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use uuid::Uuid;
use vireo_qemu::hotplug::{disk_hotplug, disk_nodes, nic_hotplug, HotplugPlacement};
use vireo_qemu::{argv, process, RunPaths};
use vireo_qmp::{BlockError, HotplugError, JobError, QmpClient, RunState, VmSnapshot};
use vireo_types::{DiskFormat, DiskSpec, NicBackend, NicSpec, VmSpec};

struct Vm {
    qmp: QmpClient,
    qemu: process::QemuProcess,
    _guard: KillOnDrop,
}

async fn start(run_dir: &Path, spec: &VmSpec) -> Vm {
    let uuid = Uuid::new_v4();
    let argv = argv::build(spec, &context(run_dir, uuid)).unwrap();
    let run = RunPaths::new(run_dir);
    let qemu = process::spawn(&argv, &run.qemu_log(), &run.pidfile(), &run.qmp_socket())
        .await
        .unwrap();
    let guard = KillOnDrop {
        pid: qemu.pid(),
        uuid,
    };
    let qmp = QmpClient::connect(run.qmp_socket()).await.unwrap();
    Vm {
        qmp,
        qemu,
        _guard: guard,
    }
}

impl Vm {
    async fn quit(self) {
        self.qmp.quit().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.qemu.exited())
            .await
            .expect("QEMU exits after quit");
    }
}

fn extra_disk(dir: &Path, name: &str) -> DiskSpec {
    let path = dir.join(format!("{name}.qcow2"));
    qcow2(&path, "64M");
    DiskSpec {
        name: common::name(name),
        path,
        format: DiskFormat::Qcow2,
        read_only: false,
        boot_index: None,
    }
}

fn qemu_img_json(args: &[&str], path: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(args)
        .arg("--output=json")
        .arg(path)
        .output()
        .expect("qemu-img is installed");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn real_disk_hotplug_resize_and_internal_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let spec = bios_vm(dir.path());
    let vm = start(dir.path(), &spec).await;
    let qmp = &vm.qmp;

    // Hot-add on the port the placement picks.
    let placement = HotplugPlacement::default();
    let port = placement.free_port().unwrap();
    assert_eq!(port.id(), "vireo_hp0");
    let extra = extra_disk(dir.path(), "extra");
    let request = disk_hotplug(&extra, port);
    qmp.hot_add_disk(&request).await.unwrap();
    let blocks = qmp.query_block().await.unwrap();
    let attached = blocks
        .iter()
        .find(|b| b.device_id() == Some("extra"))
        .unwrap_or_else(|| panic!("extra not in query-block: {blocks:?}"));
    let node = attached.inserted.as_ref().unwrap();
    assert_eq!(node.node_name, "fmt_extra");
    assert_eq!(node.drv, "qcow2");
    assert_eq!(node.image.virtual_size, 64 << 20);
    assert_eq!(node.file, extra.path);
    assert_eq!(
        qmp.port_occupant(&port.id()).await.unwrap().as_deref(),
        Some("extra")
    );
    assert_eq!(qmp.port_occupant("vireo_hp1").await.unwrap(), None);

    // Identifiers and ports in use come back typed, and change nothing.
    let err = qmp.hot_add_disk(&request).await.unwrap_err();
    assert!(
        matches!(&err, HotplugError::DeviceIdInUse { id } if id == "extra"),
        "{err:?}"
    );
    let other = extra_disk(dir.path(), "other");
    let mut same_port = disk_hotplug(&other, port);
    let err = qmp.hot_add_disk(&same_port).await.unwrap_err();
    assert!(
        matches!(&err, HotplugError::PortOccupied { port: p, device } if p == "vireo_hp0" && device == "extra"),
        "{err:?}"
    );
    same_port.port = "vireo_hp9".into();
    let err = qmp.hot_add_disk(&same_port).await.unwrap_err();
    assert!(matches!(&err, HotplugError::PortNotFound { .. }), "{err:?}");
    let mut clashing_nodes = disk_hotplug(&other, placement.free_port().unwrap());
    clashing_nodes.port = "vireo_hp1".into();
    clashing_nodes.nodes = disk_nodes(&extra.name);
    let err = qmp.hot_add_disk(&clashing_nodes).await.unwrap_err();
    assert!(
        matches!(&err, HotplugError::NodeNameInUse { node } if node == "file_extra"),
        "{err:?}"
    );
    // A format node that cannot open its image: the file node added before is removed again.
    let not_qcow2 = dir.path().join("garbage.qcow2");
    std::fs::write(&not_qcow2, vec![0x5a; 1 << 20]).unwrap();
    let mut bad = disk_hotplug(
        &DiskSpec {
            path: not_qcow2,
            ..other.clone()
        },
        port,
    );
    bad.port = "vireo_hp1".into();
    let err = qmp.hot_add_disk(&bad).await.unwrap_err();
    assert!(
        matches!(
            &err,
            HotplugError::Qmp {
                command: "blockdev-add",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(qmp.block_node("file_other").await.unwrap().is_none());
    assert!(!qmp.device_exists("other").await.unwrap());

    // Online growth; shrinking and unknown nodes are refused.
    qmp.block_resize("fmt_extra", 96 << 20).await.unwrap();
    assert_eq!(
        qmp.block_node("fmt_extra")
            .await
            .unwrap()
            .unwrap()
            .image
            .virtual_size,
        96 << 20
    );
    let err = qmp.block_resize("fmt_extra", 32 << 20).await.unwrap_err();
    assert!(
        matches!(err, BlockError::Shrink { current, requested, .. } if current == 96 << 20 && requested == 32 << 20),
        "{err:?}"
    );
    let err = qmp.block_resize("fmt_nosuch", 96 << 20).await.unwrap_err();
    assert!(
        matches!(&err, BlockError::NodeNotFound { node } if node == "fmt_nosuch"),
        "{err:?}"
    );

    // Internal snapshots of the running disk.
    qmp.snapshot_internal_create("fmt_extra", "s1")
        .await
        .unwrap();
    qmp.snapshot_internal_create("fmt_extra", "s2")
        .await
        .unwrap();
    let err = qmp
        .snapshot_internal_create("fmt_extra", "s1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BlockError::SnapshotExists { name, .. } if name == "s1"),
        "{err:?}"
    );
    let names: Vec<String> = qmp
        .snapshot_internal_list("fmt_extra")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    let deleted = qmp
        .snapshot_internal_delete("fmt_extra", "s1")
        .await
        .unwrap();
    assert_eq!((deleted.name.as_str(), deleted.vm_state_size), ("s1", 0));
    let err = qmp
        .snapshot_internal_delete("fmt_extra", "s1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BlockError::SnapshotNotFound { name, .. } if name == "s1"),
        "{err:?}"
    );
    let err = qmp
        .snapshot_internal_create("fmt_nosuch", "s1")
        .await
        .unwrap_err();
    assert!(matches!(&err, BlockError::NodeNotFound { .. }), "{err:?}");

    // Both disks at one instant, all or nothing.
    let both = vec!["fmt_root".to_string(), "fmt_extra".to_string()];
    qmp.snapshot_internal_create_all(&both, "pair")
        .await
        .unwrap();
    for node in &both {
        let names: Vec<String> = qmp
            .snapshot_internal_list(node)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert!(names.contains(&"pair".to_string()), "{node}: {names:?}");
    }
    // "s2" exists on fmt_extra only: the transaction fails as a whole, fmt_root gets nothing.
    let err = qmp
        .snapshot_internal_create_all(&both, "s2")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BlockError::SnapshotExists { node, name } if node == "fmt_extra" && name == "s2"),
        "{err:?}"
    );
    assert!(!qmp
        .snapshot_internal_list("fmt_root")
        .await
        .unwrap()
        .iter()
        .any(|s| s.name == "s2"));
    for node in &both {
        qmp.snapshot_internal_delete(node, "pair").await.unwrap();
    }

    // Nothing in the machine releases the device: removal times out with a clear error,
    // keeps the nodes, and a retry waits for the pending unplug again.
    let started = Instant::now();
    let err = qmp
        .hot_remove_disk("extra", &request.nodes, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HotplugError::GuestDidNotRelease { id, .. } if id == "extra"),
        "{err:?}"
    );
    assert!(err.to_string().contains("support PCI hotplug"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(qmp.block_node("fmt_extra").await.unwrap().is_some());
    let err = qmp
        .hot_remove_disk("extra", &request.nodes, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HotplugError::GuestDidNotRelease { .. }),
        "{err:?}"
    );
    // A cold-plugged disk (on pcie.0) cannot be hot-removed: typed, and it stays.
    let err = qmp
        .hot_remove_disk(
            "root",
            &disk_nodes(&common::name("root")),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HotplugError::NotHotpluggable { id, bus } if id == "root" && bus.ends_with("pcie.0")),
        "{err:?}"
    );
    assert!(qmp.device_exists("root").await.unwrap());
    // Removing a device that was never there only deletes (absent) nodes: idempotent.
    qmp.hot_remove_disk(
        "never",
        &disk_nodes(&common::name("never")),
        Duration::from_secs(1),
    )
    .await
    .unwrap();

    vm.quit().await;
    let info = qemu_img_json(&["info"], &extra.path);
    assert_eq!(info["virtual-size"], json!(96 << 20), "{info}");
    let snaps = qemu_img_json(&["info"], &extra.path)["snapshots"].clone();
    let names: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s2"]);
    let listed = Command::new("qemu-img")
        .args(["snapshot", "-l"])
        .arg(&extra.path)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("s2") && !listed.contains("s1"), "{listed}");
}

#[tokio::test]
async fn real_memory_snapshot_save_restore_delete() {
    let dir = tempfile::tempdir().unwrap();
    let spec = bios_vm(dir.path());
    let vm = start(dir.path(), &spec).await;
    let qmp = &vm.qmp;
    let root = disk_nodes(&common::name("root"));
    let snap = |job: &str, tag: &str| VmSnapshot {
        job_id: job.into(),
        tag: tag.into(),
        vmstate: root.format.clone(),
        devices: vec![root.format.clone()],
    };
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);

    let t = Instant::now();
    let saved = qmp
        .snapshot_save(&snap("save1", "m1"), Duration::from_secs(20))
        .await
        .unwrap();
    println!(
        "snapshot-save (128 MiB guest): {} ms",
        t.elapsed().as_millis()
    );
    assert_eq!(saved.job_type, "snapshot-save");
    // The job was dismissed: its id is free again, and the VM runs again.
    assert!(qmp.query_jobs().await.unwrap().is_empty());
    assert!(qmp.query_status().await.unwrap().running);
    let stored = qmp.snapshot_internal_list(&root.format).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].name, "m1");
    assert!(stored[0].vm_state_size > 0, "{stored:?}");

    // Saving the same tag again fails with QEMU's reason.
    let err = qmp
        .snapshot_save(&snap("save1", "m1"), Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JobError::Failed { message, .. } if message.contains("already exists")),
        "{err:?}"
    );

    // Restore: stop, load, cont.
    let t = Instant::now();
    qmp.snapshot_restore(&snap("load1", "m1"), true, Duration::from_secs(20))
        .await
        .unwrap();
    println!("snapshot restore: {} ms", t.elapsed().as_millis());
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);

    // An unknown tag fails the job with QEMU's text; the VM is left paused.
    let err = qmp
        .snapshot_restore(&snap("load2", "nosuch"), true, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JobError::Failed { job_type, message, .. }
            if job_type == "snapshot-load" && message.contains("does not exist")),
        "{err:?}"
    );
    assert!(!qmp.query_status().await.unwrap().running);
    assert!(qmp.query_jobs().await.unwrap().is_empty());
    qmp.cont().await.unwrap();

    // A vmstate node that does not exist is refused when the job starts or fails.
    let mut bad = snap("save2", "m2");
    bad.vmstate = "fmt_nosuch".into();
    let err = qmp
        .snapshot_save(&bad, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JobError::Failed { .. } | JobError::Start { .. }),
        "{err:?}"
    );

    qmp.snapshot_delete(
        "del1",
        "m1",
        std::slice::from_ref(&root.format),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert!(qmp
        .snapshot_internal_list(&root.format)
        .await
        .unwrap()
        .is_empty());
    assert!(qmp.query_jobs().await.unwrap().is_empty());
    let err = qmp
        .wait_job("never-started", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(&err, JobError::NotFound { .. }), "{err:?}");
    vm.quit().await;
}

#[tokio::test]
async fn real_nic_hotplug_link_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let spec = bios_vm(dir.path());
    let vm = start(dir.path(), &spec).await;
    let qmp = &vm.qmp;
    let mut placement = HotplugPlacement::default();
    // A disk already sits on port 0 (from an earlier run): the NIC goes to port 1.
    placement
        .disks
        .insert(common::name("root"), placement.free_port().unwrap());
    let port = placement.free_port().unwrap();
    assert_eq!(port.id(), "vireo_hp1");
    let nic = NicSpec {
        name: common::name("eth1"),
        mac: "0a:76:72:00:00:42".parse().unwrap(),
        backend: NicBackend::User,
    };
    let request = nic_hotplug(&nic, port);
    qmp.hot_add_nic(&request).await.unwrap();
    assert!(qmp.device_exists("nic_eth1").await.unwrap());
    assert_eq!(
        qmp.port_occupant("vireo_hp1").await.unwrap().as_deref(),
        Some("nic_eth1")
    );
    let mac = qmp
        .execute(
            "qom-get",
            Some(json!({"path": "/machine/peripheral/nic_eth1", "property": "mac"})),
        )
        .await
        .unwrap();
    assert_eq!(mac, json!("0a:76:72:00:00:42"));

    qmp.set_link("nic_eth1", false).await.unwrap();
    qmp.set_link("nic_eth1", true).await.unwrap();
    let err = qmp.set_link("nic_nosuch", false).await.unwrap_err();
    assert!(
        matches!(&err, HotplugError::DeviceNotFound { id } if id == "nic_nosuch"),
        "{err:?}"
    );

    // Same netdev id under a new device id: typed, and no device is left behind.
    let mut dup = request.clone();
    dup.device_id = "nic_dup".into();
    dup.port = "vireo_hp2".into();
    let err = qmp.hot_add_nic(&dup).await.unwrap_err();
    assert!(
        matches!(&err, HotplugError::NetdevIdInUse { id } if id == "net_eth1"),
        "{err:?}"
    );
    // device_add failing (no such netdev property value after a bad MAC) undoes netdev_add.
    let mut bad_mac = nic_hotplug(
        &NicSpec {
            name: common::name("eth2"),
            ..nic.clone()
        },
        vireo_qemu::HotplugPort::try_from(2).unwrap(),
    );
    bad_mac.mac = "zz:zz".into();
    let err = qmp.hot_add_nic(&bad_mac).await.unwrap_err();
    assert!(
        matches!(
            &err,
            HotplugError::Qmp {
                command: "device_add",
                ..
            }
        ),
        "{err:?}"
    );
    // The netdev was removed again, so the same request with a good MAC now succeeds.
    bad_mac.mac = "0a:76:72:00:00:43".into();
    qmp.hot_add_nic(&bad_mac).await.unwrap();

    let err = qmp
        .hot_remove_nic("nic_eth1", "net_eth1", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HotplugError::GuestDidNotRelease { .. }),
        "{err:?}"
    );
    vm.quit().await;
}

/// The hotplug root ports sit at fixed addresses, so every cold-plugged device has the same
/// PCI address as on a command line without them.
#[tokio::test]
async fn real_root_ports_leave_cold_plugged_addresses_alone() {
    let with_ports = tempfile::tempdir().unwrap();
    let mut spec = bios_vm(with_ports.path());
    spec.disks.push(extra_disk(with_ports.path(), "data"));
    spec.nics.push(NicSpec {
        name: common::name("eth1"),
        mac: "0a:76:72:00:00:02".parse().unwrap(),
        backend: NicBackend::User,
    });
    let vm = start(with_ports.path(), &spec).await;
    let ported = pci_addresses(&vm.qmp).await;
    vm.quit().await;
    for i in 0..8 {
        assert_eq!(
            ported.get(&format!("vireo_hp{i}")),
            Some(&(0x1c, i)),
            "{ported:?}"
        );
    }

    // The same command line with the root ports taken out.
    let bare = tempfile::tempdir().unwrap();
    let uuid = Uuid::new_v4();
    let full = argv::build(&spec, &context(bare.path(), uuid)).unwrap();
    let mut stripped = Vec::new();
    let mut i = 0;
    while i < full.len() {
        if full[i] == "-device" && full[i + 1].starts_with("pcie-root-port,") {
            i += 2;
            continue;
        }
        stripped.push(full[i].clone());
        i += 1;
    }
    let run = RunPaths::new(bare.path());
    let qemu = process::spawn(
        &stripped,
        &run.qemu_log(),
        &run.pidfile(),
        &run.qmp_socket(),
    )
    .await
    .unwrap();
    let _guard = KillOnDrop {
        pid: qemu.pid(),
        uuid,
    };
    let qmp = QmpClient::connect(run.qmp_socket()).await.unwrap();
    let plain = pci_addresses(&qmp).await;
    qmp.quit().await.unwrap();
    let cold: Vec<_> = ported
        .iter()
        .filter(|(id, _)| !id.starts_with("vireo_hp"))
        .collect();
    assert!(cold.len() >= 6, "{cold:?}");
    for (id, addr) in cold {
        assert_eq!(
            plain.get(id),
            Some(addr),
            "{id} moved: {plain:?} vs {ported:?}"
        );
    }
}

/// qdev id → (slot, function) of the devices on `pcie.0`.
async fn pci_addresses(qmp: &QmpClient) -> std::collections::BTreeMap<String, (u64, u64)> {
    let buses = qmp.execute("query-pci", None).await.unwrap();
    buses[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| {
            let id = d["qdev_id"].as_str()?;
            (!id.is_empty()).then(|| {
                (
                    id.to_string(),
                    (d["slot"].as_u64().unwrap(), d["function"].as_u64().unwrap()),
                )
            })
        })
        .collect()
}

/// Deletes the network namespace when dropped (after the QEMU inside was killed).
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("iproute2");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tap NIC hot-added under Vireo's seccomp sandbox (`script=no`: nothing is spawned). QEMU
/// runs inside a throwaway network namespace holding the tap, so the host is untouched.
#[tokio::test]
async fn real_tap_nic_hotplug_in_a_private_netns() {
    let ns = format!("vireo-hp-{}", std::process::id());
    let _ = Command::new("ip")
        .args(["netns", "delete", &ns])
        .stderr(std::process::Stdio::null())
        .status();
    ip(&["netns", "add", &ns]);
    let ns_guard = NetnsGuard(ns.clone());
    ip(&["-n", &ns, "tuntap", "add", "dev", "vhp0", "mode", "tap"]);
    ip(&["-n", &ns, "link", "set", "vhp0", "up"]);
    assert!(ip(&["-n", &ns, "link", "show", "vhp0"]).contains("NO-CARRIER"));

    let dir = tempfile::tempdir().unwrap();
    let spec = bios_vm(dir.path());
    let uuid = Uuid::new_v4();
    let mut full = vec!["ip".to_string(), "netns".into(), "exec".into(), ns.clone()];
    full.extend(argv::build(&spec, &context(dir.path(), uuid)).unwrap());
    let run = RunPaths::new(dir.path());
    let qemu = process::spawn(&full, &run.qemu_log(), &run.pidfile(), &run.qmp_socket())
        .await
        .unwrap();
    let guard = KillOnDrop {
        pid: qemu.pid(),
        uuid,
    };
    let qmp = QmpClient::connect(run.qmp_socket()).await.unwrap();
    let nic = NicSpec {
        name: common::name("eth1"),
        mac: "0a:76:72:00:00:44".parse().unwrap(),
        backend: NicBackend::Tap {
            ifname: "vhp0".into(),
        },
    };
    let port = HotplugPlacement::default().free_port().unwrap();
    qmp.hot_add_nic(&nic_hotplug(&nic, port)).await.unwrap();
    // QEMU holds the tap open: the carrier is up.
    let link = ip(&["-n", &ns, "link", "show", "vhp0"]);
    assert!(!link.contains("NO-CARRIER"), "{link}");
    assert_eq!(
        qmp.port_occupant(&port.id()).await.unwrap().as_deref(),
        Some("nic_eth1")
    );
    // The same tap cannot back a second NIC (QEMU opens it exclusively); nothing is left.
    let second = NicSpec {
        name: common::name("eth2"),
        mac: "0a:76:72:00:00:45".parse().unwrap(),
        backend: nic.backend.clone(),
    };
    let next = vireo_qemu::HotplugPort::try_from(1).unwrap();
    let err = qmp
        .hot_add_nic(&nic_hotplug(&second, next))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            HotplugError::Qmp {
                command: "netdev_add",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!qmp.device_exists("nic_eth2").await.unwrap());
    qmp.quit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), qemu.exited())
        .await
        .unwrap();
    drop(guard);
    drop(ns_guard);
}
